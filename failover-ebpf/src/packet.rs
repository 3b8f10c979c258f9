//! The one place that touches packet memory. Every read and write of the
//! packet goes through [`Packet::load`] / [`Packet::store`], which check the
//! access against `data_end` before doing it; all `unsafe` packet access of
//! the program is in this file.

use aya_ebpf::programs::XdpContext;

pub struct Packet {
    start: usize,
    end: usize,
}

impl Packet {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Length of the frame in bytes.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Address of `size_of::<T>()` bytes at `offset`, if they are all inside
    /// the packet.
    #[inline(always)]
    fn checked<T>(&self, offset: usize) -> Option<usize> {
        let at = self.start + offset;
        if at + core::mem::size_of::<T>() > self.end {
            return None;
        }
        Some(at)
    }

    /// Reads a `T` (a plain-old-data header or field, any alignment) at
    /// `offset`, or `None` if it would read past the end of the packet.
    #[inline(always)]
    pub fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let at = self.checked::<T>(offset)?;
        // SAFETY: `checked` proved `[at, at + size_of::<T>())` lies inside the
        // packet buffer [data, data_end) that the kernel gave us, and
        // `read_unaligned` has no alignment requirement. `T: Copy` types used
        // here are byte arrays and repr(C) integer headers: every bit pattern
        // is valid.
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }

    /// Writes `value` at `offset`; `None` (nothing written) if it would write
    /// past the end of the packet.
    #[inline(always)]
    pub fn store<T: Copy>(&self, offset: usize, value: T) -> Option<()> {
        let at = self.checked::<T>(offset)?;
        // SAFETY: as in `load`: the whole destination range is inside the
        // packet buffer, which XDP programs may write; no alignment needed.
        unsafe { core::ptr::write_unaligned(at as *mut T, value) };
        Some(())
    }
}

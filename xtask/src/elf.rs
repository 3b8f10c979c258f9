//! Just enough ELF64 (little endian) parsing to read a binary's `DT_NEEDED`
//! and `DT_RUNPATH`/`DT_RPATH` entries, i.e. which libLLVM a dynamically
//! linked bpf-linker loads and from where, without external tools.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

#[derive(Debug, Default)]
pub struct Dynamic {
    pub needed: Vec<String>,
    pub runpath: Vec<String>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;
const DT_STRSZ: u64 = 10;
const DT_RPATH: u64 = 15;
const DT_RUNPATH: u64 = 29;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn read_at(file: &mut File, offset: u64, len: u64, limit: u64) -> Option<Vec<u8>> {
    if len > limit {
        return None;
    }
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = vec![0; usize::try_from(len).ok()?];
    file.read_exact(&mut buf).ok()?;
    Some(buf)
}

/// Best effort: `None` if `path` is not a readable, well-formed, dynamically
/// linked little-endian ELF64 file.
pub fn read_dynamic(path: &Path) -> Option<Dynamic> {
    let mut file = File::open(path).ok()?;
    let mut ehdr = [0u8; 64];
    file.read_exact(&mut ehdr).ok()?;
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if ehdr[..4] != *b"\x7fELF" || ehdr[4] != 2 || ehdr[5] != 1 {
        return None;
    }
    let phoff = u64_at(&ehdr, 32)?;
    let phentsize = u64::from(u16_at(&ehdr, 54)?);
    let phnum = u64::from(u16_at(&ehdr, 56)?);
    if phentsize < 56 {
        return None;
    }
    let phdrs = read_at(&mut file, phoff, phentsize * phnum, 1 << 20)?;

    // (vaddr, file offset, file size) of each PT_LOAD, and the PT_DYNAMIC.
    let mut loads = Vec::new();
    let mut dynamic = None;
    for ph in phdrs.chunks_exact(usize::try_from(phentsize).ok()?) {
        let (p_type, p_offset, p_vaddr, p_filesz) = (
            u32_at(ph, 0)?,
            u64_at(ph, 8)?,
            u64_at(ph, 16)?,
            u64_at(ph, 32)?,
        );
        match p_type {
            PT_LOAD => loads.push((p_vaddr, p_offset, p_filesz)),
            PT_DYNAMIC => dynamic = Some((p_offset, p_filesz)),
            _ => {}
        }
    }
    let (dyn_offset, dyn_size) = dynamic?;
    let entries = read_at(&mut file, dyn_offset, dyn_size, 1 << 20)?;

    let (mut strtab, mut strsz) = (None, None);
    let (mut needed, mut runpath) = (Vec::new(), Vec::new());
    for entry in entries.chunks_exact(16) {
        let (tag, val) = (u64_at(entry, 0)?, u64_at(entry, 8)?);
        match tag {
            DT_NULL => break,
            DT_NEEDED => needed.push(val),
            DT_STRTAB => strtab = Some(val),
            DT_STRSZ => strsz = Some(val),
            DT_RPATH | DT_RUNPATH => runpath.push(val),
            _ => {}
        }
    }
    let (strtab, strsz) = (strtab?, strsz?);
    let strtab_offset = loads
        .iter()
        .find(|(vaddr, _, size)| (*vaddr..vaddr.saturating_add(*size)).contains(&strtab))
        .map(|(vaddr, offset, _)| offset + (strtab - vaddr))?;
    let strings = read_at(&mut file, strtab_offset, strsz, 64 << 20)?;
    let string = |at: u64| -> Option<String> {
        let tail = strings.get(usize::try_from(at).ok()?..)?;
        let end = tail.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&tail[..end]).into_owned())
    };
    Some(Dynamic {
        needed: needed.into_iter().filter_map(string).collect(),
        runpath: runpath
            .into_iter()
            .filter_map(string)
            .flat_map(|s| s.split(':').map(str::to_owned).collect::<Vec<_>>())
            .collect(),
    })
}

//! Internet checksum arithmetic (RFC 1071) and incremental updates
//! (RFC 1624), shared by the XDP program (which patches checksums in place)
//! and by host-side tests.
//!
//! Checksums are handled as the big-endian value of the two bytes in the
//! header (`u16::from_be_bytes(hdr.check)`), and data as big-endian 16-bit
//! words, so the arithmetic is the same on every host.

/// Folds a 32-bit one's complement accumulator into 16 bits.
#[inline(always)]
pub const fn fold(mut sum: u32) -> u16 {
    // Two rounds are always enough for any u32.
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds the big-endian 16-bit words of `bytes` (even length) to `sum`.
#[inline(always)]
pub fn add_words<const N: usize>(mut sum: u32, bytes: &[u8; N]) -> u32 {
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

/// RFC 1624 eqn. 3: `HC' = ~(~HC + ~m + m')` for every 16-bit word `m` of
/// `old` replaced by the word `m'` of `new` (both of even length `N`).
#[inline(always)]
pub fn replace<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    let mut sum = u32::from(!check);
    let mut i = 0;
    while i + 1 < N {
        sum += u32::from(!u16::from_be_bytes([old[i], old[i + 1]]));
        sum += u32::from(u16::from_be_bytes([new[i], new[i + 1]]));
        i += 2;
    }
    !fold(sum)
}

/// Like [`replace`] for a UDP checksum: a zero checksum over IPv4 means "no
/// checksum" and stays zero; a computed zero is sent as 0xffff (RFC 768).
#[inline(always)]
pub fn replace_udp<const N: usize>(check: u16, old: &[u8; N], new: &[u8; N]) -> u16 {
    if check == 0 {
        return 0;
    }
    match replace(check, old, new) {
        0 => 0xffff,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// Reference: the full RFC 1071 checksum of `data` (odd length padded).
    fn full(data: &[u8]) -> u16 {
        let mut sum: u64 = 0;
        for chunk in data.chunks(2) {
            let hi = u64::from(chunk[0]) << 8;
            let lo = chunk.get(1).copied().map_or(0, u64::from);
            sum += hi | lo;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// A tiny deterministic PRNG so the test needs no dependency.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u8 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 56) as u8
        }
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 example words: 0x0001 f203 f4f5 f6f7 -> sum ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add_words(0, &data)), 0xddf2);
        assert_eq!(full(&data), !0xddf2);
    }

    #[test]
    fn replace_matches_full_recompute() {
        let mut rng = Lcg(42);
        for round in 0..2000 {
            let mut buf: Vec<u8> = (0..40).map(|_| rng.next()).collect();
            // Checksum field at bytes 10..12 (as in an IPv4 header).
            buf[10] = 0;
            buf[11] = 0;
            let c = full(&buf);
            buf[10..12].copy_from_slice(&c.to_be_bytes());
            assert_eq!(full(&buf), 0, "round {round}: a valid header sums to zero");

            // Replace a 4-byte field at 16..20 and a 2-byte field at 8..10.
            let old4: [u8; 4] = buf[16..20].try_into().unwrap();
            let new4 = [rng.next(), rng.next(), rng.next(), rng.next()];
            let old2: [u8; 2] = buf[8..10].try_into().unwrap();
            let new2 = [rng.next(), rng.next()];
            let mut check = u16::from_be_bytes([buf[10], buf[11]]);
            check = replace(check, &old4, &new4);
            check = replace(check, &old2, &new2);
            buf[16..20].copy_from_slice(&new4);
            buf[8..10].copy_from_slice(&new2);
            buf[10..12].copy_from_slice(&check.to_be_bytes());
            assert_eq!(full(&buf), 0, "round {round}: incremental update is valid");

            // And the 16-byte (IPv6 address) variant.
            let old16: [u8; 16] = buf[20..36].try_into().unwrap();
            let mut new16 = [0u8; 16];
            new16.iter_mut().for_each(|b| *b = rng.next());
            let check = replace(u16::from_be_bytes([buf[10], buf[11]]), &old16, &new16);
            buf[20..36].copy_from_slice(&new16);
            buf[10..12].copy_from_slice(&check.to_be_bytes());
            assert_eq!(full(&buf), 0, "round {round}: 16-byte update is valid");
        }
    }

    #[test]
    fn udp_zero_checksum_rules() {
        assert_eq!(
            replace_udp(0, &[1, 2], &[3, 4]),
            0,
            "no checksum stays none"
        );
        // Find an update that computes 0 and check it becomes 0xffff.
        // check' = ~(~c + ~m + m'); with c = 0xffff, m = 0, m' = 0: ~(0 + 0xffff + 0) = 0.
        assert_eq!(replace(0xffff, &[0, 0], &[0, 0]), 0);
        assert_eq!(replace_udp(0xffff, &[0, 0], &[0, 0]), 0xffff);
    }
}

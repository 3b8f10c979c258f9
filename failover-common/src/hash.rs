//! The flow hash that picks a Maglev entry. Shared so host-side tests can
//! predict which backend a flow lands on.

#[inline(always)]
const fn mix(mut h: u32) -> u32 {
    // murmur3 fmix32
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[inline(always)]
const fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Hash of a flow's 5-tuple (addresses as stored in keys, ports as on the
/// wire). Stable across hosts of the same endianness.
#[inline(always)]
pub const fn flow_hash(
    src: &[u8; 16],
    dst: &[u8; 16],
    sport: [u8; 2],
    dport: [u8; 2],
    proto: u8,
) -> u32 {
    let mut h: u32 = 0x9e37_79b9 ^ proto as u32;
    h = mix(h ^ word(src, 0));
    h = mix(h ^ word(src, 4));
    h = mix(h ^ word(src, 8));
    h = mix(h ^ word(src, 12));
    h = mix(h ^ word(dst, 0));
    h = mix(h ^ word(dst, 4));
    h = mix(h ^ word(dst, 8));
    h = mix(h ^ word(dst, 12));
    let ports = u32::from_ne_bytes([sport[0], sport[1], dport[0], dport[1]]);
    mix(h ^ ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differs_by_port_and_is_deterministic() {
        let a = [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let v = [198, 18, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let h1 = flow_hash(&a, &v, 1000u16.to_be_bytes(), 80u16.to_be_bytes(), 6);
        let h2 = flow_hash(&a, &v, 1001u16.to_be_bytes(), 80u16.to_be_bytes(), 6);
        assert_ne!(h1, h2);
        assert_eq!(
            h1,
            flow_hash(&a, &v, 1000u16.to_be_bytes(), 80u16.to_be_bytes(), 6)
        );
        assert_ne!(
            h1,
            flow_hash(&a, &v, 1000u16.to_be_bytes(), 80u16.to_be_bytes(), 17)
        );
    }

    #[test]
    fn spreads_source_ports_evenly() {
        let a = [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let v = [198, 18, 0, 100, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut buckets = [0u32; 8];
        for port in 0..16384u16 {
            let h = flow_hash(&a, &v, port.to_be_bytes(), 80u16.to_be_bytes(), 6);
            buckets[(h % 8) as usize] += 1;
        }
        for b in buckets {
            assert!(
                (1843..=2253).contains(&b),
                "bucket {b} not within 10% of 2048"
            );
        }
    }
}

//! Maglev consistent-hashing lookup-table builder.
//!
//! Implements the table population algorithm from *Maglev: A Fast and
//! Reliable Software Network Load Balancer* (Eisenbud et al., NSDI 2016),
//! section 3.4, extended with weights.
//!
//! # Algorithm
//!
//! Every member gets a pseudo-random permutation of the table slots derived
//! only from its key:
//!
//! ```text
//! offset  = h1(key) % size
//! skip    = h2(key) % (size - 1) + 1
//! perm[j] = (offset + j * skip) % size
//! ```
//!
//! Because `size` is prime and `1 <= skip < size`, `perm` visits every slot
//! exactly once. The permutation is never materialised: each member keeps a
//! cursor (current slot) and advances it by `skip` on the fly.
//!
//! The table is filled in rounds. In each round every member, in turn, claims
//! the next slot of its permutation that is still empty. Filling stops as
//! soon as every slot is owned.
//!
//! # Weights
//!
//! Weights use the credit scheme also used by Katran: let `W` be the largest
//! weight. At each round, before its turn, member `i` gains `weight[i]`
//! credit; if its credit is then `>= W` it pays `W` and claims one slot,
//! otherwise it skips the round. A maximum-weight member therefore takes a
//! slot every round, and a member of weight `w` takes one in `w / W` of the
//! rounds on average, so the shares are proportional to the weights (up to
//! one slot of rounding per member). With equal weights this degenerates to
//! plain Maglev. Note that a member whose weight is tiny compared to
//! `W * size / sum(weights)` may end up with no slot at all.
//!
//! # Determinism and stability
//!
//! * The hashes are FNV-1a 64 (seeded) followed by the splitmix64 finaliser,
//!   so tables are identical across runs, platforms and Rust versions.
//! * Members are processed in ascending key order regardless of the order of
//!   the input slice, so which *key* owns which slot depends only on the
//!   set of `(key, weight)` pairs and the table size. The returned entries
//!   are indexes into the caller's slice.

/// Default (and recommended) table size; prime.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;
/// Largest table the dataplane can hold (its compile-time capacity).
pub const MAX_TABLE_SIZE: u32 = 65537;
/// Largest number of members per table the dataplane can hold.
pub const MAX_MEMBERS: usize = 32;

/// Seed for the hash that gives a member's starting offset.
const OFFSET_SEED: u64 = 0x6d61_676c_6576_6f66; // "maglevof"
/// Seed for the hash that gives a member's skip (step).
const SKIP_SEED: u64 = 0x6d61_676c_6576_736b; // "maglevsk"
/// Marker for a not-yet-filled slot (never a valid index: members <= 32).
const EMPTY: u16 = u16::MAX;

/// One backend taking part in a Maglev table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Stable identity of the member, e.g. `"198.18.1.2:8080/tcp"`. The
    /// member's slots depend only on this key (and the weights of the set).
    pub key: String,
    /// Relative weight; must be non-zero.
    pub weight: u32,
}

/// Reasons a table cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime number.
    #[error("maglev table size {size} is not prime (use e.g. {DEFAULT_TABLE_SIZE})")]
    NotPrime {
        /// Requested table size.
        size: u32,
    },
    /// The table size exceeds the dataplane's capacity.
    #[error("maglev table size {size} exceeds the maximum of {max}")]
    TooLarge {
        /// Requested table size.
        size: u32,
        /// Largest supported size.
        max: u32,
    },
    /// The table has fewer slots than there are members.
    #[error(
        "maglev table size {size} is smaller than the number of members ({members}); \
         the size must be at least the member count, and a prime of at least \
         100 x the member count (e.g. {DEFAULT_TABLE_SIZE}) is recommended"
    )]
    TooSmall {
        /// Requested table size.
        size: u32,
        /// Number of members.
        members: usize,
    },
    /// More members than the dataplane supports.
    #[error("too many maglev members: {count} (maximum {max})")]
    TooManyMembers {
        /// Number of members given.
        count: usize,
        /// Largest supported number.
        max: usize,
    },
    /// The member list is empty.
    #[error("a maglev table needs at least one member")]
    NoMembers,
    /// Two members share the same key.
    #[error("duplicate maglev member key {key:?}")]
    DuplicateKey {
        /// The repeated key.
        key: String,
    },
    /// A member has weight zero.
    #[error("maglev member {key:?} has weight 0 (weights must be at least 1)")]
    ZeroWeight {
        /// Key of the offending member.
        key: String,
    },
}

/// Deterministic primality test (trial division; `n` is a `u32`).
#[must_use]
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n < 4 {
        return true;
    }
    if n.is_multiple_of(2) || n.is_multiple_of(3) {
        return false;
    }
    let n = u64::from(n);
    let mut d: u64 = 5;
    while d * d <= n {
        if n.is_multiple_of(d) || n.is_multiple_of(d + 2) {
            return false;
        }
        d += 6;
    }
    true
}

/// splitmix64 finaliser: a bijective avalanche mix.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Seeded, platform-independent hash: FNV-1a 64 over the little-endian seed
/// bytes followed by the key bytes, then the splitmix64 finaliser.
fn hash_key(key: &str, seed: u64) -> u64 {
    const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = FNV_OFFSET_BASIS;
    for &b in seed.to_le_bytes().iter().chain(key.as_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    mix64(h)
}

/// Validates the inputs and returns the indexes of `members` sorted by key.
fn validate(members: &[Member], size: u32) -> Result<Vec<usize>, MaglevError> {
    if members.is_empty() {
        return Err(MaglevError::NoMembers);
    }
    if members.len() > MAX_MEMBERS {
        return Err(MaglevError::TooManyMembers {
            count: members.len(),
            max: MAX_MEMBERS,
        });
    }
    if let Some(m) = members.iter().find(|m| m.weight == 0) {
        return Err(MaglevError::ZeroWeight { key: m.key.clone() });
    }
    let mut order: Vec<usize> = (0..members.len()).collect();
    order.sort_unstable_by(|&a, &b| members[a].key.cmp(&members[b].key));
    if let Some(w) = order
        .windows(2)
        .find(|w| members[w[0]].key == members[w[1]].key)
    {
        return Err(MaglevError::DuplicateKey {
            key: members[w[0]].key.clone(),
        });
    }
    if size > MAX_TABLE_SIZE {
        return Err(MaglevError::TooLarge {
            size,
            max: MAX_TABLE_SIZE,
        });
    }
    if !is_prime(size) {
        return Err(MaglevError::NotPrime { size });
    }
    if (size as usize) < members.len() {
        return Err(MaglevError::TooSmall {
            size,
            members: members.len(),
        });
    }
    Ok(order)
}

/// Per-member fill state.
struct Cursor {
    /// Index into the caller's `members` slice (the value written to slots).
    index: u16,
    /// Current position in the member's permutation (next slot to try).
    pos: u32,
    /// Permutation step, in `1..size`.
    skip: u32,
    weight: u64,
    credit: u64,
}

/// Builds a Maglev lookup table of `size` entries for `members`.
///
/// Returns `size` entries, each an index into `members` (u16).
///
/// `size` must be prime, at most [`MAX_TABLE_SIZE`] and at least
/// `members.len()`; there must be between 1 and [`MAX_MEMBERS`] members with
/// distinct keys and non-zero weights. See the module documentation for the
/// algorithm, weighting scheme and determinism guarantees.
///
/// # Errors
///
/// Returns [`MaglevError`] if `members` is empty, has more than
/// [`MAX_MEMBERS`] entries, contains a zero weight or a duplicate key, or if
/// `size` is larger than [`MAX_TABLE_SIZE`], not prime, or smaller than the
/// number of members.
pub fn build(members: &[Member], size: u32) -> Result<Vec<u16>, MaglevError> {
    let order = validate(members, size)?;

    let mut cursors: Vec<Cursor> = order
        .iter()
        .map(|&i| {
            let key = &members[i].key;
            let offset = hash_key(key, OFFSET_SEED) % u64::from(size);
            // size >= 2 here (prime), so size - 1 >= 1.
            let skip = hash_key(key, SKIP_SEED) % u64::from(size - 1) + 1;
            Cursor {
                // i < MAX_MEMBERS (32); offset and skip are < size: the
                // casts never truncate.
                index: i as u16,
                pos: offset as u32,
                skip: skip as u32,
                weight: u64::from(members[i].weight),
                credit: 0,
            }
        })
        .collect();
    let max_weight = cursors.iter().map(|c| c.weight).max().unwrap_or(1);

    let mut table = vec![EMPTY; size as usize];
    let mut filled: u32 = 0;

    // Every round the max-weight member claims a slot, so this terminates
    // after at most `size` rounds.
    'fill: loop {
        for c in &mut cursors {
            c.credit += c.weight;
            if c.credit < max_weight {
                continue;
            }
            c.credit -= max_weight;
            // The permutation is a full cycle over the slots and the table is
            // not full yet, so an empty slot is always found.
            while table[c.pos as usize] != EMPTY {
                c.pos += c.skip;
                if c.pos >= size {
                    c.pos -= size;
                }
            }
            table[c.pos as usize] = c.index;
            filled += 1;
            if filled == size {
                break 'fill;
            }
        }
    }

    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(key: impl Into<String>, weight: u32) -> Member {
        Member {
            key: key.into(),
            weight,
        }
    }

    fn members(n: usize) -> Vec<Member> {
        (0..n)
            .map(|i| member(format!("198.18.1.{}:8080/tcp", i + 2), 1))
            .collect()
    }

    fn counts(table: &[u16], n: usize) -> Vec<usize> {
        let mut c = vec![0usize; n];
        for &e in table {
            c[e as usize] += 1;
        }
        c
    }

    /// Table expressed as owning key per slot.
    fn owners<'a>(members: &'a [Member], table: &[u16]) -> Vec<&'a str> {
        table
            .iter()
            .map(|&e| members[e as usize].key.as_str())
            .collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(!is_prime(65535));
        assert!(is_prime(2));
        assert!(is_prime(3));
        assert!(!is_prime(1));
        assert!(!is_prime(0));
        assert!(!is_prime(4));
        assert!(!is_prime(25));
        assert!(!is_prime(49));
        assert!(is_prime(251));
        assert!(is_prime(65539));
        assert!(is_prime(4_294_967_291)); // largest u32 prime
        assert!(!is_prime(u32::MAX));
        assert!(!is_prime(65521 * 65519));
        let small: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(small, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    }

    #[test]
    fn hash_and_table_are_pinned() {
        // Pin the hash and a table prefix so accidental changes (which would
        // reshuffle every deployed table) are caught.
        assert_eq!(hash_key("", OFFSET_SEED), 0xfa10_b0b8_cf14_9608);
        assert_eq!(hash_key("", SKIP_SEED), 0x0c60_0304_cb79_80aa);
        assert_eq!(hash_key("a", OFFSET_SEED), 0x2cbd_3216_2a74_d069);
        assert_eq!(hash_key("a", SKIP_SEED), 0xae4a_14f3_8ac4_7d22);
        assert_eq!(
            hash_key("198.18.1.2:8080/tcp", OFFSET_SEED),
            0x2686_5072_8a56_e22a
        );
        assert_eq!(
            hash_key("198.18.1.2:8080/tcp", SKIP_SEED),
            0xc148_fc7e_f743_387b
        );
        let t = build(&members(16), DEFAULT_TABLE_SIZE).unwrap();
        assert_eq!(t[..16], [7, 13, 4, 0, 3, 7, 3, 11, 0, 12, 7, 4, 9, 1, 1, 3]);
    }

    #[test]
    fn errors() {
        let three = members(3);
        assert_eq!(
            build(&three, 65535),
            Err(MaglevError::NotPrime { size: 65535 })
        );
        assert_eq!(build(&three, 0), Err(MaglevError::NotPrime { size: 0 }));
        assert_eq!(build(&three, 1), Err(MaglevError::NotPrime { size: 1 }));
        assert_eq!(
            build(&three, 65539),
            Err(MaglevError::TooLarge {
                size: 65539,
                max: MAX_TABLE_SIZE
            })
        );
        assert_eq!(
            build(&three, u32::MAX),
            Err(MaglevError::TooLarge {
                size: u32::MAX,
                max: MAX_TABLE_SIZE
            })
        );
        assert_eq!(build(&[], 65537), Err(MaglevError::NoMembers));
        assert_eq!(
            build(&members(33), 65537),
            Err(MaglevError::TooManyMembers { count: 33, max: 32 })
        );
        assert!(build(&members(32), 65537).is_ok());

        let dup = vec![member("a", 1), member("b", 1), member("a", 2)];
        assert_eq!(
            build(&dup, 65537),
            Err(MaglevError::DuplicateKey { key: "a".into() })
        );
        let zero = vec![member("a", 1), member("b", 0)];
        assert_eq!(
            build(&zero, 65537),
            Err(MaglevError::ZeroWeight { key: "b".into() })
        );
        assert_eq!(
            build(&members(5), 3),
            Err(MaglevError::TooSmall {
                size: 3,
                members: 5
            })
        );
        // size == member count is allowed: every member gets one slot.
        let t = build(&members(5), 5).unwrap();
        assert_eq!(counts(&t, 5), vec![1; 5]);
        // Messages are informative.
        let msg = MaglevError::TooSmall {
            size: 3,
            members: 5,
        }
        .to_string();
        assert!(msg.contains('3') && msg.contains('5'), "{msg}");
        assert!(
            MaglevError::NotPrime { size: 65535 }
                .to_string()
                .contains("65535")
        );
    }

    #[test]
    fn tiny_tables() {
        let one = members(1);
        assert_eq!(build(&one, 2).unwrap(), vec![0, 0]);
        let two = members(2);
        let t = build(&two, 2).unwrap();
        assert_eq!(counts(&t, 2), vec![1, 1]);
        let t = build(&two, 3).unwrap();
        assert_eq!(t.len(), 3);
        assert!(counts(&t, 2).iter().all(|&c| c >= 1));
    }

    #[test]
    fn entries_in_range_and_full() {
        for n in [1usize, 2, 7, 32] {
            for size in [31u32, 251, 65537] {
                if (size as usize) < n {
                    continue;
                }
                let m = members(n);
                let t = build(&m, size).unwrap();
                assert_eq!(t.len(), size as usize);
                assert!(t.iter().all(|&e| (e as usize) < n));
            }
        }
    }

    #[test]
    fn balance_equal_weights() {
        let size = DEFAULT_TABLE_SIZE;
        for n in [1usize, 2, 3, 5, 7, 16, 32] {
            let m = members(n);
            let t = build(&m, size).unwrap();
            let ideal = f64::from(size) / n as f64;
            for (i, &c) in counts(&t, n).iter().enumerate() {
                let rel = (c as f64 - ideal).abs() / ideal;
                assert!(rel < 0.01, "n={n} member {i}: {c} vs ideal {ideal:.1}");
            }
            // Plain Maglev: counts differ by at most one.
            let c = counts(&t, n);
            assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn weights_proportional() {
        let m = vec![member("a", 1), member("b", 2), member("c", 3)];
        let size = DEFAULT_TABLE_SIZE;
        let t = build(&m, size).unwrap();
        let c = counts(&t, 3);
        for (i, w) in [1.0f64, 2.0, 3.0].iter().enumerate() {
            let ideal = w / 6.0;
            let share = c[i] as f64 / f64::from(size);
            let rel = (share - ideal).abs() / ideal;
            assert!(rel < 0.02, "member {i}: share {share:.4} vs {ideal:.4}");
        }

        // Scaling all weights leaves the table unchanged.
        let scaled = vec![member("a", 10), member("b", 20), member("c", 30)];
        assert_eq!(build(&scaled, size).unwrap(), t);

        // Extreme weights: still terminates, heavy member dominates.
        let skewed = vec![member("light", 1), member("heavy", u32::MAX)];
        let t = build(&skewed, size).unwrap();
        let c = counts(&t, 2);
        assert!(c[1] >= size as usize - 1, "{c:?}");
    }

    #[test]
    fn minimal_disruption() {
        let size = DEFAULT_TABLE_SIZE;
        let all = members(16);
        let before = build(&all, size).unwrap();
        let before_owners = owners(&all, &before);

        // Measured (16 members, size 65537): removing member 5 changes the
        // owner of 184 / 61441 = 0.30% of the slots held by surviving
        // members; over all 16 possible removals the mean is 0.36% and the
        // worst 0.61% (member 10: 373 / 61441).
        let mut total = 0.0;
        for removed in 0..all.len() {
            let mut fewer = all.clone();
            let gone = fewer.remove(removed);
            let after = build(&fewer, size).unwrap();
            let after_owners = owners(&fewer, &after);

            let mut surviving = 0usize;
            let mut changed = 0usize;
            for (b, a) in before_owners.iter().zip(&after_owners) {
                assert_ne!(*a, gone.key.as_str());
                if *b != gone.key.as_str() {
                    surviving += 1;
                    if b != a {
                        changed += 1;
                    }
                }
            }
            let fraction = changed as f64 / surviving as f64;
            println!("remove {removed}: disruption {changed}/{surviving} = {fraction:.5}");
            assert!(fraction < 0.015, "remove {removed}: {fraction:.5}");
            total += fraction;

            // Adding the member back (at a different position) restores the
            // original ownership exactly.
            let mut restored = fewer.clone();
            restored.push(gone);
            let again = build(&restored, size).unwrap();
            assert_eq!(owners(&restored, &again), before_owners);
        }
        let mean = total / all.len() as f64;
        assert!(mean < 0.01, "mean disruption {mean:.5}");
    }

    #[test]
    fn deterministic_and_order_independent() {
        let size = DEFAULT_TABLE_SIZE;
        let m = members(16);
        let t1 = build(&m, size).unwrap();
        let t2 = build(&m, size).unwrap();
        assert_eq!(t1, t2);

        let reference = owners(&m, &t1);
        let mut reversed = m.clone();
        reversed.reverse();
        let tr = build(&reversed, size).unwrap();
        assert_eq!(owners(&reversed, &tr), reference);

        // A fixed pseudo-random shuffle as well.
        let mut shuffled = m.clone();
        let mut state = 0x1234_5678_u64;
        for i in (1..shuffled.len()).rev() {
            state = mix64(state);
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        assert_ne!(shuffled, m);
        let ts = build(&shuffled, size).unwrap();
        assert_eq!(owners(&shuffled, &ts), reference);
    }
}

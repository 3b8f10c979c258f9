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
mod tests;

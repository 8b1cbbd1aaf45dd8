//! Which items a pack may hold, written into its key: a Bloom filter of its members' ids.
//!
//! Why in the key: an erasure must blank its item in every pack holding the item's bytes, also
//! in packs no index entry names (a member whose commit lost, compaction's old pack during its
//! grace). The key is written with the pack, in the same PUT, so it can't be missing or late the
//! way a separate index record could, and one LIST returns a thousand keys: an erasure lists the
//! collection's packs and reads only those whose filter says "maybe", instead of every footer.
//!
//! Why written here and not taken from a Bloom filter crate: the filter is stored, so its hash
//! and bit layout must never change with a dependency's version. It is SHA-256 of the id, double
//! hashing (`h1 + i·h2`, Kirsch–Mitzenmacher) for [`HASHES`] positions in `m` bits, `m` =
//! [`BITS_PER_MEMBER`] per member rounded up to whole bytes, bit `p` being bit `p % 8` of byte
//! `p / 8`, base64url without padding. At 10 bits and 7 hashes about 1 in 120 packs that lack an
//! item say "maybe"; none that hold it say "no". A pack holds at most 64 members (80 bytes of
//! filter, 107 characters of key).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::engine::model::ItemId;

/// Filter bits per member.
const BITS_PER_MEMBER: usize = 10;
/// Bit positions per id.
const HASHES: u64 = 7;

/// An id as a filter tests it: the two hashes its positions are made of (hashed once, tested
/// against many filters).
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    h1: u64,
    h2: u64,
}

impl Probe {
    pub fn of(id: &ItemId) -> Probe {
        let digest = Sha256::digest(id.as_str().as_bytes());
        let mut h1 = [0u8; 8];
        let mut h2 = [0u8; 8];
        h1.copy_from_slice(&digest[..8]);
        h2.copy_from_slice(&digest[8..16]);
        Probe {
            h1: u64::from_le_bytes(h1),
            // A step of 0 would put every position on h1: an odd one never is.
            h2: u64::from_le_bytes(h2) | 1,
        }
    }

    fn positions(self, bits: u64) -> impl Iterator<Item = usize> {
        (0..HASHES).map(move |i| (self.h1.wrapping_add(i.wrapping_mul(self.h2)) % bits) as usize)
    }
}

/// The filter of `ids`, as it is written in a key.
pub fn of<'a>(ids: impl ExactSizeIterator<Item = &'a ItemId>) -> String {
    let bytes = (ids.len().max(1) * BITS_PER_MEMBER).div_ceil(8);
    let mut filter = vec![0u8; bytes];
    for id in ids {
        for p in Probe::of(id).positions(bytes as u64 * 8) {
            filter[p / 8] |= 1 << (p % 8);
        }
    }
    URL_SAFE_NO_PAD.encode(filter)
}

/// A decoded filter.
pub struct Filter(Vec<u8>);

impl Filter {
    /// The filter written as `text`; `None` when it isn't one (the pack is then read to tell).
    pub fn parse(text: &str) -> Option<Filter> {
        URL_SAFE_NO_PAD.decode(text).ok().filter(|f| !f.is_empty()).map(Filter)
    }

    /// `false` only when the pack surely doesn't hold the probed id.
    pub fn may_hold(&self, id: Probe) -> bool {
        id.positions(self.0.len() as u64 * 8)
            .all(|p| self.0[p / 8] & (1 << (p % 8)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(prefix: &str, n: usize) -> Vec<ItemId> {
        (0..n).map(|i| format!("{prefix}-{i}").parse().unwrap()).collect()
    }

    #[test]
    fn a_filter_never_says_no_to_a_member_and_rarely_yes_to_another() {
        for n in [1, 2, 10, 64] {
            let members = ids("member", n);
            let filter = Filter::parse(&of(members.iter())).unwrap();
            assert!(members.iter().all(|id| filter.may_hold(Probe::of(id))), "{n} members");
            let strangers = ids("stranger", 20_000);
            let yes = strangers.iter().filter(|id| filter.may_hold(Probe::of(id))).count();
            // 10 bits and 7 hashes per member: ~0.8% (1.2% at one member, whose 16 bits round up).
            assert!(yes < 20_000 / 50, "{n} members: {yes} of 20000 strangers said maybe");
        }
    }

    #[test]
    fn the_filter_of_given_ids_never_changes() {
        // Stored in keys: a change here would make erasures skip packs written before it.
        let members = ids("order", 3);
        // The value also follows from the module doc by hand (python: hashlib.sha256, int.from_bytes).
        assert_eq!(of(members.iter()), "EY70vw");
    }

    #[test]
    fn text_that_is_no_filter_is_refused() {
        assert!(Filter::parse("").is_none());
        assert!(Filter::parse("not a filter!").is_none());
    }
}

//! The pack object: the envelopes of writes made together, one after the other, then a footer
//! that lists them. Each envelope is exactly what a write alone would have stored at its own key
//! (it names its database, collection, item, ov and write id), so a reader of one member checks
//! it as it checks any payload, and a rebuild or scrub can take a pack apart without the index.
//!
//! Layout: `envelope₀ … envelopeₙ₋₁ footer(JSON) len(u64, big-endian) "CHRNPACK"`.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::filter::Filter;
use crate::engine::error::{Error, Result};
use crate::engine::model::{CollectionName, ItemId, PackSlot};

/// The last 8 bytes of every pack.
const MAGIC: &[u8; 8] = b"CHRNPACK";
/// The footer length and the magic.
pub const TRAILER: u64 = 16;
/// Where a collection's packs are, relative to the database: `chronos-packs/<collection>/`.
/// Collection names can't start with `chronos`, so no item's keys can be mistaken for these.
pub const PACKS_PREFIX: &str = "chronos-packs/";

/// The key prefix of a collection's packs.
pub fn collection_prefix(collection: &CollectionName) -> String {
    format!("{PACKS_PREFIX}{collection}/")
}

/// A new pack's key: `<collection prefix><uuid>.m<filter>.pack`. Unique per pack written (a
/// UUIDv7, so a pack's key also says when it was written, which scrub's grace needs), flat (one
/// level under the collection: SeaweedFS spends more per PUT on deep keys), and naming which
/// items it may hold ([`filter`](super::filter), what erasure looks for).
pub fn new_key<'a>(collection: &CollectionName, ids: impl ExactSizeIterator<Item = &'a ItemId>) -> String {
    format!(
        "{}{}.m{}.pack",
        collection_prefix(collection),
        uuid::Uuid::now_v7().simple(),
        super::filter::of(ids)
    )
}

/// What a pack's key says: when it was written (its UUIDv7) and which items it may hold
/// (`None`: no filter, the key of a pack written before keys had one; its footer tells).
pub fn parse_key(key: &str) -> Option<(uuid::Uuid, Option<Filter>)> {
    let file = key.rsplit('/').next()?.strip_suffix(".pack")?;
    match file.split_once('.') {
        None => Some((uuid::Uuid::try_parse(file).ok()?, None)),
        Some((id, filter)) => Some((
            uuid::Uuid::try_parse(id).ok()?,
            Some(Filter::parse(filter.strip_prefix('m')?)?),
        )),
    }
}

/// One envelope in a pack, as the footer lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub id: ItemId,
    pub ov: u64,
    pub write_id: String,
    pub offset: u64,
    pub len: u64,
}

/// What the footer says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Footer {
    pub format: u32,
    pub database: String,
    pub collection: String,
    pub members: Vec<Member>,
}

impl Footer {
    /// Where member `m` lies, as a version names it.
    pub fn slot(key: &str, m: &Member) -> PackSlot {
        PackSlot {
            key: key.to_owned(),
            offset: m.offset,
            len: m.len,
        }
    }
}

/// One payload to pack: its version's coordinates and its envelope.
pub struct Entry<'a> {
    pub id: &'a ItemId,
    pub ov: u64,
    pub write_id: &'a str,
    pub envelope: &'a [u8],
}

/// The pack of `entries`, and the footer it ends with (member `i` is `entries[i]`).
pub fn encode(database: &str, collection: &CollectionName, entries: &[Entry<'_>]) -> Result<(Bytes, Footer)> {
    let size: usize = entries.iter().map(|e| e.envelope.len()).sum();
    let mut body = BytesMut::with_capacity(size + 128 * entries.len() + 256);
    let mut members = Vec::with_capacity(entries.len());
    for e in entries {
        members.push(Member {
            id: e.id.clone(),
            ov: e.ov,
            write_id: e.write_id.to_owned(),
            offset: body.len() as u64,
            len: e.envelope.len() as u64,
        });
        body.put_slice(e.envelope);
    }
    let footer = Footer {
        format: 1,
        database: database.to_owned(),
        collection: collection.to_string(),
        members,
    };
    let json = serde_json::to_vec(&footer).map_err(|e| Error::Corrupt(format!("a pack footer: {e}")))?;
    body.put_slice(&json);
    body.put_u64(json.len() as u64);
    body.put_slice(MAGIC);
    Ok((body.freeze(), footer))
}

/// The footer's length from a pack's last 16 bytes (or more: the tail of the pack).
pub fn footer_len(tail: &[u8]) -> Result<u64> {
    let n = tail.len();
    if n < TRAILER as usize || &tail[n - 8..] != MAGIC {
        return Err(Error::Corrupt("not a pack: the trailer is missing".into()));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&tail[n - 16..n - 8]);
    Ok(u64::from_be_bytes(len))
}

/// The footer from a pack's tail, if the tail holds all of it (`Ok(None)`: read a longer tail,
/// [`footer_len`] + [`TRAILER`] bytes).
pub fn decode_footer(tail: &[u8]) -> Result<Option<Footer>> {
    let len = footer_len(tail)?;
    let need = len.saturating_add(TRAILER);
    if need > tail.len() as u64 {
        return Ok(None);
    }
    let start = tail.len() - need as usize;
    let json = &tail[start..tail.len() - TRAILER as usize];
    serde_json::from_slice(json)
        .map(Some)
        .map_err(|e| Error::Corrupt(format!("a pack footer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pack::filter::Probe;

    #[test]
    fn a_pack_lists_its_members_where_they_are() {
        let c: CollectionName = "orders".parse().unwrap();
        let (a, b): (ItemId, ItemId) = ("a".parse().unwrap(), "b".parse().unwrap());
        let entries = [
            Entry {
                id: &a,
                ov: 0,
                write_id: "w1",
                envelope: b"{\"first\":1}",
            },
            Entry {
                id: &b,
                ov: 3,
                write_id: "w2",
                envelope: b"{\"second\":22}",
            },
        ];
        let (body, footer) = encode("db", &c, &entries).unwrap();
        for (m, e) in footer.members.iter().zip(&entries) {
            assert_eq!(&body[m.offset as usize..(m.offset + m.len) as usize], e.envelope);
        }
        assert_eq!(decode_footer(&body).unwrap().unwrap(), footer);
        // A tail too short for the footer asks for the length it needs.
        let tail = &body[body.len() - 20..];
        assert_eq!(decode_footer(tail).unwrap(), None);
        let need = footer_len(tail).unwrap() + TRAILER;
        assert_eq!(
            decode_footer(&body[body.len() - need as usize..]).unwrap().unwrap(),
            footer
        );
        assert!(decode_footer(b"{\"not\": \"a pack\"}").is_err());
    }

    #[test]
    fn pack_keys_are_flat_unique_and_name_their_members() {
        let c: CollectionName = "orders".parse().unwrap();
        let (a, b): (ItemId, ItemId) = ("a".parse().unwrap(), "b".parse().unwrap());
        let (k1, k2) = (new_key(&c, [&a].into_iter()), new_key(&c, [&a].into_iter()));
        assert_ne!(k1, k2);
        assert!(k1.starts_with("chronos-packs/orders/") && k1.ends_with(".pack"));
        assert_eq!(k1.matches('/').count(), 2);
        let (_, filter) = parse_key(&k1).unwrap();
        let filter = filter.expect("a new key has a filter");
        assert!(filter.may_hold(Probe::of(&a)) && !filter.may_hold(Probe::of(&b)));
        // A key written before keys had filters still parses: it may hold anything.
        let old = "chronos-packs/orders/0192f0c1a2b37c4d8e9f0a1b2c3d4e5f.pack";
        assert!(matches!(parse_key(old), Some((_, None))));
        assert!(parse_key("chronos-packs/orders/0192f0c1a2b37c4d8e9f0a1b2c3d4e5f.x!.pack").is_none());
        assert!(parse_key("orders/a/v0.w.json").is_none());
    }
}

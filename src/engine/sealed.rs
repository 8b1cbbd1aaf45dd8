//! The sealed form of a version's data (crypto-shredding): AES-256-GCM under a data key of the
//! item's own, which is itself kept wrapped by the database's key-encryption key (KEK).
//!
//! Only the envelope's `data` is sealed; its header (database, collection, id, ov, cv, op,
//! checksum of the plaintext, indexed metadata) stays in clear, because a rebuild and a verify
//! read it without any key. Sealed data is a JSON object of its own,
//! `{"$sealed":{"alg":"A256GCM","keyId":…,"nonce":…,"ct":…}}`, so the envelope stays JSON.
//! Its associated data names the version (`database/collection/id/ov/writeId`): a sealed blob
//! moved into another version's object fails to open rather than being served there.
//!
//! Destroying an item's wrapped data key makes every version sealed under it unreadable for
//! good, in every copy of every object — what erasure needs where objects can't be deleted
//! (S3 Object Lock). `ring` provides the AEAD: it is already built for rustls, and is well kept.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

const ALG: &str = "A256GCM";
const KEY_LEN: usize = 32;

/// The key-encryption key: 32 bytes, given base64-encoded in the configuration (a Secret).
/// Never printed.
#[derive(Clone)]
pub struct Kek(Arc<[u8; KEY_LEN]>);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl PartialEq for Kek {
    fn eq(&self, other: &Self) -> bool {
        // Compared only to tell whether a reloaded configuration changed, never to authenticate.
        self.0 == other.0
    }
}

impl Kek {
    /// From its base64 text (standard alphabet, 32 bytes decoded).
    pub fn from_base64(text: &str) -> Result<Kek> {
        let bytes = B64
            .decode(text.trim())
            .map_err(|_| Error::validation("encryptionKey", "expected base64"))?;
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| Error::validation("encryptionKey", "expected 32 bytes (base64 of 32 random bytes)"))?;
        Ok(Kek(Arc::new(key)))
    }

    fn key(&self) -> Result<LessSafeKey> {
        aead_key(&self.0[..])
    }
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Corrupt("an AES-256 key of the wrong length".into()))
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| Error::Unsupported("no secure randomness on this machine".into()))?;
    Ok(out)
}

/// `nonce || ciphertext || tag` of `plain` under `key`, bound to `aad`.
fn seal_bytes(key: &LessSafeKey, plain: &[u8], aad: &str) -> Result<Vec<u8>> {
    let nonce = random::<NONCE_LEN>()?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut buf)
        .map_err(|_| Error::Corrupt("sealing failed".into()))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

/// The plaintext of [`seal_bytes`]' output; `None` when it does not open (wrong key or data).
fn open_bytes(key: &LessSafeKey, sealed: &[u8], aad: &str) -> Option<Vec<u8>> {
    let (nonce, rest) = sealed.split_at_checked(NONCE_LEN)?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = rest.to_vec();
    let plain = key.open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf).ok()?;
    Some(plain.to_vec())
}

/// An item's data key as the metadata store keeps it: wrapped by the KEK.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WrappedKey {
    pub key_id: String,
    /// base64 of `nonce || wrapped key || tag`.
    pub wrapped: String,
}

/// An item's data key, unwrapped for use.
pub struct DataKey {
    pub id: String,
    key: LessSafeKey,
}

impl DataKey {
    /// A new random key, and its wrapped form (bound to `owner`, the item it belongs to).
    pub fn generate(kek: &Kek, owner: &str) -> Result<(DataKey, WrappedKey)> {
        let raw = random::<KEY_LEN>()?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let wrapped = B64.encode(seal_bytes(&kek.key()?, &raw, &format!("{owner}/{id}"))?);
        let key = DataKey {
            id: id.clone(),
            key: aead_key(&raw)?,
        };
        Ok((key, WrappedKey { key_id: id, wrapped }))
    }

    /// Unwrap a stored key of `owner`; a key that does not open under this KEK is corrupt.
    pub fn unwrap(kek: &Kek, owner: &str, stored: &WrappedKey) -> Result<DataKey> {
        let bytes = B64
            .decode(&stored.wrapped)
            .map_err(|_| Error::Corrupt(format!("data key of {owner}: not base64")))?;
        let raw = open_bytes(&kek.key()?, &bytes, &format!("{owner}/{}", stored.key_id)).ok_or_else(|| {
            Error::Corrupt(format!(
                "data key of {owner} does not open with the configured encryptionKey"
            ))
        })?;
        Ok(DataKey {
            id: stored.key_id.clone(),
            key: aead_key(&raw)?,
        })
    }

    /// `data_json` sealed for the version `aad` names, as the JSON text stored in its place.
    pub fn seal(&self, data_json: &str, aad: &str) -> Result<String> {
        let ct = seal_bytes(&self.key, data_json.as_bytes(), aad)?;
        let (nonce, ct) = ct.split_at(NONCE_LEN);
        let sealed = SealedDoc {
            sealed: Sealed {
                alg: ALG.into(),
                key_id: self.id.clone(),
                nonce: B64.encode(nonce),
                ct: B64.encode(ct),
            },
        };
        serde_json::to_string(&sealed).map_err(|e| Error::Corrupt(format!("cannot encode sealed data: {e}")))
    }
}

#[derive(Serialize, Deserialize)]
struct SealedDoc {
    #[serde(rename = "$sealed")]
    sealed: Sealed,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sealed {
    alg: String,
    key_id: String,
    nonce: String,
    ct: String,
}

/// Whether stored data is sealed (it is then checked by its AEAD tag when opened, not by the
/// plaintext checksum the header names).
pub fn is_sealed(data_json: &str) -> bool {
    data_json.starts_with("{\"$sealed\":")
}

/// Why sealed data did not open.
#[derive(Debug)]
pub enum OpenError {
    /// No key, or not the key it was sealed with: the key was destroyed (the item was erased).
    KeyGone,
    /// The blob is damaged or belongs to another version.
    Damaged(String),
}

/// The JSON text sealed in `data_json` (made by [`DataKey::seal`] with this `aad`).
pub fn open(data_json: &str, key: Option<&DataKey>, aad: &str) -> Result<String, OpenError> {
    let doc: SealedDoc =
        serde_json::from_str(data_json).map_err(|e| OpenError::Damaged(format!("sealed data: {e}")))?;
    let s = doc.sealed;
    if s.alg != ALG {
        return Err(OpenError::Damaged(format!("sealed with unknown algorithm {}", s.alg)));
    }
    let key = key.filter(|k| k.id == s.key_id).ok_or(OpenError::KeyGone)?;
    let mut blob = B64
        .decode(&s.nonce)
        .map_err(|_| OpenError::Damaged("nonce is not base64".into()))?;
    blob.extend(
        B64.decode(&s.ct)
            .map_err(|_| OpenError::Damaged("ciphertext is not base64".into()))?,
    );
    let plain = open_bytes(&key.key, &blob, aad).ok_or_else(|| OpenError::Damaged("does not open".into()))?;
    String::from_utf8(plain).map_err(|_| OpenError::Damaged("not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek() -> Kek {
        Kek::from_base64(&B64.encode([7u8; 32])).unwrap()
    }

    #[test]
    fn sealed_data_opens_only_with_its_key_and_version() {
        let (key, wrapped) = DataKey::generate(&kek(), "db/c/i").unwrap();
        let sealed = key.seal(r#"{"secret":"MARKER"}"#, "db/c/i/0/w").unwrap();
        assert!(is_sealed(&sealed) && !sealed.contains("MARKER"), "{sealed}");
        assert_eq!(
            open(&sealed, Some(&key), "db/c/i/0/w").unwrap(),
            r#"{"secret":"MARKER"}"#
        );
        assert!(matches!(
            open(&sealed, Some(&key), "db/c/i/1/w"),
            Err(OpenError::Damaged(_))
        ));
        assert!(matches!(open(&sealed, None, "db/c/i/0/w"), Err(OpenError::KeyGone)));
        let (other, _) = DataKey::generate(&kek(), "db/c/i").unwrap();
        assert!(matches!(
            open(&sealed, Some(&other), "db/c/i/0/w"),
            Err(OpenError::KeyGone)
        ));

        let again = DataKey::unwrap(&kek(), "db/c/i", &wrapped).unwrap();
        assert_eq!(
            open(&sealed, Some(&again), "db/c/i/0/w").unwrap(),
            r#"{"secret":"MARKER"}"#
        );
        assert!(
            DataKey::unwrap(&kek(), "db/c/j", &wrapped).is_err(),
            "bound to its item"
        );
        let wrong = Kek::from_base64(&B64.encode([8u8; 32])).unwrap();
        assert!(DataKey::unwrap(&wrong, "db/c/i", &wrapped).is_err());
        assert!(Kek::from_base64("c2hvcnQ=").is_err());
        assert_eq!(format!("{:?}", kek()), "Kek(<redacted>)");
    }
}

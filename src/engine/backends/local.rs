//! The embedded payload store: one file per key under a local directory.
//!
//! Keys map one-to-one onto relative paths, so the directory can be inspected, backed up or
//! copied into a bucket with ordinary tools. A `put` is durable when it returns: the body goes to
//! a temporary file that is fsynced and renamed into place, and the directory is fsynced.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::engine::error::{Error, Failure, Result};
use crate::engine::store::{ByteRange, PayloadStore};

/// Temporary files of in-flight puts start with this; no key may use it, so `list` can skip them.
const TMP_PREFIX: &str = ".chronos-tmp-";

pub struct LocalPayloadStore {
    root: Arc<PathBuf>,
}

impl LocalPayloadStore {
    /// Use `root` as the store, creating it if needed.
    pub fn open(root: &Path) -> Result<Self> {
        fs::create_dir_all(root)
            .map_err(|e| Error::payload(Failure::new(format!("cannot create {}: {e}", root.display()), e)))?;
        Ok(LocalPayloadStore {
            root: Arc::new(root.to_path_buf()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Path) -> Result<T> + Send + 'static) -> Result<T> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || f(&root))
            .await
            .map_err(Error::payload)?
    }
}

/// A key must name a file strictly inside the root, by exactly one spelling.
fn check_key(key: &str) -> Result<()> {
    let bad = |reason: &str| Err(Error::validation("key", format!("{key:?}: {reason}")));
    if key.is_empty() {
        return bad("is empty");
    }
    if key.contains('\\') || key.contains('\0') {
        return bad("contains a backslash or NUL");
    }
    if key.starts_with('/') {
        return bad("is absolute");
    }
    for segment in key.split('/') {
        if segment.is_empty() || segment == "." || segment == ".." {
            return bad("has an empty, `.` or `..` segment");
        }
        if segment.starts_with(TMP_PREFIX) {
            return bad("uses a reserved name");
        }
    }
    // Catches what the checks above can't see on other platforms, such as Windows drive prefixes.
    if !Path::new(key).components().all(|c| matches!(c, Component::Normal(_))) {
        return bad("is not a plain relative path");
    }
    Ok(())
}

fn io_err(op: &str, key: &str, e: io::Error) -> Error {
    Error::payload(Failure::new(format!("{op} {key}: {e}"), e))
}

/// Errors that mean "there is no object under this key": S3 has no directories, so a key that
/// runs into a file or names a directory simply does not exist.
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory
    )
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories can't be opened for fsync here; the rename itself is journaled by NTFS.
    Ok(())
}

fn put_blocking(root: &Path, key: &str, body: &[u8]) -> io::Result<()> {
    let mut segments: Vec<&str> = key.split('/').collect();
    let name = segments.pop().unwrap_or(key);
    let mut dir = root.to_path_buf();
    for segment in segments {
        let parent = dir.clone();
        dir.push(segment);
        match fs::create_dir(&dir) {
            // A new directory's entry lives in its parent, which must reach the disk too.
            Ok(()) => sync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    let tmp = dir.join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        file.write_all(body)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(name))?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Depth-first walk in key order, stopping as soon as `limit` keys are found.
///
/// Entries are ordered by their key text, with a directory's key ending in `/`: that makes the
/// walk's order the byte-lexical order of whole keys (S3's), e.g. `a-b` before `a/x`.
fn list_blocking(
    dir: &Path,
    dir_key: &str,
    prefix: &str,
    start_after: Option<&str>,
    limit: usize,
    out: &mut Vec<String>,
) -> io::Result<bool> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if is_absent(&e) => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut children = Vec::new();
    for entry in entries {
        let entry = entry?;
        // A name that isn't UTF-8 or is a put in flight was never a key.
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with(TMP_PREFIX) {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            children.push((format!("{dir_key}{name}/"), name, true));
        } else if kind.is_file() {
            children.push((format!("{dir_key}{name}"), name, false));
        }
    }
    children.sort_unstable();
    for (key, name, is_dir) in children {
        if is_dir {
            if !key.starts_with(prefix) && !prefix.starts_with(&key) {
                continue;
            }
            // Every key below sorts before `start_after` unless it lies inside this directory.
            if start_after.is_some_and(|s| s > key.as_str() && !s.starts_with(&key)) {
                continue;
            }
            if list_blocking(&dir.join(&name), &key, prefix, start_after, limit, out)? {
                return Ok(true);
            }
        } else {
            if !key.starts_with(prefix) || start_after.is_some_and(|s| key.as_str() <= s) {
                continue;
            }
            out.push(key);
            if out.len() >= limit {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[async_trait]
impl PayloadStore for LocalPayloadStore {
    async fn put(&self, key: &str, body: Bytes) -> Result<()> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| put_blocking(root, &key, &body).map_err(|e| io_err("put", &key, e)))
            .await
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| match fs::read(root.join(&key)) {
            Ok(body) => Ok(Some(Bytes::from(body))),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_err("get", &key, e)),
        })
        .await
    }

    async fn get_range(&self, key: &str, range: ByteRange) -> Result<Option<Bytes>> {
        use std::io::{Read, Seek, SeekFrom};
        check_key(key)?;
        let key = key.to_owned();
        self.blocking(move |root| {
            let mut file = match fs::File::open(root.join(&key)) {
                Ok(f) => f,
                Err(e) if is_absent(&e) => return Ok(None),
                Err(e) => return Err(io_err("get", &key, e)),
            };
            let mut read = || -> std::io::Result<Vec<u8>> {
                let size = file.metadata()?.len();
                let (from, len) = match range {
                    ByteRange::Slice { offset, len } => (offset.min(size), len.min(size.saturating_sub(offset))),
                    ByteRange::Last(len) => (size.saturating_sub(len), len.min(size)),
                };
                file.seek(SeekFrom::Start(from))?;
                let mut body = Vec::with_capacity(len as usize);
                (&mut file).take(len).read_to_end(&mut body)?;
                Ok(body)
            };
            read().map(|b| Some(Bytes::from(b))).map_err(|e| io_err("get", &key, e))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let key = key.to_owned();
        // No directory fsync: a delete that is undone by a crash leaves an orphan payload, which
        // nothing references and scrub removes.
        self.blocking(move |root| match fs::remove_file(root.join(&key)) {
            Ok(()) => Ok(()),
            Err(e) if is_absent(&e) => Ok(()),
            Err(e) => Err(io_err("delete", &key, e)),
        })
        .await
    }

    async fn presign_get(&self, _key: &str, _ttl: std::time::Duration) -> Result<Option<String>> {
        Ok(None)
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    async fn exists(&self) -> Result<bool> {
        Ok(tokio::fs::metadata(self.root.as_path()).await.is_ok_and(|m| m.is_dir()))
    }

    async fn create(&self) -> Result<()> {
        tokio::fs::create_dir_all(self.root.as_path())
            .await
            .map_err(|e| Error::payload(Failure::new(format!("cannot create {}: {e}", self.root.display()), e)))
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        if limit == 0 {
            return Ok(vec![]);
        }
        // The prefix and start_after are only compared with keys, never joined into a path, so
        // they need no validation to stay inside the root.
        let prefix = prefix.to_owned();
        let start_after = start_after.map(str::to_owned);
        self.blocking(move |root| {
            let mut out = Vec::new();
            list_blocking(root, "", &prefix, start_after.as_deref(), limit, &mut out)
                .map_err(|e| io_err("list", &prefix, e))?;
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, LocalPayloadStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalPayloadStore::open(&dir.path().join("payloads")).unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn bad_keys_are_rejected() {
        let (_dir, s) = store();
        for bad in [
            "",
            "/abs",
            "a/../b",
            "..",
            "a/./b",
            ".",
            "a//b",
            "a/",
            "a\\b",
            "a\0b",
            "a/.chronos-tmp-x",
        ] {
            let body = Bytes::from_static(b"x");
            assert!(
                matches!(s.put(bad, body).await, Err(Error::Validation { .. })),
                "put {bad:?}"
            );
            assert!(matches!(s.get(bad).await, Err(Error::Validation { .. })), "get {bad:?}");
            assert!(
                matches!(s.delete(bad).await, Err(Error::Validation { .. })),
                "delete {bad:?}"
            );
        }
        for good in ["a", "c/i.d:x/v3/w.json", "a/.hidden", "a/..b"] {
            check_key(good).unwrap();
        }
    }

    #[tokio::test]
    async fn put_get_delete_round_trip() {
        let (_dir, s) = store();
        assert_eq!(s.get("c/i/v0/w.json").await.unwrap(), None);
        s.put("c/i/v0/w.json", Bytes::from_static(b"one")).await.unwrap();
        s.put("c/i/v0/w.json", Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(s.get("c/i/v0/w.json").await.unwrap().as_deref(), Some(&b"two"[..]));
        // A directory or a path through a file is just a missing key, as on S3.
        assert_eq!(s.get("c/i").await.unwrap(), None);
        assert_eq!(s.get("c/i/v0/w.json/x").await.unwrap(), None);
        s.delete("c/i/v0/w.json").await.unwrap();
        s.delete("c/i/v0/w.json").await.unwrap();
        s.delete("c/i").await.unwrap();
        assert_eq!(s.get("c/i/v0/w.json").await.unwrap(), None);
        let leftovers: Vec<_> = fs::read_dir(s.root().join("c/i/v0")).unwrap().collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[tokio::test]
    async fn list_is_byte_lexical_and_honours_prefix_start_after_and_limit() {
        let (_dir, s) = store();
        let keys = ["a/x", "a-b", "a/y/z", "a/y0", "a.b", "b", "ab/c", "a0", "Z/q", "é/1"];
        for k in &keys {
            s.put(k, Bytes::from_static(b"x")).await.unwrap();
        }
        // A put in flight and an empty directory are not keys.
        fs::write(s.root().join("a/.chronos-tmp-123"), b"partial").unwrap();
        fs::create_dir_all(s.root().join("empty/dir")).unwrap();

        let mut expected: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        expected.sort();
        assert_eq!(s.list("", None, 100).await.unwrap(), expected);
        assert_eq!(
            s.list("", None, 100).await.unwrap(),
            ["Z/q", "a-b", "a.b", "a/x", "a/y/z", "a/y0", "a0", "ab/c", "b", "é/1"]
        );

        assert_eq!(s.list("a/", None, 100).await.unwrap(), ["a/x", "a/y/z", "a/y0"]);
        assert_eq!(s.list("a/y", None, 100).await.unwrap(), ["a/y/z", "a/y0"]);
        assert_eq!(
            s.list("a", None, 100).await.unwrap(),
            ["a-b", "a.b", "a/x", "a/y/z", "a/y0", "a0", "ab/c"]
        );
        assert!(s.list("nothing/", None, 100).await.unwrap().is_empty());
        assert!(s.list("../", None, 100).await.unwrap().is_empty());

        assert_eq!(s.list("", Some("a/x"), 3).await.unwrap(), ["a/y/z", "a/y0", "a0"]);
        // start_after need not be a key, nor lie under the prefix.
        assert_eq!(s.list("a/", Some("a/y"), 100).await.unwrap(), ["a/y/z", "a/y0"]);
        assert_eq!(s.list("a/", Some("A"), 100).await.unwrap(), ["a/x", "a/y/z", "a/y0"]);
        assert!(s.list("a/", Some("b"), 100).await.unwrap().is_empty());
        assert!(s.list("", None, 0).await.unwrap().is_empty());

        // Paging with the last key as start_after visits every key once, in order.
        let mut paged = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = s.list("", after.as_deref(), 2).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.clone());
            paged.extend(page);
        }
        assert_eq!(paged, expected);
    }
}

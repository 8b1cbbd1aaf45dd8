//! The engine's settings and the settings-shaped contracts shared with the configuration file and
//! the operator (collection maps, counter rules, content kinds, queue tunables). They sit at the
//! bottom of the engine, so that whoever builds settings needs none of the engine's logic.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{Op, Timestamp, metadata_name};
use super::query::Filter;
pub use super::store::LockMode;

/// `packWrites` as written: a name, or a YAML boolean — YAML 1.1 reads an unquoted `off` as
/// `false`, and refusing what the documentation tells people to write would be a trap.
#[derive(Deserialize)]
#[serde(untagged)]
enum PackWritesInput {
    Flag(bool),
    Name(String),
}

impl TryFrom<PackWritesInput> for PackWrites {
    type Error = String;

    fn try_from(input: PackWritesInput) -> Result<Self, String> {
        match input {
            PackWritesInput::Flag(false) => Ok(PackWrites::Off),
            PackWritesInput::Flag(true) => Ok(PackWrites::Together),
            PackWritesInput::Name(name) => match name.as_str() {
                "off" => Ok(PackWrites::Off),
                "auto" => Ok(PackWrites::Auto),
                "together" => Ok(PackWrites::Together),
                "always" => Ok(PackWrites::Always),
                other => Err(format!("`{other}`: expected off, auto, together or always")),
            },
        }
    }
}

impl PackWrites {
    /// `Auto` decided for a store: `together` when its payloads go to S3.
    pub fn resolve(self, on_s3: bool) -> PackWrites {
        match self {
            PackWrites::Auto if on_s3 => PackWrites::Together,
            PackWrites::Auto => PackWrites::Off,
            other => other,
        }
    }
}

/// Tunables of the versioning core.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineSettings {
    /// Data up to this size is also kept inline in the head while the item is hot, so a latest
    /// read costs one metadata command and no payload fetch.
    pub inline_max_bytes: usize,
    /// Larger data is refused.
    pub max_payload_bytes: usize,
    /// Default indexed metadata takes top-level strings up to this length.
    pub meta_max_string_bytes: usize,
    /// Per collection name.
    pub collection_maps: HashMap<String, CollectionMap>,
    /// Conditional counters per collection name.
    pub counter_rules: HashMap<String, Vec<CounterRule>>,
    /// How the retry queue retries.
    pub queue: QueueSettings,
    /// Items per page of a collection restore (one batch, one transaction each; 1 to 1000).
    pub restore_page: usize,
    /// How long after its write id a payload without a version entry may still be committed;
    /// scrub leaves such payloads alone this long, and a write that can't commit well within it
    /// is redone (see `store::rules::commit_window`).
    pub orphan_grace: Duration,
    /// How long an engine process gathers the versions it committed before writing them to the
    /// ledger as one segment per collection (see `engine::ledger::writer`).
    pub ledger_flush: Duration,
    /// The key-encryption key that wraps the data keys of collections with `encryption:
    /// perItem` (see `engine::shred`); without it such collections refuse writes and reads.
    pub encryption_key: Option<super::sealed::Kek>,
    /// Whether payloads are stored in pack objects (see `engine::pack`).
    pub pack_writes: PackWrites,
}

/// When payloads go into packs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "PackWritesInput")]
pub enum PackWrites {
    /// Every payload at its version's own key.
    #[default]
    Off,
    /// `together` on S3 (where a PUT is what writes cost), `off` on the embedded store (a file
    /// write costs little, and one per payload keeps it simple): the configuration file's default,
    /// decided where the database's storage is known (`connect::open`).
    Auto,
    /// Payloads of writes made together share one pack (one PUT for the lot); a write made alone
    /// is stored at its own key.
    Together,
    /// Every payload in a pack, a write made alone in a pack of one: flat keys everywhere (and
    /// every read, retention, scrub and erasure path of packs exercised, which the tests use).
    Always,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            inline_max_bytes: 64 * 1024,
            max_payload_bytes: 8 * 1024 * 1024,
            meta_max_string_bytes: 1024,
            collection_maps: HashMap::new(),
            counter_rules: HashMap::new(),
            queue: QueueSettings::default(),
            restore_page: RESTORE_PAGE,
            orphan_grace: ORPHAN_GRACE,
            ledger_flush: Duration::from_secs(1),
            encryption_key: None,
            pack_writes: PackWrites::Off,
        }
    }
}

/// What a collection indexes and requires (the original's "collection maps").
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CollectionMap {
    /// Only these top-level properties become indexed metadata, each with a MongoDB index.
    /// `None` or empty: every top-level scalar property is indexed metadata (without indexes).
    pub indexed_props: Option<Vec<String>>,
    /// Writes without these indexed properties are refused (422, listing what is missing).
    pub required_indexed: Vec<String>,
    /// Properties stored in the content bucket (large text, or base64 binary) and referenced
    /// from the JSON.
    pub content_props: BTreeMap<String, ContentKind>,
    /// A retention hold: an item is held (neither pruned nor erased) until `days` after its
    /// latest write, and on an Object Lock bucket its payloads carry that retention.
    pub hold: Option<HoldRule>,
    /// Whether the collection's payloads are encrypted, each item with its own data key.
    pub encryption: Encryption,
}

/// A collection's retention hold (S3 Object Lock's retention, as a rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HoldRule {
    pub mode: LockMode,
    /// How long after its write a version stays locked, 1 to 36500.
    pub days: u32,
}

/// How a collection's payload data is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Encryption {
    /// As JSON, in clear.
    #[default]
    None,
    /// Sealed with a data key of its own per item (crypto-shredding: destroying the key erases
    /// every version of the item, even where objects can't be deleted).
    PerItem,
}

impl CollectionMap {
    /// What is wrong with this map, as (field, problem); the field is `indexedProps`,
    /// `requiredIndexed`, `contentProps`, `hold` or `encryption`. Shared by the configuration file and the operator.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let indexed = self.indexed_props.as_deref().unwrap_or_default();
        let named = indexed
            .iter()
            .map(|p| ("indexedProps", p))
            .chain(self.required_indexed.iter().map(|p| ("requiredIndexed", p)));
        for (field, p) in named {
            if !metadata_name(p) {
                out.push((
                    field,
                    format!("`{p}`: expected a top-level property name without `$`, `.` or NUL"),
                ));
            }
        }
        for p in self.content_props.keys() {
            if indexed.contains(p) {
                out.push(("contentProps", format!("`{p}` can't be both indexed and content")));
            }
        }
        if let Some(h) = &self.hold
            && !(1..=36_500).contains(&h.days)
        {
            out.push(("hold", "days: expected 1 to 36500".to_owned()));
        }
        if self.encryption == Encryption::PerItem && !self.content_props.is_empty() {
            out.push((
                "encryption",
                "perItem encrypts the JSON payloads only: it can't be combined with contentProps".to_owned(),
            ));
        }
        for r in &self.required_indexed {
            if !indexed.is_empty() && !indexed.contains(r) {
                out.push(("requiredIndexed", format!("`{r}` is not listed in indexedProps")));
            }
        }
        out
    }

    /// The properties named as indexed, if any: `None` means default metadata.
    pub(crate) fn explicit(&self) -> Option<&[String]> {
        self.indexed_props.as_deref().filter(|p| !p.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentKind {
    /// Base64 in the JSON, raw bytes in the bucket.
    Binary,
    /// UTF-8 text.
    Text,
}

/// How reads show content properties.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    /// The value itself (base64 for binary).
    Inline,
    /// The `$content` reference as stored.
    Reference,
    /// The reference plus a presigned `url`, valid for the duration.
    Presigned(Duration),
}

/// A named, conditional counter.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CounterRule {
    pub name: String,
    /// A filter on the version's indexed properties (the query subset); `null` for all.
    #[serde(default)]
    pub when: Value,
    /// Which operations count.
    pub on: Vec<Op>,
}

/// What is wrong with a collection's counter rules, as (rule index, field, problem); the field
/// is `name`, `on` or `when`. Shared by the configuration file and the operator.
pub fn rule_problems(rules: &[CounterRule]) -> Vec<(usize, &'static str, String)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        if rule.name.is_empty() || !seen.insert(rule.name.as_str()) {
            out.push((i, "name", "expected a unique, non-empty name".to_owned()));
        }
        if rule.on.is_empty() {
            out.push((
                i,
                "on",
                "expected at least one of CREATE, UPDATE, DELETE, RESTORE".to_owned(),
            ));
        }
        if let Err(e) = Filter::parse(&rule.when, &|_| true) {
            out.push((i, "when", e.to_string()));
        }
    }
    out
}

/// How the queue retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSettings {
    /// Runs of one operation (the first, failed write not counted) before it becomes a dead letter.
    pub max_attempts: u32,
    /// The first retry waits about this long; each further one twice as long (with jitter).
    pub base_delay: Duration,
    /// No retry waits longer than this.
    pub max_delay: Duration,
    /// A claimed operation belongs to its worker this long; then another worker may take it.
    pub lease: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            max_attempts: 8,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            lease: Duration::from_secs(30),
        }
    }
}

impl QueueSettings {
    /// When attempt `attempt` (1-based) that just failed should be retried: exponential backoff
    /// with "equal jitter" (half fixed, half random), so retries of many operations spread out.
    pub fn retry_at(&self, attempt: u32, from: Timestamp) -> Timestamp {
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter_ms = half.as_millis() as u64;
        let random = if jitter_ms == 0 {
            0
        } else {
            (uuid::Uuid::new_v4().as_u128() as u64) % jitter_ms
        };
        let delay = half + Duration::from_millis(random);
        from + jiff::SignedDuration::try_from(delay).unwrap_or(jiff::SignedDuration::from_secs(60))
    }
}

/// Items per page of a collection restore (`Engine::restore_collection`), unless settings say otherwise.
pub const RESTORE_PAGE: usize = 500;

/// How long after its write id a payload without a version entry may still become committed:
/// scrub leaves younger keys alone. Keep it at least MongoDB's `transactionLifetimeLimitSeconds`.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);

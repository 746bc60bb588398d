//! Records, their metadata, and the canonical encoding the chain hashes.
//!
//! # The chain
//!
//! Record `seq` (1, 2, ...) carries `prev_hash` (the hash of record `seq - 1`, or 32 zero
//! bytes for record 1) and
//!
//! ```text
//! hash = SHA-256( "sealpost-archive/record/v1" 0x00
//!                 || u64be(seq) || prev_hash (32 bytes) || u64be(recorded_ms)
//!                 || body )
//! ```
//!
//! where `body` is the canonical encoding of the record's [`RecordBody`]: one tag byte
//! (message 1, tombstone 2, hold_placed 3, hold_released 4, search 5, export 6,
//! anchor 7) and then its fields in declaration order, each encoded as
//!
//! * integers: u64 big-endian; enums: one byte (the `tag()` of the type);
//! * strings and byte strings: u64be(length) || bytes;
//! * options: 0x00, or 0x01 || value; lists: u64be(count) || items;
//! * digests: their 32 bytes.
//!
//! A message's metadata holds the SHA-256 **content digest** of its content (text,
//! attachments, original), not the content itself:
//!
//! ```text
//! content_digest = SHA-256( "sealpost-archive/content/v1" 0x00
//!                           || str(text) || u64be(n) || n × (str(name) || str(mime) || bytes(data))
//!                           || bytes(original) )
//! ```
//!
//! so deleting the content at the end of retention leaves every record hash, and thus
//! the chain, verifiable; the tombstone repeats the digest of what was deleted.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// `prev_hash` of record 1.
pub const GENESIS_PREV_HASH: Hash = [0u8; 32];

const RECORD_DOMAIN: &[u8] = b"sealpost-archive/record/v1\0";
const CONTENT_DOMAIN: &[u8] = b"sealpost-archive/content/v1\0";

/// The class of an archived item; retention is set per class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordClass {
    /// A text message between a client and the firm.
    Message,
    /// An attachment (or a message that carries attachment keys).
    Attachment,
    /// An account notice from the firm.
    Notice,
    /// A client instruction.
    Instruction,
    /// A delivery or read receipt.
    Receipt,
    /// A sync copy between a party's own devices.
    Sync,
}

impl RecordClass {
    /// All classes.
    pub const ALL: [RecordClass; 6] = [
        RecordClass::Message,
        RecordClass::Attachment,
        RecordClass::Notice,
        RecordClass::Instruction,
        RecordClass::Receipt,
        RecordClass::Sync,
    ];

    /// The name used in the database, JSON and exports.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordClass::Message => "message",
            RecordClass::Attachment => "attachment",
            RecordClass::Notice => "notice",
            RecordClass::Instruction => "instruction",
            RecordClass::Receipt => "receipt",
            RecordClass::Sync => "sync",
        }
    }

    /// Parses [`RecordClass::as_str`].
    pub fn parse(s: &str) -> Option<RecordClass> {
        RecordClass::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The byte in the canonical encoding.
    pub fn tag(self) -> u8 {
        match self {
            RecordClass::Message => 1,
            RecordClass::Attachment => 2,
            RecordClass::Notice => 3,
            RecordClass::Instruction => 4,
            RecordClass::Receipt => 5,
            RecordClass::Sync => 6,
        }
    }
}

/// Who sent a message, seen from the firm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From the client to the firm.
    ClientToFirm,
    /// From the firm to the client.
    FirmToClient,
}

impl Direction {
    /// The byte in the canonical encoding.
    pub fn tag(self) -> u8 {
        match self {
            Direction::ClientToFirm => 1,
            Direction::FirmToClient => 2,
        }
    }

    /// The name used in JSON and exports.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToFirm => "client_to_firm",
            Direction::FirmToClient => "firm_to_client",
        }
    }
}

/// An attachment to ingest.
#[derive(Clone, PartialEq, Eq)]
pub struct Attachment {
    /// File name as the sender gave it.
    pub name: String,
    /// MIME type (e.g. `application/pdf`).
    pub mime: String,
    /// The decrypted bytes.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("name", &self.name)
            .field("mime", &self.mime)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// An item to archive, as the archiver device decrypted it.
#[derive(Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Unique id of the item at its source: sender device id + message id. Ingesting
    /// the same source id again is a no-op that returns the existing record.
    pub source_id: Vec<u8>,
    /// Class (retention is per class).
    pub class: RecordClass,
    /// When the sender sent it (Unix milliseconds, as claimed by the sender).
    pub sent_ms: u64,
    /// The client account in the conversation.
    pub client_account: String,
    /// The firm-side account (advisor or staff) in the conversation.
    pub firm_account: String,
    /// The sending account.
    pub sender_account: String,
    /// The sending device (hex).
    pub sender_device: String,
    /// Client to firm or firm to client.
    pub direction: Direction,
    /// The protocol's kind string (e.g. `text`, `notice`, `receipt.read`).
    pub kind: String,
    /// Searchable text body (may be empty).
    pub text: String,
    /// Attachments, decrypted.
    pub attachments: Vec<Attachment>,
    /// The original content bytes, from which the item can be re-created.
    pub original: Vec<u8>,
}

impl std::fmt::Debug for NewRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Content is not printed: logs must not become a second, unencrypted archive.
        f.debug_struct("NewRecord")
            .field("source_id", &hex::encode(&self.source_id))
            .field("class", &self.class)
            .field("sent_ms", &self.sent_ms)
            .field("client_account", &self.client_account)
            .field("firm_account", &self.firm_account)
            .field("direction", &self.direction)
            .field("kind", &self.kind)
            .field("text_len", &self.text.len())
            .field("attachments", &self.attachments.len())
            .field("original_len", &self.original.len())
            .finish()
    }
}

/// The content of a message record, kept apart from the chain and deleted at the end
/// of retention.
#[derive(Clone, PartialEq, Eq)]
pub struct Content {
    /// Searchable text.
    pub text: String,
    /// Attachments.
    pub attachments: Vec<Attachment>,
    /// The original bytes.
    pub original: Vec<u8>,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content")
            .field("text_len", &self.text.len())
            .field("attachments", &self.attachments)
            .field("original_len", &self.original.len())
            .finish()
    }
}

impl Content {
    /// The content digest (see the module documentation).
    pub fn digest(&self) -> Hash {
        content_digest(
            &self.text,
            self.attachments
                .iter()
                .map(|a| (a.name.as_str(), a.mime.as_str(), a.bytes.as_slice())),
            &self.original,
        )
    }
}

/// The content digest over borrowed parts (see the module documentation).
pub fn content_digest<'a>(
    text: &str,
    attachments: impl ExactSizeIterator<Item = (&'a str, &'a str, &'a [u8])>,
    original: &[u8],
) -> Hash {
    let mut c = Canon::new(CONTENT_DOMAIN);
    c.str(text);
    c.u64(attachments.len() as u64);
    for (name, mime, bytes) in attachments {
        c.str(name);
        c.str(mime);
        c.bytes(bytes);
    }
    c.bytes(original);
    c.finish()
}

/// An attachment as the chain records it (its bytes are in the content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    /// File name.
    pub name: String,
    /// MIME type.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
}

/// The chained metadata of a message record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// Source id (hex in JSON).
    #[serde(with = "hex_vec")]
    pub source_id: Vec<u8>,
    /// Class.
    pub class: RecordClass,
    /// Sent time claimed by the sender (Unix ms).
    pub sent_ms: u64,
    /// Client account.
    pub client_account: String,
    /// Firm-side account.
    pub firm_account: String,
    /// Sending account.
    pub sender_account: String,
    /// Sending device.
    pub sender_device: String,
    /// Direction.
    pub direction: Direction,
    /// Kind string.
    pub kind: String,
    /// Attachment names, types and sizes.
    pub attachments: Vec<AttachmentMeta>,
    /// Text length in bytes.
    pub text_len: u64,
    /// Original length in bytes.
    pub original_len: u64,
    /// SHA-256 content digest (hex in JSON).
    #[serde(with = "hex32")]
    pub content_digest: Hash,
}

/// What a legal hold covers. A record is covered when its metadata matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HoldScope {
    /// Every record of this client account.
    Client {
        /// The client account.
        account: String,
    },
    /// Every record of this firm-side account.
    Firm {
        /// The firm-side account.
        account: String,
    },
    /// Every record sent in `[from_ms, to_ms)`.
    DateRange {
        /// Start (inclusive, Unix ms).
        from_ms: u64,
        /// End (exclusive, Unix ms).
        to_ms: u64,
    },
    /// Everything.
    All,
}

impl HoldScope {
    fn encode(&self, c: &mut Canon) {
        match self {
            HoldScope::Client { account } => {
                c.u8(1);
                c.str(account);
            }
            HoldScope::Firm { account } => {
                c.u8(2);
                c.str(account);
            }
            HoldScope::DateRange { from_ms, to_ms } => {
                c.u8(3);
                c.u64(*from_ms);
                c.u64(*to_ms);
            }
            HoldScope::All => c.u8(4),
        }
    }

    /// Whether a message with this metadata is covered.
    pub fn covers(&self, meta: &MessageMeta) -> bool {
        match self {
            HoldScope::Client { account } => meta.client_account == *account,
            HoldScope::Firm { account } => meta.firm_account == *account,
            HoldScope::DateRange { from_ms, to_ms } => {
                meta.sent_ms >= *from_ms && meta.sent_ms < *to_ms
            }
            HoldScope::All => true,
        }
    }
}

/// Result order of a search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SearchOrder {
    /// Newest record first (by sequence number, i.e. archive order).
    #[default]
    Newest,
    /// Oldest record first.
    Oldest,
    /// Best text match first (FTS5 bm25 among the newest
    /// [`crate::search::MAX_RANK_CANDIDATES`] matches); without a text, newest first.
    Relevance,
}

impl SearchOrder {
    fn tag(self) -> u8 {
        match self {
            SearchOrder::Newest => 1,
            SearchOrder::Oldest => 2,
            SearchOrder::Relevance => 3,
        }
    }
}

/// A search over message records. All given filters must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchQuery {
    /// Only this client account.
    pub client: Option<String>,
    /// Only this firm-side account.
    pub firm: Option<String>,
    /// Sent at or after (Unix ms).
    pub from_ms: Option<u64>,
    /// Sent before (Unix ms).
    pub to_ms: Option<u64>,
    /// Words that must all occur in the text (each taken literally, prefix match with a
    /// trailing `*`).
    pub text: Option<String>,
    /// Result order.
    pub order: SearchOrder,
    /// At most this many results (0 means [`crate::limits::MAX_SEARCH_RESULTS`]).
    pub limit: u32,
}

impl SearchQuery {
    fn encode(&self, c: &mut Canon) {
        c.opt_str(self.client.as_deref());
        c.opt_str(self.firm.as_deref());
        c.opt_u64(self.from_ms);
        c.opt_u64(self.to_ms);
        c.opt_str(self.text.as_deref());
        c.u8(self.order.tag());
        c.u64(u64::from(self.limit));
    }
}

/// What an export covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ExportScope {
    /// One conversation: the messages between a client and a firm-side account,
    /// optionally limited to sent times in `[from_ms, to_ms)`.
    Conversation {
        /// The client account.
        client: String,
        /// The firm-side account.
        firm: String,
        /// Sent at or after (Unix ms).
        from_ms: Option<u64>,
        /// Sent before (Unix ms).
        to_ms: Option<u64>,
    },
    /// All message records sent in `[from_ms, to_ms)`.
    Dates {
        /// Start (inclusive, Unix ms).
        from_ms: u64,
        /// End (exclusive, Unix ms).
        to_ms: u64,
    },
    /// Every record (of any kind) with `from <= seq <= to`.
    Seq {
        /// First sequence number.
        from: u64,
        /// Last sequence number (inclusive).
        to: u64,
    },
}

impl ExportScope {
    fn encode(&self, c: &mut Canon) {
        match self {
            ExportScope::Conversation {
                client,
                firm,
                from_ms,
                to_ms,
            } => {
                c.u8(1);
                c.str(client);
                c.str(firm);
                c.opt_u64(*from_ms);
                c.opt_u64(*to_ms);
            }
            ExportScope::Dates { from_ms, to_ms } => {
                c.u8(2);
                c.u64(*from_ms);
                c.u64(*to_ms);
            }
            ExportScope::Seq { from, to } => {
                c.u8(3);
                c.u64(*from);
                c.u64(*to);
            }
        }
    }
}

/// The metadata of a record, by kind. This (not the content) is what the chain hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RecordBody {
    /// An ingested item; its content is stored apart.
    Message(MessageMeta),
    /// The content of record `target` was deleted at the end of its retention.
    Tombstone {
        /// The record whose content was deleted.
        target: u64,
        /// Its class.
        class: RecordClass,
        /// Its content digest.
        #[serde(with = "hex32")]
        content_digest: Hash,
        /// Why (e.g. `retention: message, 7y`).
        reason: String,
        /// Who ran the sweep.
        actor: String,
    },
    /// A legal hold was placed.
    HoldPlaced {
        /// Who placed it.
        actor: String,
        /// Its name (unique among active holds).
        name: String,
        /// Why (case or matter reference).
        reason: String,
        /// What it covers.
        scope: HoldScope,
    },
    /// A legal hold was released.
    HoldReleased {
        /// Who released it.
        actor: String,
        /// The hold's name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Someone searched the archive.
    Search {
        /// Who searched.
        actor: String,
        /// The query.
        query: SearchQuery,
        /// How many results were returned.
        results: u64,
    },
    /// Someone exported from the archive.
    Export {
        /// Who exported.
        actor: String,
        /// What.
        scope: ExportScope,
        /// How many records the export holds.
        records: u64,
        /// SHA-256 of the export's `manifest.json`.
        #[serde(with = "hex32")]
        manifest_sha256: Hash,
    },
    /// The chain head was anchored elsewhere (e.g. the relay's transparency log).
    Anchor {
        /// Who anchored it.
        actor: String,
        /// The anchored head's sequence number.
        head_seq: u64,
        /// The anchored head's hash.
        #[serde(with = "hex32")]
        head_hash: Hash,
        /// Where (e.g. `transparency-log`).
        log: String,
        /// The reference there (leaf index, checkpoint, ...).
        reference: String,
    },
}

impl RecordBody {
    /// The kind name (`message`, `tombstone`, `hold_placed`, `hold_released`, `search`,
    /// `export`, `anchor`).
    pub fn kind(&self) -> &'static str {
        match self {
            RecordBody::Message(_) => "message",
            RecordBody::Tombstone { .. } => "tombstone",
            RecordBody::HoldPlaced { .. } => "hold_placed",
            RecordBody::HoldReleased { .. } => "hold_released",
            RecordBody::Search { .. } => "search",
            RecordBody::Export { .. } => "export",
            RecordBody::Anchor { .. } => "anchor",
        }
    }

    fn encode(&self, c: &mut Canon) {
        match self {
            RecordBody::Message(m) => {
                c.u8(1);
                c.bytes(&m.source_id);
                c.u8(m.class.tag());
                c.u64(m.sent_ms);
                c.str(&m.client_account);
                c.str(&m.firm_account);
                c.str(&m.sender_account);
                c.str(&m.sender_device);
                c.u8(m.direction.tag());
                c.str(&m.kind);
                c.u64(m.attachments.len() as u64);
                for a in &m.attachments {
                    c.str(&a.name);
                    c.str(&a.mime);
                    c.u64(a.size);
                }
                c.u64(m.text_len);
                c.u64(m.original_len);
                c.digest(&m.content_digest);
            }
            RecordBody::Tombstone {
                target,
                class,
                content_digest,
                reason,
                actor,
            } => {
                c.u8(2);
                c.u64(*target);
                c.u8(class.tag());
                c.digest(content_digest);
                c.str(reason);
                c.str(actor);
            }
            RecordBody::HoldPlaced {
                actor,
                name,
                reason,
                scope,
            } => {
                c.u8(3);
                c.str(actor);
                c.str(name);
                c.str(reason);
                scope.encode(c);
            }
            RecordBody::HoldReleased {
                actor,
                name,
                reason,
            } => {
                c.u8(4);
                c.str(actor);
                c.str(name);
                c.str(reason);
            }
            RecordBody::Search {
                actor,
                query,
                results,
            } => {
                c.u8(5);
                c.str(actor);
                query.encode(c);
                c.u64(*results);
            }
            RecordBody::Export {
                actor,
                scope,
                records,
                manifest_sha256,
            } => {
                c.u8(6);
                c.str(actor);
                scope.encode(c);
                c.u64(*records);
                c.digest(manifest_sha256);
            }
            RecordBody::Anchor {
                actor,
                head_seq,
                head_hash,
                log,
                reference,
            } => {
                c.u8(7);
                c.str(actor);
                c.u64(*head_seq);
                c.digest(head_hash);
                c.str(log);
                c.str(reference);
            }
        }
    }
}

/// A record as stored in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Sequence number (1, 2, ...).
    pub seq: u64,
    /// When the archive appended it (Unix ms, the archive's clock).
    pub recorded_ms: u64,
    /// Hash of the previous record ([`GENESIS_PREV_HASH`] for record 1).
    #[serde(with = "hex32")]
    pub prev_hash: Hash,
    /// This record's hash.
    #[serde(with = "hex32")]
    pub hash: Hash,
    /// Its metadata.
    pub body: RecordBody,
}

impl StoredRecord {
    /// Recomputes the hash from the fields (compare with [`StoredRecord::hash`]).
    pub fn computed_hash(&self) -> Hash {
        record_hash(self.seq, &self.prev_hash, self.recorded_ms, &self.body)
    }
}

/// The record hash (see the module documentation).
pub fn record_hash(seq: u64, prev_hash: &Hash, recorded_ms: u64, body: &RecordBody) -> Hash {
    let mut c = Canon::new(RECORD_DOMAIN);
    c.u64(seq);
    c.digest(prev_hash);
    c.u64(recorded_ms);
    body.encode(&mut c);
    c.finish()
}

/// The canonical encoder, feeding SHA-256 directly.
struct Canon(Sha256);

impl Canon {
    fn new(domain: &[u8]) -> Canon {
        let mut h = Sha256::new();
        h.update(domain);
        Canon(h)
    }
    fn u8(&mut self, v: u8) {
        self.0.update([v]);
    }
    fn u64(&mut self, v: u64) {
        self.0.update(v.to_be_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.update(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn digest(&mut self, d: &Hash) {
        self.0.update(d);
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    fn finish(self) -> Hash {
        self.0.finalize().into()
    }
}

/// Serde helper: `[u8; 32]` as 64 hex digits.
pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <&str>::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}

/// Serde helper: bytes as hex.
pub(crate) mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(s.as_ref()).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> MessageMeta {
        MessageMeta {
            source_id: b"dev1/msg1".to_vec(),
            class: RecordClass::Message,
            sent_ms: 1_700_000_000_000,
            client_account: "alice".into(),
            firm_account: "advisor-bob".into(),
            sender_account: "alice".into(),
            sender_device: "aabb".into(),
            direction: Direction::ClientToFirm,
            kind: "text".into(),
            attachments: vec![],
            text_len: 5,
            original_len: 9,
            content_digest: [7u8; 32],
        }
    }

    #[test]
    fn hash_covers_every_field() {
        let body = RecordBody::Message(meta());
        let h = record_hash(1, &GENESIS_PREV_HASH, 10, &body);
        assert_ne!(h, record_hash(2, &GENESIS_PREV_HASH, 10, &body));
        assert_ne!(h, record_hash(1, &[1u8; 32], 10, &body));
        assert_ne!(h, record_hash(1, &GENESIS_PREV_HASH, 11, &body));
        let mut m = meta();
        m.content_digest[0] ^= 1;
        assert_ne!(
            h,
            record_hash(1, &GENESIS_PREV_HASH, 10, &RecordBody::Message(m))
        );
        // Length prefixes keep field boundaries apart.
        let mut a = meta();
        a.client_account = "ab".into();
        a.firm_account = "c".into();
        let mut b = meta();
        b.client_account = "a".into();
        b.firm_account = "bc".into();
        assert_ne!(
            record_hash(1, &GENESIS_PREV_HASH, 10, &RecordBody::Message(a)),
            record_hash(1, &GENESIS_PREV_HASH, 10, &RecordBody::Message(b))
        );
    }

    #[test]
    fn json_round_trip_keeps_the_hash() -> Result<(), serde_json::Error> {
        let bodies = vec![
            RecordBody::Message(meta()),
            RecordBody::Tombstone {
                target: 1,
                class: RecordClass::Notice,
                content_digest: [3; 32],
                reason: "retention".into(),
                actor: "sweeper".into(),
            },
            RecordBody::HoldPlaced {
                actor: "compliance".into(),
                name: "case-1".into(),
                reason: "SEC inquiry".into(),
                scope: HoldScope::DateRange {
                    from_ms: 1,
                    to_ms: 2,
                },
            },
            RecordBody::Search {
                actor: "officer".into(),
                query: SearchQuery {
                    text: Some("wire".into()),
                    ..SearchQuery::default()
                },
                results: 3,
            },
        ];
        for body in bodies {
            let json = serde_json::to_string(&body)?;
            let back: RecordBody = serde_json::from_str(&json)?;
            assert_eq!(back, body);
            assert_eq!(
                record_hash(4, &[9; 32], 5, &back),
                record_hash(4, &[9; 32], 5, &body)
            );
        }
        Ok(())
    }

    #[test]
    fn content_digest_separates_fields() {
        let a = content_digest("ab", std::iter::empty(), b"c");
        let b = content_digest("a", std::iter::empty(), b"bc");
        assert_ne!(a, b);
    }
}

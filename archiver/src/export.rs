//! Exports for reviewers and e-discovery tools, and their verification by a third party.
//!
//! An export directory holds:
//!
//! | path | what |
//! |---|---|
//! | `messages/<seq>.eml` | one RFC 5322 / MIME message per archived message, with its attachments and `X-Sealpost-*` headers (seq, hash, prev hash, content digest, source id, class, direction, kind, sender device) |
//! | `mailbox.mbox` | the same messages in one mboxrd file |
//! | `index.html` | a readable rendering of every exported record (all text HTML-escaped) |
//! | `originals/<seq>.bin` | each message's original bytes |
//! | `texts/<seq>.txt` | each message's text exactly as archived (UTF-8) |
//! | `attachments/<seq>/<index>.bin` | each attachment's bytes (names and types are in the manifest) |
//! | `manifest.json` | a [`Manifest`]: every record with its seq, prev_hash, hash and metadata (content digest included), the chain links from the first to the last exported record, and every file's SHA-256 |
//!
//! [`verify_export`] checks an export without the archive or its key: each file's
//! SHA-256, each record's hash recomputed from its metadata (see [`crate::record`]),
//! each message's content digest recomputed from its text, attachment and original
//! files, and the chain links. The manifest's own SHA-256 is in the chain's `export`
//! record, so a holder of the (anchored) chain head can tie the export to the archive.
//!
//! **An export is plaintext.** It exists to be handed to reviewers and e-discovery
//! tools; write it only where such material may be (an encrypted volume, a reviewer's
//! case folder) and delete it when the matter closes. The `export` record in the chain
//! names who made it.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use mail_builder::headers::raw::Raw;
use mail_builder::headers::text::Text;
use mail_builder::MessageBuilder;
use rusqlite::params;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{ArchiveError, ExportVerifyError};
use crate::limits::*;
use crate::record::*;
use crate::store::{
    check_actor, check_len, head_in, read_content, read_record, to_i64, Archive, Head,
};

/// The `format` of a manifest this build writes and verifies.
pub const EXPORT_FORMAT: &str = "sealpost-archive-export/1";

/// Chain links one export may carry (from its first to its last record).
pub const MAX_EXPORT_CHAIN_LINKS: u64 = 5_000_000;

/// Whether a record's content is in the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentState {
    /// Content files are in the export.
    Present,
    /// Deleted at the end of retention (a tombstone is in the chain).
    Deleted,
    /// The record has no content (not a message).
    None,
}

/// What a file in the export is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileRole {
    /// A message as RFC 5322 / MIME.
    Eml,
    /// A message's original bytes.
    Original,
    /// A message's text.
    Text,
    /// One attachment's bytes.
    Attachment,
    /// All messages as mboxrd.
    Mbox,
    /// The HTML rendering.
    Html,
}

/// One file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Path relative to the export directory (`/` separated).
    pub path: String,
    /// Its SHA-256.
    #[serde(with = "crate::record::hex32")]
    pub sha256: Hash,
    /// Its size in bytes.
    pub size: u64,
    /// What it is.
    pub role: FileRole,
    /// The record it belongs to, if one.
    pub seq: Option<u64>,
    /// The attachment's index, for [`FileRole::Attachment`].
    pub index: Option<u32>,
}

/// One link of the chain (for the records between exported ones, only the link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainLink {
    /// Sequence number.
    pub seq: u64,
    /// Previous hash.
    #[serde(with = "crate::record::hex32")]
    pub prev_hash: Hash,
    /// Hash.
    #[serde(with = "crate::record::hex32")]
    pub hash: Hash,
}

/// One exported record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    /// The record as chained.
    pub record: StoredRecord,
    /// Whether its content is in the export.
    pub content: ContentState,
    /// The tombstone that records its content's deletion, if deleted.
    pub tombstone_seq: Option<u64>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`EXPORT_FORMAT`].
    pub format: String,
    /// When the export was made (Unix ms, archive clock).
    pub created_ms: u64,
    /// Who made it.
    pub actor: String,
    /// What it covers.
    pub scope: ExportScope,
    /// The chain head when the export was made (before its `export` record).
    pub head: Head,
    /// The exported records, by sequence number.
    pub records: Vec<ManifestRecord>,
    /// Every chain link from the first to the last exported record.
    pub chain: Vec<ChainLink>,
    /// Every file except `manifest.json`.
    pub files: Vec<ManifestFile>,
}

/// What [`Archive::export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportReport {
    /// The export directory.
    pub dir: PathBuf,
    /// Records exported.
    pub records: u64,
    /// Files written, `manifest.json` included.
    pub files: u64,
    /// SHA-256 of `manifest.json` (also in the `export` record).
    pub manifest_sha256: Hash,
    /// The `export` audit record.
    pub audit_seq: u64,
}

/// What [`verify_export`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportVerifyReport {
    /// Records whose hash was recomputed.
    pub records: u64,
    /// Message contents whose digest was recomputed.
    pub contents: u64,
    /// Files whose SHA-256 was checked.
    pub files: u64,
    /// Chain links checked.
    pub links: u64,
    /// SHA-256 of `manifest.json`: compare with the chain's `export` record.
    pub manifest_sha256: Hash,
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Replaces control characters (CR, LF, ...) so a value cannot break a header line.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A MIME type if it is `token/token`, else `application/octet-stream`.
fn mime_safe(s: &str) -> String {
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    match s.split_once('/') {
        Some((a, b)) if token(a) && token(b) => s.to_ascii_lowercase(),
        _ => "application/octet-stream".to_string(),
    }
}

fn file_name_safe(s: &str) -> String {
    let n: String = s
        .chars()
        .map(|c| {
            if c.is_control() || matches!(c, '"' | '\\' | '/') {
                '_'
            } else {
                c
            }
        })
        .collect();
    if n.trim().is_empty() {
        "attachment".to_string()
    } else {
        n
    }
}

fn address(account: &str, domain: &str) -> String {
    let plain = !account.is_empty()
        && account.len() <= 64
        && account
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
        && !account.starts_with('.')
        && !account.ends_with('.')
        && !account.contains("..");
    if plain {
        format!("{account}@{domain}")
    } else {
        let h = Sha256::digest(account.as_bytes());
        format!("acct-{}@{domain}", hex::encode(&h[..10]))
    }
}

fn utc(ms: u64) -> String {
    let fmt =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC");
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn asctime(ms: u64) -> String {
    let fmt = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day padding:space] [hour]:[minute]:[second] [year]"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "Thu Jan  1 00:00:00 1970".to_string())
}

fn subject_of(meta: &MessageMeta, text: Option<&str>) -> String {
    let first = text
        .and_then(|t| t.lines().find(|l| !l.trim().is_empty()))
        .map(|l| l.chars().take(72).collect::<String>());
    match first {
        Some(l) => format!("[{}] {}", meta.class.as_str(), l.trim()),
        None => format!("[{}] {}", meta.class.as_str(), meta.kind),
    }
}

fn build_eml(
    rec: &StoredRecord,
    meta: &MessageMeta,
    content: Option<&Content>,
    domain: &str,
) -> Result<Vec<u8>, std::io::Error> {
    let (to_account, from_account) = match meta.direction {
        Direction::ClientToFirm => (&meta.firm_account, &meta.sender_account),
        Direction::FirmToClient => (&meta.client_account, &meta.sender_account),
    };
    let text_body = match content {
        Some(c) => c.text.clone(),
        None => format!(
            "[content deleted at the end of retention; content digest {}]",
            hex::encode(meta.content_digest)
        ),
    };
    let mut b = MessageBuilder::new()
        .from((header_safe(from_account), address(from_account, domain)))
        .to((header_safe(to_account), address(to_account, domain)))
        .subject(header_safe(&subject_of(
            meta,
            content.map(|c| c.text.as_str()),
        )))
        .date(i64::try_from(meta.sent_ms / 1000).unwrap_or(i64::MAX))
        .message_id(format!(
            "sealpost-{}-{}@{domain}",
            rec.seq,
            hex::encode(&rec.hash[..8])
        ))
        .header("X-Sealpost-Seq", Raw::new(rec.seq.to_string()))
        .header("X-Sealpost-Hash", Raw::new(hex::encode(rec.hash)))
        .header("X-Sealpost-Prev-Hash", Raw::new(hex::encode(rec.prev_hash)))
        .header(
            "X-Sealpost-Content-Digest",
            Raw::new(hex::encode(meta.content_digest)),
        )
        .header(
            "X-Sealpost-Source-Id",
            Raw::new(hex::encode(&meta.source_id)),
        )
        .header("X-Sealpost-Class", Raw::new(meta.class.as_str()))
        .header("X-Sealpost-Direction", Raw::new(meta.direction.as_str()))
        .header("X-Sealpost-Kind", Text::new(header_safe(&meta.kind)))
        .header(
            "X-Sealpost-Client",
            Text::new(header_safe(&meta.client_account)),
        )
        .header(
            "X-Sealpost-Firm",
            Text::new(header_safe(&meta.firm_account)),
        )
        .header(
            "X-Sealpost-Sender-Device",
            Text::new(header_safe(&meta.sender_device)),
        )
        .header("X-Sealpost-Recorded", Raw::new(utc(rec.recorded_ms)))
        .text_body(text_body);
    if let Some(c) = content {
        for a in &c.attachments {
            b = b.attachment(
                mime_safe(&a.mime),
                file_name_safe(&a.name),
                a.bytes.as_slice(),
            );
        }
    }
    b.write_to_vec()
}

/// Appends one message to an mboxrd stream: `From ` line, CRLF turned into LF, every
/// line that starts with `>*From ` quoted with one more `>`, and a blank line.
fn mbox_append(out: &mut impl Write, from: &str, sent_ms: u64, eml: &[u8]) -> std::io::Result<()> {
    writeln!(out, "From {from} {}", asctime(sent_ms))?;
    let text = eml.split(|&b| b == b'\n');
    for line in text {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let unquoted = line.iter().position(|&b| b != b'>').unwrap_or(line.len());
        if line[unquoted..].starts_with(b"From ") {
            out.write_all(b">")?;
        }
        out.write_all(line)?;
        out.write_all(b"\n")?;
    }
    out.write_all(b"\n")
}

/// A writer that hashes what it writes.
struct Hashing<W: Write> {
    inner: W,
    hash: Sha256,
    size: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Writer {
    dir: PathBuf,
    files: Vec<ManifestFile>,
}

impl Writer {
    fn io(&self, rel: &str) -> impl Fn(std::io::Error) -> ArchiveError + '_ {
        let path = self.dir.join(rel);
        move |source| ArchiveError::Io {
            path: path.clone(),
            source,
        }
    }

    fn write(
        &mut self,
        rel: String,
        bytes: &[u8],
        role: FileRole,
        seq: Option<u64>,
        index: Option<u32>,
    ) -> Result<(), ArchiveError> {
        let path = self.dir.join(&rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(self.io(&rel))?;
        }
        fs::write(&path, bytes).map_err(self.io(&rel))?;
        self.files.push(ManifestFile {
            path: rel,
            sha256: Sha256::digest(bytes).into(),
            size: bytes.len() as u64,
            role,
            seq,
            index,
        });
        Ok(())
    }
}

fn export_seqs(conn: &rusqlite::Connection, scope: &ExportScope) -> Result<Vec<u64>, ArchiveError> {
    let cap = to_i64(MAX_EXPORT_RECORDS + 1, "limit")?;
    let (sql, args): (&str, Vec<rusqlite::types::Value>) = match scope {
        ExportScope::Conversation {
            client,
            firm,
            from_ms,
            to_ms,
        } => (
            "SELECT seq FROM messages WHERE client = ?1 AND firm = ?2 \
             AND sent_ms >= ?3 AND sent_ms < ?4 ORDER BY seq LIMIT ?5",
            vec![
                client.clone().into(),
                firm.clone().into(),
                to_i64(from_ms.unwrap_or(0), "from_ms")?.into(),
                to_i64(to_ms.unwrap_or(i64::MAX as u64), "to_ms")?.into(),
                cap.into(),
            ],
        ),
        ExportScope::Dates { from_ms, to_ms } => (
            "SELECT seq FROM messages WHERE sent_ms >= ?1 AND sent_ms < ?2 ORDER BY seq LIMIT ?3",
            vec![
                to_i64(*from_ms, "from_ms")?.into(),
                to_i64(*to_ms, "to_ms")?.into(),
                cap.into(),
            ],
        ),
        ExportScope::Seq { from, to } => (
            "SELECT seq FROM records WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
            vec![
                to_i64(*from, "from")?.into(),
                to_i64(*to, "to")?.into(),
                cap.into(),
            ],
        ),
    };
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, i64>(0))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(u64::try_from(r?).unwrap_or(0));
    }
    if out.len() as u64 > MAX_EXPORT_RECORDS {
        return Err(ArchiveError::TooLarge {
            what: "export records",
            got: out.len() as u64,
            max: MAX_EXPORT_RECORDS,
        });
    }
    Ok(out)
}

fn validate_scope(scope: &ExportScope) -> Result<(), ArchiveError> {
    let bad = |reason: String| ArchiveError::Invalid {
        what: "export scope",
        reason,
    };
    match scope {
        ExportScope::Conversation {
            client,
            firm,
            from_ms,
            to_ms,
        } => {
            check_len("client account length", client, MAX_ACCOUNT_LEN)?;
            check_len("firm account length", firm, MAX_ACCOUNT_LEN)?;
            if let (Some(a), Some(b)) = (from_ms, to_ms) {
                if a >= b {
                    return Err(bad(format!("from {a} is not before to {b}")));
                }
            }
        }
        ExportScope::Dates { from_ms, to_ms } if from_ms >= to_ms => {
            return Err(bad(format!("from {from_ms} is not before to {to_ms}")));
        }
        ExportScope::Seq { from, to } if from > to || *from == 0 => {
            return Err(bad(format!("seq range {from}..={to}")));
        }
        _ => {}
    }
    Ok(())
}

/// What [`Archive::write_export`] wrote: (records, files, manifest SHA-256).
type Written = (u64, u64, Hash);

impl Archive {
    /// Exports the records in `scope` into `dir` (created; must not exist or be empty)
    /// and appends an `export` record naming `actor`, the scope, the record count and
    /// the manifest's SHA-256. See the [module documentation](crate::export) for the
    /// layout. At most [`MAX_EXPORT_RECORDS`] records.
    ///
    /// The files are written into a hidden directory beside `dir`
    /// (`.NAME.partial-PID`), which becomes `dir` only once the `export` record is in the
    /// chain: an export that fails leaves nothing behind (the partial directory is
    /// removed) and no plaintext ever sits at `dir` without its audit record. (A process
    /// killed mid-export leaves its partial directory; delete it.)
    pub fn export(
        &mut self,
        actor: &str,
        scope: &ExportScope,
        dir: &Path,
    ) -> Result<ExportReport, ArchiveError> {
        check_actor(actor)?;
        validate_scope(scope)?;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ArchiveError::Io { path, source }
        };
        let existed = dir.exists();
        if existed && fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
            return Err(ArchiveError::ExportDirNotEmpty(dir.to_path_buf()));
        }
        let name = dir
            .file_name()
            .ok_or_else(|| ArchiveError::Invalid {
                what: "export directory",
                reason: format!("{} has no name", dir.display()),
            })?
            .to_string_lossy()
            .into_owned();
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(io(&parent))?;
        let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
        if staging.exists() {
            // Left by an earlier run of this process id that was killed.
            fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        fs::create_dir(&staging).map_err(io(&staging))?;
        let written = self.write_export(actor, scope, &staging);
        let (records, files, manifest_sha256) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let audit = self.append(&RecordBody::Export {
            actor: actor.to_string(),
            scope: scope.clone(),
            records,
            manifest_sha256,
        });
        let audit_seq = match audit {
            Ok((seq, _)) => seq,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        // Recorded: now it may be seen at its name (an empty `dir` is replaced).
        if existed {
            fs::remove_dir(dir).map_err(io(dir))?;
        }
        fs::rename(&staging, dir).map_err(io(&staging))?;
        Ok(ExportReport {
            dir: dir.to_path_buf(),
            records,
            files,
            manifest_sha256,
            audit_seq,
        })
    }

    /// Writes the export of `scope` into the (empty) directory `dir`; no audit record.
    fn write_export(
        &mut self,
        actor: &str,
        scope: &ExportScope,
        dir: &Path,
    ) -> Result<Written, ArchiveError> {
        let now = self.now_ms();
        let domain = self.options.mail_domain.clone();
        // One read transaction: a consistent snapshot even if another process sweeps.
        let tx = self.conn.unchecked_transaction()?;
        let seqs = export_seqs(&tx, scope)?;
        let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
            return Err(ArchiveError::NothingToExport);
        };
        if last - first + 1 > MAX_EXPORT_CHAIN_LINKS {
            return Err(ArchiveError::TooLarge {
                what: "export chain links",
                got: last - first + 1,
                max: MAX_EXPORT_CHAIN_LINKS,
            });
        }
        let head = head_in(&tx)?;
        let mut w = Writer {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        };
        let mbox_path = dir.join("mailbox.mbox");
        let mut mbox = Hashing {
            inner: BufWriter::new(File::create(&mbox_path).map_err(w.io("mailbox.mbox"))?),
            hash: Sha256::new(),
            size: 0,
        };
        let mut html = String::new();
        html.push_str(HTML_HEAD);
        html.push_str(&format!(
            "<h1>Sealpost archive export</h1>\n<p>Exported by {} at {}; {} records; chain head at export: seq {} hash <code>{}</code>.</p>\n<table>\n<tr><th>seq</th><th>sent</th><th>from</th><th>to</th><th>class / kind</th><th>text</th><th>attachments</th><th>hash</th></tr>\n",
            html_escape(actor),
            html_escape(&utc(now)),
            seqs.len(),
            head.seq,
            hex::encode(head.hash),
        ));
        let mut records = Vec::with_capacity(seqs.len());
        for &seq in &seqs {
            let rec = read_record(&tx, seq)?.ok_or(ArchiveError::Corrupt {
                seq,
                reason: "listed but missing".into(),
            })?;
            let mut state = ContentState::None;
            let mut tombstone_seq = None;
            if let RecordBody::Message(meta) = &rec.body {
                let content = read_content(&tx, seq)?;
                let seq_s = seq.to_string();
                if let Some(c) = &content {
                    state = ContentState::Present;
                    w.write(
                        format!("texts/{seq_s}.txt"),
                        c.text.as_bytes(),
                        FileRole::Text,
                        Some(seq),
                        None,
                    )?;
                    w.write(
                        format!("originals/{seq_s}.bin"),
                        &c.original,
                        FileRole::Original,
                        Some(seq),
                        None,
                    )?;
                    for (i, a) in c.attachments.iter().enumerate() {
                        let i = u32::try_from(i).unwrap_or(u32::MAX);
                        w.write(
                            format!("attachments/{seq_s}/{i}.bin"),
                            &a.bytes,
                            FileRole::Attachment,
                            Some(seq),
                            Some(i),
                        )?;
                    }
                } else {
                    state = ContentState::Deleted;
                    tombstone_seq = tx
                        .query_row(
                            "SELECT seq FROM records WHERE kind = 'tombstone' \
                             AND json_extract(body, '$.target') = ?1 LIMIT 1",
                            params![to_i64(seq, "seq")?],
                            |r| r.get::<_, i64>(0),
                        )
                        .map(|s| u64::try_from(s).ok())
                        .or_else(|e| match e {
                            rusqlite::Error::QueryReturnedNoRows => Ok(None),
                            e => Err(e),
                        })?;
                }
                let eml =
                    build_eml(&rec, meta, content.as_ref(), &domain).map_err(w.io("messages"))?;
                w.write(
                    format!("messages/{seq_s}.eml"),
                    &eml,
                    FileRole::Eml,
                    Some(seq),
                    None,
                )?;
                mbox_append(
                    &mut mbox,
                    &address(&meta.sender_account, &domain),
                    meta.sent_ms,
                    &eml,
                )
                .map_err(w.io("mailbox.mbox"))?;
                let (from, to) = match meta.direction {
                    Direction::ClientToFirm => (&meta.sender_account, &meta.firm_account),
                    Direction::FirmToClient => (&meta.sender_account, &meta.client_account),
                };
                let text = match &content {
                    Some(c) => html_escape(&c.text),
                    None => "<em>content deleted at the end of retention</em>".to_string(),
                };
                let atts: Vec<String> = meta
                    .attachments
                    .iter()
                    .map(|a| {
                        format!(
                            "{} ({}, {} bytes)",
                            html_escape(&a.name),
                            html_escape(&a.mime),
                            a.size
                        )
                    })
                    .collect();
                html.push_str(&format!(
                    "<tr id=\"r{seq}\"><td>{seq}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td><td class=\"text\">{}</td><td>{}</td><td><code>{}</code></td></tr>\n",
                    html_escape(&utc(meta.sent_ms)),
                    html_escape(from),
                    html_escape(to),
                    meta.class.as_str(),
                    html_escape(&meta.kind),
                    text,
                    atts.join("<br>"),
                    hex::encode(&rec.hash[..8]),
                ));
            } else {
                let json = serde_json::to_string(&rec.body).unwrap_or_default();
                html.push_str(&format!(
                    "<tr id=\"r{seq}\" class=\"audit\"><td>{seq}</td><td>{}</td><td colspan=\"5\">{}: <code>{}</code></td><td><code>{}</code></td></tr>\n",
                    html_escape(&utc(rec.recorded_ms)),
                    rec.body.kind(),
                    html_escape(&json),
                    hex::encode(&rec.hash[..8]),
                ));
            }
            records.push(ManifestRecord {
                record: rec,
                content: state,
                tombstone_seq,
            });
        }
        let chain = {
            let mut stmt = tx.prepare(
                "SELECT seq, prev_hash, hash FROM records WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
            )?;
            let rows =
                stmt.query_map(params![to_i64(first, "seq")?, to_i64(last, "seq")?], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Vec<u8>>(2)?,
                    ))
                })?;
            let mut chain = Vec::new();
            for row in rows {
                let (seq, prev, hash) = row?;
                let seq = u64::try_from(seq).unwrap_or(0);
                let bad = || ArchiveError::Corrupt {
                    seq,
                    reason: "hash is not 32 bytes".into(),
                };
                chain.push(ChainLink {
                    seq,
                    prev_hash: Hash::try_from(prev.as_slice()).map_err(|_| bad())?,
                    hash: Hash::try_from(hash.as_slice()).map_err(|_| bad())?,
                });
            }
            chain
        };
        tx.commit()?;
        mbox.flush().map_err(w.io("mailbox.mbox"))?;
        let mbox_hash: Hash = mbox.hash.finalize().into();
        let mbox_size = mbox.size;
        w.files.push(ManifestFile {
            path: "mailbox.mbox".into(),
            sha256: mbox_hash,
            size: mbox_size,
            role: FileRole::Mbox,
            seq: None,
            index: None,
        });
        html.push_str("</table>\n</body>\n</html>\n");
        w.write(
            "index.html".into(),
            html.as_bytes(),
            FileRole::Html,
            None,
            None,
        )?;
        let manifest = Manifest {
            format: EXPORT_FORMAT.to_string(),
            created_ms: now,
            actor: actor.to_string(),
            scope: scope.clone(),
            head,
            records,
            chain,
            files: w.files,
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ArchiveError::Invalid {
            what: "manifest",
            reason: e.to_string(),
        })?;
        let manifest_path = dir.join("manifest.json");
        fs::write(&manifest_path, &json).map_err(|source| ArchiveError::Io {
            path: manifest_path.clone(),
            source,
        })?;
        let manifest_sha256: Hash = Sha256::digest(&json).into();
        let files = manifest.files.len() as u64 + 1;
        Ok((seqs.len() as u64, files, manifest_sha256))
    }
}

const HTML_HEAD: &str = "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>Sealpost archive export</title>\n<style>body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:4px;vertical-align:top;text-align:left}td.text{white-space:pre-wrap}tr.audit{background:#f4f4f4}code{font-size:85%}</style>\n</head>\n<body>\n";

/// A manifest path as a path under `dir`, refusing anything but plain relative
/// components (no `..`, no root, no prefix).
fn safe_join(dir: &Path, rel: &str) -> Option<PathBuf> {
    if rel.is_empty() || rel.contains('\\') {
        return None;
    }
    let p = Path::new(rel);
    if !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(dir.join(p))
}

/// Reads a listed file (no symlinks), bounded by its listed size, and checks its SHA-256.
fn read_checked(dir: &Path, f: &ManifestFile, keep: bool) -> Result<Vec<u8>, ExportVerifyError> {
    let bad = |problem: String| ExportVerifyError::File {
        path: f.path.clone(),
        problem,
    };
    let path = safe_join(dir, &f.path).ok_or_else(|| bad("unsafe path".into()))?;
    let meta = fs::symlink_metadata(&path).map_err(|e| bad(format!("missing: {e}")))?;
    if !meta.file_type().is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() != f.size {
        return Err(bad(format!(
            "size {} differs from manifest {}",
            meta.len(),
            f.size
        )));
    }
    let mut file = File::open(&path).map_err(|e| bad(e.to_string()))?;
    let mut hash = Sha256::new();
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        if keep {
            kept.extend_from_slice(&buf[..n]);
        }
    }
    let got: Hash = hash.finalize().into();
    if got != f.sha256 {
        return Err(bad(format!(
            "SHA-256 {} differs from the manifest's {}",
            hex::encode(got),
            hex::encode(f.sha256)
        )));
    }
    Ok(kept)
}

/// Verifies an export directory without the archive: see the
/// [module documentation](crate::export). Names the first bad file or record.
pub fn verify_export(dir: &Path) -> Result<ExportVerifyReport, ExportVerifyError> {
    let mpath = dir.join("manifest.json");
    let m = fs::symlink_metadata(&mpath).map_err(|e| ExportVerifyError::Manifest(e.to_string()))?;
    if !m.file_type().is_file() || m.len() > MAX_MANIFEST_BYTES {
        return Err(ExportVerifyError::Manifest(format!(
            "not a regular file of at most {MAX_MANIFEST_BYTES} bytes"
        )));
    }
    let bytes = fs::read(&mpath).map_err(|e| ExportVerifyError::Manifest(e.to_string()))?;
    let manifest_sha256: Hash = Sha256::digest(&bytes).into();
    let manifest: Manifest =
        serde_json::from_slice(&bytes).map_err(|e| ExportVerifyError::Manifest(e.to_string()))?;
    drop(bytes);
    if manifest.format != EXPORT_FORMAT {
        return Err(ExportVerifyError::Manifest(format!(
            "format {:?}, expected {EXPORT_FORMAT:?}",
            manifest.format
        )));
    }
    if manifest.files.len() > MAX_EXPORT_FILES {
        return Err(ExportVerifyError::Manifest(format!(
            "{} files listed, at most {MAX_EXPORT_FILES}",
            manifest.files.len()
        )));
    }
    if manifest.records.len() as u64 > MAX_EXPORT_RECORDS {
        return Err(ExportVerifyError::Manifest(format!(
            "{} records listed, at most {MAX_EXPORT_RECORDS}",
            manifest.records.len()
        )));
    }
    // 1. Every listed file, in manifest order (content files are re-read below).
    let mut seen = std::collections::BTreeSet::new();
    for f in &manifest.files {
        if !seen.insert(f.path.as_str()) {
            return Err(ExportVerifyError::File {
                path: f.path.clone(),
                problem: "listed twice".into(),
            });
        }
        read_checked(dir, f, false)?;
    }
    // 2. The chain links.
    let mut links = std::collections::BTreeMap::new();
    let mut prev: Option<&ChainLink> = None;
    for l in &manifest.chain {
        if let Some(p) = prev {
            if l.seq != p.seq + 1 {
                return Err(ExportVerifyError::Record {
                    seq: p.seq + 1,
                    problem: format!("missing from the chain links (next link is {})", l.seq),
                });
            }
            if l.prev_hash != p.hash {
                return Err(ExportVerifyError::Record {
                    seq: l.seq,
                    problem: "prev_hash is not the previous link's hash".into(),
                });
            }
        }
        links.insert(l.seq, l);
        prev = Some(l);
    }
    // 3. Records: hash, link, content digest.
    let mut contents = 0u64;
    let mut last_seq = 0u64;
    for mr in &manifest.records {
        let r = &mr.record;
        let bad = |problem: String| ExportVerifyError::Record {
            seq: r.seq,
            problem,
        };
        if r.seq <= last_seq {
            return Err(bad("records out of order".into()));
        }
        last_seq = r.seq;
        if r.computed_hash() != r.hash {
            return Err(bad("hash does not match its metadata (edited)".into()));
        }
        match links.get(&r.seq) {
            Some(l) if l.hash == r.hash && l.prev_hash == r.prev_hash => {}
            Some(_) => return Err(bad("differs from its chain link".into())),
            None => return Err(bad("not in the chain links".into())),
        }
        let RecordBody::Message(meta) = &r.body else {
            continue;
        };
        let file = |role: FileRole, index: Option<u32>| {
            manifest
                .files
                .iter()
                .find(|f| f.seq == Some(r.seq) && f.role == role && f.index == index)
        };
        if file(FileRole::Eml, None).is_none() {
            return Err(bad("no .eml file listed".into()));
        }
        if mr.content != ContentState::Present {
            continue;
        }
        let get =
            |role: FileRole, index: Option<u32>, max: u64| -> Result<Vec<u8>, ExportVerifyError> {
                let f = file(role, index).ok_or_else(|| bad(format!("no {role:?} file listed")))?;
                if f.size > max {
                    return Err(bad(format!("{role:?} file larger than {max} bytes")));
                }
                read_checked(dir, f, true)
            };
        let text = get(FileRole::Text, None, MAX_TEXT_LEN as u64)?;
        let text = String::from_utf8(text).map_err(|_| bad("text file is not UTF-8".into()))?;
        let original = get(FileRole::Original, None, MAX_ORIGINAL_LEN as u64)?;
        let mut atts = Vec::with_capacity(meta.attachments.len().min(MAX_ATTACHMENTS));
        if meta.attachments.len() > MAX_ATTACHMENTS {
            return Err(bad("too many attachments".into()));
        }
        for (i, _) in meta.attachments.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            atts.push(get(
                FileRole::Attachment,
                Some(i),
                MAX_ATTACHMENT_BYTES as u64,
            )?);
        }
        let digest = content_digest(
            &text,
            meta.attachments
                .iter()
                .zip(&atts)
                .map(|(m, b)| (m.name.as_str(), m.mime.as_str(), b.as_slice())),
            &original,
        );
        if digest != meta.content_digest {
            return Err(bad(
                "content digest does not match the text, attachment and original files".into(),
            ));
        }
        contents += 1;
    }
    Ok(ExportVerifyReport {
        records: manifest.records.len() as u64,
        contents,
        files: manifest.files.len() as u64,
        links: manifest.chain.len() as u64,
        manifest_sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escape_escapes() {
        assert_eq!(
            html_escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    #[test]
    fn mbox_quotes_from_lines() -> std::io::Result<()> {
        let mut out = Vec::new();
        mbox_append(
            &mut out,
            "a@b",
            0,
            b"Subject: x\r\n\r\nFrom here\r\n>From there\r\nok\r\n",
        )?;
        let s = String::from_utf8_lossy(&out);
        assert!(s.starts_with("From a@b Thu Jan  1 00:00:00 1970\n"));
        assert!(s.contains("\n>From here\n"));
        assert!(s.contains("\n>>From there\n"));
        assert!(!s.contains('\r'));
        Ok(())
    }

    #[test]
    fn unsafe_paths_are_refused() {
        let d = Path::new("/tmp/x");
        assert!(safe_join(d, "../etc/passwd").is_none());
        assert!(safe_join(d, "/etc/passwd").is_none());
        assert!(safe_join(d, "a/../../b").is_none());
        assert!(safe_join(d, "").is_none());
        assert!(safe_join(d, "messages/1.eml").is_some());
    }

    #[test]
    fn header_values_cannot_inject() {
        assert_eq!(
            mime_safe("text/plain\r\nBcc: x"),
            "application/octet-stream"
        );
        assert_eq!(mime_safe("Application/PDF"), "application/pdf");
        assert_eq!(header_safe("a\r\nBcc: b"), "a  Bcc: b");
        assert_eq!(file_name_safe("../\"x\"\n"), "..__x__");
    }
}

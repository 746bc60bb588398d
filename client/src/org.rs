//! The organisation's offline tooling: the root key store and roster specification files.
//!
//! Nothing here touches the network. The firm runs these on an offline machine:
//!
//! * [`OrgStore`]: the organisation root key ([`OrgRoot`]) in a directory of its own,
//!   encrypted at rest exactly as a device profile is ([`crate::state::Profile`]: Argon2id
//!   over the passphrase, ChaCha20-Poly1305, atomic writes, mode 0600, an exclusive lock).
//!   The root is a pickle (kind `org root`) nested inside the sealed state, so it is
//!   encrypted twice under the passphrase-derived key, and it is only ever decrypted into
//!   an [`OrgRoot`], which zeroizes itself and has no `Debug`.
//!
//!   ```text
//!   <org-dir>/kdf.json         Argon2id parameters and salt (not secret)
//!   <org-dir>/state.sealed     { format, root: OrgRoot pickle, created_ms }, sealed
//!   <org-dir>/lock             held while a process uses the store
//!   <org-dir>/fingerprint.txt  the organisation fingerprint (public), 64 hex digits
//!   ```
//!
//! * [`RosterSpec`]: a roster written by hand in TOML, turned into [`Roster::new`] (version
//!   1, for [`OrgStore::sign_genesis`]) or [`Roster::next`] (a later version, proposed to
//!   the staff quorum). Device identities are the 128 hex digits `ed25519 || x25519` that
//!   `sealpost whoami --json` prints as `identity` ([`identity_hex`]).
//!
//!   ```toml
//!   [policy]                      # optional; every entry defaults as shown
//!   cooling_off = "24h"           # humantime: "90m", "2days", ...; at most 30 days
//!   sensitive_kinds = ["approval", "device_change", "instruction"]
//!   account_recovery      = { threshold = 2, roles = ["operations", "compliance", "security"] }
//!   unfreeze              = { threshold = 2, roles = ["operations", "compliance", "security"] }
//!   roster_change         = { threshold = 2, roles = ["compliance", "security"] }
//!   notice_to_all_clients = { threshold = 1, roles = ["operations", "compliance"] }
//!   high_risk_notice      = { threshold = 2, roles = ["operations", "compliance", "security"] }
//!
//!   [[staff]]
//!   account = "ops-alice"
//!   role = "operations"           # advisor, operations, compliance, security
//!   devices = ["<128 hex digits>"]
//!   ```
//!
//!   A threshold `M` means M approvers besides the initiator (see `sealpost_protocol::trust`);
//!   a policy the listed staff could never satisfy is refused.
//!
//! * [`roster_diff`]: what changes between two roster versions, for the approver's screen.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand_core::{CryptoRng, RngCore};
use sealpost_protocol::envelope::EnvelopeKind;
use sealpost_protocol::hexid::{HexBytes, HexError};
use sealpost_protocol::identity::{AccountId, PublicIdentity};
use sealpost_protocol::tlog::{KeyName, NoteKey, TransparencyPolicy};
use sealpost_protocol::trust::{
    ApprovalPolicy, OrgFingerprint, OrgRoot, Quorum, Roster, SignedRoster, StaffMember, StaffRole,
    TrustError, MAX_SIGNED_ROSTER_LEN,
};
use sealpost_protocol::trust::{Operation, MAX_COOLING_OFF_MS};
use serde::{Deserialize, Serialize};

use crate::state::{write_atomic, Profile, StateError};

/// The public fingerprint file in an organisation directory.
pub const FINGERPRINT_FILE: &str = "fingerprint.txt";
/// Largest roster specification file read, bytes.
pub const MAX_SPEC_LEN: u64 = 1024 * 1024;
/// The format number of the sealed organisation state.
const ORG_FORMAT: u32 = 1;
/// The sealed state file of a [`Profile`] (to tell "no store here" apart).
const STATE_FILE: &str = "state.sealed";

/// A failure of the organisation tooling.
#[derive(Debug, thiserror::Error)]
pub enum OrgError {
    /// No organisation store in this directory.
    #[error("no organisation store in {0} (create one with `sealpost org init --dir {0}`)")]
    NoStore(PathBuf),
    /// A store (or a device profile) already exists in this directory.
    #[error("{0} already holds a Sealpost store; refusing to overwrite it")]
    Exists(PathBuf),
    /// The passphrase does not open the store.
    #[error("wrong passphrase for the organisation store (or its files were altered)")]
    WrongPassphrase,
    /// The passphrase is too short.
    #[error(
        "the passphrase must be at least {} characters",
        crate::state::MIN_PASSPHRASE_LEN
    )]
    WeakPassphrase,
    /// Another process holds the store.
    #[error("the organisation store in {0} is in use by another process")]
    Locked(PathBuf),
    /// The directory holds something this version does not understand.
    #[error("the store in {0} is not an organisation store this version understands: {1}")]
    Damaged(PathBuf, String),
    /// A roster specification file is malformed.
    #[error("roster specification {file}: {reason}")]
    Spec {
        /// The file (or `<input>`).
        file: String,
        /// What is wrong, naming the entry.
        reason: String,
    },
    /// A signed roster file cannot be used.
    #[error("signed roster {file}: {reason}")]
    SignedRosterFile {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// The roster breaks a rule of the trust core.
    #[error("{0}")]
    Trust(#[from] TrustError),
    /// A file could not be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

impl OrgError {
    fn from_state(e: StateError, dir: &Path) -> Self {
        match e {
            StateError::NoProfile(_) => Self::NoStore(dir.to_owned()),
            StateError::Exists(_) => Self::Exists(dir.to_owned()),
            StateError::WrongPassphrase => Self::WrongPassphrase,
            StateError::WeakPassphrase => Self::WeakPassphrase,
            StateError::Locked(_) => Self::Locked(dir.to_owned()),
            StateError::Io(p, e) => Self::Io(p, e),
            StateError::Format(m) => Self::Damaged(dir.to_owned(), m),
        }
    }
}

/// What is sealed in `state.sealed`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OrgState {
    format: u32,
    /// The [`OrgRoot`] pickle, under the store's key.
    #[serde(with = "serde_bytes")]
    root: Vec<u8>,
    created_ms: u64,
}

/// An open organisation store: the root key, decrypted, and the lock on its directory.
pub struct OrgStore {
    profile: Profile,
    root: OrgRoot,
    created_ms: u64,
}

impl fmt::Debug for OrgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key: the fingerprint and where the store lives.
        f.debug_struct("OrgStore")
            .field("dir", &self.profile.dir())
            .field("fingerprint", &self.fingerprint())
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

impl OrgStore {
    /// Create a new root in `dir` (created if missing, mode 0700), seal it under
    /// `passphrase`, and write the public fingerprint file. Refuses a directory that
    /// already holds a store or a device profile.
    pub fn init<R: RngCore + CryptoRng>(
        dir: &Path,
        passphrase: &str,
        created_ms: u64,
        rng: &mut R,
    ) -> Result<Self, OrgError> {
        if dir.join(STATE_FILE).exists() {
            return Err(OrgError::Exists(dir.to_owned()));
        }
        if passphrase.chars().count() < crate::state::MIN_PASSPHRASE_LEN {
            return Err(OrgError::WeakPassphrase);
        }
        let root = OrgRoot::generate(rng);
        // The profile's key is derived inside `Profile::create`; the root pickle needs it,
        // so the store is created with a placeholder and then sealed with the root. A
        // crash in between leaves a store without a root, which `open` reports as damaged
        // and `init` refuses to overwrite; nothing secret is lost, since the root was never
        // published.
        let placeholder = OrgState {
            format: ORG_FORMAT,
            root: Vec::new(),
            created_ms,
        };
        let profile = Profile::create(dir, passphrase, &placeholder, rng)
            .map_err(|e| OrgError::from_state(e, dir))?;
        let sealed_root = root
            .pickle(profile.key(), rng)
            .map_err(|e| OrgError::Damaged(dir.to_owned(), e.to_string()))?;
        let state = OrgState {
            format: ORG_FORMAT,
            root: sealed_root,
            created_ms,
        };
        profile
            .save(&state, rng)
            .map_err(|e| OrgError::from_state(e, dir))?;
        let store = Self {
            profile,
            root,
            created_ms,
        };
        let fp_path = dir.join(FINGERPRINT_FILE);
        write_atomic(
            &fp_path,
            format!("{}\n", store.fingerprint().to_hex()).as_bytes(),
        )
        .map_err(|e| OrgError::from_state(e, dir))?;
        Ok(store)
    }

    /// Open the store in `dir` with `passphrase`.
    pub fn open(dir: &Path, passphrase: &str) -> Result<Self, OrgError> {
        if !dir.join(STATE_FILE).exists() {
            return Err(OrgError::NoStore(dir.to_owned()));
        }
        let (profile, state): (Profile, OrgState) =
            Profile::open(dir, passphrase).map_err(|e| OrgError::from_state(e, dir))?;
        if state.format != ORG_FORMAT {
            return Err(OrgError::Damaged(
                dir.to_owned(),
                format!("format {} (this version reads {ORG_FORMAT})", state.format),
            ));
        }
        if state.root.is_empty() {
            return Err(OrgError::Damaged(
                dir.to_owned(),
                "it holds no root key (interrupted `org init`?)".into(),
            ));
        }
        let root = OrgRoot::from_pickle(&state.root, profile.key())
            .map_err(|e| OrgError::Damaged(dir.to_owned(), e.to_string()))?;
        Ok(Self {
            profile,
            root,
            created_ms: state.created_ms,
        })
    }

    /// The organisation fingerprint every device pins.
    pub fn fingerprint(&self) -> OrgFingerprint {
        self.root.public().fingerprint()
    }

    /// When the root was created (ms since the Unix epoch).
    pub fn created_ms(&self) -> u64 {
        self.created_ms
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        self.profile.dir()
    }

    /// Sign roster version 1 with the root.
    pub fn sign_genesis(&self, roster: Roster) -> Result<SignedRoster, OrgError> {
        Ok(self.root.sign_genesis(roster)?)
    }
}

/// Read the fingerprint file of an organisation directory (no passphrase needed).
pub fn read_fingerprint(dir: &Path) -> Result<OrgFingerprint, OrgError> {
    let path = dir.join(FINGERPRINT_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| OrgError::Io(path.clone(), e))?;
    OrgFingerprint::from_hex(text.trim())
        .map_err(|e| OrgError::Damaged(dir.to_owned(), format!("{FINGERPRINT_FILE}: {e}")))
}

/// Write a signed roster as CBOR, atomically (mode 0600).
pub fn write_signed_roster(path: &Path, roster: &SignedRoster) -> Result<(), OrgError> {
    let bytes = roster.to_cbor()?;
    write_atomic(path, &bytes).map_err(|e| match e {
        StateError::Io(p, e) => OrgError::Io(p, e),
        other => OrgError::SignedRosterFile {
            file: path.display().to_string(),
            reason: other.to_string(),
        },
    })
}

/// Read a signed roster file (bounded; the roster is checked as it decodes, signatures
/// are checked when a chain is verified).
pub fn read_signed_roster(path: &Path) -> Result<SignedRoster, OrgError> {
    let bad = |reason: String| OrgError::SignedRosterFile {
        file: path.display().to_string(),
        reason,
    };
    let bytes = read_bounded(path, MAX_SIGNED_ROSTER_LEN as u64)?
        .ok_or_else(|| bad(format!("larger than {MAX_SIGNED_ROSTER_LEN} bytes")))?;
    SignedRoster::from_cbor(&bytes).map_err(|e| bad(e.to_string()))
}

/// Read at most `max` bytes; `None` if the file is larger.
fn read_bounded(path: &Path, max: u64) -> Result<Option<Vec<u8>>, OrgError> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| OrgError::Io(path.to_owned(), e))?;
    let mut buf = Vec::new();
    f.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| OrgError::Io(path.to_owned(), e))?;
    Ok((buf.len() as u64 <= max).then_some(buf))
}

/// A device identity as the 128 hex digits `ed25519 (32) || x25519 (32)`: what
/// `sealpost whoami --json` prints as `identity` and roster specifications list.
pub fn identity_hex(identity: &PublicIdentity) -> String {
    hex::encode(identity.to_bytes())
}

/// Parse [`identity_hex`]'s form; spaces and colons are ignored.
pub fn parse_identity_hex(text: &str) -> Result<PublicIdentity, String> {
    let bytes = match HexBytes::<64>::parse_grouped(text) {
        Ok(b) => b.into_bytes(),
        Err(HexError::Length { got, .. }) => {
            return Err(format!(
                "a device identity is 128 hex digits (ed25519 || x25519, as `sealpost whoami --json` prints it), got {got} characters"
            ))
        }
        Err(HexError::NotHex {
            position, found, ..
        }) => {
            return Err(format!(
                "a device identity is 128 hex digits; this has a non-hex character ({found:?} at {position})"
            ))
        }
    };
    let mut ed = [0u8; 32];
    let mut x = [0u8; 32];
    ed.copy_from_slice(&bytes[..32]);
    x.copy_from_slice(&bytes[32..]);
    PublicIdentity::from_bytes(&ed, &x)
        .map_err(|_| "the Ed25519 half is not a valid public key".to_owned())
}

/// The name of an envelope kind in specification files.
pub fn kind_name(kind: EnvelopeKind) -> &'static str {
    kind.name()
}

fn parse_kind(name: &str) -> Option<EnvelopeKind> {
    EnvelopeKind::ALL
        .into_iter()
        .find(|k| kind_name(*k) == name)
}

/// A quorum in words: `2 approvals from operations, compliance`.
pub fn describe_quorum(q: &Quorum) -> String {
    let roles: Vec<&str> = q.roles.roles().into_iter().map(StaffRole::name).collect();
    format!(
        "{} approval{} from {}",
        q.threshold,
        if q.threshold == 1 { "" } else { "s" },
        roles.join(", ")
    )
}

/// A duration in words (`1day`, `90m`).
pub fn describe_ms(ms: u64) -> String {
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

// ---------------------------------------------------------------------------------------
// Roster specification files
// ---------------------------------------------------------------------------------------

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    #[serde(default)]
    policy: PolicySpec,
    #[serde(default)]
    staff: Vec<StaffSpec>,
}

#[derive(Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    cooling_off: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sensitive_kinds: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    account_recovery: Option<QuorumSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    unfreeze: Option<QuorumSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    roster_change: Option<QuorumSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    notice_to_all_clients: Option<QuorumSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    high_risk_notice: Option<QuorumSpec>,
    /// Roles that may attest a client's first device (absent: advisor and operations,
    /// written as roster format 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    client_attestation: Option<Vec<StaffRole>>,
    /// The relay's transparency-log key(s), as `sealpost-relay audit key` prints them
    /// (`<name>+<key id>+<base64 key>`): one string or a list. Absent (with no witness):
    /// no transparency policy, the roster keeps format 1 or 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    log_key: Option<OneOrMany>,
    /// Witnesses whose cosignatures count ([[policy.witness]] name, key: 64 hex digits).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    witness: Vec<WitnessSpec>,
    /// Distinct witness cosignatures a checkpoint needs for clients (default 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    witness_threshold: Option<u8>,
    /// The firm's compliance archive ([policy.archive]; absent: not recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    archive: Option<ArchiveSpec>,
}

/// `[policy.archive]`: the archive's account, its device identity (as
/// `sealpost-archiver fingerprint` prints it: 128 hex digits), what devices do when it
/// cannot take a copy, and the disclosure clients see.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ArchiveSpec {
    account: String,
    device: String,
    unreachable: sealpost_protocol::trust::ArchiveUnreachable,
    disclosure: String,
}

#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct WitnessSpec {
    name: String,
    key: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct QuorumSpec {
    threshold: u8,
    roles: Vec<StaffRole>,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct StaffSpec {
    account: String,
    role: StaffRole,
    devices: Vec<String>,
}

/// A roster as written by hand: staff and policy, without version, previous hash or
/// issue time (those come from where it is used: [`RosterSpec::genesis`] or
/// [`RosterSpec::next_of`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterSpec {
    /// The staff accounts.
    pub staff: Vec<StaffMember>,
    /// The approval policy.
    pub policy: ApprovalPolicy,
}

impl RosterSpec {
    /// Parse a specification; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, OrgError> {
        let spec_err = |reason: String| OrgError::Spec {
            file: file.to_owned(),
            reason,
        };
        let raw: SpecFile = toml::from_str(text).map_err(|e| spec_err(toml_message(&e)))?;
        if raw.staff.is_empty() {
            return Err(spec_err(
                "no staff: list at least one [[staff]] entry with account, role and devices".into(),
            ));
        }
        let mut staff = Vec::with_capacity(raw.staff.len());
        let mut accounts = BTreeSet::new();
        let mut devices_seen: BTreeMap<[u8; 16], String> = BTreeMap::new();
        for (i, s) in raw.staff.into_iter().enumerate() {
            let which = format!("staff entry {} ({:?})", i + 1, s.account);
            let account = AccountId::new(&s.account)
                .map_err(|e| spec_err(format!("{which}: not a valid account id: {e}")))?;
            if !accounts.insert(account.clone()) {
                return Err(spec_err(format!("{which}: the account is listed twice")));
            }
            if s.devices.is_empty() {
                return Err(spec_err(format!(
                    "{which}: no devices; list the identity of each of its devices (`sealpost whoami --json` on that device prints it)"
                )));
            }
            let mut devices = Vec::with_capacity(s.devices.len());
            for (j, d) in s.devices.iter().enumerate() {
                let identity = parse_identity_hex(d)
                    .map_err(|e| spec_err(format!("{which}, device {}: {e}", j + 1)))?;
                if let Some(other) = devices_seen.insert(identity.device_id().0, s.account.clone())
                {
                    return Err(spec_err(format!(
                        "{which}, device {}: device {} is already listed for {other:?}",
                        j + 1,
                        identity.device_id()
                    )));
                }
                devices.push(identity);
            }
            staff.push(StaffMember {
                account,
                role: s.role,
                devices,
            });
        }
        let policy = policy_from_spec(raw.policy).map_err(spec_err)?;
        Ok(Self { staff, policy })
    }

    /// Read and parse a specification file (at most [`MAX_SPEC_LEN`] bytes).
    pub fn from_file(path: &Path) -> Result<Self, OrgError> {
        let file = path.display().to_string();
        let bytes = read_bounded(path, MAX_SPEC_LEN)?.ok_or_else(|| OrgError::Spec {
            file: file.clone(),
            reason: format!("larger than {MAX_SPEC_LEN} bytes"),
        })?;
        let text = String::from_utf8(bytes).map_err(|_| OrgError::Spec {
            file: file.clone(),
            reason: "not UTF-8 text".into(),
        })?;
        Self::parse(&text, &file)
    }

    /// The staff and policy of an existing roster (to edit it into the next version).
    pub fn from_roster(roster: &Roster) -> Self {
        Self {
            staff: roster.staff().to_vec(),
            policy: roster.policy().clone(),
        }
    }

    /// The specification as TOML, every policy entry written out; parses back to `self`.
    pub fn to_toml(&self) -> Result<String, OrgError> {
        let q = |q: &Quorum| QuorumSpec {
            threshold: q.threshold,
            roles: q.roles.roles(),
        };
        let p = &self.policy;
        let file = SpecFile {
            policy: PolicySpec {
                cooling_off: Some(describe_ms(p.cooling_off_ms)),
                sensitive_kinds: Some(
                    p.sensitive_kinds
                        .iter()
                        .map(|k| kind_name(*k).to_owned())
                        .collect(),
                ),
                account_recovery: Some(q(&p.account_recovery)),
                unfreeze: Some(q(&p.unfreeze)),
                roster_change: Some(q(&p.roster_change)),
                notice_to_all_clients: Some(q(&p.notice_to_all_clients)),
                high_risk_notice: Some(q(&p.high_risk_notice)),
                client_attestation: p.client_attestation.map(|r| r.roles()),
                log_key: p
                    .transparency
                    .as_ref()
                    .map(|t| OneOrMany::Many(t.log_keys.iter().map(|k| k.to_vkey()).collect())),
                witness: p
                    .transparency
                    .as_ref()
                    .map(|t| {
                        t.witnesses
                            .iter()
                            .map(|w| WitnessSpec {
                                name: w.name().as_str().to_owned(),
                                key: hex::encode(w.public()),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                witness_threshold: p.transparency.as_ref().map(|t| t.witness_threshold),
                archive: p.archive.as_ref().map(|a| ArchiveSpec {
                    account: a.account.as_str().to_owned(),
                    device: identity_hex(&a.identity),
                    unreachable: a.unreachable,
                    disclosure: a.disclosure.clone(),
                }),
            },
            staff: self
                .staff
                .iter()
                .map(|m| StaffSpec {
                    account: m.account.as_str().to_owned(),
                    role: m.role,
                    devices: m.devices.iter().map(identity_hex).collect(),
                })
                .collect(),
        };
        toml::to_string(&file).map_err(|e| OrgError::Spec {
            file: "<output>".into(),
            reason: e.to_string(),
        })
    }

    /// Roster version 1 (for [`OrgStore::sign_genesis`]), issued at `issued_ms`.
    pub fn genesis(&self, issued_ms: u64) -> Result<Roster, OrgError> {
        Ok(Roster::new(
            1,
            None,
            issued_ms,
            self.staff.clone(),
            self.policy.clone(),
        )?)
    }

    /// The version after `previous`, issued at `issued_ms`.
    pub fn next_of(&self, previous: &Roster, issued_ms: u64) -> Result<Roster, OrgError> {
        Ok(previous.next(issued_ms, self.staff.clone(), self.policy.clone())?)
    }
}

/// A TOML error on one line: the message with its line and column.
fn toml_message(e: &toml::de::Error) -> String {
    // toml's Display spans several lines with a source excerpt; keep it, flattened.
    e.to_string()
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The roster's transparency policy from `log_key`, `[[policy.witness]]` and
/// `witness_threshold`; none when no log key is given.
fn transparency_from_spec(
    log_key: Option<OneOrMany>,
    witness: Vec<WitnessSpec>,
    threshold: Option<u8>,
) -> Result<Option<TransparencyPolicy>, String> {
    let keys = match log_key {
        None => {
            if !witness.is_empty() || threshold.is_some() {
                return Err(
                    "policy.witness and policy.witness_threshold need policy.log_key (the relay's log key, from `sealpost-relay audit key`)"
                        .into(),
                );
            }
            return Ok(None);
        }
        Some(OneOrMany::One(k)) => vec![k],
        Some(OneOrMany::Many(v)) => v,
    };
    let mut log_keys = Vec::with_capacity(keys.len());
    for k in keys {
        log_keys.push(NoteKey::from_vkey(&k).map_err(|e| {
            format!("policy.log_key {k:?}: {e} (copy it from `sealpost-relay audit key`)")
        })?);
    }
    let mut witnesses = Vec::with_capacity(witness.len());
    for (i, w) in witness.into_iter().enumerate() {
        let which = format!("policy.witness {} ({:?})", i + 1, w.name);
        let name = KeyName::new(&w.name).map_err(|e| format!("{which}: {e}"))?;
        let key = hex::decode(w.key.trim())
            .map_err(|_| format!("{which}: key is not hex (64 hex digits)"))?;
        witnesses.push(NoteKey::new(name, &key).map_err(|e| format!("{which}: key: {e}"))?);
    }
    let mut t = TransparencyPolicy {
        log_keys,
        witnesses,
        witness_threshold: threshold.unwrap_or(0),
    };
    t.normalize().map_err(|e| format!("policy: {e}"))?;
    Ok(Some(t))
}

fn policy_from_spec(p: PolicySpec) -> Result<ApprovalPolicy, String> {
    let mut policy = ApprovalPolicy::default();
    if let Some(roles) = &p.client_attestation {
        policy.client_attestation = Some(sealpost_protocol::trust::RoleSet::of(roles));
    }
    policy.transparency = transparency_from_spec(p.log_key, p.witness, p.witness_threshold)?;
    if let Some(a) = p.archive {
        let account = AccountId::new(&a.account)
            .map_err(|e| format!("policy.archive.account {:?}: {e}", a.account))?;
        let identity = parse_identity_hex(&a.device).map_err(|e| {
            format!(
                "policy.archive.device: {e} (copy it from `sealpost-archiver fingerprint`: 128 hex digits)"
            )
        })?;
        let archive = sealpost_protocol::trust::ArchivePolicy {
            account,
            identity,
            unreachable: a.unreachable,
            disclosure: a.disclosure.trim().to_owned(),
        };
        archive
            .validate()
            .map_err(|e| format!("policy.archive: {e}"))?;
        policy.archive = Some(archive);
    }
    if let Some(c) = p.cooling_off {
        let d = humantime::parse_duration(c.trim()).map_err(|e| {
            format!("policy.cooling_off {c:?}: {e} (write it as \"24h\", \"90m\", \"2days\")")
        })?;
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if ms > MAX_COOLING_OFF_MS {
            return Err(format!(
                "policy.cooling_off {c:?}: at most {} is allowed",
                describe_ms(MAX_COOLING_OFF_MS)
            ));
        }
        policy.cooling_off_ms = ms;
    }
    if let Some(kinds) = p.sensitive_kinds {
        let mut out = Vec::with_capacity(kinds.len());
        for k in kinds {
            let kind = parse_kind(&k).ok_or_else(|| {
                let names: Vec<&str> = EnvelopeKind::ALL.into_iter().map(kind_name).collect();
                format!(
                    "policy.sensitive_kinds: unknown kind {k:?} (one of {})",
                    names.join(", ")
                )
            })?;
            out.push(kind);
        }
        policy.sensitive_kinds = out;
    }
    let quorums = [
        (Operation::AccountRecovery, p.account_recovery),
        (Operation::Unfreeze, p.unfreeze),
        (Operation::RosterChange, p.roster_change),
        (Operation::NoticeToAllClients, p.notice_to_all_clients),
        (Operation::HighRiskNotice, p.high_risk_notice),
    ];
    for (op, spec) in quorums {
        let Some(spec) = spec else { continue };
        if spec.threshold == 0 {
            return Err(format!(
                "policy.{op}: threshold 0 is not allowed (at least 1 approver besides the initiator)"
            ));
        }
        if spec.roles.is_empty() {
            return Err(format!(
                "policy.{op}: roles is empty; name at least one role"
            ));
        }
        let q = Quorum::new(spec.threshold, &spec.roles);
        match op {
            Operation::AccountRecovery => policy.account_recovery = q,
            Operation::Unfreeze => policy.unfreeze = q,
            Operation::RosterChange => policy.roster_change = q,
            Operation::NoticeToAllClients => policy.notice_to_all_clients = q,
            Operation::HighRiskNotice => policy.high_risk_notice = q,
        }
    }
    Ok(policy)
}

// ---------------------------------------------------------------------------------------
// Roster differences
// ---------------------------------------------------------------------------------------

/// One difference between two roster versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum RosterChange {
    /// A staff account joins.
    StaffAdded {
        /// The account.
        account: String,
        /// Its role.
        role: StaffRole,
        /// Its devices' fingerprints.
        devices: Vec<String>,
    },
    /// A staff account leaves.
    StaffRemoved {
        /// The account.
        account: String,
        /// Its role.
        role: StaffRole,
    },
    /// A staff account changes role.
    RoleChanged {
        /// The account.
        account: String,
        /// Old role.
        from: StaffRole,
        /// New role.
        to: StaffRole,
    },
    /// A device is added to a staff account that stays.
    DeviceAdded {
        /// The account.
        account: String,
        /// The device's fingerprint.
        fingerprint: String,
    },
    /// A device is removed from a staff account that stays.
    DeviceRemoved {
        /// The account.
        account: String,
        /// The device's fingerprint.
        fingerprint: String,
    },
    /// An operation's quorum changes.
    QuorumChanged {
        /// The operation.
        operation: Operation,
        /// Old quorum, in words.
        from: String,
        /// New quorum, in words.
        to: String,
    },
    /// The cooling-off window changes.
    CoolingOffChanged {
        /// Old window, ms.
        from_ms: u64,
        /// New window, ms.
        to_ms: u64,
    },
    /// The sensitive kinds change.
    SensitiveKindsChanged {
        /// Old kinds.
        from: Vec<String>,
        /// New kinds.
        to: Vec<String>,
    },
    /// The roles that may attest a client's first device change.
    AttestationRolesChanged {
        /// Old roles.
        from: Vec<StaffRole>,
        /// New roles.
        to: Vec<StaffRole>,
    },
    /// The transparency log's keys, its witnesses or their threshold change.
    TransparencyChanged {
        /// Old policy, in words ("none" when absent).
        from: String,
        /// New policy, in words.
        to: String,
    },
    /// The compliance archive is named, replaced, removed, or its policy changes.
    ArchiveChanged {
        /// Old archive, in words ("none" when absent).
        from: String,
        /// New archive, in words.
        to: String,
    },
}

impl fmt::Display for RosterChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::StaffAdded {
                account,
                role,
                devices,
            } => write!(
                f,
                "+ staff {account} ({role}) with {} device{}: {}",
                devices.len(),
                if devices.len() == 1 { "" } else { "s" },
                devices.join(", ")
            ),
            Self::StaffRemoved { account, role } => write!(f, "- staff {account} ({role})"),
            Self::RoleChanged { account, from, to } => {
                write!(f, "~ staff {account}: role {from} -> {to}")
            }
            Self::DeviceAdded {
                account,
                fingerprint,
            } => write!(f, "+ device of {account}: {fingerprint}"),
            Self::DeviceRemoved {
                account,
                fingerprint,
            } => write!(f, "- device of {account}: {fingerprint}"),
            Self::QuorumChanged {
                operation,
                from,
                to,
            } => write!(f, "~ policy {operation}: {from} -> {to}"),
            Self::CoolingOffChanged { from_ms, to_ms } => write!(
                f,
                "~ policy cooling-off: {} -> {}",
                describe_ms(*from_ms),
                describe_ms(*to_ms)
            ),
            Self::SensitiveKindsChanged { from, to } => write!(
                f,
                "~ policy sensitive kinds: [{}] -> [{}]",
                from.join(", "),
                to.join(", ")
            ),
            Self::AttestationRolesChanged { from, to } => {
                let names =
                    |r: &[StaffRole]| r.iter().map(|r| r.name()).collect::<Vec<_>>().join(", ");
                write!(
                    f,
                    "~ policy client attestation by: [{}] -> [{}]",
                    names(from),
                    names(to)
                )
            }
            Self::TransparencyChanged { from, to } => {
                write!(f, "~ policy transparency log: {from} -> {to}")
            }
            Self::ArchiveChanged { from, to } => {
                write!(f, "~ policy compliance archive: {from} -> {to}")
            }
        }
    }
}

/// A transparency policy in words, for approvers: every log key and witness in full.
fn describe_transparency(t: Option<&sealpost_protocol::tlog::TransparencyPolicy>) -> String {
    let Some(t) = t else {
        return "none".into();
    };
    let keys = |k: &[sealpost_protocol::tlog::NoteKey]| {
        k.iter().map(|k| k.to_vkey()).collect::<Vec<_>>().join(", ")
    };
    format!(
        "log keys [{}], witnesses [{}], {} cosignature{} required",
        keys(&t.log_keys),
        keys(&t.witnesses),
        t.witness_threshold,
        if t.witness_threshold == 1 { "" } else { "s" }
    )
}

/// An archive policy in words, for approvers: account, device fingerprint, what devices
/// do when it is unreachable, and the disclosure clients are shown.
fn describe_archive(a: Option<&sealpost_protocol::trust::ArchivePolicy>) -> String {
    let Some(a) = a else {
        return "none (conversations not recorded)".into();
    };
    format!(
        "account {}, device {}, when unreachable: {}, disclosure {:?}",
        a.account.as_str(),
        a.fingerprint(),
        a.unreachable.name(),
        crate::display::line(&a.disclosure)
    )
}

/// What changes from `old` to `new`: staff, roles, devices, policy. Empty if only the
/// version, previous hash or issue time differ.
pub fn roster_diff(old: &Roster, new: &Roster) -> Vec<RosterChange> {
    let mut out = Vec::new();
    let old_staff: BTreeMap<&AccountId, &StaffMember> =
        old.staff().iter().map(|m| (&m.account, m)).collect();
    let new_staff: BTreeMap<&AccountId, &StaffMember> =
        new.staff().iter().map(|m| (&m.account, m)).collect();
    let fps = |m: &StaffMember| -> Vec<String> {
        m.devices
            .iter()
            .map(|d| d.fingerprint().to_string())
            .collect()
    };
    for (a, m) in &old_staff {
        if !new_staff.contains_key(a) {
            out.push(RosterChange::StaffRemoved {
                account: a.as_str().to_owned(),
                role: m.role,
            });
        }
    }
    for (a, m) in &new_staff {
        let Some(before) = old_staff.get(a) else {
            out.push(RosterChange::StaffAdded {
                account: a.as_str().to_owned(),
                role: m.role,
                devices: fps(m),
            });
            continue;
        };
        if before.role != m.role {
            out.push(RosterChange::RoleChanged {
                account: a.as_str().to_owned(),
                from: before.role,
                to: m.role,
            });
        }
        for d in &before.devices {
            if m.device(&d.device_id()).is_none() {
                out.push(RosterChange::DeviceRemoved {
                    account: a.as_str().to_owned(),
                    fingerprint: d.fingerprint().to_string(),
                });
            }
        }
        for d in &m.devices {
            if before.device(&d.device_id()).is_none() {
                out.push(RosterChange::DeviceAdded {
                    account: a.as_str().to_owned(),
                    fingerprint: d.fingerprint().to_string(),
                });
            }
        }
    }
    let (op, np) = (old.policy(), new.policy());
    for operation in Operation::ALL {
        let (a, b) = (op.quorum(operation), np.quorum(operation));
        if a != b {
            out.push(RosterChange::QuorumChanged {
                operation,
                from: describe_quorum(a),
                to: describe_quorum(b),
            });
        }
    }
    if op.cooling_off_ms != np.cooling_off_ms {
        out.push(RosterChange::CoolingOffChanged {
            from_ms: op.cooling_off_ms,
            to_ms: np.cooling_off_ms,
        });
    }
    if op.sensitive_kinds != np.sensitive_kinds {
        let names = |k: &[EnvelopeKind]| k.iter().map(|k| kind_name(*k).to_owned()).collect();
        out.push(RosterChange::SensitiveKindsChanged {
            from: names(&op.sensitive_kinds),
            to: names(&np.sensitive_kinds),
        });
    }
    if op.attestation_roles() != np.attestation_roles() {
        out.push(RosterChange::AttestationRolesChanged {
            from: op.attestation_roles().roles(),
            to: np.attestation_roles().roles(),
        });
    }
    if op.transparency != np.transparency {
        out.push(RosterChange::TransparencyChanged {
            from: describe_transparency(op.transparency.as_ref()),
            to: describe_transparency(np.transparency.as_ref()),
        });
    }
    if op.archive != np.archive {
        out.push(RosterChange::ArchiveChanged {
            from: describe_archive(op.archive.as_ref()),
            to: describe_archive(np.archive.as_ref()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use sealpost_protocol::identity::IdentityKeyPair;
    use sealpost_protocol::trust::RosterChain;

    const NOW: u64 = 1_700_000_000_000;

    fn make_ids(n: usize, seed: u64) -> Vec<PublicIdentity> {
        let mut rng = StdRng::seed_from_u64(seed);
        (0..n)
            .map(|_| IdentityKeyPair::generate(&mut rng).public().clone())
            .collect()
    }

    fn spec_text(ids: &[PublicIdentity]) -> String {
        format!(
            r#"
[policy]
cooling_off = "2h"
roster_change = {{ threshold = 2, roles = ["compliance", "security"] }}

[[staff]]
account = "ops-alice"
role = "operations"
devices = ["{}"]

[[staff]]
account = "comp-bob"
role = "compliance"
devices = ["{}", "{}"]

[[staff]]
account = "sec-carol"
role = "security"
devices = ["{}"]
"#,
            identity_hex(&ids[0]),
            identity_hex(&ids[1]),
            identity_hex(&ids[2]),
            identity_hex(&ids[3]),
        )
    }

    fn spec_err(text: &str) -> String {
        match RosterSpec::parse(text, "t.toml") {
            Err(e @ OrgError::Spec { .. }) => e.to_string(),
            Err(e) => panic!("expected a spec error, got {e}"),
            Ok(_) => panic!("expected a spec error for {text}"),
        }
    }

    #[test]
    fn store_round_trips_refuses_wrong_passphrase_overwrite_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let org = dir.path().join("org");
        let mut rng = StdRng::seed_from_u64(7);
        let store = OrgStore::init(&org, "correct horse battery", NOW, &mut rng).unwrap();
        let fp = store.fingerprint();
        assert!(!format!("{store:?}").contains("signing"));
        assert!(matches!(
            OrgStore::open(&org, "correct horse battery"),
            Err(OrgError::Locked(_))
        ));
        drop(store);
        assert_eq!(read_fingerprint(&org).unwrap(), fp);
        let again = OrgStore::open(&org, "correct horse battery").unwrap();
        assert_eq!(again.fingerprint(), fp);
        assert_eq!(again.created_ms(), NOW);
        drop(again);
        assert!(matches!(
            OrgStore::open(&org, "wrong horse battery"),
            Err(OrgError::WrongPassphrase)
        ));
        assert!(matches!(
            OrgStore::init(&org, "correct horse battery", NOW, &mut rng),
            Err(OrgError::Exists(_))
        ));
        assert!(matches!(
            OrgStore::init(&dir.path().join("o2"), "short", NOW, &mut rng),
            Err(OrgError::WeakPassphrase)
        ));
        assert!(matches!(
            OrgStore::open(&dir.path().join("none"), "correct horse battery"),
            Err(OrgError::NoStore(_))
        ));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(org.join("state.sealed"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "state.sealed is private");
        }
        // The secret key bytes are nowhere in the files in the clear.
        let sealed = std::fs::read(org.join("state.sealed")).unwrap();
        assert!(sealed.len() > 64);
    }

    #[test]
    fn spec_takes_the_log_key_witnesses_and_threshold() {
        use sealpost_protocol::tlog::{KeyName, LogSigner, WitnessSigner};
        let mut rng = StdRng::seed_from_u64(9);
        let ids = make_ids(4, 2);
        let log = LogSigner::generate(KeyName::new("relay.example/log").unwrap(), &mut rng);
        let w = WitnessSigner::generate(KeyName::new("witness.example/w1").unwrap(), &mut rng);
        let base = spec_text(&ids);
        // Scalar policy keys under [policy], the witness table before the staff.
        let text = base
            .replacen(
                "[policy]\n",
                &format!(
                    "[policy]\nlog_key = \"{}\"\nwitness_threshold = 1\n",
                    log.public().to_vkey()
                ),
                1,
            )
            .replacen(
                "[[staff]]",
                &format!(
                    "[[policy.witness]]\nname = \"witness.example/w1\"\nkey = \"{}\"\n\n[[staff]]",
                    hex::encode(w.public().public())
                ),
                1,
            );
        let spec = RosterSpec::parse(&text, "t.toml").unwrap();
        let t = spec.policy.transparency.clone().unwrap();
        assert_eq!(t.log_keys, vec![log.public().clone()]);
        assert_eq!(t.witnesses, vec![w.public().clone()]);
        assert_eq!(t.witness_threshold, 1);
        let roster = spec.genesis(NOW).unwrap();
        assert!(roster
            .canonical_bytes()
            .starts_with(b"Sealpost_Roster_v1\x00\x03"));
        let again = RosterSpec::parse(&spec.to_toml().unwrap(), "rendered").unwrap();
        assert_eq!(again, spec);
        // Without a log key the roster is unchanged (format 1).
        let plain = RosterSpec::parse(&base, "t.toml").unwrap();
        assert!(plain.policy.transparency.is_none());
        // A threshold above the witnesses, a bad key, or witnesses without a log key fail.
        let too_many = text.replacen("witness_threshold = 1", "witness_threshold = 2", 1);
        assert!(spec_err(&too_many).contains("threshold"));
        let bad_key = text.replacen("relay.example/log+", "relay.example/other+", 1);
        assert!(spec_err(&bad_key).contains("log_key"));
        let no_log = text.replacen(
            &format!("log_key = \"{}\"\n", log.public().to_vkey()),
            "",
            1,
        );
        assert!(spec_err(&no_log).contains("need policy.log_key"));
        // Approvers see a new log key or witness, never an empty difference.
        let next = spec.next_of(&plain.genesis(NOW).unwrap(), NOW + 1).unwrap();
        let shown: Vec<String> = roster_diff(&plain.genesis(NOW).unwrap(), &next)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown.len(), 1, "{shown:?}");
        assert!(
            shown[0].starts_with("~ policy transparency log: none -> log keys [")
                && shown[0].contains(&log.public().to_vkey())
                && shown[0].contains(&w.public().to_vkey())
                && shown[0].ends_with("1 cosignature required"),
            "{shown:?}"
        );
    }

    #[test]
    fn spec_takes_the_archive_and_refuses_a_bad_one() {
        let mut rng = StdRng::seed_from_u64(10);
        let ids = make_ids(4, 2);
        let archive = sealpost_protocol::identity::IdentityKeyPair::generate(&mut rng);
        let base = spec_text(&ids);
        let table = format!(
            "[policy.archive]\naccount = \"archive\"\ndevice = \"{}\"\nunreachable = \"queue\"\n\
             disclosure = \"Recorded by the firm for regulatory purposes.\"\n\n[[staff]]",
            identity_hex(archive.public())
        );
        let text = base.replacen("[[staff]]", &table, 1);
        let spec = RosterSpec::parse(&text, "t.toml").unwrap();
        let a = spec.policy.archive.clone().unwrap();
        assert_eq!(a.account.as_str(), "archive");
        assert_eq!(&a.identity, archive.public());
        assert_eq!(
            a.unreachable,
            sealpost_protocol::trust::ArchiveUnreachable::Queue
        );
        let roster = spec.genesis(NOW).unwrap();
        assert!(roster
            .canonical_bytes()
            .starts_with(b"Sealpost_Roster_v1\x00\x04"));
        let again = RosterSpec::parse(&spec.to_toml().unwrap(), "rendered").unwrap();
        assert_eq!(again, spec);
        // A device that is not 128 hex digits, an unknown policy, an empty disclosure.
        let bad = text.replacen(&identity_hex(archive.public()), "abcd", 1);
        assert!(spec_err(&bad).contains("policy.archive.device"));
        let bad = text.replacen("unreachable = \"queue\"", "unreachable = \"drop\"", 1);
        assert!(RosterSpec::parse(&bad, "t.toml").is_err());
        let bad = text.replacen("Recorded by the firm for regulatory purposes.", " ", 1);
        assert!(spec_err(&bad).contains("disclosure"));

        // Appended after the staff (as the README's walk-through does), the table is the
        // same, and the change is what approvers are shown: archive added, then removed.
        let before = RosterSpec::parse(&base, "t.toml")
            .unwrap()
            .genesis(NOW)
            .unwrap();
        let appended = format!(
            "{base}\n[policy.archive]\naccount = \"archive\"\ndevice = \"{}\"\n\
             unreachable = \"queue\"\ndisclosure = \"Recorded by the firm for regulatory purposes.\"\n",
            identity_hex(archive.public())
        );
        let spec = RosterSpec::parse(&appended, "t.toml").unwrap();
        assert_eq!(spec.policy.archive.as_ref(), Some(&a));
        let next = spec.next_of(&before, NOW + 1).unwrap();
        let shown: Vec<String> = roster_diff(&before, &next)
            .iter()
            .map(ToString::to_string)
            .collect();
        let fp = a.fingerprint();
        assert_eq!(
            shown,
            vec![format!(
                "~ policy compliance archive: none (conversations not recorded) -> account archive, \
                 device {fp}, when unreachable: queue, disclosure \"Recorded by the firm for regulatory purposes.\""
            )]
        );
        let removed: Vec<String> = roster_diff(&next, &before)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(removed.len(), 1);
        assert!(
            removed[0].ends_with("-> none (conversations not recorded)"),
            "{removed:?}"
        );
    }

    #[test]
    fn spec_parses_signs_genesis_verifies_from_the_fingerprint_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = StdRng::seed_from_u64(8);
        let store = OrgStore::init(&dir.path().join("org"), "passphrase!", NOW, &mut rng).unwrap();
        let ids = make_ids(4, 1);
        let spec = RosterSpec::parse(&spec_text(&ids), "t.toml").unwrap();
        assert_eq!(spec.policy.cooling_off_ms, 2 * 3600 * 1000);
        assert_eq!(spec.policy.unfreeze, ApprovalPolicy::default().unfreeze);
        let roster = spec.genesis(NOW).unwrap();
        let signed = store.sign_genesis(roster.clone()).unwrap();
        let path = dir.path().join("roster-v1.cbor");
        write_signed_roster(&path, &signed).unwrap();
        let back = read_signed_roster(&path).unwrap();
        assert_eq!(back, signed);
        let chain = RosterChain::verify(&store.fingerprint(), vec![back], None, NOW).unwrap();
        assert_eq!(chain.head().version(), 1);
        assert_eq!(chain.head().staff().len(), 3);

        // The TOML rendering parses back to the same specification and roster.
        let text = RosterSpec::from_roster(&roster).to_toml().unwrap();
        let again = RosterSpec::parse(&text, "rendered").unwrap();
        assert_eq!(again, RosterSpec::from_roster(&roster));
        assert_eq!(again.genesis(NOW).unwrap().hash(), roster.hash());

        // The next version from an edited spec, and what changed.
        let mut edited = again.clone();
        edited.staff.retain(|m| m.account.as_str() != "ops-alice");
        edited.staff.push(StaffMember {
            account: AccountId::new("ops-dave").unwrap(),
            role: StaffRole::Operations,
            devices: make_ids(1, 99),
        });
        edited.policy.cooling_off_ms = 3 * 3600 * 1000;
        let next = edited.next_of(&roster, NOW + 1).unwrap();
        assert_eq!(next.version(), 2);
        assert_eq!(next.previous(), Some(roster.hash()));
        let diff = roster_diff(&roster, &next);
        let shown: Vec<String> = diff.iter().map(ToString::to_string).collect();
        assert!(
            shown.iter().any(|l| l.starts_with("- staff ops-alice")),
            "{shown:?}"
        );
        assert!(
            shown
                .iter()
                .any(|l| l.starts_with("+ staff ops-dave (operations)")),
            "{shown:?}"
        );
        assert!(
            shown.iter().any(|l| l.contains("cooling-off: 2h -> 3h")),
            "{shown:?}"
        );
        assert!(roster_diff(&roster, &roster).is_empty());
    }

    #[test]
    fn identities_round_trip_through_hex() {
        let ids = make_ids(2, 3);
        let hex = identity_hex(&ids[0]);
        assert_eq!(hex.len(), 128);
        assert_eq!(parse_identity_hex(&hex).unwrap(), ids[0]);
        assert_eq!(parse_identity_hex(&hex.to_uppercase()).unwrap(), ids[0]);
        assert!(parse_identity_hex(&hex[..126])
            .unwrap_err()
            .contains("128 hex digits"));
        assert!(parse_identity_hex(&format!("zz{}", &hex[2..]))
            .unwrap_err()
            .contains("non-hex"));
        // A small-order Ed25519 point is refused.
        let mut bad = [0u8; 64];
        bad[0] = 1;
        assert!(parse_identity_hex(&hex::encode(bad)).is_err());
    }

    #[test]
    fn malformed_specs_are_refused_with_the_entry_named() {
        let ids = make_ids(4, 5);
        let good = spec_text(&ids);
        let d0 = identity_hex(&ids[0]);

        assert!(spec_err("").contains("no staff"));
        assert!(spec_err("[[staff]\n").contains("t.toml"));
        let e = spec_err(&good.replace("role = \"operations\"", "role = \"janitor\""));
        assert!(e.contains("janitor"), "{e}");
        let e = spec_err(&good.replace(
            "account = \"ops-alice\"",
            "account = \"ops-alice\"\nemail = \"a@b\"",
        ));
        assert!(e.contains("email"), "{e}");
        let e = spec_err(&good.replace(&d0, &d0[..100]));
        assert!(
            e.contains("staff entry 1 (\"ops-alice\"), device 1") && e.contains("128 hex"),
            "{e}"
        );
        let e = spec_err(&good.replace("comp-bob", "ops-alice"));
        assert!(e.contains("listed twice"), "{e}");
        let e = spec_err(&good.replace(&identity_hex(&ids[3]), &d0));
        assert!(e.contains("already listed for \"ops-alice\""), "{e}");
        let e = spec_err(&good.replace("devices = [\"".to_string().as_str(), "devices = [] #"));
        assert!(e.contains("no devices") || e.contains("t.toml"), "{e}");
        let e = spec_err(&good.replace("\"2h\"", "\"soon\""));
        assert!(e.contains("policy.cooling_off"), "{e}");
        let e = spec_err(&good.replace("\"2h\"", "\"31days\""));
        assert!(e.contains("at most"), "{e}");
        let e = spec_err(&good.replace("threshold = 2", "threshold = 0"));
        assert!(e.contains("policy.roster_change: threshold 0"), "{e}");
        let e = spec_err(&good.replace(
            "cooling_off = \"2h\"",
            "cooling_off = \"2h\"\nsensitive_kinds = [\"gossip\"]",
        ));
        assert!(e.contains("unknown kind \"gossip\""), "{e}");
        let e = spec_err(&good.replace("account = \"ops-alice\"", "account = \"\""));
        assert!(e.contains("not a valid account id"), "{e}");

        // A quorum the staff can never reach is refused when the roster is built.
        let spec = RosterSpec::parse(
            &good.replace(
                "threshold = 2, roles = [\"compliance\", \"security\"]",
                "threshold = 3, roles = [\"compliance\", \"security\"]",
            ),
            "t.toml",
        )
        .unwrap();
        let e = spec.genesis(NOW).unwrap_err().to_string();
        assert!(e.contains("roster_change needs 3 approvals"), "{e}");
    }

    #[test]
    fn a_signed_roster_written_under_a_bare_file_name_lands_in_the_current_directory() {
        let here = Path::new(".").join(format!("t-{}.cbor", std::process::id()));
        let name = Path::new(here.file_name().unwrap());
        let mut rng = StdRng::seed_from_u64(9);
        let dir = tempfile::tempdir().unwrap();
        let store = OrgStore::init(&dir.path().join("org"), "passphrase!", NOW, &mut rng).unwrap();
        let spec = RosterSpec::parse(&spec_text(&make_ids(4, 2)), "t.toml").unwrap();
        let signed = store.sign_genesis(spec.genesis(NOW).unwrap()).unwrap();
        let written = write_signed_roster(name, &signed);
        let back = read_signed_roster(name);
        let _ = std::fs::remove_file(name);
        written.unwrap();
        assert_eq!(back.unwrap(), signed);
    }

    #[test]
    fn signed_roster_files_are_bounded_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.cbor");
        std::fs::write(&p, b"not cbor").unwrap();
        assert!(matches!(
            read_signed_roster(&p),
            Err(OrgError::SignedRosterFile { .. })
        ));
        std::fs::write(&p, vec![0u8; MAX_SIGNED_ROSTER_LEN + 1]).unwrap();
        let e = read_signed_roster(&p).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        assert!(matches!(
            read_signed_roster(&dir.path().join("missing")),
            Err(OrgError::Io(..))
        ));
    }
}

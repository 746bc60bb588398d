//! Checkpoints in the C2SP `tlog-checkpoint` form, signed as C2SP `signed-note`s by the
//! relay's log key, and witness cosignatures in the C2SP `tlog-cosignature` (v1, Ed25519)
//! form.
//!
//! ```text
//! <origin>\n
//! <tree size, decimal>\n
//! <base64 root hash>\n
//! \n
//! — <log key name> base64(key id (4) || Ed25519 signature over the three lines (64))\n
//! — <witness name> base64(key id (4) || u64 BE timestamp || Ed25519 signature (64))\n
//! ```
//!
//! * log key id = `SHA-256(name || 0x0A || 0x01 || public key)[:4]`; the log signs the
//!   note text (the three lines, final newline included).
//! * cosignature key id = `SHA-256(name || 0x0A || 0x04 || public key)[:4]`; the witness
//!   signs `"cosignature/v1\ntime <timestamp>\n" || note text`, the timestamp in POSIX
//!   seconds, decimal, no leading zeroes.
//!
//! Parsing is bounded ([`MAX_NOTE_LEN`], [`MAX_NOTE_SIGNATURES`], [`MAX_KEY_NAME_LEN`])
//! and refuses control characters, a missing blank line and malformed lines with a
//! [`TlogError`]. Checkpoints written by Sealpost carry no extension lines and a
//! verifier here refuses them.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use zeroize::ZeroizeOnDrop;

use crate::crypto;

use super::merkle::Hash;
use super::TlogError;

/// Largest signed note (checkpoint with its signatures), bytes.
pub const MAX_NOTE_LEN: usize = 8 * 1024;
/// Most signature lines in a note (the signed-note spec asks for at least 16).
pub const MAX_NOTE_SIGNATURES: usize = 32;
/// Longest key name or checkpoint origin, bytes.
pub const MAX_KEY_NAME_LEN: usize = 128;
/// Signature type of a note signature by an Ed25519 key (the log key).
pub const SIG_TYPE_ED25519: u8 = 0x01;
/// Signature type of a timestamped Ed25519 cosignature (`cosignature/v1`).
pub const SIG_TYPE_COSIGNATURE_V1: u8 = 0x04;
/// The signature line prefix: em dash (U+2014) and a space.
const SIG_PREFIX: &str = "\u{2014} ";
/// Largest cosignature timestamp (2^63 - 1, per tlog-cosignature).
const MAX_COSIGNATURE_TIME: u64 = i64::MAX as u64;

/// A checked key name (also a checkpoint origin): 1..=128 bytes, no Unicode space, no
/// `+`, no control character.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyName(String);

impl KeyName {
    /// Check `s`.
    pub fn new(s: &str) -> Result<Self, TlogError> {
        if s.is_empty() || s.len() > MAX_KEY_NAME_LEN {
            return Err(TlogError::BadKeyName("1 to 128 bytes"));
        }
        if s.chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
        {
            return Err(TlogError::BadKeyName(
                "no spaces, plus signs or control characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyName({})", self.0)
    }
}

/// `SHA-256(name || 0x0A || sig_type || public key)[:4]` (signed-note key id).
pub fn key_id(name: &KeyName, sig_type: u8, public: &[u8; 32]) -> [u8; 4] {
    let h = crypto::sha256(&[name.as_str().as_bytes(), b"\n", &[sig_type], public]);
    [h[0], h[1], h[2], h[3]]
}

/// A named Ed25519 public key of the note ecosystem: the relay's log key (type 0x01) or a
/// witness key (type 0x04).
#[derive(Clone, PartialEq, Eq)]
pub struct NoteKey {
    name: KeyName,
    key: VerifyingKey,
}

impl NoteKey {
    /// A key from its name and 32 public bytes (refuses invalid and small-order points).
    pub fn new(name: KeyName, public: &[u8]) -> Result<Self, TlogError> {
        let key = crypto::ed25519_public(public).map_err(|_| TlogError::BadPublicKey)?;
        Ok(Self { name, key })
    }

    /// The name.
    pub fn name(&self) -> &KeyName {
        &self.name
    }

    /// The public key bytes.
    pub fn public(&self) -> &[u8; 32] {
        self.key.as_bytes()
    }

    /// The key id for this key used as `sig_type`.
    pub fn key_id(&self, sig_type: u8) -> [u8; 4] {
        key_id(&self.name, sig_type, self.public())
    }

    /// The signed-note verifier key string of this key as a log key:
    /// `<name>+<key id, 8 hex digits>+<base64(0x01 || public key)>`.
    pub fn to_vkey(&self) -> String {
        let mut material = Vec::with_capacity(33);
        material.push(SIG_TYPE_ED25519);
        material.extend_from_slice(self.public());
        format!(
            "{}+{}+{}",
            self.name,
            hex::encode(self.key_id(SIG_TYPE_ED25519)),
            B64.encode(material)
        )
    }

    /// Parse a verifier key string written by [`NoteKey::to_vkey`] (type 0x01 only); the
    /// key id must match.
    pub fn from_vkey(s: &str) -> Result<Self, TlogError> {
        let mut parts = s.trim().splitn(3, '+');
        let (Some(name), Some(id), Some(material)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TlogError::BadVerifierKey("expected <name>+<id>+<key>"));
        };
        let name = KeyName::new(name)?;
        let material = B64
            .decode(material)
            .map_err(|_| TlogError::BadVerifierKey("the key is not base64"))?;
        let (ty, public) = material
            .split_first()
            .ok_or(TlogError::BadVerifierKey("empty key"))?;
        if *ty != SIG_TYPE_ED25519 {
            return Err(TlogError::BadVerifierKey("not an Ed25519 (0x01) key"));
        }
        let key = Self::new(name, public)?;
        if hex::encode(key.key_id(SIG_TYPE_ED25519)) != id.to_ascii_lowercase() {
            return Err(TlogError::BadVerifierKey(
                "the key id does not match the key",
            ));
        }
        Ok(key)
    }
}

impl fmt::Debug for NoteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NoteKey({} {})", self.name, hex::encode(self.public()))
    }
}

/// A checkpoint: the log's origin, its size and its root hash (the note text).
#[derive(Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's origin line (the log key's name).
    pub origin: KeyName,
    /// Number of leaves.
    pub size: u64,
    /// Root hash of those leaves.
    pub root: Hash,
}

impl fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Checkpoint({} {} {})",
            self.origin,
            self.size,
            hex::encode(self.root)
        )
    }
}

impl Checkpoint {
    /// The note text: `origin\nsize\nbase64(root)\n`.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// Parse a note text written by [`Checkpoint::body`] (no extension lines).
    pub fn parse_body(text: &str) -> Result<Self, TlogError> {
        let Some(text) = text.strip_suffix('\n') else {
            return Err(TlogError::BadCheckpoint(
                "the text does not end in a newline",
            ));
        };
        let lines: Vec<&str> = text.split('\n').collect();
        let [origin, size, root] = lines.as_slice() else {
            return Err(TlogError::BadCheckpoint(
                "expected exactly three lines (origin, size, root)",
            ));
        };
        let origin = KeyName::new(origin)?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return Err(TlogError::BadCheckpoint(
                "the size is not a decimal without leading zeroes",
            ));
        }
        let size: u64 = size
            .parse()
            .map_err(|_| TlogError::BadCheckpoint("the size does not fit 64 bits"))?;
        let root = B64
            .decode(root)
            .map_err(|_| TlogError::BadCheckpoint("the root is not base64"))?;
        let root: Hash = root
            .try_into()
            .map_err(|_| TlogError::BadCheckpoint("the root is not 32 bytes"))?;
        Ok(Self { origin, size, root })
    }
}

/// One signature line of a note, unverified.
#[derive(Clone, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: KeyName,
    /// The key id (first 4 bytes of the decoded signature).
    pub key_id: [u8; 4],
    /// The rest of the decoded signature.
    pub signature: Vec<u8>,
}

impl fmt::Debug for NoteSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NoteSignature({} {})",
            self.name,
            hex::encode(self.key_id)
        )
    }
}

impl NoteSignature {
    /// `— <name> <base64(key id || signature)>\n`.
    pub fn line(&self) -> String {
        let mut data = Vec::with_capacity(4 + self.signature.len());
        data.extend_from_slice(&self.key_id);
        data.extend_from_slice(&self.signature);
        format!("{SIG_PREFIX}{} {}\n", self.name, B64.encode(data))
    }
}

/// A signed note: its text and its signature lines, unverified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedNote {
    /// The text, final newline included.
    pub text: String,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

impl SignedNote {
    /// Parse a signed note, within [`MAX_NOTE_LEN`] and [`MAX_NOTE_SIGNATURES`].
    pub fn parse(bytes: &[u8]) -> Result<Self, TlogError> {
        if bytes.len() > MAX_NOTE_LEN {
            return Err(TlogError::TooLarge {
                what: "signed note",
                got: bytes.len(),
                max: MAX_NOTE_LEN,
            });
        }
        let s = std::str::from_utf8(bytes).map_err(|_| TlogError::BadNote("not UTF-8"))?;
        if s.chars().any(|c| c.is_control() && c != '\n') {
            return Err(TlogError::BadNote("a control character other than newline"));
        }
        // The text ends at the last blank line.
        let Some(split) = s.rfind("\n\n") else {
            return Err(TlogError::BadNote("no blank line before the signatures"));
        };
        let text = &s[..=split];
        let sigs = &s[split + 2..];
        let Some(sigs) = sigs.strip_suffix('\n') else {
            return Err(TlogError::BadNote("the signatures do not end in a newline"));
        };
        let mut signatures = Vec::new();
        for line in sigs.split('\n') {
            if signatures.len() == MAX_NOTE_SIGNATURES {
                return Err(TlogError::TooMany {
                    what: "note signatures",
                    max: MAX_NOTE_SIGNATURES,
                });
            }
            let Some(rest) = line.strip_prefix(SIG_PREFIX) else {
                return Err(TlogError::BadNote(
                    "a signature line does not start with an em dash",
                ));
            };
            let Some((name, data)) = rest.split_once(' ') else {
                return Err(TlogError::BadNote("a signature line has no key name"));
            };
            let name = KeyName::new(name)?;
            let data = B64
                .decode(data)
                .map_err(|_| TlogError::BadNote("a signature is not base64"))?;
            if data.len() < 5 {
                return Err(TlogError::BadNote("a signature is shorter than 5 bytes"));
            }
            let (id, sig) = data.split_at(4);
            signatures.push(NoteSignature {
                name,
                key_id: [id[0], id[1], id[2], id[3]],
                signature: sig.to_vec(),
            });
        }
        if signatures.is_empty() {
            return Err(TlogError::BadNote("no signature"));
        }
        Ok(Self {
            text: text.to_owned(),
            signatures,
        })
    }

    /// The note as text: the text, a blank line, the signature lines.
    pub fn to_text(&self) -> String {
        let mut s = self.text.clone();
        s.push('\n');
        for sig in &self.signatures {
            s.push_str(&sig.line());
        }
        s
    }
}

/// The relay's log key: signs checkpoints. Secret: boxed, zeroized on drop, no `Debug`;
/// its seed leaves memory only through [`LogSigner::to_seed`] (the relay's key file).
pub struct LogSigner {
    signing: Box<SigningKey>,
    public: NoteKey,
}

impl ZeroizeOnDrop for LogSigner {}

impl LogSigner {
    /// A fresh key named `name` (the checkpoint origin).
    pub fn generate<R: RngCore + CryptoRng>(name: KeyName, rng: &mut R) -> Self {
        let signing = Box::new(SigningKey::generate(rng));
        Self::with(name, signing)
    }

    /// The key named `name` from its 32-byte seed.
    pub fn from_seed(name: KeyName, seed: &[u8]) -> Result<Self, TlogError> {
        let signing =
            Box::new(crypto::ed25519_from_seed(seed).map_err(|_| TlogError::BadSecretKey)?);
        Ok(Self::with(name, signing))
    }

    fn with(name: KeyName, signing: Box<SigningKey>) -> Self {
        let public = NoteKey {
            name,
            key: signing.verifying_key(),
        };
        Self { signing, public }
    }

    /// The seed, for the relay's key file (a named step that takes the secret out).
    pub fn to_seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signing.to_bytes())
    }

    /// The public key and name (what the roster lists).
    pub fn public(&self) -> &NoteKey {
        &self.public
    }

    /// Sign a checkpoint of this log (origin = key name).
    pub fn sign(&self, size: u64, root: Hash) -> SignedCheckpoint {
        let checkpoint = Checkpoint {
            origin: self.public.name.clone(),
            size,
            root,
        };
        let text = checkpoint.body();
        let sig = crypto::ed25519_sign(&self.signing, text.as_bytes());
        let note = SignedNote {
            text,
            signatures: vec![NoteSignature {
                name: self.public.name.clone(),
                key_id: self.public.key_id(SIG_TYPE_ED25519),
                signature: sig.to_vec(),
            }],
        };
        SignedCheckpoint { checkpoint, note }
    }
}

/// A witness cosigning key (type 0x04). Secret like [`LogSigner`].
pub struct WitnessSigner {
    signing: Box<SigningKey>,
    public: NoteKey,
}

impl ZeroizeOnDrop for WitnessSigner {}

impl WitnessSigner {
    /// A fresh key named `name`.
    pub fn generate<R: RngCore + CryptoRng>(name: KeyName, rng: &mut R) -> Self {
        let signing = Box::new(SigningKey::generate(rng));
        let public = NoteKey {
            name,
            key: signing.verifying_key(),
        };
        Self { signing, public }
    }

    /// The key named `name` from its 32-byte seed.
    pub fn from_seed(name: KeyName, seed: &[u8]) -> Result<Self, TlogError> {
        let signing =
            Box::new(crypto::ed25519_from_seed(seed).map_err(|_| TlogError::BadSecretKey)?);
        let public = NoteKey {
            name,
            key: signing.verifying_key(),
        };
        Ok(Self { signing, public })
    }

    /// The seed (a named step that takes the secret out).
    pub fn to_seed(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signing.to_bytes())
    }

    /// The public key and name (what the roster lists).
    pub fn public(&self) -> &NoteKey {
        &self.public
    }

    /// Cosign `checkpoint` at `time_secs` (POSIX seconds). The caller must first have
    /// verified the checkpoint's signature and its consistency with every checkpoint it
    /// cosigned before.
    pub fn cosign(&self, checkpoint: &Checkpoint, time_secs: u64) -> NoteSignature {
        let msg = cosignature_message(time_secs, &checkpoint.body());
        let sig = crypto::ed25519_sign(&self.signing, &msg);
        let mut data = Vec::with_capacity(72);
        data.extend_from_slice(&time_secs.to_be_bytes());
        data.extend_from_slice(&sig);
        NoteSignature {
            name: self.public.name.clone(),
            key_id: self.public.key_id(SIG_TYPE_COSIGNATURE_V1),
            signature: data,
        }
    }
}

/// `"cosignature/v1\ntime <t>\n" || checkpoint text`.
pub fn cosignature_message(time_secs: u64, text: &str) -> Vec<u8> {
    format!("cosignature/v1\ntime {time_secs}\n{text}").into_bytes()
}

/// A checkpoint with its signed note (the log's signature and any cosignatures).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The checkpoint.
    pub checkpoint: Checkpoint,
    /// Its note.
    pub note: SignedNote,
}

/// A verified witness cosignature.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedCosignature {
    /// The witness.
    pub witness: KeyName,
    /// When it cosigned, POSIX seconds.
    pub time_secs: u64,
}

impl SignedCheckpoint {
    /// Parse a signed checkpoint note (bounded; signatures not checked).
    pub fn parse(bytes: &[u8]) -> Result<Self, TlogError> {
        let note = SignedNote::parse(bytes)?;
        let checkpoint = Checkpoint::parse_body(&note.text)?;
        Ok(Self { checkpoint, note })
    }

    /// The note as text.
    pub fn to_text(&self) -> String {
        self.note.to_text()
    }

    /// Verify the log's signature with one of `log_keys` (name and key id must match;
    /// the origin must be the key's name). A signature line of a known key that fails is
    /// an error; lines of unknown keys are ignored.
    pub fn verify_log(&self, log_keys: &[NoteKey]) -> Result<&Checkpoint, TlogError> {
        let mut ok = false;
        for sig in &self.note.signatures {
            let Some(key) = log_keys
                .iter()
                .find(|k| k.name == sig.name && k.key_id(SIG_TYPE_ED25519) == sig.key_id)
            else {
                continue;
            };
            crypto::ed25519_verify(&key.key, self.note.text.as_bytes(), &sig.signature)
                .map_err(|_| TlogError::BadSignature(key.name.as_str().to_owned()))?;
            if key.name != self.checkpoint.origin {
                return Err(TlogError::BadCheckpoint(
                    "the origin is not the log key's name",
                ));
            }
            ok = true;
        }
        if ok {
            Ok(&self.checkpoint)
        } else {
            Err(TlogError::NoLogSignature)
        }
    }

    /// The witnesses among `witnesses` whose cosignature verifies (each counted once).
    /// A cosignature line of a known witness that fails to verify is an error.
    pub fn verify_cosignatures(
        &self,
        witnesses: &[NoteKey],
    ) -> Result<Vec<VerifiedCosignature>, TlogError> {
        let mut out: Vec<VerifiedCosignature> = Vec::new();
        for sig in &self.note.signatures {
            let Some(w) = witnesses
                .iter()
                .find(|k| k.name == sig.name && k.key_id(SIG_TYPE_COSIGNATURE_V1) == sig.key_id)
            else {
                continue;
            };
            let time_secs = verify_cosignature(w, &self.note.text, &sig.signature)?;
            if !out.iter().any(|v| v.witness == w.name) {
                out.push(VerifiedCosignature {
                    witness: w.name.clone(),
                    time_secs,
                });
            }
        }
        Ok(out)
    }

    /// Verify the log signature and at least `threshold` distinct witness cosignatures.
    pub fn verify(
        &self,
        log_keys: &[NoteKey],
        witnesses: &[NoteKey],
        threshold: u8,
    ) -> Result<&Checkpoint, TlogError> {
        self.verify_log(log_keys)?;
        let got = self.verify_cosignatures(witnesses)?.len();
        if got < usize::from(threshold) {
            return Err(TlogError::NotEnoughCosignatures {
                got,
                need: threshold,
            });
        }
        Ok(&self.checkpoint)
    }

    /// Add a cosignature line (replacing an earlier one of the same witness), within
    /// [`MAX_NOTE_SIGNATURES`].
    pub fn add_cosignature(&mut self, sig: NoteSignature) -> Result<(), TlogError> {
        self.note
            .signatures
            .retain(|s| !(s.name == sig.name && s.key_id == sig.key_id));
        if self.note.signatures.len() >= MAX_NOTE_SIGNATURES {
            return Err(TlogError::TooMany {
                what: "note signatures",
                max: MAX_NOTE_SIGNATURES,
            });
        }
        self.note.signatures.push(sig);
        Ok(())
    }
}

/// Check one cosignature (`u64 BE time || Ed25519 signature`) of `witness` over `text`;
/// returns its time.
pub fn verify_cosignature(witness: &NoteKey, text: &str, data: &[u8]) -> Result<u64, TlogError> {
    if data.len() != 8 + 64 {
        return Err(TlogError::BadSignature(witness.name.as_str().to_owned()));
    }
    let (t, sig) = data.split_at(8);
    let mut tb = [0u8; 8];
    tb.copy_from_slice(t);
    let time_secs = u64::from_be_bytes(tb);
    if time_secs > MAX_COSIGNATURE_TIME {
        return Err(TlogError::BadSignature(witness.name.as_str().to_owned()));
    }
    crypto::ed25519_verify(&witness.key, &cosignature_message(time_secs, text), sig)
        .map_err(|_| TlogError::BadSignature(witness.name.as_str().to_owned()))?;
    Ok(time_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn name(s: &str) -> KeyName {
        KeyName::new(s).unwrap_or_else(|_| KeyName("x".into()))
    }

    #[test]
    fn key_id_follows_signed_note() {
        // The key id is the first four bytes of SHA-256(name || "\n" || type || key).
        let signer = LogSigner::from_seed(name("relay.example/log"), &[7u8; 32]);
        let Ok(signer) = signer else {
            unreachable!("a 32-byte seed is valid")
        };
        let pk = *signer.public().public();
        let mut input = b"relay.example/log\n\x01".to_vec();
        input.extend_from_slice(&pk);
        let h = crypto::sha256(&[&input]);
        assert_eq!(signer.public().key_id(0x01), [h[0], h[1], h[2], h[3]]);
        assert_ne!(signer.public().key_id(0x01), signer.public().key_id(0x04));
        // vkey round trip, and a wrong id is refused.
        let vkey = signer.public().to_vkey();
        assert_eq!(
            NoteKey::from_vkey(&vkey).ok().as_ref(),
            Some(signer.public())
        );
        let bad = vkey.replacen('+', "+0", 1);
        assert!(NoteKey::from_vkey(&bad).is_err());
    }

    /// The Go `golang.org/x/mod/sumdb/note` example key (PeterNeumann): its verifier key
    /// string names key id c74f20a3 for this name and key, which our key id computes.
    #[test]
    fn vkey_interoperates_with_the_go_note_example() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        let key = NoteKey::from_vkey(vkey);
        assert!(key.is_ok(), "{key:?}");
        if let Ok(k) = key {
            assert_eq!(k.to_vkey(), vkey);
        }
    }

    #[test]
    fn checkpoint_signs_parses_and_verifies() {
        let log = LogSigner::generate(name("sealpost.example/log"), &mut OsRng);
        let signed = log.sign(42, [9u8; 32]);
        let text = signed.to_text();
        assert!(text.starts_with("sealpost.example/log\n42\nCQkJ"));
        assert!(text.contains("\n\n\u{2014} sealpost.example/log "));
        let parsed = SignedCheckpoint::parse(text.as_bytes());
        let Ok(parsed) = parsed else {
            unreachable!("{parsed:?}")
        };
        assert_eq!(parsed, signed);
        let keys = [log.public().clone()];
        assert_eq!(parsed.verify_log(&keys).ok(), Some(&signed.checkpoint));
        // Another log key with the same name: its id differs, so no known signature.
        let other = LogSigner::generate(name("sealpost.example/log"), &mut OsRng);
        assert!(matches!(
            parsed.verify_log(&[other.public().clone()]),
            Err(TlogError::NoLogSignature)
        ));
        // A changed size or root fails the signature.
        for (from, to) in [("\n42\n", "\n43\n"), ("CQkJ", "CQkK")] {
            let forged = text.replacen(from, to, 1);
            let p = SignedCheckpoint::parse(forged.as_bytes());
            let Ok(p) = p else { unreachable!("{p:?}") };
            assert!(matches!(
                p.verify_log(&keys),
                Err(TlogError::BadSignature(_))
            ));
        }
    }

    #[test]
    fn cosignatures_count_towards_the_threshold() {
        let log = LogSigner::generate(name("sealpost.example/log"), &mut OsRng);
        let w1 = WitnessSigner::generate(name("witness.example/w1"), &mut OsRng);
        let w2 = WitnessSigner::generate(name("witness.example/w2"), &mut OsRng);
        let mut signed = log.sign(3, [1u8; 32]);
        let keys = [log.public().clone()];
        let witnesses = [w1.public().clone(), w2.public().clone()];
        assert!(matches!(
            signed.verify(&keys, &witnesses, 1),
            Err(TlogError::NotEnoughCosignatures { got: 0, need: 1 })
        ));
        let cosig = w1.cosign(&signed.checkpoint, 1_700_000_000);
        assert_eq!(cosig.signature.len(), 72);
        assert!(signed.add_cosignature(cosig.clone()).is_ok());
        // Twice the same witness still counts once.
        assert!(signed.add_cosignature(cosig).is_ok());
        assert_eq!(signed.note.signatures.len(), 2);
        let reparsed = SignedCheckpoint::parse(signed.to_text().as_bytes());
        let Ok(reparsed) = reparsed else {
            unreachable!("{reparsed:?}")
        };
        assert!(reparsed.verify(&keys, &witnesses, 1).is_ok());
        assert!(reparsed.verify(&keys, &witnesses, 2).is_err());
        let v = reparsed.verify_cosignatures(&witnesses).unwrap_or_default();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].time_secs, 1_700_000_000);
        // The message signed is exactly the tlog-cosignature one.
        let msg = cosignature_message(1_700_000_000, &signed.checkpoint.body());
        assert!(msg.starts_with(b"cosignature/v1\ntime 1700000000\nsealpost.example/log\n3\n"));
        // A cosignature over another checkpoint is refused loudly.
        let other = log.sign(4, [1u8; 32]);
        let mut wrong = signed.clone();
        wrong.note.signatures[1] = w2.cosign(&other.checkpoint, 5);
        assert!(matches!(
            wrong.verify_cosignatures(&witnesses),
            Err(TlogError::BadSignature(_))
        ));
    }

    #[test]
    fn parsing_is_bounded_and_strict() {
        let log = LogSigner::generate(name("l"), &mut OsRng);
        let good = log.sign(1, [0; 32]).to_text();
        for bad in [
            good.replace("\n\n", "\n"),                  // no blank line
            good.trim_end().to_owned(),                  // no final newline
            good.replace('\u{2014}', "-"),               // not an em dash
            good.replacen("l\n1\n", "l\n01\n", 1),       // leading zero
            good.replacen("l\n1\n", "l\n1\nextra\n", 1), // extension line
            good.replacen("l\n", "l\t\n", 1),            // control character
            format!("{good}{}", "\u{2014} l AAAA\n"),    // too short signature
        ] {
            assert!(SignedCheckpoint::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let line = good.lines().last().unwrap_or_default().to_owned() + "\n";
        let many = good.clone() + &line.repeat(MAX_NOTE_SIGNATURES);
        assert!(matches!(
            SignedNote::parse(many.as_bytes()),
            Err(TlogError::TooMany { .. })
        ));
        let huge = "a".repeat(MAX_NOTE_LEN + 1);
        assert!(matches!(
            SignedNote::parse(huge.as_bytes()),
            Err(TlogError::TooLarge { .. })
        ));
        assert!(KeyName::new("a+b").is_err());
        assert!(KeyName::new("a b").is_err());
        assert!(KeyName::new("").is_err());
        assert!(KeyName::new(&"a".repeat(129)).is_err());
    }
}

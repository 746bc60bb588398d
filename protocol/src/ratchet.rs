//! The Double Ratchet (Signal specification, revision 4) over X25519, HKDF-SHA256,
//! HMAC-SHA256 chains and ChaCha20-Poly1305.
//!
//! * `KDF_RK(rk, dh) = HKDF-SHA256(salt = rk, ikm = dh, info = "Sealpost_Ratchet_v1")`,
//!   64 bytes: new root key || chain key.
//! * `KDF_CK(ck)`: message key `HMAC(ck, 0x01)`, next chain key `HMAC(ck, 0x02)`.
//! * Each message key encrypts exactly one message, so the AEAD nonce is the constant
//!   zero nonce (Double Ratchet spec, section 5.2).
//! * Associated data: the session AD (both identities), the envelope's routing header
//!   and the ratchet header.
//!
//! Decryption never changes the session unless the message authenticates: new chain
//! and skipped keys are computed on the side and committed only after the AEAD check.
//! The sending DH ratchet step is taken lazily, at the first send after a receive.

use std::collections::{HashMap, VecDeque};

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::bytes_array;
use crate::crypto::{self, AEAD_NONCE_LEN};
use crate::envelope::{
    Body, Envelope, PreKeyMessage, RatchetMessage, RoutingHeader, MAX_PLAINTEXT_LEN, ROUTING_AD_LEN,
};
use crate::error::{DecryptError, EncryptError, PickleError};
use crate::identity::{DeviceId, PublicIdentity};
use crate::padding;
use crate::pickle::{self, PickleKey, PickleKind};

/// Most message keys skipped in one chain by a single incoming message.
pub const MAX_MESSAGE_GAP: u32 = 2000;
/// Most skipped message keys a session keeps (oldest dropped first).
pub const MAX_SKIPPED_KEYS: usize = 2000;
/// Previous remote ratchet keys remembered, to tell a replay from a new ratchet key.
pub const MAX_PREVIOUS_CHAINS: usize = 32;
/// HKDF info for the root-key KDF.
pub const RATCHET_INFO: &[u8] = b"Sealpost_Ratchet_v1";
/// Prefix of the session associated data.
pub const SESSION_AD_LABEL: &[u8] = b"Sealpost_Session_v1";
/// Length of the session associated data.
pub const SESSION_AD_LEN: usize = 19 + 64 + 64;
const HEADER_AD_LEN: usize = 32 + 4 + 4;
const AD_LEN: usize = SESSION_AD_LEN + ROUTING_AD_LEN + HEADER_AD_LEN;
const ZERO_NONCE: [u8; AEAD_NONCE_LEN] = [0u8; AEAD_NONCE_LEN];

/// A symmetric chain: its key and the index of the next message.
#[derive(Clone)]
struct Chain {
    key: Zeroizing<[u8; 32]>,
    index: u32,
}

/// What the initiator repeats in every message until the responder answers.
#[derive(Clone)]
pub(crate) struct PendingPreKey {
    pub(crate) signed_prekey_id: u32,
    pub(crate) one_time_prekey_id: Option<u32>,
    pub(crate) kem_prekey_id: u32,
    pub(crate) kem_ciphertext: Box<[u8; crypto::MLKEM768_CIPHERTEXT_LEN]>,
}

/// A Double Ratchet session with one peer device.
///
/// Secret: no `Debug`, zeroized on drop, never `Serialize`; stored only as an encrypted
/// pickle ([`Session::pickle`]).
pub struct Session {
    local_device: DeviceId,
    initiator: bool,
    local_identity: PublicIdentity,
    remote_identity: PublicIdentity,
    session_ad: [u8; SESSION_AD_LEN],
    base_key: [u8; 32],
    root_key: Zeroizing<[u8; 32]>,
    dh_self: x25519_dalek::StaticSecret,
    dh_self_public: [u8; 32],
    dh_remote: Option<[u8; 32]>,
    send_chain: Option<Chain>,
    send_ratchet_pending: bool,
    recv_chain: Option<Chain>,
    previous_send_len: u32,
    skipped: HashMap<([u8; 32], u32), Zeroizing<[u8; 32]>>,
    skipped_order: VecDeque<([u8; 32], u32)>,
    /// Remote ratchet keys of chains that were replaced, newest last, with the highest
    /// index whose skipped key was dropped for lack of room (if any).
    previous_remote: VecDeque<([u8; 32], Option<u32>)>,
    /// Highest dropped index of the current receiving chain.
    current_dropped: Option<u32>,
    pending_prekey: Option<PendingPreKey>,
    /// Responder only: [`PreKeyMessage::setup_digest`] of the accepted initial message.
    prekey_setup: Option<[u8; 32]>,
}

impl ZeroizeOnDrop for Session {}

impl Drop for Session {
    fn drop(&mut self) {
        self.skipped.clear();
        self.skipped_order.clear();
    }
}

/// Build the session associated data: label || initiator identity || responder identity.
pub(crate) fn session_ad(
    initiator: &PublicIdentity,
    responder: &PublicIdentity,
) -> [u8; SESSION_AD_LEN] {
    let mut ad = [0u8; SESSION_AD_LEN];
    ad[..19].copy_from_slice(SESSION_AD_LABEL);
    ad[19..83].copy_from_slice(&initiator.to_bytes());
    ad[83..].copy_from_slice(&responder.to_bytes());
    ad
}

pub(crate) fn kdf_rk(
    root_key: &[u8; 32],
    dh_out: &[u8; 32],
) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let mut okm = Zeroizing::new([0u8; 64]);
    // 64 bytes is far below HKDF's limit; the error arm cannot occur.
    let _ = crypto::hkdf_sha256(Some(root_key), dh_out, &[RATCHET_INFO], &mut okm[..]);
    let mut rk = Zeroizing::new([0u8; 32]);
    let mut ck = Zeroizing::new([0u8; 32]);
    rk.copy_from_slice(&okm[..32]);
    ck.copy_from_slice(&okm[32..]);
    (rk, ck)
}

fn message_ad(
    session_ad: &[u8; SESSION_AD_LEN],
    routing: &[u8; ROUTING_AD_LEN],
    dh: &[u8; 32],
    pn: u32,
    n: u32,
) -> [u8; AD_LEN] {
    let mut ad = [0u8; AD_LEN];
    ad[..SESSION_AD_LEN].copy_from_slice(session_ad);
    let r = SESSION_AD_LEN + ROUTING_AD_LEN;
    ad[SESSION_AD_LEN..r].copy_from_slice(routing);
    ad[r..r + 32].copy_from_slice(dh);
    ad[r + 32..r + 36].copy_from_slice(&pn.to_be_bytes());
    ad[r + 36..r + 40].copy_from_slice(&n.to_be_bytes());
    ad
}

fn short(key: &[u8; 32]) -> String {
    hex::encode(&key[..4])
}

impl Session {
    /// Initiator side, after PQXDH: the first sending chain is derived at once.
    pub(crate) fn new_initiator<R: RngCore + CryptoRng>(
        local_identity: PublicIdentity,
        remote_identity: PublicIdentity,
        shared_secret: &[u8; 32],
        remote_signed_prekey: [u8; 32],
        base_key: [u8; 32],
        pending: PendingPreKey,
        rng: &mut R,
    ) -> Result<Self, crypto::CryptoError> {
        let (dh_self, dh_self_pub) = crypto::x25519_generate(rng);
        let dh_out = crypto::x25519(
            &dh_self,
            &x25519_dalek::PublicKey::from(remote_signed_prekey),
        )?;
        let (root_key, ck) = kdf_rk(shared_secret, &dh_out);
        Ok(Self {
            local_device: local_identity.device_id(),
            session_ad: session_ad(&local_identity, &remote_identity),
            initiator: true,
            local_identity,
            remote_identity,
            base_key,
            root_key,
            dh_self,
            dh_self_public: dh_self_pub.to_bytes(),
            dh_remote: Some(remote_signed_prekey),
            send_chain: Some(Chain { key: ck, index: 0 }),
            send_ratchet_pending: false,
            recv_chain: None,
            previous_send_len: 0,
            skipped: HashMap::new(),
            skipped_order: VecDeque::new(),
            previous_remote: VecDeque::new(),
            current_dropped: None,
            pending_prekey: Some(pending),
            prekey_setup: None,
        })
    }

    /// Responder side, after PQXDH: the signed prekey is the first ratchet key.
    pub(crate) fn new_responder(
        local_identity: PublicIdentity,
        remote_identity: PublicIdentity,
        shared_secret: &[u8; 32],
        signed_prekey: x25519_dalek::StaticSecret,
        base_key: [u8; 32],
    ) -> Self {
        let dh_self_public = x25519_dalek::PublicKey::from(&signed_prekey).to_bytes();
        Self {
            local_device: local_identity.device_id(),
            session_ad: session_ad(&remote_identity, &local_identity),
            initiator: false,
            local_identity,
            remote_identity,
            base_key,
            root_key: Zeroizing::new(*shared_secret),
            dh_self: signed_prekey,
            dh_self_public,
            dh_remote: None,
            send_chain: None,
            send_ratchet_pending: true,
            recv_chain: None,
            previous_send_len: 0,
            skipped: HashMap::new(),
            skipped_order: VecDeque::new(),
            previous_remote: VecDeque::new(),
            current_dropped: None,
            pending_prekey: None,
            prekey_setup: None,
        }
    }

    /// Responder: remember the PQXDH data of the accepted initial message.
    pub(crate) fn set_prekey_setup(&mut self, digest: [u8; 32]) {
        self.prekey_setup = Some(digest);
    }

    /// A working copy of this session to try a decryption on (docs/PROTOCOL.md §18.3):
    /// the receiver opens an envelope with the copy and replaces the session with it only
    /// once the message is kept (shown, held or definitively refused), so that a check
    /// that fails for a transient reason leaves the stored session able to open the
    /// redelivery. The copy holds the same secrets and is zeroized on drop like the
    /// original; it is never persisted unless it replaces the original.
    pub fn working_copy(&self) -> Session {
        Session {
            local_device: self.local_device,
            initiator: self.initiator,
            local_identity: self.local_identity.clone(),
            remote_identity: self.remote_identity.clone(),
            session_ad: self.session_ad,
            base_key: self.base_key,
            root_key: self.root_key.clone(),
            dh_self: self.dh_self.clone(),
            dh_self_public: self.dh_self_public,
            dh_remote: self.dh_remote,
            send_chain: self.send_chain.clone(),
            send_ratchet_pending: self.send_ratchet_pending,
            recv_chain: self.recv_chain.clone(),
            previous_send_len: self.previous_send_len,
            skipped: self.skipped.clone(),
            skipped_order: self.skipped_order.clone(),
            previous_remote: self.previous_remote.clone(),
            current_dropped: self.current_dropped,
            pending_prekey: self.pending_prekey.clone(),
            prekey_setup: self.prekey_setup,
        }
    }

    /// This device.
    pub fn local_device(&self) -> DeviceId {
        self.local_device
    }

    /// The peer device.
    pub fn remote_device(&self) -> DeviceId {
        self.remote_identity.device_id()
    }

    /// The peer's identity, as bound into this session.
    pub fn remote_identity(&self) -> &PublicIdentity {
        &self.remote_identity
    }

    /// The initiator's base key: identifies this session on both sides.
    pub fn base_key(&self) -> &[u8; 32] {
        &self.base_key
    }

    /// True while this side still sends initial (prekey) messages, i.e. the initiator has
    /// not yet received an answer.
    pub fn awaiting_first_reply(&self) -> bool {
        self.pending_prekey.is_some()
    }

    /// Number of skipped message keys held.
    pub fn skipped_key_count(&self) -> usize {
        self.skipped.len()
    }

    /// Encrypt `plaintext` into an envelope with the given routing header, which must name
    /// this session's devices. Takes the RNG for the sending DH ratchet step.
    pub fn seal<R: RngCore + CryptoRng>(
        &mut self,
        header: RoutingHeader,
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<Envelope, EncryptError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(EncryptError::PlaintextTooLarge {
                got: plaintext.len(),
                max: MAX_PLAINTEXT_LEN,
            });
        }
        if header.sender != self.local_device || header.recipient != self.remote_device() {
            return Err(EncryptError::WrongDevices);
        }
        let message = self.encrypt(&header.ad_bytes(), plaintext, rng)?;
        let body = match &self.pending_prekey {
            Some(p) => Body::PreKey(Box::new(PreKeyMessage {
                identity: self.local_identity.clone(),
                base_key: self.base_key,
                signed_prekey_id: p.signed_prekey_id,
                one_time_prekey_id: p.one_time_prekey_id,
                kem_prekey_id: p.kem_prekey_id,
                kem_ciphertext: p.kem_ciphertext.clone(),
                message,
            })),
            None => Body::Message(message),
        };
        Ok(Envelope {
            header,
            body: body.encode()?,
        })
    }

    fn encrypt<R: RngCore + CryptoRng>(
        &mut self,
        routing: &[u8; ROUTING_AD_LEN],
        plaintext: &[u8],
        rng: &mut R,
    ) -> Result<RatchetMessage, EncryptError> {
        if self.send_ratchet_pending {
            let remote = self.dh_remote.ok_or(EncryptError::WrongDevices)?;
            let (secret, public) = crypto::x25519_generate(rng);
            let dh_out = crypto::x25519(&secret, &x25519_dalek::PublicKey::from(remote))?;
            let (rk, ck) = kdf_rk(&self.root_key, &dh_out);
            self.previous_send_len = self.send_chain.as_ref().map_or(0, |c| c.index);
            self.root_key = rk;
            self.dh_self = secret;
            self.dh_self_public = public.to_bytes();
            self.send_chain = Some(Chain { key: ck, index: 0 });
            self.send_ratchet_pending = false;
        }
        let chain = self.send_chain.as_mut().ok_or(EncryptError::WrongDevices)?;
        if chain.index == u32::MAX {
            return Err(EncryptError::ChainExhausted(chain.index));
        }
        let (mk, next) = crypto::chain_step(&chain.key);
        let n = chain.index;
        chain.key = next;
        chain.index += 1;
        let ad = message_ad(
            &self.session_ad,
            routing,
            &self.dh_self_public,
            self.previous_send_len,
            n,
        );
        let mut ct =
            Vec::with_capacity(padding::padded_len(plaintext.len()) + crypto::AEAD_TAG_LEN);
        padding::pad_into(plaintext, &mut ct);
        crypto::aead_seal(&mk, &ZERO_NONCE, &ad, &mut ct)?;
        Ok(RatchetMessage {
            dh: self.dh_self_public,
            pn: self.previous_send_len,
            n,
            ct,
        })
    }

    /// Decrypt an envelope of this session. The session is unchanged if this fails.
    pub fn open(&mut self, envelope: &Envelope) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        self.check_devices(&envelope.header)?;
        match Body::decode(&envelope.body)? {
            Body::Message(m) => self.decrypt(&envelope.header.ad_bytes(), m),
            Body::PreKey(p) => {
                if p.base_key != self.base_key || p.identity != self.remote_identity {
                    return Err(DecryptError::UnknownSession);
                }
                if self.prekey_setup.is_some_and(|d| d != p.setup_digest()) {
                    return Err(DecryptError::Authentication);
                }
                self.decrypt(&envelope.header.ad_bytes(), p.message)
            }
        }
    }

    pub(crate) fn check_devices(&self, header: &RoutingHeader) -> Result<(), DecryptError> {
        if header.recipient != self.local_device {
            return Err(DecryptError::WrongRecipient {
                expected: self.local_device,
                got: header.recipient,
            });
        }
        if header.sender != self.remote_device() {
            return Err(DecryptError::WrongSender {
                expected: self.remote_device(),
                got: header.sender,
            });
        }
        Ok(())
    }

    fn open_with(
        &self,
        mk: &[u8; 32],
        routing: &[u8; ROUTING_AD_LEN],
        m: &RatchetMessage,
        ct: Vec<u8>,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let ad = message_ad(&self.session_ad, routing, &m.dh, m.pn, m.n);
        let mut buf = Zeroizing::new(ct);
        crypto::aead_open(mk, &ZERO_NONCE, &ad, &mut buf)
            .map_err(|_| DecryptError::Authentication)?;
        padding::unpad(&mut buf)?;
        Ok(buf)
    }

    fn not_held(&self, dh: &[u8; 32], index: u32, dropped: Option<u32>) -> DecryptError {
        match dropped {
            Some(d) if index <= d => DecryptError::KeyNotHeld,
            _ => DecryptError::Replay {
                chain: short(dh),
                index,
            },
        }
    }

    pub(crate) fn decrypt(
        &mut self,
        routing: &[u8; ROUTING_AD_LEN],
        mut m: RatchetMessage,
    ) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let ct = std::mem::take(&mut m.ct);
        // 1. A key skipped earlier.
        if let Some(mk) = self.skipped.get(&(m.dh, m.n)) {
            let pt = self.open_with(mk, routing, &m, ct)?;
            self.skipped.remove(&(m.dh, m.n));
            self.skipped_order.retain(|k| *k != (m.dh, m.n));
            self.on_received();
            return Ok(pt);
        }
        // 2. The current receiving chain.
        if self.dh_remote == Some(m.dh) {
            if let Some(chain) = &self.recv_chain {
                if m.n < chain.index {
                    return Err(self.not_held(&m.dh, m.n, self.current_dropped));
                }
                let gap = m.n - chain.index;
                if gap > MAX_MESSAGE_GAP {
                    return Err(DecryptError::TooBigGap {
                        got: u64::from(gap),
                        max: MAX_MESSAGE_GAP,
                    });
                }
                let (staged, mk, next) = derive_keys(chain, m.n);
                let pt = self.open_with(&mk, routing, &m, ct)?;
                self.store_skipped(m.dh, staged);
                self.recv_chain = Some(Chain {
                    key: next,
                    index: m.n + 1,
                });
                self.on_received();
                return Ok(pt);
            }
        }
        // 3. An old chain whose keys we no longer hold.
        if let Some((_, dropped)) = self.previous_remote.iter().find(|(k, _)| *k == m.dh) {
            return Err(self.not_held(&m.dh, m.n, *dropped));
        }
        // 4. A new remote ratchet key: DH ratchet step, staged.
        let mut staged_old = Vec::new();
        if let (Some(chain), Some(old_remote)) = (&self.recv_chain, self.dh_remote) {
            if m.pn > chain.index {
                let gap = m.pn - chain.index;
                if gap > MAX_MESSAGE_GAP {
                    return Err(DecryptError::TooBigGap {
                        got: u64::from(gap),
                        max: MAX_MESSAGE_GAP,
                    });
                }
                let (keys, _, _) = derive_keys(chain, m.pn);
                staged_old = keys
                    .into_iter()
                    .map(|(i, k)| ((old_remote, i), k))
                    .collect();
            }
        }
        if m.n > MAX_MESSAGE_GAP {
            return Err(DecryptError::TooBigGap {
                got: u64::from(m.n),
                max: MAX_MESSAGE_GAP,
            });
        }
        let dh_out = crypto::x25519(&self.dh_self, &x25519_dalek::PublicKey::from(m.dh))?;
        let (rk, ck) = kdf_rk(&self.root_key, &dh_out);
        let new_chain = Chain { key: ck, index: 0 };
        let (staged_new, mk, next) = derive_keys(&new_chain, m.n);
        let pt = self.open_with(&mk, routing, &m, ct)?;
        // Commit.
        for ((dh, i), k) in staged_old {
            self.insert_skipped(dh, i, k);
        }
        if let Some(old) = self.dh_remote.take() {
            if self.recv_chain.is_some() {
                self.previous_remote.push_back((old, self.current_dropped));
                while self.previous_remote.len() > MAX_PREVIOUS_CHAINS {
                    self.previous_remote.pop_front();
                }
            }
        }
        self.current_dropped = None;
        self.dh_remote = Some(m.dh);
        self.root_key = rk;
        self.store_skipped(m.dh, staged_new);
        self.recv_chain = Some(Chain {
            key: next,
            index: m.n + 1,
        });
        self.send_ratchet_pending = true;
        self.on_received();
        Ok(pt)
    }

    fn on_received(&mut self) {
        // Any authenticated message from the peer proves it holds the session, so the
        // initiator stops repeating the PQXDH data.
        self.pending_prekey = None;
    }

    fn store_skipped(&mut self, dh: [u8; 32], keys: Vec<(u32, Zeroizing<[u8; 32]>)>) {
        for (i, k) in keys {
            self.insert_skipped(dh, i, k);
        }
    }

    fn insert_skipped(&mut self, dh: [u8; 32], index: u32, key: Zeroizing<[u8; 32]>) {
        while self.skipped_order.len() >= MAX_SKIPPED_KEYS {
            if let Some((odh, oi)) = self.skipped_order.pop_front() {
                self.skipped.remove(&(odh, oi));
                self.note_dropped(odh, oi);
            }
        }
        self.skipped.insert((dh, index), key);
        self.skipped_order.push_back((dh, index));
    }

    fn note_dropped(&mut self, dh: [u8; 32], index: u32) {
        let bump = |d: &mut Option<u32>| *d = Some(d.map_or(index, |x| x.max(index)));
        if self.dh_remote == Some(dh) {
            bump(&mut self.current_dropped);
        } else if let Some((_, d)) = self.previous_remote.iter_mut().find(|(k, _)| *k == dh) {
            bump(d);
        }
    }

    /// Seal this session's state under `key` for storage.
    pub fn pickle<R: RngCore + CryptoRng>(
        &self,
        key: &PickleKey,
        rng: &mut R,
    ) -> Result<Vec<u8>, PickleError> {
        let p = SessionPickle {
            local_identity: self.local_identity.clone(),
            remote_identity: self.remote_identity.clone(),
            base_key: self.base_key,
            root_key: *self.root_key,
            dh_self: self.dh_self.to_bytes(),
            dh_remote: self.dh_remote,
            send_chain: self.send_chain.as_ref().map(ChainPickle::from),
            send_ratchet_pending: self.send_ratchet_pending,
            recv_chain: self.recv_chain.as_ref().map(ChainPickle::from),
            previous_send_len: self.previous_send_len,
            skipped: self
                .skipped_order
                .iter()
                .filter_map(|k| {
                    self.skipped.get(k).map(|mk| SkippedPickle {
                        dh: k.0,
                        index: k.1,
                        key: **mk,
                    })
                })
                .collect(),
            previous_remote: self
                .previous_remote
                .iter()
                .map(|(k, d)| PreviousPickle {
                    dh: *k,
                    dropped: *d,
                })
                .collect(),
            current_dropped: self.current_dropped,
            pending_prekey: self.pending_prekey.as_ref().map(|p| PendingPickle {
                signed_prekey_id: p.signed_prekey_id,
                one_time_prekey_id: p.one_time_prekey_id,
                kem_prekey_id: p.kem_prekey_id,
                kem_ciphertext: p.kem_ciphertext.to_vec(),
            }),
            initiator: self.initiator,
            prekey_setup: self.prekey_setup,
        };
        pickle::seal(PickleKind::Session, &p, key, rng)
    }

    /// Restore a session sealed by [`Session::pickle`].
    pub fn from_pickle(bytes: &[u8], key: &PickleKey) -> Result<Self, PickleError> {
        let p: SessionPickle = pickle::open(PickleKind::Session, bytes, key)?;
        if p.skipped.len() > MAX_SKIPPED_KEYS || p.previous_remote.len() > MAX_PREVIOUS_CHAINS {
            return Err(PickleError::Invalid(
                "more skipped keys or chains than the bounds allow",
            ));
        }
        let dh_self = x25519_dalek::StaticSecret::from(p.dh_self);
        let dh_self_public = x25519_dalek::PublicKey::from(&dh_self).to_bytes();
        let mut skipped = HashMap::with_capacity(p.skipped.len());
        let mut skipped_order = VecDeque::with_capacity(p.skipped.len());
        for s in &p.skipped {
            skipped.insert((s.dh, s.index), Zeroizing::new(s.key));
            skipped_order.push_back((s.dh, s.index));
        }
        let pending_prekey = match &p.pending_prekey {
            None => None,
            Some(pp) => {
                let ct: [u8; crypto::MLKEM768_CIPHERTEXT_LEN] = pp
                    .kem_ciphertext
                    .as_slice()
                    .try_into()
                    .map_err(|_| PickleError::Invalid("KEM ciphertext length"))?;
                Some(PendingPreKey {
                    signed_prekey_id: pp.signed_prekey_id,
                    one_time_prekey_id: pp.one_time_prekey_id,
                    kem_prekey_id: pp.kem_prekey_id,
                    kem_ciphertext: Box::new(ct),
                })
            }
        };
        let session_ad = if p.initiator {
            session_ad(&p.local_identity, &p.remote_identity)
        } else {
            session_ad(&p.remote_identity, &p.local_identity)
        };
        Ok(Self {
            local_device: p.local_identity.device_id(),
            session_ad,
            initiator: p.initiator,
            local_identity: p.local_identity.clone(),
            remote_identity: p.remote_identity.clone(),
            base_key: p.base_key,
            root_key: Zeroizing::new(p.root_key),
            dh_self,
            dh_self_public,
            dh_remote: p.dh_remote,
            send_chain: p.send_chain.as_ref().map(ChainPickle::to_chain),
            send_ratchet_pending: p.send_ratchet_pending,
            recv_chain: p.recv_chain.as_ref().map(ChainPickle::to_chain),
            previous_send_len: p.previous_send_len,
            skipped,
            skipped_order,
            previous_remote: p
                .previous_remote
                .iter()
                .map(|x| (x.dh, x.dropped))
                .collect(),
            current_dropped: p.current_dropped,
            pending_prekey,
            prekey_setup: p.prekey_setup,
        })
    }
}

/// Derive the keys of `chain` from its index up to `upto` (exclusive) as skipped keys,
/// the message key at `upto`, and the chain key after it.
type Key = Zeroizing<[u8; 32]>;

fn derive_keys(chain: &Chain, upto: u32) -> (Vec<(u32, Key)>, Key, Key) {
    let mut staged = Vec::with_capacity((upto.saturating_sub(chain.index)) as usize);
    let mut ck = chain.key.clone();
    let mut i = chain.index;
    while i < upto {
        let (mk, next) = crypto::chain_step(&ck);
        staged.push((i, mk));
        ck = next;
        i += 1;
    }
    let (mk, next) = crypto::chain_step(&ck);
    (staged, mk, next)
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct ChainPickle {
    #[serde(with = "bytes_array")]
    key: [u8; 32],
    index: u32,
}

impl ChainPickle {
    fn from(c: &Chain) -> Self {
        Self {
            key: *c.key,
            index: c.index,
        }
    }
    fn to_chain(&self) -> Chain {
        Chain {
            key: Zeroizing::new(self.key),
            index: self.index,
        }
    }
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct SkippedPickle {
    #[serde(with = "bytes_array")]
    dh: [u8; 32],
    index: u32,
    #[serde(with = "bytes_array")]
    key: [u8; 32],
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviousPickle {
    #[serde(with = "bytes_array")]
    dh: [u8; 32],
    dropped: Option<u32>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PendingPickle {
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
    kem_prekey_id: u32,
    #[serde(with = "serde_bytes")]
    kem_ciphertext: Vec<u8>,
}

/// The serialised session, only ever written encrypted.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionPickle {
    local_identity: PublicIdentity,
    remote_identity: PublicIdentity,
    #[serde(with = "bytes_array")]
    base_key: [u8; 32],
    #[serde(with = "bytes_array")]
    root_key: [u8; 32],
    #[serde(with = "bytes_array")]
    dh_self: [u8; 32],
    #[serde(with = "crate::codec::opt_bytes_array")]
    dh_remote: Option<[u8; 32]>,
    send_chain: Option<ChainPickle>,
    send_ratchet_pending: bool,
    recv_chain: Option<ChainPickle>,
    previous_send_len: u32,
    skipped: Vec<SkippedPickle>,
    previous_remote: Vec<PreviousPickle>,
    current_dropped: Option<u32>,
    pending_prekey: Option<PendingPickle>,
    initiator: bool,
    #[serde(default, with = "crate::codec::opt_bytes_array")]
    prekey_setup: Option<[u8; 32]>,
}

impl Drop for SessionPickle {
    fn drop(&mut self) {
        self.root_key.zeroize();
        self.dh_self.zeroize();
    }
}

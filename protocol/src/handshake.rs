//! Session setup without the peer online: PQXDH-style hybrid key agreement.
//!
//! Initiator A, responder B with bundle (IK_B, SPK_B, optional OPK_B, PQPK_B):
//!
//! ```text
//! DH1 = X25519(IK_A, SPK_B)     DH2 = X25519(EK_A, IK_B)
//! DH3 = X25519(EK_A, SPK_B)     DH4 = X25519(EK_A, OPK_B)   (if OPK_B was handed out)
//! (CT, SS) = ML-KEM-768.Encaps(PQPK_B)
//! SK = HKDF-SHA256(salt = 32 zero bytes,
//!                  ikm  = 0xFF * 32 || DH1 || DH2 || DH3 || [DH4] || SS,
//!                  info = "Sealpost_PQXDH_X25519_SHA-256_ML-KEM-768_v1" || SHA-256(PQPK_B || CT))
//! ```
//!
//! Every prekey signature is verified first, every DH output is checked to be
//! non-zero, and both identities are bound into every message's associated data, so no
//! unknown-key-share is possible. The hash of the KEM public key and ciphertext in the
//! info binds the KEM transcript into SK (a conservative addition to PQXDH).

use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::crypto::{self, CryptoError};
use crate::envelope::{Body, Envelope};
use crate::error::SetupError;
use crate::identity::IdentityKeyPair;
use crate::prekeys::{PreKeyBundle, PreKeySecrets};
use crate::ratchet::{PendingPreKey, Session};

/// HKDF info of the session key derivation.
pub const PQXDH_INFO: &[u8] = b"Sealpost_PQXDH_X25519_SHA-256_ML-KEM-768_v1";

fn dh(
    secret: &x25519_dalek::StaticSecret,
    public: &x25519_dalek::PublicKey,
    label: &'static str,
) -> Result<Zeroizing<[u8; 32]>, SetupError> {
    crypto::x25519(secret, public).map_err(|e| match e {
        CryptoError::LowOrderPoint => SetupError::LowOrderPoint(label),
        other => SetupError::Crypto(other),
    })
}

fn derive_session_key(
    dhs: &[&[u8; 32]],
    kem_shared: &[u8; 32],
    kem_public: &[u8],
    kem_ciphertext: &[u8],
) -> Result<Zeroizing<[u8; 32]>, SetupError> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * (dhs.len() + 2)));
    ikm.extend_from_slice(&[0xFF; 32]);
    for d in dhs {
        ikm.extend_from_slice(&d[..]);
    }
    ikm.extend_from_slice(kem_shared);
    let transcript = crypto::sha256(&[kem_public, kem_ciphertext]);
    let mut sk = Zeroizing::new([0u8; 32]);
    crypto::hkdf_sha256(
        Some(&[0u8; 32]),
        &ikm,
        &[PQXDH_INFO, &transcript],
        &mut sk[..],
    )?;
    Ok(sk)
}

/// True if `u` is the canonical little-endian encoding of a field element: the top bit is
/// clear and the value is below 2^255 - 19.
fn is_canonical_x25519(u: &[u8; 32]) -> bool {
    if u[31] & 0x80 != 0 {
        return false;
    }
    let at_least_p = u[31] == 0x7f && u[1..31].iter().all(|&b| b == 0xff) && u[0] >= 0xed;
    !at_least_p
}

/// Start a session with the device described by `bundle`, which is verified first.
/// The returned session sends initial (prekey) messages until the peer answers.
pub fn initiate<R: RngCore + CryptoRng>(
    local: &IdentityKeyPair,
    bundle: &PreKeyBundle,
    rng: &mut R,
) -> Result<Session, SetupError> {
    bundle.verify()?;
    let spk = x25519_dalek::PublicKey::from(bundle.signed_prekey.public);
    let (ek_secret, ek_public) = crypto::x25519_generate(rng);
    let dh1 = dh(local.dh_secret(), &spk, "DH1 (identity, signed prekey)")?;
    let dh2 = dh(
        &ek_secret,
        bundle.identity.dh_key(),
        "DH2 (ephemeral, identity)",
    )?;
    let dh3 = dh(&ek_secret, &spk, "DH3 (ephemeral, signed prekey)")?;
    let dh4 = match &bundle.one_time_prekey {
        Some(otk) => Some(dh(
            &ek_secret,
            &x25519_dalek::PublicKey::from(otk.public),
            "DH4 (ephemeral, one-time prekey)",
        )?),
        None => None,
    };
    let (ct, ss) = crypto::mlkem768_encapsulate(&bundle.kem_prekey.public[..], rng)
        .map_err(SetupError::BadKemKey)?;
    let mut dhs: Vec<&[u8; 32]> = vec![&dh1, &dh2, &dh3];
    if let Some(d) = &dh4 {
        dhs.push(d);
    }
    let sk = derive_session_key(&dhs, &ss, &bundle.kem_prekey.public[..], &ct[..])?;
    let pending = PendingPreKey {
        signed_prekey_id: bundle.signed_prekey.id,
        one_time_prekey_id: bundle.one_time_prekey.as_ref().map(|o| o.id),
        kem_prekey_id: bundle.kem_prekey.id,
        kem_ciphertext: ct,
    };
    Session::new_initiator(
        local.public().clone(),
        bundle.identity.clone(),
        &sk,
        bundle.signed_prekey.public,
        ek_public.to_bytes(),
        pending,
        rng,
    )
    .map_err(|_| SetupError::LowOrderPoint("first ratchet step"))
}

/// Accept a session from an initial (prekey) envelope addressed to this device: derive
/// the session, decrypt the message and, only if it authenticates, erase the one-time
/// prekeys it used. Returns the session and the first plaintext.
///
/// The caller first routes envelopes whose [`Envelope::session_base_key`] matches a
/// session it already holds to that session; an envelope whose base key was already
/// accepted here is refused with [`SetupError::Replay`].
pub fn accept(
    local: &IdentityKeyPair,
    prekeys: &mut PreKeySecrets,
    envelope: &Envelope,
) -> Result<(Session, Zeroizing<Vec<u8>>), SetupError> {
    let (session, plaintext, used) = accept_staged(local, prekeys, envelope)?;
    prekeys.consume(used);
    Ok((session, plaintext))
}

/// What an accepted initial message used: the one-time prekeys to erase and the base key
/// to remember, applied with [`PreKeySecrets::consume`] when (and only when) the session it
/// created is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreKeyUse {
    pub(crate) one_time: Option<u32>,
    pub(crate) kem: u32,
    pub(crate) base_key: [u8; 32],
}

impl PreKeyUse {
    /// The base key of the session it created.
    pub fn base_key(&self) -> &[u8; 32] {
        &self.base_key
    }
}

/// [`accept`] without touching `prekeys`: the session, the first plaintext, and what to
/// consume if the session is kept (docs/PROTOCOL.md §18.3: a base key counts as seen only
/// together with the session it created, so a receiver that cannot decide yet whether to
/// keep the message leaves its prekeys as they were and can accept the redelivery).
pub fn accept_staged(
    local: &IdentityKeyPair,
    prekeys: &PreKeySecrets,
    envelope: &Envelope,
) -> Result<(Session, Zeroizing<Vec<u8>>, PreKeyUse), SetupError> {
    envelope.validate()?;
    if envelope.header.recipient != local.device_id() {
        return Err(SetupError::WrongRecipient {
            expected: local.device_id(),
            got: envelope.header.recipient,
        });
    }
    let p = match Body::decode(&envelope.body)? {
        Body::PreKey(p) => p,
        Body::Message(_) => return Err(SetupError::NotAPreKeyMessage),
    };
    if envelope.header.sender != p.identity.device_id() {
        return Err(SetupError::SenderMismatch);
    }
    // X25519 ignores the top bit (and reduces modulo p), so without this check one base
    // key has several encodings, and a replayed initial message re-encoded with another one
    // would pass the replay check below and open a second session.
    if !is_canonical_x25519(&p.base_key) {
        return Err(SetupError::Decode(
            crate::error::DecodeError::InvalidField {
                field: "base key",
                reason: "non-canonical X25519 public key",
            },
        ));
    }
    if prekeys.seen_base_key(&p.base_key) {
        return Err(SetupError::Replay);
    }
    let spk = prekeys
        .find_signed(p.signed_prekey_id)
        .ok_or(SetupError::UnknownPreKey {
            which: "signed",
            id: p.signed_prekey_id,
        })?;
    let otk = match p.one_time_prekey_id {
        Some(id) => Some(prekeys.one_time.get(&id).ok_or(SetupError::UnknownPreKey {
            which: "one-time",
            id,
        })?),
        None => None,
    };
    let kem = prekeys
        .find_kem(p.kem_prekey_id)
        .ok_or(SetupError::UnknownPreKey {
            which: "ML-KEM",
            id: p.kem_prekey_id,
        })?;
    let base = x25519_dalek::PublicKey::from(p.base_key);
    let dh1 = dh(
        &spk.secret,
        p.identity.dh_key(),
        "DH1 (identity, signed prekey)",
    )?;
    let dh2 = dh(local.dh_secret(), &base, "DH2 (ephemeral, identity)")?;
    let dh3 = dh(&spk.secret, &base, "DH3 (ephemeral, signed prekey)")?;
    let dh4 = match otk {
        Some(o) => Some(dh(&o.secret, &base, "DH4 (ephemeral, one-time prekey)")?),
        None => None,
    };
    let ss = kem.secret.decapsulate(&p.kem_ciphertext[..])?;
    let mut dhs: Vec<&[u8; 32]> = vec![&dh1, &dh2, &dh3];
    if let Some(d) = &dh4 {
        dhs.push(d);
    }
    let sk = derive_session_key(&dhs, &ss, &kem.public.public[..], &p.kem_ciphertext[..])?;
    let mut session = Session::new_responder(
        local.public().clone(),
        p.identity.clone(),
        &sk,
        spk.secret.clone(),
        p.base_key,
    );
    let plaintext = session.decrypt(&envelope.header.ad_bytes(), p.message.clone())?;
    session.set_prekey_setup(p.setup_digest());
    let used = PreKeyUse {
        one_time: p.one_time_prekey_id,
        kem: p.kem_prekey_id,
        base_key: p.base_key,
    };
    Ok((session, plaintext, used))
}

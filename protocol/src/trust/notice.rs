//! Signed notices: every notice is signed by its sender's staff device; high-risk
//! categories and notices to all clients also carry a staff quorum. A client shows who
//! signed and co-signed, or a loud "NOT AUTHENTICATED".
//!
//! [`SignedNotice::verify`] refuses, in order: content that does not hash to the signed
//! content hash; a notice dated later than `now_ms` plus [`MAX_CLOCK_SKEW_MS`]; a roster
//! version not in the chain or replaced before the notice was sent (its boundary,
//! [`RosterChain::valid_until`], is earlier than `sent_ms`); a sender not
//! listed as a staff device, or a bad sender signature; a notice addressed to another
//! client; co-signatures that are not needed or given twice, whose initiator is not the
//! sender, whose parameters are not exactly the notice digest, or that fail
//! [`verify_quorum`] (checked at `sent_ms`); and a missing co-signature bundle.

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::codec::{self, bytes_array};
use crate::crypto;
use crate::identity::{AccountId, IdentityKeyPair};
use crate::wire::{BoundedString, BoundedVec};

use super::approval::{verify_quorum, ApprovalBundle, QuorumProof, SignerRef};
use super::error::{Digest, TrustError};
use super::roster::{Operation, RosterChain, StaffRole};
use super::{
    Canon, MAX_CLOCK_SKEW_MS, MAX_SEGMENT_LEN, MAX_SIGNED_NOTICE_LEN, NOTICE_CONTENT_LABEL,
    NOTICE_LABEL, NOTICE_SIGN_LABEL,
};

/// What a notice is about. Codes (signed bytes): general 1, payment instruction 2, deposit
/// instruction 3, address change 4, security change 5. All but `general` are high-risk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeCategory {
    /// Information with no instruction attached.
    General = 1,
    /// A payment instruction.
    PaymentInstruction = 2,
    /// A deposit instruction (for example a deposit address).
    DepositInstruction = 3,
    /// A change of a postal, bank or wallet address.
    AddressChange = 4,
    /// A change to the account's security (devices, limits, contacts).
    SecurityChange = 5,
}

impl NoticeCategory {
    /// The code in signed bytes.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The risk class.
    pub fn risk(self) -> NoticeRisk {
        match self {
            Self::General => NoticeRisk::Normal,
            _ => NoticeRisk::HighRisk,
        }
    }
}

/// Risk class of a notice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NoticeRisk {
    /// Signed by the sender.
    Normal,
    /// Signed by the sender and co-signed by an [`Operation::HighRiskNotice`] quorum.
    HighRisk,
}

/// Who a notice is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum NoticeAudience {
    /// One client. Code 1.
    Client(AccountId),
    /// A named segment of clients. Code 2. There is no signed membership of segments, so
    /// it needs the [`Operation::NoticeToAllClients`] quorum like a notice to all clients
    /// ([`NoticeHeader::required_operations`]).
    Segment(BoundedString<MAX_SEGMENT_LEN>),
    /// All clients (needs an [`Operation::NoticeToAllClients`] quorum). Code 3.
    AllClients,
}

/// The signed part of a notice. The content itself (title and body) travels beside it,
/// end-to-end encrypted, and is bound by `content_hash`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeHeader {
    /// 16 random bytes.
    #[serde(with = "bytes_array")]
    pub notice_id: [u8; 16],
    /// The category.
    pub category: NoticeCategory,
    /// The audience.
    pub audience: NoticeAudience,
    /// `SHA-256("Sealpost_NoticeContent_v1" || content)`.
    #[serde(with = "bytes_array")]
    pub content_hash: [u8; 32],
    /// Sender's clock, ms since the Unix epoch.
    pub sent_ms: u64,
    /// The sending staff device.
    pub sender: SignerRef,
    /// The roster version the sender signs under.
    pub roster_version: u64,
}

/// `SHA-256("Sealpost_NoticeContent_v1" || content)`.
pub fn content_hash(content: &[u8]) -> [u8; 32] {
    crypto::sha256(&[NOTICE_CONTENT_LABEL, content])
}

impl NoticeHeader {
    /// A header for `content` with a fresh notice id.
    pub fn new<R: RngCore + CryptoRng>(
        category: NoticeCategory,
        audience: NoticeAudience,
        content: &[u8],
        sent_ms: u64,
        sender: SignerRef,
        roster_version: u64,
        rng: &mut R,
    ) -> Self {
        let mut notice_id = [0u8; 16];
        rng.fill_bytes(&mut notice_id);
        Self {
            notice_id,
            category,
            audience,
            content_hash: content_hash(content),
            sent_ms,
            sender,
            roster_version,
        }
    }

    /// The hashed bytes (see the module documentation of [`crate::trust`]).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(NOTICE_LABEL);
        c.raw(&self.notice_id).u8(self.category.code());
        match &self.audience {
            NoticeAudience::Client(a) => c.u8(1).account(a),
            NoticeAudience::Segment(s) => c.u8(2).var(s.as_str().as_bytes()),
            NoticeAudience::AllClients => c.u8(3),
        };
        c.raw(&self.content_hash)
            .u64(self.sent_ms)
            .signer(&self.sender)
            .u64(self.roster_version);
        c.into_bytes()
    }

    /// `SHA-256(canonical_bytes)`: what the sender signs and co-signers approve.
    pub fn digest(&self) -> Digest {
        Digest(crypto::sha256(&[&self.canonical_bytes()]))
    }

    /// The quorum operations this notice needs: [`Operation::HighRiskNotice`] for a
    /// high-risk category, [`Operation::NoticeToAllClients`] for all clients or a segment
    /// (both if both).
    ///
    /// A segment is a name only: nothing signed says which clients belong to it, so no
    /// client can check that it is one of them, and one signed segment notice could be
    /// delivered to any number of clients. It is therefore a notice to many clients and
    /// needs the same quorum as a notice to all of them.
    pub fn required_operations(&self) -> Vec<Operation> {
        let mut ops = Vec::with_capacity(2);
        if self.category.risk() == NoticeRisk::HighRisk {
            ops.push(Operation::HighRiskNotice);
        }
        if matches!(
            self.audience,
            NoticeAudience::AllClients | NoticeAudience::Segment(_)
        ) {
            ops.push(Operation::NoticeToAllClients);
        }
        ops
    }
}

fn sign_message(digest: &Digest) -> Vec<u8> {
    let mut m = Vec::with_capacity(NOTICE_SIGN_LABEL.len() + 32);
    m.extend_from_slice(NOTICE_SIGN_LABEL);
    m.extend_from_slice(&digest.0);
    m
}

/// A notice header, its sender's signature and the quorum co-signatures it needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedNotice {
    /// The signed header.
    pub header: NoticeHeader,
    /// The sender device's signature over `"Sealpost_NoticeSign_v1" || notice_digest`.
    #[serde(with = "bytes_array")]
    pub signature: [u8; 64],
    /// One bundle per required operation, parameters = notice digest.
    pub cosignatures: BoundedVec<ApprovalBundle, 2>,
}

impl SignedNotice {
    /// Sign `header` with the sender's device (`identity` must be `header.sender.device`).
    pub fn sign(header: NoticeHeader, identity: &IdentityKeyPair) -> Result<Self, TrustError> {
        if identity.device_id() != header.sender.device {
            return Err(TrustError::BadSignature {
                what: "notice sender",
                signer: header.sender.to_string(),
            });
        }
        let signature = identity.sign(&sign_message(&header.digest()));
        Ok(Self {
            header,
            signature,
            cosignatures: super::empty_list(),
        })
    }

    /// Attach a co-signature bundle.
    pub fn add_cosignatures(&mut self, bundle: ApprovalBundle) -> Result<(), TrustError> {
        let mut v = std::mem::replace(&mut self.cosignatures, super::empty_list()).into_inner();
        v.push(bundle);
        let len = v.len();
        self.cosignatures = BoundedVec::new(v).map_err(|_| TrustError::TooMany {
            what: "notice co-signature bundles",
            got: len,
            max: 2,
        })?;
        Ok(())
    }

    /// The relay's arrival rule: every co-signature bundle must be unexpired at
    /// `arrival_ms` ([`ApprovalBundle::check_arrival`]), so a co-signed notice cannot be
    /// sent again by its sender alone once its approvals have expired.
    pub fn check_arrival(&self, arrival_ms: u64) -> Result<(), TrustError> {
        self.cosignatures
            .as_slice()
            .iter()
            .try_for_each(|b| b.check_arrival(arrival_ms))
    }

    /// CBOR, at most [`MAX_SIGNED_NOTICE_LEN`] bytes.
    pub fn to_cbor(&self) -> Result<Vec<u8>, TrustError> {
        Ok(codec::encode("signed notice", self, MAX_SIGNED_NOTICE_LEN)?)
    }

    /// Decode (bounded; run [`SignedNotice::verify`] before showing it as authentic).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, TrustError> {
        Ok(codec::decode(
            "signed notice",
            bytes,
            MAX_SIGNED_NOTICE_LEN,
        )?)
    }

    /// Verify against the roster chain (rules in the module documentation). `content` is
    /// the decrypted notice content; `me` the checking client's account (None for staff
    /// or the relay, which skip the addressee check).
    pub fn verify(
        &self,
        chain: &RosterChain,
        content: &[u8],
        me: Option<&AccountId>,
        now_ms: u64,
    ) -> Result<VerifiedNotice, TrustError> {
        if content_hash(content) != self.header.content_hash {
            return Err(TrustError::NoticeContentMismatch);
        }
        self.verify_header(chain, me, now_ms)
    }

    /// Everything [`SignedNotice::verify`] checks except the content hash: what the
    /// relay, which never sees the content, checks before it accepts a notice.
    pub fn verify_header(
        &self,
        chain: &RosterChain,
        me: Option<&AccountId>,
        now_ms: u64,
    ) -> Result<VerifiedNotice, TrustError> {
        let h = &self.header;
        if h.sent_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(TrustError::FromTheFuture {
                what: "notice",
                got_ms: h.sent_ms,
                now_ms,
            });
        }
        let roster = chain.roster_for(h.roster_version, h.sent_ms)?;
        let member = roster.member(&h.sender.account);
        let key = member.and_then(|m| m.device(&h.sender.device));
        let (Some(member), Some(key)) = (member, key) else {
            return Err(TrustError::NoticeSenderNotStaff {
                account: h.sender.account.clone(),
                device: h.sender.device,
            });
        };
        let digest = h.digest();
        key.verify(&sign_message(&digest), &self.signature)
            .map_err(|_| TrustError::BadSignature {
                what: "notice sender",
                signer: h.sender.to_string(),
            })?;
        if let (NoticeAudience::Client(addressed), Some(me)) = (&h.audience, me) {
            if addressed != me {
                return Err(TrustError::NoticeNotForRecipient {
                    addressed: addressed.clone(),
                    me: me.clone(),
                });
            }
        }
        let required = h.required_operations();
        let mut proofs: Vec<QuorumProof> = Vec::with_capacity(required.len());
        for bundle in self.cosignatures.as_slice() {
            let op = bundle.request.operation;
            if !required.contains(&op) || proofs.iter().any(|p| p.operation == op) {
                return Err(TrustError::UnexpectedCosignatures(op));
            }
            if bundle.request.initiator != h.sender {
                return Err(TrustError::ParametersMismatch {
                    what: "notice (the co-signed initiator is not its sender)",
                });
            }
            if bundle.request.parameters.as_slice() != digest.0.as_slice() {
                return Err(TrustError::ParametersMismatch { what: "notice" });
            }
            proofs.push(verify_quorum(roster, bundle, h.sent_ms)?);
        }
        if let Some(op) = required
            .iter()
            .find(|op| !proofs.iter().any(|p| p.operation == **op))
        {
            return Err(TrustError::MissingCosignatures(*op));
        }
        Ok(VerifiedNotice {
            digest,
            category: h.category,
            risk: h.category.risk(),
            audience: h.audience.clone(),
            sender: h.sender.clone(),
            sender_role: member.role,
            sent_ms: h.sent_ms,
            roster_version: h.roster_version,
            roster_superseded: h.roster_version < chain.head().version(),
            cosignatures: proofs,
        })
    }
}

/// A notice that verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedNotice {
    /// The notice digest.
    pub digest: Digest,
    /// The category.
    pub category: NoticeCategory,
    /// Its risk class.
    pub risk: NoticeRisk,
    /// The audience.
    pub audience: NoticeAudience,
    /// Who signed it.
    pub sender: SignerRef,
    /// The sender's role.
    pub sender_role: StaffRole,
    /// When it was sent (sender's clock).
    pub sent_ms: u64,
    /// The roster version it was signed under.
    pub roster_version: u64,
    /// Whether that roster has since been replaced (valid when sent; show it).
    pub roster_superseded: bool,
    /// Who co-signed, per operation.
    pub cosignatures: Vec<QuorumProof>,
}

/// What a client shows for a notice: never a quiet failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NoticeVerdict {
    /// Verified: show who signed and co-signed.
    Authenticated(VerifiedNotice),
    /// Not verified: show the notice, if at all, under a loud warning.
    NotAuthenticated(TrustError),
}

impl NoticeVerdict {
    /// The verdict of [`SignedNotice::verify`].
    pub fn from_result(r: Result<VerifiedNotice, TrustError>) -> Self {
        match r {
            Ok(v) => Self::Authenticated(v),
            Err(e) => Self::NotAuthenticated(e),
        }
    }

    /// Whether the notice verified.
    pub fn is_authenticated(&self) -> bool {
        matches!(self, Self::Authenticated(_))
    }
}

impl fmt::Display for NoticeVerdict {
    /// One line for the user, for example `Signed by ops.alice (operations); co-signed by
    /// sec.bob (security), comp.carol (compliance) [high-risk]`, or
    /// `⚠ NOT AUTHENTICATED: do not act on this notice (<reason>)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAuthenticated(e) => {
                write!(f, "⚠ NOT AUTHENTICATED: do not act on this notice ({e})")
            }
            Self::Authenticated(v) => {
                write!(f, "Signed by {} ({})", v.sender.account, v.sender_role)?;
                let cosigners: Vec<String> = v
                    .cosignatures
                    .iter()
                    .flat_map(|p| p.approvers.iter())
                    .map(|(s, role)| format!("{} ({role})", s.account))
                    .collect();
                if !cosigners.is_empty() {
                    write!(f, "; co-signed by {}", cosigners.join(", "))?;
                }
                if v.risk == NoticeRisk::HighRisk {
                    f.write_str(" [high-risk]")?;
                }
                if v.roster_superseded {
                    f.write_str(" [signed under a roster since replaced]")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::testutil::{acct, Org, HOUR, T0};

    const CONTENT: &[u8] = b"Your deposit address changes on 1 March.";

    fn notice(org: &mut Org, category: NoticeCategory, audience: NoticeAudience) -> SignedNotice {
        let sender = org.staff[0].signer(0);
        let h = NoticeHeader::new(
            category,
            audience,
            CONTENT,
            T0 + HOUR,
            sender,
            1,
            &mut org.rng,
        );
        SignedNotice::sign(h, &org.staff[0].devices[0]).unwrap()
    }

    fn cosign(
        org: &mut Org,
        n: &SignedNotice,
        op: Operation,
        approvers: &[(usize, usize)],
    ) -> ApprovalBundle {
        org.bundle(
            op,
            n.header.digest().0.to_vec(),
            1,
            T0 + 2 * HOUR,
            0,
            approvers,
        )
    }

    #[test]
    fn a_normal_notice_shows_its_signer() {
        let mut org = Org::new(60);
        let chain = org.chain();
        let n = notice(
            &mut org,
            NoticeCategory::General,
            NoticeAudience::Client(acct("client.zoe")),
        );
        let v = n
            .verify(&chain, CONTENT, Some(&acct("client.zoe")), T0 + HOUR)
            .unwrap();
        assert_eq!(v.risk, NoticeRisk::Normal);
        assert_eq!(v.sender_role, StaffRole::Operations);
        let shown = NoticeVerdict::from_result(Ok(v)).to_string();
        assert_eq!(shown, "Signed by ops.alice (operations)");
        let back = SignedNotice::from_cbor(&n.to_cbor().unwrap()).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn a_high_risk_notice_needs_the_quorum() {
        let mut org = Org::new(61);
        let chain = org.chain();
        let zoe = acct("client.zoe");
        let mut n = notice(
            &mut org,
            NoticeCategory::DepositInstruction,
            NoticeAudience::Client(zoe.clone()),
        );
        let r = n.verify(&chain, CONTENT, Some(&zoe), T0 + HOUR);
        assert_eq!(
            r.clone().err(),
            Some(TrustError::MissingCosignatures(Operation::HighRiskNotice))
        );
        let shown = NoticeVerdict::from_result(r).to_string();
        assert!(shown.starts_with("⚠ NOT AUTHENTICATED"), "{shown}");

        // One staff member alone.
        let mut alone = n.clone();
        let one = cosign(&mut org, &n, Operation::HighRiskNotice, &[(1, 0)]);
        alone.add_cosignatures(one).unwrap();
        assert!(matches!(
            alone.verify(&chain, CONTENT, Some(&zoe), T0 + HOUR),
            Err(TrustError::QuorumNotReached {
                needed: 2,
                got: 1,
                ..
            })
        ));
        // The sender approving her own notice.
        let mut own = n.clone();
        let b = cosign(&mut org, &n, Operation::HighRiskNotice, &[(1, 0), (0, 1)]);
        own.add_cosignatures(b).unwrap();
        assert!(matches!(
            own.verify(&chain, CONTENT, Some(&zoe), T0 + HOUR),
            Err(TrustError::InitiatorApproval { .. })
        ));
        // A quorum for another notice.
        let other = notice(
            &mut org,
            NoticeCategory::DepositInstruction,
            NoticeAudience::Client(zoe.clone()),
        );
        let mut stolen = n.clone();
        let b = cosign(
            &mut org,
            &other,
            Operation::HighRiskNotice,
            &[(1, 0), (2, 0)],
        );
        stolen.add_cosignatures(b).unwrap();
        assert_eq!(
            stolen.verify(&chain, CONTENT, Some(&zoe), T0 + HOUR).err(),
            Some(TrustError::ParametersMismatch { what: "notice" })
        );
        // The quorum.
        let b = cosign(&mut org, &n, Operation::HighRiskNotice, &[(1, 0), (2, 0)]);
        n.add_cosignatures(b).unwrap();
        let v = n.verify(&chain, CONTENT, Some(&zoe), T0 + HOUR).unwrap();
        assert_eq!(v.risk, NoticeRisk::HighRisk);
        assert_eq!(
            NoticeVerdict::from_result(Ok(v)).to_string(),
            "Signed by ops.alice (operations); co-signed by comp.carol (compliance), sec.bob (security) [high-risk]"
        );
        // A co-signature bundle it does not need.
        let extra = cosign(&mut org, &n, Operation::NoticeToAllClients, &[(2, 0)]);
        n.add_cosignatures(extra).unwrap();
        assert_eq!(
            n.verify(&chain, CONTENT, Some(&zoe), T0 + HOUR).err(),
            Some(TrustError::UnexpectedCosignatures(
                Operation::NoticeToAllClients
            ))
        );
    }

    #[test]
    fn a_high_risk_notice_to_all_clients_needs_both_quorums() {
        let mut org = Org::new(62);
        let chain = org.chain();
        let mut n = notice(
            &mut org,
            NoticeCategory::SecurityChange,
            NoticeAudience::AllClients,
        );
        let b = cosign(&mut org, &n, Operation::HighRiskNotice, &[(1, 0), (2, 0)]);
        n.add_cosignatures(b).unwrap();
        assert_eq!(
            n.verify(&chain, CONTENT, None, T0 + HOUR).err(),
            Some(TrustError::MissingCosignatures(
                Operation::NoticeToAllClients
            ))
        );
        // Advisors may not co-sign notices to all clients.
        let mut wrong_role = n.clone();
        let b = cosign(&mut org, &n, Operation::NoticeToAllClients, &[(3, 0)]);
        wrong_role.add_cosignatures(b).unwrap();
        assert!(matches!(
            wrong_role.verify(&chain, CONTENT, None, T0 + HOUR),
            Err(TrustError::RoleNotEligible {
                role: StaffRole::Advisor,
                ..
            })
        ));
        let b = cosign(&mut org, &n, Operation::NoticeToAllClients, &[(2, 0)]);
        n.add_cosignatures(b).unwrap();
        let v = n.verify(&chain, CONTENT, None, T0 + HOUR).unwrap();
        assert_eq!(v.cosignatures.len(), 2);
        // The notice verifies at its signed date for ever, but the relay accepts it only
        // while both bundles are unexpired on arrival.
        assert!(n.verify(&chain, CONTENT, None, T0 + 30 * 24 * HOUR).is_ok());
        assert_eq!(n.check_arrival(T0 + 2 * HOUR), Ok(()));
        assert!(matches!(
            n.check_arrival(T0 + 2 * HOUR + 1),
            Err(TrustError::ExpiredOnArrival {
                expires_ms,
                ..
            }) if expires_ms == T0 + 2 * HOUR
        ));
        // A notice without co-signatures has nothing to expire.
        let plain = notice(
            &mut org,
            NoticeCategory::General,
            NoticeAudience::Client(acct("client.zoe")),
        );
        assert_eq!(plain.check_arrival(u64::MAX), Ok(()));
    }

    /// A segment names no members anyone can check, so a segment notice needs the
    /// all-clients quorum, whoever reads it.
    #[test]
    fn a_segment_notice_needs_the_all_clients_quorum() {
        let mut org = Org::new(64);
        let chain = org.chain();
        let zoe = acct("client.zoe");
        let segment = NoticeAudience::Segment(BoundedString::truncating("eu-retail"));
        let mut n = notice(&mut org, NoticeCategory::General, segment.clone());
        assert_eq!(
            n.header.required_operations(),
            vec![Operation::NoticeToAllClients]
        );
        for me in [None, Some(&zoe)] {
            assert_eq!(
                n.verify(&chain, CONTENT, me, T0 + HOUR).err(),
                Some(TrustError::MissingCosignatures(
                    Operation::NoticeToAllClients
                ))
            );
        }
        let b = cosign(&mut org, &n, Operation::NoticeToAllClients, &[(2, 0)]);
        n.add_cosignatures(b).unwrap();
        let v = n.verify(&chain, CONTENT, Some(&zoe), T0 + HOUR).unwrap();
        assert_eq!(v.audience, segment);
        assert_eq!(v.cosignatures[0].operation, Operation::NoticeToAllClients);
        // High-risk to a segment: both quorums.
        let high = notice(&mut org, NoticeCategory::PaymentInstruction, segment);
        assert_eq!(
            high.header.required_operations(),
            vec![Operation::HighRiskNotice, Operation::NoticeToAllClients]
        );
    }

    #[test]
    fn tampered_misaddressed_or_unsigned_notices_are_not_authenticated() {
        let mut org = Org::new(63);
        let chain = org.chain();
        let zoe = acct("client.zoe");
        let n = notice(
            &mut org,
            NoticeCategory::General,
            NoticeAudience::Client(zoe.clone()),
        );
        assert_eq!(
            n.verify(&chain, b"Send your coins to ...", Some(&zoe), T0 + HOUR)
                .err(),
            Some(TrustError::NoticeContentMismatch)
        );
        assert!(matches!(
            n.verify(&chain, CONTENT, Some(&acct("client.other")), T0 + HOUR),
            Err(TrustError::NoticeNotForRecipient { .. })
        ));
        let mut forged = n.clone();
        forged.header.category = NoticeCategory::General;
        forged.header.sent_ms += 1;
        assert!(matches!(
            forged.verify(&chain, CONTENT, Some(&zoe), T0 + HOUR),
            Err(TrustError::BadSignature {
                what: "notice sender",
                ..
            })
        ));
        // Signed by someone who is not staff.
        let outsider = IdentityKeyPair::generate(&mut org.rng);
        let h = NoticeHeader::new(
            NoticeCategory::General,
            NoticeAudience::Client(zoe.clone()),
            CONTENT,
            T0 + HOUR,
            SignerRef::new(acct("ops.alice"), outsider.device_id()),
            1,
            &mut org.rng,
        );
        let fake = SignedNotice::sign(h, &outsider).unwrap();
        assert!(matches!(
            fake.verify(&chain, CONTENT, Some(&zoe), T0 + HOUR),
            Err(TrustError::NoticeSenderNotStaff { .. })
        ));
        // Under a roster version the client does not know.
        let mut h = n.header.clone();
        h.roster_version = 7;
        let unknown = SignedNotice::sign(h, &org.staff[0].devices[0]).unwrap();
        assert!(matches!(
            unknown.verify(&chain, CONTENT, Some(&zoe), T0 + HOUR),
            Err(TrustError::RosterVersionUnknown {
                version: 7,
                head: 1
            })
        ));
        // From the future.
        assert!(matches!(
            n.verify(&chain, CONTENT, Some(&zoe), T0),
            Err(TrustError::FromTheFuture { .. })
        ));
    }
}

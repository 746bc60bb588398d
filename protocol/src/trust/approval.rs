//! Approvals: staff signatures over the hash of exactly what is approved, and the quorum
//! check every relay and client runs on them.

use std::collections::BTreeSet;
use std::fmt;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::codec::bytes_array;
use crate::crypto;
use crate::identity::{AccountId, DeviceId, IdentityKeyPair};
use crate::wire::BoundedVec;

use super::error::{Digest, TrustError};
use super::roster::{Operation, Roster, StaffRole};
use super::{
    Canon, APPROVAL_INITIATE_LABEL, APPROVAL_REQUEST_LABEL, APPROVAL_SIGN_LABEL, MAX_APPROVALS,
    MAX_APPROVAL_PARAMETERS_LEN, MAX_APPROVAL_VALIDITY_MS,
};

/// A device of an account: who initiated or approved. Signed bytes:
/// `u16 len || account || device id (16)`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerRef {
    /// The account.
    pub account: AccountId,
    /// The device.
    pub device: DeviceId,
}

impl SignerRef {
    /// The signer `account`/`device`.
    pub fn new(account: AccountId, device: DeviceId) -> Self {
        Self { account, device }
    }
}

impl fmt::Display for SignerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.account, self.device)
    }
}

impl fmt::Debug for SignerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerRef({self})")
    }
}

/// The canonical parameters of an approved operation: at most
/// [`MAX_APPROVAL_PARAMETERS_LEN`] bytes, a CBOR byte string on the wire. For the
/// operations this crate defines they are a 32-byte hash (roster hash, device-log entry
/// hash, notice digest).
#[derive(Clone, PartialEq, Eq)]
pub struct Parameters(Vec<u8>);

impl Parameters {
    /// Wrap `bytes`, refusing more than the bound.
    pub fn new(bytes: Vec<u8>) -> Result<Self, TrustError> {
        if bytes.len() > MAX_APPROVAL_PARAMETERS_LEN {
            return Err(TrustError::TooMany {
                what: "approval parameters (bytes)",
                got: bytes.len(),
                max: MAX_APPROVAL_PARAMETERS_LEN,
            });
        }
        Ok(Self(bytes))
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Parameters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Parameters({})", hex::encode(&self.0))
    }
}

impl Serialize for Parameters {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Parameters {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let b = serde_bytes::ByteBuf::deserialize(d)?;
        Parameters::new(b.into_vec())
            .map_err(|_| serde::de::Error::custom("approval parameters: too long"))
    }
}

/// What is to be approved. Its [`ApprovalRequest::digest`] is what every approval signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRequest {
    /// The operation.
    pub operation: Operation,
    /// Its canonical parameters.
    pub parameters: Parameters,
    /// The roster version whose policy and staff decide the quorum.
    pub roster_version: u64,
    /// 16 random bytes chosen by the initiator, so two requests never share a digest.
    #[serde(with = "bytes_array")]
    pub request_id: [u8; 16],
    /// After this time (ms since the Unix epoch) no approval of this request counts.
    pub expires_ms: u64,
    /// The staff device that initiated it (it signs the request and never counts).
    pub initiator: SignerRef,
}

impl ApprovalRequest {
    /// A request with a fresh random id.
    pub fn new<R: RngCore + CryptoRng>(
        operation: Operation,
        parameters: Vec<u8>,
        roster_version: u64,
        expires_ms: u64,
        initiator: SignerRef,
        rng: &mut R,
    ) -> Result<Self, TrustError> {
        let mut request_id = [0u8; 16];
        rng.fill_bytes(&mut request_id);
        Ok(Self {
            operation,
            parameters: Parameters::new(parameters)?,
            roster_version,
            request_id,
            expires_ms,
            initiator,
        })
    }

    /// The hashed bytes: `"Sealpost_ApprovalRequest_v1" || u8 operation ||
    /// u16 len || parameters || u64 roster_version || request_id (16) || u64 expires_ms ||
    /// u16 len || initiator account || initiator device (16)`, integers big-endian.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut c = Canon::new(APPROVAL_REQUEST_LABEL);
        c.u8(self.operation.code())
            .var(self.parameters.as_slice())
            .u64(self.roster_version)
            .raw(&self.request_id)
            .u64(self.expires_ms)
            .signer(&self.initiator);
        c.into_bytes()
    }

    /// `SHA-256(canonical_bytes)`.
    pub fn digest(&self) -> Digest {
        Digest(crypto::sha256(&[&self.canonical_bytes()]))
    }
}

fn signed_message(label: &[u8], digest: &Digest) -> Vec<u8> {
    let mut m = Vec::with_capacity(label.len() + 32);
    m.extend_from_slice(label);
    m.extend_from_slice(&digest.0);
    m
}

/// One staff device's approval: its signature over
/// `"Sealpost_Approval_v1" || request digest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Who approves.
    pub approver: SignerRef,
    /// The digest of the request approved (so a mismatch is reported as such, not as a
    /// bad signature).
    #[serde(with = "bytes_array")]
    pub request: [u8; 32],
    /// The signature.
    #[serde(with = "bytes_array")]
    pub signature: [u8; 64],
}

impl Approval {
    /// Approve `request` as `account` with this device's identity key.
    pub fn sign(request: &ApprovalRequest, account: AccountId, identity: &IdentityKeyPair) -> Self {
        let digest = request.digest();
        Self {
            approver: SignerRef::new(account, identity.device_id()),
            request: digest.0,
            signature: identity.sign(&signed_message(APPROVAL_SIGN_LABEL, &digest)),
        }
    }
}

/// A request, its initiator's signature (over `"Sealpost_ApprovalInitiate_v1" || digest`)
/// and the approvals gathered so far: what travels with a roster change, a quorum-carried
/// device-log entry or a co-signed notice.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalBundle {
    /// The request.
    pub request: ApprovalRequest,
    /// The initiator's signature.
    #[serde(with = "bytes_array")]
    pub initiator_signature: [u8; 64],
    /// The approvals.
    pub approvals: BoundedVec<Approval, MAX_APPROVALS>,
}

impl ApprovalBundle {
    /// Sign `request` as its initiator. `identity` must be the initiator device.
    pub fn initiate(
        request: ApprovalRequest,
        identity: &IdentityKeyPair,
    ) -> Result<Self, TrustError> {
        if identity.device_id() != request.initiator.device {
            return Err(TrustError::BadSignature {
                what: "approval initiator",
                signer: request.initiator.to_string(),
            });
        }
        let initiator_signature =
            identity.sign(&signed_message(APPROVAL_INITIATE_LABEL, &request.digest()));
        Ok(Self {
            request,
            initiator_signature,
            approvals: super::empty_list(),
        })
    }

    /// The relay's arrival rule (docs/PROTOCOL.md §19.5): an operation carried by these
    /// approvals (a co-signed notice, a roster version, a recovery or unfreeze entry) is
    /// accepted only while they are unexpired at `arrival_ms`, the relay's own clock when
    /// the operation reaches it. [`verify_quorum`] checks the approvals at the date the
    /// object was signed, which its signers choose; this bounds how long after that an
    /// approved operation can still be carried out. Clients cannot know when an object
    /// reached the relay, so they verify at the signed date only.
    pub fn check_arrival(&self, arrival_ms: u64) -> Result<(), TrustError> {
        if arrival_ms > self.request.expires_ms {
            return Err(TrustError::ExpiredOnArrival {
                operation: self.request.operation,
                expires_ms: self.request.expires_ms,
                arrival_ms,
            });
        }
        Ok(())
    }

    /// Add an approval (checked only by [`verify_quorum`]).
    pub fn push(&mut self, approval: Approval) -> Result<(), TrustError> {
        let mut v = std::mem::replace(&mut self.approvals, super::empty_list()).into_inner();
        v.push(approval);
        let len = v.len();
        self.approvals = BoundedVec::new(v).map_err(|_| TrustError::TooMany {
            what: "approvals",
            got: len,
            max: MAX_APPROVALS,
        })?;
        Ok(())
    }
}

/// The result of a successful [`verify_quorum`]: which staff accounts counted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumProof {
    /// The operation approved.
    pub operation: Operation,
    /// The roster version it was checked against.
    pub roster_version: u64,
    /// The request digest.
    pub request: Digest,
    /// The initiator (who does not count).
    pub initiator: SignerRef,
    /// The approvers that counted, one per account, sorted by account, with their roles.
    pub approvers: Vec<(SignerRef, StaffRole)>,
}

impl QuorumProof {
    /// The accounts that counted.
    pub fn accounts(&self) -> Vec<&AccountId> {
        self.approvers.iter().map(|(s, _)| &s.account).collect()
    }
}

/// Check `bundle` against `roster` at time `now_ms` (ms since the Unix epoch).
///
/// Strict: any approval that does not count makes the whole check fail with a typed
/// error, so a well-formed bundle never carries dead weight and a bad one is explained.
/// In order, it refuses:
///
/// 1. a request for another roster version ([`TrustError::RosterVersionMismatch`]);
/// 2. an expired request, `now_ms > expires_ms` ([`TrustError::Expired`]), or one expiring
///    more than [`MAX_APPROVAL_VALIDITY_MS`] after `now_ms` ([`TrustError::ExpiryTooFar`]);
/// 3. an initiator not listed as a staff device, or whose signature fails;
/// 4. per approval: one naming another request digest, one from the initiator's account
///    (any of its devices), one from a device not listed under the named account, one
///    whose role the operation's quorum does not accept, a bad signature, and a second
///    approval from an account already counted (staff count per account, not per device,
///    so one person with two devices is one vote);
/// 5. fewer counted accounts than the threshold ([`TrustError::QuorumNotReached`]).
pub fn verify_quorum(
    roster: &Roster,
    bundle: &ApprovalBundle,
    now_ms: u64,
) -> Result<QuorumProof, TrustError> {
    let req = &bundle.request;
    if req.roster_version != roster.version() {
        return Err(TrustError::RosterVersionMismatch {
            expected: roster.version(),
            got: req.roster_version,
        });
    }
    if now_ms > req.expires_ms {
        return Err(TrustError::Expired {
            expires_ms: req.expires_ms,
            now_ms,
        });
    }
    let max_ms = now_ms.saturating_add(MAX_APPROVAL_VALIDITY_MS);
    if req.expires_ms > max_ms {
        return Err(TrustError::ExpiryTooFar {
            expires_ms: req.expires_ms,
            max_ms,
        });
    }
    let digest = req.digest();
    let initiator_key = roster
        .staff_device(&req.initiator.account, &req.initiator.device)
        .ok_or_else(|| TrustError::InitiatorNotInRoster {
            account: req.initiator.account.clone(),
            device: req.initiator.device,
        })?;
    initiator_key
        .verify(
            &signed_message(APPROVAL_INITIATE_LABEL, &digest),
            &bundle.initiator_signature,
        )
        .map_err(|_| TrustError::BadSignature {
            what: "approval initiator",
            signer: req.initiator.to_string(),
        })?;

    let quorum = roster.policy().quorum(req.operation);
    let message = signed_message(APPROVAL_SIGN_LABEL, &digest);
    let mut counted: BTreeSet<&AccountId> = BTreeSet::new();
    let mut approvers = Vec::new();
    for a in bundle.approvals.as_slice() {
        if a.request != digest.0 {
            return Err(TrustError::ApprovalForOtherRequest {
                approver: a.approver.account.clone(),
                expected: digest,
                got: Digest(a.request),
            });
        }
        if a.approver.account == req.initiator.account {
            return Err(TrustError::InitiatorApproval {
                account: a.approver.account.clone(),
            });
        }
        let member = roster.member(&a.approver.account);
        let key = member
            .and_then(|m| m.device(&a.approver.device))
            .ok_or_else(|| TrustError::ApproverNotInRoster {
                account: a.approver.account.clone(),
                device: a.approver.device,
            })?;
        let role = member
            .map(|m| m.role)
            .ok_or_else(|| TrustError::ApproverNotInRoster {
                account: a.approver.account.clone(),
                device: a.approver.device,
            })?;
        if !quorum.roles.contains(role) {
            return Err(TrustError::RoleNotEligible {
                account: a.approver.account.clone(),
                role,
                operation: req.operation,
            });
        }
        key.verify(&message, &a.signature)
            .map_err(|_| TrustError::BadSignature {
                what: "approval",
                signer: a.approver.to_string(),
            })?;
        if !counted.insert(&a.approver.account) {
            return Err(TrustError::DuplicateApprover {
                account: a.approver.account.clone(),
            });
        }
        approvers.push((a.approver.clone(), role));
    }
    if counted.len() < usize::from(quorum.threshold) {
        return Err(TrustError::QuorumNotReached {
            operation: req.operation,
            needed: quorum.threshold,
            got: counted.len(),
        });
    }
    approvers.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(QuorumProof {
        operation: req.operation,
        roster_version: roster.version(),
        request: digest,
        initiator: req.initiator.clone(),
        approvers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::testutil::{Org, HOUR, T0};

    const OP: Operation = Operation::AccountRecovery;

    fn params() -> Vec<u8> {
        vec![7u8; 32]
    }

    #[test]
    fn a_quorum_of_two_counts_distinct_accounts_and_names_them() {
        let mut org = Org::new(10);
        let roster = org.v1.roster.clone();
        // alice initiates; bob (security) and carol (compliance) approve.
        let b = org.bundle(OP, params(), 1, T0 + HOUR, 0, &[(1, 0), (2, 0)]);
        let proof = verify_quorum(&roster, &b, T0).unwrap();
        assert_eq!(proof.operation, OP);
        assert_eq!(proof.roster_version, 1);
        assert_eq!(proof.request, b.request.digest());
        assert_eq!(proof.initiator, org.staff[0].signer(0));
        let accounts: Vec<&str> = proof.accounts().iter().map(|a| a.as_str()).collect();
        assert_eq!(accounts, ["comp.carol", "sec.bob"]);
    }

    #[test]
    fn expired_approvals_are_rejected() {
        let mut org = Org::new(11);
        let roster = org.v1.roster.clone();
        let b = org.bundle(OP, params(), 1, T0 + HOUR, 0, &[(1, 0), (2, 0)]);
        assert!(
            verify_quorum(&roster, &b, T0 + HOUR).is_ok(),
            "valid up to expiry"
        );
        assert_eq!(
            verify_quorum(&roster, &b, T0 + HOUR + 1),
            Err(TrustError::Expired {
                expires_ms: T0 + HOUR,
                now_ms: T0 + HOUR + 1
            })
        );
    }

    #[test]
    fn a_request_valid_for_too_long_is_rejected() {
        let mut org = Org::new(12);
        let roster = org.v1.roster.clone();
        let far = T0 + MAX_APPROVAL_VALIDITY_MS + 1;
        let b = org.bundle(OP, params(), 1, far, 0, &[(1, 0), (2, 0)]);
        assert!(matches!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::ExpiryTooFar { .. })
        ));
    }

    #[test]
    fn approvals_for_other_content_are_rejected() {
        let mut org = Org::new(13);
        let roster = org.v1.roster.clone();
        let mut b = org.bundle(OP, params(), 1, T0 + HOUR, 0, &[(1, 0), (2, 0)]);
        // carol's approval comes from a request with other parameters.
        let other = org.bundle(OP, vec![8u8; 32], 1, T0 + HOUR, 0, &[(2, 0)]);
        let mut approvals = b.approvals.clone().into_inner();
        approvals[1] = other.approvals.as_slice()[0].clone();
        b.approvals = BoundedVec::new(approvals).unwrap();
        assert!(matches!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::ApprovalForOtherRequest { ref approver, .. }) if approver.as_str() == "comp.carol"
        ));
        // Same approval with its digest relabelled: the signature gives it away.
        let mut approvals = b.approvals.clone().into_inner();
        approvals[1].request = b.request.digest().0;
        b.approvals = BoundedVec::new(approvals).unwrap();
        assert!(matches!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::BadSignature {
                what: "approval",
                ..
            })
        ));
    }

    #[test]
    fn changing_any_approved_field_invalidates_the_bundle() {
        let mut org = Org::new(14);
        let roster = org.v1.roster.clone();
        let b = org.bundle(OP, params(), 1, T0 + HOUR, 0, &[(1, 0), (2, 0)]);
        let mut variants = Vec::new();
        let mut x = b.clone();
        x.request.parameters = Parameters::new(vec![9u8; 32]).unwrap();
        variants.push(x);
        let mut x = b.clone();
        x.request.expires_ms += 1;
        variants.push(x);
        let mut x = b.clone();
        x.request.request_id[0] ^= 1;
        variants.push(x);
        let mut x = b.clone();
        x.request.operation = Operation::Unfreeze;
        variants.push(x);
        for v in variants {
            // The initiator's signature no longer matches the changed request.
            assert!(matches!(
                verify_quorum(&roster, &v, T0),
                Err(TrustError::BadSignature {
                    what: "approval initiator",
                    ..
                })
            ));
        }
    }

    #[test]
    fn the_initiators_approval_never_counts() {
        let mut org = Org::new(15);
        let roster = org.v1.roster.clone();
        // alice initiates and approves from her second device.
        let b = org.bundle(OP, params(), 1, T0 + HOUR, 0, &[(1, 0), (0, 1)]);
        assert_eq!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::InitiatorApproval {
                account: org.staff[0].account.clone()
            })
        );
    }

    #[test]
    fn a_doubled_approval_counts_once_per_device_and_per_account() {
        let mut org = Org::new(16);
        let roster = org.v1.roster.clone();
        // bob approves twice with the same device.
        let b = org.bundle(OP, params(), 1, T0 + HOUR, 2, &[(1, 0), (1, 0)]);
        assert_eq!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::DuplicateApprover {
                account: org.staff[1].account.clone()
            })
        );
        // alice approves with both of her devices (erin initiates).
        let b = org.bundle(OP, params(), 1, T0 + HOUR, 4, &[(0, 0), (0, 1)]);
        assert_eq!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::DuplicateApprover {
                account: org.staff[0].account.clone()
            })
        );
    }

    #[test]
    fn approvals_from_a_role_the_policy_does_not_accept_are_rejected() {
        let mut org = Org::new(17);
        let roster = org.v1.roster.clone();
        // dave is an advisor; recovery accepts operations, compliance, security.
        let b = org.bundle(OP, params(), 1, T0 + HOUR, 0, &[(1, 0), (3, 0)]);
        assert_eq!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::RoleNotEligible {
                account: org.staff[3].account.clone(),
                role: StaffRole::Advisor,
                operation: OP,
            })
        );
    }

    #[test]
    fn a_single_staff_member_cannot_reach_a_quorum_of_two() {
        let mut org = Org::new(18);
        let roster = org.v1.roster.clone();
        let b = org.bundle(OP, params(), 0, T0 + HOUR, 0, &[(1, 0)]);
        // wrong version first
        assert_eq!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::RosterVersionMismatch {
                expected: 1,
                got: 0
            })
        );
        let b = org.bundle(OP, params(), 1, T0 + HOUR, 0, &[(1, 0)]);
        assert_eq!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::QuorumNotReached {
                operation: OP,
                needed: 2,
                got: 1
            })
        );
        let b = org.bundle(OP, params(), 1, T0 + HOUR, 0, &[]);
        assert!(matches!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::QuorumNotReached { got: 0, .. })
        ));
    }

    #[test]
    fn signers_outside_the_roster_are_rejected() {
        let mut org = Org::new(19);
        let roster = org.v1.roster.clone();
        let outsider = IdentityKeyPair::generate(&mut org.rng);
        let mut b = org.bundle(OP, params(), 1, T0 + HOUR, 0, &[(1, 0)]);
        // An outsider claims to be carol.
        b.push(Approval::sign(
            &b.request.clone(),
            org.staff[2].account.clone(),
            &outsider,
        ))
        .unwrap();
        assert_eq!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::ApproverNotInRoster {
                account: org.staff[2].account.clone(),
                device: outsider.device_id(),
            })
        );
        // An outsider as initiator.
        let request = ApprovalRequest::new(
            OP,
            params(),
            1,
            T0 + HOUR,
            SignerRef::new(
                crate::trust::testutil::acct("mallory"),
                outsider.device_id(),
            ),
            &mut org.rng,
        )
        .unwrap();
        let b = ApprovalBundle::initiate(request, &outsider).unwrap();
        assert!(matches!(
            verify_quorum(&roster, &b, T0),
            Err(TrustError::InitiatorNotInRoster { .. })
        ));
    }

    #[test]
    fn naming_someone_else_as_initiator_needs_their_signature() {
        let mut org = Org::new(20);
        let roster = org.v1.roster.clone();
        // bob names carol as initiator so that his own approval would count.
        let b = org.bundle(OP, params(), 1, T0 + HOUR, 2, &[(1, 0), (0, 0)]);
        let mut forged = b.clone();
        forged.initiator_signature = org.staff[1].devices[0].sign(b"anything");
        assert!(matches!(
            verify_quorum(&roster, &forged, T0),
            Err(TrustError::BadSignature {
                what: "approval initiator",
                ..
            })
        ));
        assert!(ApprovalBundle::initiate(b.request.clone(), &org.staff[1].devices[0]).is_err());
        assert!(verify_quorum(&roster, &b, T0).is_ok());
    }

    #[test]
    fn request_bytes_follow_the_documented_layout() {
        let mut org = Org::new(21);
        let init = org.staff[0].signer(0);
        let r =
            ApprovalRequest::new(OP, vec![1, 2, 3], 9, 0x0102, init.clone(), &mut org.rng).unwrap();
        let mut want = b"Sealpost_ApprovalRequest_v1".to_vec();
        want.push(1);
        want.extend_from_slice(&[0, 3, 1, 2, 3]);
        want.extend_from_slice(&9u64.to_be_bytes());
        want.extend_from_slice(&r.request_id);
        want.extend_from_slice(&0x0102u64.to_be_bytes());
        want.extend_from_slice(&[0, 9]);
        want.extend_from_slice(b"ops.alice");
        want.extend_from_slice(&init.device.0);
        assert_eq!(r.canonical_bytes(), want);
        assert_eq!(r.digest().0, crypto::sha256(&[&want]));
    }

    #[test]
    fn bundles_round_trip_through_cbor_and_bounds_hold() {
        let mut org = Org::new(22);
        let b = org.bundle(OP, params(), 1, T0 + HOUR, 0, &[(1, 0), (2, 0)]);
        let bytes = crate::codec::encode("bundle", &b, 64 * 1024).unwrap();
        let back: ApprovalBundle = crate::codec::decode("bundle", &bytes, 64 * 1024).unwrap();
        assert_eq!(back, b);
        assert!(Parameters::new(vec![0; MAX_APPROVAL_PARAMETERS_LEN + 1]).is_err());
        let mut full = b.clone();
        for _ in 0..(MAX_APPROVALS - 2) {
            full.push(b.approvals.as_slice()[0].clone()).unwrap();
        }
        assert!(matches!(
            full.push(b.approvals.as_slice()[0].clone()),
            Err(TrustError::TooMany { .. })
        ));
    }
}

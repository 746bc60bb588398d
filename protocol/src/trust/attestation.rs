//! The firm's attestation of a client account's first device, and the first-contact rule
//! (docs/PROTOCOL.md §19.10).
//!
//! Entry 0 of a device log is signed only by the device it adds, so a log for an account a
//! device has never seen proves nothing about who holds that account: a relay could serve
//! a log whose first entry adds its own key. With an organisation pinned, a device
//! therefore trusts an account's log only if something chained to the organisation root
//! vouches for its first device ([`first_contact`]):
//!
//! * an account the roster lists (staff, advisors): every active device of its log must be
//!   one of the devices the roster head lists for it, with the same identity;
//! * any other account (a client): a [`ClientAttestation`] over the hash of its genesis
//!   entry, signed by a device the roster lists for a staff member whose role the policy
//!   allows to attest ([`super::ApprovalPolicy::attestation_roles`]), under a roster
//!   version in force at the attestation's date.
//!
//! ```text
//! attestation_bytes = "Sealpost_Attestation_v1"
//!   || u16 len || account || genesis_entry_hash (32) || u64 attested_ms
//!   || u64 roster_version || u16 len || attester account || attester device (16)
//! attestation_digest = SHA-256(attestation_bytes)
//! signature = Ed25519_attester_device("Sealpost_AttestationSign_v1" || attestation_digest)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{self, bytes_array};
use crate::crypto;
use crate::identity::{AccountId, IdentityKeyPair};

use super::approval::SignerRef;
use super::device_log::{DeviceLog, DeviceSet};
use super::error::{Digest, TrustError};
use super::roster::RosterChain;
use super::{Canon, ATTESTATION_LABEL, ATTESTATION_SIGN_LABEL, MAX_CLOCK_SKEW_MS};

/// Largest CBOR attestation.
pub const MAX_ATTESTATION_LEN: usize = 1024;

/// A staff member's signed statement that they verified, out of band, the person holding
/// `account`'s first device: the one its genesis entry (hash `genesis`) adds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAttestation {
    /// The client account.
    pub account: AccountId,
    /// The hash of entry 0 of its device log.
    #[serde(with = "bytes_array")]
    pub genesis: [u8; 32],
    /// When the staff member attested (their clock), ms since the Unix epoch.
    pub attested_ms: u64,
    /// The roster version the attester is listed in.
    pub roster_version: u64,
    /// The attesting staff account and device.
    pub attester: SignerRef,
    /// The attester device's signature (module documentation).
    #[serde(with = "bytes_array")]
    pub signature: [u8; 64],
}

impl ClientAttestation {
    /// The hashed bytes (module documentation).
    fn canonical_bytes(
        account: &AccountId,
        genesis: &[u8; 32],
        attested_ms: u64,
        roster_version: u64,
        attester: &SignerRef,
    ) -> Vec<u8> {
        let mut c = Canon::new(ATTESTATION_LABEL);
        c.account(account)
            .raw(genesis)
            .u64(attested_ms)
            .u64(roster_version)
            .signer(attester);
        c.into_bytes()
    }

    /// `SHA-256(attestation_bytes)`.
    pub fn digest(&self) -> Digest {
        Digest(crypto::sha256(&[&Self::canonical_bytes(
            &self.account,
            &self.genesis,
            self.attested_ms,
            self.roster_version,
            &self.attester,
        )]))
    }

    fn sign_message(digest: &Digest) -> Vec<u8> {
        let mut m = Vec::with_capacity(ATTESTATION_SIGN_LABEL.len() + 32);
        m.extend_from_slice(ATTESTATION_SIGN_LABEL);
        m.extend_from_slice(&digest.0);
        m
    }

    /// The attestation of `account`'s genesis entry `genesis` by `attester_account`'s
    /// device `device`, listed in roster `roster_version`, at `attested_ms`.
    pub fn sign(
        account: AccountId,
        genesis: Digest,
        attested_ms: u64,
        roster_version: u64,
        attester_account: AccountId,
        device: &IdentityKeyPair,
    ) -> Self {
        let mut a = Self {
            account,
            genesis: genesis.0,
            attested_ms,
            roster_version,
            attester: SignerRef::new(attester_account, device.device_id()),
            signature: [0; 64],
        };
        a.signature = device.sign(&Self::sign_message(&a.digest()));
        a
    }

    /// Check this attestation for `account` whose genesis entry hashes to `genesis`:
    /// it names them; it is not dated after `now_ms` plus [`MAX_CLOCK_SKEW_MS`]; the
    /// roster version it names is in `chain` and in force at its date
    /// ([`RosterChain::roster_for`]); that version lists the attester's device under the
    /// attester's account, whose role the version's policy allows to attest; the attester
    /// is not the client; the signature verifies.
    pub fn verify(
        &self,
        chain: &RosterChain,
        account: &AccountId,
        genesis: &Digest,
        now_ms: u64,
    ) -> Result<(), TrustError> {
        if &self.account != account || self.genesis != genesis.0 {
            return Err(TrustError::AttestationMismatch {
                account: account.clone(),
            });
        }
        if self.attested_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(TrustError::FromTheFuture {
                what: "attestation",
                got_ms: self.attested_ms,
                now_ms,
            });
        }
        if &self.attester.account == account {
            return Err(TrustError::AttesterNotEligible {
                attester: self.attester.account.clone(),
                reason: "an account cannot attest itself",
            });
        }
        let roster = chain.roster_for(self.roster_version, self.attested_ms)?;
        let member =
            roster
                .member(&self.attester.account)
                .ok_or(TrustError::AttesterNotEligible {
                    attester: self.attester.account.clone(),
                    reason: "not in the roster version it names",
                })?;
        if !roster.policy().attestation_roles().contains(member.role) {
            return Err(TrustError::AttesterNotEligible {
                attester: self.attester.account.clone(),
                reason: "its role may not attest clients under the roster policy",
            });
        }
        let identity =
            member
                .device(&self.attester.device)
                .ok_or(TrustError::AttesterNotEligible {
                    attester: self.attester.account.clone(),
                    reason: "the signing device is not listed for it in the roster",
                })?;
        identity
            .verify(&Self::sign_message(&self.digest()), &self.signature)
            .map_err(|_| TrustError::BadSignature {
                what: "client attestation",
                signer: self.attester.to_string(),
            })
    }

    /// CBOR, at most [`MAX_ATTESTATION_LEN`] bytes.
    pub fn to_cbor(&self) -> Result<Vec<u8>, TrustError> {
        Ok(codec::encode("attestation", self, MAX_ATTESTATION_LEN)?)
    }

    /// Decode (bounded; run [`ClientAttestation::verify`] before trusting it).
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, TrustError> {
        Ok(codec::decode("attestation", bytes, MAX_ATTESTATION_LEN)?)
    }
}

/// Why a device may trust an account's verified log ([`first_contact`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// The roster lists the account and every active device of its log.
    Roster,
    /// A client account whose first device the firm attested.
    Attested {
        /// The attestation's date.
        attested_ms: u64,
    },
}

/// The first-contact rule, with an organisation pinned and its roster chain verified:
/// may a device trust `log` (already verified, yielding `set`) for encrypting to the
/// account and accepting messages from it? See the module documentation.
///
/// An account the roster head lists is judged by the roster only: an attestation does not
/// make an unlisted device of a staff account trusted. Any other account needs a valid
/// attestation of its genesis entry, whatever role the relay says it has (a relay that
/// calls an account "advisor" without the roster listing it gains nothing: such an account
/// is refused until a roster change lists it, since the relay takes attestations for
/// client accounts only).
pub fn first_contact(
    log: &DeviceLog,
    set: &DeviceSet,
    chain: &RosterChain,
    attestation: Option<&ClientAttestation>,
    now_ms: u64,
) -> Result<Standing, TrustError> {
    if let Some(member) = chain.head().member(&log.account) {
        for d in &set.devices {
            let listed = member.device(&d.identity.device_id());
            if listed != Some(&d.identity) {
                return Err(TrustError::DeviceNotInRoster {
                    account: log.account.clone(),
                    device: d.identity.device_id(),
                });
            }
        }
        return Ok(Standing::Roster);
    }
    let Some(genesis) = log.entries.as_slice().first() else {
        return Err(TrustError::NotAttested {
            account: log.account.clone(),
        });
    };
    let Some(attestation) = attestation else {
        return Err(TrustError::NotAttested {
            account: log.account.clone(),
        });
    };
    attestation.verify(chain, &log.account, &genesis.body.hash(), now_ms)?;
    Ok(Standing::Attested {
        attested_ms: attestation.attested_ms,
    })
}

/// Times a device can check that bound when each entry of a log took effect, beyond the
/// dates its signers chose ([`DeviceLog::verify_timed`]). Cooling-off runs from
/// `max(signed date, previous entry's start, relay's append time)` for the log's rules
/// (every device and the relay compute the same), and additionally, in this device's
/// eyes, from no earlier than when it first saw an entry beyond a head it had pinned, and
/// for the first device no earlier than the firm's attestation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryTimes {
    /// The relay's recorded append time of each entry, by sequence number (0 or missing:
    /// unknown). A time later than the verifier's clock plus [`MAX_CLOCK_SKEW_MS`] is
    /// refused.
    pub appended_ms: Vec<u64>,
    /// When this device first saw each entry it learnt beyond a head it had already
    /// pinned, by sequence number (only for this device's view of probation).
    pub first_seen_ms: BTreeMap<u64, u64>,
    /// The attestation date of the account's first device, if attested (only for this
    /// device's view of probation).
    pub attested_ms: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::device_log::{DeviceAction, LogEntry};
    use crate::trust::testutil::{acct, Org, HOUR, T0};
    use crate::trust::{ApprovalPolicy, RoleSet, Roster, StaffMember, StaffRole};

    fn client_log(org: &mut Org, name: &str) -> (DeviceLog, IdentityKeyPair) {
        let phone = IdentityKeyPair::generate(&mut org.rng);
        let mut log = DeviceLog::new(acct(name));
        let body = log.next_body(
            T0,
            DeviceAction::Add {
                identity: phone.public().clone(),
            },
            "enrolment",
        );
        log.push(LogEntry::genesis(body, &phone)).unwrap();
        (log, phone)
    }

    #[test]
    fn an_unattested_client_is_refused_and_an_attested_one_accepted() {
        let mut org = Org::new(70);
        let chain = org.chain();
        let (log, _) = client_log(&mut org, "client.zoe");
        let now = T0 + HOUR;
        let set = log.verify(Some(&chain), None, now).unwrap();
        assert_eq!(
            first_contact(&log, &set, &chain, None, now),
            Err(TrustError::NotAttested {
                account: acct("client.zoe")
            })
        );
        let genesis = log.entries.as_slice()[0].body.hash();
        // The test roster lists an operations member (index 0).
        let (ops_account, ops_key) = org.staff_member(StaffRole::Operations);
        let a = ClientAttestation::sign(
            acct("client.zoe"),
            genesis,
            T0 + 10,
            1,
            ops_account.clone(),
            &ops_key,
        );
        assert_eq!(
            first_contact(&log, &set, &chain, Some(&a), now),
            Ok(Standing::Attested {
                attested_ms: T0 + 10
            })
        );
        // Round trip.
        assert_eq!(
            ClientAttestation::from_cbor(&a.to_cbor().unwrap()).unwrap(),
            a
        );
        // For another account's genesis, or another genesis: refused.
        let (other, _) = client_log(&mut org, "client.zoe");
        let other_set = other.verify(Some(&chain), None, now).unwrap();
        assert!(matches!(
            first_contact(&other, &other_set, &chain, Some(&a), now),
            Err(TrustError::AttestationMismatch { .. })
        ));
        // A tampered date: the signature no longer verifies.
        let mut t = a.clone();
        t.attested_ms += 1;
        assert!(matches!(
            first_contact(&log, &set, &chain, Some(&t), now),
            Err(TrustError::BadSignature { .. })
        ));
        // Signed by a key the roster does not list for the attester.
        let stranger = IdentityKeyPair::generate(&mut org.rng);
        let forged = ClientAttestation::sign(
            acct("client.zoe"),
            genesis,
            T0 + 10,
            1,
            ops_account,
            &stranger,
        );
        assert!(matches!(
            first_contact(&log, &set, &chain, Some(&forged), now),
            Err(TrustError::AttesterNotEligible { .. })
        ));
        // A role the default policy does not name (security).
        let (sec_account, sec_key) = org.staff_member(StaffRole::Security);
        let wrong_role = ClientAttestation::sign(
            acct("client.zoe"),
            genesis,
            T0 + 10,
            1,
            sec_account,
            &sec_key,
        );
        assert!(matches!(
            first_contact(&log, &set, &chain, Some(&wrong_role), now),
            Err(TrustError::AttesterNotEligible { .. })
        ));
    }

    #[test]
    fn a_staff_log_must_list_only_roster_devices() {
        let mut org = Org::new(71);
        let chain = org.chain();
        let (account, key) = org.staff_member(StaffRole::Compliance);
        let now = T0 + HOUR;
        // The real log: the roster's device adds itself.
        let mut real = DeviceLog::new(account.clone());
        let body = real.next_body(
            T0,
            DeviceAction::Add {
                identity: key.public().clone(),
            },
            "enrolment",
        );
        real.push(LogEntry::genesis(body, &key)).unwrap();
        let set = real.verify(Some(&chain), None, now).unwrap();
        assert_eq!(
            first_contact(&real, &set, &chain, None, now),
            Ok(Standing::Roster)
        );
        // A fabricated log whose first entry adds the relay's device.
        let relay_device = IdentityKeyPair::generate(&mut org.rng);
        let mut fake = DeviceLog::new(account.clone());
        let body = fake.next_body(
            T0,
            DeviceAction::Add {
                identity: relay_device.public().clone(),
            },
            "enrolment",
        );
        fake.push(LogEntry::genesis(body, &relay_device)).unwrap();
        let set = fake.verify(Some(&chain), None, now).unwrap();
        assert_eq!(
            first_contact(&fake, &set, &chain, None, now),
            Err(TrustError::DeviceNotInRoster {
                account,
                device: relay_device.device_id()
            })
        );
    }

    #[test]
    fn the_policy_names_who_attests_and_old_rosters_keep_their_hash() {
        let org = Org::new(72);
        let chain = org.chain();
        let v1 = chain.head().clone();
        assert!(v1.policy().client_attestation.is_none());
        assert_eq!(
            v1.policy().attestation_roles(),
            RoleSet::of(&[StaffRole::Advisor, StaffRole::Operations])
        );
        // Format 1 bytes unless the field is present.
        assert_eq!(&v1.canonical_bytes()[18..20], &[0, 1]);
        let policy = ApprovalPolicy {
            client_attestation: Some(RoleSet::of(&[StaffRole::Security])),
            ..v1.policy().clone()
        };
        let staff: Vec<StaffMember> = v1.staff().to_vec();
        let r = Roster::new(1, None, v1.issued_ms(), staff.clone(), policy).unwrap();
        let bytes = r.canonical_bytes();
        assert_eq!(&bytes[18..20], &[0, 2]);
        assert_eq!(
            bytes.last(),
            Some(&RoleSet::of(&[StaffRole::Security]).mask())
        );
        assert_ne!(r.hash(), v1.hash());
        // A policy naming a role nobody listed has is refused.
        let no_advisor: Vec<StaffMember> = staff
            .into_iter()
            .filter(|m| m.role != StaffRole::Advisor)
            .collect();
        let nobody = ApprovalPolicy {
            client_attestation: Some(RoleSet::of(&[StaffRole::Advisor])),
            ..v1.policy().clone()
        };
        assert!(Roster::new(1, None, v1.issued_ms(), no_advisor, nobody).is_err());
    }
}

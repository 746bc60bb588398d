//! The leaves of the transparency log: who did what, when. Never message content.
//!
//! A leaf is the CBOR encoding (as [`crate::codec::encode`] writes it: a map with the field
//! names below, in this order) of a [`LogLeaf`]. Unlike the hand-specified bytes of
//! [`crate::trust`], the leaf bytes are themselves what is stored and hashed
//! (`leaf hash = SHA-256(0x00 || leaf bytes)`), so no value is ever re-encoded to check a
//! hash; and [`LogLeaf::from_bytes`] refuses every encoding other than the one
//! [`LogLeaf::to_bytes`] writes ([`crate::codec::decode_canonical`]), so a value has
//! exactly one leaf.

use serde::{Deserialize, Serialize};

use crate::codec::{self, bytes_array};
use crate::error::{DecodeError, EncodeError};
use crate::identity::{AccountId, DeviceId};
use crate::trust::{
    ClientAttestation, DeviceAction, EntryAuthorization, LogEntry, RosterAuthorization,
    SignedRoster,
};
use crate::wire::{BoundedString, BoundedVec, Role};

/// Largest leaf, bytes.
pub const MAX_LEAF_LEN: usize = 4096;
/// Longest admin command name or argument, bytes.
pub const MAX_COMMAND_LEN: usize = 128;
/// Most arguments of an admin command in a leaf.
pub const MAX_COMMAND_ARGS: usize = 16;
/// Longest security rule or severity name, bytes.
pub const MAX_RULE_LEN: usize = 64;
/// Format version of [`LogLeaf`].
pub const LEAF_VERSION: u8 = 1;

/// Who caused a logged event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Actor {
    /// An authenticated device (CBOR: `{"device": {"account": ..., "device": ...}}`).
    Device {
        /// Its account.
        account: AccountId,
        /// The device.
        device: DeviceId,
    },
    /// A device not yet authenticated acting for an account (enrolment, link completion)
    /// (CBOR: `{"account": "..."}`).
    Account(AccountId),
    /// The relay's operator, through `sealpost-relay admin` or the configuration
    /// (CBOR: `"operator"`).
    Operator,
    /// The relay itself (CBOR: `"relay"`).
    Relay,
}

/// The device-log action an entry performed (CBOR: the snake_case name).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoggedAction {
    /// A device added.
    Add,
    /// A device removed.
    Remove,
    /// The account frozen.
    Freeze,
    /// The freeze lifted (staff quorum).
    Unfreeze,
    /// Recovery (staff quorum).
    Recover,
}

impl LoggedAction {
    /// The action of a device-log entry.
    pub fn of(action: &crate::trust::DeviceAction) -> Self {
        use crate::trust::DeviceAction as A;
        match action {
            A::Add { .. } => Self::Add,
            A::Remove { .. } => Self::Remove,
            A::Freeze => Self::Freeze,
            A::Unfreeze => Self::Unfreeze,
            A::Recover { .. } => Self::Recover,
        }
    }
}

/// What happened (CBOR: externally tagged, `{"<snake_case name>": {fields}}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeafEvent {
    /// An entry was appended to an account's device log: the log now has `length` entries
    /// and its head (last entry's hash) is `head`.
    DeviceLogHead {
        /// The account.
        account: AccountId,
        /// Entries in the log after the append.
        length: u64,
        /// The last entry's hash.
        #[serde(with = "bytes_array")]
        head: [u8; 32],
        /// What the entry did.
        action: LoggedAction,
    },
    /// A client account's first device was attested by staff.
    Attestation {
        /// The client account.
        account: AccountId,
        /// The attested device.
        device: DeviceId,
        /// The attestation's digest.
        #[serde(with = "bytes_array")]
        hash: [u8; 32],
    },
    /// A roster version was published.
    Roster {
        /// Its version.
        version: u64,
        /// Its hash.
        #[serde(with = "bytes_array")]
        hash: [u8; 32],
    },
    /// An account was created.
    AccountCreated {
        /// The account.
        account: AccountId,
        /// Its role.
        role: Role,
    },
    /// An enrolment code was issued (never the code itself).
    EnrollmentCodeIssued {
        /// The account.
        account: AccountId,
    },
    /// An enrolment code was redeemed by a device.
    EnrollmentRedeemed {
        /// The account.
        account: AccountId,
        /// The device.
        device: DeviceId,
    },
    /// A client was assigned to an advisor or staff account.
    Assigned {
        /// The client.
        client: AccountId,
        /// The advisor or staff account.
        advisor: AccountId,
    },
    /// An assignment was removed.
    Unassigned {
        /// The client.
        client: AccountId,
        /// The advisor or staff account.
        advisor: AccountId,
    },
    /// The relay's configuration changed (start or reload): SHA-256 of its canonical form.
    ConfigChanged {
        /// The digest.
        #[serde(with = "bytes_array")]
        digest: [u8; 32],
    },
    /// A `sealpost-relay admin` command ran (its name and arguments, never a secret).
    AdminCommand {
        /// The command, e.g. `assign`.
        command: BoundedString<MAX_COMMAND_LEN>,
        /// Its arguments.
        args: BoundedVec<BoundedString<MAX_COMMAND_LEN>, MAX_COMMAND_ARGS>,
    },
    /// The firm's compliance archive anchored the head of its record chain
    /// (docs/PROTOCOL.md §22.6): whoever holds the archive key cannot later rebuild the
    /// chain up to this record without the log showing it.
    ArchiveHead {
        /// The record's sequence number.
        seq: u64,
        /// Its hash.
        #[serde(with = "bytes_array")]
        hash: [u8; 32],
    },
    /// A security event that concerns trust (raised by the relay's rule engine).
    SecurityEvent {
        /// The rule's name.
        rule: BoundedString<MAX_RULE_LEN>,
        /// Its severity.
        severity: BoundedString<MAX_RULE_LEN>,
        /// The account concerned, if any.
        account: Option<AccountId>,
        /// The device concerned, if any.
        device: Option<DeviceId>,
    },
}

/// One leaf of the transparency log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLeaf {
    /// [`LEAF_VERSION`].
    pub v: u8,
    /// The leaf's own index in the log, set by the store as it appends it: a leaf moved
    /// to another position no longer matches its index, so `audit verify` names it.
    pub index: u64,
    /// When the relay recorded it, ms since the Unix epoch.
    pub time_ms: u64,
    /// Who did it.
    pub actor: Actor,
    /// What happened.
    pub event: LeafEvent,
}

impl LogLeaf {
    /// A leaf of the current version.
    pub fn new(time_ms: u64, actor: Actor, event: LeafEvent) -> Self {
        Self {
            v: LEAF_VERSION,
            index: 0,
            time_ms,
            actor,
            event,
        }
    }

    /// This leaf at `index` (what the store does as it appends it).
    pub fn with_index(mut self, index: u64) -> Self {
        self.index = index;
        self
    }

    /// The leaf bytes (CBOR), at most [`MAX_LEAF_LEN`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode("log leaf", self, MAX_LEAF_LEN)
    }

    /// Decode leaf bytes: bounded, canonical (the only encoding [`LogLeaf::to_bytes`]
    /// writes), of a known version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let leaf: Self = codec::decode_canonical("log leaf", bytes, MAX_LEAF_LEN)?;
        if leaf.v != LEAF_VERSION {
            return Err(DecodeError::InvalidField {
                field: "log leaf v",
                reason: "unknown leaf version",
            });
        }
        Ok(leaf)
    }

    /// The leaf recording that `entry` was appended to its account's device log (entry
    /// `seq` makes the log `seq + 1` entries long). The actor is who authorised it: the
    /// signing device, the added device for a genesis entry, the initiator of a quorum.
    pub fn device_log_head(entry: &LogEntry, time_ms: u64) -> Self {
        let account = entry.body.account.clone();
        let actor = match &entry.authorization {
            EntryAuthorization::Genesis => match &entry.body.action {
                DeviceAction::Add { identity } | DeviceAction::Recover { identity } => {
                    Actor::Device {
                        account: account.clone(),
                        device: identity.device_id(),
                    }
                }
                _ => Actor::Account(account.clone()),
            },
            EntryAuthorization::Device { device, .. } => Actor::Device {
                account: account.clone(),
                device: *device,
            },
            EntryAuthorization::Quorum(bundle) => Actor::Device {
                account: bundle.request.initiator.account.clone(),
                device: bundle.request.initiator.device,
            },
        };
        Self::new(
            time_ms,
            actor,
            LeafEvent::DeviceLogHead {
                account,
                length: entry.body.seq.saturating_add(1),
                head: entry.body.hash().0,
                action: LoggedAction::of(&entry.body.action),
            },
        )
    }

    /// The leaf recording a client attestation (actor: the attesting staff device).
    pub fn attestation(a: &ClientAttestation, device: DeviceId, time_ms: u64) -> Self {
        Self::new(
            time_ms,
            Actor::Device {
                account: a.attester.account.clone(),
                device: a.attester.device,
            },
            LeafEvent::Attestation {
                account: a.account.clone(),
                device,
                hash: a.digest().0,
            },
        )
    }

    /// The leaf recording a roster version (actor: the roster change's initiator, or the
    /// operator for version 1, which the organisation root signed offline).
    pub fn roster(r: &SignedRoster, time_ms: u64) -> Self {
        let actor = match &r.authorization {
            RosterAuthorization::Root { .. } => Actor::Operator,
            RosterAuthorization::Quorum(b) => Actor::Device {
                account: b.request.initiator.account.clone(),
                device: b.request.initiator.device,
            },
        };
        Self::new(
            time_ms,
            actor,
            LeafEvent::Roster {
                version: r.roster.version(),
                hash: r.roster.hash().0,
            },
        )
    }

    /// An admin command leaf; arguments beyond the bounds are cut (with the last one
    /// saying how many were dropped).
    pub fn admin_command(time_ms: u64, command: &str, args: &[&str]) -> Self {
        let mut list: Vec<BoundedString<MAX_COMMAND_LEN>> = args
            .iter()
            .take(MAX_COMMAND_ARGS)
            .map(|a| BoundedString::truncating(a))
            .collect();
        if args.len() > MAX_COMMAND_ARGS {
            list.truncate(MAX_COMMAND_ARGS - 1);
            list.push(BoundedString::truncating(&format!(
                "(+{} more)",
                args.len() - (MAX_COMMAND_ARGS - 1)
            )));
        }
        let args = BoundedVec::new(list).unwrap_or_else(|_| crate::trust::empty_list());
        Self::new(
            time_ms,
            Actor::Operator,
            LeafEvent::AdminCommand {
                command: BoundedString::truncating(command),
                args,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(s: &str) -> AccountId {
        AccountId::new(s).unwrap_or_else(|_| unreachable!("valid account"))
    }

    #[test]
    fn leaves_round_trip_canonically() {
        let leaves = [
            LogLeaf::new(
                1,
                Actor::Device {
                    account: account("alice"),
                    device: DeviceId([1; 16]),
                },
                LeafEvent::DeviceLogHead {
                    account: account("alice"),
                    length: 2,
                    head: [3; 32],
                    action: LoggedAction::Add,
                },
            ),
            LogLeaf::new(
                2,
                Actor::Operator,
                LeafEvent::AccountCreated {
                    account: account("bob"),
                    role: Role::Client,
                },
            ),
            LogLeaf::new(
                3,
                Actor::Relay,
                LeafEvent::ConfigChanged { digest: [4; 32] },
            ),
            LogLeaf::admin_command(4, "assign", &["bob", "carol"]),
            LogLeaf::new(
                5,
                Actor::Account(account("dave")),
                LeafEvent::EnrollmentRedeemed {
                    account: account("dave"),
                    device: DeviceId([5; 16]),
                },
            ),
        ];
        for leaf in leaves {
            let bytes = leaf.to_bytes().unwrap_or_default();
            assert_eq!(LogLeaf::from_bytes(&bytes).ok(), Some(leaf.clone()));
            // Any flipped byte either fails to decode or decodes to another value.
            for i in 0..bytes.len() {
                let mut b = bytes.clone();
                b[i] ^= 0x01;
                if let Ok(other) = LogLeaf::from_bytes(&b) {
                    assert_ne!(other, leaf);
                }
            }
        }
    }

    #[test]
    fn admin_arguments_are_bounded() {
        let args: Vec<String> = (0..40).map(|i| format!("a{i}")).collect();
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let leaf = LogLeaf::admin_command(1, "x", &refs);
        let LeafEvent::AdminCommand { args, .. } = &leaf.event else {
            unreachable!()
        };
        assert_eq!(args.as_slice().len(), MAX_COMMAND_ARGS);
        assert_eq!(
            args.as_slice().last().map(|a| a.as_str()),
            Some("(+25 more)")
        );
        assert!(leaf.to_bytes().is_ok());
        // A future version is refused.
        let mut v2 = leaf;
        v2.v = 2;
        let bytes = v2.to_bytes().unwrap_or_default();
        assert!(LogLeaf::from_bytes(&bytes).is_err());
    }

    /// The worked example of docs/PROTOCOL.md §20.2: these exact bytes and hash.
    #[test]
    fn the_documented_example_leaf() {
        let leaf = LogLeaf::new(
            1_765_000_000_000,
            Actor::Operator,
            LeafEvent::AccountCreated {
                account: account("alice"),
                role: Role::Client,
            },
        )
        .with_index(3);
        let bytes = leaf.to_bytes().unwrap_or_default();
        let hash = crate::tlog::leaf_hash(&bytes);
        println!("leaf {}\nhash {}", hex::encode(&bytes), hex::encode(hash));
        assert_eq!(hex::encode(&bytes), EXAMPLE_LEAF_HEX);
        assert_eq!(hex::encode(hash), EXAMPLE_LEAF_HASH);
    }

    const EXAMPLE_LEAF_HEX: &str = "a561760165696e646578036774696d655f6d731b0000019af232b200656163746f72686f70657261746f72656576656e74a16f6163636f756e745f63726561746564a2676163636f756e7465616c69636564726f6c6566636c69656e74";
    const EXAMPLE_LEAF_HASH: &str =
        "3dda1f68148c974451de54839b9eb6aaf1a6f741ef48069cf01c7bfbd29dd3a5";
}

//! What travels inside an envelope: the plaintext a client seals, after decryption.
//!
//! The plaintext of every envelope is `CBOR(Message)`. The envelope's message id is the
//! logical message id: a message to an account is sealed once per device with the same id,
//! so receipts and deduplication refer to one id across devices.

use serde::{Deserialize, Serialize};

use crate::attachment::AttachmentDescriptor;
use crate::codec::{self, bytes_array};
use crate::envelope::{EnvelopeKind, MessageId, MAX_PLAINTEXT_LEN};
use crate::error::{DecodeError, EncodeError};
use crate::identity::AccountId;
use crate::trust::{
    Approval, ApprovalBundle, DeviceAction, EntryBody, LinkChallenge, LinkCode, LinkNonce,
    NoticeHeader, Roster, SignedNotice,
};
use crate::wire::{BoundedString, BoundedVec};

/// Longest chat text, bytes of UTF-8.
pub const MAX_TEXT_LEN: usize = 16 * 1024;
/// Longest notice title, bytes.
pub const MAX_TITLE_LEN: usize = 256;
/// Most message ids in one receipt.
pub const MAX_RECEIPT_IDS: usize = 256;

/// A decrypted message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// The sending account, as claimed by the sender; the recipient checks that the
    /// sending device is listed for this account before trusting it.
    pub from: AccountId,
    /// Sender's clock, milliseconds since the Unix epoch.
    pub sent_ms: u64,
    /// The content.
    pub content: Content,
    /// The sender's view of the device logs of both accounts of the exchange, for
    /// split-view detection (docs/PROTOCOL.md §18.7). Absent in messages from senders
    /// that predate it (tolerated: nothing is compared then); encoded only when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<LogViews>,
}

/// The head of an account's device log as the sender last verified it: the last entry's
/// sequence number and hash (`DeviceLog::head`, docs/PROTOCOL.md §19.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadView {
    /// The last entry's sequence number.
    pub seq: u64,
    /// Its hash.
    #[serde(with = "bytes_array")]
    pub hash: [u8; 32],
}

/// What a message says about the device logs the relay showed its sender
/// (docs/PROTOCOL.md §18.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogViews {
    /// The head of the sending account's own log, as the sending device verified it;
    /// `None` if it verified none.
    pub sender: Option<HeadView>,
    /// The head of the recipient account's log (for a `sync`, the sending account's own),
    /// as the sending device verified it; `None` if it verified none.
    pub recipient: Option<HeadView>,
    /// The sending device records a split view with the recipient account: the relay
    /// showed the two sides different logs. The recipient warns its user too and refuses
    /// sensitive kinds across the pair until the views agree.
    pub split: bool,
    /// The transparency-log checkpoint the sending device last accepted
    /// (docs/PROTOCOL.md §21.7): the recipient compares it with its own. Absent when the
    /// sender holds none (no log configured in the roster, or a sender that predates
    /// it); encoded only when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointView>,
}

/// A transparency-log checkpoint as carried in a message: its tree size and root hash
/// (the signed note stays with the device that verified it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointView {
    /// Leaves in the log.
    pub size: u64,
    /// The RFC 9162 root hash of those leaves.
    #[serde(with = "bytes_array")]
    pub root: [u8; 32],
}

/// Which receipt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    /// The message reached a device of the recipient.
    Delivered,
    /// The recipient displayed it.
    Read,
}

/// Content of a message. Encoded externally tagged: `{"text": {...}}`, `{"notice": {...}}`, ...
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Content {
    /// A chat message.
    Text {
        /// The text.
        body: BoundedString<MAX_TEXT_LEN>,
    },
    /// An account notice from staff (shown apart from chat): the signed header, and the
    /// exact content bytes its `content_hash` covers (`CBOR(NoticeText)`).
    Notice {
        /// The signed header, with co-signatures where the category or audience needs
        /// them.
        notice: Box<SignedNotice>,
        /// `CBOR(NoticeText)`, exactly as hashed.
        #[serde(with = "serde_bytes")]
        content: Vec<u8>,
    },
    /// A staff device asks the other staff to approve something: the request (signed by
    /// the initiator) and what it is about, in full, so the approver sees exactly what
    /// the signature covers.
    ApprovalRequest {
        /// The request and the initiator's signature (no approvals yet).
        bundle: Box<ApprovalBundle>,
        /// What is to be approved; its digest is the request's `parameters`.
        subject: Box<ApprovalSubject>,
    },
    /// An approver's answer to an approval request.
    ApprovalResponse {
        /// The request it answers.
        #[serde(with = "bytes_array")]
        request_id: [u8; 16],
        /// The approval, or `None` for a rejection.
        approval: Option<Box<Approval>>,
        /// Why (shown to the initiator; may be empty).
        reason: BoundedString<MAX_TITLE_LEN>,
    },
    /// Delivery or read receipts for earlier messages.
    Receipt {
        /// Which receipt.
        kind: ReceiptKind,
        /// The messages it covers.
        message_ids: BoundedVec<MessageId, MAX_RECEIPT_IDS>,
    },
    /// A file: the descriptor (blob id, key, sizes, SHA-256, name, media type) of an
    /// attachment uploaded as a relay blob, and an optional caption.
    Attachment {
        /// What to download and how to decrypt and check it.
        descriptor: AttachmentDescriptor,
        /// Text shown with the file (may be empty).
        caption: BoundedString<MAX_TEXT_LEN>,
    },
    /// A client's instruction to the firm (a payment, a withdrawal, a transfer, or a
    /// change of its standing instructions such as a payout address): a sensitive kind,
    /// sent under [`EnvelopeKind::Instruction`], so that neither the relay nor any
    /// receiving client accepts it from a device on probation or a frozen account.
    Instruction {
        /// What kind of instruction it is.
        category: InstructionCategory,
        /// The instruction, in the client's words (amounts, accounts, dates).
        body: BoundedString<MAX_TEXT_LEN>,
    },
    /// A copy of a message this account sent, for the sender's other devices.
    Sync {
        /// The account the original went to.
        to: AccountId,
        /// The original content (never itself a `sync`).
        content: Box<Content>,
    },
    /// The firm archive's copy of a message between a client and the firm (docs/PROTOCOL.md
    /// §22), sealed by its sender to the archive device the roster names.
    Archive {
        /// The account the original went to.
        to: AccountId,
        /// The original content (never a `sync` or an `archive`).
        content: Box<Content>,
    },
}

/// What a client's [`Content::Instruction`] asks for. Encoded as its snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstructionCategory {
    /// Pay an amount to a third party.
    Payment,
    /// Withdraw funds to the client's own external account.
    Withdrawal,
    /// Move funds or assets between the client's accounts or positions.
    Transfer,
    /// Change a standing instruction: a payout or withdrawal address, a recurring
    /// payment, a beneficiary.
    StandingInstructionChange,
}

impl InstructionCategory {
    /// All categories.
    pub const ALL: [InstructionCategory; 4] = [
        Self::Payment,
        Self::Withdrawal,
        Self::Transfer,
        Self::StandingInstructionChange,
    ];

    /// The name on the wire (`payment`, `withdrawal`, `transfer`,
    /// `standing_instruction_change`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Withdrawal => "withdrawal",
            Self::Transfer => "transfer",
            Self::StandingInstructionChange => "standing_instruction_change",
        }
    }
}

impl std::fmt::Display for InstructionCategory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The content of a notice: what `content_hash` of its header covers, as `CBOR(NoticeText)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoticeText {
    /// Short title.
    pub title: BoundedString<MAX_TITLE_LEN>,
    /// The notice.
    pub body: BoundedString<MAX_TEXT_LEN>,
}

impl NoticeText {
    /// The bytes that are hashed and carried.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode("notice text", self, MAX_PLAINTEXT_LEN)
    }

    /// Decode carried bytes (after their hash was checked).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        codec::decode("notice text", bytes, MAX_PLAINTEXT_LEN)
    }
}

/// What an approval request is about. The request's `parameters` must equal the digest
/// named here, which the approver recomputes from this value before it shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ApprovalSubject {
    /// The next roster version (`parameters` = its hash).
    RosterChange {
        /// The proposed roster.
        roster: Roster,
    },
    /// A notice that needs co-signatures (`parameters` = the header's digest).
    Notice {
        /// The header.
        header: NoticeHeader,
        /// `CBOR(NoticeText)`, as hashed by the header.
        #[serde(with = "serde_bytes")]
        content: Vec<u8>,
    },
    /// A device-log entry carried by a quorum: a recovery or an unfreeze (`parameters` =
    /// the entry hash).
    DeviceLog {
        /// The entry body.
        entry: EntryBody,
        /// For a recovery: the challenge and the revealed nonce the recovered device's
        /// link code was computed from, so that every approver can compute the code and
        /// check it with the account holder on a call of their own (null for an unfreeze).
        link: Option<Box<RecoveryCode>>,
    },
}

/// What a recovered device's [`LinkCode`] is computed from, besides the account and the
/// identity the entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryCode {
    /// The challenge the initiating staff device picked.
    pub challenge: LinkChallenge,
    /// The nonce the new device revealed (it opened the commitment it started with; the
    /// initiator checked that).
    pub nonce: LinkNonce,
}

impl RecoveryCode {
    /// The code the recovered device shows, for a recovery `entry` (None for any other
    /// action).
    pub fn code(&self, entry: &EntryBody) -> Option<LinkCode> {
        match &entry.action {
            DeviceAction::Recover { identity } => Some(LinkCode::compute(
                &entry.account,
                identity,
                &self.challenge,
                &self.nonce,
            )),
            _ => None,
        }
    }
}

impl ApprovalSubject {
    /// The parameters a request about this subject must carry.
    pub fn parameters(&self) -> [u8; 32] {
        match self {
            ApprovalSubject::RosterChange { roster } => roster.hash().0,
            ApprovalSubject::Notice { header, .. } => header.digest().0,
            ApprovalSubject::DeviceLog { entry, .. } => entry.hash().0,
        }
    }
}

impl Content {
    /// The variant's name on the wire (`text`, `notice`, ...), for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Content::Text { .. } => "text",
            Content::Notice { .. } => "notice",
            Content::Receipt { .. } => "receipt",
            Content::Attachment { .. } => "attachment",
            Content::Sync { .. } => "sync",
            Content::Archive { .. } => "archive",
            Content::Instruction { .. } => "instruction",
            Content::ApprovalRequest { .. } => "approval_request",
            Content::ApprovalResponse { .. } => "approval_response",
        }
    }

    /// The envelope kind this content must travel under (docs/PROTOCOL.md §18.2): the
    /// kind the relay sees and applies its rules to. A receiver refuses content that
    /// arrives under any other kind. No content travels as `device_change` in this
    /// version; an envelope of that kind is always refused.
    pub fn envelope_kind(&self) -> EnvelopeKind {
        match self {
            Content::Text { .. } => EnvelopeKind::Chat,
            Content::Notice { .. } => EnvelopeKind::Notice,
            Content::Receipt { .. } => EnvelopeKind::Receipt,
            Content::Attachment { .. } => EnvelopeKind::Attachment,
            Content::Sync { .. } => EnvelopeKind::Sync,
            Content::Archive { .. } => EnvelopeKind::Archive,
            Content::Instruction { .. } => EnvelopeKind::Instruction,
            Content::ApprovalRequest { .. } | Content::ApprovalResponse { .. } => {
                EnvelopeKind::Approval
            }
        }
    }
}

impl Message {
    /// Encode as the plaintext of an envelope.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        codec::encode("message", self, MAX_PLAINTEXT_LEN)
    }

    /// Decode a decrypted plaintext. A `sync` must not nest another `sync`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let m: Message = codec::decode("message", bytes, MAX_PLAINTEXT_LEN)?;
        let attachment = match &m.content {
            Content::Attachment { descriptor, .. } => Some(descriptor),
            Content::Sync { content, .. } | Content::Archive { content, .. } => {
                match content.as_ref() {
                    Content::Attachment { descriptor, .. } => Some(descriptor),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(d) = attachment {
            d.validate().map_err(|_| DecodeError::InvalidField {
                field: "attachment descriptor",
                reason: "sizes or fields out of bounds",
            })?;
        }
        if let Content::Sync { content, .. } | Content::Archive { content, .. } = &m.content {
            if matches!(**content, Content::Sync { .. } | Content::Archive { .. }) {
                return Err(DecodeError::InvalidField {
                    field: "content",
                    reason: "a sync or an archive copy cannot contain a sync or an archive copy",
                });
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_nested_sync_refused() {
        let a = AccountId::new("alice").unwrap();
        let m = Message {
            from: a.clone(),
            sent_ms: 5,
            views: None,
            content: Content::Sync {
                to: a.clone(),
                content: Box::new(Content::Text {
                    body: BoundedString::truncating("hi"),
                }),
            },
        };
        assert_eq!(Message::decode(&m.encode().unwrap()).unwrap(), m);
        let nested = Message {
            from: a.clone(),
            sent_ms: 5,
            views: None,
            content: Content::Sync {
                to: a.clone(),
                content: Box::new(m.content.clone()),
            },
        };
        assert!(Message::decode(&nested.encode().unwrap()).is_err());
    }

    #[test]
    fn an_instruction_travels_as_the_instruction_kind_and_round_trips() {
        let a = AccountId::new("alice").unwrap();
        for category in InstructionCategory::ALL {
            let content = Content::Instruction {
                category,
                body: BoundedString::truncating("pay 10 EUR"),
            };
            assert_eq!(content.envelope_kind(), EnvelopeKind::Instruction);
            assert!(content.envelope_kind().is_sensitive());
            assert_eq!(content.name(), "instruction");
            let m = Message {
                from: a.clone(),
                sent_ms: 5,
                content,
                views: None,
            };
            assert_eq!(Message::decode(&m.encode().unwrap()).unwrap(), m);
        }
        // Its sync copy travels as a sync, wrapping the instruction.
        let sync = Content::Sync {
            to: a,
            content: Box::new(Content::Instruction {
                category: InstructionCategory::Withdrawal,
                body: BoundedString::truncating("x"),
            }),
        };
        assert_eq!(sync.envelope_kind(), EnvelopeKind::Sync);
    }

    #[test]
    fn views_round_trip_and_their_absence_is_tolerated() {
        let a = AccountId::new("alice").unwrap();
        let mut m = Message {
            from: a,
            sent_ms: 5,
            content: Content::Text {
                body: BoundedString::truncating("hi"),
            },
            views: None,
        };
        let without = m.encode().unwrap();
        assert_eq!(without[0], 0xa3, "no views: a map of three, as before");
        m.views = Some(LogViews {
            sender: Some(HeadView {
                seq: 1,
                hash: [7; 32],
            }),
            recipient: None,
            split: true,
            checkpoint: None,
        });
        let with = m.encode().unwrap();
        assert_eq!(with[0], 0xa4);
        assert_eq!(Message::decode(&with).unwrap(), m);
        assert_eq!(Message::decode(&without).unwrap().views, None);
    }
}

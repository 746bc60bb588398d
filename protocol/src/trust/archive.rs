//! The firm's compliance archive in the roster (docs/PROTOCOL.md §22): the archive's
//! account and device identity, what a device does when it cannot hand the archive its
//! copy, and the disclosure shown to clients. Devices take the archive's identity from
//! the verified roster only, so neither the relay nor one staff member can substitute
//! or drop it: changing it takes a roster version, that is the roster-change quorum.

use serde::{Deserialize, Serialize};

use crate::identity::{AccountId, DeviceId, PublicIdentity};

use super::error::TrustError;

/// Longest disclosure text, bytes (UTF-8).
pub const MAX_ARCHIVE_DISCLOSURE_LEN: usize = 512;

/// What a device does when the archive's copy of a message cannot be handed to the relay
/// (no bundle for the archive, the relay refuses or does not answer the archive copy).
/// Code in signed bytes: refuse 1, queue 2; CBOR: the snake_case name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArchiveUnreachable {
    /// Send nothing: the message fails with a clear error and the user tries again.
    Refuse = 1,
    /// Send the message, and keep the archive copy durably (in the encrypted profile)
    /// until it is handed over; retried on every later send and receive.
    Queue = 2,
}

impl ArchiveUnreachable {
    /// The code in signed bytes.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::Queue => "queue",
        }
    }
}

/// The firm's archive, as the roster names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchivePolicy {
    /// The archive's account at the relay (not a staff account of the roster).
    pub account: AccountId,
    /// The archive device's identity: every archive copy is sealed to it, and to nothing
    /// else.
    pub identity: PublicIdentity,
    /// What a device does when the archive copy cannot be handed over.
    pub unreachable: ArchiveUnreachable,
    /// What clients are told (1..=512 bytes), e.g. "This conversation is recorded by
    /// Example Asset Management for regulatory purposes."
    pub disclosure: String,
}

impl ArchivePolicy {
    /// The archive device's id.
    pub fn device(&self) -> DeviceId {
        self.identity.device_id()
    }

    /// The archive device's fingerprint, as people compare it.
    pub fn fingerprint(&self) -> String {
        self.identity.fingerprint().to_string()
    }

    /// Check the bounds.
    pub fn validate(&self) -> Result<(), TrustError> {
        let d = self.disclosure.trim();
        if d.is_empty() {
            return Err(TrustError::InvalidRoster(
                "the archive's disclosure is empty",
            ));
        }
        if self.disclosure.len() > MAX_ARCHIVE_DISCLOSURE_LEN {
            return Err(TrustError::InvalidRoster(
                "the archive's disclosure is longer than 512 bytes",
            ));
        }
        if self.disclosure.chars().any(|c| c.is_control() && c != '\n') {
            return Err(TrustError::InvalidRoster(
                "the archive's disclosure holds control characters",
            ));
        }
        Ok(())
    }
}

//! The transparency log's storage: an append-only list of leaves and the signed
//! checkpoints (with their witness cosignatures).
//!
//! Leaves recording a trust change (a device-log entry, an enrolment's genesis entry, a
//! roster version, an attestation) are appended by the [`super::TrustStore`] method that
//! makes the change, in the same transaction (SQLite) or under the same lock (memory):
//! a change is never stored without its leaf, nor a leaf without its change. Other
//! leaves (operator actions, configuration changes, security events) go through
//! [`TlogStore::append_leaf`], after the action they record.
//!
//! The SQLite table refuses `UPDATE` and `DELETE` by trigger; `sealpost-relay audit
//! verify` recomputes everything anyway, since whoever holds the file can drop triggers.

use std::future::Future;

use sealpost_protocol::tlog::LogLeaf;

use super::StoreError;

/// Most leaves in the log (the relay keeps every leaf hash in memory, 64 bytes each:
/// 256 MiB at the bound). Trust events are rare (device changes, rosters, operator
/// actions); at this bound the operator starts a new log (docs/OPERATIONS.md).
pub const MAX_LOG_LEAVES: u64 = 1 << 22;
/// Most leaves read in one call.
pub const MAX_LEAVES_PER_READ: usize = 4096;

/// The transparency log's storage.
pub trait TlogStore: Send + Sync + 'static {
    /// Append `leaf` at the next index (written into it, see [`LogLeaf::index`]) and
    /// return the index. Durable when it resolves. `QuotaExceeded` past
    /// [`MAX_LOG_LEAVES`].
    fn append_leaf(
        &self,
        leaf: &LogLeaf,
        now_ms: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Leaves with an index at or after `start`, in order, at most `limit` (and
    /// [`MAX_LEAVES_PER_READ`]), each with its stored index (a row deleted from the
    /// database shows as a gap, which the relay and `audit verify` report).
    fn leaves(
        &self,
        start: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(u64, Vec<u8>)>, StoreError>> + Send;
    /// Number of leaves.
    fn leaf_count(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;
    /// Store the signed checkpoint of tree size `size` (its note text), replacing the one
    /// of the same size (to add a cosignature).
    fn put_checkpoint(
        &self,
        size: u64,
        note: &str,
        now_ms: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// The stored checkpoint of size `size`.
    fn checkpoint(
        &self,
        size: u64,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;
    /// Stored checkpoints with a size above `after`, ascending, at most `limit`.
    fn checkpoints_after(
        &self,
        after: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(u64, String)>, StoreError>> + Send;
    /// The largest stored checkpoint.
    fn latest_checkpoint(
        &self,
    ) -> impl Future<Output = Result<Option<(u64, String)>, StoreError>> + Send;
}

/// Encode a leaf for storage at `index` (a leaf the relay builds always fits its bound).
pub(crate) fn encode_leaf(leaf: &LogLeaf, index: u64) -> Result<Vec<u8>, StoreError> {
    leaf.clone()
        .with_index(index)
        .to_bytes()
        .map_err(|e| StoreError::Backend(format!("encoding a log leaf: {e}")))
}

/// The `QuotaExceeded` error when the log holds `have` leaves and is full.
pub(crate) fn check_room(have: u64) -> Result<(), StoreError> {
    if have >= MAX_LOG_LEAVES {
        return Err(StoreError::QuotaExceeded {
            what: "transparency log leaves",
            current: have,
            max: MAX_LOG_LEAVES,
        });
    }
    Ok(())
}

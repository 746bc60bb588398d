//! # Sealpost client library
//!
//! What every Sealpost device runs:
//!
//! * [`net`]: the QUIC connection to the relay, with the relay's CA pinned and
//!   authentication bound to the TLS channel.
//! * [`state`]: the device's local state in one directory, encrypted at rest under a key
//!   derived from a passphrase with Argon2id, written atomically.
//! * [`client`]: sessions per peer device, fan-out to every device of an account and to
//!   this account's other devices, receipts, deduplication, device-change detection,
//!   prekey upkeep.
//! * [`trust`]: the roster chain and every account's device log, verified from the
//!   pinned organisation fingerprint before anything is encrypted to or trusted from a
//!   device; linking, revoking, freezing.
//! * [`approvals`]: the staff multi-signature (roster changes, recovery, unfreeze,
//!   co-signed notices), initiator and approver sides.
//! * [`notices`]: signed notices, sent with `send_notice` and verified on receipt.
//! * [`instructions`]: client instructions (payments, withdrawals, transfers, standing
//!   instructions), a sensitive kind refused from devices on probation.
//! * [`receive`]: the receive core with no I/O: deduplicate, decrypt on a working copy,
//!   compare log views, judge show / hold / refuse; the client commits what it says.
//! * [`transparency`]: the device's checks of the transparency log (proofs, checkpoints in
//!   messages), decisions only.
//! * [`witness`]: `sealpost audit follow`: follow, verify and cosign the transparency log.
//! * [`backoff`]: pauses between reconnection attempts (exponential, with jitter).
//! * [`clock`]: the wall clock, read in one place, and instants written for people.
//! * [`display`]: peer text made safe to show on a terminal (control characters escaped).
//! * [`org`]: the organisation's offline tooling: the root key store (encrypted at rest)
//!   and roster specification files.
//!
//! The `sealpost` CLI (`src/main.rs`) is a thin shell over [`client::Client`].

pub mod alerts;
pub mod approvals;
pub mod archive;
pub mod attachments;
pub mod attest;
pub mod backoff;
pub mod client;
pub mod clock;
pub mod display;
pub mod instructions;
pub mod logcheck;
pub mod net;
pub mod notices;
pub mod org;
pub mod receive;
pub mod shutdown;
pub mod state;
pub mod transparency;
pub mod trust;
pub mod witness;

pub use approvals::{ApprovalDirection, ApprovalStatus, ApprovalView};
pub use attest::{AttestStatus, UnattestedView};
pub use client::{Client, ClientError, Event, SendReport};
pub use notices::{NoticeOutcome, NoticeStatus, NoticeTarget};
pub use trust::{AccountDevices, DeviceView, LinkProgress, LinkTicket, PendingLinkView};

//! The firm's compliance archive (docs/PROTOCOL.md §22), on a device.
//!
//! * **Senders.** Every message between a client and the firm gets one more copy: an
//!   `archive` content sealed by the sender to the archive device the verified roster
//!   names, and to nothing else (a bundle with another identity for the archive account
//!   is refused and reported, never used). What happens when the copy cannot be handed
//!   over is the roster's choice: `refuse` (nothing is sent, exit 5 "try again") or
//!   `queue` (the message goes; the copy is kept in the encrypted profile, at most
//!   [`MAX_ARCHIVE_QUEUE`], and handed over on every later send and receive; a full
//!   queue refuses new messages). No copy is dropped silently.
//! * **Everyone.** The archive, its fingerprint and its disclosure are shown wherever a
//!   conversation is ([`Client::archive_view`]); a roster version that changes them is
//!   announced ([`Event::ArchiveChanged`]).
//! * **The archive device** (`sealpost-archiver`). Archive copies it receives are
//!   collected ([`ArchivedMessage`]) and handed to its sink before the relay is told
//!   they arrived ([`Client::set_archive_sink`]): the acknowledgement follows the
//!   archive's commit, never precedes it.

use rand_core::OsRng;
use sealpost_protocol::content::{Content, Message};
use sealpost_protocol::envelope::{Envelope, EnvelopeKind, MessageId, RoutingHeader};
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::trust::{ArchivePolicy, ArchiveUnreachable, TrustError};
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError, Event};
use crate::clock::now_ms;
use crate::receive::PeerSession;

/// Archive copies waiting at most in one profile (`queue` policy); beyond it new
/// messages to clients (or to the firm) are refused until the archive takes them.
pub const MAX_ARCHIVE_QUEUE: usize = 1024;

/// A message's archive copy between sealing and sending ([`Client::prepare_archive_copy`]).
pub(crate) struct PreparedArchive {
    policy: ArchivePolicy,
    item: PendingArchive,
    /// The sealed copy; `None` when it could not be sealed (`queue` only).
    envelope: Option<Envelope>,
    /// Why it could not be sealed.
    error: Option<ClientError>,
}

impl PreparedArchive {
    /// Whether the copy must be accepted before the message leaves (`refuse`).
    pub(crate) fn goes_first(&self) -> bool {
        self.policy.unreachable == ArchiveUnreachable::Refuse
    }

    /// The sealed copy to send beside the message's own (`queue`).
    pub(crate) fn envelope(&self) -> Option<Envelope> {
        self.envelope.clone()
    }
}

/// An archive copy not yet accepted by the relay, kept in the encrypted profile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PendingArchive {
    /// The message's id (the same on every copy).
    pub message_id: MessageId,
    /// The account the original went to.
    pub to: AccountId,
    /// When it was sent (ms since the Unix epoch).
    pub sent_ms: u64,
    /// The original content.
    pub content: Content,
    /// When it was queued.
    pub queued_ms: u64,
    /// Why the last attempt failed.
    pub last_error: String,
}

/// What a device shows about the firm's archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArchiveView {
    /// The archive's account.
    pub account: AccountId,
    /// The archive device's fingerprint.
    pub fingerprint: String,
    /// The firm's disclosure text.
    pub disclosure: String,
    /// What a device does when the archive cannot take a copy: `refuse` or `queue`.
    pub unreachable: &'static str,
    /// Archive copies this device still holds for it.
    pub queued: usize,
    /// Whether this device is the archive.
    pub this_device: bool,
}

/// An archive copy as the archive device received and checked it.
#[derive(Clone, Debug)]
pub struct ArchivedMessage {
    /// The message id.
    pub message_id: MessageId,
    /// The sending account.
    pub from: AccountId,
    /// The sending device (checked against its account's verified log).
    pub device: DeviceId,
    /// The account the original went to.
    pub to: AccountId,
    /// The conversation's client account (the one the roster does not list as staff).
    pub client_account: AccountId,
    /// The conversation's firm-side account (listed in the roster).
    pub firm_account: AccountId,
    /// When the sender sent it (its clock).
    pub sent_ms: u64,
    /// When this device opened it.
    pub received_ms: u64,
    /// The original content.
    pub content: Content,
    /// The original content's canonical CBOR, as it travelled (re-creates the original).
    pub original: Vec<u8>,
    /// An attachment's decrypted bytes, fetched from the relay and checked against the
    /// descriptor before the copy is handed to the sink.
    pub attachment: Option<Vec<u8>>,
    /// Why an attachment's bytes are not there (the relay no longer has the blob, or it
    /// failed its integrity checks): recorded instead of holding the copy back forever.
    pub attachment_error: Option<String>,
}

/// Largest attachment the archive device fetches into memory for its store.
pub const MAX_ARCHIVED_ATTACHMENT: u64 = 64 * 1024 * 1024;

/// Where the archive device hands what it received, before acknowledging it: `Ok` only
/// once it is durable; an `Err` leaves it unacknowledged (the relay delivers it again).
pub type ArchiveSink = Box<dyn FnMut(&[ArchivedMessage]) -> Result<(), String> + Send>;

/// The event announcing that the roster's archive changed (or was first seen).
pub(crate) fn changed_event(
    before: Option<&ArchivePolicy>,
    after: Option<&ArchivePolicy>,
    version: u64,
) -> Event {
    Event::ArchiveChanged {
        roster_version: version,
        before: before.map(ArchivePolicy::fingerprint),
        after: after.map(ArchivePolicy::fingerprint),
        disclosure: after.map(|a| a.disclosure.clone()),
    }
}

impl Client {
    /// The archive the verified roster names, if any.
    pub fn archive_policy(&self) -> Option<&ArchivePolicy> {
        self.trust.head_roster()?.policy().archive.as_ref()
    }

    /// The archive, as shown beside every conversation (`None`: not recorded).
    pub fn archive_view(&self) -> Option<ArchiveView> {
        let p = self.archive_policy()?;
        Some(ArchiveView {
            account: p.account.clone(),
            fingerprint: p.fingerprint(),
            disclosure: p.disclosure.clone(),
            unreachable: p.unreachable.name(),
            queued: self.archive_queue.len(),
            this_device: self.is_archive_device(),
        })
    }

    /// Whether the verified roster lists `account` as a staff member (the firm's side).
    pub fn is_firm_account(&self, account: &AccountId) -> bool {
        self.trust
            .head_roster()
            .is_some_and(|r| r.member(account).is_some())
    }

    /// Whether this device is the archive the roster names.
    pub fn is_archive_device(&self) -> bool {
        self.archive_policy()
            .is_some_and(|p| &p.identity == self.identity.public())
    }

    /// The archive a message between this account and `peer` is copied to: one side a
    /// client and the other the firm (a roster member), neither the archive itself.
    pub(crate) fn archive_for(&self, peer: &AccountId) -> Option<ArchivePolicy> {
        let head = self.trust.head_roster()?;
        let policy = head.policy().archive.as_ref()?;
        let me = self.account.as_ref()?;
        if peer == me || *me == policy.account || *peer == policy.account {
            return None;
        }
        let me_firm = head.member(me).is_some();
        let peer_firm = head.member(peer).is_some();
        (me_firm != peer_firm).then(|| policy.clone())
    }

    /// Phase 1 of a message's archive copy (§22.3), before the sender's one save: under
    /// `queue`, earlier copies are handed over and this one is queued (saved with the
    /// message); the copy is sealed to the roster's archive device if a session can be
    /// had. `Err` means nothing may be sent (`refuse`, or a full queue).
    pub(crate) async fn prepare_archive_copy(
        &mut self,
        to: &AccountId,
        message_id: MessageId,
        sent_ms: u64,
        content: &Content,
    ) -> Result<Option<PreparedArchive>, ClientError> {
        let Some(policy) = self.archive_for(to) else {
            return Ok(None);
        };
        let item = PendingArchive {
            message_id,
            to: to.clone(),
            sent_ms,
            content: content.clone(),
            queued_ms: now_ms(),
            last_error: String::new(),
        };
        if policy.unreachable == ArchiveUnreachable::Queue {
            // Earlier copies first (the archive's order is the senders' order where it
            // can be).
            self.flush_archive_queue().await;
            if self.archive_queue.len() >= MAX_ARCHIVE_QUEUE {
                return Err(ClientError::ArchiveUnavailable(format!(
                    "{} archive copies already wait for the firm's archive (the most a \
                     device keeps)",
                    self.archive_queue.len()
                )));
            }
            // Durable with the message (the caller's save, before anything leaves): a
            // crash after the message went cannot lose its archive copy (the archive
            // drops a second copy of one it has).
            self.archive_queue.push(item.clone());
        }
        let sealed = self.seal_for_archive(&policy, &item).await;
        match (policy.unreachable, sealed) {
            (_, Ok(envelope)) => Ok(Some(PreparedArchive {
                policy,
                item,
                envelope: Some(envelope),
                error: None,
            })),
            (ArchiveUnreachable::Refuse, Err(e @ ClientError::Trust(_))) => Err(e),
            (ArchiveUnreachable::Refuse, Err(e)) => {
                Err(ClientError::ArchiveUnavailable(e.to_string()))
            }
            (ArchiveUnreachable::Queue, Err(e)) => Ok(Some(PreparedArchive {
                policy,
                item,
                envelope: None,
                error: Some(e),
            })),
        }
    }

    /// Phase 2 under `refuse`, after the save and before the message's own copies leave:
    /// hand the sealed copy to the relay. `Err` means the message must not be sent.
    /// (Under `queue` the copy is already durable in the queue: it goes with the
    /// message's copies, [`PreparedArchive::envelope`] and
    /// [`Client::finish_archive_copy`].)
    pub(crate) async fn deliver_archive_copy(
        &mut self,
        prepared: Option<PreparedArchive>,
    ) -> Result<(), ClientError> {
        let Some(p) = prepared else {
            return Ok(());
        };
        let result = match p.envelope.clone() {
            Some(envelope) => self
                .conn()?
                .send_envelope(envelope)
                .await
                .map(|_| ())
                .map_err(ClientError::from),
            None => Err(ClientError::Protocol("archive copy not sealed".into())),
        };
        self.finish_archive_copy(p, result)
    }

    /// What the relay answered to a prepared archive copy: the queue and the events
    /// updated; `Err` under `refuse` when it did not take it.
    pub(crate) fn finish_archive_copy(
        &mut self,
        p: PreparedArchive,
        result: Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let result = match (result, p.envelope.is_some()) {
            (Err(e), _) => Err(e),
            (Ok(()), true) => Ok(()),
            (Ok(()), false) => Err(p
                .error
                .unwrap_or_else(|| ClientError::Protocol("archive copy not sealed".into()))),
        };
        match (p.policy.unreachable, result) {
            (ArchiveUnreachable::Queue, Ok(())) => {
                // Saved with the next save; if lost, the copy is handed over again and
                // the archive recognises it.
                self.archive_queue
                    .retain(|q| q.message_id != p.item.message_id);
                Ok(())
            }
            (ArchiveUnreachable::Refuse, Ok(())) => Ok(()),
            (ArchiveUnreachable::Refuse, Err(e @ ClientError::Trust(_))) => Err(e),
            (ArchiveUnreachable::Refuse, Err(e)) => {
                Err(ClientError::ArchiveUnavailable(e.to_string()))
            }
            (ArchiveUnreachable::Queue, Err(e)) => {
                if let ClientError::Trust(t) = &e {
                    self.events.push(Event::TrustRefused {
                        subject: format!("archive {}", p.policy.account),
                        reason: t.to_string(),
                    });
                }
                if let Some(q) = self
                    .archive_queue
                    .iter_mut()
                    .find(|q| q.message_id == p.item.message_id)
                {
                    q.last_error = e.to_string();
                }
                self.events.push(Event::ArchiveQueued {
                    message_id: p.item.message_id,
                    to: p.item.to.clone(),
                    waiting: self.archive_queue.len(),
                    reason: e.to_string(),
                });
                Ok(())
            }
        }
    }

    /// Hand the queued archive copies over, oldest first, until one fails (they stay, in
    /// order). Best effort; returns how many were handed over.
    pub(crate) async fn flush_archive_queue(&mut self) -> usize {
        if self.archive_queue.is_empty() || self.conn.is_none() {
            return 0;
        }
        let Some(policy) = self.archive_policy().cloned() else {
            return 0;
        };
        let mut done = 0;
        while let Some(item) = self.archive_queue.first().cloned() {
            match self.hand_to_archive(&policy, &item).await {
                Ok(()) => {
                    self.archive_queue.remove(0);
                    done += 1;
                }
                Err(e) => {
                    if let Some(p) = self.archive_queue.first_mut() {
                        p.last_error = e.to_string();
                    }
                    break;
                }
            }
        }
        if done > 0 {
            if let Err(e) = self.save() {
                tracing::warn!(error = %e, "saving the archive queue failed");
            }
        }
        done
    }

    /// Seal `item` to the roster's archive device and have the relay accept it (the
    /// queue's later attempts: one save per copy).
    async fn hand_to_archive(
        &mut self,
        policy: &ArchivePolicy,
        item: &PendingArchive,
    ) -> Result<(), ClientError> {
        let envelope = self.seal_for_archive(policy, item).await?;
        // The ratchet's nonce rule: state is durable before any envelope leaves.
        self.save()?;
        self.conn()?.send_envelope(envelope).await?;
        Ok(())
    }

    /// Seal `item` for the roster's archive device (a session from its bundle if there
    /// is none yet). Nothing is saved: the caller saves before the envelope leaves.
    async fn seal_for_archive(
        &mut self,
        policy: &ArchivePolicy,
        item: &PendingArchive,
    ) -> Result<Envelope, ClientError> {
        let me = self.me()?;
        let device = policy.device();
        self.archive_session(policy).await?;
        let plain = Message {
            from: me,
            sent_ms: item.sent_ms,
            content: Content::Archive {
                to: item.to.clone(),
                content: Box::new(item.content.clone()),
            },
            views: None,
        }
        .encode()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let mut rng = OsRng;
        let header = RoutingHeader {
            message_id: item.message_id,
            ..RoutingHeader::new(
                self.device_id(),
                device,
                EnvelopeKind::Archive,
                item.sent_ms,
                &mut rng,
            )
        };
        let Some(peer) = self.sessions.get_mut(&device) else {
            return Err(ClientError::Protocol("no session with the archive".into()));
        };
        peer.session
            .seal(header, &plain, &mut rng)
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// A session with the archive device, from a bundle whose identity is exactly the
    /// roster's (any other the relay offers for the archive account is reported).
    async fn archive_session(&mut self, policy: &ArchivePolicy) -> Result<(), ClientError> {
        let device = policy.device();
        if self.sessions.contains_key(&device) {
            return Ok(());
        }
        let bundles = self.conn()?.fetch_bundles(&policy.account).await?;
        let offered = bundles.len();
        let mut chosen = None;
        for b in bundles {
            if b.identity == policy.identity {
                chosen = Some(b);
            } else {
                self.events.push(Event::UntrustedDevice {
                    account: policy.account.clone(),
                    device: b.identity.device_id(),
                    fingerprint: Some(b.identity.fingerprint().to_string()),
                    seen_in: "archive bundle".into(),
                });
            }
        }
        let Some(bundle) = chosen else {
            return Err(ClientError::Trust(TrustError::ArchiveSubstituted {
                account: policy.account.clone(),
                fingerprint: policy.fingerprint(),
                offered,
            }));
        };
        let session = sealpost_protocol::initiate(&self.identity, &bundle, &mut OsRng)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.sessions
            .insert(device, PeerSession::new(policy.account.clone(), session));
        Ok(())
    }

    /// The archive device: anchor the head of its record chain in the relay's transparency
    /// log (§22.6). Returns the leaf index.
    pub async fn anchor_archive_head(
        &mut self,
        seq: u64,
        hash: [u8; 32],
    ) -> Result<u64, ClientError> {
        if !self.is_archive_device() {
            return Err(ClientError::NotAllowed(
                "this device is not the firm's archive".into(),
            ));
        }
        Ok(self.conn()?.anchor_archive(seq, hash).await?)
    }

    /// Archive copies this device still holds for the archive.
    pub fn archive_queue(&self) -> &[PendingArchive] {
        &self.archive_queue
    }

    /// The archive device: where what it receives goes before it is acknowledged.
    pub fn set_archive_sink(&mut self, sink: ArchiveSink) {
        self.archive_sink = Some(sink);
    }

    /// Hand what this (archive) device received to its sink, attachments fetched first.
    /// `Err`: not durable, so not to be acknowledged (a transient failure fetching an
    /// attachment is one: the relay delivers the copy again).
    pub(crate) async fn drain_archived(&mut self) -> Result<(), ClientError> {
        if self.archived.is_empty() {
            return Ok(());
        }
        for i in 0..self.archived.len() {
            let descriptor = match self.archived.get(i).map(|a| &a.content) {
                Some(Content::Attachment { descriptor, .. })
                    if self.archived[i].attachment.is_none()
                        && self.archived[i].attachment_error.is_none() =>
                {
                    descriptor.clone()
                }
                _ => continue,
            };
            if descriptor.size > MAX_ARCHIVED_ATTACHMENT {
                self.archived[i].attachment_error = Some(format!(
                    "{} bytes, more than the {} the archive fetches",
                    descriptor.size, MAX_ARCHIVED_ATTACHMENT
                ));
                continue;
            }
            let mut bytes = Vec::new();
            let fetched =
                crate::attachments::download(self.conn()?, &descriptor, &mut bytes, |_, _| {})
                    .await;
            use crate::attachments::AttachmentError as A;
            match fetched {
                Ok(()) => self.archived[i].attachment = Some(bytes),
                Err(
                    e @ (A::Integrity(_)
                    | A::Refused {
                        code: sealpost_protocol::wire::ErrorCode::NotFound,
                        ..
                    }),
                ) => {
                    self.archived[i].attachment_error = Some(e.to_string());
                }
                Err(e) => return Err(ClientError::Attachment(e.to_string())),
            }
        }
        let Some(sink) = self.archive_sink.as_mut() else {
            return Err(ClientError::Invalid(
                "archive copies arrived but this device has no archive store (run \
                 sealpost-archiver)"
                    .into(),
            ));
        };
        sink(&self.archived).map_err(ClientError::ArchiveUnavailable)?;
        self.archived.clear();
        Ok(())
    }
}

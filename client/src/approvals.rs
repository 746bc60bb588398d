//! Approvals, the multi-signature (docs/PROTOCOL.md §19.5), on both sides.
//!
//! * **Initiator.** [`Client::propose_roster`], [`Client::propose_unfreeze`],
//!   [`Client::start_recovery`] (after [`Client::offer_recovery`] and the out-of-band code
//!   check) and notices that need co-signatures ([`Client::send_signed_notice`]) build an
//!   [`ApprovalRequest`] under the head roster version with a bounded expiry
//!   ([`APPROVAL_VALIDITY_MS`]), sign it ([`ApprovalBundle::initiate`]), persist it, and send
//!   `approval_request` content to every device of every other staff account whose role
//!   the operation's quorum accepts. Answers (approvals and rejections) are accepted only
//!   from a staff device of the request's roster, of an eligible role, not of the
//!   initiator's account; one rejection per account, kept apart from the approvals
//!   ([`MAX_REJECTIONS`]) so rejections never crowd them out. Approvals are checked one by
//!   one (for this request's digest, not a second vote of an account, from the approver's
//!   own device, valid signature, not expired); once
//!   [`verify_quorum`] holds the operation is carried out at once: `publish_roster`,
//!   `send_notice` with the co-signatures, or `append_device_log` with the bundle.
//! * **Approver.** An incoming request is stored only if the initiator's signature and
//!   roster membership verify, it has not expired, its roster version is the head, its
//!   operation fits the subject and `parameters` equal the digest recomputed from the
//!   subject this device will show ([`ApprovalView::summary`] shows it in full, peer text
//!   escaped by [`crate::display`]); at most [`MAX_PENDING_PER_INITIATOR`] pending requests
//!   are kept per initiator account. [`Client::approve`] signs ([`Approval::sign`]) and
//!   answers the initiator's account; [`Client::reject_approval`] answers with a reason.
//!   The relay carries out an operation only while its approvals are unexpired on arrival
//!   (docs/PROTOCOL.md §19.5).

use rand::rngs::OsRng;
use sealpost_protocol::content::{ApprovalSubject, Content, NoticeText, RecoveryCode};
use sealpost_protocol::hexid::Hex16;
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::trust::{
    verify_quorum, Approval, ApprovalBundle, ApprovalRequest, DeviceAction, EntryAuthorization,
    LogEntry, NoticeAudience, Operation, Roster, SignedNotice, SignedRoster, SignerRef, TrustError,
};
use sealpost_protocol::wire::BoundedString;
use serde::{Deserialize, Serialize};

use crate::client::{Client, ClientError, Event};
use crate::clock::now_ms;
use crate::trust::PendingLinkView;

/// How long an approval request stays valid (the protocol allows at most 7 days).
pub const APPROVAL_VALIDITY_MS: u64 = 24 * 60 * 60 * 1000;
/// How long a recovery request stays valid, at most: a recovered device's cooling-off
/// runs from its request's expiry (`LogEntry::probation_start`: the entry may be appended
/// until then), so a short validity keeps the extra wait short. The approvers act after
/// the same out-of-band check, while the client waits.
pub const RECOVERY_APPROVAL_VALIDITY_MS: u64 = 4 * 60 * 60 * 1000;
/// Approval requests kept (incoming and outgoing); settled ones are dropped first.
pub const MAX_APPROVAL_RECORDS: usize = 256;
/// Rejections remembered per outgoing request (at most one per staff account; kept apart
/// from the approvals, which the bundle bounds at [`sealpost_protocol::trust::MAX_APPROVALS`],
/// so rejections never crowd them out).
pub const MAX_REJECTIONS: usize = 64;
/// Pending incoming requests held from one initiator account; further ones are refused
/// until some are settled or expire (one insider cannot fill an approver's
/// [`MAX_APPROVAL_RECORDS`]).
pub const MAX_PENDING_PER_INITIATOR: usize = 16;
/// Longest rejection reason sent, bytes.
pub const MAX_REASON_LEN: usize = 256;

/// Which side of a request this device is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalDirection {
    /// This device initiated it.
    Outgoing,
    /// Another staff member asks this one.
    Incoming,
}

/// Where a request stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting for answers (outgoing) or for this user's decision (incoming).
    Pending,
    /// Outgoing: the quorum is reached; waiting for the other request of the same notice.
    QuorumReached,
    /// Incoming: this user approved.
    Approved,
    /// Incoming: this user rejected.
    Rejected,
    /// Outgoing: the operation was carried out.
    Completed,
    /// Outgoing: carrying out the operation failed (see the detail).
    Failed,
    /// It expired before it settled.
    Expired,
    /// Outgoing: the initiator withdrew it (`sealpost approvals cancel`); answers that
    /// arrive later are ignored.
    Cancelled,
}

impl ApprovalStatus {
    /// The name people and `--json` see (`quorum_reached`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::QuorumReached => "quorum_reached",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    /// Still waiting for something (answers, or carrying out the operation).
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::QuorumReached)
    }
}

fn sent_default() -> bool {
    true
}

/// An answer to an outgoing request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRecord {
    /// The approver's account.
    pub approver: AccountId,
    /// The device that answered.
    pub device: DeviceId,
    /// Approved or rejected.
    pub approved: bool,
    /// The reason given.
    pub reason: String,
    /// When it arrived.
    pub received_ms: u64,
}

/// A request as persisted.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApprovalRecord {
    /// Outgoing or incoming.
    pub direction: ApprovalDirection,
    /// The request, its initiator signature and (outgoing) the approvals counted so far.
    pub bundle: ApprovalBundle,
    /// What is approved.
    pub subject: ApprovalSubject,
    /// When it was made or received.
    pub created_ms: u64,
    /// Status.
    pub status: ApprovalStatus,
    /// Why it failed, or what was done.
    pub detail: String,
    /// Outgoing: every answer received.
    pub responses: Vec<ResponseRecord>,
    /// Outgoing recoveries: the new device's signature over the entry.
    #[serde(default, with = "serde_bytes")]
    pub subject_signature: Option<Vec<u8>>,
    /// Outgoing: the request reached at least one approver (false when every copy was
    /// refused: `sealpost approvals retry` sends it again).
    #[serde(default = "sent_default")]
    pub sent: bool,
}

/// A request as shown to the user: everything that is signed, in full.
#[derive(Clone, Debug, Serialize)]
pub struct ApprovalView {
    /// Request id, hex.
    pub request_id: String,
    /// Outgoing or incoming.
    pub direction: ApprovalDirection,
    /// The operation.
    pub operation: String,
    /// The initiator's account.
    pub initiator: AccountId,
    /// The initiator's device.
    pub initiator_device: DeviceId,
    /// The roster version whose quorum decides.
    pub roster_version: u64,
    /// When it expires.
    pub expires_ms: u64,
    /// The request digest (what approvers sign), hex.
    pub digest: String,
    /// The parameters (digest of the subject), hex.
    pub parameters: String,
    /// Status.
    pub status: ApprovalStatus,
    /// Detail (failure reason, what was done).
    pub detail: String,
    /// Approvals counted so far (outgoing).
    pub approvals: Vec<AccountId>,
    /// Approvals needed.
    pub threshold: u8,
    /// Roles whose approvals count.
    pub roles: Vec<String>,
    /// Answers received (outgoing).
    pub responses: Vec<ResponseRecord>,
    /// The subject, in full, for people.
    pub summary: String,
}

fn operation_fits(op: Operation, subject: &ApprovalSubject) -> bool {
    match subject {
        ApprovalSubject::RosterChange { .. } => op == Operation::RosterChange,
        ApprovalSubject::Notice { header, .. } => header.required_operations().contains(&op),
        ApprovalSubject::DeviceLog { entry, .. } => matches!(
            (op, &entry.action),
            (Operation::AccountRecovery, DeviceAction::Recover { .. })
                | (Operation::Unfreeze, DeviceAction::Unfreeze)
        ),
    }
}

/// The subject in full, for people.
pub fn describe_subject(subject: &ApprovalSubject) -> String {
    match subject {
        ApprovalSubject::RosterChange { roster } => {
            let mut s = format!(
                "roster version {} (issued {} ms), staff:",
                roster.version(),
                roster.issued_ms()
            );
            for m in roster.staff() {
                let fps: Vec<String> = m
                    .devices
                    .iter()
                    .map(|d| d.fingerprint().to_string())
                    .collect();
                s.push_str(&format!(
                    "\n  {} ({}), devices: {}",
                    m.account,
                    m.role,
                    fps.join("; ")
                ));
            }
            s.push_str("\npolicy:");
            let p = roster.policy();
            for op in Operation::ALL {
                let q = p.quorum(op);
                let roles: Vec<String> = q.roles.roles().iter().map(|r| r.to_string()).collect();
                s.push_str(&format!(
                    "\n  {op}: {} approval(s) from {}",
                    q.threshold,
                    roles.join(", ")
                ));
            }
            s.push_str(&format!(
                "\n  cooling-off: {} ms; sensitive kinds: {}",
                p.cooling_off_ms,
                p.sensitive_kinds
                    .iter()
                    .map(|k| k.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            s
        }
        ApprovalSubject::Notice { header, content } => {
            let audience = match &header.audience {
                NoticeAudience::Client(a) => format!("client {a}"),
                NoticeAudience::Segment(seg) => {
                    format!("segment {}", crate::display::line(seg.as_str()))
                }
                NoticeAudience::AllClients => "ALL CLIENTS".to_owned(),
            };
            // Peer text: control characters escaped, so the approver sees exactly what
            // is signed (crate::display).
            let text = match NoticeText::decode(content) {
                Ok(t) => format!(
                    "title: {}\nbody: {}",
                    crate::display::line(t.title.as_str()),
                    crate::display::text(t.body.as_str())
                ),
                Err(e) => format!("(content does not decode: {e})"),
            };
            format!(
                "notice [{}] to {audience}, from {}, sent {} ms\n{text}",
                crate::display::name(&header.category),
                header.sender.account,
                header.sent_ms
            )
        }
        ApprovalSubject::DeviceLog { entry, .. } => {
            let what = match &entry.action {
                DeviceAction::Recover { identity } => format!(
                    "RECOVER the account: revoke every device and add device {} (fingerprint {})",
                    identity.device_id(),
                    identity.fingerprint()
                ),
                DeviceAction::Unfreeze => "UNFREEZE the account".to_owned(),
                other => format!("{} (not a quorum operation)", other.name()),
            };
            format!(
                "account {}: {what}; log entry {} dated {} ms; reason: {}",
                entry.account,
                entry.seq,
                entry.timestamp_ms,
                crate::display::line(entry.reason.as_str())
            )
        }
    }
}

impl ApprovalRecord {
    fn request_id(&self) -> [u8; 16] {
        self.bundle.request.request_id
    }

    fn view(&self, roster: Option<&Roster>) -> ApprovalView {
        let r = &self.bundle.request;
        let quorum = roster.map(|ro| *ro.policy().quorum(r.operation));
        ApprovalView {
            request_id: hex::encode(r.request_id),
            direction: self.direction,
            operation: r.operation.name().to_owned(),
            initiator: r.initiator.account.clone(),
            initiator_device: r.initiator.device,
            roster_version: r.roster_version,
            expires_ms: r.expires_ms,
            digest: r.digest().to_hex(),
            parameters: hex::encode(r.parameters.as_slice()),
            status: if self.status.is_open() && r.expires_ms < now_ms() {
                ApprovalStatus::Expired
            } else {
                self.status
            },
            detail: self.detail.clone(),
            approvals: self
                .bundle
                .approvals
                .as_slice()
                .iter()
                .map(|a| a.approver.account.clone())
                .collect(),
            threshold: quorum.map_or(0, |q| q.threshold),
            roles: quorum.map_or_else(Vec::new, |q| {
                q.roles.roles().iter().map(|r| r.to_string()).collect()
            }),
            responses: self.responses.clone(),
            summary: describe_subject(&self.subject),
        }
    }
}

fn parse_request_id(hex_id: &str) -> Result<[u8; 16], ClientError> {
    hex_id
        .trim()
        .parse::<Hex16>()
        .map(Hex16::into_bytes)
        .map_err(|e| ClientError::Invalid(format!("bad request id: {e}")))
}

impl Client {
    /// How long requests this device initiates stay valid, ms (default
    /// [`APPROVAL_VALIDITY_MS`]; between one second and the protocol's 7 days).
    pub fn set_approval_validity(&mut self, ms: u64) -> Result<(), ClientError> {
        if !(1_000..=sealpost_protocol::trust::MAX_APPROVAL_VALIDITY_MS).contains(&ms) {
            return Err(ClientError::Invalid(
                "approval validity must be between 1 s and 7 days".into(),
            ));
        }
        self.approval_validity_ms = ms;
        Ok(())
    }

    /// The stored record of a request (id in hex): the signed request, the subject and
    /// (outgoing) the approvals gathered.
    pub fn approval_record(&self, request_id: &str) -> Option<&ApprovalRecord> {
        let id = parse_request_id(request_id).ok()?;
        self.approvals.iter().find(|r| r.request_id() == id)
    }

    /// For adversarial tests: this device's approval of any request, unchecked.
    #[doc(hidden)]
    pub fn sign_approval_for_tests(
        &self,
        request: &ApprovalRequest,
    ) -> Result<Approval, ClientError> {
        Ok(Approval::sign(request, self.me()?, &self.identity))
    }

    /// For adversarial tests: send arbitrary content to `to` as this device.
    #[doc(hidden)]
    pub async fn send_content_for_tests(
        &mut self,
        to: &AccountId,
        content: Content,
    ) -> Result<crate::client::SendReport, ClientError> {
        self.fan_out(to, content, false).await
    }

    /// For adversarial tests: send arbitrary content to `to` as this device, every
    /// recipient copy labelled `kind` whatever the content requires (the relay applies its
    /// rules to the label; receivers refuse the mismatch).
    #[doc(hidden)]
    pub async fn send_relabelled_for_tests(
        &mut self,
        to: &AccountId,
        content: Content,
        kind: sealpost_protocol::EnvelopeKind,
    ) -> Result<crate::client::SendReport, ClientError> {
        self.fan_out_as(to, content, false, Some(kind), true).await
    }

    /// Every approval request this device holds, newest last.
    pub fn approvals(&self) -> Vec<ApprovalView> {
        self.approvals
            .iter()
            .map(|r| r.view(self.roster_for_view(r)))
            .collect()
    }

    /// One request (id in hex), in full.
    pub fn approval(&self, request_id: &str) -> Option<ApprovalView> {
        let id = parse_request_id(request_id).ok()?;
        self.approvals
            .iter()
            .find(|r| r.request_id() == id)
            .map(|r| r.view(self.roster_for_view(r)))
    }

    fn roster_for_view(&self, r: &ApprovalRecord) -> Option<&Roster> {
        self.trust
            .chain()
            .and_then(|c| c.get(r.bundle.request.roster_version))
    }

    fn record_index(&self, id: &[u8; 16], direction: ApprovalDirection) -> Option<usize> {
        self.approvals
            .iter()
            .position(|r| r.request_id() == *id && r.direction == direction)
    }

    /// Make room for one more record: drop the oldest settled one. `false` when every
    /// record is still pending.
    fn make_room(&mut self) -> bool {
        if self.approvals.len() < MAX_APPROVAL_RECORDS {
            return true;
        }
        let now = now_ms();
        if let Some(i) = self.approvals.iter().position(|r| {
            !matches!(
                r.status,
                ApprovalStatus::Pending | ApprovalStatus::QuorumReached
            ) || r.bundle.request.expires_ms < now
        }) {
            self.approvals.remove(i);
            return true;
        }
        false
    }

    /// The head roster and this device's place in it (staff only).
    async fn staff_head(&mut self) -> Result<Roster, ClientError> {
        self.refresh_roster(true).await?;
        let chain = self.trust.chain().ok_or_else(|| {
            ClientError::NoRoster("the organisation has not published a roster".into())
        })?;
        let head = chain.head().clone();
        let me = self.me()?;
        if head.staff_device(&me, &self.device_id()).is_none() {
            return Err(ClientError::NotAllowed(format!(
                "this device is not a staff device of {me} in roster version {}",
                head.version()
            )));
        }
        Ok(head)
    }

    /// Start a request for `op` about `subject`: sign, persist, send to the eligible
    /// staff. Returns the request as persisted.
    pub(crate) async fn initiate(
        &mut self,
        op: Operation,
        subject: ApprovalSubject,
        subject_signature: Option<[u8; 64]>,
    ) -> Result<ApprovalView, ClientError> {
        let head = self.staff_head().await?;
        if !operation_fits(op, &subject) {
            return Err(ClientError::Invalid(format!(
                "{op} does not fit this subject"
            )));
        }
        let me = self.me()?;
        let validity = match op {
            Operation::AccountRecovery => {
                self.approval_validity_ms.min(RECOVERY_APPROVAL_VALIDITY_MS)
            }
            _ => self.approval_validity_ms,
        };
        let request = ApprovalRequest::new(
            op,
            subject.parameters().to_vec(),
            head.version(),
            now_ms().saturating_add(validity),
            SignerRef::new(me.clone(), self.device_id()),
            &mut OsRng,
        )?;
        let bundle = ApprovalBundle::initiate(request, &self.identity)?;
        if !self.make_room() {
            return Err(ClientError::NotAllowed(format!(
                "{MAX_APPROVAL_RECORDS} approval requests are pending; settle some first"
            )));
        }
        let record = ApprovalRecord {
            direction: ApprovalDirection::Outgoing,
            bundle: bundle.clone(),
            subject: subject.clone(),
            created_ms: now_ms(),
            status: ApprovalStatus::Pending,
            detail: String::new(),
            responses: Vec::new(),
            subject_signature: subject_signature.map(|s| s.to_vec()),
            sent: false,
        };
        let view = record.view(Some(&head));
        self.approvals.push(record);
        self.save()?;
        let i = self.approvals.len() - 1;
        self.send_request(i, &head).await?;
        Ok(view)
    }

    /// Send outgoing request `i` to every staff member of `head` who may approve it. A
    /// request no approver received is marked failed (with the reason) rather than left
    /// pending; `sealpost approvals retry` sends it again.
    async fn send_request(&mut self, i: usize, head: &Roster) -> Result<(), ClientError> {
        let me = self.me()?;
        let record = self.approvals[i].clone();
        let (bundle, subject) = (record.bundle, record.subject);
        let op = bundle.request.operation;
        let quorum = *head.policy().quorum(op);
        let approvers: Vec<AccountId> = head
            .staff()
            .iter()
            .filter(|m| m.account != me && quorum.roles.contains(m.role))
            .map(|m| m.account.clone())
            .collect();
        let mut sent = 0usize;
        let mut last_err = None;
        for a in approvers {
            let content = Content::ApprovalRequest {
                bundle: Box::new(bundle.clone()),
                subject: Box::new(subject.clone()),
            };
            match self.fan_out(&a, content, false).await {
                Ok(r) => {
                    sent += 1;
                    self.events.extend(r.events);
                }
                Err(e) => last_err = Some(e),
            }
        }
        let outcome = match (sent, last_err) {
            (0, Some(e)) => {
                self.approvals[i].status = ApprovalStatus::Failed;
                self.approvals[i].detail = format!("the request reached no approver: {e}");
                Err(e)
            }
            _ => {
                self.approvals[i].sent = true;
                Ok(())
            }
        };
        self.save()?;
        outcome
    }

    /// Withdraw an outgoing request (id in hex): answers that arrive later are ignored and
    /// the operation is never carried out. The approvers' devices keep showing it until
    /// it expires; an approval they send changes nothing. All requests of the same notice
    /// are withdrawn together.
    pub fn cancel_approval(&mut self, request_id: &str) -> Result<ApprovalView, ClientError> {
        let id = parse_request_id(request_id)?;
        let Some(i) = self.record_index(&id, ApprovalDirection::Outgoing) else {
            return Err(match self.record_index(&id, ApprovalDirection::Incoming) {
                Some(_) => ClientError::NotAllowed(
                    "only the initiator cancels a request; reject it instead                      (`sealpost approvals reject`)"
                        .into(),
                ),
                None => ClientError::NotFound(format!("approval request {request_id}")),
            });
        };
        match self.approvals[i].status {
            ApprovalStatus::Pending
            | ApprovalStatus::QuorumReached
            | ApprovalStatus::Failed
            | ApprovalStatus::Rejected => {}
            other => {
                return Err(ClientError::Invalid(format!(
                    "this request is {} already",
                    other.name()
                )))
            }
        }
        for j in self.notice_group(i) {
            let r = &mut self.approvals[j];
            if matches!(
                r.status,
                ApprovalStatus::Pending
                    | ApprovalStatus::QuorumReached
                    | ApprovalStatus::Failed
                    | ApprovalStatus::Rejected
            ) {
                r.status = ApprovalStatus::Cancelled;
                r.detail = "cancelled by the initiator".into();
            }
        }
        self.save()?;
        Ok(self.approvals[i].view(self.roster_for_view(&self.approvals[i])))
    }

    /// Try a failed outgoing request again (id in hex): one that reached no approver is
    /// sent again; one whose quorum is in (its operation refused, say while this device
    /// was on probation) is carried out again; otherwise it waits for answers again. Its
    /// approvals must be unexpired and its roster version still the head.
    pub async fn retry_approval(&mut self, request_id: &str) -> Result<Vec<Event>, ClientError> {
        let id = parse_request_id(request_id)?;
        let i = self
            .record_index(&id, ApprovalDirection::Outgoing)
            .ok_or_else(|| {
                ClientError::NotFound(format!("outgoing approval request {request_id}"))
            })?;
        let record = self.approvals[i].clone();
        if !matches!(
            record.status,
            ApprovalStatus::Failed | ApprovalStatus::QuorumReached
        ) {
            return Err(ClientError::Invalid(format!(
                "only a failed request is tried again; this one is {}",
                record.status.name()
            )));
        }
        let req = &record.bundle.request;
        if req.expires_ms <= now_ms() {
            self.approvals[i].status = ApprovalStatus::Expired;
            self.save()?;
            return Err(ClientError::Trust(TrustError::Expired {
                expires_ms: req.expires_ms,
                now_ms: now_ms(),
            }));
        }
        let head = self.staff_head().await?;
        if head.version() != req.roster_version {
            return Err(ClientError::Invalid(format!(
                "the roster changed since this request was made (version {} then, {} now): \
                 start the request again",
                req.roster_version,
                head.version()
            )));
        }
        if !record.sent {
            self.approvals[i].status = ApprovalStatus::Pending;
            self.approvals[i].detail.clear();
            self.send_request(i, &head).await?;
            return Ok(Vec::new());
        }
        if verify_quorum(&head, &record.bundle, now_ms()).is_ok() {
            for j in self.notice_group(i) {
                if self.approvals[j].status == ApprovalStatus::Failed {
                    self.approvals[j].status = ApprovalStatus::QuorumReached;
                }
            }
            self.approvals[i].status = ApprovalStatus::QuorumReached;
            let events = self.carry_out(i).await;
            self.save()?;
            return Ok(events);
        }
        self.approvals[i].status = ApprovalStatus::Pending;
        self.approvals[i].detail.clear();
        self.save()?;
        Ok(Vec::new())
    }

    /// Carry out, again, outgoing operations whose quorum is in and whose carrying out
    /// failed for a transient reason (run at the end of every receive pass). Stops at the
    /// first transient failure; marks the expired ones.
    pub(crate) async fn retry_approved(&mut self) -> Vec<Event> {
        let now = now_ms();
        let mut events = Vec::new();
        let mut changed = false;
        for i in 0..self.approvals.len() {
            let r = &self.approvals[i];
            if r.direction != ApprovalDirection::Outgoing
                || r.status != ApprovalStatus::QuorumReached
            {
                continue;
            }
            if r.bundle.request.expires_ms <= now {
                self.approvals[i].status = ApprovalStatus::Expired;
                changed = true;
                continue;
            }
            // A notice waits until every request of it has its quorum.
            if self
                .notice_group(i)
                .iter()
                .any(|j| self.approvals[*j].status != ApprovalStatus::QuorumReached)
            {
                continue;
            }
            let evs = self.carry_out(i).await;
            let stop = evs.iter().any(|e| {
                matches!(
                    e,
                    Event::OperationFailed {
                        will_retry: true,
                        ..
                    }
                )
            });
            events.extend(evs);
            if stop {
                break;
            }
        }
        if changed {
            let _ = self.save();
        }
        events
    }

    /// The outgoing requests of the same notice as request `i` (for other subjects: `i`).
    fn notice_group(&self, i: usize) -> Vec<usize> {
        let ApprovalSubject::Notice { header, .. } = &self.approvals[i].subject else {
            return vec![i];
        };
        self.approvals
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.direction == ApprovalDirection::Outgoing
                    && matches!(&r.subject, ApprovalSubject::Notice { header: h, .. } if h.notice_id == header.notice_id)
            })
            .map(|(j, _)| j)
            .collect()
    }

    /// Propose `next` as the next roster version (it must follow the head: version + 1,
    /// previous = the head's hash). Published once the head's roster-change quorum
    /// approves.
    pub async fn propose_roster(&mut self, next: Roster) -> Result<ApprovalView, ClientError> {
        let head = self.staff_head().await?;
        if next.version() != head.version() + 1 || next.previous() != Some(head.hash()) {
            return Err(ClientError::Invalid(format!(
                "the proposed roster must be version {} following the head's hash",
                head.version() + 1
            )));
        }
        self.initiate(
            Operation::RosterChange,
            ApprovalSubject::RosterChange { roster: next },
            None,
        )
        .await
    }

    /// Publish a roster version signed elsewhere: version 1 signed by the organisation
    /// root (`sealpost org`), or a later version with its quorum. It is verified from
    /// the pinned fingerprint before it is sent. Returns the new head version.
    pub async fn publish_signed_roster(
        &mut self,
        signed: SignedRoster,
    ) -> Result<u64, ClientError> {
        let pinned = self
            .relay
            .as_ref()
            .map(crate::client::RelayInfo::org)
            .transpose()?
            .flatten()
            .ok_or_else(|| ClientError::NoRoster("no organisation fingerprint is pinned".into()))?;
        self.refresh_roster(true).await?;
        let now = now_ms();
        let version = signed.roster.version();
        match self.trust.chain() {
            Some(chain) => {
                let mut c = chain.clone();
                c.extend(vec![signed.clone()], now)?;
            }
            None => {
                sealpost_protocol::trust::RosterChain::verify(
                    &pinned,
                    vec![signed.clone()],
                    None,
                    now,
                )?;
            }
        }
        self.conn()?.publish_roster(signed).await?;
        self.refresh_roster(true).await?;
        Ok(version)
    }

    /// Staff: propose unfreezing `account` (frozen by one of its devices). Carried out
    /// when the unfreeze quorum approves.
    pub async fn propose_unfreeze(
        &mut self,
        account: &AccountId,
        reason: &str,
    ) -> Result<ApprovalView, ClientError> {
        let (log, set, events) = self.load_log(account).await?;
        self.events.extend(events);
        if !set.frozen {
            return Err(ClientError::Invalid(format!("{account} is not frozen")));
        }
        let body = log.next_body(now_ms(), DeviceAction::Unfreeze, reason);
        self.initiate(
            Operation::Unfreeze,
            ApprovalSubject::DeviceLog {
                entry: body,
                link: None,
            },
            None,
        )
        .await
    }

    /// Staff: offer a recovery of `account` to the device of its pending link `link_id`
    /// (the client's new device). The new device shows a code; check it out of band,
    /// then call [`Client::start_recovery`].
    pub async fn offer_recovery(
        &mut self,
        account: &AccountId,
        link_id: &str,
        reason: &str,
    ) -> Result<PendingLinkView, ClientError> {
        self.staff_head().await?;
        self.make_offer(account, link_id, true, reason).await
    }

    /// Staff: after the client read out the code its new device shows (`typed_code`),
    /// wait (at most `max_wait`) for the new device's signature and send the recovery
    /// to the other staff for approval. Carried out when the recovery quorum approves.
    pub async fn start_recovery(
        &mut self,
        link_id: &str,
        typed_code: &str,
        max_wait: std::time::Duration,
    ) -> Result<ApprovalView, ClientError> {
        let (offer, signature, nonce) = self
            .await_signed_offer(link_id, typed_code, max_wait)
            .await?;
        if !matches!(offer.body.action, DeviceAction::Recover { .. }) {
            return Err(ClientError::Invalid("this offer is not a recovery".into()));
        }
        let view = self
            .initiate(
                Operation::AccountRecovery,
                ApprovalSubject::DeviceLog {
                    entry: offer.body.clone(),
                    // Every approver computes the code from these and checks it with the
                    // account holder on a call of their own.
                    link: Some(Box::new(RecoveryCode {
                        challenge: offer.challenge,
                        nonce,
                    })),
                },
                Some(signature),
            )
            .await?;
        self.drop_offer(&offer.link_id);
        Ok(view)
    }

    /// Approve an incoming request (id in hex): checked again, signed, sent to the
    /// initiator's account. A recovery is approved only with its code:
    /// [`Client::approve_with_code`].
    pub async fn approve(&mut self, request_id: &str) -> Result<ApprovalView, ClientError> {
        self.approve_with_code(request_id, None).await
    }

    /// Approve an incoming request (id in hex). For an account recovery, `code` is the
    /// code the account holder read from their new device on a call this approver placed
    /// to the number on file: it must match the code computed from the request, so that a
    /// person who deceived the initiator (a face swap, a hijacked call) still has to
    /// deceive every approver separately. Ignored for other operations.
    pub async fn approve_with_code(
        &mut self,
        request_id: &str,
        code: Option<&str>,
    ) -> Result<ApprovalView, ClientError> {
        let id = parse_request_id(request_id)?;
        if self
            .record_index(&id, ApprovalDirection::Outgoing)
            .is_some()
        {
            return Err(ClientError::NotAllowed(
                "this device initiated the request, and the initiator's account never approves \
                 its own request"
                    .into(),
            ));
        }
        let i = self
            .record_index(&id, ApprovalDirection::Incoming)
            .ok_or_else(|| ClientError::NotFound(format!("approval request {request_id}")))?;
        let record = self.approvals[i].clone();
        if record.status != ApprovalStatus::Pending {
            return Err(ClientError::Invalid(format!(
                "this request is {}",
                record.status.name()
            )));
        }
        let req = record.bundle.request.clone();
        if now_ms() > req.expires_ms {
            self.approvals[i].status = ApprovalStatus::Expired;
            self.save()?;
            return Err(ClientError::Trust(TrustError::Expired {
                expires_ms: req.expires_ms,
                now_ms: now_ms(),
            }));
        }
        let head = self.staff_head().await?;
        let me = self.me()?;
        let member = head
            .member(&me)
            .ok_or_else(|| ClientError::NotAllowed(format!("{me} is not in the roster")))?;
        if !head
            .policy()
            .quorum(req.operation)
            .roles
            .contains(member.role)
        {
            return Err(ClientError::NotAllowed(format!(
                "the {} role does not count for {}",
                member.role, req.operation
            )));
        }
        if req.initiator.account == me {
            return Err(ClientError::NotAllowed(
                "the initiator's account never approves its own request".into(),
            ));
        }
        if head.version() != req.roster_version {
            return Err(ClientError::Invalid(format!(
                "the roster moved on to version {}; the request is stale",
                head.version()
            )));
        }
        if let ApprovalSubject::DeviceLog { entry, link } = &record.subject {
            if matches!(entry.action, DeviceAction::Recover { .. }) {
                let expected = link.as_ref().and_then(|l| l.code(entry)).ok_or_else(|| {
                    ClientError::Invalid(
                        "the recovery request carries no link code to check; reject it".into(),
                    )
                })?;
                let Some(typed) = code else {
                    return Err(ClientError::NotAllowed(
                        "a recovery is approved only with the code the account holder reads \
                         from their new device, on a call you placed to the number on file"
                            .into(),
                    ));
                };
                if !expected.matches(typed) {
                    return Err(ClientError::CodeMismatch);
                }
            }
        }
        // A device-log entry must still extend the account's verified log.
        // (Staff not assigned to the account may not read its log; the initiator and the
        // relay verify the entry against it again before it is appended.)
        if let ApprovalSubject::DeviceLog { entry, .. } = &record.subject {
            match self.load_log(&entry.account).await {
                Ok((log, set, events)) => {
                    self.events.extend(events);
                    if log.head().map(|h| h.hash.0) != entry.previous {
                        return Err(ClientError::Invalid(
                            "the account's log changed since the request; it cannot apply".into(),
                        ));
                    }
                    if matches!(entry.action, DeviceAction::Unfreeze) && !set.frozen {
                        return Err(ClientError::Invalid(format!(
                            "{} is not frozen",
                            entry.account
                        )));
                    }
                }
                Err(ClientError::Net(crate::net::NetError::Refused {
                    code: sealpost_protocol::wire::ErrorCode::Forbidden,
                    ..
                })) => {}
                Err(e) => return Err(e),
            }
        }
        let approval = Approval::sign(&req, me, &self.identity);
        self.fan_out(
            &req.initiator.account,
            Content::ApprovalResponse {
                request_id: req.request_id,
                approval: Some(Box::new(approval)),
                reason: BoundedString::truncating(""),
            },
            false,
        )
        .await?;
        self.approvals[i].status = ApprovalStatus::Approved;
        self.save()?;
        Ok(self.approvals[i].view(Some(&head)))
    }

    /// Reject an incoming request (id in hex), telling the initiator why.
    pub async fn reject_approval(
        &mut self,
        request_id: &str,
        reason: &str,
    ) -> Result<ApprovalView, ClientError> {
        let id = parse_request_id(request_id)?;
        let i = self
            .record_index(&id, ApprovalDirection::Incoming)
            .ok_or_else(|| ClientError::NotFound(format!("approval request {request_id}")))?;
        if self.approvals[i].status != ApprovalStatus::Pending {
            return Err(ClientError::Invalid(format!(
                "this request is {}",
                self.approvals[i].status.name()
            )));
        }
        let initiator = self.approvals[i].bundle.request.initiator.account.clone();
        self.fan_out(
            &initiator,
            Content::ApprovalResponse {
                request_id: id,
                approval: None,
                reason: BoundedString::truncating(reason),
            },
            false,
        )
        .await?;
        self.approvals[i].status = ApprovalStatus::Rejected;
        self.approvals[i].detail = reason.chars().take(MAX_REASON_LEN).collect();
        self.save()?;
        Ok(self.approvals[i].view(self.roster_for_view(&self.approvals[i])))
    }

    /// An `approval_request` arrived from `device` of `from`: verify and store it.
    pub(crate) async fn receive_approval_request(
        &mut self,
        device: DeviceId,
        from: &AccountId,
        bundle: ApprovalBundle,
        subject: ApprovalSubject,
    ) -> Vec<Event> {
        let id = bundle.request.request_id;
        let refused = |reason: String| {
            vec![Event::ApprovalRefused {
                request_id: hex::encode(id),
                from: from.clone(),
                reason,
            }]
        };
        match self.check_request(device, from, &bundle, &subject).await {
            Ok(()) => {}
            Err(reason) => return refused(reason),
        }
        if self.approvals.iter().any(|r| r.request_id() == id) {
            return refused("a request with this id was already received".into());
        }
        let now = now_ms();
        let pending_from = self
            .approvals
            .iter()
            .filter(|r| {
                r.direction == ApprovalDirection::Incoming
                    && r.status == ApprovalStatus::Pending
                    && r.bundle.request.expires_ms >= now
                    && r.bundle.request.initiator.account == *from
            })
            .count();
        if pending_from >= MAX_PENDING_PER_INITIATOR {
            return refused(format!(
                "{from} already has {MAX_PENDING_PER_INITIATOR} requests pending on this device; \
                 settle or reject some first"
            ));
        }
        if !self.make_room() {
            return refused(format!(
                "{MAX_APPROVAL_RECORDS} approval requests are pending on this device"
            ));
        }
        let record = ApprovalRecord {
            direction: ApprovalDirection::Incoming,
            bundle,
            subject,
            created_ms: now_ms(),
            status: ApprovalStatus::Pending,
            detail: String::new(),
            responses: Vec::new(),
            subject_signature: None,
            sent: true,
        };
        let view = record.view(self.roster_for_view(&record));
        self.approvals.push(record);
        vec![Event::ApprovalRequested { request: view }]
    }

    async fn check_request(
        &mut self,
        device: DeviceId,
        from: &AccountId,
        bundle: &ApprovalBundle,
        subject: &ApprovalSubject,
    ) -> Result<(), String> {
        let req = &bundle.request;
        if req.initiator.account != *from || req.initiator.device != device {
            return Err("the request was not sent by its initiator's device".into());
        }
        if !operation_fits(req.operation, subject) {
            return Err(format!("{} does not fit the subject", req.operation));
        }
        if req.parameters.as_slice() != subject.parameters().as_slice() {
            return Err(
                "the signed parameters do not match the content shown (other content)".into(),
            );
        }
        let head_version = self.trust.chain().map(|c| c.head().version());
        if head_version.is_none_or(|v| v < req.roster_version) {
            if let Err(e) = self.refresh_roster(true).await {
                return Err(format!("cannot verify the roster: {e}"));
            }
        }
        let Some(chain) = self.trust.chain() else {
            return Err("no organisation roster to check the request against".into());
        };
        if chain.head().version() != req.roster_version {
            return Err(format!(
                "the request names roster version {}, the head is {}",
                req.roster_version,
                chain.head().version()
            ));
        }
        // The initiator's membership, signature and the expiry: verify_quorum checks
        // them first; with no approvals it then reports only that the quorum is missing.
        match verify_quorum(chain.head(), bundle, now_ms()) {
            Err(TrustError::QuorumNotReached { .. }) | Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        if !bundle.approvals.as_slice().is_empty() {
            return Err("a new request carries no approvals".into());
        }
        match subject {
            ApprovalSubject::RosterChange { roster } => {
                if roster.version() != chain.head().version() + 1
                    || roster.previous() != Some(chain.head_ref().hash)
                {
                    return Err("the proposed roster does not follow the head".into());
                }
            }
            ApprovalSubject::Notice { header, content } => {
                if header.sender != req.initiator {
                    return Err("the notice's sender is not the initiator".into());
                }
                if sealpost_protocol::trust::content_hash(content) != header.content_hash {
                    return Err("the notice content does not match its hash".into());
                }
                if header.roster_version != req.roster_version {
                    return Err("the notice names another roster version".into());
                }
            }
            ApprovalSubject::DeviceLog { entry, link } => {
                let recover = matches!(entry.action, DeviceAction::Recover { .. });
                if recover != link.is_some() {
                    return Err(if recover {
                        "a recovery request must carry its link code inputs".into()
                    } else {
                        "only a recovery request carries link code inputs".into()
                    });
                }
            }
        }
        Ok(())
    }

    /// An `approval_response` arrived from `device` of `from`.
    pub(crate) async fn receive_approval_response(
        &mut self,
        device: DeviceId,
        from: &AccountId,
        request_id: [u8; 16],
        approval: Option<Approval>,
        reason: &str,
    ) -> Vec<Event> {
        let refused = |reason: String| {
            vec![Event::ApprovalRefused {
                request_id: hex::encode(request_id),
                from: from.clone(),
                reason,
            }]
        };
        let Some(i) = self.record_index(&request_id, ApprovalDirection::Outgoing) else {
            return refused("no outgoing request with this id on this device".into());
        };
        // A request rejected by too many approvers still takes answers while it lasts: an
        // approver may change their mind (and one rogue rejection never blocks it).
        if !matches!(
            self.approvals[i].status,
            ApprovalStatus::Pending | ApprovalStatus::Rejected
        ) {
            return refused(format!(
                "the request is {} already",
                self.approvals[i].status.name()
            ));
        }
        // Only someone who could approve may answer at all (approve or reject): a staff
        // device listed under `from` in the request's roster version, of a role the
        // operation's quorum accepts, not of the initiator's account. Otherwise anyone
        // able to message this device could fill the request with answers.
        let req = self.approvals[i].bundle.request.clone();
        let Some(roster) = self
            .trust
            .chain()
            .and_then(|c| c.get(req.roster_version))
            .cloned()
        else {
            return refused("the request's roster version is unknown".into());
        };
        if *from == req.initiator.account {
            return refused("an answer from the initiator's account never counts".into());
        }
        let Some(member) = roster.member(from) else {
            return refused(format!(
                "{from} is not a staff account in roster version {}",
                req.roster_version
            ));
        };
        if member.device(&device).is_none() {
            return refused(format!(
                "device {device} is not a staff device of {from} in roster version {}",
                req.roster_version
            ));
        }
        let quorum = *roster.policy().quorum(req.operation);
        if !quorum.roles.contains(member.role) {
            return refused(format!(
                "{from} is {}, which the policy does not accept for {}",
                member.role, req.operation
            ));
        }
        let response = ResponseRecord {
            approver: from.clone(),
            device,
            approved: approval.is_some(),
            reason: reason.chars().take(MAX_REASON_LEN).collect(),
            received_ms: now_ms(),
        };
        let Some(approval) = approval else {
            // One rejection per account, in a list of their own: rejections never take
            // the place of approvals.
            let responses = &self.approvals[i].responses;
            if responses.iter().any(|r| !r.approved && r.approver == *from) {
                return refused(format!(
                    "{from} already rejected this request (one answer per account)"
                ));
            }
            if responses.iter().filter(|r| !r.approved).count() >= MAX_REJECTIONS {
                return refused(format!(
                    "{MAX_REJECTIONS} rejections are already recorded for this request"
                ));
            }
            self.approvals[i].responses.push(response);
            // Once too few possible approvers are left to reach the quorum, the request is
            // rejected: it can never be carried out.
            let record = &self.approvals[i];
            let approved: Vec<&AccountId> = record
                .bundle
                .approvals
                .as_slice()
                .iter()
                .map(|a| &a.approver.account)
                .collect();
            let rejected: Vec<&AccountId> = record
                .responses
                .iter()
                .filter(|r| !r.approved)
                .map(|r| &r.approver)
                .collect();
            let undecided = roster
                .staff()
                .iter()
                .filter(|m| {
                    m.account != req.initiator.account
                        && quorum.roles.contains(m.role)
                        && !approved.contains(&&m.account)
                        && !rejected.contains(&&m.account)
                })
                .count();
            if approved.len() + undecided < usize::from(quorum.threshold) {
                let names: Vec<String> = rejected.iter().map(|a| a.to_string()).collect();
                self.approvals[i].status = ApprovalStatus::Rejected;
                self.approvals[i].detail = format!(
                    "rejected by {}: the quorum of {} can no longer be reached",
                    names.join(", "),
                    quorum.threshold
                );
            }
            let _ = self.save();
            return vec![Event::ApprovalAnswered {
                request_id: hex::encode(request_id),
                approver: from.clone(),
                approved: false,
                reason: reason.chars().take(MAX_REASON_LEN).collect(),
            }];
        };
        let record = &self.approvals[i];
        if approval.approver.account != *from || approval.approver.device != device {
            return refused("the approval was not sent by the approving device".into());
        }
        if approval.request != req.digest().0 {
            return refused("the approval is for other content (another request digest)".into());
        }
        if record
            .bundle
            .approvals
            .as_slice()
            .iter()
            .any(|a| a.approver.account == approval.approver.account)
        {
            return refused(format!(
                "{} already approved this request (one vote per account)",
                approval.approver.account
            ));
        }
        let mut bundle = record.bundle.clone();
        if let Err(e) = bundle.push(approval) {
            return refused(e.to_string());
        }
        let reached = match verify_quorum(&roster, &bundle, now_ms()) {
            Ok(_) => true,
            Err(TrustError::QuorumNotReached { .. }) => false,
            Err(e @ TrustError::Expired { .. }) => {
                self.approvals[i].status = ApprovalStatus::Expired;
                return refused(e.to_string());
            }
            Err(e) => return refused(e.to_string()),
        };
        self.approvals[i].bundle = bundle;
        // An approval from an account that had rejected replaces its rejection.
        self.approvals[i]
            .responses
            .retain(|r| r.approved || r.approver != *from);
        self.approvals[i].responses.push(response);
        if self.approvals[i].status == ApprovalStatus::Rejected {
            self.approvals[i].status = ApprovalStatus::Pending;
            self.approvals[i].detail.clear();
        }
        let mut events = vec![Event::ApprovalAnswered {
            request_id: hex::encode(request_id),
            approver: from.clone(),
            approved: true,
            reason: reason.chars().take(MAX_REASON_LEN).collect(),
        }];
        if reached {
            self.approvals[i].status = ApprovalStatus::QuorumReached;
            events.extend(self.carry_out(i).await);
        }
        events
    }

    /// The quorum of record `i` is reached: carry out its operation.
    async fn carry_out(&mut self, i: usize) -> Vec<Event> {
        let record = self.approvals[i].clone();
        let request_id = hex::encode(record.request_id());
        let operation = record.bundle.request.operation.name().to_owned();
        let done = match &record.subject {
            ApprovalSubject::RosterChange { roster } => {
                let signed = SignedRoster::with_quorum(roster.clone(), record.bundle.clone());
                self.publish_signed_roster(signed)
                    .await
                    .map(|v| vec![(i, format!("roster version {v} published"))])
            }
            ApprovalSubject::DeviceLog { entry, .. } => {
                let subject_signature = record
                    .subject_signature
                    .as_deref()
                    .and_then(|s| <[u8; 64]>::try_from(s).ok());
                let log_entry = LogEntry {
                    body: entry.clone(),
                    authorization: EntryAuthorization::Quorum(record.bundle.clone()),
                    subject_signature,
                };
                if matches!(entry.action, DeviceAction::Recover { .. }) {
                    // A recovery revokes the account's other devices: the relay appends it
                    // only when the recovered device completes it (docs/PROTOCOL.md §19.5,
                    // "Completing a recovery"), so the account is never left without a
                    // device that can use it. Hand it over on the link it was offered on.
                    return match self.authorize_recovery(log_entry).await {
                        Ok(summary) => self.completed(&[i], summary),
                        Err(e) => {
                            self.refresh_roster_after_conflict(&e).await;
                            self.fail(&[i], &request_id, &operation, e)
                        }
                    };
                }
                match self.conn() {
                    Ok(conn) => match conn.append_device_log(log_entry).await {
                        Ok(()) => {
                            let account = entry.account.clone();
                            match self.refresh_devices(&account, true).await {
                                Ok(evs) => self.events.extend(evs),
                                Err(e) => self.events.push(Event::TrustRefused {
                                    subject: account.to_string(),
                                    reason: e.to_string(),
                                }),
                            }
                            Ok(vec![(
                                i,
                                format!("{} applied to {}", entry.action.name(), entry.account),
                            )])
                        }
                        Err(e) => Err(e.into()),
                    },
                    Err(e) => Err(e),
                }
            }
            ApprovalSubject::Notice { header, content } => {
                // Sent once every request of this notice has its quorum.
                let group = self.notice_group(i);
                if group
                    .iter()
                    .any(|j| self.approvals[*j].status != ApprovalStatus::QuorumReached)
                {
                    return Vec::new();
                }
                let mut signed = match SignedNotice::sign(header.clone(), &self.identity) {
                    Ok(s) => s,
                    Err(e) => return self.fail(&group, &request_id, &operation, e.into()),
                };
                for j in &group {
                    if let Err(e) = signed.add_cosignatures(self.approvals[*j].bundle.clone()) {
                        return self.fail(&group, &request_id, &operation, e.into());
                    }
                }
                self.deliver_notice(signed, content.clone())
                    .await
                    .map(|summary| group.iter().map(|j| (*j, summary.clone())).collect())
            }
        };
        match done {
            Ok(list) => {
                let mut events = Vec::new();
                for (j, summary) in list {
                    events.extend(self.completed(&[j], summary));
                }
                events
            }
            Err(e) => {
                self.refresh_roster_after_conflict(&e).await;
                self.fail(&[i], &request_id, &operation, e)
            }
        }
    }

    /// The recovery entry `entry` (its quorum reached) is handed to the relay on the link
    /// request it was offered on, for the recovered device to complete.
    async fn authorize_recovery(&mut self, entry: LogEntry) -> Result<String, ClientError> {
        let account = entry.body.account.clone();
        let links = self.conn()?.list_links(&account).await?;
        let link = links
            .into_iter()
            .find(|l| l.body.as_ref() == Some(&entry.body))
            .ok_or_else(|| {
                ClientError::NotFound(format!(
                    "the link request the recovery of {account} was offered on (it lapsed, was \
                     dismissed, or the relay restarted); the account's devices are unchanged"
                ))
            })?;
        self.conn()?.link_authorize(link.link_id, entry).await?;
        Ok(format!(
            "recovery of {account} approved and handed to the new device: it completes when \
             that device is online (the old devices keep working until then)"
        ))
    }

    /// Mark records completed with `summary`, save, and report it.
    fn completed(&mut self, records: &[usize], summary: String) -> Vec<Event> {
        let mut events = Vec::new();
        for j in records.iter().copied() {
            let Some(r) = self.approvals.get_mut(j) else {
                continue;
            };
            r.status = ApprovalStatus::Completed;
            r.detail = summary.clone();
            events.push(Event::OperationCompleted {
                request_id: hex::encode(r.request_id()),
                operation: r.bundle.request.operation.name().to_owned(),
                summary: summary.clone(),
            });
        }
        let _ = self.save();
        events
    }

    /// The relay refuses a new object (a notice, an entry carried by a quorum) signed under
    /// another roster version than its head with `conflict` (docs/PROTOCOL.md §19.5): fetch
    /// the roster at once, so that what is signed or proposed next names the new head.
    pub(crate) async fn refresh_roster_after_conflict(&mut self, e: &ClientError) {
        if let ClientError::Net(crate::net::NetError::Refused {
            code: sealpost_protocol::wire::ErrorCode::Conflict,
            message,
            ..
        }) = e
        {
            if message.contains("roster") {
                if let Err(err) = self.refresh_roster(true).await {
                    self.events.push(Event::TrustRefused {
                        subject: "roster".into(),
                        reason: err.to_string(),
                    });
                }
            }
        }
    }

    fn fail(
        &mut self,
        records: &[usize],
        request_id: &str,
        operation: &str,
        e: ClientError,
    ) -> Vec<Event> {
        // A transient failure (relay unreachable, timeout, rate limit) is no verdict: the
        // quorum stays in and the operation is tried again on the next receive pass.
        let will_retry = e.is_transient();
        for j in records {
            if let Some(r) = self.approvals.get_mut(*j) {
                if will_retry {
                    r.status = ApprovalStatus::QuorumReached;
                    r.detail = format!("not carried out yet, will retry: {e}");
                } else {
                    r.status = ApprovalStatus::Failed;
                    r.detail = e.to_string();
                }
            }
        }
        let _ = self.save();
        vec![Event::OperationFailed {
            request_id: request_id.to_owned(),
            operation: operation.to_owned(),
            reason: e.to_string(),
            will_retry,
        }]
    }
}

//! Signed notices (docs/PROTOCOL.md §19.7).
//!
//! * **Sending.** A staff device listed in the head roster signs a [`NoticeHeader`] over
//!   the exact `CBOR(NoticeText)` bytes it carries. A notice whose category is high-risk
//!   or whose audience is all clients needs co-signatures: it becomes a draft that goes to
//!   the co-signers as approval requests ([`crate::approvals`]) and is sent by this
//!   device once every required quorum has approved. Notices always leave with
//!   `send_notice`, never `send`, one envelope per recipient device; they get no sync
//!   copies (the sending device keeps them in its history).
//! * **Receiving.** Every notice is verified ([`SignedNotice::verify`]: content hash,
//!   sender and co-signers against the roster chain from the pinned fingerprint, and that
//!   the envelope came from the signing device). It is always shown, with a
//!   [`NoticeStatus`]: who signed and co-signed it, or a loud NOT AUTHENTICATED with the
//!   reason. Never silently dropped.

use rand::rngs::OsRng;
use sealpost_protocol::content::{Content, Message, NoticeText, MAX_TEXT_LEN, MAX_TITLE_LEN};
use sealpost_protocol::envelope::{Envelope, EnvelopeKind, MessageId, RoutingHeader};
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::trust::{
    NoticeAudience, NoticeCategory, NoticeHeader, NoticeRisk, NoticeVerdict, Operation,
    SignedNotice, SignerRef,
};
use sealpost_protocol::wire::{BoundedString, FrameBody, Role};
use serde::{Deserialize, Serialize};

use crate::approvals::ApprovalView;
use crate::client::{Client, ClientError, Direction, Event, SendReport};
use crate::clock::now_ms;
use crate::net::NetError;

/// Most `list_clients` pages one notice to all clients walks (each holds at most
/// `MAX_CLIENTS_PER_FRAME` = 1024 accounts): the bound on its work. Clients beyond it
/// are reported as not reached.
pub const MAX_CLIENT_PAGES: usize = 1024;
/// How often one recipient's fan-out is retried after the relay's rate limit.
const RATE_LIMIT_RETRIES: u32 = 8;
/// Longest wait before such a retry.
const MAX_RATE_LIMIT_WAIT_MS: u64 = 10_000;

/// The relay's retry delay, if `e` is a rate limit.
fn rate_limited(e: &ClientError) -> Option<u64> {
    match e {
        ClientError::Net(NetError::Refused {
            code: sealpost_protocol::wire::ErrorCode::RateLimited,
            retry_after_ms,
            ..
        }) => Some(
            retry_after_ms
                .unwrap_or(1_000)
                .clamp(50, MAX_RATE_LIMIT_WAIT_MS),
        ),
        _ => None,
    }
}

/// Who a notice is for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeTarget {
    /// One client account.
    Client(AccountId),
    /// Every client account of the relay, assigned to this staff account or not (needs a
    /// co-signature quorum).
    AllClients,
}

/// What [`Client::send_signed_notice`] did.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum NoticeOutcome {
    /// Signed and sent.
    Sent {
        /// The notice id, hex.
        notice_id: String,
        /// One report per recipient account.
        reports: Vec<SendReport>,
        /// Recipients it could not be sent to, with the reason.
        failed: Vec<(AccountId, String)>,
    },
    /// It needs co-signatures: the approval requests sent (one per required quorum). It
    /// is sent automatically when they are approved.
    Draft {
        /// The notice id, hex.
        notice_id: String,
        /// The requests.
        requests: Vec<ApprovalView>,
    },
}

/// Whether a notice is authentic, as recorded with it and shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoticeStatus {
    /// It verified: signed by a staff device of the roster and co-signed as required.
    pub authenticated: bool,
    /// One line for the user: `Signed by ... ; co-signed by ...` or
    /// `⚠ NOT AUTHENTICATED: do not act on this notice (reason)`.
    pub summary: String,
    /// The category it claims.
    pub category: Option<NoticeCategory>,
    /// High-risk category.
    pub high_risk: bool,
    /// The signing staff account (when authenticated).
    pub signer: Option<AccountId>,
    /// Its role.
    pub signer_role: Option<String>,
    /// Co-signing accounts with their roles (when authenticated).
    pub cosigners: Vec<String>,
    /// Signed under a roster version since replaced.
    pub roster_superseded: bool,
    /// Why it is not authenticated.
    pub reason: Option<String>,
}

impl NoticeStatus {
    fn from_verdict(category: NoticeCategory, v: &NoticeVerdict) -> Self {
        match v {
            NoticeVerdict::Authenticated(n) => Self {
                authenticated: true,
                summary: v.to_string(),
                category: Some(n.category),
                high_risk: n.risk == NoticeRisk::HighRisk,
                signer: Some(n.sender.account.clone()),
                signer_role: Some(n.sender_role.to_string()),
                cosigners: n
                    .cosignatures
                    .iter()
                    .flat_map(|p| p.approvers.iter())
                    .map(|(s, role)| format!("{} ({role})", s.account))
                    .collect(),
                roster_superseded: n.roster_superseded,
                reason: None,
            },
            NoticeVerdict::NotAuthenticated(e) => Self::not_authenticated(category, e.to_string()),
        }
    }

    fn not_authenticated(category: NoticeCategory, reason: String) -> Self {
        Self {
            authenticated: false,
            summary: format!("⚠ NOT AUTHENTICATED: do not act on this notice ({reason})"),
            category: Some(category),
            high_risk: category.risk() == NoticeRisk::HighRisk,
            signer: None,
            signer_role: None,
            cosigners: Vec::new(),
            roster_superseded: false,
            reason: Some(reason),
        }
    }
}

impl Client {
    /// Send a general notice to one client (signed by this staff device; no co-signers
    /// needed).
    pub async fn send_notice(
        &mut self,
        to: &AccountId,
        title: &str,
        body: &str,
    ) -> Result<SendReport, ClientError> {
        match self
            .send_signed_notice(
                NoticeCategory::General,
                NoticeTarget::Client(to.clone()),
                title,
                body,
            )
            .await?
        {
            NoticeOutcome::Sent {
                mut reports,
                failed,
                ..
            } => match (reports.pop(), failed.into_iter().next()) {
                (Some(r), _) => Ok(r),
                (None, Some((_, e))) => Err(ClientError::Protocol(e)),
                (None, None) => Err(ClientError::NoDevices(to.clone())),
            },
            NoticeOutcome::Draft { .. } => Err(ClientError::Protocol(
                "a general notice to one client unexpectedly needs co-signatures".into(),
            )),
        }
    }

    /// Sign a notice of `category` for `target` with this staff device. If the category
    /// is high-risk or the target is all clients, it becomes a draft sent to co-signers
    /// and goes out when their quorum approves; otherwise it is sent now.
    pub async fn send_signed_notice(
        &mut self,
        category: NoticeCategory,
        target: NoticeTarget,
        title: &str,
        body: &str,
    ) -> Result<NoticeOutcome, ClientError> {
        if self.role == Some(Role::Client) {
            return Err(ClientError::Invalid(
                "only staff and advisors send notices".into(),
            ));
        }
        if title.len() > MAX_TITLE_LEN || body.len() > MAX_TEXT_LEN {
            return Err(ClientError::Invalid("notice title or body too long".into()));
        }
        let me = self.me()?;
        self.refresh_roster(true).await?;
        let chain = self.trust.chain().ok_or_else(|| {
            ClientError::NoRoster("notices are signed under the organisation's roster".into())
        })?;
        let head = chain.head();
        if head.staff_device(&me, &self.device_id()).is_none() {
            return Err(ClientError::NotAllowed(format!(
                "this device is not a staff device of {me} in roster version {}",
                head.version()
            )));
        }
        let content = NoticeText {
            title: BoundedString::truncating(title),
            body: BoundedString::truncating(body),
        }
        .encode()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let audience = match target {
            NoticeTarget::Client(a) => NoticeAudience::Client(a),
            NoticeTarget::AllClients => NoticeAudience::AllClients,
        };
        let header = NoticeHeader::new(
            category,
            audience,
            &content,
            now_ms(),
            SignerRef::new(me, self.device_id()),
            head.version(),
            &mut OsRng,
        );
        let notice_id = hex::encode(header.notice_id);
        let ops: Vec<Operation> = header.required_operations();
        if ops.is_empty() {
            let signed = SignedNotice::sign(header, &self.identity)?;
            let (reports, failed) = match self.deliver_to_audience(&signed, &content).await {
                Ok(r) => r,
                Err(e) => {
                    // The roster moved on between the refresh above and the send.
                    self.refresh_roster_after_conflict(&e).await;
                    return Err(e);
                }
            };
            return Ok(NoticeOutcome::Sent {
                notice_id,
                reports,
                failed,
            });
        }
        // A draft to one client: check now that the client can be written to (its device
        // log verifies, and with an organisation the firm has verified its first device),
        // rather than after the co-signers have approved it.
        if let NoticeAudience::Client(to) = &header.audience {
            let to = to.clone();
            let events = self.refresh_devices(&to, false).await?;
            self.events.extend(events);
        }
        let mut requests = Vec::with_capacity(ops.len());
        for op in ops {
            requests.push(
                self.initiate(
                    op,
                    sealpost_protocol::content::ApprovalSubject::Notice {
                        header: header.clone(),
                        content: content.clone(),
                    },
                    None,
                )
                .await?,
            );
        }
        Ok(NoticeOutcome::Draft {
            notice_id,
            requests,
        })
    }

    /// Send a fully signed (and co-signed) notice; a summary of what was sent.
    pub(crate) async fn deliver_notice(
        &mut self,
        signed: SignedNotice,
        content: Vec<u8>,
    ) -> Result<String, ClientError> {
        let (reports, failed) = self.deliver_to_audience(&signed, &content).await?;
        let mut summary = format!("notice sent to {} account(s)", reports.len());
        if !failed.is_empty() {
            summary.push_str(&format!("; {} failed", failed.len()));
        }
        Ok(summary)
    }

    async fn deliver_to_audience(
        &mut self,
        signed: &SignedNotice,
        content: &[u8],
    ) -> Result<(Vec<SendReport>, Vec<(AccountId, String)>), ClientError> {
        // Check locally exactly what the relay and every recipient will check.
        if let Some(chain) = self.trust.chain() {
            signed.verify(chain, content, None, now_ms())?;
        }
        let mut reports = Vec::new();
        let mut failed = Vec::new();
        match &signed.header.audience {
            NoticeAudience::Client(a) => match self.notice_fan_out(a, signed, content).await {
                Ok(rep) => reports.push(rep),
                Err(e) => {
                    self.refresh_roster_after_conflict(&e).await;
                    return Err(e);
                }
            },
            NoticeAudience::AllClients => {
                // Every client account, page by page (assigned to this account or not):
                // one recipient's failure is reported, never the end of the fan-out.
                let mut after: Option<AccountId> = None;
                let mut pages = 0usize;
                loop {
                    if pages == MAX_CLIENT_PAGES {
                        failed.push((
                            after
                                .clone()
                                .unwrap_or_else(|| signed.header.sender.account.clone()),
                            format!(
                                "stopped after {MAX_CLIENT_PAGES} pages of clients: client \
                                 accounts after this one were not reached"
                            ),
                        ));
                        break;
                    }
                    pages += 1;
                    let (page, more) = self.client_page(after.as_ref()).await?;
                    for r in &page {
                        match self.notice_fan_out_retrying(r, signed, content).await {
                            Ok(rep) => reports.push(rep),
                            Err(e) => {
                                if failed.is_empty() {
                                    self.refresh_roster_after_conflict(&e).await;
                                }
                                failed.push((r.clone(), e.to_string()))
                            }
                        }
                    }
                    match page.last() {
                        Some(last) if more => after = Some(last.clone()),
                        _ => break,
                    }
                }
            }
            NoticeAudience::Segment(_) => {
                return Err(ClientError::Invalid(
                    "segment notices are not supported by this client".into(),
                ))
            }
        }
        Ok((reports, failed))
    }

    /// One page of the relay's client accounts after `after` (`list_clients`), checked:
    /// ascending and all after `after`, so the walk cannot loop. A rate limit is waited
    /// out.
    async fn client_page(
        &mut self,
        after: Option<&AccountId>,
    ) -> Result<(Vec<AccountId>, bool), ClientError> {
        let mut tries = 0;
        let answer = loop {
            let asked = self
                .conn()?
                .request(FrameBody::ListClients {
                    after: after.cloned(),
                })
                .await
                .map_err(ClientError::from);
            match asked {
                Err(e) if tries < RATE_LIMIT_RETRIES => match rate_limited(&e) {
                    Some(ms) => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                    None => return Err(e),
                },
                other => break other?,
            }
        };
        let FrameBody::Clients { clients, more } = answer else {
            return Err(ClientError::Protocol(
                "unexpected answer to list_clients".into(),
            ));
        };
        let clients = clients.into_inner();
        let ordered = clients.windows(2).all(|w| w[0] < w[1])
            && clients
                .first()
                .is_none_or(|first| after.is_none_or(|a| first > a));
        if !ordered {
            return Err(ClientError::Protocol(
                "the relay's client list is not ascending after the cursor".into(),
            ));
        }
        Ok((clients, more))
    }

    /// [`Client::notice_fan_out`], waiting out the relay's rate limits (a notice to all
    /// clients fetches each one's device log and bundles, which are rate limited).
    async fn notice_fan_out_retrying(
        &mut self,
        to: &AccountId,
        signed: &SignedNotice,
        content: &[u8],
    ) -> Result<SendReport, ClientError> {
        let mut tries = 0;
        loop {
            match self.notice_fan_out(to, signed, content).await {
                Err(e) if tries < RATE_LIMIT_RETRIES => match rate_limited(&e) {
                    Some(ms) => {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// Seal the notice for every active device of `to` and hand each envelope to the
    /// relay with `send_notice`.
    async fn notice_fan_out(
        &mut self,
        to: &AccountId,
        signed: &SignedNotice,
        content: &[u8],
    ) -> Result<SendReport, ClientError> {
        let mut events = self.refresh_devices(to, false).await?;
        self.check_may_send(EnvelopeKind::Notice).await?;
        let (message_id, sent_ms, targets, envelopes) =
            self.seal_notice(to, signed, content).await?;
        let message_content = Content::Notice {
            notice: Box::new(signed.clone()),
            content: content.to_vec(),
        };
        // The firm's archive gets its copy first (§22): sealed now, saved with the rest.
        let archive = self
            .prepare_archive_copy(to, message_id, sent_ms, &message_content)
            .await?;
        if let Some(mut entry) =
            Self::entry_for(message_id, Direction::Out, to, &message_content, sent_ms)
        {
            let status = match self.trust.chain() {
                Some(chain) => NoticeStatus::from_verdict(
                    signed.header.category,
                    &NoticeVerdict::from_result(signed.verify(chain, content, None, now_ms())),
                ),
                None => NoticeStatus::not_authenticated(signed.header.category, "no roster".into()),
            };
            entry.notice = Some(status);
            self.push_history(entry);
        }
        // The ratchet's nonce rule: state is durable before any envelope leaves.
        self.save()?;
        if let Err(e) = self.deliver_archive_copy(archive).await {
            // Nothing was sent: the history does not show it as sent.
            self.history.retain(|h| h.id != message_id);
            let _ = self.save();
            return Err(e);
        }
        let conn = self.conn()?;
        let sends = envelopes
            .into_iter()
            .map(|e| conn.send_notice(e, signed.clone()));
        let results = futures_util::future::join_all(sends).await;
        let delivered = results.iter().filter(|r| r.is_ok()).count();
        if let Some(Err(e)) = results.into_iter().find(|r| r.is_err()) {
            if delivered == 0 {
                return Err(e.into());
            }
        }
        events.extend(self.take_events());
        Ok(SendReport {
            message_id,
            to: to.clone(),
            devices: targets.len(),
            own_devices: 0,
            events,
        })
    }

    /// Seal `signed` (with `content`) for every device of `to` in its verified log: the
    /// logical message id, its time, the devices and one envelope per device with a session.
    async fn seal_notice(
        &mut self,
        to: &AccountId,
        signed: &SignedNotice,
        content: &[u8],
    ) -> Result<(MessageId, u64, Vec<DeviceId>, Vec<Envelope>), ClientError> {
        let me = self.me()?;
        self.ensure_sessions(to).await?;
        let targets: Vec<DeviceId> = self
            .contacts
            .get(to)
            .map(|c| c.devices.keys().copied().collect())
            .unwrap_or_default();
        if targets.is_empty() {
            return Err(ClientError::NoDevices(to.clone()));
        }
        let mut rng = OsRng;
        let message_id = MessageId::random(&mut rng);
        let sent_ms = now_ms();
        let plain = Message {
            from: me,
            sent_ms,
            content: Content::Notice {
                notice: Box::new(signed.clone()),
                content: content.to_vec(),
            },
            views: Some(self.views_for(to)),
        }
        .encode()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let sender = self.device_id();
        let mut envelopes: Vec<Envelope> = Vec::with_capacity(targets.len());
        for d in &targets {
            let Some(peer) = self.sessions.get_mut(d) else {
                continue;
            };
            let header = RoutingHeader {
                message_id,
                ..RoutingHeader::new(sender, *d, EnvelopeKind::Notice, sent_ms, &mut rng)
            };
            envelopes.push(
                peer.session
                    .seal(header, &plain, &mut rng)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?,
            );
        }
        Ok((message_id, sent_ms, targets, envelopes))
    }

    /// For adversarial tests (a compromised relay that injects what it would refuse): a
    /// notice of `category` to client `to`, signed by this staff device and co-signed by
    /// the approvals `cosign` returns for the request it is given (any number, valid or
    /// not, for the operation the category needs, if any), sealed for every device of
    /// `to` but **not sent**. The ratchet state is saved first, as before any send.
    #[doc(hidden)]
    pub async fn seal_notice_for_tests(
        &mut self,
        to: &AccountId,
        category: NoticeCategory,
        title: &str,
        body: &str,
        cosign: impl FnOnce(
            &sealpost_protocol::trust::ApprovalRequest,
        ) -> Vec<sealpost_protocol::trust::Approval>,
    ) -> Result<Vec<Envelope>, ClientError> {
        let me = self.me()?;
        self.refresh_roster(true).await?;
        self.refresh_devices(to, false).await?;
        let version = self
            .trust
            .chain()
            .map(|c| c.head().version())
            .ok_or_else(|| ClientError::NoRoster("no roster".into()))?;
        let content = NoticeText {
            title: BoundedString::truncating(title),
            body: BoundedString::truncating(body),
        }
        .encode()
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let header = NoticeHeader::new(
            category,
            NoticeAudience::Client(to.clone()),
            &content,
            now_ms(),
            SignerRef::new(me.clone(), self.device_id()),
            version,
            &mut OsRng,
        );
        let mut signed = SignedNotice::sign(header.clone(), &self.identity)?;
        if let Some(op) = header.required_operations().first().copied() {
            let request = sealpost_protocol::trust::ApprovalRequest::new(
                op,
                header.digest().0.to_vec(),
                version,
                now_ms().saturating_add(self.approval_validity_ms),
                SignerRef::new(me, self.device_id()),
                &mut OsRng,
            )?;
            let mut bundle = sealpost_protocol::trust::ApprovalBundle::initiate(
                request.clone(),
                &self.identity,
            )?;
            for a in cosign(&request) {
                bundle.push(a)?;
            }
            signed.add_cosignatures(bundle)?;
        }
        let (_, _, _, envelopes) = self.seal_notice(to, &signed, &content).await?;
        self.save()?;
        Ok(envelopes)
    }

    /// A notice arrived from `device` of `from`: verify it, record it with its status,
    /// show it (authenticated or not).
    pub(crate) async fn receive_notice(
        &mut self,
        id: MessageId,
        device: DeviceId,
        from: &AccountId,
        sent_ms: u64,
        notice: SignedNotice,
        content: Vec<u8>,
    ) -> Vec<Event> {
        let status = self.verify_notice(device, from, &notice, &content).await;
        let message_content = Content::Notice {
            notice: Box::new(notice),
            content,
        };
        let Some(mut entry) = Self::entry_for(id, Direction::In, from, &message_content, sent_ms)
        else {
            return Vec::new();
        };
        entry.notice = Some(status);
        self.push_history(entry.clone());
        self.pending_receipts
            .entry(from.clone())
            .or_default()
            .push(id);
        vec![Event::Notice { entry }]
    }

    async fn verify_notice(
        &mut self,
        device: DeviceId,
        from: &AccountId,
        notice: &SignedNotice,
        content: &[u8],
    ) -> NoticeStatus {
        let category = notice.header.category;
        let not = |reason: String| NoticeStatus::not_authenticated(category, reason);
        let pinned = self.relay.as_ref().and_then(|r| r.org().ok()).flatten();
        if pinned.is_none() {
            return not("this device pinned no organisation, so no notice can be verified".into());
        }
        if notice.header.sender.account != *from || notice.header.sender.device != device {
            return not(format!(
                "it was sent by device {device} of {from}, not by its signer {}",
                notice.header.sender
            ));
        }
        let stale = self
            .trust
            .chain()
            .is_none_or(|c| c.head().version() < notice.header.roster_version);
        if stale {
            if let Err(e) = self.refresh_roster(true).await {
                return not(format!("the roster could not be verified: {e}"));
            }
        }
        let Some(chain) = self.trust.chain() else {
            return not("the organisation has published no roster".into());
        };
        let me = self.account.clone();
        let verdict =
            NoticeVerdict::from_result(notice.verify(chain, content, me.as_ref(), now_ms()));
        NoticeStatus::from_verdict(category, &verdict)
    }
}

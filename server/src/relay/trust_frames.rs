//! The trust frames (docs/PROTOCOL.md §19): enrolment's genesis entry, device linking,
//! device-log appends, the roster chain and signed notices.
//!
//! Every object is verified with the trust core (`sealpost_protocol::trust`) before it is
//! stored or acted on; the relay adds what only it can check: who carries a frame, how
//! fresh an entry is on arrival, and that an entry extends the stored log. Logs name
//! accounts, devices and actions, never keys, signatures or envelope bodies.

use std::sync::Arc;

use sealpost_protocol::envelope::{Envelope, EnvelopeKind};
use sealpost_protocol::identity::{AccountId, PublicIdentity};
use sealpost_protocol::trust::{
    ApprovalBundle, DeviceAction, DeviceLog, EntryAuthorization, EntryBody, LinkChallenge,
    LinkCommitment, LinkNonce, LogEntry, NoticeAudience, RosterAuthorization, SignedNotice,
    SignedRoster, MAX_SIGNED_ROSTER_LEN,
};
use sealpost_protocol::wire::{
    link_complete_signature_message, link_signature_message, BoundedVec, ErrorCode, FrameBody,
    LogLength, Role, MAX_LOG_ENTRIES_PER_FRAME, MAX_LOG_HEADS_PER_FRAME,
    MAX_ROSTER_LINKS_PER_FRAME, ROSTER_FRAME_BUDGET,
};
use tracing::{debug, info, warn};

use super::{
    limited, refuse, reply, store_failure, unix_ms, Authenticated, ConnCtx, Handled, Relay,
};
use crate::limits::Limited;
use crate::links::{LinkError, Started};
use crate::metrics as m;
use crate::security::Observation;
use crate::store::{LogEffects, LoggedDevice, Store, StoreError, MAX_LOG_ENTRY_BYTES};
use crate::trust::AccountTrust;

/// A `device_log` answer stops adding entries once they total this many bytes (an entry
/// carrying a quorum can be several KiB; the frame bound is 256 KiB).
pub const LOG_FRAME_BUDGET: usize = 192 * 1024;

fn is_staff(role: Role) -> bool {
    matches!(role, Role::Staff | Role::Advisor)
}

fn link_refusal(id: u64, e: &LinkError) -> Handled {
    let code = match e {
        LinkError::NotFound => ErrorCode::NotFound,
        LinkError::AccountFull { .. } | LinkError::RegistryFull { .. } => ErrorCode::QuotaExceeded,
        LinkError::Completed
        | LinkError::NotOffered
        | LinkError::AlreadySigned
        | LinkError::NotAuthorized => ErrorCode::Conflict,
        LinkError::WrongBody
        | LinkError::BadSignature
        | LinkError::BadNonce
        | LinkError::NotTheOffer => ErrorCode::Forbidden,
    };
    refuse(id, code, &e.to_string())
}

/// The refusal of a new object signed under roster `named` when the relay's head is
/// `head` (docs/PROTOCOL.md §19.5, "Roster versions"): only the head is accepted for new
/// objects, so that everything accepted under an older version is dated before that
/// version's boundary (`RosterChain::valid_until`) and stays valid.
fn roster_head_conflict(id: u64, what: &str, named: u64, head: u64) -> Handled {
    refuse(
        id,
        ErrorCode::Conflict,
        &format!(
            "the {what} is signed under roster version {named}, but the current roster is \
             version {head}: refresh the roster, then sign (or propose for approval) again"
        ),
    )
}

impl<S: Store> Relay<S> {
    /// Defence in depth beyond the roster (the authority for clients, which a stolen
    /// staff device is removed from by a roster change): refuse `bundle` if its initiator
    /// or one of its approvers is a device this relay's records show revoked in its
    /// account's device log, or belongs to an account frozen by its device log.
    /// `Ok(Err(why))` is a refusal.
    async fn check_signers_standing(
        &self,
        bundle: &ApprovalBundle,
    ) -> Result<Result<(), String>, StoreError> {
        let op = bundle.request.operation;
        let signers = std::iter::once(("initiator", &bundle.request.initiator)).chain(
            bundle
                .approvals
                .as_slice()
                .iter()
                .map(|a| ("approver", &a.approver)),
        );
        for (what, signer) in signers {
            if let Some(d) = self.store.device(&signer.device).await? {
                if d.revoked {
                    return Ok(Err(format!(
                        "the {op} {what} {signer} is a device revoked in its account's device \
                         log, so its signature does not count at this relay (a lost or stolen \
                         staff device must also be removed from the roster)"
                    )));
                }
            }
            if let Some(a) = self.store.account(&signer.account).await? {
                if a.frozen {
                    return Ok(Err(format!(
                        "the {op} {what} {signer} belongs to a frozen account, so its \
                         signature does not count at this relay until a quorum unfreezes it"
                    )));
                }
            }
        }
        Ok(Ok(()))
    }

    /// Verify and sweep at start: load the stored roster chain and verify it from the
    /// pinned fingerprint. Returns the newest version (0: none).
    pub async fn load_trust(&self) -> Result<u64, String> {
        let links = self
            .store
            .rosters_after(0, sealpost_protocol::trust::MAX_ROSTER_CHAIN_LEN)
            .await
            .map_err(|e| format!("reading the roster chain: {e}"))?;
        let version = self
            .trust
            .load(links, unix_ms())
            .map_err(|e| match self.trust.pinned() {
                Some(fp) => format!(
                    "the stored roster chain does not verify from the configured organisation \
                 fingerprint {fp}: {e}"
                ),
                None => "the database holds a roster chain but no org_fingerprint is configured; \
                     configure the organisation's fingerprint"
                    .to_owned(),
            })?;
        metrics::gauge!(m::ROSTER_VERSION).set(version as f64);
        Ok(version)
    }

    /// Drop lapsed link requests (called by the sweeper).
    pub fn sweep_links(&self) {
        let now = unix_ms();
        let n = self.with_links(|l| {
            l.sweep(now);
            l.len()
        });
        metrics::gauge!(m::PENDING_LINKS).set(n as f64);
    }

    fn with_links<T>(&self, f: impl FnOnce(&mut crate::links::LinkRegistry) -> T) -> T {
        match self.links.lock() {
            Ok(mut l) => f(&mut l),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    /// Charge one pre-authentication link request to `ip`.
    fn link_request_allowed(&self, ip: std::net::IpAddr) -> Result<(), Limited> {
        let now = self.mono_ms();
        self.with_limiters(|l| l.link_ip.check(&ip, 1.0, now))
    }

    /// Entries dated by their signers must reach the relay soon after: a back-dated
    /// entry would start (and so end) a cooling-off early. An entry carried by a staff
    /// quorum (recovery, unfreeze) is dated when its request was made and may arrive
    /// while its approvals are unexpired by the relay's clock (the arrival rule,
    /// `LogEntry::check_arrival`); a recovered device's cooling-off runs from the
    /// approvals' expiry (`LogEntry::probation_start`), so its date gains it nothing.
    fn check_fresh(&self, entry: &LogEntry, now: u64) -> Result<(), String> {
        match &entry.authorization {
            EntryAuthorization::Quorum(_) => {
                entry
                    .check_arrival(now)
                    .map_err(|e| format!("device log entry refused: {e}"))?;
            }
            EntryAuthorization::Genesis | EntryAuthorization::Device { .. } => {
                let max_age = self
                    .config
                    .limits
                    .max_log_entry_age_secs
                    .saturating_mul(1000);
                if entry.body.timestamp_ms.saturating_add(max_age) < now {
                    return Err(format!(
                        "the entry is dated {} ms, more than {} s before it reached the relay",
                        entry.body.timestamp_ms, self.config.limits.max_log_entry_age_secs
                    ));
                }
            }
        }
        Ok(())
    }

    /// Check an enrolment's genesis entry: `identity` adding itself as entry 0 of
    /// `account`'s log, fresh, and verifying. Returns the account's snapshot-to-be.
    pub(super) fn check_genesis(
        &self,
        account: &AccountId,
        identity: &PublicIdentity,
        genesis: &LogEntry,
        now: u64,
    ) -> Result<Arc<AccountTrust>, String> {
        let b = &genesis.body;
        let adds_itself = matches!(&b.action, DeviceAction::Add { identity: i } if i == identity);
        if &b.account != account || b.seq != 0 || !adds_itself {
            return Err(
                "the genesis entry must be entry 0 of this account's log, adding the enrolling \
                 device"
                    .into(),
            );
        }
        self.check_fresh(genesis, now)?;
        let mut log = DeviceLog::new(account.clone());
        log.push(genesis.clone()).map_err(|e| e.to_string())?;
        let (_, snapshot) = self
            .trust
            .verify_log(
                &log,
                &sealpost_protocol::trust::EntryTimes {
                    appended_ms: vec![now],
                    ..Default::default()
                },
                now,
            )
            .map_err(|e| format!("genesis entry refused: {e}"))?;
        Ok(snapshot)
    }

    // ----- linking (§19.4) -----

    pub(super) async fn link_start(
        &self,
        ctx: &mut ConnCtx,
        id: u64,
        account: AccountId,
        identity: PublicIdentity,
        commitment: LinkCommitment,
        signature: [u8; 64],
    ) -> Handled {
        if ctx.authenticated().is_some() {
            return refuse(id, ErrorCode::UnexpectedFrame, "already authenticated");
        }
        if let Err(l) = self.link_request_allowed(ctx.remote.ip()) {
            return limited(id, "link_requests_per_ip", l);
        }
        let msg = link_signature_message(&ctx.exporter, &account);
        if identity.verify(&msg, &signature).is_err() {
            self.auth_failed(ctx.remote.ip(), None, Some(&account));
            return refuse(
                id,
                ErrorCode::AuthFailed,
                "link_start signature does not verify for this connection",
            );
        }
        match self.store.account(&account).await {
            Ok(Some(_)) => {}
            Ok(None) => return refuse(id, ErrorCode::NotFound, "account not found"),
            Err(e) => return store_failure(id, &e),
        }
        // Was any device of the account there to have asked for this link?
        let solicited = match self.store.devices_of(&account).await {
            Ok(devices) => devices
                .iter()
                .any(|d| !d.revoked && self.hub.is_online(&d.id)),
            Err(e) => return store_failure(id, &e),
        };
        let new_device = identity.device_id();
        match self.store.device(&identity.device_id()).await {
            Ok(None) => {}
            Ok(Some(_)) => {
                return refuse(
                    id,
                    ErrorCode::Conflict,
                    "this device is already registered (or was revoked); use a new identity",
                )
            }
            Err(e) => return store_failure(id, &e),
        }
        let mut link_id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut link_id);
        let now = unix_ms();
        let started = self.with_links(|l| {
            let r = l.start(link_id, account.clone(), identity, commitment, now);
            (r, l.len())
        });
        metrics::gauge!(m::PENDING_LINKS).set(started.1 as f64);
        match started.0 {
            Ok(Started {
                expires_ms,
                replaced,
                evicted,
            }) => {
                // The connection now waits on this request: the authentication timeout
                // no longer closes it while the request is open (conn.rs).
                ctx.waiting_link = Some(link_id);
                self.observe(Observation::LinkRequest {
                    account: account.clone(),
                    device: new_device,
                    address: ctx.remote.ip(),
                    solicited,
                });
                if !evicted.is_empty() {
                    metrics::counter!(m::LINKS_EVICTED).increment(evicted.len() as u64);
                    info!(
                        account = %account,
                        evicted = evicted.len(),
                        "link request started (evicting the oldest requests without an offer)"
                    );
                } else if replaced.is_some() {
                    info!(account = %account, "link request started (replacing the device's earlier one)");
                } else {
                    info!(account = %account, "link request started");
                }
                reply(
                    id,
                    FrameBody::LinkStarted {
                        link_id,
                        expires_ms,
                    },
                )
            }
            Err(e) => link_refusal(id, &e),
        }
    }

    pub(super) fn link_poll(&self, ctx: &mut ConnCtx, id: u64, link_id: [u8; 16]) -> Handled {
        if let Err(l) = self.link_request_allowed(ctx.remote.ip()) {
            return limited(id, "link_requests_per_ip", l);
        }
        let now = unix_ms();
        let state = self.with_links(|l| {
            l.get(&link_id, now).map(|link| FrameBody::LinkState {
                challenge: link.wire.challenge,
                body: link.wire.body.clone().map(Box::new),
                completed: link.completed,
                ready: link.authorized.is_some(),
            })
        });
        match state {
            Ok(body) => {
                // A device that reconnected to go on waiting (its link id is a 128-bit
                // secret it got from `link_started`) waits on this connection now.
                ctx.waiting_link = Some(link_id);
                reply(id, body)
            }
            Err(e) => link_refusal(id, &e),
        }
    }

    /// Whether a connection waiting on `link_id` may go on waiting unauthenticated:
    /// `None` once the request is gone, else whether it completed (conn.rs).
    pub(crate) fn link_waiting(&self, link_id: &[u8; 16]) -> Option<bool> {
        let now = unix_ms();
        self.with_links(|l| l.waiting(link_id, now))
    }

    /// The staff device that initiated a recovery hands over the entry its quorum
    /// approved. Checked now exactly as an append would be (without storing it), and
    /// kept on the link until the new device completes it (`link_complete`).
    pub(super) async fn link_authorize(
        &self,
        me: &Authenticated,
        id: u64,
        link_id: [u8; 16],
        entry: LogEntry,
    ) -> Handled {
        if !is_staff(me.role) {
            return refuse(
                id,
                ErrorCode::Forbidden,
                "only staff and advisor devices may authorise a recovery",
            );
        }
        let now = unix_ms();
        let account = match self.with_links(|l| {
            l.get(&link_id, now)
                .map(|k| (k.wire.account.clone(), k.completed))
        }) {
            Ok((_, true)) => return link_refusal(id, &LinkError::Completed),
            Ok((a, false)) => a,
            Err(e) => return link_refusal(id, &e),
        };
        if entry.body.account != account {
            return link_refusal(id, &LinkError::NotTheOffer);
        }
        // Everything an append checks, now: the initiator learns at once if the entry
        // would be refused.
        let checked = self.append_entry(me.device, id, entry.clone(), true).await;
        if !matches!(
            checked.reply.as_ref().map(|f| &f.body),
            Some(FrameBody::Done)
        ) {
            return checked;
        }
        match self.with_links(|l| l.authorize(&link_id, entry, now)) {
            Ok(()) => {
                info!(account = %account, by = %me.device, "recovery authorised, waiting for the new device");
                reply(id, FrameBody::Done)
            }
            Err(e) => link_refusal(id, &e),
        }
    }

    /// The recovered device completes its recovery: the authorised entry is appended
    /// (checked again, as any append) and the device can authenticate on this connection.
    pub(super) async fn link_complete(
        &self,
        ctx: &mut ConnCtx,
        id: u64,
        link_id: [u8; 16],
        signature: [u8; 64],
    ) -> Handled {
        if ctx.authenticated().is_some() {
            return refuse(id, ErrorCode::UnexpectedFrame, "already authenticated");
        }
        if let Err(l) = self.link_request_allowed(ctx.remote.ip()) {
            return limited(id, "link_requests_per_ip", l);
        }
        let now = unix_ms();
        let (entry, identity) = match self.with_links(|l| l.authorized(&link_id, now)) {
            Ok(v) => v,
            Err(e) => return link_refusal(id, &e),
        };
        let msg = link_complete_signature_message(&ctx.exporter, &link_id);
        if identity.verify(&msg, &signature).is_err() {
            self.auth_failed(ctx.remote.ip(), None, Some(&entry.body.account));
            return refuse(
                id,
                ErrorCode::AuthFailed,
                "link_complete signature does not verify for the link's device on this connection",
            );
        }
        self.append_entry(identity.device_id(), id, entry, false)
            .await
    }

    pub(super) fn link_sign(
        &self,
        ctx: &mut ConnCtx,
        id: u64,
        link_id: [u8; 16],
        signature: [u8; 64],
        nonce: LinkNonce,
    ) -> Handled {
        if let Err(l) = self.link_request_allowed(ctx.remote.ip()) {
            return limited(id, "link_requests_per_ip", l);
        }
        let now = unix_ms();
        match self.with_links(|l| l.sign(&link_id, signature, nonce, now)) {
            Ok(()) => reply(id, FrameBody::Done),
            Err(e) => {
                if matches!(e, LinkError::BadSignature | LinkError::BadNonce) {
                    self.trust_refused("link");
                }
                link_refusal(id, &e)
            }
        }
    }

    pub(super) async fn link_offer(
        &self,
        me: &Authenticated,
        id: u64,
        link_id: [u8; 16],
        challenge: LinkChallenge,
        body: EntryBody,
    ) -> Handled {
        let now = unix_ms();
        let account =
            match self.with_links(|l| l.get(&link_id, now).map(|k| k.wire.account.clone())) {
                Ok(a) => a,
                Err(e) => return link_refusal(id, &e),
            };
        match &body.action {
            DeviceAction::Add { .. } if me.account != account => {
                return refuse(
                    id,
                    ErrorCode::Forbidden,
                    "only a device of the account may offer to add a device to it",
                )
            }
            DeviceAction::Recover { .. } if !is_staff(me.role) => {
                return refuse(
                    id,
                    ErrorCode::Forbidden,
                    "only staff and advisor devices may offer a recovery",
                )
            }
            DeviceAction::Recover { .. } if self.trust.chain().is_none() => {
                return refuse(
                    id,
                    ErrorCode::Forbidden,
                    "recovery needs a staff quorum, and this relay has no organisation roster",
                )
            }
            DeviceAction::Add { .. } | DeviceAction::Recover { .. } => {}
            _ => return link_refusal(id, &LinkError::WrongBody),
        }
        // The body must extend the stored log.
        let len = match self.store.device_log_len(&account).await {
            Ok(n) => n,
            Err(e) => return store_failure(id, &e),
        };
        let last = match len.checked_sub(1) {
            None => None,
            Some(seq) => match self.store.device_log(&account, seq, 1).await {
                Ok(v) => v.first().map(|e| e.body.hash().0),
                Err(e) => return store_failure(id, &e),
            },
        };
        if body.seq != len || body.previous != last {
            return refuse(
                id,
                ErrorCode::Conflict,
                &format!(
                    "the offered entry does not extend the account's device log (next entry \
                     is seq {len})"
                ),
            );
        }
        let recovery = matches!(body.action, DeviceAction::Recover { .. });
        match self.with_links(|l| l.offer(&link_id, challenge, body, me.device, now)) {
            Ok(()) => {
                debug!(account = %account, by = %me.device, "link offer recorded");
                if recovery {
                    self.observe(Observation::RecoveryRequested {
                        account: account.clone(),
                        by: me.device,
                    });
                }
                reply(id, FrameBody::Done)
            }
            Err(e) => link_refusal(id, &e),
        }
    }

    pub(super) fn list_links(&self, me: &Authenticated, id: u64, account: AccountId) -> Handled {
        if account != me.account && !is_staff(me.role) {
            return refuse(
                id,
                ErrorCode::Forbidden,
                "link requests of another account are visible to staff and advisors only",
            );
        }
        let now = unix_ms();
        let links = self.with_links(|l| l.list(&account, now));
        match BoundedVec::new(links) {
            Ok(links) => reply(id, FrameBody::Links { links }),
            Err(_) => refuse(id, ErrorCode::Internal, "too many link requests"),
        }
    }

    /// A device of the account dismisses one of its pending link requests.
    pub(super) fn dismiss_link(&self, me: &Authenticated, id: u64, link_id: [u8; 16]) -> Handled {
        let now = unix_ms();
        let (result, n) = self.with_links(|l| (l.dismiss(&link_id, &me.account, now), l.len()));
        metrics::gauge!(m::PENDING_LINKS).set(n as f64);
        match result {
            Ok(()) => {
                info!(account = %me.account, by = %me.device, "link request dismissed");
                reply(id, FrameBody::Done)
            }
            Err(e) => link_refusal(id, &e),
        }
    }

    // ----- device logs (§19.3) -----

    /// The lengths of the logs whose changes `me` is pushed (`device_log_changed`): its
    /// own account's and, for staff and advisors, those of the clients assigned to them;
    /// ascending by account, after `after`, at most `MAX_LOG_HEADS_PER_FRAME`.
    pub(super) async fn log_heads(
        &self,
        me: &Authenticated,
        id: u64,
        after: Option<AccountId>,
    ) -> Handled {
        let mut accounts = vec![me.account.clone()];
        if is_staff(me.role) {
            match self.store.assignments_of(&me.account).await {
                Ok(a) => accounts.extend(a),
                Err(e) => return store_failure(id, &e),
            }
        }
        accounts.sort();
        accounts.dedup();
        if let Some(after) = &after {
            accounts.retain(|a| a > after);
        }
        let more = accounts.len() > MAX_LOG_HEADS_PER_FRAME;
        accounts.truncate(MAX_LOG_HEADS_PER_FRAME);
        let mut heads = Vec::with_capacity(accounts.len());
        for account in accounts {
            match self.store.device_log_len(&account).await {
                Ok(entries) => heads.push(LogLength { account, entries }),
                Err(e) => return store_failure(id, &e),
            }
        }
        match BoundedVec::new(heads) {
            Ok(heads) => reply(id, FrameBody::LogHeads { heads, more }),
            Err(_) => refuse(id, ErrorCode::Internal, "too many log heads"),
        }
    }

    pub(super) async fn get_device_log(
        &self,
        me: &Authenticated,
        id: u64,
        account: AccountId,
        from_seq: u64,
    ) -> Handled {
        if account != me.account && !is_staff(me.role) {
            // Clients read the logs of the accounts they may reach (their advisors), and
            // those of the roster's staff, who sign notices (`relay/directory.rs`).
            if let Err(h) = self
                .authorize_directory(me, id, &account, super::directory::DirectoryRead::Devices)
                .await
            {
                return h;
            }
        } else {
            match self.store.account(&account).await {
                Ok(Some(_)) => {}
                Ok(None) => return refuse(id, ErrorCode::NotFound, "account not found"),
                Err(e) => return store_failure(id, &e),
            }
        }
        let total = match self.store.device_log_len(&account).await {
            Ok(n) => n,
            Err(e) => return store_failure(id, &e),
        };
        let entries = match self
            .store
            .device_log_timed(&account, from_seq, MAX_LOG_ENTRIES_PER_FRAME)
            .await
        {
            Ok(e) => e,
            Err(e) => return store_failure(id, &e),
        };
        // The attestation travels with the page holding entry 0 (what it attests).
        let attestation = if from_seq == 0 && !entries.is_empty() {
            match self.store.attestation(&account).await {
                Ok(a) => a.map(Box::new),
                Err(e) => return store_failure(id, &e),
            }
        } else {
            None
        };
        let mut out = Vec::with_capacity(entries.len());
        let mut out_times = Vec::with_capacity(entries.len());
        let mut bytes = 2048usize;
        for (e, t) in entries {
            let len = sealpost_protocol::codec::encode("device log entry", &e, MAX_LOG_ENTRY_BYTES)
                .map(|b| b.len())
                .unwrap_or(MAX_LOG_ENTRY_BYTES)
                + 9;
            if !out.is_empty() && bytes + len > LOG_FRAME_BUDGET {
                break;
            }
            bytes += len;
            out.push(e);
            out_times.push(t);
        }
        match (BoundedVec::new(out), BoundedVec::new(out_times)) {
            (Ok(entries), Ok(appended_ms)) => reply(
                id,
                FrameBody::DeviceLog {
                    account,
                    entries,
                    total,
                    appended_ms,
                    attestation,
                },
            ),
            _ => refuse(id, ErrorCode::Internal, "too many log entries"),
        }
    }

    pub(super) async fn append_device_log(
        &self,
        me: &Authenticated,
        id: u64,
        entry: LogEntry,
    ) -> Handled {
        if matches!(entry.body.action, DeviceAction::Recover { .. }) {
            // A recovery revokes every other device of the account: it is appended only
            // when the recovered device completes it (`link_complete`), so that the
            // account is never left without a device that can use it (§19.5).
            return refuse(
                id,
                ErrorCode::Forbidden,
                "a recovery is not appended with append_device_log: hand the approved entry \
                 to the relay with link_authorize; the recovered device completes it",
            );
        }
        self.append_entry(me.device, id, entry, false).await
    }

    /// Check `entry` as an append to its account's log (freshness, roster head, signers
    /// in good standing, extension of the stored log, verification) and, unless
    /// `dry_run`, store it with its effects, close the connections of the devices it
    /// revoked and push `device_log_changed`. `by` is the device carrying it (for logs).
    async fn append_entry(
        &self,
        by: sealpost_protocol::identity::DeviceId,
        id: u64,
        entry: LogEntry,
        dry_run: bool,
    ) -> Handled {
        let account = entry.body.account.clone();
        let action = entry.body.action.name();
        let role = match self.store.account(&account).await {
            Ok(Some(a)) => a.role,
            Ok(None) => return refuse(id, ErrorCode::NotFound, "account not found"),
            Err(e) => return store_failure(id, &e),
        };
        let now = unix_ms();
        if let Err(why) = self.check_fresh(&entry, now) {
            self.trust_refused("log_entry");
            return refuse(id, ErrorCode::Forbidden, &why);
        }
        if let EntryAuthorization::Quorum(bundle) = &entry.authorization {
            // A new entry must be approved under the current roster (the verification
            // below accepts an older version until its boundary, for entries already in
            // logs).
            if let Some(chain) = self.trust.chain() {
                let head = chain.head().version();
                let named = bundle.request.roster_version;
                if named != head {
                    self.trust_refused("log_entry");
                    return roster_head_conflict(id, "entry's approval", named, head);
                }
            }
            match self.check_signers_standing(bundle).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    self.trust_refused("log_entry");
                    debug!(account = %account, action, reason = %why, "device log entry refused");
                    return refuse(
                        id,
                        ErrorCode::Forbidden,
                        &format!("device log entry refused: {why}"),
                    );
                }
                Err(e) => return store_failure(id, &e),
            }
        }
        let generation = self.trust.generation();
        let (mut log, mut appended) = match self.load_log(&account).await {
            Ok(l) => l,
            Err(e) => return store_failure(id, &e),
        };
        // The entry's cooling-off runs from now, when this relay appends it, whatever
        // date its signer chose.
        appended.appended_ms.push(now);
        let len = log.entries.as_slice().len() as u64;
        if entry.body.seq != len {
            return refuse(
                id,
                ErrorCode::Conflict,
                &format!(
                    "entry seq {} does not extend the log (next entry is seq {len})",
                    entry.body.seq
                ),
            );
        }
        if let Err(e) = log.push(entry.clone()) {
            return refuse(id, ErrorCode::QuotaExceeded, &e.to_string());
        }
        let (set, snapshot) = match self.trust.verify_log(&log, &appended, now) {
            Ok(v) => v,
            Err(e) => {
                self.trust_refused("log_entry");
                debug!(account = %account, action, error = %e, "device log entry refused");
                return refuse(
                    id,
                    ErrorCode::Forbidden,
                    &format!("device log entry refused: {e}"),
                );
            }
        };
        let register = match &entry.body.action {
            DeviceAction::Add { identity } | DeviceAction::Recover { identity } => {
                Some(LoggedDevice {
                    identity: identity.clone(),
                    added_ms: entry.body.timestamp_ms,
                })
            }
            _ => None,
        };
        let effects = LogEffects {
            register: register.clone(),
            revoke: set.revoked.clone(),
            frozen: set.frozen,
        };
        if dry_run {
            return reply(id, FrameBody::Done);
        }
        let before = self.trust.cached(&account);
        if let Err(e) = self.store.append_device_log(&entry, &effects, now).await {
            return match e {
                StoreError::Conflict("device log entry") => refuse(
                    id,
                    ErrorCode::Conflict,
                    "another entry was appended first; fetch the log and retry",
                ),
                StoreError::Conflict("device") => refuse(
                    id,
                    ErrorCode::Conflict,
                    "the added device is registered in another account or was revoked",
                ),
                e => store_failure(id, &e),
            };
        }
        self.trust.install(snapshot, generation);
        if !set.revoked.is_empty() {
            self.revoked_devices();
        }
        metrics::counter!(m::DEVICE_LOG_APPENDS, "action" => action).increment(1);
        // Close the connections of devices this entry revoked.
        for revoked in &set.revoked {
            let newly = before.as_ref().is_none_or(|b| b.is_active(revoked));
            if newly {
                metrics::counter!(m::DEVICES_REVOKED).increment(1);
                info!(account = %account, device = %revoked, "device revoked by the device log");
            }
            self.hub.revoke(revoked);
        }
        if let Some(new) = &register {
            let n = self.with_links(|l| l.complete(&account, &new.identity));
            if n > 0 {
                debug!(account = %account, "link request completed");
            }
        }
        info!(
            account = %account,
            seq = entry.body.seq,
            action,
            by = %by,
            frozen = set.frozen,
            "device log entry appended"
        );
        self.observe_append(&entry, &set, by);
        self.notify_log_changed(&account, role, entry.body.seq, action)
            .await;
        reply(id, FrameBody::Done)
    }

    /// What a durable append tells the security rules: devices added, freezes, the
    /// approvals it carried.
    fn observe_append(
        &self,
        entry: &LogEntry,
        set: &sealpost_protocol::trust::DeviceSet,
        by: sealpost_protocol::identity::DeviceId,
    ) {
        let account = &entry.body.account;
        match &entry.body.action {
            DeviceAction::Add { identity } | DeviceAction::Recover { identity } => {
                // The first device (enrolment, entry 0) is not an addition.
                if entry.body.seq > 0 {
                    self.observe(Observation::DeviceAdded {
                        account: account.clone(),
                        device: identity.device_id(),
                        devices: set.devices.len(),
                    });
                }
            }
            DeviceAction::Freeze => self.observe(Observation::Frozen {
                account: account.clone(),
                by,
            }),
            DeviceAction::Unfreeze => self.observe(Observation::Unfrozen {
                account: account.clone(),
                by,
            }),
            DeviceAction::Remove { .. } => {}
        }
        if let EntryAuthorization::Quorum(bundle) = &entry.authorization {
            self.observe_approvals(bundle);
        }
    }

    /// Each approval in `bundle` (one request) counts once for its approver.
    fn observe_approvals(&self, bundle: &ApprovalBundle) {
        let request = bundle.request.digest().0;
        for a in bundle.approvals.as_slice() {
            self.observe(Observation::ApprovalSigned {
                approver: a.approver.account.clone(),
                device: a.approver.device,
                request,
            });
        }
    }

    /// Push `device_log_changed` to the account's devices and, for a client, to the
    /// devices of the advisors and staff assigned to it (best effort: online ones only).
    async fn notify_log_changed(
        &self,
        account: &AccountId,
        role: Role,
        seq: u64,
        action: &'static str,
    ) {
        let mut accounts = vec![account.clone()];
        if role == Role::Client {
            match self.store.assignments_of(account).await {
                Ok(staff) => accounts.extend(staff),
                Err(e) => warn!(error = %e, "listing assignments for a log notification failed"),
            }
        }
        for a in &accounts {
            let devices = match self.store.devices_of(a).await {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "listing devices for a log notification failed");
                    continue;
                }
            };
            for d in devices.iter().filter(|d| !d.revoked) {
                self.hub.push(
                    &d.id,
                    crate::hub::Push::DeviceLogChanged {
                        account: account.clone(),
                        seq,
                        action,
                    },
                );
            }
        }
    }

    // ----- roster (§19.1, §19.2) -----

    pub(super) fn get_roster(&self, id: u64, after_version: u64) -> Handled {
        let Some(chain) = self.trust.chain() else {
            return match BoundedVec::new(Vec::new()) {
                Ok(links) => reply(id, FrameBody::Roster { links, latest: 0 }),
                Err(_) => refuse(id, ErrorCode::Internal, "empty roster list"),
            };
        };
        let latest = chain.head().version();
        let skip = usize::try_from(after_version).unwrap_or(usize::MAX);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for link in chain
            .links()
            .iter()
            .skip(skip)
            .take(MAX_ROSTER_LINKS_PER_FRAME)
        {
            let len = link.to_cbor().map_or(MAX_SIGNED_ROSTER_LEN, |b| b.len());
            if !out.is_empty() && bytes + len > ROSTER_FRAME_BUDGET {
                break;
            }
            bytes += len;
            out.push(link.clone());
        }
        match BoundedVec::new(out) {
            Ok(links) => reply(id, FrameBody::Roster { links, latest }),
            Err(_) => refuse(id, ErrorCode::Internal, "too many roster versions"),
        }
    }

    pub(super) async fn publish_roster(
        &self,
        me: &Authenticated,
        id: u64,
        roster: SignedRoster,
    ) -> Handled {
        if !is_staff(me.role) {
            return refuse(
                id,
                ErrorCode::Forbidden,
                "only staff and advisor devices publish roster versions",
            );
        }
        if self.trust.pinned().is_none() {
            return refuse(
                id,
                ErrorCode::Forbidden,
                "this relay has no organisation configured (org_fingerprint)",
            );
        }
        let _serialised = self.trust.publish.lock().await;
        let version = roster.roster.version();
        let current = self.trust.chain();
        let head = current.as_ref().map_or(0, |c| c.head().version());
        if version <= head {
            let same = current
                .as_ref()
                .and_then(|c| {
                    usize::try_from(version.saturating_sub(1))
                        .ok()
                        .and_then(|i| c.links().get(i))
                })
                .is_some_and(|held| *held == roster);
            if same {
                // A retry of what is already published.
                return reply(id, FrameBody::Done);
            }
            self.trust_refused("roster");
            warn!(version, head, by = %me.device, "roster rollback or fork refused");
            return refuse(
                id,
                ErrorCode::Conflict,
                &format!(
                    "roster version {version} is already published with other content (the \
                     chain is at version {head}): a rollback or fork is refused"
                ),
            );
        }
        if version != head + 1 {
            self.trust_refused("roster");
            return refuse(
                id,
                ErrorCode::Conflict,
                &format!("roster version {version} does not follow version {head}"),
            );
        }
        let now = unix_ms();
        if let Err(e) = roster.check_arrival(now) {
            self.trust_refused("roster");
            warn!(version, by = %me.device, error = %e, "roster version refused");
            return refuse(id, ErrorCode::Forbidden, &format!("roster refused: {e}"));
        }
        let next = match self.trust.next_chain(roster.clone(), now) {
            Ok(c) => c,
            Err(e) => {
                self.trust_refused("roster");
                warn!(version, by = %me.device, error = %e, "roster version refused");
                return refuse(id, ErrorCode::Forbidden, &format!("roster refused: {e}"));
            }
        };
        if let RosterAuthorization::Quorum(bundle) = &roster.authorization {
            match self.check_signers_standing(bundle).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    self.trust_refused("roster");
                    warn!(version, by = %me.device, reason = %why, "roster version refused");
                    return refuse(id, ErrorCode::Forbidden, &format!("roster refused: {why}"));
                }
                Err(e) => return store_failure(id, &e),
            }
        }
        if let Err(e) = self.store.append_roster(&roster, now).await {
            return store_failure(id, &e);
        }
        self.trust.set_chain(Some(next));
        metrics::gauge!(m::ROSTER_VERSION).set(version as f64);
        info!(version, by = %me.device, "roster version published");
        reply(id, FrameBody::Done)
    }

    // ----- notices (§19.7) -----

    pub(super) async fn send_notice(
        &self,
        ctx: &mut ConnCtx,
        me: &Authenticated,
        id: u64,
        envelope: Envelope,
        notice: SignedNotice,
    ) -> Handled {
        // Refuse a flood before checking signatures (charged once, by the envelope checks).
        let now = self.mono_ms();
        if let Err(l) = self.with_limiters(|l| l.send.would_allow(&me.device, 1.0, now)) {
            return limited(id, "send_rate", l);
        }
        if !is_staff(me.role) {
            self.trust_refused("notice");
            return refuse(
                id,
                ErrorCode::Forbidden,
                "only staff and advisor devices send notices",
            );
        }
        if envelope.header.kind != EnvelopeKind::Notice {
            return refuse(
                id,
                ErrorCode::Forbidden,
                "the envelope of a send_notice must be of kind notice",
            );
        }
        let Some(chain) = self.trust.chain() else {
            self.trust_refused("notice");
            return refuse(
                id,
                ErrorCode::Forbidden,
                "this relay holds no organisation roster, so no notice can be verified",
            );
        };
        let h = &notice.header;
        if h.sender.account != me.account || h.sender.device != me.device {
            self.trust_refused("notice");
            return refuse(
                id,
                ErrorCode::Forbidden,
                "the notice's sender must be the authenticated device",
            );
        }
        let head = chain.head().version();
        if h.roster_version != head {
            self.trust_refused("notice");
            return roster_head_conflict(id, "notice", h.roster_version, head);
        }
        let arrival = unix_ms();
        let checked = notice
            .verify_header(&chain, None, arrival)
            .and_then(|_| notice.check_arrival(arrival));
        if let Err(e) = checked {
            self.trust_refused("notice");
            debug!(by = %me.device, error = %e, "notice refused");
            return refuse(id, ErrorCode::Forbidden, &format!("notice refused: {e}"));
        }
        for bundle in notice.cosignatures.as_slice() {
            match self.check_signers_standing(bundle).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    self.trust_refused("notice");
                    debug!(by = %me.device, reason = %why, "notice refused");
                    return refuse(id, ErrorCode::Forbidden, &format!("notice refused: {why}"));
                }
                Err(e) => return store_failure(id, &e),
            }
        }
        // The recipient must be in the audience (or be one of the sender's own devices).
        // A segment has no membership the relay (or a client) could check: a segment
        // notice needs the all-clients quorum (checked above), and like every notice it
        // reaches only clients assigned to the sender (the routing policy, below).
        let recipient = match self.store.device(&envelope.header.recipient).await {
            Ok(Some(d)) if !d.revoked => d,
            Ok(_) => return refuse(id, ErrorCode::NotFound, "recipient device not found"),
            Err(e) => return store_failure(id, &e),
        };
        let in_audience = if recipient.account == me.account {
            true
        } else {
            match &h.audience {
                NoticeAudience::Client(a) => *a == recipient.account,
                NoticeAudience::Segment(_) | NoticeAudience::AllClients => {
                    match self.store.account(&recipient.account).await {
                        Ok(Some(a)) => a.role == Role::Client,
                        Ok(None) => false,
                        Err(e) => return store_failure(id, &e),
                    }
                }
            }
        };
        if !in_audience {
            self.trust_refused("notice_audience");
            return refuse(
                id,
                ErrorCode::Forbidden,
                "the recipient is not in the notice's audience",
            );
        }
        let any_client = matches!(h.audience, NoticeAudience::AllClients);
        match self
            .prepare_envelope(ctx, me, id, envelope, any_client)
            .await
        {
            Ok(p) => {
                let h = self.commit_send(p).await;
                if matches!(
                    h.reply,
                    Some(sealpost_protocol::wire::Frame {
                        body: FrameBody::Accepted { .. },
                        ..
                    })
                ) {
                    metrics::counter!(m::NOTICES_ACCEPTED).increment(1);
                    for bundle in notice.cosignatures.as_slice() {
                        self.observe_approvals(bundle);
                    }
                    if any_client {
                        self.observe(Observation::NoticeToAllClients {
                            account: me.account.clone(),
                            device: me.device,
                            notice: notice.header.digest().0,
                        });
                    }
                }
                h
            }
            Err(refused) => refused,
        }
    }
}

//! The receive core: what to do with a delivered envelope, decided with no I/O
//! (docs/PROTOCOL.md §18.3).
//!
//! The shell ([`crate::client::Client`]) fetches device logs, persists and acknowledges;
//! the decisions are the plain functions here, called with the verified state the
//! device holds, so that tests drive every outcome (transient failures included) without
//! a relay:
//!
//! 1. [`open`]: deduplicate by (sending device, message id) and decrypt on a *working
//!    copy* of the session (or a staged new session whose prekey use is not applied). The
//!    answer is [`Opened::Duplicate`], [`Opened::Refused`] (did not authenticate: final,
//!    nothing remembered) or [`Opened::Authentic`] (decrypted, nothing committed yet).
//! 2. [`compare_views`]: the sender's view of both device logs against the heads this
//!    device verified ([`ViewCheck`]): agree, behind (refresh first), or a split view.
//! 3. [`judge`]: with the sender account's verified device set if the device has one,
//!    [`Judgement::Show`], [`Judgement::Hold`] (no verified set could be had now: keep the
//!    message and check again later) or [`Judgement::Refuse`] (checked against a verified
//!    set, or content that can never be accepted).
//!
//! The shell then commits exactly what the verdict says: Show and Hold commit the staged
//! session (and the prekeys a new one used) together with the seen id and the message
//! (shown in the history, or held in the encrypted profile); Refuse commits the ratchet
//! advance of an existing session and the seen id, and discards a staged new session
//! without consuming its prekeys or base key. Only after the state is saved is the
//! delivery acknowledged. A held message that does not fit ([`MAX_HELD`]) commits
//! nothing and is not acknowledged: the relay keeps it and delivers it again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use sealpost_protocol::content::{CheckpointView, Content, HeadView, LogViews, Message};
use sealpost_protocol::envelope::{Envelope, EnvelopeKind, MessageId};
use sealpost_protocol::identity::{AccountId, DeviceId, IdentityKeyPair};
use sealpost_protocol::trust::{DeviceSet, Digest, LogHead, SendDecision};
use sealpost_protocol::{PreKeySecrets, PreKeyUse, Session};
use serde::{Deserialize, Serialize};

/// How many replaced sessions a device keeps per peer device, besides the current one
/// (docs/PROTOCOL.md §18.3): messages sealed under a session the receiver has since
/// replaced (two devices that wrote to each other first at the same moment, say) are still
/// in flight, and are opened with it.
pub const MAX_PREVIOUS_SESSIONS: usize = 4;

/// The pairwise session with one peer device, the account it belongs to, and the
/// sessions it replaced.
pub(crate) struct PeerSession {
    pub(crate) account: AccountId,
    /// The session this device seals with.
    pub(crate) session: Session,
    /// Replaced sessions, newest first (at most [`MAX_PREVIOUS_SESSIONS`]); only opened
    /// with, never sealed with.
    pub(crate) previous: Vec<Session>,
}

impl PeerSession {
    pub(crate) fn new(account: AccountId, session: Session) -> Self {
        Self {
            account,
            session,
            previous: Vec::new(),
        }
    }

    /// The session a message was opened with (advanced), or a new one, becomes the
    /// current session: the peer is using it. The current one, if replaced, becomes the
    /// newest previous session; the oldest beyond the bound is dropped.
    fn install(&mut self, session: Session, slot: Option<Slot>) {
        let replaced = match slot {
            Some(Slot::Current) => {
                self.session = session;
                return;
            }
            Some(Slot::Previous(i)) if i < self.previous.len() => {
                self.previous.remove(i);
                std::mem::replace(&mut self.session, session)
            }
            _ => std::mem::replace(&mut self.session, session),
        };
        self.previous.insert(0, replaced);
        self.previous.truncate(MAX_PREVIOUS_SESSIONS);
    }

    /// The sessions to open with, current first.
    fn slots(&self) -> impl Iterator<Item = (Slot, &Session)> {
        std::iter::once((Slot::Current, &self.session)).chain(
            self.previous
                .iter()
                .enumerate()
                .map(|(i, s)| (Slot::Previous(i), s)),
        )
    }
}

/// Which of a peer's sessions opened a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The current one.
    Current,
    /// A replaced one (index into [`PeerSession::previous`]).
    Previous(usize),
}

/// Commit what opening a message staged (the message is shown, held, or refused against a
/// verified log after an existing session advanced): the session becomes `sender`'s
/// current one, and a new session's one-time prekeys are erased.
pub(crate) fn commit_session(
    sessions: &mut HashMap<DeviceId, PeerSession>,
    prekeys: &mut PreKeySecrets,
    sender: DeviceId,
    account: &AccountId,
    staged: Staged,
) {
    let (session, slot) = match staged {
        Staged::Advanced(session, slot) => (session, Some(slot)),
        Staged::Created(session, used) => {
            prekeys.consume(used);
            (session, None)
        }
    };
    match sessions.get_mut(&sender) {
        Some(p) if p.account == *account => p.install(session, slot),
        _ => {
            sessions.insert(sender, PeerSession::new(account.clone(), session));
        }
    }
}

/// Messages held (decrypted, awaiting a sender check that failed for a transient reason)
/// at most. When full, a message needing a hold is neither committed nor acknowledged
/// ([`crate::client::Event::HoldFull`]).
pub const MAX_HELD: usize = 256;
/// (Sending device, message id) pairs remembered for deduplication, at most.
pub const MAX_SEEN_IDS: usize = 100_000;
/// Peer accounts whose split-view state is remembered, at most (the oldest record is
/// forgotten first).
pub const MAX_SPLIT_PEERS: usize = 4096;

/// Message ids of authenticated envelopes, per sending device, bounded.
#[derive(Default)]
pub(crate) struct SeenIds {
    order: VecDeque<(DeviceId, MessageId)>,
    set: HashSet<(DeviceId, MessageId)>,
    /// Ids remembered by profiles written before ids were kept per device: a duplicate
    /// whatever the device (never grows).
    legacy: HashSet<MessageId>,
}

impl SeenIds {
    pub(crate) fn restore(pairs: Vec<(DeviceId, MessageId)>, legacy: Vec<MessageId>) -> Self {
        let mut s = Self {
            legacy: legacy.into_iter().collect(),
            ..Self::default()
        };
        for (d, m) in pairs {
            s.insert(d, m);
        }
        s
    }

    pub(crate) fn contains(&self, device: DeviceId, id: MessageId) -> bool {
        self.set.contains(&(device, id)) || self.legacy.contains(&id)
    }

    pub(crate) fn insert(&mut self, device: DeviceId, id: MessageId) {
        if !self.set.insert((device, id)) {
            return;
        }
        self.order.push_back((device, id));
        while self.order.len() > MAX_SEEN_IDS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    pub(crate) fn pairs(&self) -> Vec<(DeviceId, MessageId)> {
        self.order.iter().copied().collect()
    }

    pub(crate) fn legacy(&self) -> Vec<MessageId> {
        self.legacy.iter().copied().collect()
    }
}

/// A message decrypted and committed (its ratchet advance saved with it) whose sender
/// could not be checked against a verified device log yet. Persisted in the profile,
/// which is encrypted at rest as a whole.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeldMessage {
    /// The message id.
    pub id: MessageId,
    /// The sending device.
    pub sender: DeviceId,
    /// The routing header's kind, as a number (§7.1).
    pub header_kind: u16,
    /// The decrypted message.
    pub message: Message,
    /// When it was first held (ms since the Unix epoch).
    pub held_ms: u64,
    /// Why the check could not be made.
    pub reason: String,
}

/// The relay showed this device and a peer account different device logs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SplitRecord {
    /// The peer account.
    pub account: AccountId,
    /// When it was detected (ms since the Unix epoch).
    pub detected_ms: u64,
    /// What differed.
    pub reason: String,
}

/// Split-view records by peer account, bounded.
#[derive(Default)]
pub(crate) struct Splits {
    by_account: BTreeMap<AccountId, SplitRecord>,
}

impl Splits {
    pub(crate) fn restore(records: Vec<SplitRecord>) -> Self {
        let mut s = Self::default();
        for r in records {
            s.record(r);
        }
        s
    }

    pub(crate) fn records(&self) -> Vec<SplitRecord> {
        self.by_account.values().cloned().collect()
    }

    pub(crate) fn get(&self, account: &AccountId) -> Option<&SplitRecord> {
        self.by_account.get(account)
    }

    pub(crate) fn contains(&self, account: &AccountId) -> bool {
        self.by_account.contains_key(account)
    }

    /// Record a split; true if it is new for this account.
    pub(crate) fn record(&mut self, r: SplitRecord) -> bool {
        if self.by_account.contains_key(&r.account) {
            return false;
        }
        if self.by_account.len() >= MAX_SPLIT_PEERS {
            let oldest = self
                .by_account
                .values()
                .min_by_key(|r| r.detected_ms)
                .map(|r| r.account.clone());
            if let Some(a) = oldest {
                self.by_account.remove(&a);
            }
        }
        self.by_account.insert(r.account.clone(), r);
        true
    }

    /// Forget the split with `account`; true if there was one.
    pub(crate) fn clear(&mut self, account: &AccountId) -> bool {
        self.by_account.remove(account).is_some()
    }
}

/// The key material [`open`] reads (never writes).
pub(crate) struct Keys<'a> {
    pub(crate) identity: &'a IdentityKeyPair,
    pub(crate) prekeys: &'a PreKeySecrets,
    pub(crate) sessions: &'a HashMap<DeviceId, PeerSession>,
}

/// The session state a decryption produced, applied only if the message is kept.
pub(crate) enum Staged {
    /// A session with the sending device (the current one or a replaced one), advanced.
    Advanced(Session, Slot),
    /// A new session from an initial message, and the prekeys it used.
    Created(Session, PreKeyUse),
}

/// An envelope that decrypted and decoded.
pub(crate) struct Authentic {
    pub(crate) id: MessageId,
    pub(crate) sender: DeviceId,
    pub(crate) header_kind: EnvelopeKind,
    pub(crate) message: Message,
    pub(crate) staged: Staged,
}

/// What [`open`] found.
pub(crate) enum Opened {
    /// Already processed (this device, this id): acknowledge again, show nothing.
    Duplicate,
    /// Did not authenticate or decode: final. Nothing is remembered (a later genuine
    /// envelope with this id is still accepted).
    Refused(String),
    /// Decrypted; nothing committed yet.
    Authentic(Box<Authentic>),
}

/// Deduplicate and decrypt `envelope` without changing any state.
pub(crate) fn open(envelope: &Envelope, keys: &Keys<'_>, seen: &SeenIds) -> Opened {
    let id = envelope.header.message_id;
    let sender = envelope.header.sender;
    if seen.contains(sender, id) {
        return Opened::Duplicate;
    }
    let base_key = match envelope.session_base_key() {
        Ok(b) => b,
        Err(e) => return Opened::Refused(format!("undecodable body: {e}")),
    };
    let peer = keys.sessions.get(&sender);
    let (plaintext, staged) = match &base_key {
        // An initial message: the session it set up, if this device has it (current or
        // replaced), else a new one.
        Some(bk) => match peer.and_then(|p| p.slots().find(|(_, s)| s.base_key() == bk)) {
            Some((slot, s)) => {
                let mut copy = s.working_copy();
                match copy.open(envelope) {
                    Ok(pt) => (pt, Staged::Advanced(copy, slot)),
                    Err(e) => return Opened::Refused(format!("cannot decrypt: {e}")),
                }
            }
            None => match sealpost_protocol::accept_staged(keys.identity, keys.prekeys, envelope) {
                Ok((s, pt, used)) => (pt, Staged::Created(s, used)),
                Err(e) => return Opened::Refused(format!("cannot start session: {e}")),
            },
        },
        // An ordinary message: the current session, then the replaced ones, newest first
        // (each tried on a copy, so a failed attempt changes nothing).
        None => {
            let Some(p) = peer else {
                return Opened::Refused("no session with this device".into());
            };
            let mut first_error = None;
            let mut opened = None;
            for (slot, s) in p.slots() {
                let mut copy = s.working_copy();
                match copy.open(envelope) {
                    Ok(pt) => {
                        opened = Some((pt, Staged::Advanced(copy, slot)));
                        break;
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            match (opened, first_error) {
                (Some(o), _) => o,
                (None, Some(e)) => return Opened::Refused(format!("cannot decrypt: {e}")),
                (None, None) => return Opened::Refused("no session with this device".into()),
            }
        }
    };
    let message = match Message::decode(&plaintext) {
        Ok(m) => m,
        Err(e) => return Opened::Refused(format!("bad content: {e}")),
    };
    Opened::Authentic(Box::new(Authentic {
        id,
        sender,
        header_kind: envelope.header.kind,
        message,
        staged,
    }))
}

/// The kind the sender rules apply to: the content's, and for a `sync` copy of sensitive
/// content, the kind of what it copies (a device on probation sends neither).
pub fn rule_kind(content: &Content) -> EnvelopeKind {
    match content {
        Content::Sync { content, .. } if content.envelope_kind().is_sensitive() => {
            content.envelope_kind()
        }
        _ => content.envelope_kind(),
    }
}

/// A verdict on an authenticated message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Show it.
    Show,
    /// Show it with a note: its sending device has been revoked since (at `revoked_ms`,
    /// the revoking entry's effective time), and the message says it was sent before
    /// that. Only for chat, receipts, attachments and sync copies of them (§18.3).
    ShowFromRevoked {
        /// When the device was revoked (ms since the Unix epoch).
        revoked_ms: u64,
    },
    /// No verified device set of the sender's account could be had now: keep it and
    /// check again when the relay answers.
    Hold(String),
    /// Refuse it: checked against a verified set, or content never acceptable.
    Refuse {
        /// Why.
        reason: String,
        /// A sensitive kind refused because of its sender or a split view: shown loudly.
        alarm: bool,
        /// The sending device is not active in the verified log (reported as untrusted).
        not_active: bool,
    },
}

fn refuse(reason: String, alarm: bool) -> Judgement {
    Judgement::Refuse {
        reason,
        alarm,
        not_active: false,
    }
}

/// Judge an authenticated message from `sender` (a device claiming `message.from`),
/// received under `header_kind` by a device of `me`. `sender_set` is the verified device
/// set of `message.from` if one could be had (fresh), `split` whether this device
/// records a split view with `message.from`, `now_ms` the time probation is judged at.
pub fn judge(
    me: &AccountId,
    sender: DeviceId,
    header_kind: EnvelopeKind,
    message: &Message,
    sender_set: Option<&DeviceSet>,
    split: bool,
    now_ms: u64,
) -> Judgement {
    let account = &message.from;
    let content_kind = message.content.envelope_kind();
    let kind = rule_kind(&message.content);
    let Some(set) = sender_set else {
        return Judgement::Hold(format!(
            "the device log of {account} could not be verified yet"
        ));
    };
    // First the sender: active in the verified log and allowed to send this kind
    // (judged by the content, so a relabelled sensitive kind from a device on probation
    // is refused for its sender, loudly).
    let mut revoked_note = None;
    let reason = match set.may_send_at(&sender, kind, now_ms) {
        SendDecision::Allowed => None,
        // A device the verified log lists as revoked, whose message says it was sent
        // before the revocation took effect (a device's clock may run ahead by up to
        // MAX_CLOCK_SKEW_MS): a message queued at the relay while the device was still
        // valid. The relay stops a revoked device at once, so this is the expected case
        // and no sign of a compromised relay. The sender chose `sent_ms`, so it proves
        // nothing on its own: a thief holding the device's key and a relay that let it in
        // after the revocation could backdate one. Hence: shown with a note, never an
        // alarm; a sensitive kind is never acted on (refused, loudly, without claiming the
        // relay is compromised); a message dated after the revocation stays refused as
        // from an untrusted device.
        SendDecision::NotActive => match set.revoked_ms(&sender) {
            Some(revoked_ms)
                if message.sent_ms
                    <= revoked_ms.saturating_add(sealpost_protocol::trust::MAX_CLOCK_SKEW_MS) =>
            {
                if kind.is_sensitive()
                    || set.sensitive_kinds.contains(&kind)
                    || kind == EnvelopeKind::Notice
                {
                    return refuse(
                        format!(
                            "device {sender} of {account} was revoked on {}; a {} message it \
                             sent before that is not acted on: confirm it with {account} \
                             through another device or channel",
                            crate::clock::utc(revoked_ms),
                            kind.name()
                        ),
                        true,
                    );
                }
                revoked_note = Some(revoked_ms);
                None
            }
            _ => {
                return Judgement::Refuse {
                    reason: format!(
                        "device {sender} is not an active device of {account} in its verified \
                     device log"
                    ),
                    alarm: kind.is_sensitive(),
                    not_active: true,
                }
            }
        },
        SendDecision::OnProbation { until_ms } => Some(format!(
            "device {sender} of {account} is on probation until {} and may not send {} \
             messages",
            crate::clock::utc(until_ms),
            kind.name()
        )),
        SendDecision::Frozen => Some(format!(
            "{account} is frozen: {} messages from it are refused",
            kind.name()
        )),
    };
    if let Some(reason) = reason {
        return refuse(reason, kind.is_sensitive());
    }
    // The header's kind is what the relay enforced its rules on (probation, frozen
    // accounts, `send_notice`): content must travel under exactly the kind it requires
    // (§18.2), or a sender could relabel it to slip past those rules.
    if header_kind != content_kind {
        return refuse(
            format!(
                "the envelope is labelled {}, but its content ({}) must travel as {}: \
                 relabelled, possibly to avoid the relay's checks",
                header_kind.name(),
                message.content.name(),
                content_kind.name()
            ),
            false,
        );
    }
    if matches!(message.content, Content::Sync { .. }) && account != me {
        return refuse("sync copy from another account".into(), false);
    }
    if split && kind.is_sensitive() {
        return refuse(
            format!(
                "the relay showed this device and {account} different device logs (a split \
                 view): {} messages across this pair are refused until the views agree",
                kind.name()
            ),
            true,
        );
    }
    match revoked_note {
        Some(revoked_ms) => Judgement::ShowFromRevoked { revoked_ms },
        None => Judgement::Show,
    }
}

/// A log head as carried in a message.
pub fn head_view(h: &LogHead) -> HeadView {
    HeadView {
        seq: h.seq,
        hash: h.hash.0,
    }
}

/// The views a device of `me` puts in a message to `to` (for a sync copy, `to` = `me`).
pub fn views_for(
    my_head: Option<&LogHead>,
    their_head: Option<&LogHead>,
    split: bool,
    checkpoint: Option<CheckpointView>,
) -> LogViews {
    LogViews {
        sender: my_head.map(head_view),
        recipient: their_head.map(head_view),
        split,
        checkpoint,
    }
}

/// How a message's views compare with the heads this device verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ViewCheck {
    /// The message carries no views (an older sender): nothing to compare.
    Unclaimed,
    /// Both heads are exactly the ones this device holds.
    Agree,
    /// Nothing contradicts (a side is older: it may not have refreshed yet).
    Consistent,
    /// The sender claims a head newer than this device holds for these accounts:
    /// refresh them and compare again before concluding anything.
    Behind(Vec<AccountId>),
    /// A split view: the relay showed the two sides different logs.
    Split(String),
}

fn compare_one(
    account: &AccountId,
    claimed: Option<&HeadView>,
    held: Option<&LogHead>,
    refreshed: bool,
) -> Result<bool, Result<AccountId, String>> {
    let Some(c) = claimed else {
        // The sender verified none; only a log this device never saw agrees with that.
        return Ok(held.is_none());
    };
    let Some(h) = held else {
        return Err(if refreshed {
            Err(format!(
                "the sender saw the device log of {account} up to entry {}, and the relay \
                 serves this device none",
                c.seq
            ))
        } else {
            Ok(account.clone())
        });
    };
    if c.seq == h.seq {
        if c.hash == h.hash.0 {
            return Ok(true);
        }
        return Err(Err(format!(
            "entry {} of the device log of {account} is {} for the sender and {} for this \
             device",
            c.seq,
            Digest(c.hash).to_hex(),
            h.hash.to_hex()
        )));
    }
    if c.seq > h.seq {
        return Err(if refreshed {
            Err(format!(
                "the sender saw the device log of {account} up to entry {}, and the relay \
                 serves this device only up to entry {}",
                c.seq, h.seq
            ))
        } else {
            Ok(account.clone())
        });
    }
    Ok(false)
}

/// Compare the views in a message from `from` to a device of `me` with the heads this
/// device verified (`from_head`, `my_head`). `refreshed`: both logs were fetched again
/// just now, so a head the sender claims beyond them cannot be reached (a split view).
pub fn compare_views(
    from: &AccountId,
    me: &AccountId,
    views: Option<&LogViews>,
    from_head: Option<&LogHead>,
    my_head: Option<&LogHead>,
    refreshed: bool,
) -> ViewCheck {
    let Some(v) = views else {
        return ViewCheck::Unclaimed;
    };
    let mut behind = Vec::new();
    let mut agree = true;
    for (account, claimed, held) in [
        (from, v.sender.as_ref(), from_head),
        (me, v.recipient.as_ref(), my_head),
    ] {
        match compare_one(account, claimed, held, refreshed) {
            Ok(same) => agree &= same,
            Err(Ok(a)) => {
                agree = false;
                if !behind.contains(&a) {
                    behind.push(a);
                }
            }
            Err(Err(reason)) => return ViewCheck::Split(reason),
        }
    }
    if !behind.is_empty() {
        return ViewCheck::Behind(behind);
    }
    if agree {
        ViewCheck::Agree
    } else {
        ViewCheck::Consistent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;
    use sealpost_protocol::content::{Content, InstructionCategory};
    use sealpost_protocol::envelope::RoutingHeader;
    use sealpost_protocol::trust::{DeviceAction, DeviceLog, LogEntry};
    use sealpost_protocol::wire::BoundedString;

    fn acct(s: &str) -> AccountId {
        AccountId::new(s).unwrap()
    }

    struct Party {
        account: AccountId,
        identity: IdentityKeyPair,
        prekeys: PreKeySecrets,
        sessions: HashMap<DeviceId, PeerSession>,
        seen: SeenIds,
    }

    impl Party {
        fn new(name: &str) -> Self {
            let identity = IdentityKeyPair::generate(&mut OsRng);
            let mut prekeys = PreKeySecrets::new();
            prekeys.rotate_signed(&identity, &mut OsRng);
            prekeys.rotate_kem_last_resort(&identity, &mut OsRng);
            prekeys.generate_one_time(&identity, 4, &mut OsRng);
            prekeys.generate_kem_one_time(&identity, 4, &mut OsRng);
            Self {
                account: acct(name),
                identity,
                prekeys,
                sessions: HashMap::new(),
                seen: SeenIds::default(),
            }
        }

        fn keys(&self) -> Keys<'_> {
            Keys {
                identity: &self.identity,
                prekeys: &self.prekeys,
                sessions: &self.sessions,
            }
        }

        /// What the shell does for Show and Hold.
        fn commit(&mut self, a: Authentic) {
            self.seen.insert(a.sender, a.id);
            commit_session(
                &mut self.sessions,
                &mut self.prekeys,
                a.sender,
                &a.message.from,
                a.staged,
            );
        }

        fn log(&self) -> DeviceSet {
            let mut log = DeviceLog::new(self.account.clone());
            let body = log.next_body(
                1_000,
                DeviceAction::Add {
                    identity: self.identity.public().clone(),
                },
                "enrolment",
            );
            log.push(LogEntry::genesis(body, &self.identity)).unwrap();
            log.verify(None, None, 10_000_000).unwrap()
        }
    }

    fn seal(from: &Party, session: &mut Session, to: &Party, content: Content) -> Envelope {
        let kind = content.envelope_kind();
        let m = Message {
            from: from.account.clone(),
            sent_ms: 1,
            content,
            views: None,
        };
        let header = RoutingHeader::new(
            from.identity.device_id(),
            to.identity.device_id(),
            kind,
            1,
            &mut OsRng,
        );
        session
            .seal(header, &m.encode().unwrap(), &mut OsRng)
            .unwrap()
    }

    fn text(s: &str) -> Content {
        Content::Text {
            body: BoundedString::truncating(s),
        }
    }

    fn first_session(from: &Party, to: &mut Party) -> Session {
        let bundle = to.prekeys.bundle_for_test(&to.identity, true).unwrap();
        sealpost_protocol::initiate(&from.identity, &bundle, &mut OsRng).unwrap()
    }

    fn authentic(o: Opened) -> Authentic {
        match o {
            Opened::Authentic(a) => *a,
            Opened::Duplicate => panic!("duplicate"),
            Opened::Refused(r) => panic!("refused: {r}"),
        }
    }

    /// A peer that starts session after session (each prekey message sets up a new one)
    /// costs the receiver at most MAX_PREVIOUS_SESSIONS replaced sessions: messages still
    /// in flight under the newest replaced ones open, the oldest beyond the bound is gone.
    #[test]
    fn replaced_sessions_are_kept_up_to_their_bound() {
        let alice = Party::new("alice");
        let mut bob = Party::new("bob");
        let mut sessions = Vec::new();
        for i in 0..MAX_PREVIOUS_SESSIONS + 2 {
            let bundle = bob.prekeys.bundle_for_test(&bob.identity, false).unwrap();
            let mut s = sealpost_protocol::initiate(&alice.identity, &bundle, &mut OsRng).unwrap();
            let env = seal(&alice, &mut s, &bob, text(&format!("first {i}")));
            let a = authentic(open(&env, &bob.keys(), &bob.seen));
            assert!(matches!(a.staged, Staged::Created(..)));
            bob.commit(a);
            sessions.push(s);
        }
        let peer = &bob.sessions[&alice.identity.device_id()];
        assert_eq!(peer.previous.len(), MAX_PREVIOUS_SESSIONS);
        // In flight under every replaced session still kept: opened.
        for (i, s) in sessions.iter_mut().enumerate().skip(1) {
            let env = seal(&alice, s, &bob, text(&format!("late {i}")));
            let a = authentic(open(&env, &bob.keys(), &bob.seen));
            assert!(matches!(a.staged, Staged::Advanced(..)), "session {i}");
        }
        // Under the oldest, dropped beyond the bound: refused (never a new session).
        let env = seal(&alice, &mut sessions[0], &bob, text("too late"));
        assert!(
            matches!(open(&env, &bob.keys(), &bob.seen), Opened::Refused(_)),
            "the oldest replaced session is not kept"
        );
    }

    /// A first message whose sender check cannot be made (no verified set: the relay did
    /// not answer) changes nothing when not committed, so its redelivery opens again and
    /// is shown; and so are the sender's later messages.
    #[test]
    fn a_transient_failure_changes_nothing_and_the_redelivery_is_shown() {
        let alice = Party::new("alice");
        let mut bob = Party::new("bob");
        let mut s = first_session(&alice, &mut bob);
        let e1 = seal(&alice, &mut s, &bob, text("one"));
        let e2 = seal(&alice, &mut s, &bob, text("two"));
        let a = authentic(open(&e1, &bob.keys(), &bob.seen));
        let verdict = judge(
            &bob.account,
            a.sender,
            a.header_kind,
            &a.message,
            None,
            false,
            5,
        );
        assert!(matches!(verdict, Judgement::Hold(_)), "{verdict:?}");
        // Not committed (the hold store is full): the redelivery opens exactly as the
        // first delivery did.
        drop(a);
        let a = authentic(open(&e1, &bob.keys(), &bob.seen));
        let set = alice.log();
        let verdict = judge(
            &bob.account,
            a.sender,
            a.header_kind,
            &a.message,
            Some(&set),
            false,
            5,
        );
        assert_eq!(verdict, Judgement::Show);
        bob.commit(a);
        // The base key is now remembered with its session: the second initial message
        // goes to that session.
        let b = authentic(open(&e2, &bob.keys(), &bob.seen));
        assert!(matches!(b.staged, Staged::Advanced(_, Slot::Current)));
        bob.commit(b);
        assert!(matches!(
            open(&e2, &bob.keys(), &bob.seen),
            Opened::Duplicate
        ));
    }

    /// A held message commits its ratchet advance: a later message of the same session
    /// still opens, and the held one is not opened again (its id is seen).
    #[test]
    fn a_held_message_is_committed_and_later_ones_open() {
        let alice = Party::new("alice");
        let mut bob = Party::new("bob");
        let mut s = first_session(&alice, &mut bob);
        let e1 = seal(&alice, &mut s, &bob, text("one"));
        let e2 = seal(&alice, &mut s, &bob, text("two"));
        let a = authentic(open(&e1, &bob.keys(), &bob.seen));
        bob.commit(a);
        assert!(matches!(
            open(&e1, &bob.keys(), &bob.seen),
            Opened::Duplicate
        ));
        let b = authentic(open(&e2, &bob.keys(), &bob.seen));
        assert_eq!(
            judge(
                &bob.account,
                b.sender,
                b.header_kind,
                &b.message,
                Some(&alice.log()),
                false,
                5
            ),
            Judgement::Show
        );
    }

    /// A message from a device revoked since (§18.3): dated before the revocation took
    /// effect (the relay's append time of the removal, here later than its signed date),
    /// chat is shown with a note and a sensitive kind is refused without calling the
    /// device untrusted; dated after it (beyond the clock-skew allowance), it is refused
    /// as from a device the log does not list.
    #[test]
    fn a_message_from_a_device_revoked_since_is_shown_with_a_note_unless_dated_after() {
        use sealpost_protocol::trust::{EntryTimes, DEFAULT_COOLING_OFF_MS, MAX_CLOCK_SKEW_MS};
        let alice = Party::new("alice");
        let tablet = IdentityKeyPair::generate(&mut OsRng);
        let day = DEFAULT_COOLING_OFF_MS;
        let mut log = DeviceLog::new(alice.account.clone());
        let body = log.next_body(
            1_000,
            DeviceAction::Add {
                identity: alice.identity.public().clone(),
            },
            "enrolment",
        );
        log.push(LogEntry::genesis(body, &alice.identity)).unwrap();
        let body = log.next_body(
            1_000 + day,
            DeviceAction::Add {
                identity: tablet.public().clone(),
            },
            "tablet",
        );
        log.push(LogEntry::signed_by_device(
            body,
            &alice.identity,
            Some(&tablet),
        ))
        .unwrap();
        let signed = 1_000 + 3 * day;
        let body = log.next_body(
            signed,
            DeviceAction::Remove {
                device: tablet.device_id(),
            },
            "lost",
        );
        log.push(LogEntry::signed_by_device(body, &alice.identity, None))
            .unwrap();
        // The relay appended the removal an hour after its signed date.
        let appended = signed + 3_600_000;
        let times = EntryTimes {
            appended_ms: vec![1_000, 1_000 + day, appended],
            ..EntryTimes::default()
        };
        let now = appended + day;
        let set = log.verify_timed(None, None, now, &times).unwrap();
        assert_eq!(set.revoked_ms(&tablet.device_id()), Some(appended));
        let me = acct("bob");
        let message = |sent_ms: u64, content: Content| Message {
            from: alice.account.clone(),
            sent_ms,
            content,
            views: None,
        };
        let verdict = |m: &Message| {
            judge(
                &me,
                tablet.device_id(),
                m.content.envelope_kind(),
                m,
                Some(&set),
                false,
                now,
            )
        };
        // Queued while it was valid: shown, with the revocation time as a note.
        for sent in [signed - 60_000, appended - 1, appended + MAX_CLOCK_SKEW_MS] {
            assert_eq!(
                verdict(&message(sent, text("from the tablet"))),
                Judgement::ShowFromRevoked {
                    revoked_ms: appended
                }
            );
        }
        // An instruction is never acted on, but the device is not called untrusted.
        let instruction = Content::Instruction {
            category: InstructionCategory::Payment,
            body: BoundedString::truncating("pay"),
        };
        match verdict(&message(signed - 60_000, instruction)) {
            Judgement::Refuse {
                reason,
                alarm: true,
                not_active: false,
            } => assert!(reason.contains("revoked on"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Dated after the revocation: refused as from a device the log does not list.
        match verdict(&message(appended + MAX_CLOCK_SKEW_MS + 1, text("late"))) {
            Judgement::Refuse {
                not_active: true, ..
            } => {}
            other => panic!("{other:?}"),
        }
        // A device never listed: refused as before, whatever its date.
        let stranger = IdentityKeyPair::generate(&mut OsRng);
        let m = message(1_000, text("hi"));
        assert!(matches!(
            judge(
                &me,
                stranger.device_id(),
                m.content.envelope_kind(),
                &m,
                Some(&set),
                false,
                now
            ),
            Judgement::Refuse {
                not_active: true,
                ..
            }
        ));
    }

    /// An envelope that fails to decrypt is refused and remembers nothing: the genuine
    /// envelope with the same id is still accepted.
    #[test]
    fn an_undecryptable_envelope_does_not_burn_its_message_id() {
        let alice = Party::new("alice");
        let mut bob = Party::new("bob");
        let mut s = first_session(&alice, &mut bob);
        let genuine = seal(&alice, &mut s, &bob, text("real"));
        let mut forged = genuine.clone();
        let last = forged.body.len() - 1;
        forged.body[last] ^= 1;
        match open(&forged, &bob.keys(), &bob.seen) {
            Opened::Refused(_) => {}
            _ => panic!("a forged body must not open"),
        }
        let a = authentic(open(&genuine, &bob.keys(), &bob.seen));
        bob.commit(a);
    }

    /// Seen ids are per sending device: the same id from another device is not a
    /// duplicate.
    #[test]
    fn seen_ids_are_per_device_and_bounded() {
        let mut seen = SeenIds::default();
        let d1 = DeviceId([1; 16]);
        let d2 = DeviceId([2; 16]);
        let m = MessageId([9; 16]);
        seen.insert(d1, m);
        assert!(seen.contains(d1, m));
        assert!(!seen.contains(d2, m));
        for i in 0..(MAX_SEEN_IDS as u32 + 10) {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&i.to_le_bytes());
            seen.insert(d2, MessageId(b));
        }
        assert_eq!(seen.pairs().len(), MAX_SEEN_IDS);
        assert!(!seen.contains(d1, m), "the oldest id was forgotten");
        let legacy = SeenIds::restore(Vec::new(), vec![m]);
        assert!(legacy.contains(d2, m));
    }

    /// Against a verified set: a device the log does not list is refused (an alarm for a
    /// sensitive kind), a relabelled kind and a sync from another account are refused,
    /// and a split view refuses sensitive kinds only.
    #[test]
    fn refusals_are_made_against_a_verified_set_and_split_views_refuse_sensitive_kinds() {
        let alice = Party::new("alice");
        let mallory = Party::new("mallory");
        let me = acct("bob");
        let set = alice.log();
        let instr = Message {
            from: alice.account.clone(),
            sent_ms: 1,
            content: Content::Instruction {
                category: InstructionCategory::Payment,
                body: BoundedString::truncating("pay"),
            },
            views: None,
        };
        let dev = alice.identity.device_id();
        let j = judge(
            &me,
            mallory.identity.device_id(),
            EnvelopeKind::Instruction,
            &instr,
            Some(&set),
            false,
            5,
        );
        assert!(matches!(
            j,
            Judgement::Refuse {
                alarm: true,
                not_active: true,
                ..
            }
        ));
        // Past the cooling-off (no roster: the default), a relabelled kind is refused for
        // its label.
        let late = 10_000_000_000;
        let j = judge(
            &me,
            dev,
            EnvelopeKind::Chat,
            &instr,
            Some(&set),
            false,
            late,
        );
        assert!(matches!(j, Judgement::Refuse { ref reason, .. } if reason.contains("relabelled")));
        assert_eq!(
            judge(
                &me,
                dev,
                EnvelopeKind::Instruction,
                &instr,
                Some(&set),
                false,
                late
            ),
            Judgement::Show
        );
        let j = judge(
            &me,
            dev,
            EnvelopeKind::Instruction,
            &instr,
            Some(&set),
            true,
            late,
        );
        assert!(
            matches!(j, Judgement::Refuse { alarm: true, ref reason, .. } if reason.contains("split view"))
        );
        let chat = Message {
            content: text("hi"),
            ..instr.clone()
        };
        assert_eq!(
            judge(&me, dev, EnvelopeKind::Chat, &chat, Some(&set), true, late),
            Judgement::Show
        );
        let sync = Message {
            content: Content::Sync {
                to: me.clone(),
                content: Box::new(text("x")),
            },
            ..instr
        };
        assert!(matches!(
            judge(&me, dev, EnvelopeKind::Sync, &sync, Some(&set), false, late),
            Judgement::Refuse { .. }
        ));
    }

    #[test]
    fn views_agree_lag_or_split() {
        let a = acct("alice");
        let b = acct("bob");
        let h = |seq: u64, x: u8| LogHead {
            seq,
            hash: Digest([x; 32]),
        };
        let v = |s: Option<LogHead>, r: Option<LogHead>| {
            Some(views_for(s.as_ref(), r.as_ref(), false, None))
        };
        assert_eq!(
            compare_views(&a, &b, None, Some(&h(0, 1)), Some(&h(0, 2)), false),
            ViewCheck::Unclaimed
        );
        assert_eq!(
            compare_views(
                &a,
                &b,
                v(Some(h(0, 1)), Some(h(0, 2))).as_ref(),
                Some(&h(0, 1)),
                Some(&h(0, 2)),
                false
            ),
            ViewCheck::Agree
        );
        // The sender is behind on this device's log: no alarm (it may not have
        // refreshed).
        assert_eq!(
            compare_views(
                &a,
                &b,
                v(Some(h(0, 1)), Some(h(0, 2))).as_ref(),
                Some(&h(0, 1)),
                Some(&h(1, 3)),
                false
            ),
            ViewCheck::Consistent
        );
        // The sender is ahead: refresh first; still ahead after the refresh: split.
        let ahead = v(Some(h(1, 1)), Some(h(0, 2)));
        assert_eq!(
            compare_views(
                &a,
                &b,
                ahead.as_ref(),
                Some(&h(0, 1)),
                Some(&h(0, 2)),
                false
            ),
            ViewCheck::Behind(vec![a.clone()])
        );
        assert!(matches!(
            compare_views(&a, &b, ahead.as_ref(), Some(&h(0, 1)), Some(&h(0, 2)), true),
            ViewCheck::Split(_)
        ));
        // Another hash at the same entry: split at once.
        assert!(matches!(
            compare_views(
                &a,
                &b,
                v(Some(h(0, 1)), Some(h(0, 9))).as_ref(),
                Some(&h(0, 1)),
                Some(&h(0, 2)),
                false
            ),
            ViewCheck::Split(_)
        ));
    }
}

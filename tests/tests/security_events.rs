//! Security events end to end (issue 10, "Security events" and "the security desk sees
//! them live"): each rule raised by a simulated attack over real QUIC connections to a
//! relay on SQLite, seen by a `security_watch` subscriber within a second; a normal mixed
//! load raising none; a subscriber without the security role refused and sent nothing;
//! no message content in anything the relay writes.
//!
//! Each test runs its own relay with the rule under test tuned to a small threshold.
//! Where one attack necessarily also feeds another rule (every failure from loopback
//! shares one address; a recovery starts with a link request nobody of the account is
//! online for), that other rule's threshold is raised in that test, so that the event
//! seen is exactly the one under test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use sealpost_client::notices::{NoticeOutcome, NoticeTarget};
use sealpost_client::Client;
use sealpost_protocol::content::InstructionCategory;
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::trust::{NoticeCategory, StaffRole};
use sealpost_protocol::wire::{ErrorCode, FrameBody, Role, SecurityEventInfo, SecuritySeverity};
use sealpost_server::security::{Measure, Measures, Rule, SecurityConfig};
use sealpost_server::store::sqlite::SqliteStore;
use sealpost_tests::org::{self, TestOrg};
use sealpost_tests::{sqlite_relay_in, TestRelay};

/// How long an event may take to reach the watcher.
const SEEN_WITHIN: Duration = Duration::from_secs(1);
/// How long the watcher listens for a second, unwanted event.
const NOTHING_ELSE: Duration = Duration::from_millis(600);
/// How long `receive` waits for a mailbox.
const QUIET: Duration = Duration::from_secs(3);
/// The keys of an event as JSON, the SIEM line's and `security watch --json`'s (sorted).
const SIEM_KEYS: [&str; 10] = [
    "account", "address", "detail", "device", "event", "id", "rule", "severity", "time", "time_ms",
];

fn keys(v: &serde_json::Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

/// The SIEM file, in the relay's data directory.
const SIEM: &str = "siem.jsonl";

/// A relay on SQLite pinned to an organisation, four staff (ops: operations, comp:
/// compliance, sec: security, desk: security) in roster version 1, and `desk` watching.
struct Desk {
    relay: TestRelay<SqliteStore>,
    org: TestOrg,
    ops: Client,
    comp: Client,
    sec: Client,
    desk: Client,
    homes: tempfile::TempDir,
}

async fn desk(tune: impl FnOnce(&mut sealpost_server::config::Config)) -> Desk {
    let homes = tempfile::tempdir().unwrap();
    let org = TestOrg::new();
    let fp = org.fingerprint();
    let relay = sqlite_relay_in(tempfile::tempdir().unwrap(), |c| {
        c.org_fingerprint = Some(fp);
        c.security.siem_file = Some(c.data_dir.join(SIEM));
        tune(c);
    })
    .await;
    let roles = [
        ("ops", StaffRole::Operations),
        ("comp", StaffRole::Compliance),
        ("sec", StaffRole::Security),
        ("desk", StaffRole::Security),
    ];
    let mut staff = Vec::new();
    for (name, _) in roles {
        let id = relay.account(name, Role::Staff).await;
        staff.push(org::enrolled(&relay, &homes.path().join(name), &id, Some(&org)).await);
    }
    let members: Vec<_> = staff.iter().zip(roles).map(|(c, (_, r))| (c, r)).collect();
    let v1 = org.genesis(&members, org::quick_policy(org::QUICK_COOLING_OFF_MS));
    staff[0].publish_signed_roster(v1).await.unwrap();
    org::settle().await;
    let mut staff = staff.into_iter();
    let (ops, comp, sec, mut desk) = (
        staff.next().unwrap(),
        staff.next().unwrap(),
        staff.next().unwrap(),
        staff.next().unwrap(),
    );
    if !desk.is_connected() {
        desk.connect().await.unwrap();
    }
    let (stored, more) = desk.security_watch(0).await.unwrap();
    assert!(!more);
    assert!(stored.is_empty(), "setting up raised {stored:?}");
    Desk {
        relay,
        org,
        ops,
        comp,
        sec,
        desk,
        homes,
    }
}

impl Desk {
    /// A client account `name` assigned to ops, its first device enrolled and attested
    /// (on its cooling-off for `org::QUICK_COOLING_OFF_MS`: [`org::settle`] before it
    /// links a device or freezes the account).
    async fn client(&mut self, name: &str) -> (AccountId, Client) {
        let id = self.relay.account(name, Role::Client).await;
        self.relay.assign(&id, self.ops.account().unwrap()).await;
        let mut c = org::enrolled(
            &self.relay,
            &self.homes.path().join(name),
            &id,
            Some(&self.org),
        )
        .await;
        org::attest(&mut self.ops, &mut c).await;
        (id, c)
    }

    fn home(&self, name: &str) -> std::path::PathBuf {
        self.homes.path().join(name)
    }

    /// Every event the watcher receives within `wait`.
    async fn events_within(&self, wait: Duration) -> Vec<SecurityEventInfo> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while let Ok(Ok(Some(e))) =
            tokio::time::timeout_at(deadline, self.desk.next_security_event()).await
        {
            out.push(e);
        }
        out
    }

    /// The one event the attack raised: seen within a second, of `rule`, about
    /// `account`, with `severity`, and no other.
    async fn expect(
        &self,
        rule: Rule,
        account: Option<&AccountId>,
        severity: SecuritySeverity,
    ) -> SecurityEventInfo {
        let first = tokio::time::timeout(SEEN_WITHIN, self.desk.next_security_event())
            .await
            .unwrap_or_else(|_| panic!("no {} event within {SEEN_WITHIN:?}", rule.name()))
            .unwrap()
            .expect("the watch connection closed");
        let others = self.events_within(NOTHING_ELSE).await;
        assert!(
            others.is_empty(),
            "{}: more events than the one: {first:?} then {others:?}",
            rule.name()
        );
        assert_eq!(first.rule.as_str(), rule.name(), "{first:?}");
        assert_eq!(first.account.as_ref(), account, "{first:?}");
        assert_eq!(first.severity, severity, "{first:?}");
        first
    }

    async fn expect_nothing(&self, what: &str) {
        let got = self.events_within(NOTHING_ELSE).await;
        assert!(got.is_empty(), "{what} raised {got:?}");
    }
}

fn default_severity(rule: Rule) -> SecuritySeverity {
    sealpost_server::security::RuleSettings::default_for(rule).severity
}

fn rule_mut(
    c: &mut sealpost_server::config::Config,
    rule: Rule,
) -> &mut sealpost_server::security::RuleSettings {
    c.security.rules.get_mut(rule)
}

/// Raise `rule`'s threshold out of reach in this test.
fn quiet(c: &mut sealpost_server::config::Config, rule: Rule) {
    rule_mut(c, rule).threshold = 10_000;
}

/// An unauthenticated connection tries to authenticate as `device` with a signature
/// that does not verify.
async fn bad_auth<S: sealpost_server::store::Store>(relay: &TestRelay<S>, device: DeviceId) {
    let conn = relay.connect().await;
    match conn.request(FrameBody::AuthStart { device }).await.unwrap() {
        FrameBody::AuthChallenge { .. } => {}
        other => panic!("{other:?}"),
    }
    match conn
        .request(FrameBody::AuthResponse { signature: [7; 64] })
        .await
    {
        Err(sealpost_client::net::NetError::Refused {
            code: ErrorCode::AuthFailed,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    conn.close();
}

// ---------------------------------------------------------------------------------------
// One attack per rule

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_naming_an_account() {
    let mut d = desk(|c| {
        rule_mut(c, Rule::AuthFailuresAccount).threshold = 3;
        quiet(c, Rule::AuthFailuresAddress);
    })
    .await;
    let (alice, phone) = d.client("alice").await;
    let device = phone.device_id();
    for _ in 0..2 {
        bad_auth(&d.relay, device).await;
    }
    d.expect_nothing("two failures (threshold 3)").await;
    bad_auth(&d.relay, device).await;
    let e = d
        .expect(
            Rule::AuthFailuresAccount,
            Some(&alice),
            default_severity(Rule::AuthFailuresAccount),
        )
        .await;
    assert_eq!(e.device, Some(device));
    assert_eq!(e.address.as_ref().map(|a| a.as_str()), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_from_one_address() {
    let d = desk(|c| rule_mut(c, Rule::AuthFailuresAddress).threshold = 4).await;
    // Devices nobody enrolled: no account is named, the address is.
    for i in 0..4u8 {
        bad_auth(&d.relay, DeviceId([0xa0 + i; 16])).await;
    }
    let e = d
        .expect(
            Rule::AuthFailuresAddress,
            None,
            default_severity(Rule::AuthFailuresAddress),
        )
        .await;
    assert_eq!(e.address.as_ref().map(|a| a.as_str()), Some("127.0.0.1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_sending_an_instruction_during_its_cooling_off() {
    let mut d = desk(|c| {
        // The measure: the account's sensitive kinds are held afterwards.
        rule_mut(c, Rule::SensitiveDuringCoolingOff).measure =
            Measures::NONE.with(Measure::HoldSensitive);
    })
    .await;
    let (alice, mut phone) = d.client("alice").await;
    org::settle().await;
    let ops = d.ops.account().unwrap().clone();
    let mut tablet = org::linked(&d.relay, &mut phone, &d.home("tablet"), Some(&d.org)).await;
    // A device link, by a device of the account that was online: nothing yet.
    let sent = tablet
        .send_instruction_unchecked_for_tests(&ops, InstructionCategory::Payment, "pay 1 BTC")
        .await;
    assert!(sent.is_err(), "an instruction on probation was accepted");
    let e = d
        .expect(
            Rule::SensitiveDuringCoolingOff,
            Some(&alice),
            default_severity(Rule::SensitiveDuringCoolingOff),
        )
        .await;
    assert_eq!(e.device, Some(tablet.device_id()));
    // hold_sensitive: the phone, past its cooling-off, is held too; chat still goes.
    match phone
        .send_instruction_unchecked_for_tests(&ops, InstructionCategory::Payment, "pay 1 BTC")
        .await
    {
        Err(e) => assert!(e.to_string().contains("security hold"), "{e}"),
        Ok(r) => panic!("a held account sent an instruction: {r:?}"),
    }
    phone.send_text(&ops, "hello").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_added_in_a_burst() {
    let mut d = desk(|c| {
        let r = rule_mut(c, Rule::DeviceCountJump);
        r.threshold = 2;
        r.measure = Measures::NONE.with(Measure::NotifyDevices);
    })
    .await;
    let (alice, mut phone) = d.client("alice").await;
    org::settle().await;
    let mut tablet = org::linked(&d.relay, &mut phone, &d.home("tablet"), Some(&d.org)).await;
    d.expect_nothing("one added device (threshold 2)").await;
    let mut laptop = org::linked(&d.relay, &mut phone, &d.home("laptop"), Some(&d.org)).await;
    let e = d
        .expect(
            Rule::DeviceCountJump,
            Some(&alice),
            default_severity(Rule::DeviceCountJump),
        )
        .await;
    assert_eq!(e.device, Some(laptop.device_id()));
    assert!(e.detail.as_str().contains("3 active devices"), "{e:?}");
    // notify_devices: the account's other devices, online, are told within a second;
    // the device the event is about is not.
    for (name, c) in [("phone", &mut phone), ("tablet", &mut tablet)] {
        let started = std::time::Instant::now();
        let mut seen = Vec::new();
        while seen.is_empty() && started.elapsed() < SEEN_WITHIN {
            seen = security_alerts(c.receive(false, SEEN_WITHIN / 4).await.unwrap());
        }
        assert_eq!(seen.len(), 1, "{name}: {seen:?}");
        assert_eq!(
            seen[0],
            (e.id, "device_count_jump".into(), Some(laptop.device_id()))
        );
    }
    let on_laptop = security_alerts(laptop.receive(false, NOTHING_ELSE).await.unwrap());
    assert!(on_laptop.is_empty(), "{on_laptop:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recovery_offered_by_staff() {
    let mut d = desk(|c| quiet(c, Rule::UnsolicitedLinkRequest)).await;
    let (alice, old) = d.client("alice").await;
    drop(old); // lost
    let mut new = Client::init(&d.home("new"), org::PASS).unwrap();
    let ticket = new
        .link_start(org::relay_info(&d.relay, Some(&d.org)), &alice)
        .await
        .unwrap();
    d.expect_nothing("a link request (its rule is off here)")
        .await;
    d.ops
        .offer_recovery(&alice, &ticket.link_id, "passport checked on video")
        .await
        .unwrap();
    let e = d
        .expect(
            Rule::RecoveryRequested,
            Some(&alice),
            default_severity(Rule::RecoveryRequested),
        )
        .await;
    assert_eq!(e.device, Some(d.ops.device_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_request_none_of_the_accounts_devices_started() {
    let mut d = desk(|c| {
        let r = rule_mut(c, Rule::UnsolicitedLinkRequest);
        r.measure = Measures::NONE
            .with(Measure::RequireFreshLinkCode)
            .with(Measure::NotifyDevices);
    })
    .await;
    let (alice, mut phone) = d.client("alice").await;
    phone.disconnect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Someone who knows the account id asks to join it.
    let mut intruder = Client::init(&d.home("intruder"), org::PASS).unwrap();
    let ticket = intruder
        .link_start(org::relay_info(&d.relay, Some(&d.org)), &alice)
        .await
        .unwrap();
    let e = d
        .expect(
            Rule::UnsolicitedLinkRequest,
            Some(&alice),
            default_severity(Rule::UnsolicitedLinkRequest),
        )
        .await;
    assert_eq!(e.device, Some(intruder.device_id()));
    // notify_devices: the phone was offline; it is told when it connects, once.
    tokio::time::sleep(Duration::from_millis(300)).await; // the writer stores the alert
    phone.connect().await.unwrap();
    let alerts = security_alerts(phone.take_events());
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].0, e.id);
    assert_eq!(alerts[0].1, "unsolicited_link_request");
    assert_eq!(alerts[0].2, Some(intruder.device_id()));
    // require_fresh_link_code: the request is gone; the phone finds nothing to offer on.
    let pending = phone.pending_links(None).await.unwrap();
    assert!(
        pending.iter().all(|l| l.link_id != ticket.link_id),
        "{pending:?}"
    );
    // The cursor is in the profile: a new connection (and a reopened profile) shows it
    // no more.
    phone.disconnect();
    drop(phone);
    let mut phone = Client::open(&d.homes.path().join("alice"), org::PASS).unwrap();
    assert_eq!(phone.alerts_seen(), e.id);
    phone.connect().await.unwrap();
    assert!(security_alerts(phone.take_events()).is_empty());
}

/// The security alerts among `events`: (id, rule, device).
fn security_alerts(
    events: Vec<sealpost_client::client::Event>,
) -> Vec<(u64, String, Option<DeviceId>)> {
    events
        .into_iter()
        .filter_map(|e| match e {
            sealpost_client::client::Event::SecurityAlert {
                id, rule, device, ..
            } => Some((id, rule, device)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_fetches_of_many_accounts() {
    let d = desk(|c| rule_mut(c, Rule::BundleFetchBurst).threshold = 5).await;
    let mallory = d.relay.account("mallory", Role::Client).await;
    let m = d.relay.device(&mallory, 7).await;
    // Enumeration: guessing account ids (they do not exist; the fetches count anyway).
    for i in 0..4 {
        let _ = m
            .conn
            .fetch_bundles(&AccountId::new(&format!("guess-{i}")).unwrap())
            .await;
        // The same account again does not count twice.
        let _ = m
            .conn
            .fetch_bundles(&AccountId::new(&format!("guess-{i}")).unwrap())
            .await;
    }
    d.expect_nothing("four distinct accounts (threshold 5)")
        .await;
    let _ = m
        .conn
        .fetch_bundles(&AccountId::new("guess-4").unwrap())
        .await;
    let e = d
        .expect(
            Rule::BundleFetchBurst,
            Some(&mallory),
            default_severity(Rule::BundleFetchBurst),
        )
        .await;
    assert_eq!(e.device, Some(m.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reaching_for_accounts_it_is_not_assigned_to() {
    let mut d = desk(|c| rule_mut(c, Rule::UnassignedContactAttempt).threshold = 3).await;
    let (bob, _bob_phone) = d.client("bob").await;
    let mallory = d.relay.account("mallory", Role::Client).await;
    let m = d.relay.device(&mallory, 8).await;
    for _ in 0..2 {
        let refused = m.conn.fetch_bundles(&bob).await;
        assert!(matches!(
            refused,
            Err(sealpost_client::net::NetError::Refused {
                code: ErrorCode::Forbidden,
                ..
            })
        ));
    }
    d.expect_nothing("two attempts (threshold 3)").await;
    let _ = m.conn.list_devices(&bob).await;
    d.expect(
        Rule::UnassignedContactAttempt,
        Some(&mallory),
        default_severity(Rule::UnassignedContactAttempt),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_by_a_rate_limit() {
    let d = desk(|c| rule_mut(c, Rule::RateLimited).threshold = 3).await;
    let mallory = d.relay.account("mallory", Role::Client).await;
    let m = d.relay.device(&mallory, 9).await;
    // The bundles of one (unknown) account, again and again: past the per-pair burst
    // (20) the relay answers rate_limited. (One account: the bundle-fetch rule counts
    // distinct accounts, so it stays below its threshold.)
    let target = AccountId::new("someone").unwrap();
    let mut limited = 0;
    for _ in 0..23 {
        if let Err(sealpost_client::net::NetError::Refused {
            code: ErrorCode::RateLimited,
            ..
        }) = m.conn.fetch_bundles(&target).await
        {
            limited += 1;
        }
    }
    assert!(limited >= 3, "{limited} refused");
    d.expect(
        Rule::RateLimited,
        Some(&mallory),
        default_severity(Rule::RateLimited),
    )
    .await;
}

/// Freeze `account` from `device` and have ops propose, comp and sec approve its
/// unfreeze (the relay appends it when the quorum is complete).
async fn freeze_and_unfreeze(d: &mut Desk, account: &AccountId, device: &mut Client) {
    assert!(
        device
            .freeze_account("this wasn't me")
            .await
            .unwrap()
            .frozen
    );
    unfreeze(d, account).await;
}

async fn unfreeze(d: &mut Desk, account: &AccountId) {
    let req = d
        .ops
        .propose_unfreeze(account, "verified by phone call")
        .await
        .unwrap();
    for c in [&mut d.comp, &mut d.sec] {
        c.receive(true, QUIET).await.unwrap();
        c.approve(&req.request_id).await.unwrap();
    }
    d.ops.receive(true, QUIET).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_frozen_then_unfrozen() {
    let mut d = desk(|_| {}).await;
    let (alice, mut phone) = d.client("alice").await;
    org::settle().await;
    d.ops.account_devices(&alice).await.unwrap();
    assert!(phone.freeze_account("this wasn't me").await.unwrap().frozen);
    let e = d
        .expect(
            Rule::AccountFrozen,
            Some(&alice),
            default_severity(Rule::AccountFrozen),
        )
        .await;
    assert_eq!(e.device, Some(phone.device_id()));
    unfreeze(&mut d, &alice).await;
    d.expect(
        Rule::AccountUnfrozen,
        Some(&alice),
        default_severity(Rule::AccountUnfrozen),
    )
    .await;
    assert!(!phone.devices().await.unwrap().frozen);
    // Both events concern trust: each is in the transparency log as a `security_event`
    // leaf (rule, severity, account, device; appended once stored, in its own task).
    use sealpost_protocol::tlog::{LeafEvent, LogLeaf};
    use sealpost_server::store::tlog::TlogStore;
    let mut rules = Vec::new();
    for _ in 0..50 {
        rules = d
            .relay
            .relay
            .store
            .leaves(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .filter_map(
                |(_, bytes)| match LogLeaf::from_bytes(&bytes).unwrap().event {
                    LeafEvent::SecurityEvent { rule, account, .. } => {
                        Some((rule.as_str().to_owned(), account))
                    }
                    _ => None,
                },
            )
            .collect::<Vec<_>>();
        if rules.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rules,
        [
            ("account_frozen".to_owned(), Some(alice.clone())),
            ("account_unfrozen".to_owned(), Some(alice.clone())),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_staff_member_approving_many_requests() {
    let mut d = desk(|c| {
        rule_mut(c, Rule::ApprovalBurst).threshold = 2;
        rule_mut(c, Rule::AccountFrozen).enabled = false;
        rule_mut(c, Rule::AccountUnfrozen).enabled = false;
    })
    .await;
    let (alice, mut a) = d.client("alice").await;
    let (bob, mut b) = d.client("bob").await;
    org::settle().await;
    for (id, c) in [(&alice, &mut a), (&bob, &mut b)] {
        d.ops.account_devices(id).await.unwrap();
        freeze_and_unfreeze(&mut d, id, c).await;
    }
    // comp and sec each approved two distinct requests: one event for each.
    let got = d.events_within(SEEN_WITHIN + NOTHING_ELSE).await;
    let mut approvers: Vec<_> = got
        .iter()
        .map(|e| {
            assert_eq!(e.rule.as_str(), "approval_burst", "{got:?}");
            assert_eq!(e.severity, default_severity(Rule::ApprovalBurst));
            e.account.clone().unwrap()
        })
        .collect();
    approvers.sort();
    assert_eq!(
        approvers,
        vec![
            d.comp.account().unwrap().clone(),
            d.sec.account().unwrap().clone()
        ],
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_to_all_clients() {
    let mut d = desk(|_| {}).await;
    let (_alice, _a) = d.client("alice").await;
    let (_bob, _b) = d.client("bob").await;
    let outcome = d
        .ops
        .send_signed_notice(
            NoticeCategory::General,
            NoticeTarget::AllClients,
            "Maintenance",
            "Trading pauses on Sunday",
        )
        .await
        .unwrap();
    let NoticeOutcome::Draft { requests, .. } = outcome else {
        panic!("a notice to all clients needs its co-signer: {outcome:?}")
    };
    d.comp.receive(true, QUIET).await.unwrap();
    for r in &requests {
        d.comp.approve(&r.request_id).await.unwrap();
    }
    // ops sends it once approved: one envelope per client device, one event.
    d.ops.receive(true, QUIET).await.unwrap();
    let e = d
        .expect(
            Rule::NoticeToAllClients,
            Some(&d.ops.account().unwrap().clone()),
            default_severity(Rule::NoticeToAllClients),
        )
        .await;
    assert_eq!(e.device, Some(d.ops.device_id()));
}

// ---------------------------------------------------------------------------------------
// Who may watch; what the relay writes; a normal load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_security_desk_may_watch() {
    let mut d = desk(|c| rule_mut(c, Rule::AuthFailuresAddress).threshold = 1).await;
    let (_alice, mut phone) = d.client("alice").await;
    // Operations staff, compliance staff and a client: forbidden, and nothing follows.
    for c in [&mut d.ops, &mut d.comp, &mut phone] {
        match c.security_watch(0).await {
            Err(sealpost_client::ClientError::Net(sealpost_client::net::NetError::Refused {
                code: ErrorCode::Forbidden,
                ..
            })) => {}
            other => panic!("{other:?}"),
        }
    }
    bad_auth(&d.relay, DeviceId([0xee; 16])).await;
    d.expect(
        Rule::AuthFailuresAddress,
        None,
        default_severity(Rule::AuthFailuresAddress),
    )
    .await;
    for c in [&d.ops, &d.comp, &phone] {
        let got = tokio::time::timeout(NOTHING_ELSE, c.next_security_event()).await;
        assert!(got.is_err(), "a refused watcher was sent {got:?}");
    }
    // The security staff member's second watcher (sec) is allowed, and starts with the
    // stored event.
    let (stored, more) = d.sec.security_watch(0).await.unwrap();
    assert!(!more);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].rule.as_str(), "auth_failures_address");
}

/// Every file under `dir`, recursively.
fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_normal_mixed_load_raises_nothing_and_no_file_holds_message_content() {
    let mut d = desk(|_| {}).await;
    let canary = format!("CANARY-{}", hex::encode(rand::random::<[u8; 12]>()));
    let ops = d.ops.account().unwrap().clone();
    let (alice, mut phone) = d.client("alice").await;
    let (bob, mut bob_phone) = d.client("bob").await;
    org::settle().await;
    // A device link, started while the account's phone is online and confirmed on it.
    phone.connect().await.unwrap();
    let mut tablet = org::linked(&d.relay, &mut phone, &d.home("tablet"), Some(&d.org)).await;
    // Notices to one client, and a high-risk one with its co-signatures.
    d.ops
        .send_notice(&alice, "Statement", &format!("ready {canary}"))
        .await
        .unwrap();
    let outcome = d
        .ops
        .send_signed_notice(
            NoticeCategory::DepositInstruction,
            NoticeTarget::Client(bob.clone()),
            "New deposit address",
            &format!("bc1q... {canary}"),
        )
        .await
        .unwrap();
    let NoticeOutcome::Draft { requests, .. } = outcome else {
        panic!("{outcome:?}")
    };
    for c in [&mut d.comp, &mut d.sec] {
        c.receive(true, QUIET).await.unwrap();
        for r in &requests {
            c.approve(&r.request_id).await.unwrap();
        }
    }
    d.ops.receive(true, QUIET).await.unwrap();
    // Chat through the library, both ways.
    for i in 0..20 {
        phone
            .send_text(&ops, &format!("{canary} question {i}"))
            .await
            .unwrap();
        tablet
            .send_text(&ops, &format!("{canary} more {i}"))
            .await
            .unwrap();
        bob_phone
            .send_text(&ops, &format!("{canary} bob {i}"))
            .await
            .unwrap();
    }
    d.ops.receive(true, QUIET).await.unwrap();
    for i in 0..10 {
        d.ops
            .send_text(&alice, &format!("{canary} answer {i}"))
            .await
            .unwrap();
    }
    phone.receive(true, QUIET).await.unwrap();
    tablet.receive(true, QUIET).await.unwrap();
    bob_phone.receive(true, QUIET).await.unwrap();
    // A few thousand envelopes between two raw devices of an advisor and a client.
    let adv = d.relay.account("adv", Role::Advisor).await;
    let carol = d.relay.account("carol", Role::Client).await;
    d.relay.assign(&carol, &adv).await;
    let mut a = d.relay.device(&adv, 21).await;
    let c = d.relay.device(&carol, 22).await;
    let mut session = a.session_with(&c).await;
    // Pipelined as a client does (within the default send rate's burst of 2000).
    const N: usize = 2000;
    for chunk in 0..N / 100 {
        let envelopes: Vec<_> = (0..100)
            .map(|i| {
                a.seal(
                    &mut session,
                    c.id(),
                    &format!("{canary} {}", chunk * 100 + i),
                )
            })
            .collect();
        let sent =
            futures_util::future::join_all(envelopes.into_iter().map(|e| a.conn.send_envelope(e)))
                .await;
        assert!(sent.iter().all(Result::is_ok));
    }
    let mut got = 0;
    while got < N {
        let env = c
            .next_envelope(Duration::from_secs(10))
            .await
            .expect("delivery stalled");
        c.conn.ack(env.header.message_id).await.unwrap();
        got += 1;
    }
    d.expect_nothing("a normal mixed load").await;
    let (stored, _) = d.desk.security_watch(0).await.unwrap();
    assert!(stored.is_empty(), "{stored:?}");

    // Now one event, so that the SIEM file and the events database hold something, and
    // the canary nowhere: not in the data directory, not in the SIEM export.
    // (A freeze's reason is written into the account's device log, which the relay
    // stores and serves: it is not message content, so no canary there.)
    phone.freeze_account("this wasn't me").await.unwrap();
    d.expect(
        Rule::AccountFrozen,
        Some(&alice),
        default_severity(Rule::AccountFrozen),
    )
    .await;
    let data_dir = d.relay.relay.config.data_dir.clone();
    let siem = data_dir.join(SIEM);
    drop(d.desk);
    let _dir = d.relay.stop().await;
    let lines = std::fs::read_to_string(&siem).unwrap();
    let line: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(line["event"], "security_event");
    assert_eq!(line["rule"], "account_frozen");
    assert_eq!(line["account"], "alice");
    assert_eq!(keys(&line), SIEM_KEYS, "{line}");
    let mut all = Vec::new();
    files(&data_dir, &mut all);
    assert!(all.iter().any(|p| p.ends_with("security_events.sqlite3")));
    for p in &all {
        let bytes = std::fs::read(p).unwrap();
        assert!(
            !bytes.windows(canary.len()).any(|w| w == canary.as_bytes()),
            "{} holds the canary",
            p.display()
        );
    }
}

#[test]
fn the_shipped_alert_rules_cover_every_rule_and_parse() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/sealpost-alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let groups = doc["groups"].as_sequence().expect("groups");
    assert!(!groups.is_empty());
    let mut exprs = String::new();
    for g in groups {
        assert!(g["name"].as_str().is_some());
        for r in g["rules"].as_sequence().expect("rules") {
            let alert = r["alert"].as_str().expect("alert name");
            let expr = r["expr"].as_str().expect("expr");
            assert!(r["labels"]["severity"].as_str().is_some(), "{alert}");
            assert!(r["annotations"]["summary"].as_str().is_some(), "{alert}");
            exprs.push_str(expr);
            exprs.push('\n');
        }
    }
    assert!(exprs.contains("sealpost_security_events_total"));
    for severity in ["critical", "high", "medium"] {
        assert!(
            exprs.contains(&format!("severity=\"{severity}\"")),
            "{severity}"
        );
    }
    assert!(exprs.contains("sealpost_security_events_dropped_total"));
    assert!(exprs.contains("sealpost_security_sink_errors_total"));
    // The rule names the alerts mention exist.
    let cfg = SecurityConfig::default();
    for rule in Rule::ALL {
        cfg.rules.get(rule).check(rule).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The command line

const CLI: &str = env!("CARGO_BIN_EXE_sealpost-under-test");

fn cli(home: &Path, args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(CLI);
    cmd.args(args)
        .env("SEALPOST_HOME", home)
        .env("SEALPOST_PASSPHRASE", org::PASS)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealpost_security_watch_prints_events_as_json_lines_and_refuses_others() {
    use std::io::BufRead;
    let d = desk(|c| rule_mut(c, Rule::AuthFailuresAddress).threshold = 1).await;
    let (desk_home, comp_home) = (d.home("desk"), d.home("comp"));
    // The profiles are the CLI's now.
    let Desk {
        relay, desk, comp, ..
    } = d;
    drop(desk);
    drop(comp);
    // Not the security desk: refused (exit 6), nothing printed on stdout.
    let refused = tokio::task::spawn_blocking(move || {
        cli(&comp_home, &["--json", "security", "watch", "--for", "5"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(refused.status.code(), Some(6), "{refused:?}");
    assert!(refused.stdout.is_empty(), "{refused:?}");
    let err = String::from_utf8_lossy(&refused.stderr);
    let err: serde_json::Value = serde_json::from_str(err.trim()).unwrap();
    assert_eq!(err["kind"], "refused", "{err}");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("role in the verified roster is security"),
        "{err}"
    );

    let mut child = cli(&desk_home, &["--json", "security", "watch", "--for", "8"])
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next = |rx: &std::sync::mpsc::Receiver<String>, wait: Duration| -> serde_json::Value {
        let line = rx.recv_timeout(wait).expect("no line from security watch");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
    let r = rx.clone();
    let watching =
        tokio::task::spawn_blocking(move || next(&r.lock().unwrap(), Duration::from_secs(20)))
            .await
            .unwrap();
    assert_eq!(watching["event"], "watching", "{watching}");
    bad_auth(&relay, DeviceId([0xab; 16])).await;
    let r = rx.clone();
    let event = tokio::task::spawn_blocking(move || next(&r.lock().unwrap(), SEEN_WITHIN))
        .await
        .unwrap();
    assert_eq!(event["event"], "security_event", "{event}");
    assert_eq!(event["rule"], "auth_failures_address", "{event}");
    assert_eq!(event["severity"], "medium", "{event}");
    assert_eq!(event["address"], "127.0.0.1", "{event}");
    assert!(event["account"].is_null(), "{event}");
    assert!(event["id"].as_u64().unwrap() >= 1);
    // One shape for an event: the CLI's line has exactly the SIEM line's keys.
    assert_eq!(keys(&event), SIEM_KEYS, "{event}");
    // `--for` ends it cleanly.
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
}

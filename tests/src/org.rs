//! Helpers for the trust tests driven through the client library: an organisation root,
//! client profiles pinned to it, linking a second device, publishing roster version 1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use rand::rngs::OsRng;
use sealpost_client::client::RelayInfo;
use sealpost_client::{Client, LinkProgress};
use sealpost_protocol::identity::AccountId;
use sealpost_protocol::trust::{
    ApprovalPolicy, OrgFingerprint, OrgRoot, Roster, SignedRoster, StaffMember, StaffRole,
};
use sealpost_server::store::Store;

use crate::TestRelay;

/// The passphrase of every test profile.
pub const PASS: &str = "correct horse battery";

/// An organisation root held by the test (the firm's offline key).
pub struct TestOrg {
    /// The root key.
    pub root: OrgRoot,
}

impl Default for TestOrg {
    fn default() -> Self {
        Self::new()
    }
}

impl TestOrg {
    /// A fresh root.
    pub fn new() -> Self {
        Self {
            root: OrgRoot::generate(&mut OsRng),
        }
    }

    /// Its fingerprint.
    pub fn fingerprint(&self) -> OrgFingerprint {
        self.root.public().fingerprint()
    }

    /// Roster version 1 listing `staff` (each client's one device), signed by the root.
    pub fn genesis(&self, staff: &[(&Client, StaffRole)], policy: ApprovalPolicy) -> SignedRoster {
        let members = staff
            .iter()
            .map(|(c, role)| StaffMember {
                account: c.account().unwrap().clone(),
                role: *role,
                devices: vec![c.identity().clone()],
            })
            .collect();
        let roster = Roster::new(1, None, now_ms() - 1000, members, policy).unwrap();
        self.root.sign_genesis(roster).unwrap()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// How a client reaches `relay`, pinning `org` if given.
pub fn relay_info<S: Store>(relay: &TestRelay<S>, org: Option<&TestOrg>) -> RelayInfo {
    RelayInfo {
        addr: relay.addr.to_string(),
        server_name: "localhost".into(),
        ca_fingerprint: hex::encode(relay.ca_fingerprint),
        org_fingerprint: org.map(|o| o.fingerprint().to_hex()),
    }
}

/// A profile in `home`, enrolled as the first device of `account`.
pub async fn enrolled<S: Store>(
    relay: &TestRelay<S>,
    home: &Path,
    account: &AccountId,
    org: Option<&TestOrg>,
) -> Client {
    let mut c = Client::init(home, PASS).unwrap();
    let code = relay.code(account).await;
    c.enroll(relay_info(relay, org), account, &code)
        .await
        .unwrap();
    c
}

/// Link a new device (profile in `home`) into `existing`'s account: the new device
/// starts, the existing one offers, the new one signs and shows the code, the existing one
/// confirms it. Returns the new, connected client.
pub async fn linked<S: Store>(
    relay: &TestRelay<S>,
    existing: &mut Client,
    home: &Path,
    org: Option<&TestOrg>,
) -> Client {
    let account = existing.account().unwrap().clone();
    let mut new = Client::init(home, PASS).unwrap();
    let ticket = new
        .link_start(relay_info(relay, org), &account)
        .await
        .unwrap();
    existing.offer_link(&ticket.link_id).await.unwrap();
    let code = match new.link_progress(Duration::from_secs(10)).await.unwrap() {
        LinkProgress::Offered { code, .. } => code,
        other => panic!("expected an offer, got {other:?}"),
    };
    existing
        .confirm_link(&ticket.link_id, &code, Duration::from_secs(10))
        .await
        .unwrap();
    match new.link_progress(Duration::from_secs(10)).await.unwrap() {
        LinkProgress::Completed { .. } => {}
        other => panic!("expected completion, got {other:?}"),
    }
    new
}

/// A policy with the default quorums and a short cooling-off, so tests need not wait a
/// day before a first device may link another.
pub fn quick_policy(cooling_off_ms: u64) -> ApprovalPolicy {
    ApprovalPolicy {
        cooling_off_ms,
        ..ApprovalPolicy::default()
    }
}

/// Cooling-off of roster version 1 in the tests.
pub const QUICK_COOLING_OFF_MS: u64 = 1_500;

/// Three staff accounts (`ops` operations, `comp` compliance, `sec` security; account ids
/// prefixed with `prefix`), each with one enrolled device, and roster version 1 listing
/// them with [`quick_policy`], published by `ops`. Returns `[ops, comp, sec]`, connected,
/// past their cooling-off.
pub async fn staff<S: Store>(
    relay: &TestRelay<S>,
    homes: &Path,
    org: &TestOrg,
    prefix: &str,
) -> Vec<Client> {
    staff_with_advisors(relay, homes, org, prefix, &[]).await.0
}

/// As [`staff`], and the advisor accounts `advisors` (created by the caller with
/// [`Role::Advisor`](sealpost_protocol::wire::Role::Advisor)) each enrol one device that
/// roster version 1 lists with the advisor role: with an organisation pinned, peers trust
/// an advisor's devices only if the roster lists them. Returns `([ops, comp, sec],
/// advisors)`.
pub async fn staff_with_advisors<S: Store>(
    relay: &TestRelay<S>,
    homes: &Path,
    org: &TestOrg,
    prefix: &str,
    advisors: &[&AccountId],
) -> (Vec<Client>, Vec<Client>) {
    use sealpost_protocol::wire::Role;
    let mut out = Vec::new();
    for name in ["ops", "comp", "sec"] {
        let id = relay.account(&format!("{prefix}{name}"), Role::Staff).await;
        out.push(
            enrolled(
                relay,
                &homes.join(format!("{prefix}{name}")),
                &id,
                Some(org),
            )
            .await,
        );
    }
    let mut advs = Vec::new();
    for a in advisors {
        advs.push(enrolled(relay, &homes.join(a.as_str()), a, Some(org)).await);
    }
    let mut members = vec![
        (&out[0], StaffRole::Operations),
        (&out[1], StaffRole::Compliance),
        (&out[2], StaffRole::Security),
    ];
    for a in &advs {
        members.push((a, StaffRole::Advisor));
    }
    let v1 = org.genesis(&members, quick_policy(QUICK_COOLING_OFF_MS));
    out[0].publish_signed_roster(v1).await.unwrap();
    settle().await;
    (out, advs)
}

/// Wait out [`QUICK_COOLING_OFF_MS`].
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(QUICK_COOLING_OFF_MS + 300)).await;
}

/// The firm's verification of `client`'s account, through the real flow: the client asks
/// (`attestation_status`, as `sealpost whoami` does), `staff` (a role the roster policy
/// allows to attest: operations or advisor by default) picks the challenge, the client
/// reveals its nonce and shows the code, `staff` types it and signs the attestation.
pub async fn attest(staff: &mut Client, client: &mut Client) {
    use sealpost_client::AttestStatus;
    let account = client.account().unwrap().clone();
    match client.attestation_status().await.unwrap() {
        AttestStatus::Waiting { code: None } => {}
        other => panic!("expected to wait for verification, got {other:?}"),
    }
    staff.attest_begin(&account).await.unwrap();
    let code = match client.attestation_status().await.unwrap() {
        AttestStatus::Waiting { code: Some(code) } => code,
        other => panic!("expected a code to read, got {other:?}"),
    };
    staff.attest_confirm(&account, &code).await.unwrap();
    match client.attestation_status().await.unwrap() {
        AttestStatus::Attested { .. } => {}
        other => panic!("expected attested, got {other:?}"),
    }
}

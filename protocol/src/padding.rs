//! Length padding, so that a ciphertext's size says little about its plaintext.
//!
//! The plaintext is followed by one `0x80` byte and then zero bytes (ISO/IEC 7816-4)
//! up to the bucket size. Buckets: everything up to [`MIN_PADDED_LEN`] bytes looks the
//! same; above that, Padmé (Nikitin et al., "Reducing Metadata Leakage from Encrypted
//! Files and Communication with PURBs", PETS 2019) rounds the length so that at most
//! O(log log L) bits of it leak, with at most 12% overhead.

use crate::error::DecryptError;

/// The smallest padded length: all short messages look alike.
pub const MIN_PADDED_LEN: usize = 256;

/// The padded length for `len` bytes of plaintext (including the `0x80` marker).
pub fn padded_len(len: usize) -> usize {
    let l = len.saturating_add(1);
    if l <= MIN_PADDED_LEN {
        return MIN_PADDED_LEN;
    }
    // Padmé: keep the top floor(log2(E)) + 1 bits of the length's significand.
    let e = usize::BITS - 1 - l.leading_zeros(); // floor(log2 l)
    let s = u32::BITS - e.leading_zeros(); // floor(log2 e) + 1 (`e` is a u32)
    let last_bits = e - s;
    let mask = (1usize << last_bits) - 1;
    l.saturating_add(mask) & !mask
}

/// Append `plaintext`, the marker and the padding to `out`.
pub fn pad_into(plaintext: &[u8], out: &mut Vec<u8>) {
    let total = padded_len(plaintext.len());
    out.reserve(total);
    out.extend_from_slice(plaintext);
    out.push(0x80);
    out.resize(out.len() + (total - plaintext.len() - 1), 0);
}

/// Strip the padding in place.
pub fn unpad(buf: &mut Vec<u8>) -> Result<(), DecryptError> {
    let marker = buf
        .iter()
        .rposition(|&b| b != 0)
        .ok_or(DecryptError::BadPadding)?;
    if buf[marker] != 0x80 {
        return Err(DecryptError::BadPadding);
    }
    buf.truncate(marker);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotone_and_bounded() {
        let mut prev = 0;
        for len in 0..70_000usize {
            let p = padded_len(len);
            assert!(p > len, "room for the marker");
            assert!(p >= prev, "monotone");
            if len >= MIN_PADDED_LEN {
                assert!(
                    p as f64 <= (len + 1) as f64 * 1.12 + 1.0,
                    "overhead bound at {len}"
                );
            }
            prev = p;
        }
        assert_eq!(padded_len(0), 256);
        assert_eq!(padded_len(1024), 1088);
    }

    #[test]
    fn roundtrip_and_rejects_bad_padding() {
        for len in [0usize, 1, 255, 256, 1000, 5000] {
            let pt: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut buf = Vec::new();
            pad_into(&pt, &mut buf);
            assert_eq!(buf.len(), padded_len(len));
            unpad(&mut buf).unwrap();
            assert_eq!(buf, pt);
        }
        assert_eq!(unpad(&mut vec![0u8; 16]), Err(DecryptError::BadPadding));
        assert_eq!(
            unpad(&mut vec![1, 2, 0x81, 0]),
            Err(DecryptError::BadPadding)
        );
    }
}

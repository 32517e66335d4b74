//! The caller's key fingerprint: a stable, short name for a key that never reveals it.

use sha2::{Digest, Sha256};

/// Hex digits in a fingerprint: 64 bits of SHA-256, plenty to tell callers apart, far too few
/// (and one-way) to learn anything about the key.
pub const FINGERPRINT_LEN: usize = 16;

/// The first 16 lowercase hex digits of the SHA-256 of the key's bytes, exactly as the caller
/// sent them (after trimming blanks, as the doors do). The same key always has the same
/// fingerprint, in every process and version, so operators can compute it themselves:
/// `printf %s "$KEY" | sha256sum | cut -c1-16`. Rules match on it (`routes[].match
/// .key_fingerprint`); sticky routing and per-key accounting are meant to use it too.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyFingerprint([u8; FINGERPRINT_LEN]);

impl KeyFingerprint {
    pub fn of(key: &[u8]) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(key);
        let mut hex = [0; FINGERPRINT_LEN];
        for (i, byte) in digest.iter().take(FINGERPRINT_LEN / 2).enumerate() {
            hex[2 * i] = HEX[usize::from(byte >> 4)];
            hex[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }
}

impl std::fmt::Debug for KeyFingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyFingerprint({})", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_is_the_sha256_prefix_in_lowercase_hex() {
        // printf %s sk-test-key | sha256sum
        assert_eq!(
            KeyFingerprint::of(b"sk-test-key").as_str(),
            "0d62f396c1317066"
        );
        // The SHA-256 of nothing, as every reference lists it.
        assert_eq!(KeyFingerprint::of(b"").as_str(), "e3b0c44298fc1c14");
        assert_ne!(KeyFingerprint::of(b"a"), KeyFingerprint::of(b"b"));
    }

    proptest::proptest! {
        #[test]
        fn a_fingerprint_is_always_sixteen_lowercase_hex_digits_and_stable(key in ".{0,64}") {
            let fingerprint = KeyFingerprint::of(key.as_bytes());
            let hex = fingerprint.as_str();
            proptest::prop_assert_eq!(hex.len(), FINGERPRINT_LEN);
            proptest::prop_assert!(hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            proptest::prop_assert_eq!(fingerprint, KeyFingerprint::of(key.as_bytes()));
        }
    }
}

//! Making issued keys and ids from the OS random source, and hashing what callers present.

use sha2::{Digest, Sha256};

/// What every issued key starts with, so the doors can tell it from a provider's key.
pub const ISSUED_PREFIX: &str = "lp-";

/// Random characters after [`ISSUED_PREFIX`]: 62^43 > 2^256, so a key carries at least 256 bits.
pub const SECRET_CHARS: usize = 43;

/// Characters of a secret kept beside its hash ([`super::KeyRow::prefix`]): `lp-` and five
/// random ones, enough for a person to recognise a key, far too few to guess it.
pub const PREFIX_CHARS: usize = 8;

/// Random characters after `key_` in an id: about 95 bits, so ids never collide in practice.
const ID_CHARS: usize = 16;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly made secret. Its `Debug` shows only the prefix, so it cannot leak into a log by
/// accident; [`Secret::expose`] is the one way to read it, to show it once to its owner.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The first [`PREFIX_CHARS`] characters, as kept in the key's row.
    pub fn prefix(&self) -> &str {
        &self.0[..PREFIX_CHARS]
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}…)", self.prefix())
    }
}

/// A new key: its secret and the hex SHA-256 to store in its place. Fails only when the OS
/// has no random source to give.
pub fn generate() -> Result<(Secret, String), getrandom::Error> {
    let mut secret = String::with_capacity(ISSUED_PREFIX.len() + SECRET_CHARS);
    secret.push_str(ISSUED_PREFIX);
    push_base62(&mut secret, SECRET_CHARS)?;
    let hash = hash_hex(&secret);
    Ok((Secret(secret), hash))
}

/// A new key id: `key_` and 16 base62 characters.
pub fn new_id() -> Result<String, getrandom::Error> {
    let mut id = String::with_capacity(4 + ID_CHARS);
    id.push_str("key_");
    push_base62(&mut id, ID_CHARS)?;
    Ok(id)
}

/// The lowercase hex SHA-256 of a presented key, exactly as it came.
pub fn hash_hex(presented: &str) -> String {
    crate::util::hex::encode(&Sha256::digest(presented.as_bytes()))
}

/// Whether a presented key claims to be one this proxy issued (it may still be unknown).
pub fn looks_issued(presented: &str) -> bool {
    presented.starts_with(ISSUED_PREFIX)
}

/// Appends `count` uniform base62 characters. A byte maps to `byte % 62` only below 248
/// (= 4 × 62) and is otherwise thrown away: taking every byte modulo 62 would make the first
/// eight characters likelier than the rest.
fn push_base62(out: &mut String, count: usize) -> Result<(), getrandom::Error> {
    const ACCEPT_BELOW: u8 = 248;
    let mut pushed = 0;
    let mut bytes = [0u8; 64];
    while pushed < count {
        getrandom::fill(&mut bytes)?;
        for &byte in bytes.iter().filter(|&&b| b < ACCEPT_BELOW) {
            if pushed == count {
                break;
            }
            out.push(char::from(BASE62[usize::from(byte % 62)]));
            pushed += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_lp_and_43_base62_characters_with_its_hash() {
        let (secret, hash) = generate().expect("random source");
        let text = secret.expose();
        assert_eq!(text.len(), 46);
        assert!(text.starts_with("lp-"));
        assert!(text[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(hash, hash_hex(text));
        assert_eq!(secret.prefix(), &text[..8]);
        assert!(looks_issued(text));
    }

    #[test]
    fn a_secrets_debug_shows_only_its_prefix() {
        let (secret, _) = generate().expect("random source");
        let shown = format!("{secret:?}");
        assert!(shown.contains(secret.prefix()));
        assert!(!shown.contains(&secret.expose()[8..]));
    }

    #[test]
    fn the_hash_is_sha256_in_lowercase_hex() {
        // printf %s sk-test-key | sha256sum
        assert!(hash_hex("sk-test-key").starts_with("0d62f396c1317066"));
        assert_eq!(
            hash_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn only_keys_starting_with_lp_dash_look_issued() {
        assert!(looks_issued("lp-x"));
        assert!(!looks_issued("sk-lp-x"));
        assert!(!looks_issued("LP-x"));
        assert!(!looks_issued(""));
    }

    #[test]
    fn an_id_is_key_and_16_base62_characters() {
        let id = new_id().expect("random source");
        assert_eq!(id.len(), 20);
        assert!(id.starts_with("key_"));
        assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(id, new_id().expect("random source"));
    }

    #[test]
    fn every_base62_character_turns_up_about_equally_often() {
        // 62 × 1000 draws: each character's count is Binomial(62 000, 1/62), sd ≈ 31, so the
        // band is ±6 sd. Taking every byte modulo 62 would draw the first eight characters
        // with odds 5/256 against 4/256 (about 1210 against 970) and fail.
        let mut counts = [0u32; 62];
        let mut text = String::new();
        push_base62(&mut text, 62 * 1000).expect("random source");
        for b in text.bytes() {
            let at = BASE62.iter().position(|&c| c == b).expect("base62");
            counts[at] += 1;
        }
        for (at, count) in counts.iter().enumerate() {
            assert!(
                (800..1200).contains(count),
                "{} drawn {count} times",
                char::from(BASE62[at])
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn every_generated_key_has_the_issued_format(_run in 0..64u8) {
            let (secret, hash) = generate().expect("random source");
            let text = secret.expose();
            proptest::prop_assert_eq!(text.len(), ISSUED_PREFIX.len() + SECRET_CHARS);
            proptest::prop_assert!(looks_issued(text));
            proptest::prop_assert!(text[3..].bytes().all(|b| BASE62.contains(&b)));
            proptest::prop_assert_eq!(hash.len(), 64);
        }
    }
}

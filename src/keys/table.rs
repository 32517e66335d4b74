//! The issued keys in memory, found by the hash of what a caller presents.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::KeyRow;
use crate::util::glob::Glob;

/// A key of the table: its row, and its model globs compiled once.
#[derive(Debug)]
pub struct Key {
    pub row: KeyRow,
    models: Vec<Glob>,
}

impl Key {
    fn new(row: KeyRow) -> Self {
        let models = row.models.iter().map(|glob| Glob::new(glob)).collect();
        Self { row, models }
    }

    /// Whether the key may call `model` (as [`allows_model`], without compiling the globs).
    pub fn allows_model(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|glob| glob.matches(model))
    }
}

/// Whether a key's row lets it call `model`: any model when its list is empty, else one its
/// globs match. Compiles the globs on every call; [`Key::allows_model`] keeps them compiled.
pub fn allows_model(row: &KeyRow, model: &str) -> bool {
    row.models.is_empty() || row.models.iter().any(|glob| Glob::new(glob).matches(model))
}

/// What a presented secret turned out to be. Every outcome but `Unknown` carries the key, so
/// the caller can name it (never its secret) in what it logs.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<Key>),
    Unknown,
    Disabled(Arc<Key>),
    Revoked(Arc<Key>),
    Expired(Arc<Key>),
}

/// The issued keys, by the SHA-256 of their secret and by id. Built whole from the store's
/// rows and swapped in on change, so a lookup never touches the database.
#[derive(Debug, Default)]
pub struct KeyTable {
    by_hash: HashMap<[u8; 32], Arc<Key>>,
    by_id: HashMap<String, Arc<Key>>,
}

impl KeyTable {
    /// A table of `rows`. A row whose hash is not 64 hex digits can match no secret and is
    /// left out (with a warning naming its id), as is a second row with the same hash.
    pub fn new(rows: Vec<KeyRow>) -> Self {
        let mut table = Self::default();
        for row in rows {
            let Some(hash) = parse_hash(&row.hash) else {
                log::warn!("key {} has a malformed hash and is left out", row.id);
                continue;
            };
            if table.by_hash.contains_key(&hash) {
                log::warn!("key {} repeats another key's hash and is left out", row.id);
                continue;
            }
            let key = Arc::new(Key::new(row));
            table.by_id.insert(key.row.id.clone(), Arc::clone(&key));
            table.by_hash.insert(hash, key);
        }
        table
    }

    /// What `presented` is at `now` (unix ms). The same work for every input: one SHA-256 and
    /// one map probe, so timing tells nothing about how close a guess was. The probe compares
    /// digests, which a caller cannot steer byte by byte without breaking SHA-256.
    pub fn lookup(&self, presented: &str, now: i64) -> Lookup {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let Some(key) = self.by_hash.get(&hash) else {
            return Lookup::Unknown;
        };
        let key = Arc::clone(key);
        let row = &key.row;
        // Revoked first: it is final, while a disabled key may be enabled again.
        if row.revoked_at.is_some() {
            Lookup::Revoked(key)
        } else if !row.enabled {
            Lookup::Disabled(key)
        } else if row.expires_at.is_some_and(|at| at <= now) {
            Lookup::Expired(key)
        } else {
            Lookup::Found(key)
        }
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Key>> {
        self.by_id.get(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Arc<Key>> {
        self.by_id.values()
    }
}

/// 64 hex digits (either case) as 32 bytes.
fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from((high << 4) | low).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::hash_hex;

    /// An enabled key named `name` whose secret is `secret`, with no limits.
    pub(crate) fn row(name: &str, secret: &str) -> KeyRow {
        KeyRow::new(
            format!("key_{name}"),
            hash_hex(secret),
            secret.chars().take(8).collect(),
            name.to_owned(),
            0,
        )
    }

    fn name(lookup: &Lookup) -> (&'static str, Option<&str>) {
        match lookup {
            Lookup::Found(key) => ("found", Some(&key.row.name)),
            Lookup::Unknown => ("unknown", None),
            Lookup::Disabled(key) => ("disabled", Some(&key.row.name)),
            Lookup::Revoked(key) => ("revoked", Some(&key.row.name)),
            Lookup::Expired(key) => ("expired", Some(&key.row.name)),
        }
    }

    #[test]
    fn a_lookup_tells_each_outcome_apart() {
        let now = 1_000_000;
        let table = KeyTable::new(vec![
            row("live", "lp-live"),
            KeyRow {
                enabled: false,
                ..row("off", "lp-off")
            },
            KeyRow {
                revoked_at: Some(5),
                enabled: false,
                ..row("gone", "lp-gone")
            },
            KeyRow {
                expires_at: Some(now),
                ..row("old", "lp-old")
            },
            KeyRow {
                expires_at: Some(now + 1),
                ..row("soon", "lp-soon")
            },
        ]);
        assert_eq!(table.len(), 5);
        for (presented, expected) in [
            ("lp-live", ("found", Some("live"))),
            ("lp-off", ("disabled", Some("off"))),
            ("lp-gone", ("revoked", Some("gone"))),
            ("lp-old", ("expired", Some("old"))),
            ("lp-soon", ("found", Some("soon"))),
            ("lp-nope", ("unknown", None)),
            ("lp-live ", ("unknown", None)),
            ("", ("unknown", None)),
        ] {
            assert_eq!(
                name(&table.lookup(presented, now)),
                expected,
                "{presented:?}"
            );
        }
    }

    #[test]
    fn rows_with_a_malformed_or_repeated_hash_are_left_out() {
        let table = KeyTable::new(vec![
            KeyRow {
                hash: "abc".into(),
                ..row("short", "lp-short")
            },
            KeyRow {
                hash: "zz".repeat(32),
                ..row("not-hex", "lp-not-hex")
            },
            row("first", "lp-same"),
            row("second", "lp-same"),
            KeyRow {
                hash: hash_hex("lp-upper").to_uppercase(),
                ..row("upper", "lp-upper")
            },
        ]);
        assert_eq!(table.len(), 2);
        assert!(table.contains("key_first") && !table.contains("key_second"));
        assert_eq!(name(&table.lookup("lp-upper", 0)), ("found", Some("upper")));
    }

    #[test]
    fn an_empty_model_list_allows_any_model_and_globs_allow_their_matches() {
        let any = row("any", "lp-any");
        let some = KeyRow {
            models: vec!["openai/*".into(), "claude-?-haiku".into()],
            ..row("some", "lp-some")
        };
        let table = KeyTable::new(vec![any.clone(), some.clone()]);
        for (row, model, expected) in [
            (&any, "openai/gpt-4o", true),
            (&any, "", true),
            (&some, "openai/gpt-4o", true),
            (&some, "claude-3-haiku", true),
            (&some, "anthropic/claude-3-haiku", false),
            (&some, "gpt-4o", false),
        ] {
            assert_eq!(allows_model(row, model), expected, "{} {model}", row.name);
            let key = table.get(&row.id).expect("in the table");
            assert_eq!(key.allows_model(model), expected, "{} {model}", row.name);
        }
    }

    proptest::proptest! {
        #[test]
        fn looking_up_any_string_never_panics_and_finds_only_the_secret(presented in ".{0,80}") {
            let table = KeyTable::new(vec![row("live", "lp-live")]);
            let found = matches!(table.lookup(&presented, 0), Lookup::Found(_));
            proptest::prop_assert_eq!(found, presented == "lp-live");
        }
    }
}

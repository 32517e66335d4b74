//! Keys the proxy issues: making them, finding them by what callers present, and their limits.

mod budget;
pub mod cli;
mod keyring;
pub mod limits;
mod secret;
pub mod shared;
pub mod spec;
mod table;

pub use crate::store::KeyRow;
pub use budget::{parse_budget, Budget, BudgetError, Period};
pub use keyring::{Denial, Keyring, CALLER_FINGERPRINT_HEX, WATCH_EVERY};
pub use limits::{Admission, Limits, Refusal, Release};
pub use secret::{
    generate, hash_hex, looks_issued, new_id, Secret, ISSUED_PREFIX, PREFIX_CHARS, SECRET_CHARS,
};
pub use spec::{ChangeError, KeySpec, SpecError};
pub use table::{allows_model, Key, KeyTable, Lookup};

/// The current time as the keys count it: unix milliseconds.
pub fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

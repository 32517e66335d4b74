//! Keys the proxy issues: making them, finding them by what callers present, and their limits.

mod budget;
mod row;
mod secret;
mod table;

pub use budget::{parse_budget, Budget, BudgetError, Period};
pub use row::KeyRow;
pub use secret::{
    generate, hash_hex, looks_issued, new_id, Secret, ISSUED_PREFIX, PREFIX_CHARS, SECRET_CHARS,
};
pub use table::{allows_model, Key, KeyTable, Lookup};

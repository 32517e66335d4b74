//! Each issued key's limits, shared by every worker: rates per minute, requests in flight, budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use super::budget::{Budget, Period};
use super::table::KeyTable;
use super::KeyRow;

/// The window every per-minute rate is over.
const WINDOW_MS: i64 = 60_000;

/// How long a refusal for concurrency asks to wait: a slot frees whenever a request ends.
const CONCURRENCY_RETRY: Duration = Duration::from_secs(1);

/// What a refusal of a total budget asks to wait: it never resets, only an administrator can
/// raise it, and a client that retries once a day does no harm.
const TOTAL_BUDGET_RETRY: Duration = Duration::from_secs(24 * 60 * 60);

/// The limits' state of every key admitted (or seeded) since the table last pruned it.
#[derive(Debug, Default)]
pub struct Limits {
    keys: RwLock<HashMap<String, Arc<KeyState>>>,
}

/// A request let through. Holds one of its key's concurrency slots until dropped, so keep it
/// until the answer's last byte has gone.
pub struct Admission {
    state: Arc<KeyState>,
    release: Option<Arc<dyn Release>>,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("key", &self.state.id)
            .finish()
    }
}

/// Told when an admission taken by [`Limits::hold`] ends: the key, and how many of its
/// requests are still in flight in this process.
pub trait Release: Send + Sync {
    fn released(&self, key_id: &str, in_flight: u64);
}

/// A request turned away: a 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// `"requests_per_minute"`, `"tokens_per_minute"`, `"max_concurrent"` or `"budget"`.
    pub limit: &'static str,
    /// When the limit frees, from `now`; a header rounds it up to whole seconds.
    pub retry_after: Duration,
    /// For the caller: the key's name and the limit with its figures, never the secret.
    pub message: String,
}

#[derive(Debug)]
struct KeyState {
    id: Arc<str>,
    counters: Mutex<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    requests: Bucket,
    tokens: Bucket,
    /// The tokens-per-minute limit last seen by `admit`: `charge` has no row to read it from,
    /// and the token bucket drains at that rate.
    tpm: u64,
    in_flight: u64,
    spend: Spend,
}

/// A GCRA bucket, the rates' stand-in for a sliding 60 s window: it holds up to the limit and
/// drains at the limit per 60 s. Two integers per rate instead of a log of every request, and
/// it says to the millisecond when a refused request would fit. Unlike a true window it
/// refills smoothly: after a burst fills it, one more request fits every 60 s / limit.
///
/// The level counts work in units of 1/60 000 of a request or token, so a limit of `n` per
/// minute drains exactly `n` units per millisecond: integers, no rounding at any limit.
#[derive(Debug, Default)]
struct Bucket {
    level: u128,
    at: i64,
}

/// Spend in the current budget period.
#[derive(Debug, Default)]
struct Spend {
    usd: f64,
    /// The period `start` and `ends` belong to; `None` until `admit` has seen the key's
    /// budget (a seeded spend knows its start only).
    period: Option<Period>,
    start: i64,
    /// When the period ends; `i64::MAX` for a total budget.
    ends: i64,
}

impl Limits {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets a request of `key` through at `now` (unix ms), or says which limit refuses it. On
    /// success it counts the request against requests per minute and takes a concurrency slot;
    /// a refusal changes nothing. Without a refusal to write it allocates only the first time
    /// a key is seen.
    pub fn admit(&self, key: &KeyRow, now: i64) -> Result<Admission, Refusal> {
        let state = self.state(&key.id);
        let mut counters = lock(&state.counters);

        if let Some(budget) = Budget::of(key) {
            counters.spend.roll(budget.period, now);
            if counters.spend.usd >= budget.usd {
                let spend = &counters.spend;
                return Err(budget_refusal(key, budget, spend.usd, spend.ends, now));
            }
        }

        let tpm = positive(key.tpm);
        let seen_tpm = counters.tpm;
        counters.tokens.drain(now, seen_tpm);
        counters.tpm = tpm.unwrap_or(0);
        if let Some(tpm) = tpm {
            if let Some(wait_ms) = counters.tokens.full_for(tpm) {
                return Err(rate_refusal(key, "tokens_per_minute", tpm, wait_ms));
            }
        }

        let rpm = positive(key.rpm);
        if let Some(rpm) = rpm {
            counters.requests.drain(now, rpm);
            if let Some(wait_ms) = counters.requests.no_room_for_one(rpm) {
                return Err(rate_refusal(key, "requests_per_minute", rpm, wait_ms));
            }
        }

        if let Some(max) = key.max_concurrent {
            let max = u64::try_from(max).unwrap_or(0);
            if counters.in_flight >= max {
                return Err(concurrency_refusal(key, counters.in_flight, max));
            }
        }

        if rpm.is_some() {
            counters.requests.add(1);
        }
        counters.in_flight += 1;
        drop(counters);
        Ok(Admission {
            state,
            release: None,
        })
    }

    /// Takes one of `key_id`'s slots in flight in this process without checking any limit,
    /// for the shared limits (Redis) to check with the count it returns, this request's
    /// included. `release` is told of the admission's end.
    pub fn hold(&self, key_id: &str, release: Option<Arc<dyn Release>>) -> (Admission, u64) {
        let state = self.state(key_id);
        let in_flight = {
            let mut counters = lock(&state.counters);
            counters.in_flight += 1;
            counters.in_flight
        };
        (Admission { state, release }, in_flight)
    }

    /// Counts a request the shared limits let through against this process's own rates too, so
    /// that they are ready should the shared ones go away.
    pub fn note(&self, key: &KeyRow, now: i64) {
        let state = self.state(&key.id);
        let mut counters = lock(&state.counters);
        let seen_tpm = counters.tpm;
        counters.tokens.drain(now, seen_tpm);
        counters.tpm = positive(key.tpm).unwrap_or(0);
        if let Some(budget) = Budget::of(key) {
            counters.spend.roll(budget.period, now);
        }
        if let Some(rpm) = positive(key.rpm) {
            counters.requests.drain(now, rpm);
            counters.requests.add(1);
        }
    }

    /// `key`'s requests in flight in this process.
    pub fn in_flight(&self, key_id: &str) -> u64 {
        read(&self.keys)
            .get(key_id)
            .map_or(0, |state| lock(&state.counters).in_flight)
    }

    /// Counts an answer of `key_id` at `now`: its tokens against tokens per minute, its cost
    /// (`None` when the price is unknown) against the budget. A key the limits do not hold (it
    /// left the table since) is not counted.
    pub fn charge(&self, key_id: &str, tokens: u64, cost_usd: Option<f64>, now: i64) {
        let Some(state) = read(&self.keys).get(key_id).map(Arc::clone) else {
            return;
        };
        let mut counters = lock(&state.counters);
        let tpm = counters.tpm;
        if tpm > 0 {
            counters.tokens.drain(now, tpm);
            counters.tokens.add(tokens);
        }
        if let Some(period) = counters.spend.period {
            counters.spend.roll(period, now);
        }
        // A negative or NaN cost is a bug upstream of here; it must not refund a budget.
        if let Some(cost) = cost_usd.filter(|cost| cost.is_finite() && *cost > 0.0) {
            counters.spend.usd += cost;
        }
    }

    /// Starts `key_id`'s spend in the period beginning at `period_start` (unix ms) at `usd`:
    /// what the store has recorded since then, read once at start. The next `admit` keeps it
    /// if its key's current period starts there, and starts again from zero if not.
    pub fn seed_spend(&self, key_id: &str, period_start: i64, usd: f64) {
        let state = self.state(key_id);
        let mut counters = lock(&state.counters);
        counters.spend = Spend {
            usd: if usd.is_finite() { usd.max(0.0) } else { 0.0 },
            period: None,
            start: period_start,
            ends: i64::MIN,
        };
    }

    /// Forgets every key not in `table`, so memory follows the table, not every key ever seen.
    /// Requests still in flight for a forgotten key keep its state alive until they end.
    pub fn retain(&self, table: &KeyTable) {
        write(&self.keys).retain(|id, _| table.contains(id));
    }

    fn state(&self, key_id: &str) -> Arc<KeyState> {
        if let Some(state) = read(&self.keys).get(key_id) {
            return Arc::clone(state);
        }
        let mut keys = write(&self.keys);
        let state = keys.entry(key_id.to_owned()).or_insert_with(|| {
            Arc::new(KeyState {
                id: key_id.into(),
                counters: Mutex::default(),
            })
        });
        Arc::clone(state)
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut counters = lock(&self.state.counters);
        counters.in_flight = counters.in_flight.saturating_sub(1);
        let in_flight = counters.in_flight;
        drop(counters);
        if let Some(release) = &self.release {
            release.released(&self.state.id, in_flight);
        }
    }
}

impl Bucket {
    /// Lets the time since the last change drain `per_minute` units per ms. A clock that went
    /// back drains nothing.
    fn drain(&mut self, now: i64, per_minute: u64) {
        if now > self.at {
            let elapsed = u128::from(now.abs_diff(self.at));
            self.level = self
                .level
                .saturating_sub(elapsed.saturating_mul(u128::from(per_minute)));
            self.at = now;
        }
    }

    fn add(&mut self, work: u64) {
        self.level = self
            .level
            .saturating_add(u128::from(work) * u128::from(WINDOW_MS.unsigned_abs()));
    }

    /// If one more request would overflow a bucket of `limit`, the ms until it fits.
    fn no_room_for_one(&self, limit: u64) -> Option<u128> {
        let window = u128::from(WINDOW_MS.unsigned_abs());
        if limit == 0 {
            return Some(window);
        }
        let over = (self.level + window).checked_sub(u128::from(limit) * window)?;
        (over > 0).then(|| over.div_ceil(u128::from(limit)))
    }

    /// If the bucket holds `limit` or more, the ms until it holds less.
    fn full_for(&self, limit: u64) -> Option<u128> {
        let window = u128::from(WINDOW_MS.unsigned_abs());
        if limit == 0 {
            return Some(window);
        }
        let over = self.level.checked_sub(u128::from(limit) * window)?;
        Some(over / u128::from(limit) + 1)
    }
}

impl Spend {
    /// Moves to the period of `period` holding `now` when the current one has ended (or was
    /// another kind of period), starting again from zero unless it is the same period.
    fn roll(&mut self, period: Period, now: i64) {
        if self.period == Some(period) && now < self.ends {
            return;
        }
        let start = period.start(now);
        if start != self.start {
            self.usd = 0.0;
        }
        self.period = Some(period);
        self.start = start;
        self.ends = period.next_reset(now).unwrap_or(i64::MAX);
    }
}

/// A refusal of `key`'s requests or tokens per minute (`limit` names which), free in `wait_ms`.
pub fn rate_refusal(key: &KeyRow, limit: &'static str, per_minute: u64, wait_ms: u128) -> Refusal {
    let what = match limit {
        "tokens_per_minute" => "tokens",
        _ => "requests",
    };
    Refusal {
        limit,
        retry_after: millis(wait_ms),
        message: format!(
            "key '{}' reached its limit of {per_minute} {what} per minute",
            key.name
        ),
    }
}

/// A refusal of `key`'s `max_concurrent`, with `in_flight` requests already going.
pub fn concurrency_refusal(key: &KeyRow, in_flight: u64, max: u64) -> Refusal {
    Refusal {
        limit: "max_concurrent",
        retry_after: CONCURRENCY_RETRY,
        message: format!(
            "key '{}' already has {in_flight} requests in flight, its limit of {max} at once",
            key.name
        ),
    }
}

/// A refusal of `key`'s budget: `spent` in the period that `ends` (unix ms).
pub fn budget_refusal(key: &KeyRow, budget: Budget, spent: f64, ends: i64, now: i64) -> Refusal {
    let (retry_after, resets) = match budget.period {
        Period::Total => (TOTAL_BUDGET_RETRY, "it does not reset".to_owned()),
        period => (
            millis(u128::from(ends.abs_diff(now))),
            match jiff::Timestamp::from_millisecond(ends) {
                Ok(at) => format!("it resets at {at}"),
                Err(_) => format!("it resets every {period}"),
            },
        ),
    };
    let per = match budget.period {
        Period::Total => "in total".to_owned(),
        period => format!("per {period}"),
    };
    Refusal {
        limit: "budget",
        retry_after,
        message: format!(
            "key '{}' has spent ${spent:.4} of its budget of ${} {per}; {resets}",
            key.name, budget.usd
        ),
    }
}

/// A configured rate as a count. 0 or less refuses every request, asking to retry after the
/// window, rather than being read as "no limit".
pub fn positive(limit: Option<i64>) -> Option<u64> {
    limit.map(|n| u64::try_from(n).unwrap_or(0))
}

pub fn millis(ms: u128) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

// The state is plain numbers, always consistent between statements, so a panic elsewhere
// while a lock was held leaves nothing to repair: take the lock regardless.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::table::tests::row;

    const SECRET: &str = "lp-secret-of-ci";

    fn key(edit: impl FnOnce(&mut KeyRow)) -> KeyRow {
        let mut key = row("ci", SECRET);
        edit(&mut key);
        key
    }

    fn ms(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>()
            .expect("a time")
            .as_millisecond()
    }

    fn refusal(result: Result<Admission, Refusal>) -> Refusal {
        match result {
            Ok(_) => panic!("admitted, expected a refusal"),
            Err(refusal) => refusal,
        }
    }

    #[test]
    fn limits_are_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Limits>();
        shared::<Admission>();
    }

    #[test]
    fn a_key_without_limits_is_always_admitted() {
        let limits = Limits::new();
        let key = key(|_| {});
        let held: Vec<_> = (0..1000).map(|_| limits.admit(&key, 0)).collect();
        assert!(held.iter().all(Result::is_ok));
    }

    #[test]
    fn requests_per_minute_refuse_the_request_past_the_limit_until_one_fits() {
        let limits = Limits::new();
        let key = key(|k| k.rpm = Some(3));
        let t0 = ms("2026-03-14T12:00:00Z");
        for _ in 0..3 {
            assert!(limits.admit(&key, t0).is_ok());
        }
        let refused = refusal(limits.admit(&key, t0));
        assert_eq!(refused.limit, "requests_per_minute");
        // One request of three a minute fits every 20 s.
        assert_eq!(refused.retry_after, Duration::from_secs(20));
        assert_eq!(
            refused.message,
            "key 'ci' reached its limit of 3 requests per minute"
        );
        assert!(limits.admit(&key, t0 + 19_999).is_err());
        assert!(limits.admit(&key, t0 + 20_000).is_ok());
        assert!(limits.admit(&key, t0 + 20_000).is_err());
    }

    #[test]
    fn requests_per_minute_refill_fully_after_the_window() {
        let limits = Limits::new();
        let key = key(|k| k.rpm = Some(3));
        for _ in 0..3 {
            assert!(limits.admit(&key, 0).is_ok());
        }
        assert!(limits.admit(&key, 19_999).is_err());
        // Unused for a whole window, the bucket holds a full minute's burst again.
        for _ in 0..3 {
            assert!(limits.admit(&key, 60_000).is_ok());
        }
        assert!(limits.admit(&key, 60_000).is_err());
    }

    #[test]
    fn requests_per_minute_stay_exact_when_the_minute_does_not_divide() {
        // 60 000 ms / 7 is not whole; the level's units make it exact anyway.
        let limits = Limits::new();
        let key = key(|k| k.rpm = Some(7));
        for _ in 0..7 {
            assert!(limits.admit(&key, 0).is_ok());
        }
        let refused = refusal(limits.admit(&key, 0));
        assert_eq!(refused.retry_after, Duration::from_millis(8572)); // ⌈60 000 / 7⌉
        assert!(limits.admit(&key, 8571).is_err());
        assert!(limits.admit(&key, 8572).is_ok());
    }

    #[test]
    fn tokens_per_minute_refuse_once_the_charged_tokens_reach_the_limit() {
        let limits = Limits::new();
        let key = key(|k| k.tpm = Some(100));
        let t0 = 1_000_000;
        assert!(limits.admit(&key, t0).is_ok());
        limits.charge(&key.id, 60, None, t0);
        assert!(limits.admit(&key, t0).is_ok());
        limits.charge(&key.id, 40, None, t0);
        let refused = refusal(limits.admit(&key, t0));
        assert_eq!(refused.limit, "tokens_per_minute");
        assert_eq!(
            refused.message,
            "key 'ci' reached its limit of 100 tokens per minute"
        );
        // Exactly at the limit: the next token's worth of draining lets a request in.
        assert_eq!(refused.retry_after, Duration::from_millis(1));
        assert!(limits.admit(&key, t0 + 1).is_ok());
    }

    #[test]
    fn tokens_over_the_limit_refuse_until_they_drain_below_it() {
        let limits = Limits::new();
        let key = key(|k| k.tpm = Some(100));
        assert!(limits.admit(&key, 0).is_ok());
        limits.charge(&key.id, 120, None, 0);
        // 20 tokens over, draining 100 a minute: 12 s, and then one ms more to be below.
        let refused = refusal(limits.admit(&key, 0));
        assert_eq!(refused.retry_after, Duration::from_millis(12_001));
        assert!(limits.admit(&key, 12_000).is_err());
        assert!(limits.admit(&key, 12_001).is_ok());
    }

    #[test]
    fn max_concurrent_refuses_while_the_slots_are_held_and_a_dropped_guard_frees_one() {
        let limits = Limits::new();
        let key = key(|k| k.max_concurrent = Some(2));
        let first = limits.admit(&key, 0).expect("first");
        let _second = limits.admit(&key, 0).expect("second");
        let refused = refusal(limits.admit(&key, 0));
        assert_eq!(refused.limit, "max_concurrent");
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert_eq!(
            refused.message,
            "key 'ci' already has 2 requests in flight, its limit of 2 at once"
        );
        drop(first);
        let _third = limits.admit(&key, 0).expect("a slot was freed");
        assert!(limits.admit(&key, 0).is_err());
    }

    #[test]
    fn a_refusal_takes_nothing_from_the_other_limits() {
        let limits = Limits::new();
        let key = key(|k| {
            k.rpm = Some(2);
            k.max_concurrent = Some(1);
        });
        let held = limits.admit(&key, 0).expect("first");
        assert_eq!(refusal(limits.admit(&key, 0)).limit, "max_concurrent");
        drop(held);
        // The refused request counted for no minute: the second still fits.
        drop(limits.admit(&key, 0).expect("second"));
        assert_eq!(refusal(limits.admit(&key, 0)).limit, "requests_per_minute");
    }

    #[test]
    fn a_limit_of_zero_refuses_every_request() {
        let limits = Limits::new();
        for (key, limit) in [
            (key(|k| k.rpm = Some(0)), "requests_per_minute"),
            (key(|k| k.tpm = Some(-5)), "tokens_per_minute"),
            (key(|k| k.max_concurrent = Some(0)), "max_concurrent"),
            (key(|k| k.budget_usd = Some(0.0)), "budget"),
        ] {
            assert_eq!(refusal(limits.admit(&key, 0)).limit, limit);
        }
    }

    #[test]
    fn a_daily_budget_refuses_once_spent_and_resets_at_midnight_utc() {
        let limits = Limits::new();
        let key = key(|k| {
            k.budget_usd = Some(1.0);
            k.budget_period = Some("day".into());
        });
        let noon = ms("2026-03-14T12:00:00Z");
        let midnight = ms("2026-03-15T00:00:00Z");
        assert!(limits.admit(&key, noon).is_ok());
        limits.charge(&key.id, 10, Some(0.5), noon);
        assert!(limits.admit(&key, noon).is_ok());
        limits.charge(&key.id, 10, Some(0.5), noon);
        let refused = refusal(limits.admit(&key, noon));
        assert_eq!(refused.limit, "budget");
        assert_eq!(refused.retry_after, Duration::from_secs(12 * 3600));
        assert_eq!(
            refused.message,
            "key 'ci' has spent $1.0000 of its budget of $1 per day; \
             it resets at 2026-03-15T00:00:00Z"
        );
        assert!(!refused.message.contains(SECRET));
        assert!(limits.admit(&key, midnight - 1).is_err());
        assert!(limits.admit(&key, midnight).is_ok());
    }

    #[test]
    fn a_monthly_budget_resets_on_the_first() {
        let limits = Limits::new();
        let key = key(|k| {
            k.budget_usd = Some(20.0);
            k.budget_period = Some("month".into());
        });
        let last = ms("2026-01-31T23:59:59.999Z");
        assert!(limits.admit(&key, ms("2026-01-05T00:00:00Z")).is_ok());
        limits.charge(&key.id, 0, Some(25.0), ms("2026-01-05T00:00:01Z"));
        assert_eq!(
            refusal(limits.admit(&key, last)).retry_after,
            Duration::from_millis(1)
        );
        assert!(limits.admit(&key, ms("2026-02-01T00:00:00Z")).is_ok());
    }

    #[test]
    fn a_weekly_budget_resets_on_monday() {
        let limits = Limits::new();
        let key = key(|k| {
            k.budget_usd = Some(5.0);
            k.budget_period = Some("week".into());
        });
        // Wednesday 2025-12-31 to Monday 2026-01-05, across the year's end.
        let wednesday = ms("2025-12-31T10:00:00Z");
        assert!(limits.admit(&key, wednesday).is_ok());
        limits.charge(&key.id, 0, Some(5.0), wednesday);
        let sunday_night = ms("2026-01-04T23:59:59Z");
        let refused = refusal(limits.admit(&key, sunday_night));
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        assert!(refused
            .message
            .ends_with("it resets at 2026-01-05T00:00:00Z"));
        assert!(limits.admit(&key, ms("2026-01-05T00:00:00Z")).is_ok());
    }

    #[test]
    fn a_total_budget_never_resets() {
        let limits = Limits::new();
        let key = key(|k| k.budget_usd = Some(2.0));
        assert!(limits.admit(&key, 0).is_ok());
        limits.charge(&key.id, 0, Some(2.5), 0);
        let refused = refusal(limits.admit(&key, ms("2030-01-01T00:00:00Z")));
        assert_eq!(refused.retry_after, TOTAL_BUDGET_RETRY);
        assert_eq!(
            refused.message,
            "key 'ci' has spent $2.5000 of its budget of $2 in total; it does not reset"
        );
    }

    #[test]
    fn an_unknown_or_odd_cost_charges_nothing() {
        let limits = Limits::new();
        let key = key(|k| k.budget_usd = Some(1.0));
        assert!(limits.admit(&key, 0).is_ok());
        for cost in [None, Some(f64::NAN), Some(-3.0), Some(f64::INFINITY)] {
            limits.charge(&key.id, 5, cost, 0);
        }
        assert!(limits.admit(&key, 0).is_ok());
    }

    #[test]
    fn a_seeded_spend_counts_in_its_own_period_only() {
        let now = ms("2026-03-14T12:00:00Z");
        let monthly = key(|k| {
            k.budget_usd = Some(20.0);
            k.budget_period = Some("month".into());
        });
        let limits = Limits::new();
        limits.seed_spend(&monthly.id, Period::Month.start(now), 19.0);
        assert!(limits.admit(&monthly, now).is_ok());
        limits.charge(&monthly.id, 0, Some(1.0), now);
        assert_eq!(refusal(limits.admit(&monthly, now)).limit, "budget");

        // Spend seeded for last month is not this month's.
        let limits = Limits::new();
        limits.seed_spend(&monthly.id, ms("2026-02-01T00:00:00Z"), 50.0);
        assert!(limits.admit(&monthly, now).is_ok());
    }

    #[test]
    fn charging_a_key_not_held_is_ignored_and_reloads_forget_removed_keys() {
        let limits = Limits::new();
        limits.charge("key_nobody", 100, Some(1.0), 0);
        let kept = key(|k| k.rpm = Some(1));
        let gone = KeyRow {
            rpm: Some(1),
            ..row("gone", "lp-gone")
        };
        drop(limits.admit(&kept, 0).expect("kept"));
        drop(limits.admit(&gone, 0).expect("gone"));
        assert_eq!(read(&limits.keys).len(), 2);
        limits.retain(&KeyTable::new(vec![kept.clone()]));
        assert_eq!(read(&limits.keys).len(), 1);
        assert!(limits.admit(&kept, 0).is_err());
        // A key back in the table starts afresh.
        assert!(limits.admit(&gone, 0).is_ok());
    }

    #[test]
    fn threads_admitting_at_once_get_exactly_the_limit_between_them() {
        let limits = Limits::new();
        let key = key(|k| k.rpm = Some(100));
        let admitted: usize = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        (0..50)
                            .filter(|_| limits.admit(&key, 5_000).is_ok())
                            .count()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("no panic"))
                .sum()
        });
        assert_eq!(admitted, 100);
    }
}

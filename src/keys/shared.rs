//! Issued keys' limits counted across instances: one Lua script per admission, so that checking
//! and counting are one atomic step in Redis and N instances enforce one limit, not N.
//!
//! The rates are the same GCRA buckets as in [`crate::keys::Limits`], with the same units
//! (1/60,000 of a request or token, so a limit of `n` per minute drains `n` units per ms):
//! integers, exact in a Lua double up to 2^53, far beyond any real limit. Requests in flight are
//! a hash of instance to count, in which an instance whose heartbeat expired no longer counts.
//! A budget's spend is a float per key and period, charged with `INCRBYFLOAT`.
//!
//! Time is the calling instance's clock (unix ms), as in the process's own limits: instances
//! behind one load balancer keep their clocks in step with NTP, well within these windows.

use std::sync::{Arc, LazyLock};

use redis::{aio::ConnectionManager, Script};

use super::{
    limits::{budget_refusal, concurrency_refusal, positive, rate_refusal},
    Budget, KeyRow, Refusal, Release,
};
use crate::cluster::Redis;

/// How long a key's in-flight hash outlives its last admission.
const IN_FLIGHT_TTL_MS: i64 = 60 * 60 * 1000;

/// A spend key outlives its period by this much, for a clock a little behind.
const SPEND_GRACE_MS: i64 = 24 * 60 * 60 * 1000;

/// The largest token count one answer charges: a bucket level stays an exact integer in Lua.
const MAX_TOKENS: u64 = 1_000_000_000;

static ADMIT: LazyLock<Script> = LazyLock::new(|| Script::new(&script(ADMIT_LUA)));
static CHARGE: LazyLock<Script> = LazyLock::new(|| Script::new(&script(CHARGE_LUA)));
static SEED: LazyLock<Script> = LazyLock::new(|| Script::new(SEED_LUA));

/// The drain of a bucket `{level, at}` at `rate` per ms until `now`, shared by the scripts.
const BUCKET_LUA: &str = r"
local WINDOW = 60000
local function level(key, now, rate)
  local state = redis.call('HMGET', key, 'level', 'at')
  local lvl, at = tonumber(state[1]) or 0, tonumber(state[2]) or now
  if now > at then lvl = math.max(0, lvl - (now - at) * rate) end
  return lvl, math.max(at, now)
end
local function put(key, lvl, at, rate)
  redis.call('HSET', key, 'level', string.format('%.0f', lvl), 'at', string.format('%.0f', at))
  local drains_in = WINDOW
  if rate > 0 then drains_in = math.ceil(lvl / rate) end
  redis.call('PEXPIRE', key, drains_in + 1000)
end
";

/// KEYS: requests bucket, tokens bucket, in-flight hash, spend.
/// ARGV: now, rpm, tpm, max in flight, budget in USD (each -1 for none), this instance, its
/// requests in flight for the key (this one included), the heartbeat keys' prefix, the
/// in-flight hash's time to live in ms.
/// Returns `{0}` when admitted, else `{code, wait ms, detail}`: 1 budget (detail: the spend),
/// 2 tokens per minute, 3 requests per minute, 4 in flight (detail: how many).
const ADMIT_LUA: &str = concat!(
    r"
local now = tonumber(ARGV[1])
local rpm, tpm, max, budget =
  tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local instance, here, alive = ARGV[6], tonumber(ARGV[7]), ARGV[8]
",
    "--BUCKET--",
    r"
if budget >= 0 then
  local spent = tonumber(redis.call('GET', KEYS[4]) or '0') or 0
  if spent >= budget then return {1, 0, tostring(spent)} end
end
if tpm >= 0 then
  if tpm == 0 then return {2, WINDOW, ''} end
  local lvl = level(KEYS[2], now, tpm)
  local over = lvl - tpm * WINDOW
  if over >= 0 then return {2, math.floor(over / tpm) + 1, ''} end
end
local requests, requests_at
if rpm >= 0 then
  if rpm == 0 then return {3, WINDOW, ''} end
  requests, requests_at = level(KEYS[1], now, rpm)
  local over = requests + WINDOW - rpm * WINDOW
  if over > 0 then return {3, math.ceil(over / rpm), ''} end
end
if max >= 0 then
  local total = here
  local counts = redis.call('HGETALL', KEYS[3])
  for i = 1, #counts, 2 do
    if counts[i] ~= instance then
      if redis.call('EXISTS', alive .. counts[i]) == 1 then
        total = total + (tonumber(counts[i + 1]) or 0)
      else
        redis.call('HDEL', KEYS[3], counts[i])
      end
    end
  end
  if total > max then return {4, 1000, tostring(total - 1)} end
  redis.call('HSET', KEYS[3], instance, here + 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[9])
end
if rpm > 0 then put(KEYS[1], requests + WINDOW, requests_at, rpm) end
return {0}
"
);

/// KEYS: tokens bucket, spend. ARGV: now, tpm (-1 for none), tokens, cost in USD, the spend
/// key's time to live in ms (-1: none).
const CHARGE_LUA: &str = concat!(
    r"
local now, tpm, tokens, cost, ttl =
  tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
",
    "--BUCKET--",
    r"
if tpm > 0 and tokens > 0 then
  local lvl, at = level(KEYS[1], now, tpm)
  put(KEYS[1], lvl + tokens * WINDOW, at, tpm)
end
if cost > 0 then
  redis.call('INCRBYFLOAT', KEYS[2], ARGV[4])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
return 0
"
);

/// KEYS: spend. ARGV: what the store recorded, the key's time to live in ms (-1: none). Raises
/// the shared spend to the store's figure, never lowers it: a Redis that restarted empty, or
/// missed charges while it was down, is put right.
const SEED_LUA: &str = r"
local stored, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local shared = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if stored > shared then
  redis.call('SET', KEYS[1], ARGV[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
end
return 0
";

/// A script with the bucket functions in place of its `--BUCKET--` line.
fn script(source: &str) -> String {
    source.replace("--BUCKET--", BUCKET_LUA)
}

/// What the shared limits say of a request of `key`, of which `here_in_flight` (this one
/// included) are in flight in this process: `None` when Redis could not be asked.
pub async fn admit(
    redis: &Redis,
    key: &KeyRow,
    here_in_flight: u64,
    now: i64,
) -> Option<Result<(), Refusal>> {
    let budget = Budget::of(key);
    let limit = |n: Option<i64>| positive(n).map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    let keys = [
        Redis::key(&["key", &key.id, "rpm"]),
        Redis::key(&["key", &key.id, "tpm"]),
        Redis::key(&["key", &key.id, "in_flight"]),
        spend_key(&key.id, budget, now),
    ];
    let args = (
        now,
        limit(key.rpm),
        limit(key.tpm),
        limit(key.max_concurrent),
        budget.map_or(-1.0, |b| b.usd),
        redis.instance().to_owned(),
        here_in_flight,
        Redis::alive_key(""),
        IN_FLIGHT_TTL_MS,
    );
    let answer: Vec<redis::Value> = redis
        .call(move |mut conn: ConnectionManager| async move {
            let mut call = ADMIT.prepare_invoke();
            call.key(&keys[..])
                .arg(args.0)
                .arg(args.1)
                .arg(args.2)
                .arg(args.3)
                .arg(args.4)
                .arg(args.5)
                .arg(args.6)
                .arg(args.7)
                .arg(args.8);
            call.invoke_async(&mut conn).await
        })
        .await?;
    Some(verdict(key, budget, &answer, now))
}

/// The script's answer as a refusal, or `Ok` when it admitted. An answer of another shape
/// (another version's script) admits: the process's own limits still counted the request.
fn verdict(
    key: &KeyRow,
    budget: Option<Budget>,
    answer: &[redis::Value],
    now: i64,
) -> Result<(), Refusal> {
    let int = |i: usize| match answer.get(i) {
        Some(redis::Value::Int(n)) => *n,
        _ => 0,
    };
    let text = |i: usize| match answer.get(i) {
        Some(redis::Value::BulkString(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        _ => String::new(),
    };
    let wait_ms = u128::from(int(1).unsigned_abs());
    let count = |n: Option<i64>| positive(n).unwrap_or(0);
    match int(0) {
        1 => {
            let Some(budget) = budget else {
                return Ok(());
            };
            let spent = text(2).parse().unwrap_or(budget.usd);
            let ends = budget.period.next_reset(now).unwrap_or(i64::MAX);
            Err(budget_refusal(key, budget, spent, ends, now))
        }
        2 => Err(rate_refusal(
            key,
            "tokens_per_minute",
            count(key.tpm),
            wait_ms,
        )),
        3 => Err(rate_refusal(
            key,
            "requests_per_minute",
            count(key.rpm),
            wait_ms,
        )),
        4 => {
            let in_flight = text(2).parse().unwrap_or(0);
            Err(concurrency_refusal(
                key,
                in_flight,
                count(key.max_concurrent),
            ))
        }
        _ => Ok(()),
    }
}

/// Charges an answer's tokens and cost to `key`'s shared counters, without waiting.
pub fn charge(redis: &Redis, key: &KeyRow, tokens: u64, cost_usd: Option<f64>, now: i64) {
    let budget = Budget::of(key);
    let tpm = positive(key.tpm).map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
    let cost = cost_usd
        .filter(|cost| cost.is_finite() && *cost > 0.0 && budget.is_some())
        .unwrap_or(0.0);
    let tokens = tokens.min(MAX_TOKENS);
    if (tpm <= 0 || tokens == 0) && cost == 0.0 {
        return;
    }
    let keys = [
        Redis::key(&["key", &key.id, "tpm"]),
        spend_key(&key.id, budget, now),
    ];
    let ttl = spend_ttl(budget, now);
    redis.send(move |mut conn: ConnectionManager| async move {
        let mut call = CHARGE.prepare_invoke();
        call.key(&keys[..])
            .arg(now)
            .arg(tpm)
            .arg(tokens)
            .arg(cost)
            .arg(ttl);
        call.invoke_async::<i64>(&mut conn).await.map(drop)
    });
}

/// Raises `key_id`'s shared spend in the period starting `period_start` to `usd`, what the store
/// recorded, when it is below that.
pub async fn seed_spend(redis: &Redis, key: &KeyRow, usd: f64, now: i64) {
    let budget = Budget::of(key);
    if budget.is_none() || !usd.is_finite() || usd <= 0.0 {
        return;
    }
    let spend = spend_key(&key.id, budget, now);
    let ttl = spend_ttl(budget, now);
    redis
        .call(move |mut conn: ConnectionManager| async move {
            let mut call = SEED.prepare_invoke();
            call.key(&spend).arg(usd).arg(ttl);
            call.invoke_async::<i64>(&mut conn).await
        })
        .await;
}

/// Writes this instance's requests in flight for a key, as the script counts them.
fn write_in_flight(redis: &Redis, key_id: &str, in_flight: u64) {
    let hash = Redis::key(&["key", key_id, "in_flight"]);
    let instance = redis.instance().to_owned();
    redis.send(move |mut conn: ConnectionManager| async move {
        let mut command = match in_flight {
            0 => redis::cmd("HDEL"),
            _ => redis::cmd("HSET"),
        };
        command.arg(&hash).arg(&instance);
        if in_flight > 0 {
            command.arg(in_flight);
        }
        command.query_async::<()>(&mut conn).await
    });
}

/// Tells Redis of each admission's end, for the keys with a `max_concurrent`.
pub struct SharedRelease(pub Redis);

impl Release for SharedRelease {
    fn released(&self, key_id: &str, in_flight: u64) {
        write_in_flight(&self.0, key_id, in_flight);
    }
}

impl SharedRelease {
    /// The process's one release, shared by every admission of a key with `max_concurrent`.
    pub fn of(redis: &Redis) -> Arc<dyn Release> {
        Arc::new(Self(redis.clone()))
    }

    /// Writes this instance's counts again, as after Redis came back.
    pub fn rewrite(redis: &Redis, counts: impl IntoIterator<Item = (String, u64)>) {
        for (key_id, in_flight) in counts {
            write_in_flight(redis, &key_id, in_flight);
        }
    }
}

/// The spend key of `key_id`'s budget period holding `now`.
fn spend_key(key_id: &str, budget: Option<Budget>, now: i64) -> String {
    let start = budget.map_or(0, |b| b.period.start(now)).to_string();
    Redis::key(&["key", key_id, "spend", &start])
}

fn spend_ttl(budget: Option<Budget>, now: i64) -> i64 {
    match budget.and_then(|b| b.period.next_reset(now)) {
        Some(ends) => ends.saturating_sub(now).saturating_add(SPEND_GRACE_MS),
        None => -1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn key() -> KeyRow {
        KeyRow {
            rpm: Some(4),
            tpm: Some(100),
            max_concurrent: Some(2),
            budget_usd: Some(1.0),
            budget_period: Some("day".into()),
            ..KeyRow::new(
                "key_a".into(),
                "h".into(),
                "lp-AbCdE".into(),
                "team".into(),
                0,
            )
        }
    }

    #[test]
    fn each_code_of_the_script_is_its_limits_refusal() {
        let bulk = |text: &str| Value::BulkString(text.as_bytes().to_vec());
        let refused = |answer: Vec<Value>| verdict(&key(), Budget::of(&key()), &answer, 0);
        assert_eq!(refused(vec![Value::Int(0)]), Ok(()));
        let budget = refused(vec![Value::Int(1), Value::Int(0), bulk("1.5")]).unwrap_err();
        assert_eq!(budget.limit, "budget");
        assert!(budget.message.contains("$1.5000"), "{}", budget.message);
        let tokens = refused(vec![Value::Int(2), Value::Int(1500), bulk("")]).unwrap_err();
        assert_eq!(
            (tokens.limit, tokens.retry_after.as_millis()),
            ("tokens_per_minute", 1500)
        );
        let requests = refused(vec![Value::Int(3), Value::Int(20), bulk("")]).unwrap_err();
        assert_eq!(requests.limit, "requests_per_minute");
        let in_flight = refused(vec![Value::Int(4), Value::Int(1000), bulk("2")]).unwrap_err();
        assert_eq!(in_flight.limit, "max_concurrent");
        assert!(
            in_flight.message.contains("2 requests in flight"),
            "{}",
            in_flight.message
        );
    }

    proptest::proptest! {
        #[test]
        fn any_answer_of_redis_is_read_without_panicking(
            code in proptest::num::i64::ANY,
            wait in proptest::num::i64::ANY,
            detail in proptest::collection::vec(proptest::num::u8::ANY, 0..20),
            now in proptest::num::i64::ANY,
        ) {
            let answer = vec![Value::Int(code), Value::Int(wait), Value::BulkString(detail)];
            let _ = verdict(&key(), Budget::of(&key()), &answer, now);
            let _ = verdict(&key(), None, &answer[..1], now);
        }
    }

    #[test]
    fn the_scripts_include_the_bucket_functions_once() {
        for source in [ADMIT_LUA, CHARGE_LUA] {
            let lua = script(source);
            assert_eq!(lua.matches("local function level").count(), 1);
            assert!(!lua.contains("--BUCKET--"));
        }
    }
}

//! What the dashboard shows, summed from usage records in one pass and in bounded memory.

use std::{borrow::Borrow, collections::HashMap, hash::Hash};

use super::{KeyRow, UsageRecord};
use crate::keys::Budget;

/// Buckets in every chart, whatever the range: enough to see a shape, few enough to stay small.
pub const BUCKETS: usize = 60;

/// Rows kept per breakdown. Callers invent model names and bring any number of their own keys,
/// so past this the rest count together as [`OTHER`] and a report stays small.
pub const MAX_ROWS: usize = 50;

/// The label of the row that holds what did not fit in [`MAX_ROWS`].
pub const OTHER: &str = "(other)";

/// The label for a record without the field (no provider, no key).
pub const NONE: &str = "(none)";

/// The time a report covers, up to now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Range {
    Hour,
    #[default]
    Day,
    Month30,
}

impl Range {
    pub const ALL: [Range; 3] = [Range::Hour, Range::Day, Range::Month30];

    /// The range a `?range=` value names: `1h`, `1d` or `30d`.
    pub fn parse(value: &str) -> Option<Range> {
        Self::ALL.into_iter().find(|range| range.as_str() == value)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Range::Hour => "1h",
            Range::Day => "1d",
            Range::Month30 => "30d",
        }
    }

    /// Words for a heading: `last hour`.
    pub fn label(self) -> &'static str {
        match self {
            Range::Hour => "last hour",
            Range::Day => "last 24 hours",
            Range::Month30 => "last 30 days",
        }
    }

    pub fn span_ms(self) -> i64 {
        const HOUR: i64 = 3_600_000;
        match self {
            Range::Hour => HOUR,
            Range::Day => 24 * HOUR,
            Range::Month30 => 30 * 24 * HOUR,
        }
    }

    /// One bucket's width: a minute, 24 minutes, 12 hours.
    pub fn bucket_ms(self) -> i64 {
        self.span_ms() / BUCKETS as i64
    }

    /// Where the first bucket starts. Buckets are aligned to their width in unix time, so the
    /// edges stay put from one page load to the next; the last bucket is the one holding `now`.
    pub fn start_ms(self, now_ms: i64) -> i64 {
        let width = self.bucket_ms();
        (now_ms.div_euclid(width) + 1) * width - self.span_ms()
    }
}

/// Counts and sums over some requests.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    pub requests: u64,
    /// Requests answered with a status of 400 or more.
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    /// The sum of the known costs.
    pub cost_usd: f64,
    /// Requests whose cost is not known (no price for the model).
    pub unpriced: u64,
}

impl Figures {
    fn add(&mut self, record: &UsageRecord) {
        // A stored count below zero would be a bug elsewhere; it counts as none rather than
        // wrapping round.
        let count = |tokens: i64| u64::try_from(tokens).unwrap_or(0);
        self.requests += 1;
        self.errors += u64::from(record.status >= 400);
        self.input_tokens = self.input_tokens.saturating_add(count(record.input_tokens));
        self.output_tokens = self
            .output_tokens
            .saturating_add(count(record.output_tokens));
        self.cached_tokens = self
            .cached_tokens
            .saturating_add(count(record.cached_tokens));
        match known_cost(record) {
            Some(usd) => self.cost_usd += usd,
            None => self.unpriced += 1,
        }
    }

    /// Input and output tokens.
    pub fn tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// The share of requests that were errors, 0 without requests.
    pub fn error_rate(&self) -> f64 {
        match self.requests {
            0 => 0.0,
            requests => self.errors as f64 / requests as f64,
        }
    }
}

fn known_cost(record: &UsageRecord) -> Option<f64> {
    record.cost_usd.filter(|usd| usd.is_finite() && *usd >= 0.0)
}

/// One bucket of the time series.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    pub start_ms: i64,
    pub figures: Figures,
    pub ttfb_p50_ms: Option<f64>,
    pub ttfb_p95_ms: Option<f64>,
}

/// One row of a breakdown.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub label: String,
    pub figures: Figures,
}

/// A key's spend in its current budget period, against its budget.
#[derive(Clone, Debug, PartialEq)]
pub struct KeySpend {
    pub id: String,
    pub name: String,
    pub owner: Option<String>,
    /// `day`, `week`, `month` or `total` for a key with a budget; `None` for one without,
    /// whose spend is then over the report's range.
    pub period: Option<String>,
    /// Where the spend is counted from.
    pub since_ms: i64,
    pub spend_usd: f64,
    pub budget_usd: Option<f64>,
    /// `active`, `disabled`, `revoked` or `expired`.
    pub state: &'static str,
}

/// Everything the page shows for one range.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub range: Range,
    pub now_ms: i64,
    /// The first bucket's start; the report covers `start_ms..=now_ms`.
    pub start_ms: i64,
    pub totals: Figures,
    pub ttfb_p50_ms: Option<f64>,
    pub ttfb_p95_ms: Option<f64>,
    /// [`BUCKETS`] of them, oldest first.
    pub buckets: Vec<Bucket>,
    /// Each breakdown's rows, most requests first, [`OTHER`] last.
    pub by_provider: Vec<Row>,
    pub by_model: Vec<Row>,
    pub by_key: Vec<Row>,
    pub by_status: Vec<Row>,
    /// Every key, by name.
    pub keys: Vec<KeySpend>,
}

impl Report {
    /// The earliest record time a report uses: the range's start, or a budget period's start
    /// if one begins earlier (a month's budget, seen over the last hour). Records for
    /// [`Report::build`] should reach back this far; a `total` budget reaches back to 0.
    pub fn reach_back_ms(range: Range, keys: &[KeyRow], now_ms: i64) -> i64 {
        keys.iter()
            .map(|key| spend_since(key, range, now_ms))
            .fold(range.start_ms(now_ms), i64::min)
    }

    /// Sums `records` for `range` ending at `now_ms`. A record after now counts nowhere; one
    /// before the range counts only towards its key's spend, when it falls in the key's
    /// budget period. Memory stays bounded however many records come: fixed buckets, fixed
    /// histograms, breakdowns capped at [`MAX_ROWS`].
    pub fn build<'a>(
        records: impl IntoIterator<Item = &'a UsageRecord>,
        keys: &[KeyRow],
        range: Range,
        now_ms: i64,
    ) -> Report {
        let start_ms = range.start_ms(now_ms);
        let width = range.bucket_ms();
        let mut totals = (Figures::default(), Histogram::default());
        let mut buckets = vec![(Figures::default(), Histogram::default()); BUCKETS];
        let (mut providers, mut models) = (Breakdown::default(), Breakdown::default());
        let (mut callers, mut statuses) = (Breakdown::default(), Breakdown::default());
        let mut sorted: Vec<&KeyRow> = keys.iter().collect();
        sorted.sort_by(|a, b| (&a.name, &a.id).cmp(&(&b.name, &b.id)));
        let mut spends: Vec<KeySpend> =
            sorted.iter().map(|key| spend(key, range, now_ms)).collect();
        let by_id: HashMap<&str, usize> = sorted
            .iter()
            .enumerate()
            .map(|(i, key)| (key.id.as_str(), i))
            .collect();
        for record in records {
            if record.time_ms > now_ms {
                continue;
            }
            let key = record
                .key_id
                .as_deref()
                .and_then(|id| by_id.get(id).copied());
            if let Some(i) = key {
                if record.time_ms >= spends[i].since_ms {
                    spends[i].spend_usd += known_cost(record).unwrap_or(0.0);
                }
            }
            if record.time_ms < start_ms {
                continue;
            }
            // Below BUCKETS: the time is at most now, which is in the last bucket.
            let index = usize::try_from((record.time_ms - start_ms) / width)
                .unwrap_or(0)
                .min(BUCKETS - 1);
            for (figures, ttfb) in [&mut totals, &mut buckets[index]] {
                figures.add(record);
                if let Some(ms) = record.ttfb_ms {
                    ttfb.observe(ms);
                }
            }
            providers.add(record.provider.as_deref().unwrap_or(NONE), record);
            models.add(record.model.as_deref().unwrap_or(NONE), record);
            statuses.add(&record.status, record);
            let caller = match (&record.key_id, &record.caller) {
                (Some(id), _) => Caller::Key(id),
                (None, Some(fingerprint)) => Caller::Fingerprint(fingerprint),
                (None, None) => Caller::None,
            };
            callers.add(&caller.identity(), record);
        }
        let by_key = callers.into_rows(|identity| match identity.strip_prefix("key:") {
            Some(id) => match by_id.get(id) {
                Some(&i) => spends[i].name.clone(),
                None => id.to_owned(),
            },
            None => identity.to_owned(),
        });
        Report {
            range,
            now_ms,
            start_ms,
            totals: totals.0,
            ttfb_p50_ms: totals.1.quantile(0.5),
            ttfb_p95_ms: totals.1.quantile(0.95),
            buckets: buckets
                .into_iter()
                .enumerate()
                .map(|(i, (figures, ttfb))| Bucket {
                    start_ms: start_ms + i as i64 * width,
                    figures,
                    ttfb_p50_ms: ttfb.quantile(0.5),
                    ttfb_p95_ms: ttfb.quantile(0.95),
                })
                .collect(),
            by_provider: providers.into_rows(String::clone),
            by_model: models.into_rows(String::clone),
            by_key,
            by_status: statuses.into_rows(u16::to_string),
            keys: spends,
        }
    }
}

/// Who made a request, as the key breakdown tells them apart.
enum Caller<'a> {
    Key(&'a str),
    Fingerprint(&'a str),
    None,
}

impl Caller<'_> {
    /// Distinct for distinct callers (two keys may share a name); the label comes later.
    fn identity(&self) -> String {
        match self {
            Caller::Key(id) => format!("key:{id}"),
            Caller::Fingerprint(fingerprint) => format!("caller {fingerprint}"),
            Caller::None => NONE.to_owned(),
        }
    }
}

/// Where a key's spend is counted from: its budget period's start (as its limits count it),
/// or the range's.
fn spend_since(key: &KeyRow, range: Range, now_ms: i64) -> i64 {
    Budget::of(key).map_or(range.start_ms(now_ms), |budget| budget.period.start(now_ms))
}

fn spend(key: &KeyRow, range: Range, now_ms: i64) -> KeySpend {
    let state = if key.revoked_at.is_some() {
        "revoked"
    } else if !key.enabled {
        "disabled"
    } else if key.expires_at.is_some_and(|at| at <= now_ms) {
        "expired"
    } else {
        "active"
    };
    KeySpend {
        id: key.id.clone(),
        name: key.name.clone(),
        owner: key.owner.clone(),
        period: key
            .budget_usd
            .map(|_| key.budget_period.clone().unwrap_or_else(|| "total".into())),
        since_ms: spend_since(key, range, now_ms),
        spend_usd: 0.0,
        budget_usd: key.budget_usd,
        state,
    }
}

/// Figures per label, up to [`MAX_ROWS`] labels and the rest together.
struct Breakdown<K> {
    rows: HashMap<K, Figures>,
    other: Figures,
}

impl<K> Default for Breakdown<K> {
    fn default() -> Self {
        Self {
            rows: HashMap::new(),
            other: Figures::default(),
        }
    }
}

impl<K: Hash + Eq> Breakdown<K> {
    /// Looks the label up borrowed, so a label already seen costs no allocation.
    fn add<Q>(&mut self, label: &Q, record: &UsageRecord)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(figures) = self.rows.get_mut(label) {
            figures.add(record);
        } else if self.rows.len() < MAX_ROWS {
            self.rows.entry(label.to_owned()).or_default().add(record);
        } else {
            self.other.add(record);
        }
    }

    fn into_rows(self, label: impl Fn(&K) -> String) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .rows
            .iter()
            .map(|(key, figures)| Row {
                label: label(key),
                figures: *figures,
            })
            .collect();
        rows.sort_by(|a, b| (b.figures.requests, &a.label).cmp(&(a.figures.requests, &b.label)));
        if self.other.requests > 0 {
            rows.push(Row {
                label: OTHER.to_owned(),
                figures: self.other,
            });
        }
        rows
    }
}

/// Log-scale bins of time to first byte in milliseconds: 8 per doubling from 1 ms, so a
/// percentile read from a bin is within 4.5% of the true one, in fixed memory whatever the
/// count. Bin 0 holds everything below 1 ms, the last everything from 2^24 ms (4.7 hours).
const PER_DOUBLING: f64 = 8.0;
const BINS: usize = 24 * 8 + 2;

#[derive(Clone, Debug)]
struct Histogram {
    counts: [u64; BINS],
    total: u64,
    min: f64,
    max: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: [0; BINS],
            total: 0,
            min: f64::INFINITY,
            max: 0.0,
        }
    }
}

impl Histogram {
    fn observe(&mut self, ms: f64) {
        if !(ms.is_finite() && ms >= 0.0) {
            return;
        }
        let bin = if ms < 1.0 {
            0
        } else {
            // In range for the cast: `ms` is at least 1, so the log is at least 0.
            ((ms.log2() * PER_DOUBLING) as usize + 1).min(BINS - 1)
        };
        self.counts[bin] += 1;
        self.total += 1;
        self.min = self.min.min(ms);
        self.max = self.max.max(ms);
    }

    /// The nearest-rank `q` quantile: the middle of the bin holding it (geometric, as the bins
    /// are), kept within the smallest and largest seen, so identical values come back exact.
    fn quantile(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        let bin = self.counts.iter().position(|count| {
            seen += count;
            seen >= rank
        })?;
        let middle = match bin {
            0 => 0.5,
            bin if bin == BINS - 1 => self.max,
            bin => ((bin as f64 - 0.5) / PER_DOUBLING).exp2(),
        };
        Some(middle.clamp(self.min, self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-02 (a Wednesday) 15:04:05.678 UTC.
    const NOW: i64 = 1_796_223_845_678;

    fn at(text: &str) -> i64 {
        text.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    fn record(time_ms: i64) -> UsageRecord {
        UsageRecord {
            time_ms,
            key_id: None,
            caller: None,
            route: "chat_completions".into(),
            provider: Some("openai".into()),
            model: Some("gpt-4o-mini".into()),
            group: None,
            deployment: Some("openai/gpt-4o-mini".into()),
            status: 200,
            input_tokens: 10,
            output_tokens: 5,
            cached_tokens: 2,
            cost_usd: Some(0.01),
            latency_ms: 120.0,
            ttfb_ms: Some(80.0),
            request_id: "req-1".into(),
            cached: false,
        }
    }

    fn key(id: &str, name: &str, budget: Option<(f64, &str)>) -> KeyRow {
        KeyRow {
            budget_usd: budget.map(|(usd, _)| usd),
            budget_period: budget.map(|(_, period)| period.into()),
            ..KeyRow::new(
                id.into(),
                "00".repeat(32),
                "lp-AbCdE".into(),
                name.into(),
                0,
            )
        }
    }

    fn assert_near(actual: Option<f64>, expected: f64, tolerance: f64) {
        let actual = actual.expect("a value");
        assert!(
            (actual - expected).abs() <= expected * tolerance,
            "{actual} is not within {tolerance} of {expected}"
        );
    }

    #[test]
    fn now_is_a_wednesday_afternoon() {
        assert_eq!(NOW, at("2026-12-02T15:04:05.678Z"));
    }

    #[test]
    fn totals_and_percentiles_come_from_known_records() {
        let records: Vec<UsageRecord> = (1..=100)
            .map(|n| UsageRecord {
                status: if n % 10 == 0 { 502 } else { 200 },
                ttfb_ms: Some(f64::from(n)),
                cost_usd: (n != 7).then_some(0.5),
                ..record(NOW - 1000)
            })
            .collect();
        let report = Report::build(&records, &[], Range::Hour, NOW);
        let totals = report.totals;
        assert_eq!(totals.requests, 100);
        assert_eq!(totals.errors, 10);
        assert_eq!(totals.error_rate(), 0.1);
        assert_eq!(totals.tokens(), 1500);
        assert_eq!(totals.cached_tokens, 200);
        assert_eq!(totals.cost_usd, 49.5);
        assert_eq!(totals.unpriced, 1);
        assert_near(report.ttfb_p50_ms, 50.0, 0.045);
        assert_near(report.ttfb_p95_ms, 95.0, 0.045);
        let last = report.buckets.last().unwrap();
        assert_eq!(
            last.figures, totals,
            "all of them in the bucket holding now"
        );
        assert_eq!(last.ttfb_p95_ms, report.ttfb_p95_ms);
        assert_eq!(report.buckets[0].figures.requests, 0);
        assert_eq!(report.buckets[0].ttfb_p50_ms, None);
    }

    #[test]
    fn percentiles_of_identical_times_are_exact_and_missing_times_give_none() {
        let records = vec![
            UsageRecord {
                ttfb_ms: Some(250.0),
                ..record(NOW)
            };
            7
        ];
        let report = Report::build(&records, &[], Range::Day, NOW);
        assert_eq!(report.ttfb_p50_ms, Some(250.0));
        assert_eq!(report.ttfb_p95_ms, Some(250.0));
        let none = UsageRecord {
            ttfb_ms: None,
            ..record(NOW)
        };
        let report = Report::build([&none], &[], Range::Day, NOW);
        assert_eq!(report.totals.requests, 1);
        assert_eq!(report.ttfb_p50_ms, None);
    }

    #[test]
    fn a_percentile_far_out_stays_within_what_was_seen() {
        let mut histogram = Histogram::default();
        for ms in [0.2, 3.0e9, f64::NAN, -1.0] {
            histogram.observe(ms);
        }
        assert_eq!(histogram.total, 2, "no NaN, nothing below zero");
        assert_eq!(
            histogram.quantile(0.5),
            Some(0.5),
            "the middle of below 1 ms"
        );
        assert_eq!(
            histogram.quantile(1.0),
            Some(3.0e9),
            "beyond the bins: the largest"
        );
        let mut one = Histogram::default();
        one.observe(0.2);
        assert_eq!(one.quantile(0.95), Some(0.2));
    }

    #[test]
    fn buckets_are_aligned_to_their_width_and_the_last_holds_now() {
        let now = at("2026-12-02T12:30:30Z");
        assert_eq!(Range::Hour.start_ms(now), at("2026-12-02T11:31:00Z"));
        assert_eq!(Range::Hour.bucket_ms(), 60_000);
        assert_eq!(Range::Day.bucket_ms(), 24 * 60_000);
        assert_eq!(Range::Month30.bucket_ms(), 12 * 3_600_000);
        let report = Report::build(&[], &[], Range::Hour, now);
        assert_eq!(report.buckets.len(), BUCKETS);
        assert_eq!(report.buckets[0].start_ms, at("2026-12-02T11:31:00Z"));
        assert_eq!(report.buckets[59].start_ms, at("2026-12-02T12:30:00Z"));
    }

    #[test]
    fn records_fall_in_the_bucket_whose_edge_they_start_on() {
        let start = Range::Hour.start_ms(NOW);
        let width = Range::Hour.bucket_ms();
        let records = [
            record(start),
            record(start + width - 1),
            record(start + width),
            record(NOW),
        ];
        let report = Report::build(&records, &[], Range::Hour, NOW);
        let counts: Vec<u64> = report.buckets.iter().map(|b| b.figures.requests).collect();
        assert_eq!(counts[0], 2);
        assert_eq!(counts[1], 1);
        assert_eq!(counts[BUCKETS - 1], 1);
        assert_eq!(counts.iter().sum::<u64>(), 4);
    }

    #[test]
    fn records_outside_the_range_are_ignored() {
        let start = Range::Hour.start_ms(NOW);
        let records = [record(start - 1), record(NOW + 1), record(NOW - 5)];
        let report = Report::build(&records, &[], Range::Hour, NOW);
        assert_eq!(report.totals.requests, 1);
        assert_eq!(report.by_provider.len(), 1);
        assert_eq!(report.by_provider[0].figures.requests, 1);
    }

    /// A period's start as the dashboard counts spend: through the keys' own rule.
    fn period_start_ms(period: &str, now_ms: i64) -> i64 {
        crate::keys::Period::parse(period).map_or(0, |period| period.start(now_ms))
    }

    #[test]
    fn budget_periods_start_in_utc_on_the_day_the_monday_and_the_first() {
        assert_eq!(period_start_ms("day", NOW), at("2026-12-02T00:00:00Z"));
        assert_eq!(period_start_ms("week", NOW), at("2026-11-30T00:00:00Z"));
        assert_eq!(period_start_ms("month", NOW), at("2026-12-01T00:00:00Z"));
        assert_eq!(period_start_ms("total", NOW), 0);
        let monday = at("2026-11-30T00:00:00Z");
        assert_eq!(period_start_ms("week", monday), monday);
        let sunday = at("2026-12-06T23:59:59.999Z");
        assert_eq!(period_start_ms("week", sunday), monday);
        let new_year = at("2027-01-01T00:00:00Z");
        assert_eq!(
            period_start_ms("month", new_year - 1),
            at("2026-12-01T00:00:00Z")
        );
        assert_eq!(period_start_ms("month", new_year), new_year);
    }

    #[test]
    fn a_keys_spend_counts_its_budget_period_even_before_the_range() {
        let keys = [
            key("key_a", "team-a", Some((20.0, "month"))),
            key("key_b", "team-b", Some((5.0, "day"))),
            key("key_c", "no-budget", None),
        ];
        let by = |id: &str, time_ms: i64, usd: f64| UsageRecord {
            key_id: Some(id.into()),
            cost_usd: Some(usd),
            ..record(time_ms)
        };
        let records = [
            by("key_a", at("2026-12-01T00:00:00Z"), 1.0),
            by("key_a", at("2026-11-30T23:59:59.999Z"), 100.0),
            by("key_a", NOW - 10, 2.0),
            by("key_a", NOW + 10, 100.0),
            by("key_b", at("2026-12-01T23:00:00Z"), 100.0),
            by("key_b", at("2026-12-02T01:00:00Z"), 0.25),
            by("key_c", at("2026-12-02T01:00:00Z"), 100.0),
            by("key_c", NOW, 0.5),
            by("key_unknown", NOW, 1.0),
        ];
        let report = Report::build(&records, &keys, Range::Hour, NOW);
        let spend: Vec<(&str, f64, Option<&str>)> = report
            .keys
            .iter()
            .map(|k| (k.name.as_str(), k.spend_usd, k.period.as_deref()))
            .collect();
        assert_eq!(
            spend,
            [
                ("no-budget", 0.5, None),
                ("team-a", 3.0, Some("month")),
                ("team-b", 0.25, Some("day")),
            ]
        );
        assert_eq!(
            Report::reach_back_ms(Range::Hour, &keys, NOW),
            at("2026-12-01T00:00:00Z")
        );
        // The chart and the totals still see the range only.
        assert_eq!(report.totals.requests, 3);
        assert_eq!(report.totals.cost_usd, 3.5);
    }

    #[test]
    fn the_key_breakdown_names_keys_and_tells_callers_apart() {
        let keys = [key("key_a", "team-a", None), key("key_b", "team-a", None)];
        let records = [
            UsageRecord {
                key_id: Some("key_a".into()),
                ..record(NOW)
            },
            UsageRecord {
                key_id: Some("key_a".into()),
                ..record(NOW)
            },
            UsageRecord {
                key_id: Some("key_b".into()),
                ..record(NOW)
            },
            UsageRecord {
                caller: Some("0123456789ab".into()),
                ..record(NOW)
            },
            record(NOW),
        ];
        let report = Report::build(&records, &keys, Range::Hour, NOW);
        let rows: Vec<(&str, u64)> = report
            .by_key
            .iter()
            .map(|row| (row.label.as_str(), row.figures.requests))
            .collect();
        assert_eq!(
            rows,
            [
                ("team-a", 2),
                ("(none)", 1),
                ("caller 0123456789ab", 1),
                ("team-a", 1)
            ]
        );
    }

    #[test]
    fn breakdowns_fold_labels_past_the_cap_into_other() {
        let records: Vec<UsageRecord> = (0..MAX_ROWS + 30)
            .map(|n| UsageRecord {
                model: Some(format!("model-{n}")),
                status: 200 + (n % 3) as u16,
                ..record(NOW)
            })
            .collect();
        let report = Report::build(&records, &[], Range::Hour, NOW);
        assert_eq!(report.by_model.len(), MAX_ROWS + 1);
        let other = report.by_model.last().unwrap();
        assert_eq!(other.label, OTHER);
        assert_eq!(other.figures.requests, 30);
        let statuses: Vec<&str> = report.by_status.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(statuses, ["200", "201", "202"]);
    }

    #[test]
    fn ranges_parse_from_their_query_values() {
        for range in Range::ALL {
            assert_eq!(Range::parse(range.as_str()), Some(range));
        }
        assert_eq!(Range::parse("7d"), None);
        assert_eq!(Range::default(), Range::Day);
    }
}

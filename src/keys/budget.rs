//! A key's budget: USD per calendar period in UTC, parsed from `"20/month"` and friends.

use jiff::civil::Date;
use jiff::tz::Offset;
use jiff::{Timestamp, ToSpan};

/// How long a budget's spend accumulates before it starts again from zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// From 00:00 UTC.
    Day,
    /// From Monday 00:00 UTC (ISO weeks).
    Week,
    /// From the 1st, 00:00 UTC.
    Month,
    /// Never resets.
    Total,
}

/// A budget: spend of at most `usd` in each `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub usd: f64,
    pub period: Period,
}

impl Period {
    /// The name stored in [`super::KeyRow::budget_period`].
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    /// The period named `name` (any case), if any.
    pub fn parse(name: &str) -> Option<Period> {
        [Period::Day, Period::Week, Period::Month, Period::Total]
            .into_iter()
            .find(|period| name.eq_ignore_ascii_case(period.as_str()))
    }

    /// When the period holding `now` began, in unix ms; 0 for [`Period::Total`].
    pub fn start(self, now: i64) -> i64 {
        let today = utc_date(now);
        let first = match self {
            Period::Day => today,
            Period::Week => today
                .checked_sub(i64::from(today.weekday().to_monday_zero_offset()).days())
                .unwrap_or(Date::MIN),
            Period::Month => today.first_of_month(),
            Period::Total => return 0,
        };
        midnight_ms(first)
    }

    /// When the period holding `now` ends and the next begins, in unix ms; `None` for
    /// [`Period::Total`], which never resets.
    pub fn next_reset(self, now: i64) -> Option<i64> {
        let first = utc_date(self.start(now));
        let next = match self {
            Period::Day => first.checked_add(1.day()),
            Period::Week => first.checked_add(1.week()),
            Period::Month => first.checked_add(1.month()),
            Period::Total => return None,
        };
        // Past year 9999 nothing resets any more.
        Some(next.map_or(i64::MAX, midnight_ms))
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Budget {
    /// The budget a key's row sets, if any. A row without a period, or with one this version
    /// does not know, counts as `total`: its spend is still limited, it just never resets.
    pub fn of(row: &super::KeyRow) -> Option<Budget> {
        let usd = row.budget_usd?;
        let period = row
            .budget_period
            .as_deref()
            .and_then(Period::parse)
            .unwrap_or(Period::Total);
        Some(Budget { usd, period })
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.usd, self.period)
    }
}

/// Why a budget did not parse; each says what was wrong and what would do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BudgetError {
    MissingAmount,
    NotANumber(String),
    NotFinite(String),
    Negative(String),
    UnknownPeriod(String),
}

impl std::fmt::Display for BudgetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const FORM: &str = "write it as USD/period, such as 20/month";
        match self {
            BudgetError::MissingAmount => write!(f, "the budget has no amount: {FORM}"),
            BudgetError::NotANumber(amount) => {
                write!(f, "the budget's amount {amount:?} is not a number: {FORM}")
            }
            BudgetError::NotFinite(amount) => {
                write!(f, "the budget's amount {amount:?} is not a finite number")
            }
            BudgetError::Negative(amount) => {
                write!(f, "the budget's amount {amount:?} is negative")
            }
            BudgetError::UnknownPeriod(period) => write!(
                f,
                "the budget's period {period:?} is not one of day, week, month or total"
            ),
        }
    }
}

impl std::error::Error for BudgetError {}

/// Parses `"<usd>/<period>"` (`"20/month"`, `"5.5/day"`, `"100/week"`, `"20/total"`) or a bare
/// amount (`"20"`), which is a total budget. Blanks around either part are ignored.
pub fn parse_budget(text: &str) -> Result<Budget, BudgetError> {
    let (amount, period) = match text.split_once('/') {
        Some((amount, period)) => (amount.trim(), Some(period.trim())),
        None => (text.trim(), None),
    };
    if amount.is_empty() {
        return Err(BudgetError::MissingAmount);
    }
    let usd: f64 = amount
        .parse()
        .map_err(|_| BudgetError::NotANumber(amount.to_owned()))?;
    if !usd.is_finite() {
        return Err(BudgetError::NotFinite(amount.to_owned()));
    }
    // `-0` too: a budget is written without a sign.
    if usd.is_sign_negative() {
        return Err(BudgetError::Negative(amount.to_owned()));
    }
    let period = match period {
        None => Period::Total,
        Some(name) => {
            Period::parse(name).ok_or_else(|| BudgetError::UnknownPeriod(name.to_owned()))?
        }
    };
    Ok(Budget { usd, period })
}

/// The UTC calendar date holding `ms`, clamped to the years jiff knows (-9999..=9999).
fn utc_date(ms: i64) -> Date {
    let at = Timestamp::from_millisecond(ms).unwrap_or(if ms < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    Offset::UTC.to_datetime(at).date()
}

fn midnight_ms(date: Date) -> i64 {
    Offset::UTC
        .to_timestamp(date.at(0, 0, 0, 0))
        .map_or(i64::MIN, Timestamp::as_millisecond)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Unix ms of a UTC time written as RFC 3339, for readable tests.
    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().expect("a time").as_millisecond()
    }

    #[test]
    fn budgets_parse_with_and_without_a_period() {
        for (text, usd, period) in [
            ("20/month", 20.0, Period::Month),
            ("5.5/day", 5.5, Period::Day),
            ("100/week", 100.0, Period::Week),
            ("20/total", 20.0, Period::Total),
            ("20", 20.0, Period::Total),
            (" 0.25 / Month ", 0.25, Period::Month),
            ("0/day", 0.0, Period::Day),
        ] {
            assert_eq!(parse_budget(text), Ok(Budget { usd, period }), "{text:?}");
        }
    }

    #[test]
    fn bad_budgets_say_what_is_wrong() {
        for (text, error, says) in [
            ("", BudgetError::MissingAmount, "no amount"),
            ("/month", BudgetError::MissingAmount, "no amount"),
            (
                "twenty/month",
                BudgetError::NotANumber("twenty".into()),
                "\"twenty\" is not a number",
            ),
            (
                "NaN/day",
                BudgetError::NotFinite("NaN".into()),
                "not a finite",
            ),
            ("inf", BudgetError::NotFinite("inf".into()), "not a finite"),
            ("-5/day", BudgetError::Negative("-5".into()), "negative"),
            ("-0", BudgetError::Negative("-0".into()), "negative"),
            (
                "20/fortnight",
                BudgetError::UnknownPeriod("fortnight".into()),
                "\"fortnight\" is not one of day, week, month or total",
            ),
            (
                "20/",
                BudgetError::UnknownPeriod("".into()),
                "period \"\" is not one of",
            ),
            (
                "20/month/day",
                BudgetError::UnknownPeriod("month/day".into()),
                "\"month/day\"",
            ),
        ] {
            let got = parse_budget(text);
            assert_eq!(got, Err(error), "{text:?}");
            let message = got.err().map(|e| e.to_string()).unwrap_or_default();
            assert!(message.contains(says), "{text:?}: {message}");
        }
    }

    #[test]
    fn a_day_runs_from_midnight_utc_to_the_next() {
        let now = ms("2026-03-14T15:09:26.535Z");
        assert_eq!(Period::Day.start(now), ms("2026-03-14T00:00:00Z"));
        assert_eq!(
            Period::Day.next_reset(now),
            Some(ms("2026-03-15T00:00:00Z"))
        );
        let midnight = ms("2026-03-15T00:00:00Z");
        assert_eq!(Period::Day.start(midnight), midnight);
        assert_eq!(Period::Day.start(midnight - 1), ms("2026-03-14T00:00:00Z"));
    }

    #[test]
    fn a_week_runs_from_monday_midnight_utc() {
        // 2026-03-14 is a Saturday; 2026-03-09 the Monday before.
        let now = ms("2026-03-14T15:09:26Z");
        assert_eq!(Period::Week.start(now), ms("2026-03-09T00:00:00Z"));
        assert_eq!(
            Period::Week.next_reset(now),
            Some(ms("2026-03-16T00:00:00Z"))
        );
        let monday = ms("2026-03-16T00:00:00Z");
        assert_eq!(Period::Week.start(monday), monday);
        assert_eq!(Period::Week.start(monday - 1), ms("2026-03-09T00:00:00Z"));
        // A week across a year's end: Monday 2025-12-29 to Monday 2026-01-05.
        let new_year = ms("2026-01-01T12:00:00Z");
        assert_eq!(Period::Week.start(new_year), ms("2025-12-29T00:00:00Z"));
        assert_eq!(
            Period::Week.next_reset(new_year),
            Some(ms("2026-01-05T00:00:00Z"))
        );
    }

    #[test]
    fn a_month_runs_from_the_first_at_midnight_utc() {
        let now = ms("2026-03-31T23:59:59.999Z");
        assert_eq!(Period::Month.start(now), ms("2026-03-01T00:00:00Z"));
        assert_eq!(
            Period::Month.next_reset(now),
            Some(ms("2026-04-01T00:00:00Z"))
        );
        assert_eq!(Period::Month.start(now + 1), ms("2026-04-01T00:00:00Z"));
        // February in a leap year, and December into the next year.
        let leap = ms("2028-02-29T08:00:00Z");
        assert_eq!(Period::Month.start(leap), ms("2028-02-01T00:00:00Z"));
        assert_eq!(
            Period::Month.next_reset(leap),
            Some(ms("2028-03-01T00:00:00Z"))
        );
        let december = ms("2026-12-15T00:00:00Z");
        assert_eq!(
            Period::Month.next_reset(december),
            Some(ms("2027-01-01T00:00:00Z"))
        );
    }

    #[test]
    fn a_total_budget_starts_at_zero_and_never_resets() {
        assert_eq!(Period::Total.start(ms("2026-03-14T15:09:26Z")), 0);
        assert_eq!(Period::Total.next_reset(ms("2026-03-14T15:09:26Z")), None);
    }

    #[test]
    fn a_rows_budget_defaults_to_total_without_a_known_period() {
        let row = |usd: Option<f64>, period: Option<&str>| super::super::KeyRow {
            budget_usd: usd,
            budget_period: period.map(str::to_owned),
            ..super::super::table::tests::row("k", "lp-k")
        };
        let month = Budget {
            usd: 5.0,
            period: Period::Month,
        };
        assert_eq!(Budget::of(&row(Some(5.0), Some("month"))), Some(month));
        assert_eq!(
            Budget::of(&row(Some(5.0), None)).map(|b| b.period),
            Some(Period::Total)
        );
        assert_eq!(
            Budget::of(&row(Some(5.0), Some("fortnight"))).map(|b| b.period),
            Some(Period::Total)
        );
        assert_eq!(Budget::of(&row(None, Some("month"))), None);
    }

    fn period() -> impl Strategy<Value = Period> {
        prop_oneof![
            Just(Period::Day),
            Just(Period::Week),
            Just(Period::Month),
            Just(Period::Total)
        ]
    }

    proptest! {
        #[test]
        fn a_written_budget_parses_back_to_itself(usd in 0.0..1e12f64, period in period()) {
            let budget = Budget { usd, period };
            prop_assert_eq!(parse_budget(&budget.to_string()), Ok(budget));
        }

        #[test]
        fn any_text_parses_or_fails_without_panicking(text in ".{0,24}") {
            if let Ok(budget) = parse_budget(&text) {
                prop_assert!(budget.usd.is_finite() && budget.usd >= 0.0);
            }
        }

        #[test]
        fn now_lies_in_its_period(now in 0..ms_of_year_9000(), period in period()) {
            let start = period.start(now);
            prop_assert!(start <= now);
            if let Some(next) = period.next_reset(now) {
                prop_assert!(now < next);
                prop_assert_eq!(period.start(next), next);
            }
        }

        #[test]
        fn any_instant_has_a_period_without_panicking(now in any::<i64>(), period in period()) {
            let _ = (period.start(now), period.next_reset(now));
        }
    }

    fn ms_of_year_9000() -> i64 {
        ms("9000-01-01T00:00:00Z")
    }
}

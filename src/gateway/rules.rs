//! The `routes` rules, compiled once at start: given what a request is (its model, headers,
//! key fingerprint, size, and the time), the first rule whose conditions all hold, if any.
//!
//! Evaluating allocates nothing: globs are compiled, header names parsed, fingerprint prefixes
//! lowercased and time windows turned into minutes at start. The cheap conditions are tried
//! first and the time zone conversion last.

use std::time::SystemTime;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use jiff::Timestamp;

use crate::{
    config::routes::{RouteDecl, TimeCondition},
    util::glob::Glob,
};

/// What a request is, as far as rules can see.
pub struct Facts<'a> {
    /// The model as the caller named it.
    pub model: &'a str,
    pub headers: &'a HeaderMap,
    /// The caller's [`KeyFingerprint`](crate::util::fingerprint::KeyFingerprint), when it sent
    /// a key.
    pub key_fingerprint: Option<&'a str>,
    /// See [`estimate_prompt_tokens`].
    pub prompt_tokens: u64,
    /// Now; a test passes the time it wants.
    pub now: SystemTime,
}

/// The estimated prompt tokens of a request body: its bytes / 4. English text runs at about 4
/// bytes a token in the OpenAI and Anthropic tokenizers, and JSON's keys and quotes add a
/// little; it is an estimate for choosing where to go, never a count, and costs nothing.
pub fn estimate_prompt_tokens(body_bytes: usize) -> u64 {
    body_bytes as u64 / 4
}

/// The rule that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// The rule's `name`, or `routes[i]` when it has none, ready for `X-Proxy-Rule` (names are
    /// checked printable ASCII at start; cloning it copies no bytes).
    pub rule: HeaderValue,
    /// Where the request goes instead: a group, an alias or `provider/model`.
    pub to: String,
}

/// The compiled rules, in the file's order.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    needs_key: bool,
}

#[derive(Debug)]
struct Rule {
    matched: Matched,
    prompt_tokens_above: Option<u64>,
    model: Option<Glob>,
    key_prefix: Option<String>,
    header: Option<(HeaderName, Vec<String>)>,
    time: Option<TimeCondition>,
}

impl Rules {
    /// Compiles checked declarations (see `config::routes::check`).
    pub fn compile(routes: &[RouteDecl]) -> Self {
        let rules: Vec<Rule> = routes
            .iter()
            .enumerate()
            .map(|(index, decl)| {
                let c = &decl.conditions;
                Rule {
                    matched: Matched {
                        rule: HeaderValue::from_str(
                            &decl
                                .name
                                .clone()
                                .unwrap_or_else(|| format!("routes[{index}]")),
                        )
                        .expect("rule names are checked printable ASCII"),
                        to: decl.to.clone(),
                    },
                    prompt_tokens_above: c.prompt_tokens_above,
                    model: c.model.as_deref().map(Glob::new),
                    key_prefix: c
                        .key_fingerprint
                        .as_ref()
                        .map(|hex| hex.to_ascii_lowercase()),
                    header: c
                        .header
                        .as_ref()
                        .map(|header| (header.name.clone(), header.values.clone())),
                    time: c.time.clone(),
                }
            })
            .collect();
        let needs_key = rules.iter().any(|rule| rule.key_prefix.is_some());
        Self { rules, needs_key }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Whether any rule looks at the key fingerprint: when none does, a door need not hash
    /// the key.
    pub fn needs_key_fingerprint(&self) -> bool {
        self.needs_key
    }

    /// The first rule that matches, if any.
    pub fn route(&self, facts: &Facts<'_>) -> Option<&Matched> {
        let rule = self.rules.iter().find(|rule| rule.matches(facts))?;
        Some(&rule.matched)
    }
}

impl Rule {
    fn matches(&self, facts: &Facts<'_>) -> bool {
        if self
            .prompt_tokens_above
            .is_some_and(|above| facts.prompt_tokens <= above)
        {
            return false;
        }
        if self
            .model
            .as_ref()
            .is_some_and(|glob| !glob.matches(facts.model))
        {
            return false;
        }
        if let Some(prefix) = &self.key_prefix {
            if !facts
                .key_fingerprint
                .is_some_and(|fingerprint| fingerprint.starts_with(prefix.as_str()))
            {
                return false;
            }
        }
        if let Some((name, values)) = &self.header {
            let mut sent = facts.headers.get_all(name);
            if !sent.any(|sent| {
                values
                    .iter()
                    .any(|value| value.as_bytes() == sent.as_bytes())
            }) {
                return false;
            }
        }
        self.time
            .as_ref()
            .is_none_or(|window| in_window(window, facts.now))
    }
}

/// Whether `now` falls in the window, in the window's time zone. A window that wraps past
/// midnight belongs to the day it began: `fri` with `22:00-06:00` holds from Friday 22:00 to
/// Saturday 06:00.
fn in_window(window: &TimeCondition, now: SystemTime) -> bool {
    let Ok(now) = Timestamp::try_from(now) else {
        return false;
    };
    let local = window.time_zone.to_datetime(now);
    let day = usize::try_from(local.weekday().to_monday_zero_offset()).unwrap_or(0);
    let yesterday = (day + 6) % 7;
    let minute =
        u16::try_from(local.hour()).unwrap_or(0) * 60 + u16::try_from(local.minute()).unwrap_or(0);
    match window.hours {
        None => window.days[day],
        Some((start, end)) if start < end => window.days[day] && (start..end).contains(&minute),
        Some((start, end)) => {
            (window.days[day] && minute >= start) || (window.days[yesterday] && minute < end)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::routes;
    use std::time::Duration;

    fn rules(text: &str) -> Rules {
        Rules::compile(&routes::parse(&serde_json::from_str(text).unwrap()).unwrap())
    }

    /// 2026-12-05, a Saturday, at the given UTC hour and minute.
    fn saturday(hour: u64, minute: u64) -> SystemTime {
        let midnight = 1_796_428_800; // 2026-12-05T00:00:00Z
        SystemTime::UNIX_EPOCH + Duration::from_secs(midnight + hour * 3600 + minute * 60)
    }

    fn facts<'a>(model: &'a str, headers: &'a HeaderMap) -> Facts<'a> {
        Facts {
            model,
            headers,
            key_fingerprint: None,
            prompt_tokens: 10,
            now: saturday(12, 0),
        }
    }

    fn route<'r>(rules: &'r Rules, facts: &Facts<'_>) -> Option<&'r str> {
        rules
            .route(facts)
            .map(|matched| matched.rule.to_str().expect("ASCII"))
    }

    #[test]
    fn the_clock_fixture_is_a_saturday_at_midnight_utc() {
        let at = Timestamp::try_from(saturday(0, 0)).unwrap();
        assert_eq!(at.to_string(), "2026-12-05T00:00:00Z");
        assert_eq!(
            jiff::tz::TimeZone::UTC.to_datetime(at).weekday(),
            jiff::civil::Weekday::Saturday
        );
    }

    #[test]
    fn the_first_matching_rule_wins_and_none_leaves_the_model() {
        let rules = rules(
            r#"[{"name": "four", "match": {"model": "gpt-4*"}, "to": "openai/gpt-4o"},
                {"match": {"model": "gpt-*"}, "to": "openai/gpt-4o-mini"},
                {"name": "all", "match": {}, "to": "openai/gpt-4o-mini"}]"#,
        );
        let headers = HeaderMap::new();
        let matched = rules.route(&facts("gpt-4.1", &headers)).unwrap();
        assert_eq!(
            matched,
            &Matched {
                rule: HeaderValue::from_static("four"),
                to: "openai/gpt-4o".into()
            }
        );
        assert_eq!(
            route(&rules, &facts("gpt-3.5", &headers)),
            Some("routes[1]")
        );
        assert_eq!(route(&rules, &facts("claude", &headers)), Some("all"));
        let none = Rules::compile(&[]);
        assert!(none.is_empty());
        assert_eq!(none.route(&facts("gpt-4", &headers)), None);
    }

    #[test]
    fn a_header_matches_by_any_case_of_its_name_and_the_exact_value() {
        let rules = rules(
            r#"[{"match": {"header": {"name": "X-Tenant", "value": ["acme", "acme-eu"]}},
                 "to": "acme/m"}]"#,
        );
        let mut headers = HeaderMap::new();
        assert_eq!(route(&rules, &facts("m", &headers)), None);
        for (value, expected) in [
            ("acme", true),
            ("acme-eu", true),
            ("ACME", false),
            ("acm", false),
        ] {
            headers.insert(HeaderName::from_static("x-tenant"), value.parse().unwrap());
            assert_eq!(
                route(&rules, &facts("m", &headers)).is_some(),
                expected,
                "{value}"
            );
        }
    }

    #[test]
    fn every_condition_of_a_rule_must_hold() {
        let rules = rules(
            r#"[{"match": {"model": "gpt-*", "prompt_tokens_above": 1000,
                           "key_fingerprint": "0D62"}, "to": "long/m"}]"#,
        );
        let headers = HeaderMap::new();
        let mut facts = facts("gpt-4o", &headers);
        facts.prompt_tokens = 1001;
        assert_eq!(route(&rules, &facts), None, "no key, no fingerprint");
        facts.key_fingerprint = Some("0d62f396c1317066");
        assert!(rules.needs_key_fingerprint());
        assert_eq!(route(&rules, &facts), Some("routes[0]"));
        facts.prompt_tokens = 1000;
        assert_eq!(route(&rules, &facts), None, "above means more than");
        facts.prompt_tokens = 5000;
        facts.key_fingerprint = Some("1d62f396c1317066");
        assert_eq!(route(&rules, &facts), None);
        facts.key_fingerprint = Some("0d62f396c1317066");
        facts.model = "claude";
        assert_eq!(route(&rules, &facts), None);
        assert_eq!(estimate_prompt_tokens(4003), 1000);
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_began() {
        let rules = rules(
            r#"[{"match": {"time": {"days": ["fri"], "hours": "22:00-06:00"}}, "to": "a/m"}]"#,
        );
        let headers = HeaderMap::new();
        let at = |now| {
            let mut facts = facts("m", &headers);
            facts.now = now;
            route(&rules, &facts).is_some()
        };
        let day = Duration::from_secs(24 * 3600);
        assert!(at(saturday(5, 59)), "Saturday early is Friday night");
        assert!(!at(saturday(6, 0)), "the end is excluded");
        assert!(!at(saturday(22, 0)), "Saturday night is not Friday's");
        assert!(at(saturday(22, 0) - day), "Friday 22:00");
        assert!(!at(saturday(21, 59) - day));
        assert!(!at(saturday(3, 0) - day), "Friday early is Thursday night");
    }

    #[test]
    fn days_and_hours_are_read_in_the_windows_time_zone() {
        let rules = rules(
            r#"[{"name": "weekend", "match": {"time": {"days": ["sat", "sun"],
                  "time_zone": "Asia/Tokyo"}}, "to": "a/m"},
                {"name": "office", "match": {"time": {"hours": "09:00-17:00",
                  "time_zone": "-05:00"}}, "to": "a/m"}]"#,
        );
        let headers = HeaderMap::new();
        let at = |now| {
            let mut facts = facts("m", &headers);
            facts.now = now;
            route(&rules, &facts)
        };
        let day = Duration::from_secs(24 * 3600);
        // Friday 15:00 UTC is Saturday 00:00 in Tokyo (UTC+9, no DST).
        assert_eq!(at(saturday(15, 0) - day), Some("weekend"));
        assert_eq!(
            at(saturday(14, 59) - 2 * day),
            Some("office"),
            "Thursday 09:59 at -05:00"
        );
        assert_eq!(
            at(saturday(22, 0) - 2 * day),
            None,
            "Thursday 17:00 at -05:00"
        );
    }

    #[test]
    fn daylight_saving_time_moves_a_window_with_the_clock() {
        let rules = rules(
            r#"[{"match": {"time": {"hours": "09:00-10:00", "time_zone": "Europe/Berlin"}},
                 "to": "a/m"}]"#,
        );
        let headers = HeaderMap::new();
        let at = |secs| {
            let mut facts = facts("m", &headers);
            facts.now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
            route(&rules, &facts).is_some()
        };
        // 2026-07-01T07:30Z is 09:30 in Berlin (CEST, +2); 2026-12-01T08:30Z is 09:30 (CET, +1).
        assert!(at(1_782_891_000));
        assert!(!at(1_782_891_000 + 3600));
        assert!(at(1_796_113_800));
        assert!(!at(1_796_113_800 - 3600));
    }

    proptest::proptest! {
        #[test]
        fn a_wrapping_window_is_the_complement_of_the_day_window_between(
            start in 0u16..1440, end in 0u16..1440, minute_of_week in 0u64..(7 * 1440),
        ) {
            proptest::prop_assume!(start != end);
            let every_day = [true; 7];
            let window = |hours| TimeCondition {
                days: every_day,
                hours: Some(hours),
                time_zone: jiff::tz::TimeZone::UTC,
            };
            let now = saturday(0, 0) + Duration::from_secs(minute_of_week * 60);
            let m = (minute_of_week % 1440) as u16;
            let expected = if start < end { (start..end).contains(&m) } else { m >= start || m < end };
            proptest::prop_assert_eq!(in_window(&window((start, end)), now), expected);
        }
    }
}

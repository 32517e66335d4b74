//! The providers file's `routes`: ordered rules that send matching requests elsewhere, parsed
//! and checked field by field (the matcher they compile to is `gateway::rules`).

use actix_web::http::header::HeaderName;
use jiff::tz::{Offset, TimeZone};
use serde_json::Value;

use crate::config::fields::{object, only_fields};

/// More rules than this is a configuration mistake, and would make a request's evaluation
/// cost more than the microseconds promised.
pub const MAX_ROUTES: usize = 1000;

/// The longest model glob and header value a rule may hold.
const MAX_TEXT: usize = 256;

/// One entry of `routes`: when every condition of `match` holds, the request goes to `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteDecl {
    /// How the access log and `X-Proxy-Rule` name the rule; `routes[i]` when absent.
    pub name: Option<String>,
    pub conditions: Conditions,
    /// A group, an alias, or `provider/model`.
    pub to: String,
}

/// A rule's `match`: every condition present must hold; none present matches every request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Conditions {
    pub header: Option<HeaderCondition>,
    /// Lowercase hex, 1 to 16 digits: a prefix of the caller's key fingerprint
    /// (`util::fingerprint`).
    pub key_fingerprint: Option<String>,
    /// A glob of `*` and `?` over the model as the caller named it.
    pub model: Option<String>,
    /// Holds when the estimated prompt tokens (body bytes / 4) are more than this.
    pub prompt_tokens_above: Option<u64>,
    pub time: Option<TimeCondition>,
}

/// `match.header`: the header is present with one of the values, exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct HeaderCondition {
    pub name: HeaderName,
    pub values: Vec<String>,
}

/// `match.time`: a window of the week in a time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeCondition {
    /// Indexed from Monday (0) to Sunday (6); every day when `days` is absent.
    pub days: [bool; 7],
    /// Minutes after local midnight: from `start` (included) to `end` (excluded); `end` before
    /// `start` wraps past midnight, and that night belongs to the day it began. The whole
    /// day when absent.
    pub hours: Option<(u16, u16)>,
    pub time_zone: TimeZone,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Parses `routes`. Every error names its place, like `routes[2].match.time.hours: ...`.
pub fn parse(value: &Value) -> Result<Vec<RouteDecl>, String> {
    let Value::Array(list) = value else {
        return Err("routes: must be a list of rules".into());
    };
    if list.len() > MAX_ROUTES {
        return Err(format!(
            "routes: at most {MAX_ROUTES} rules, not {}",
            list.len()
        ));
    }
    list.iter()
        .enumerate()
        .map(|(index, rule)| route(&format!("routes[{index}]"), rule))
        .collect()
}

fn route(at: &str, value: &Value) -> Result<RouteDecl, String> {
    let fields = object(value, at)?;
    only_fields(fields, at, &["name", "match", "to"])?;
    let name = match fields.get("name") {
        None => None,
        Some(Value::String(name)) if is_printable(name) => Some(name.clone()),
        Some(_) => {
            return Err(format!(
                "{at}.name: must be a string of 1 to {MAX_TEXT} printable ASCII characters \
                 (it goes in a response header)"
            ))
        }
    };
    let to = match fields.get("to") {
        Some(Value::String(to)) if !to.is_empty() && to.len() <= MAX_TEXT => to.clone(),
        _ => {
            return Err(format!(
                "{at}.to: required, a group, an alias or `provider/model`"
            ))
        }
    };
    let at_match = format!("{at}.match");
    let conditions = match fields.get("match") {
        Some(value) => conditions(&at_match, value)?,
        None => return Err(format!("{at_match}: required, an object of conditions")),
    };
    Ok(RouteDecl {
        name,
        conditions,
        to,
    })
}

fn conditions(at: &str, value: &Value) -> Result<Conditions, String> {
    let fields = object(value, at)?;
    only_fields(
        fields,
        at,
        &[
            "header",
            "key_fingerprint",
            "model",
            "prompt_tokens_above",
            "time",
        ],
    )?;
    let mut conditions = Conditions::default();
    if let Some(value) = fields.get("header") {
        conditions.header = Some(header(&format!("{at}.header"), value)?);
    }
    if let Some(value) = fields.get("key_fingerprint") {
        let prefix = value
            .as_str()
            .filter(|hex| {
                (1..=crate::util::fingerprint::FINGERPRINT_LEN).contains(&hex.len())
                    && hex.bytes().all(|b| b.is_ascii_hexdigit())
            })
            .ok_or_else(|| {
                format!(
                    "{at}.key_fingerprint: must be 1 to 16 hex digits, the start of a key's \
                     fingerprint (the first 16 hex digits of its SHA-256)"
                )
            })?;
        conditions.key_fingerprint = Some(prefix.to_ascii_lowercase());
    }
    if let Some(value) = fields.get("model") {
        let glob = value
            .as_str()
            .filter(|glob| !glob.is_empty() && glob.len() <= MAX_TEXT)
            .ok_or_else(|| {
                format!("{at}.model: must be a glob (`*` and `?`) of 1 to {MAX_TEXT} bytes")
            })?;
        conditions.model = Some(glob.to_owned());
    }
    if let Some(value) = fields.get("prompt_tokens_above") {
        let tokens = value
            .as_u64()
            .ok_or_else(|| format!("{at}.prompt_tokens_above: must be a whole number"))?;
        conditions.prompt_tokens_above = Some(tokens);
    }
    if let Some(value) = fields.get("time") {
        conditions.time = Some(time(&format!("{at}.time"), value)?);
    }
    Ok(conditions)
}

fn header(at: &str, value: &Value) -> Result<HeaderCondition, String> {
    let fields = object(value, at)?;
    only_fields(fields, at, &["name", "value"])?;
    let name = fields
        .get("name")
        .and_then(Value::as_str)
        .and_then(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .ok_or_else(|| format!("{at}.name: required, a valid header name"))?;
    if ["authorization", "x-api-key", "x-goog-api-key"].contains(&name.as_str()) {
        return Err(format!(
            "{at}.name: {name} carries the caller's key, which a rule must not hold; \
             match on `key_fingerprint` instead"
        ));
    }
    let one = |value: &Value| {
        value
            .as_str()
            .filter(|value| is_printable(value))
            .map(str::to_owned)
    };
    let values = match fields.get("value") {
        Some(Value::Array(list)) if !list.is_empty() => list.iter().map(one).collect(),
        Some(value) => one(value).map(|value| vec![value]),
        None => None,
    }
    .ok_or_else(|| {
        format!(
            "{at}.value: required, a string (or a non-empty list of strings) of 1 to \
             {MAX_TEXT} printable ASCII characters"
        )
    })?;
    Ok(HeaderCondition { name, values })
}

fn time(at: &str, value: &Value) -> Result<TimeCondition, String> {
    let fields = object(value, at)?;
    only_fields(fields, at, &["days", "hours", "time_zone"])?;
    if !fields.contains_key("days") && !fields.contains_key("hours") {
        return Err(format!("{at}: needs `days`, `hours` or both"));
    }
    let mut days = [true; 7];
    if let Some(value) = fields.get("days") {
        let wrong = || format!("{at}.days: must be a non-empty list of {}", DAYS.join(", "));
        let list = value
            .as_array()
            .filter(|list| !list.is_empty())
            .ok_or_else(wrong)?;
        days = [false; 7];
        for day in list {
            let index = day
                .as_str()
                .and_then(|day| DAYS.iter().position(|d| d.eq_ignore_ascii_case(day)))
                .ok_or_else(wrong)?;
            days[index] = true;
        }
    }
    let hours = match fields.get("hours") {
        None => None,
        Some(value) => Some(value.as_str().and_then(hours).ok_or_else(|| {
            format!(
                "{at}.hours: must be `HH:MM-HH:MM` (24-hour, start included, end \
                         excluded, `22:00-06:00` wraps past midnight), not an empty window"
            )
        })?),
    };
    let time_zone = match fields.get("time_zone") {
        None => TimeZone::UTC,
        Some(Value::String(name)) => {
            time_zone(name).map_err(|why| format!("{at}.time_zone: {why}"))?
        }
        Some(_) => return Err(format!("{at}.time_zone: must be a string")),
    };
    Ok(TimeCondition {
        days,
        hours,
        time_zone,
    })
}

/// `HH:MM-HH:MM` as minutes after midnight; `24:00` may end a window.
fn hours(text: &str) -> Option<(u16, u16)> {
    let (start, end) = text.split_once('-')?;
    let (start, end) = (minutes(start.trim())?, minutes(end.trim())?);
    (start < 24 * 60 && start != end).then_some((start, end))
}

fn minutes(text: &str) -> Option<u16> {
    let (hours, minutes) = text.split_once(':')?;
    let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(hours) || !digits(minutes) {
        return None;
    }
    let (hours, minutes): (u16, u16) = (hours.parse().ok()?, minutes.parse().ok()?);
    let total = hours * 60 + minutes;
    (minutes < 60 && total <= 24 * 60).then_some(total)
}

/// `UTC`, a fixed offset (`+02:00`, `-05:30`), or an IANA name (`Europe/Berlin`) from the
/// tz database built into the binary, daylight saving time included.
pub fn time_zone(name: &str) -> Result<TimeZone, String> {
    if name.eq_ignore_ascii_case("utc") || name == "Z" {
        return Ok(TimeZone::UTC);
    }
    if let Some(sign) = name
        .strip_prefix('+')
        .map(|_| 1)
        .or(name.strip_prefix('-').map(|_| -1))
    {
        let offset = minutes(&name[1..])
            .filter(|&minutes| minutes < 24 * 60)
            .and_then(|minutes| Offset::from_seconds(sign * i32::from(minutes) * 60).ok())
            .ok_or_else(|| format!("{name:?} is not an offset like +02:00 or -05:30"))?;
        return Ok(TimeZone::fixed(offset));
    }
    TimeZone::get(name).map_err(|_| {
        format!(
            "{name:?} is not UTC, an offset like +02:00, or a time zone name like Europe/Berlin"
        )
    })
}

/// Checks that every rule's `to` names something that exists: a group, an alias, or a known
/// provider followed by `/model`. Run at start, once the providers are known.
pub fn check(
    routes: &[RouteDecl],
    providers: &[&str],
    aliases: &[&str],
    groups: &[&str],
) -> Result<(), String> {
    for (index, rule) in routes.iter().enumerate() {
        let to = rule.to.as_str();
        let known = groups.contains(&to)
            || aliases.contains(&to)
            || to.split_once('/').is_some_and(|(provider, model)| {
                !model.is_empty() && providers.contains(&provider)
            });
        if !known {
            return Err(format!(
                "routes[{index}].to: {to:?} is not a group, an alias, or `provider/model` of a \
                 known provider"
            ));
        }
    }
    Ok(())
}

/// Printable ASCII, as a header value must be to travel everywhere.
fn is_printable(text: &str) -> bool {
    (1..=MAX_TEXT).contains(&text.len()) && text.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> Result<Vec<RouteDecl>, String> {
        parse(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn a_full_rule_parses() {
        let routes = parse_text(
            r#"[{"name": "acme-weekend", "to": "acme-dedicated", "match": {
                  "header": {"name": "X-Tenant", "value": ["acme", "acme-eu"]},
                  "key_fingerprint": "0D62F3",
                  "model": "gpt-4*",
                  "prompt_tokens_above": 100000,
                  "time": {"days": ["sat", "Sun"], "hours": "22:00-06:00",
                           "time_zone": "Europe/Berlin"}}},
                {"match": {}, "to": "openai/gpt-4o-mini"}]"#,
        )
        .unwrap();
        assert_eq!(routes.len(), 2);
        let rule = &routes[0];
        assert_eq!(rule.name.as_deref(), Some("acme-weekend"));
        assert_eq!(rule.to, "acme-dedicated");
        let c = &rule.conditions;
        let header = c.header.as_ref().unwrap();
        assert_eq!(header.name, "x-tenant");
        assert_eq!(header.values, ["acme", "acme-eu"]);
        assert_eq!(c.key_fingerprint.as_deref(), Some("0d62f3"));
        assert_eq!(c.model.as_deref(), Some("gpt-4*"));
        assert_eq!(c.prompt_tokens_above, Some(100_000));
        let time = c.time.as_ref().unwrap();
        assert_eq!(time.days, [false, false, false, false, false, true, true]);
        assert_eq!(time.hours, Some((22 * 60, 6 * 60)));
        assert_eq!(time.time_zone, TimeZone::get("Europe/Berlin").unwrap());
        assert_eq!(routes[1].name, None);
        assert_eq!(routes[1].conditions, Conditions::default());
    }

    #[test]
    fn time_zones_are_utc_offsets_or_iana_names() {
        assert_eq!(time_zone("UTC").unwrap(), TimeZone::UTC);
        let offset = |seconds| TimeZone::fixed(Offset::from_seconds(seconds).unwrap());
        assert_eq!(time_zone("+02:00").unwrap(), offset(7200));
        assert_eq!(time_zone("-05:30").unwrap(), offset(-19800));
        assert!(time_zone("America/New_York").is_ok());
        for bad in ["+2", "+25:00", "Mars/Olympus", "", "+02:60"] {
            assert!(time_zone(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hours_are_a_window_of_the_day() {
        assert_eq!(hours("09:00-17:30"), Some((540, 1050)));
        assert_eq!(hours("22:00-06:00"), Some((1320, 360)));
        assert_eq!(hours("00:00-24:00"), Some((0, 1440)));
        for bad in [
            "9:00-17:00",
            "09:00-09:00",
            "24:00-01:00",
            "09:00",
            "10:61-11:00",
            "ab:cd-ef:gh",
        ] {
            assert_eq!(hours(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn each_mistake_names_its_place() {
        let cases = [
            (r#"{}"#, "routes: must be a list"),
            (r#"[3]"#, "routes[0]: must be a JSON object"),
            (r#"[{"match": {}}]"#, "routes[0].to: required"),
            (r#"[{"to": "a"}]"#, "routes[0].match: required"),
            (
                r#"[{"to": "a", "match": {}, "when": 1}]"#,
                "routes[0].when: unknown field",
            ),
            (
                r#"[{"to": "a", "match": {}, "name": "caf\u00e9"}]"#,
                "routes[0].name",
            ),
            (
                r#"[{"to": "a", "match": {"modle": "x"}}]"#,
                "routes[0].match.modle: unknown field",
            ),
            (
                r#"[{"to": "a", "match": {}}, {"to": "a", "match": {"model": ""}}]"#,
                "routes[1].match.model",
            ),
            (
                r#"[{"to": "a", "match": {"header": {"value": "x"}}}]"#,
                "routes[0].match.header.name: required",
            ),
            (
                r#"[{"to": "a", "match": {"header": {"name": "bad name", "value": "x"}}}]"#,
                "routes[0].match.header.name",
            ),
            (
                r#"[{"to": "a", "match": {"header": {"name": "X-Api-Key", "value": "sk"}}}]"#,
                "carries the caller's key",
            ),
            (
                r#"[{"to": "a", "match": {"header": {"name": "x-t"}}}]"#,
                "routes[0].match.header.value: required",
            ),
            (
                r#"[{"to": "a", "match": {"header": {"name": "x-t", "value": []}}}]"#,
                "routes[0].match.header.value",
            ),
            (
                r#"[{"to": "a", "match": {"header": {"name": "x-t", "value": ["a", 1]}}}]"#,
                "routes[0].match.header.value",
            ),
            (
                r#"[{"to": "a", "match": {"key_fingerprint": "xyz"}}]"#,
                "routes[0].match.key_fingerprint",
            ),
            (
                r#"[{"to": "a", "match": {"key_fingerprint": "0123456789abcdef0"}}]"#,
                "routes[0].match.key_fingerprint",
            ),
            (
                r#"[{"to": "a", "match": {"prompt_tokens_above": -1}}]"#,
                "routes[0].match.prompt_tokens_above",
            ),
            (
                r#"[{"to": "a", "match": {"time": {}}}]"#,
                "routes[0].match.time: needs",
            ),
            (
                r#"[{"to": "a", "match": {"time": {"days": ["saturday"]}}}]"#,
                "routes[0].match.time.days",
            ),
            (
                r#"[{"to": "a", "match": {"time": {"days": []}}}]"#,
                "routes[0].match.time.days",
            ),
            (
                r#"[{"to": "a", "match": {"time": {"hours": "22-6"}}}]"#,
                "routes[0].match.time.hours",
            ),
            (
                r#"[{"to": "a", "match": {"time": {"hours": "22:00-06:00", "time_zone": "Mars"}}}]"#,
                "routes[0].match.time.time_zone",
            ),
            (
                r#"[{"to": "a", "match": {"time": {"hours": "22:00-06:00", "tz": "UTC"}}}]"#,
                "routes[0].match.time.tz: unknown field",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_text(text).unwrap_err();
            assert!(
                err.contains(expected),
                "{text}: got {err:?}, want {expected:?}"
            );
        }
    }

    #[test]
    fn a_rule_must_lead_somewhere_known() {
        let routes = parse_text(
            r#"[{"to": "fast", "match": {}}, {"to": "groq/llama", "match": {}},
                {"to": "cheap", "match": {}}]"#,
        )
        .unwrap();
        check(&routes, &["openai", "groq"], &["fast"], &["cheap"]).unwrap();
        let err = check(&routes, &["openai", "groq"], &["fast"], &[]).unwrap_err();
        assert!(err.starts_with("routes[2].to: \"cheap\""), "{err}");
        let err = check(&routes[1..2], &["openai"], &[], &[]).unwrap_err();
        assert!(err.starts_with("routes[0].to"), "{err}");
        let bare = parse_text(r#"[{"to": "groq/", "match": {}}]"#).unwrap();
        assert!(check(&bare, &["groq"], &[], &[]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_json_parses_or_fails_with_a_place(
            value in crate::util::json::arbitrary_json(
                &["name", "match", "to", "header", "value", "key_fingerprint", "model",
                  "prompt_tokens_above", "time", "days", "hours", "time_zone"],
                &["X-Tenant", "acme", "gpt-4*", "sat", "22:00-06:00", "UTC", "+02:00",
                  "Europe/Berlin", "openai/gpt-4o", "0d62f3"],
            ),
        ) {
            // As a list of rules, and as one rule in a list.
            for value in [value.clone(), Value::Array(vec![value])] {
                if let Err(err) = parse(&value) {
                    proptest::prop_assert!(err.starts_with("routes"), "{}", err);
                }
            }
        }

        #[test]
        fn any_hours_text_parses_to_a_window_of_the_day_or_not_at_all(text in "[0-9:-]{0,12}") {
            if let Some((start, end)) = hours(&text) {
                proptest::prop_assert!(start < 1440 && end <= 1440 && start != end);
            }
        }
    }
}

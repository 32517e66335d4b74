//! The dashboard and sign-in pages: whole HTML documents that load nothing from elsewhere.

use std::{fmt::Write, sync::OnceLock};

use jiff::Timestamp;
use sha2::{Digest, Sha256};

use super::{
    chart::{self, Axis, Line},
    html::Escaped,
    KeySpend, Range, Report, Row,
};

/// The pages' only style, inline. The Content-Security-Policy allows exactly this text by its
/// hash, so the page needs no `unsafe-inline` and runs no script at all.
const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1d2430;--muted:#667085;--line:#d0d5dd;--bg:#fff;--card:#f6f7f9;--a:#2f6fb3;--b:#d9534f}\
@media (prefers-color-scheme:dark){:root{--fg:#e6e8eb;--muted:#98a2b3;--line:#3a4250;--bg:#14181f;--card:#1d232c;--a:#6aa5e8;--b:#f07b77}}\
*{box-sizing:border-box}\
body{margin:0 auto;max-width:1200px;padding:16px 20px 40px;font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--fg);background:var(--bg)}\
header{display:flex;flex-wrap:wrap;align-items:baseline;gap:8px 20px;margin-bottom:12px}\
h1{font-size:20px;margin:0}h2{font-size:15px;margin:20px 0 8px}\
nav a{padding:3px 10px;border:1px solid var(--line);border-radius:6px;text-decoration:none;color:var(--fg)}\
nav a[aria-current]{background:var(--fg);color:var(--bg);border-color:var(--fg)}\
.muted{color:var(--muted)}\
.totals{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px}\
.card{background:var(--card);border-radius:8px;padding:10px 14px}\
.card h2{margin:0;font-size:12px;font-weight:500;color:var(--muted);text-transform:uppercase;letter-spacing:.04em}\
.card p{margin:4px 0 0;font-size:22px;font-variant-numeric:tabular-nums}\
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(420px,100%),1fr));gap:10px 20px}\
figure{margin:0}figcaption{font-weight:600;margin:14px 0 4px}\
svg{width:100%;height:auto;display:block}\
.grid{stroke:var(--line);stroke-width:1}.tick,.legend{fill:var(--muted);font-size:11px}\
.bar{fill:var(--a)}.line{fill:none;stroke-width:2}\
.a{stroke:var(--a);fill:var(--a)}.line.a{fill:none}.b{stroke:var(--b);fill:var(--b)}.line.b{fill:none}\
.tables{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(640px,100%),1fr));gap:0 24px}\
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}\
th,td{padding:4px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}\
th:first-child,td:first-child{text-align:left;white-space:normal;overflow-wrap:anywhere;min-width:10em}\
.tables>div{overflow-x:auto}\
th{font-weight:600;color:var(--muted)}\
meter{width:90px}\
.sign-in{max-width:360px;margin:15vh auto}\
.sign-in form{display:grid;gap:8px;margin-top:16px}\
input,button{font:inherit;padding:8px 10px;border-radius:6px;border:1px solid var(--line);background:var(--bg);color:var(--fg)}\
button{background:var(--fg);color:var(--bg);cursor:pointer}\
.error{color:var(--b)}\
";

/// The Content-Security-Policy both pages are written for: nothing from anywhere, no script,
/// the one inline style by its hash, forms only to this origin. The pages carry it in a
/// `<meta>` too; sent as a header it should add `frame-ancestors 'none'`, which a `<meta>`
/// cannot.
pub fn content_security_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        format!(
            "default-src 'none'; style-src 'sha256-{}'; form-action 'self'; base-uri 'none'",
            base64(&Sha256::digest(STYLE.as_bytes()))
        )
    })
}

/// The dashboard page for a report.
///
/// Stable hooks for tests and scrapers: `data-total="requests"`, `"tokens"`,
/// `"input_tokens"`, `"output_tokens"`, `"cost_usd"`, `"errors"`, `"error_rate"` (a percent),
/// `"ttfb_p50_ms"` and `"ttfb_p95_ms"` hold the totals as plain numbers (dollars to the
/// millionth, `-` when there is nothing to measure); each key's budget row is
/// `<tr data-key="name" data-spend="usd">`; each breakdown is
/// `<table data-breakdown="provider|model|key|status">` with rows `<tr data-row="label">`;
/// each chart is `<svg data-chart="...">`.
pub fn render(report: &Report) -> String {
    let mut page = String::with_capacity(64 * 1024);
    head(&mut page, "llm-proxy dashboard");
    page.push_str(r#"<header><h1>llm-proxy</h1><nav aria-label="Range">"#);
    for range in Range::ALL {
        let current = if range == report.range {
            r#" aria-current="page""#
        } else {
            ""
        };
        let _ = write!(
            page,
            r#" <a href="?range={0}"{current}>{0}</a>"#,
            range.as_str()
        );
    }
    let _ = write!(
        page,
        r#"</nav><p class="muted">{}, to {} UTC</p><form method="post" action="/dashboard/sign-out"><button type="submit">Sign out</button></form></header>"#,
        report.range.label(),
        clock(report.now_ms),
    );
    totals(&mut page, report);
    charts(&mut page, report);
    page.push_str(r#"<section class="tables">"#);
    budgets(&mut page, &report.keys);
    for (id, name, rows) in [
        ("provider", "Provider", &report.by_provider),
        ("model", "Model", &report.by_model),
        ("key", "Key", &report.by_key),
        ("status", "Status", &report.by_status),
    ] {
        breakdown(&mut page, id, name, rows);
    }
    page.push_str("</section></body></html>\n");
    page
}

/// The sign-in page: one field, `token`, POSTed to `/dashboard/sign-in`; `error` (a reason
/// the last try failed) is shown above it.
pub fn render_sign_in(error: Option<&str>) -> String {
    let mut page = String::with_capacity(4096);
    head(&mut page, "Sign in · llm-proxy dashboard");
    page.push_str(r#"<main class="sign-in"><h1>llm-proxy dashboard</h1>"#);
    if let Some(error) = error {
        let _ = write!(
            page,
            r#"<p class="error" role="alert">{}</p>"#,
            Escaped(error)
        );
    }
    page.push_str(concat!(
        r#"<form method="post" action="/dashboard/sign-in">"#,
        r#"<label for="token">Admin or dashboard token</label>"#,
        r#"<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>"#,
        r#"<button type="submit">Sign in</button></form></main></body></html>"#,
        "\n"
    ));
    page
}

fn head(page: &mut String, title: &str) {
    let _ = write!(
        page,
        concat!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            "<meta http-equiv=\"Content-Security-Policy\" content=\"{}\">",
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
            "<meta name=\"referrer\" content=\"no-referrer\">",
            "<title>{}</title><style>{}</style></head><body>"
        ),
        content_security_policy(),
        Escaped(title),
        STYLE,
    );
}

fn totals(page: &mut String, report: &Report) {
    let t = &report.totals;
    let dash = || "-".to_owned();
    let cards = [
        ("Requests", "requests", t.requests.to_string(), ""),
        ("Tokens", "tokens", t.tokens().to_string(), ""),
        ("Tokens in", "input_tokens", t.input_tokens.to_string(), ""),
        (
            "Tokens out",
            "output_tokens",
            t.output_tokens.to_string(),
            "",
        ),
        ("Cost", "cost_usd", usd(t.cost_usd), " USD"),
        ("Errors", "errors", t.errors.to_string(), ""),
        ("Error rate", "error_rate", percent(t.error_rate()), "%"),
        (
            "TTFB p50",
            "ttfb_p50_ms",
            report.ttfb_p50_ms.map_or_else(dash, ms),
            " ms",
        ),
        (
            "TTFB p95",
            "ttfb_p95_ms",
            report.ttfb_p95_ms.map_or_else(dash, ms),
            " ms",
        ),
    ];
    page.push_str(r#"<section class="totals">"#);
    for (title, id, value, unit) in cards {
        let _ = write!(
            page,
            r#"<div class="card"><h2>{title}</h2><p><span data-total="{id}">{value}</span>{unit}</p></div>"#
        );
    }
    page.push_str("</section>");
    if t.unpriced > 0 {
        let _ = write!(
            page,
            r#"<p class="muted">{} requests have no price in the table and add nothing to the cost.</p>"#,
            t.unpriced
        );
    }
}

fn charts(page: &mut String, report: &Report) {
    let axis = Axis {
        range: report.range,
        starts: report.buckets.iter().map(|b| b.start_ms).collect(),
        now_ms: report.now_ms,
    };
    let each = |figure: fn(&super::Bucket) -> f64| -> Vec<f64> {
        report.buckets.iter().map(figure).collect()
    };
    let ttfb = [
        Line {
            name: "p50",
            class: "a",
            values: report.buckets.iter().map(|b| b.ttfb_p50_ms).collect(),
        },
        Line {
            name: "p95",
            class: "b",
            values: report.buckets.iter().map(|b| b.ttfb_p95_ms).collect(),
        },
    ];
    let errors = [Line {
        name: "errors",
        class: "b",
        values: report
            .buckets
            .iter()
            .map(|b| (b.figures.requests > 0).then(|| b.figures.error_rate() * 100.0))
            .collect(),
    }];
    let figures = [
        (
            "Requests",
            chart::bars(
                "requests",
                "Requests",
                &axis,
                &each(|b| b.figures.requests as f64),
                count,
            ),
        ),
        (
            "Tokens (in and out)",
            chart::bars(
                "tokens",
                "Tokens",
                &axis,
                &each(|b| b.figures.tokens() as f64),
                count,
            ),
        ),
        (
            "Cost (USD)",
            chart::bars(
                "cost",
                "Cost in USD",
                &axis,
                &each(|b| b.figures.cost_usd),
                usd,
            ),
        ),
        (
            "Error rate (status 400 and above)",
            chart::lines("error_rate", "Error rate", &axis, &errors, |v| {
                percent(v / 100.0) + "%"
            }),
        ),
        (
            "Time to first byte (p50, p95)",
            chart::lines("ttfb", "Time to first byte", &axis, &ttfb, |v| {
                ms(v) + " ms"
            }),
        ),
    ];
    page.push_str(r#"<section class="charts">"#);
    for (caption, svg) in figures {
        let _ = write!(
            page,
            "<figure><figcaption>{caption}</figcaption>{svg}</figure>"
        );
    }
    page.push_str("</section>");
}

fn budgets(page: &mut String, keys: &[KeySpend]) {
    page.push_str(
        r#"<div><h2>Keys: spend against budget</h2><table data-table="budgets"><thead><tr><th>Key</th><th>Owner</th><th>State</th><th>Period</th><th>Spend (USD)</th><th>Budget (USD)</th><th>Used</th></tr></thead><tbody>"#,
    );
    if keys.is_empty() {
        page.push_str(r#"<tr><td class="muted" colspan="7">No keys issued.</td></tr>"#);
    }
    for key in keys {
        let period = key.period.as_deref().unwrap_or("in range");
        let _ = write!(
            page,
            r#"<tr data-key="{}" data-spend="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"#,
            Escaped(&key.name),
            usd(key.spend_usd),
            Escaped(&key.name),
            Escaped(key.owner.as_deref().unwrap_or("")),
            key.state,
            Escaped(period),
            usd(key.spend_usd),
        );
        match key.budget_usd {
            Some(budget) => {
                let used = if budget > 0.0 {
                    key.spend_usd / budget
                } else {
                    1.0
                };
                let _ = write!(
                    page,
                    r#"<td>{}</td><td><meter min="0" max="1" low="0.8" high="0.95" optimum="0" value="{used:.4}">{}%</meter> {}%</td></tr>"#,
                    usd(budget),
                    percent(used),
                    percent(used),
                );
            }
            None => page.push_str(r#"<td class="muted">none</td><td></td></tr>"#),
        }
    }
    page.push_str("</tbody></table></div>");
}

fn breakdown(page: &mut String, id: &str, name: &str, rows: &[Row]) {
    let _ = write!(
        page,
        r#"<div><h2>By {id}</h2><table data-breakdown="{id}"><thead><tr><th>{name}</th><th>Requests</th><th>Errors</th><th>Error rate</th><th>Tokens in</th><th>Tokens out</th><th>Cost (USD)</th></tr></thead><tbody>"#
    );
    if rows.is_empty() {
        page.push_str(r#"<tr><td class="muted" colspan="7">No requests in this range.</td></tr>"#);
    }
    for row in rows {
        let f = &row.figures;
        let _ = write!(
            page,
            r#"<tr data-row="{0}"><td>{0}</td><td>{1}</td><td>{2}</td><td>{3}%</td><td>{4}</td><td>{5}</td><td>{6}</td></tr>"#,
            Escaped(&row.label),
            f.requests,
            f.errors,
            percent(f.error_rate()),
            f.input_tokens,
            f.output_tokens,
            usd(f.cost_usd),
        );
    }
    page.push_str("</tbody></table></div>");
}

fn clock(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|time| time.strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

fn count(value: f64) -> String {
    format!("{value:.0}")
}

/// Dollars to the millionth (a cheap request costs a few of them), without trailing zeros.
fn usd(value: f64) -> String {
    let text = format!("{value:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    match text {
        "" | "-0" => "0".to_owned(),
        text => text.to_owned(),
    }
}

/// A share as a percent with one decimal.
fn percent(share: f64) -> String {
    format!("{:.1}", share * 100.0)
}

/// Milliseconds: whole ones, or one decimal below 10.
fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// Standard base64 with padding, for the style's hash in the policy (RFC 4648).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, byte)| n | u32::from(*byte) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::{KeyRow, UsageRecord};

    const NOW: i64 = 1_796_223_845_678;

    fn record(key_id: Option<&str>, status: u16, cost_usd: f64) -> UsageRecord {
        UsageRecord {
            time_ms: NOW - 60_000,
            key_id: key_id.map(str::to_owned),
            caller: None,
            route: "chat".into(),
            provider: Some("openai".into()),
            model: Some("gpt-4o-mini".into()),
            group: None,
            deployment: None,
            status,
            input_tokens: 19,
            output_tokens: 9,
            cached_tokens: 0,
            cost_usd: Some(cost_usd),
            latency_ms: 40.0,
            ttfb_ms: Some(30.0),
            request_id: "r".into(),
            cached: false,
        }
    }

    fn key(id: &str, name: &str) -> KeyRow {
        KeyRow {
            owner: Some("<b>team</b>".into()),
            budget_usd: Some(20.0),
            budget_period: Some("month".into()),
            ..KeyRow::new(id.into(), String::new(), "lp-AbCdE".into(), name.into(), 0)
        }
    }

    /// The text of the element carrying `hook` (an attribute and its value), up to its end tag.
    fn text_of<'a>(page: &'a str, hook: &str) -> &'a str {
        let at = page.find(hook).unwrap_or_else(|| panic!("no {hook}"));
        let rest = &page[at..];
        let start = rest.find('>').unwrap() + 1;
        let end = rest.find("</").unwrap();
        &rest[start..end]
    }

    fn page() -> String {
        let keys = [key("key_a", "ci")];
        let records = [
            record(Some("key_a"), 200, 0.001646),
            record(Some("key_a"), 200, 0.5),
            record(None, 429, 0.0),
        ];
        render(&Report::build(&records, &keys, Range::Hour, NOW))
    }

    #[test]
    fn the_totals_carry_stable_hooks_with_plain_numbers() {
        let page = page();
        assert_eq!(text_of(&page, r#"data-total="requests""#), "3");
        assert_eq!(text_of(&page, r#"data-total="tokens""#), "84");
        assert_eq!(text_of(&page, r#"data-total="cost_usd""#), "0.501646");
        assert_eq!(text_of(&page, r#"data-total="errors""#), "1");
        assert_eq!(text_of(&page, r#"data-total="error_rate""#), "33.3");
        assert_eq!(text_of(&page, r#"data-total="ttfb_p50_ms""#), "30");
        assert!(
            page.contains(r#"<tr data-key="ci" data-spend="0.501646">"#),
            "{page}"
        );
        assert!(page.contains(r#"<tr data-row="openai">"#));
        assert!(page.contains(r#"<tr data-row="429">"#));
        for chart in ["requests", "tokens", "cost", "error_rate", "ttfb"] {
            assert!(
                page.contains(&format!(r#"<svg data-chart="{chart}""#)),
                "{chart}"
            );
        }
    }

    #[test]
    fn the_page_offers_a_sign_out() {
        let report = Report::build(&[], &[], Range::Day, 1_700_000_000_000);
        assert!(render(&report).contains(r#"action="/dashboard/sign-out""#));
    }

    #[test]
    fn the_range_switch_links_every_range_and_marks_the_current_one() {
        let page = page();
        assert!(page.contains(r#"<a href="?range=1h" aria-current="page">1h</a>"#));
        assert!(page.contains(r#"<a href="?range=1d">1d</a>"#));
        assert!(page.contains(r#"<a href="?range=30d">30d</a>"#));
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_runs_no_script() {
        for page in [page(), render_sign_in(Some("wrong token"))] {
            assert!(page.starts_with("<!doctype html>"));
            assert!(!page.contains("<script"), "no script");
            assert!(!page.contains(" src="), "no source to fetch");
            assert!(!page.contains("<link"), "no stylesheet to fetch");
            assert!(!page.contains("url("), "no url in the style");
            // The only absolute URL is the SVG namespace, which is a name, not a fetch.
            let urls = page.matches("http://").count() + page.matches("https://").count();
            assert_eq!(urls, page.matches("http://www.w3.org/2000/svg").count());
            assert!(
                !page.contains(" style="),
                "the policy allows no inline style attribute"
            );
            assert!(page.contains(content_security_policy()));
        }
    }

    #[test]
    fn the_policy_allows_the_style_by_its_hash() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(
            base64(&Sha256::digest(b"")),
            "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
        );
        assert!(content_security_policy().starts_with("default-src 'none'; style-src 'sha256-"));
    }

    #[test]
    fn a_hostile_key_name_is_shown_as_text() {
        let hostile = r#"<script>alert(1)</script>" onmouseover="x"#;
        let keys = [key("key_a", hostile)];
        let records = [UsageRecord {
            model: Some("<img src=x>".into()),
            provider: Some("a&b".into()),
            ..record(Some("key_a"), 200, 1.0)
        }];
        let page = render(&Report::build(&records, &keys, Range::Hour, NOW));
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"));
        assert!(!page.contains("<b>team"));
        assert!(!page.contains(r#"" onmouseover"#));
        let escaped = "&lt;script&gt;alert(1)&lt;/script&gt;&quot; onmouseover=&quot;x";
        assert!(
            page.contains(&format!(r#"<tr data-key="{escaped}" data-spend="1">"#)),
            "{page}"
        );
        assert!(page.contains(r#"<tr data-row="a&amp;b">"#));
        assert!(page.contains("&lt;img src=x&gt;"));
    }

    #[test]
    fn sign_in_posts_the_token_and_escapes_the_error() {
        let page = render_sign_in(None);
        assert!(page.contains(r#"<form method="post" action="/dashboard/sign-in">"#));
        assert!(page.contains(r#"name="token" type="password""#));
        assert!(!page.contains("role=\"alert\""));
        let page = render_sign_in(Some("<b>no</b>"));
        assert!(page.contains(r#"<p class="error" role="alert">&lt;b&gt;no&lt;/b&gt;</p>"#));
    }

    #[test]
    fn an_empty_report_renders_with_dashes_and_empty_tables() {
        let page = render(&Report::build(&[], &[], Range::Month30, NOW));
        assert_eq!(text_of(&page, r#"data-total="requests""#), "0");
        assert_eq!(text_of(&page, r#"data-total="cost_usd""#), "0");
        assert_eq!(text_of(&page, r#"data-total="ttfb_p95_ms""#), "-");
        assert!(page.contains("No keys issued."));
        assert!(page.contains("No requests in this range."));
    }

    #[test]
    fn dollars_show_to_the_millionth_without_trailing_zeros() {
        assert_eq!(usd(0.0), "0");
        assert_eq!(usd(0.001646), "0.001646");
        assert_eq!(usd(12.5), "12.5");
        assert_eq!(usd(3.0), "3");
        assert_eq!(usd(0.0000001), "0");
    }
}

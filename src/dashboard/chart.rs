//! Charts as inline SVG, drawn on the server: bars for amounts, lines for rates and latencies.

use std::fmt::Write;

use jiff::Timestamp;

use super::{html::Escaped, Range};

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 170.0;
/// Room for the value axis's labels on the left and the time axis's below.
const LEFT: f64 = 56.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;

/// The times under a chart: each bucket's start, and when the last one ends (now).
pub struct Axis {
    pub range: Range,
    pub starts: Vec<i64>,
    pub now_ms: i64,
}

/// One line of a line chart: its name (for the legend and tooltips), its CSS class, and a
/// value per bucket (`None` where the bucket had nothing to measure).
pub struct Line<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub values: Vec<Option<f64>>,
}

/// A bar per bucket, each with its figure as a tooltip (SVG `<title>`, so no script).
pub fn bars(
    id: &str,
    title: &str,
    axis: &Axis,
    values: &[f64],
    format: fn(f64) -> String,
) -> String {
    let top = nice_ceiling(values.iter().copied().fold(0.0, f64::max));
    let mut svg = open(id, title, axis, top, format);
    let slot = plot_width() / values.len().max(1) as f64;
    for (i, value) in values.iter().enumerate() {
        if *value <= 0.0 {
            continue;
        }
        let height = value / top * plot_height();
        let _ = write!(
            svg,
            r#"<rect class="bar" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}"><title>{} · {}</title></rect>"#,
            LEFT + i as f64 * slot + slot * 0.1,
            TOP + plot_height() - height,
            slot * 0.8,
            height,
            time_label(axis.range, axis.starts[i]),
            format(*value),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// Lines over the buckets, broken where a bucket has no value, with a legend.
pub fn lines(
    id: &str,
    title: &str,
    axis: &Axis,
    lines: &[Line<'_>],
    format: fn(f64) -> String,
) -> String {
    let highest = lines
        .iter()
        .flat_map(|line| line.values.iter().flatten())
        .copied()
        .fold(0.0, f64::max);
    let top = nice_ceiling(highest);
    let mut svg = open(id, title, axis, top, format);
    let slot = plot_width() / axis.starts.len().max(1) as f64;
    for (n, line) in lines.iter().enumerate() {
        let point = |i: usize, value: f64| {
            (
                LEFT + (i as f64 + 0.5) * slot,
                TOP + plot_height() - value / top * plot_height(),
            )
        };
        let mut path = String::new();
        let mut pen_down = false;
        for (i, value) in line.values.iter().enumerate() {
            match value {
                Some(value) => {
                    let (x, y) = point(i, *value);
                    let _ = write!(path, "{}{x:.1} {y:.1} ", if pen_down { 'L' } else { 'M' });
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = write!(
            svg,
            r#"<path class="line {}" d="{}"/>"#,
            line.class,
            path.trim_end()
        );
        for (i, value) in line.values.iter().enumerate() {
            if let Some(value) = value {
                let (x, y) = point(i, *value);
                let _ = write!(
                    svg,
                    r#"<circle class="dot {}" cx="{x:.1}" cy="{y:.1}" r="2.5"><title>{} · {} {}</title></circle>"#,
                    line.class,
                    time_label(axis.range, axis.starts[i]),
                    Escaped(line.name),
                    format(*value),
                );
            }
        }
        // The legend, top right, one entry per line.
        let x = WIDTH - RIGHT - 70.0 * (lines.len() - n) as f64;
        let _ = write!(
            svg,
            r#"<rect class="key {}" x="{x:.1}" y="{TOP}" width="10" height="10"/><text class="legend" x="{:.1}" y="{:.1}">{}</text>"#,
            line.class,
            x + 14.0,
            TOP + 9.0,
            Escaped(line.name),
        );
    }
    svg.push_str("</svg>");
    svg
}

fn plot_width() -> f64 {
    WIDTH - LEFT - RIGHT
}

fn plot_height() -> f64 {
    HEIGHT - TOP - BOTTOM
}

/// The `<svg>` with its title, grid lines at 0, half and the top, and the time axis's labels:
/// the first bucket's start, the middle one's and now.
fn open(id: &str, title: &str, axis: &Axis, top: f64, format: fn(f64) -> String) -> String {
    let mut svg = String::with_capacity(8192);
    let _ = write!(
        svg,
        r#"<svg data-chart="{id}" role="img" aria-labelledby="chart-{id}" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg"><title id="chart-{id}">{}</title>"#,
        Escaped(title),
    );
    for share in [0.0, 0.5, 1.0] {
        let y = TOP + plot_height() * (1.0 - share);
        let _ = write!(
            svg,
            r#"<line class="grid" x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}"/><text class="tick" x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            format(top * share),
        );
    }
    let baseline = HEIGHT - 6.0;
    let middle = axis.starts.get(axis.starts.len() / 2).copied();
    for (x, anchor, time) in [
        (LEFT, "start", axis.starts.first().copied()),
        (LEFT + plot_width() / 2.0, "middle", middle),
        (WIDTH - RIGHT, "end", Some(axis.now_ms)),
    ] {
        if let Some(time) = time {
            let _ = write!(
                svg,
                r#"<text class="tick" x="{x:.1}" y="{baseline:.1}" text-anchor="{anchor}">{}</text>"#,
                time_label(axis.range, time),
            );
        }
    }
    svg
}

/// A time as the range reads best, in UTC: a clock time over a day or less, a date over 30
/// days.
pub fn time_label(range: Range, ms: i64) -> String {
    let Ok(time) = Timestamp::from_millisecond(ms) else {
        return String::new();
    };
    match range {
        Range::Hour | Range::Day => time.strftime("%H:%M").to_string(),
        Range::Month30 => time.strftime("%b %d %H:%M").to_string(),
    }
}

/// The top of a chart's scale: the highest value rounded up to 1, 2 or 5 times a power of
/// ten, so the grid's labels are round; 1 for a chart of nothing.
fn nice_ceiling(highest: f64) -> f64 {
    if !(highest.is_finite() && highest > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(highest.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|step| step * power)
        .find(|top| *top >= highest * (1.0 - 1e-9))
        .unwrap_or(10.0 * power)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn axis(buckets: usize) -> Axis {
        Axis {
            range: Range::Hour,
            starts: (0..buckets as i64).map(|i| i * 60_000).collect(),
            now_ms: buckets as i64 * 60_000 - 1,
        }
    }

    #[test]
    fn scales_top_out_at_round_numbers() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(f64::NAN), 1.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(11.0), 20.0);
        assert_eq!(nice_ceiling(0.0032), 0.005);
        assert_eq!(nice_ceiling(420.0), 500.0);
    }

    #[test]
    fn a_bar_is_drawn_for_each_bucket_with_something_in_it() {
        let svg = bars(
            "requests",
            "Requests",
            &axis(4),
            &[0.0, 3.0, 0.0, 6.0],
            |v| format!("{v}"),
        );
        assert!(svg.starts_with(r#"<svg data-chart="requests""#), "{svg}");
        assert!(svg.ends_with("</svg>"));
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 2);
        assert!(svg.contains("<title>00:03 · 6</title>"), "{svg}");
        // The tallest bar reaches the top of a scale of 10.
        assert!(svg.contains(">10</text>"), "{svg}");
    }

    #[test]
    fn lines_break_where_a_bucket_has_no_value() {
        let line = Line {
            name: "p50",
            class: "p50",
            values: vec![Some(1.0), Some(2.0), None, Some(4.0)],
        };
        let svg = lines("ttfb", "TTFB", &axis(4), &[line], |v| format!("{v}"));
        let path = svg
            .split(r#" d=""#)
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(path.matches('M').count(), 2, "{path}");
        assert_eq!(path.matches('L').count(), 1, "{path}");
        assert_eq!(svg.matches("<circle").count(), 3);
    }
}

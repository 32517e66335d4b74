//! Percentiles of a set of durations, in milliseconds for the report.

use std::time::Duration;

use serde::Serialize;

#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentiles (the smallest sample at or above the given share); zeros when
/// there are no samples.
pub fn percentiles(samples: &[Duration]) -> Percentiles {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let at = |share: f64| -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let rank = (share * sorted.len() as f64).ceil() as usize;
        ms(sorted[rank.clamp(1, sorted.len()) - 1])
    };
    Percentiles {
        samples: sorted.len(),
        p50_ms: at(0.50),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

/// Milliseconds, to the tenth of a microsecond.
pub fn ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1e7).round() / 1e4
}

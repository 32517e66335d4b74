//! The dashboard: usage records summed into a report, and the report as one self-contained page.

mod chart;
mod html;
mod render;
mod report;

pub use crate::store::{KeyRow, UsageRecord};
pub use render::{content_security_policy, render, render_sign_in};
pub use report::{Bucket, Figures, KeySpend, Range, Report, Row, BUCKETS, MAX_ROWS, NONE, OTHER};

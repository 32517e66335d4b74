//! What to call and in what order: the targets a request may go to, a group's choice among
//! its deployments and their health, the retry policy, and the exchange that tries them and
//! answers in the door's shape.

pub mod ejections;
pub mod exchange;
pub mod health;
pub mod retry;
pub mod routing;
pub mod rules;
pub mod targets;

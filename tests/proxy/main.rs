//! The one integration test binary: the proxy on a loopback port in front of mock upstreams
//! that speak each provider's documented wire format.

mod admin;
mod admission;
mod anthropic;
mod cache;
mod common;
mod cors;
mod cost;
mod dashboard;
mod errors;
mod faults;
mod front_door;
mod gemini;
mod grafana;
mod groups;
mod keys;
mod messages;
mod observability;
mod openai;
mod process;
mod reliability;
mod rules;
mod shared;
mod streaming;
mod tls;
mod tools;

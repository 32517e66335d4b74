//! Which of a group's deployments to try, in what order: pure functions of the group, what is
//! known of each deployment (health, requests in flight, latency) and what the request needs.
//!
//! [`order`] returns every deployment that may serve the request, the chosen one first, then
//! the next the same strategy would choose among the others, and so on: the exchange tries
//! targets in order, so failing over is choosing again without the one that failed.

use std::time::Duration;

use crate::config::{
    groups::{DeploymentDecl, GroupDecl, Strategy},
    prices::Price,
};

/// The output tokens a request without `max_tokens` is costed for.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 1024;

/// What a request needs of a deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    /// See [`Needs::estimate_input_tokens`].
    pub input_tokens: u64,
    /// The request's `max_tokens`, when it has one.
    pub max_tokens: Option<u64>,
    pub tools: bool,
    pub images: bool,
    pub json_schema: bool,
}

impl Needs {
    /// The input tokens of a body of `body_bytes` bytes: one token per four bytes. It costs
    /// nothing to compute, is close for English prose and JSON, and errs high for the base64 of
    /// images, which is the safe side for a context check.
    pub fn estimate_input_tokens(body_bytes: usize) -> u64 {
        body_bytes as u64 / 4
    }

    fn output_tokens(&self) -> u64 {
        self.max_tokens.unwrap_or(DEFAULT_OUTPUT_TOKENS)
    }
}

/// What is known of one deployment when a request arrives.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Observed {
    /// When it was ejected (on the health clock), while it is out: `None` when it may take
    /// requests, a probe included.
    pub ejected_at: Option<Duration>,
    /// Requests sent to it and not yet answered.
    pub in_flight: u64,
    /// The peak-EWMA of its time to first byte, in seconds, once there is a sample.
    pub ttfb: Option<f64>,
}

/// The per-request inputs of a choice that are not facts about deployments.
pub struct Pick<'p> {
    /// Random draws for `weighted` and `latency`; seed it per request (the exchange uses
    /// [`crate::gateway::retry::random`]).
    pub rng: Rng,
    /// For `round_robin`: a number taken from the group's counter, one per request.
    pub ticket: u64,
    /// For a sticky `weighted` group: [`sticky_hash`] of the caller's key fingerprint or of
    /// the header's value. The same hash always draws the same arm.
    pub sticky: Option<u64>,
    /// The price of a deployment: its `price` override, else the shipped table's entry. An
    /// unknown price ranks as the most expensive.
    pub price_of: &'p dyn Fn(&DeploymentDecl) -> Option<Price>,
}

/// The order in which to try `group`'s deployments (indices into `group.deployments`;
/// `observed` is parallel to it).
///
/// Only deployments that can serve the request are listed (it fits their context, they can do
/// what it uses); when none can, all are, and the upstream says why. Ejected deployments are
/// skipped; when every one is ejected, the one ejected longest ago is tried alone: the proxy
/// never refuses everything.
pub fn order(
    group: &GroupDecl,
    observed: &[Observed],
    needs: &Needs,
    pick: &mut Pick<'_>,
) -> Vec<usize> {
    debug_assert_eq!(group.deployments.len(), observed.len());
    let all = 0..group.deployments.len();
    let mut capable: Vec<usize> = all
        .clone()
        .filter(|&i| can_serve(&group.deployments[i], needs))
        .collect();
    if capable.is_empty() {
        capable = all.collect();
    }
    let healthy: Vec<usize> = capable
        .iter()
        .copied()
        .filter(|&i| observed[i].ejected_at.is_none())
        .collect();
    if healthy.is_empty() {
        return capable
            .into_iter()
            .min_by_key(|&i| observed[i].ejected_at)
            .into_iter()
            .collect();
    }
    match group.strategy {
        Strategy::Weighted => {
            let weights = |i: usize| group.deployments[i].weight;
            match pick.sticky {
                Some(hash) => weighted(healthy, weights, &mut Rng::new(hash)),
                None => weighted(healthy, weights, &mut pick.rng),
            }
        }
        Strategy::RoundRobin => {
            let mut healthy = healthy;
            let start = (pick.ticket % healthy.len() as u64) as usize;
            healthy.rotate_left(start);
            healthy
        }
        Strategy::LeastBusy => {
            let mut healthy = healthy;
            healthy.sort_by_key(|&i| observed[i].in_flight);
            healthy
        }
        Strategy::Latency => latency(healthy, observed, &mut pick.rng),
        Strategy::Cost => {
            let cost = |i: usize| {
                (pick.price_of)(&group.deployments[i]).map_or(f64::INFINITY, |price| {
                    (needs.input_tokens as f64 * price.input
                        + needs.output_tokens() as f64 * price.output)
                        / 1e6
                })
            };
            let mut costed: Vec<(f64, usize)> = healthy.into_iter().map(|i| (cost(i), i)).collect();
            // Stable: equal prices keep the listed order.
            costed.sort_by(|a, b| a.0.total_cmp(&b.0));
            costed.into_iter().map(|(_, i)| i).collect()
        }
        Strategy::Ordered => healthy,
    }
}

/// Whether the request fits the deployment's context and uses nothing it cannot do.
pub fn can_serve(deployment: &DeploymentDecl, needs: &Needs) -> bool {
    let can = deployment.capabilities;
    let fits = deployment.context.is_none_or(|context| {
        needs
            .input_tokens
            .saturating_add(needs.max_tokens.unwrap_or(0))
            <= context
    });
    fits && (can.tools || !needs.tools)
        && (can.images || !needs.images)
        && (can.json_schema || !needs.json_schema)
}

/// Draws without replacement, each draw by weight among those left.
fn weighted(mut left: Vec<usize>, weight: impl Fn(usize) -> f64, rng: &mut Rng) -> Vec<usize> {
    let mut order = Vec::with_capacity(left.len());
    while left.len() > 1 {
        let total: f64 = left.iter().map(|&i| weight(i)).sum();
        let mut point = rng.next_f64() * total;
        let mut chosen = left.len() - 1;
        for (at, &i) in left.iter().enumerate() {
            point -= weight(i);
            if point < 0.0 {
                chosen = at;
                break;
            }
        }
        order.push(left.remove(chosen));
    }
    order.extend(left);
    order
}

/// Power of two choices: of two drawn at random, the one of lower peak-EWMA time to first
/// byte times its requests in flight plus one (Linkerd's cost, so a fast deployment that is
/// piling up requests gives way). A deployment without a sample is taken first, so each gets
/// measured.
fn latency(mut left: Vec<usize>, observed: &[Observed], rng: &mut Rng) -> Vec<usize> {
    let cost = |i: usize| {
        let seen = observed[i];
        seen.ttfb.unwrap_or(0.0) * (seen.in_flight + 1) as f64
    };
    let mut order = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let chosen = match left.iter().position(|&i| observed[i].ttfb.is_none()) {
            Some(unmeasured) => unmeasured,
            None if left.len() == 1 => 0,
            None => {
                let a = rng.below(left.len());
                let b = (a + 1 + rng.below(left.len() - 1)) % left.len();
                if cost(left[b]) < cost(left[a]) {
                    b
                } else {
                    a
                }
            }
        };
        order.push(left.remove(chosen));
    }
    order
}

/// A stable 64-bit hash (FNV-1a, then SplitMix64's finalizer to spread it) of a sticky value:
/// the same caller draws the same arm on every worker and after a restart.
pub fn sticky_hash(value: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &byte in value {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(hash)
}

/// SplitMix64: small, fast, and good enough to split traffic; no crate needed. Not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// A number in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A number in [0, n), for n > 0.
    fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n
    }
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deployment's own price override: the table-less price for these tests.
    fn declared_price(deployment: &DeploymentDecl) -> Option<Price> {
        deployment.price
    }
    use crate::config::groups::Capabilities;

    fn group(strategy: Strategy, deployments: &[(&str, f64)]) -> GroupDecl {
        GroupDecl {
            name: "g".into(),
            strategy,
            sticky: None,
            cache_ttl: None,
            deployments: deployments
                .iter()
                .map(|&(model, weight)| DeploymentDecl {
                    provider: "p".into(),
                    model: model.into(),
                    base_url: None,
                    api_key_env: None,
                    weight,
                    context: None,
                    capabilities: Capabilities::ALL,
                    price: None,
                })
                .collect(),
        }
    }

    fn pick(seed: u64) -> Pick<'static> {
        Pick {
            rng: Rng::new(seed),
            ticket: 0,
            sticky: None,
            price_of: &declared_price,
        }
    }

    fn up(n: usize) -> Vec<Observed> {
        vec![Observed::default(); n]
    }

    #[test]
    fn weights_give_the_configured_split_over_2000_picks() {
        let group = group(Strategy::Weighted, &[("a", 3.0), ("b", 1.0), ("c", 0.0001)]);
        let mut rng_pick = pick(42);
        let mut firsts = [0u32; 3];
        for _ in 0..2000 {
            let order = order(&group, &up(3), &Needs::default(), &mut rng_pick);
            assert_eq!(order.len(), 3, "every deployment is listed once");
            firsts[order[0]] += 1;
        }
        // 3:1 of 2000 is 1500 and 500, with a standard deviation of about 19: five of them
        // either side.
        assert!((1403..=1597).contains(&firsts[0]), "{firsts:?}");
        assert!((403..=597).contains(&firsts[1]), "{firsts:?}");
        assert!(firsts[2] <= 3, "{firsts:?}");
    }

    #[test]
    fn after_the_first_the_next_is_drawn_by_weight_among_the_others() {
        let group = group(Strategy::Weighted, &[("a", 1.0), ("b", 8.0), ("c", 1.0)]);
        let mut p = pick(7);
        let mut seconds = [0u32; 3];
        let mut n = 0;
        for _ in 0..2000 {
            let order = order(&group, &up(3), &Needs::default(), &mut p);
            if order[0] == 0 {
                seconds[order[1]] += 1;
                n += 1;
            }
        }
        // After `a`, `b` is 8 of 9.
        assert!(seconds[1] as f64 > n as f64 * 0.8, "{seconds:?} of {n}");
    }

    #[test]
    fn sticky_keeps_one_caller_on_one_arm_and_respects_weights() {
        let group = group(Strategy::Weighted, &[("a", 1.0), ("b", 3.0)]);
        let first = |value: &str, seed: u64| {
            let mut p = pick(seed);
            p.sticky = Some(sticky_hash(value.as_bytes()));
            order(&group, &up(2), &Needs::default(), &mut p)[0]
        };
        for caller in ["alice", "bob", "session-17"] {
            let arm = first(caller, 1);
            for seed in 2..50 {
                assert_eq!(first(caller, seed), arm, "{caller}");
            }
        }
        let on_b = (0..2000)
            .filter(|n| first(&format!("caller-{n}"), 0) == 1)
            .count();
        assert!((1403..=1597).contains(&on_b), "{on_b}");
    }

    #[test]
    fn round_robin_takes_turns() {
        let group = group(Strategy::RoundRobin, &[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
        let orders: Vec<_> = (0..4)
            .map(|ticket| {
                let mut p = pick(0);
                p.ticket = ticket;
                order(&group, &up(3), &Needs::default(), &mut p)
            })
            .collect();
        assert_eq!(
            orders,
            [vec![0, 1, 2], vec![1, 2, 0], vec![2, 0, 1], vec![0, 1, 2]]
        );
    }

    #[test]
    fn least_busy_takes_the_fewest_in_flight() {
        let group = group(Strategy::LeastBusy, &[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
        let mut observed = up(3);
        observed[0].in_flight = 5;
        observed[1].in_flight = 2;
        observed[2].in_flight = 9;
        assert_eq!(
            order(&group, &observed, &Needs::default(), &mut pick(0)),
            [1, 0, 2]
        );
    }

    #[test]
    fn latency_tries_the_unmeasured_then_prefers_the_faster() {
        let group = group(Strategy::Latency, &[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
        let mut observed = up(3);
        observed[0].ttfb = Some(0.2);
        observed[2].ttfb = Some(0.02);
        assert_eq!(
            order(&group, &observed, &Needs::default(), &mut pick(0))[0],
            1,
            "no sample yet: tried first"
        );
        observed[1].ttfb = Some(0.5);
        let mut p = pick(3);
        for _ in 0..200 {
            let order = order(&group, &observed, &Needs::default(), &mut p);
            // Of any two, the slowest loses: it is never first.
            assert_ne!(order[0], 1, "{order:?}");
            assert_eq!(order.len(), 3);
        }
        let two = self::group(Strategy::Latency, &[("slow", 1.0), ("fast", 1.0)]);
        let observed = [
            Observed {
                ttfb: Some(0.2),
                ..Observed::default()
            },
            Observed {
                ttfb: Some(0.02),
                ..Observed::default()
            },
        ];
        assert_eq!(order(&two, &observed, &Needs::default(), &mut p), [1, 0]);
        // A fast deployment with a queue gives way: 0.02 * 11 > 0.2.
        let mut busy = observed;
        busy[1].in_flight = 10;
        assert_eq!(order(&two, &busy, &Needs::default(), &mut p), [0, 1]);
    }

    #[test]
    fn cost_takes_the_cheapest_capable_and_ranks_unknown_prices_last() {
        let mut group = group(
            Strategy::Cost,
            &[
                ("unknown", 1.0),
                ("dear", 1.0),
                ("cheap", 1.0),
                ("small", 1.0),
                ("no-tools", 1.0),
            ],
        );
        let price = |input, output| {
            Some(Price {
                input,
                output,
                ..Price::default()
            })
        };
        group.deployments[1].price = price(3.0, 15.0);
        group.deployments[2].price = price(0.15, 0.6);
        group.deployments[3].price = price(0.01, 0.01);
        group.deployments[3].context = Some(1000);
        group.deployments[4].price = price(0.01, 0.01);
        group.deployments[4].capabilities.tools = false;
        let needs = Needs {
            input_tokens: Needs::estimate_input_tokens(8000),
            max_tokens: Some(500),
            tools: true,
            ..Needs::default()
        };
        assert_eq!(
            order(&group, &up(5), &needs, &mut pick(0)),
            [2, 1, 0],
            "too small a context and lacking tools are left out; unknown is last"
        );
        let small = Needs {
            input_tokens: 100,
            ..Needs::default()
        };
        assert_eq!(order(&group, &up(5), &small, &mut pick(0))[..2], [3, 4]);
        // The seam for the shipped price table.
        let table = |d: &DeploymentDecl| d.price.or(price(0.0, 0.0));
        let mut p = pick(0);
        p.price_of = &table;
        assert_eq!(order(&group, &up(5), &needs, &mut p)[0], 0);
    }

    #[test]
    fn no_capable_deployment_leaves_them_all_to_the_upstream() {
        let mut group = group(Strategy::Ordered, &[("a", 1.0), ("b", 1.0)]);
        for deployment in &mut group.deployments {
            deployment.capabilities.images = false;
        }
        let needs = Needs {
            images: true,
            ..Needs::default()
        };
        assert_eq!(order(&group, &up(2), &needs, &mut pick(0)), [0, 1]);
    }

    #[test]
    fn every_strategy_skips_the_ejected_and_tries_the_longest_ejected_when_all_are() {
        for strategy in [
            Strategy::Weighted,
            Strategy::RoundRobin,
            Strategy::LeastBusy,
            Strategy::Latency,
            Strategy::Cost,
            Strategy::Ordered,
        ] {
            let group = group(strategy, &[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
            let mut observed = up(3);
            observed[0].ejected_at = Some(Duration::from_secs(5));
            observed[2].ejected_at = Some(Duration::from_secs(9));
            for seed in 0..20 {
                assert_eq!(
                    order(&group, &observed, &Needs::default(), &mut pick(seed)),
                    [1],
                    "{strategy:?}"
                );
            }
            observed[1].ejected_at = Some(Duration::from_secs(3));
            assert_eq!(
                order(&group, &observed, &Needs::default(), &mut pick(0)),
                [1],
                "{strategy:?}: ejected longest ago"
            );
        }
    }

    #[test]
    fn ordered_takes_the_first_healthy() {
        let group = group(Strategy::Ordered, &[("a", 1.0), ("b", 1.0), ("c", 1.0)]);
        let mut observed = up(3);
        assert_eq!(
            order(&group, &observed, &Needs::default(), &mut pick(0)),
            [0, 1, 2]
        );
        observed[0].ejected_at = Some(Duration::ZERO);
        assert_eq!(
            order(&group, &observed, &Needs::default(), &mut pick(0)),
            [1, 2]
        );
    }

    proptest::proptest! {
        #[test]
        fn every_order_lists_distinct_deployments_and_never_none(
            strategy in proptest::sample::select(vec![
                Strategy::Weighted, Strategy::RoundRobin, Strategy::LeastBusy,
                Strategy::Latency, Strategy::Cost, Strategy::Ordered,
            ]),
            seen in proptest::collection::vec(
                (proptest::option::of(0u64..100), 0u64..5, proptest::option::of(0.0f64..2.0)),
                1..8,
            ),
            seed: u64,
            ticket: u64,
        ) {
            let weights: Vec<(&str, f64)> = seen.iter().map(|_| ("m", 1.0)).collect();
            let group = group(strategy, &weights);
            let observed: Vec<Observed> = seen
                .iter()
                .map(|&(ejected, in_flight, ttfb)| Observed {
                    ejected_at: ejected.map(Duration::from_secs),
                    in_flight,
                    ttfb,
                })
                .collect();
            let mut p = pick(seed);
            p.ticket = ticket;
            let order = order(&group, &observed, &Needs::default(), &mut p);
            proptest::prop_assert!(!order.is_empty());
            let mut sorted = order.clone();
            sorted.sort_unstable();
            sorted.dedup();
            proptest::prop_assert_eq!(sorted.len(), order.len());
            let healthy = observed.iter().filter(|o| o.ejected_at.is_none()).count();
            proptest::prop_assert_eq!(order.len(), healthy.max(1));
        }
    }

    #[test]
    fn the_rng_is_deterministic_per_seed_and_in_range() {
        let mut a = Rng::new(9);
        let mut b = Rng::new(9);
        for _ in 0..1000 {
            let x = a.next_f64();
            assert_eq!(x, b.next_f64());
            assert!((0.0..1.0).contains(&x));
            assert!(a.below(3) < 3);
            b.below(3);
        }
        assert_ne!(sticky_hash(b"a"), sticky_hash(b"b"));
    }
}

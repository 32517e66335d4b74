//! A door's `model` that names a group: what the request needs, read cheaply from its body,
//! and the group's deployments in the order its strategy tries them, as targets.

use std::borrow::Cow;

use actix_web::{http::header::HeaderValue, HttpRequest};
use memchr::memmem;

use crate::{
    config::{
        groups::{DeploymentDecl, Sticky, Strategy},
        prices::{Price, PriceTable},
    },
    formats::Upstream,
    gateway::{
        exchange::{Target, Tracked},
        retry,
        routing::{self, Needs, Pick, Rng},
        targets::{Group, Registry},
    },
    util::fingerprint::KeyFingerprint,
};

/// What the request needs of a deployment, from its bytes: input tokens as bytes / 4; tools,
/// images and JSON schemas by their field names (`"tools"`, `"image_url"`, `"image"`,
/// `"json_schema"`; inside a string a quote is escaped, so text that mentions them does not
/// count); `max_tokens` (or `max_completion_tokens`) read only when the group needs it. A group
/// whose choice depends on none of it (see [`crate::config::groups::GroupDecl::reads_needs`]) skips the search.
pub fn needs(body: &[u8], group: &Group) -> Needs {
    let decl = &group.decl;
    if !decl.reads_needs() {
        return Needs {
            input_tokens: Needs::estimate_input_tokens(body.len()),
            ..Needs::default()
        };
    }
    let has = |word: &str| memmem::find(body, word.as_bytes()).is_some();
    let wants_max =
        decl.strategy == Strategy::Cost || decl.deployments.iter().any(|d| d.context.is_some());
    let max_tokens = if wants_max && (has("\"max_tokens\"") || has("\"max_completion_tokens\"")) {
        #[derive(serde::Deserialize)]
        struct Probe {
            max_tokens: Option<u64>,
            max_completion_tokens: Option<u64>,
        }
        serde_json::from_slice::<Probe>(body)
            .ok()
            .and_then(|p| p.max_completion_tokens.or(p.max_tokens))
    } else {
        None
    };
    Needs {
        input_tokens: Needs::estimate_input_tokens(body.len()),
        max_tokens,
        tools: has("\"tools\""),
        images: has("\"image_url\"") || has("\"image\""),
        json_schema: has("\"json_schema\""),
    }
}

/// The group's deployments in the order to try them, each with its key from `key_of` (an
/// `Err` marks it skipped, as a fallback without its key is).
pub fn targets<'r>(
    request: &HttpRequest,
    registry: &'r Registry,
    prices: &PriceTable,
    group: &'r Group,
    body: &[u8],
    caller_key: Option<&HeaderValue>,
    key_of: impl Fn(&dyn Upstream) -> Result<Option<HeaderValue>, String>,
) -> Vec<Target<'r>> {
    let sticky = group.decl.sticky.as_ref().and_then(|sticky| match sticky {
        // The key's fingerprint, as rules see it: the arm follows the key, never the key itself.
        Sticky::Key => caller_key.map(|key| {
            routing::sticky_hash(KeyFingerprint::of(key.as_bytes()).as_str().as_bytes())
        }),
        Sticky::Header(name) => request
            .headers()
            .get(name.as_str())
            .map(|value| routing::sticky_hash(value.as_bytes())),
    });
    let price_of = |deployment: &DeploymentDecl| -> Option<Price> {
        deployment.price.or_else(|| {
            prices
                .find(&deployment.provider, &deployment.model)
                .map(|found| found.price)
        })
    };
    let mut pick = Pick {
        // 53 random bits from the jitter source, spread by SplitMix64.
        rng: Rng::new((retry::random() * (1u64 << 53) as f64) as u64),
        ticket: match group.decl.strategy {
            Strategy::RoundRobin => group.health.ticket(),
            _ => 0,
        },
        sticky,
        // A deployment's own price, else the shipped table's (after the file's `prices`).
        price_of: &price_of,
    };
    let observed = group.health.observe(registry.clock.now());
    let order = routing::order(&group.decl, &observed, &needs(body, group), &mut pick);
    order
        .into_iter()
        .map(|index| {
            let upstream = registry.deployment(group, index);
            Target {
                upstream,
                model: Cow::Borrowed(group.decl.deployments[index].model.as_str()),
                key: key_of(upstream),
                tracked: Some(Tracked {
                    group: &group.decl.name,
                    deployment: &group.labels[index],
                    health: &group.health.deployments[index],
                    clock: &registry.clock,
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{providers_file::Catalog, Config};

    fn registry() -> Registry {
        let config = Config {
            catalog: Catalog::parse(
                r#"{"groups": {"g": {"strategy": "cost", "deployments": [
                     {"provider": "openai", "model": "a", "context": 100}]}}}"#,
            )
            .unwrap(),
            ..Config::default()
        };
        Registry::new(&config)
    }

    #[test]
    fn needs_are_read_from_field_names_not_from_text() {
        let registry = registry();
        let group = registry.group("g").unwrap();
        let body = br#"{"model":"g","max_tokens":50,"tools":[{}],"messages":[{"role":"user",
            "content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        let needs = needs(body, group);
        assert!(needs.tools && needs.images && !needs.json_schema);
        assert_eq!(needs.max_tokens, Some(50));
        assert_eq!(needs.input_tokens, body.len() as u64 / 4);
        let text = br#"{"model":"g","messages":[{"role":"user","content":"say \"tools\" and \"json_schema\""}]}"#;
        let needs = super::needs(text, group);
        assert!(!needs.tools && !needs.json_schema && !needs.images);
    }

    #[test]
    fn a_group_whose_choice_needs_nothing_does_not_search_the_body() {
        let config = Config {
            catalog: Catalog::parse(
                r#"{"groups": {"w": {"deployments": [{"provider": "openai", "model": "a"}]},
                               "t": {"deployments": [{"provider": "openai", "model": "a",
                                     "capabilities": ["tools"]}]}}}"#,
            )
            .unwrap(),
            ..Config::default()
        };
        let registry = Registry::new(&config);
        let body = br#"{"model":"w","max_tokens":50,"tools":[{}],"messages":[]}"#;
        let needs = needs(body, registry.group("w").unwrap());
        assert_eq!((needs.tools, needs.max_tokens), (false, None));
        assert_eq!(needs.input_tokens, body.len() as u64 / 4);
        assert!(super::needs(body, registry.group("t").unwrap()).tools);
    }

    proptest::proptest! {
        #[test]
        fn any_body_gives_needs_without_panicking(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..400),
            max in proptest::option::of(0u64..u64::MAX),
        ) {
            let registry = registry();
            let group = registry.group("g").unwrap();
            let _ = needs(&body, group);
            let json = serde_json::json!({"model": "g", "max_tokens": max, "tools": []});
            let needs = needs(json.to_string().as_bytes(), group);
            proptest::prop_assert_eq!(needs.max_tokens, max);
            proptest::prop_assert!(needs.tools);
        }
    }
}

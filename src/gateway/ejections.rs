//! Deployment ejections shared between instances through Redis: what one instance learns about
//! a failing deployment spares every other instance its own three failures.
//!
//! One hash holds, per deployment, until when (unix ms) it is out. On each tick of Redis's
//! watcher an instance writes what changed here since the last tick (an ejection, or a
//! readmission after its probe answered), then reads the hash and ejects here what another
//! instance ejected. Routing never waits on Redis: it reads the process's own health, which is
//! at most one tick behind the other instances'.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use redis::aio::ConnectionManager;

use crate::{cluster::Redis, gateway::targets::Registry};

/// An entry this far past its end is deleted by whoever sees it.
const STALE_AFTER_MS: i64 = 60_000;

/// Adds the sharing of `registry`'s ejections to Redis's chores.
pub fn share(redis: &Redis, registry: Arc<Registry>) {
    let seen = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    redis.add_chore(Box::new(move |redis, _came_back| {
        let (registry, seen) = (Arc::clone(&registry), Arc::clone(&seen));
        Box::pin(async move { sync(&redis, &registry, &seen).await })
    }));
}

/// The hash's field for deployment `index` of `group`: its group, place and `provider/model`,
/// the same on every instance that runs the same providers file.
fn field(group: &str, index: usize, label: &str) -> String {
    format!("{group}|{index}|{label}")
}

async fn sync(redis: &Redis, registry: &Registry, seen: &Mutex<HashMap<String, u64>>) {
    let now = registry.clock.now();
    let wall = crate::keys::now_ms();
    let mut writes: Vec<(String, Option<i64>)> = Vec::new();
    {
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        for group in registry.groups() {
            for (index, deployment) in group.health.deployments.iter().enumerate() {
                let epoch = deployment.epoch();
                let name = field(&group.decl.name, index, &group.labels[index]);
                if seen.get(&name) == Some(&epoch) {
                    continue;
                }
                // The first sight of a deployment at epoch 0 has nothing to say.
                let changed = seen.insert(name.clone(), epoch).is_some() || epoch > 0;
                if changed {
                    let until = deployment.out_for(now).map(|left| wall + millis(left));
                    writes.push((name, until));
                }
            }
        }
    }
    let hash = Redis::key(&["ejections"]);
    let written: Vec<String> = writes.iter().map(|(name, _)| name.clone()).collect();
    let shared: Option<HashMap<String, String>> = redis
        .call(move |mut conn: ConnectionManager| async move {
            let mut pipe = redis::pipe();
            for (name, until) in &writes {
                match until {
                    Some(until) => pipe.hset(&hash, name, until).ignore(),
                    None => pipe.hdel(&hash, name).ignore(),
                };
            }
            pipe.hgetall(&hash);
            let (shared,): (HashMap<String, String>,) = pipe.query_async(&mut conn).await?;
            Ok(shared)
        })
        .await;
    let Some(shared) = shared else {
        return;
    };
    let mut stale = Vec::new();
    for group in registry.groups() {
        for (index, deployment) in group.health.deployments.iter().enumerate() {
            let name = field(&group.decl.name, index, &group.labels[index]);
            // Another's entry that is not a time is nobody's: stale.
            let Some(until) = shared.get(&name).map(|until| until.parse().unwrap_or(0)) else {
                continue;
            };
            if until > wall && !written.contains(&name) {
                let left = Duration::from_millis(u64::try_from(until - wall).unwrap_or(0));
                deployment.eject_for(left, now);
            } else if until < wall - STALE_AFTER_MS {
                stale.push(name);
            }
        }
    }
    if !stale.is_empty() {
        let hash = Redis::key(&["ejections"]);
        redis.send(move |mut conn: ConnectionManager| async move {
            redis::cmd("HDEL")
                .arg(&hash)
                .arg(&stale)
                .query_async::<()>(&mut conn)
                .await
        });
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

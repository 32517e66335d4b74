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

use crate::{
    cluster::Redis,
    gateway::{health::Deployment, targets::Registry},
};

/// An entry this far past its end is deleted by whoever sees it.
const STALE_AFTER_MS: i64 = 60_000;

/// Adds the sharing of `registry`'s ejections to Redis's chores.
pub fn share(redis: &Redis, registry: Arc<Registry>) {
    let fields: Arc<[Field]> = registry
        .groups()
        .iter()
        .enumerate()
        .flat_map(|(group, decl)| {
            decl.labels
                .iter()
                .enumerate()
                .map(move |(index, label)| Field {
                    group,
                    index,
                    name: format!("{}|{index}|{label}", decl.decl.name),
                })
        })
        .collect();
    // The epoch each deployment was at when last written; none before the first tick.
    let seen = Arc::new(Mutex::new(vec![0; fields.len()]));
    redis.add_chore(Box::new(move |redis, _came_back| {
        let (registry, fields, seen) = (
            Arc::clone(&registry),
            Arc::clone(&fields),
            Arc::clone(&seen),
        );
        Box::pin(async move { sync(&redis, &registry, &fields, &seen).await })
    }));
}

/// A deployment's place in the registry and its field in the hash: its group, place and
/// `provider/model`, the same on every instance that runs the same providers file.
struct Field {
    group: usize,
    index: usize,
    name: String,
}

impl Field {
    fn of<'r>(&self, registry: &'r Registry) -> &'r Deployment {
        &registry.groups()[self.group].health.deployments[self.index]
    }
}

async fn sync(redis: &Redis, registry: &Registry, fields: &[Field], seen: &Mutex<Vec<u64>>) {
    let now = registry.clock.now();
    let wall = crate::keys::now_ms();
    let mut writes: Vec<(String, Option<i64>)> = Vec::new();
    {
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        // Epochs start at 0, which has nothing to say: nothing was ejected yet.
        for (field, seen) in fields.iter().zip(seen.iter_mut()) {
            let deployment = field.of(registry);
            let epoch = deployment.epoch();
            if epoch != *seen {
                *seen = epoch;
                let until = deployment.out_for(now).map(|left| wall + millis(left));
                writes.push((field.name.clone(), until));
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
    for field in fields {
        // Another's entry that is not a time is nobody's: stale.
        let Some(until) = shared
            .get(&field.name)
            .map(|until| until.parse().unwrap_or(0))
        else {
            continue;
        };
        if until > wall && !written.contains(&field.name) {
            let left = Duration::from_millis(u64::try_from(until - wall).unwrap_or(0));
            field.of(registry).eject_for(left, now);
        } else if until < wall - STALE_AFTER_MS {
            stale.push(field.name.clone());
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

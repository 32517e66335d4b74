//! Building the HTTP server (one awc client per worker) and stopping it gracefully on signals.

use std::{net::TcpListener, sync::Arc};

use actix_web::{dev::Server, dev::ServerHandle, middleware::from_fn, web, App, HttpServer};

use crate::{
    cache::ResponseCache,
    cluster::Redis,
    config::{prices::PriceTable, Config},
    gateway::{ejections, rules::Rules, targets::Registry},
    http::cors,
    http::observe,
    http::routes,
    keys::Keyring,
    limits::{BodyBudget, RequestLimit, UpstreamSlots},
    metrics::Metrics,
    store::{Store, StoreError},
    upstream,
};
use prometheus_client::metrics::counter::Counter;

/// Usage records waiting for the store at most: past this, new ones are dropped and counted
/// (`llm_proxy_usage_records_dropped_total`) while requests keep flowing.
pub const USAGE_BUFFER_RECORDS: usize = 10_000;

/// What a proxy with a store adds: its keys (and limits, and usage records), and the count of
/// records the store could not take.
pub struct Accounts {
    pub keyring: Arc<Keyring>,
    pub usage_dropped: Counter,
    /// Where the keys' limits are shared with other instances, if anywhere.
    pub redis: Option<Redis>,
}

impl Accounts {
    /// Opens (creating and migrating) the store at `url`, reads its keys, and keeps them in
    /// step with it from now on; with `redis`, their limits are counted there. Call it inside
    /// the runtime that will run the server.
    pub async fn open(url: &str, redis: Option<Redis>) -> Result<Self, StoreError> {
        let store = Store::open(url).await?;
        let usage_dropped = Counter::default();
        let sink = store.usage_sink(USAGE_BUFFER_RECORDS, usage_dropped.clone());
        let now = crate::keys::now_ms();
        let keyring = Arc::new(Keyring::open(store, sink, redis.clone(), now).await?);
        actix_web::rt::spawn(Arc::clone(&keyring).watch());
        if let Some(redis) = &redis {
            let keyring = Arc::downgrade(&keyring);
            redis.add_chore(Box::new(move |redis, came_back| {
                let keyring = keyring.clone();
                Box::pin(async move {
                    let Some(keyring) = keyring.upgrade().filter(|_| came_back) else {
                        return;
                    };
                    if let Err(e) = keyring.restore_shared(&redis, crate::keys::now_ms()).await {
                        log::warn!("cannot restore the shared budgets from the store: {e}");
                    }
                })
            }));
        }
        Ok(Self {
            keyring,
            usage_dropped,
            redis,
        })
    }
}

/// The proxy on an already bound listener, with its store's keys and usage when it has one.
/// Signals are not handled here (tests run many servers in one process); the binary adds
/// [`stop_on_signals`].
pub fn build(
    config: Config,
    accounts: Option<&Accounts>,
    listener: TcpListener,
) -> std::io::Result<Server> {
    let redis = match accounts {
        Some(accounts) => accounts.redis.clone(),
        None => Redis::from_config(&config).map_err(std::io::Error::other)?,
    };
    let workers = config.workers;
    let shutdown_timeout = config.shutdown_timeout.as_secs();
    let registry = web::Data::new(Registry::new(&config));
    let rules = web::Data::new(Rules::compile(&config.catalog.routes));
    let limit = web::Data::new(RequestLimit::new(config.max_concurrent_requests));
    let budget = web::Data::new(BodyBudget::new(config.max_pending_body_bytes));
    let mut metrics = match accounts {
        Some(accounts) => Metrics::new(accounts.usage_dropped.clone()),
        None => Metrics::default(),
    };
    if let Some(redis) = &redis {
        metrics.register_redis(redis.metrics());
        ejections::share(redis, registry.clone().into_inner());
    }
    let upstream_connections = metrics.upstream_connections();
    let metrics = web::Data::new(metrics);
    // Once for the process: every worker's client shares it and its TLS session cache.
    let upstream_tls = upstream::tls_config(&config);
    let keyring = accounts.map(|accounts| web::Data::from(Arc::clone(&accounts.keyring)));
    let prices = PriceTable::new(&config.catalog.prices).map_err(std::io::Error::other)?;
    let prices = web::Data::new(prices);
    let cache = web::Data::new(ResponseCache::new(config.cache_max_bytes, redis));
    let config = web::Data::new(config);
    let server = HttpServer::new(move || {
        let app = App::new();
        let app = match &keyring {
            Some(keyring) => app.app_data(keyring.clone()),
            None => app,
        };
        app.wrap(from_fn(cors::handle))
            .wrap(from_fn(observe::observe))
            .app_data(config.clone())
            .app_data(metrics.clone())
            .app_data(prices.clone())
            .app_data(cache.clone())
            .app_data(registry.clone())
            .app_data(rules.clone())
            .app_data(limit.clone())
            .app_data(budget.clone())
            .app_data(web::Data::new(upstream::client(
                &config,
                &upstream_tls,
                &upstream_connections,
            )))
            .app_data(web::Data::new(UpstreamSlots::new(
                upstream::connections_per_worker(&config),
                config.http_pool_timeout,
            )))
            .configure(|cfg| routes::configure(cfg, &registry, &config))
    })
    .workers(workers)
    // Small SSE writes to the caller must not wait on Nagle's algorithm.
    .tcp_nodelay(true)
    // A caller that closes its side has left: drop its stream (and so the upstream call) at
    // once instead of generating tokens nobody will read.
    .h1_allow_half_closed(false)
    .shutdown_timeout(shutdown_timeout)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}

/// Raises this process's soft limit on open files to its hard limit, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do: every stream holds two descriptors (the caller's
/// and the upstream's), and a common default soft limit of 1,024 would refuse connections long
/// before `MAX_CONCURRENT_REQUESTS`. Returns the limit now in force.
pub fn raise_open_file_limit() -> std::io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// Waits for SIGTERM or SIGINT, then stops the server gracefully: it stops accepting and gives
/// in-flight requests and streams up to `SHUTDOWN_TIMEOUT_SECONDS`. A second signal ends the
/// process at once, with the shell's 128 + signal number. (actix's own handler treats SIGINT as
/// a forced stop.)
pub async fn stop_on_signals(server: ServerHandle) {
    use actix_web::rt::signal::unix::{signal, SignalKind};
    use futures_util::future::{select, Either};

    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        log::error!("could not listen for SIGTERM/SIGINT; stop the process with SIGKILL");
        return;
    };
    let mut graceful = true;
    loop {
        let (name, number) =
            match select(Box::pin(terminate.recv()), Box::pin(interrupt.recv())).await {
                Either::Left(_) => ("SIGTERM", 15),
                Either::Right(_) => ("SIGINT", 2),
            };
        if graceful {
            log::info!("{name} received: finishing in-flight requests, then stopping");
            actix_web::rt::spawn(server.clone().stop(true));
            graceful = false;
        } else {
            // actix finishes a graceful stop before it looks at another stop command.
            log::warn!("{name} received again: exiting now");
            std::process::exit(128 + number);
        }
    }
}

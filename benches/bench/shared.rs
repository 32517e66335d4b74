//! What a limit check on Redis adds per request: an issued key with a requests-per-minute limit
//! (too high to refuse anything), one request at a time through the proxy, counted in the
//! process and then in a real `redis-server` on loopback. Skipped, and said so, without
//! `redis-server` on `PATH`.

use std::{
    io,
    net::SocketAddr,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    load::{self, Target},
    proxy::{Proxy, Subject},
    stats::{percentiles, Percentiles},
};

/// Requests of each side.
const REQUESTS: usize = 2_000;

#[derive(Serialize)]
pub struct LimitCheck {
    /// The limit counted in the proxy's own memory.
    pub in_process: Side,
    /// The same limit counted by the script on Redis.
    pub on_redis: Side,
}

#[derive(Serialize)]
pub struct Side {
    #[serde(flatten)]
    pub latency: Percentiles,
    pub errors: usize,
    /// The proxy's time on a CPU per request (all its threads; Redis's own is not counted).
    pub proxy_cpu_per_request_us: f64,
}

/// Runs both sides against `mock`, or says why it cannot.
pub async fn limit_check(
    binary: &Path,
    mock: SocketAddr,
    cpu: Option<usize>,
) -> Result<LimitCheck, String> {
    let redis = RedisServer::start().map_err(|e| format!("no redis-server to run: {e}"))?;
    let database = crate::proxy::fresh_database("shared.db");
    let secret = issue_key(binary, &database).map_err(|e| format!("keys create: {e}"))?;
    let mut sides = Vec::new();
    for redis_url in [None, Some(redis.url())] {
        let mut env = vec![("DATABASE_URL", database.clone())];
        env.extend(redis_url.map(|url| ("REDIS_URL", url)));
        let subject = Subject::LlmProxy(binary.to_owned());
        let proxy = Proxy::start_with(&subject, mock, cpu, &env)
            .await
            .map_err(|e| e.to_string())?;
        // Redis's watcher connects on its first tick.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let target = Target::issued(proxy.addr, &secret);
        let before = proxy.run_time().map_err(|e| e.to_string())?;
        let run = load::one_at_a_time(&target, REQUESTS)
            .await
            .map_err(|e| e.to_string())?;
        let cpu = proxy.run_time().map_err(|e| e.to_string())? - before;
        let requests = (run.latencies.len() + run.errors).max(1);
        sides.push(Side {
            latency: percentiles(&run.latencies),
            errors: run.errors,
            proxy_cpu_per_request_us: cpu.as_secs_f64() * 1e6 / requests as f64,
        });
    }
    let on_redis = sides.pop().expect("two sides");
    let in_process = sides.pop().expect("two sides");
    Ok(LimitCheck {
        in_process,
        on_redis,
    })
}

/// A key that may send a billion requests a minute, made with `llm-proxy keys create`.
fn issue_key(binary: &Path, database: &str) -> io::Result<String> {
    let output = Command::new(binary)
        .args(["keys", "create", "--name", "bench", "--rpm", "1000000000"])
        .env_clear()
        .env("DATABASE_URL", database)
        .current_dir("/")
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .find(|word| word.starts_with("lp-"))
        .map(str::to_owned)
        .ok_or_else(|| io::Error::other(format!("no key in {text:?}")))
}

/// `redis-server` on a free loopback port, saving nothing; stopped on drop.
struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    fn start() -> io::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()?;
        let server = RedisServer { port, child };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err(io::Error::other("redis-server did not listen within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The proxy under test, as a child process pinned to its own CPU, found by its listening
//! socket and measured through /proc: the release binary configured by environment variables,
//! or, as a baseline, nginx with a plain `proxy_pass`.

use std::{
    io,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::procfs::{self, CpuTime};

/// What runs between the load and the mock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subject {
    /// The llm-proxy binary at this path.
    LlmProxy(PathBuf),
    /// nginx from `PATH`, its configuration written to this directory.
    Nginx(PathBuf),
}

/// Where a proxy runs and how many workers it has; [`Placement::one_worker`] is what every
/// scenario uses unless it says otherwise.
#[derive(Clone, Debug)]
pub struct Placement {
    /// The CPUs it may run on (`taskset -c`); none: this process's own.
    pub cpus: Vec<usize>,
    /// llm-proxy's `WORKERS`, nginx's `worker_processes` (with a master above them when more
    /// than one).
    pub workers: usize,
    /// nginx's `worker_connections` (each stream holds two).
    pub nginx_connections: usize,
}

impl Placement {
    /// One worker, alone on `cpu` when given.
    pub fn one_worker(cpu: Option<usize>) -> Placement {
        Placement {
            cpus: cpu.into_iter().collect(),
            workers: 1,
            nginx_connections: 16384,
        }
    }
}

/// A running proxy; killed when dropped, with its child processes (nginx's workers).
pub struct Proxy {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl Proxy {
    /// Starts `subject` with its upstreams pointed at the mock, alone on `cpu` when given
    /// (`taskset` execs it, so the child's pid is the proxy's), and waits until it listens.
    pub async fn start(
        subject: &Subject,
        mock: SocketAddr,
        cpu: Option<usize>,
    ) -> io::Result<Proxy> {
        Self::start_with(subject, mock, cpu, &[]).await
    }

    /// As [`Proxy::start`], with `env` set too (llm-proxy only).
    pub async fn start_with(
        subject: &Subject,
        mock: SocketAddr,
        cpu: Option<usize>,
        env: &[(&str, String)],
    ) -> io::Result<Proxy> {
        Self::start_placed(subject, mock, &Placement::one_worker(cpu), env).await
    }

    /// As [`Proxy::start_with`], placed and sized by `placement`.
    pub async fn start_placed(
        subject: &Subject,
        mock: SocketAddr,
        placement: &Placement,
        env: &[(&str, String)],
    ) -> io::Result<Proxy> {
        let mut command = match subject {
            Subject::LlmProxy(binary) => {
                // A database of the caller's own leaves the default one (another proxy's,
                // perhaps still running) alone.
                let own_database = env.iter().any(|(name, _)| *name == "DATABASE_URL");
                llm_proxy(binary, mock, placement, !own_database)
            }
            Subject::Nginx(dir) => nginx(dir, mock, placement)?,
        };
        command.envs(env.iter().map(|(name, value)| (name, value)));
        let child = command.stdin(Stdio::null()).stdout(Stdio::null()).spawn()?;
        let pid = child.id();
        let mut proxy = Proxy {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let port = proxy.wait_for_port().await?;
        proxy.addr.set_port(port);
        Ok(proxy)
    }

    /// The port the proxy listens on, read from its own listening socket in /proc. (With
    /// `PORT=0` the kernel chooses; llm-proxy logs the choice at `info`, which `RUST_LOG=warn`
    /// hides.)
    async fn wait_for_port(&mut self) -> io::Result<u16> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!("the proxy exited: {status}")));
            }
            if let Some(port) = procfs::listening_port(self.pid) {
                return Ok(port);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other("the proxy did not listen within 10 s"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory in bytes.
    pub fn rss(&self) -> io::Result<u64> {
        procfs::rss(self.pid)
    }

    /// Time on a CPU so far, all threads, to the nanosecond.
    pub fn run_time(&self) -> io::Result<Duration> {
        procfs::run_time(self.pid)
    }

    /// CPU time used so far, all threads.
    pub fn cpu_time(&self) -> io::Result<CpuTime> {
        procfs::cpu_time(self.pid)
    }

    /// CPU time used so far by the proxy and its child processes (nginx's workers under its
    /// master), all threads.
    pub fn tree_cpu_time(&self) -> io::Result<CpuTime> {
        let mut total = self.cpu_time()?;
        for child in procfs::children(self.pid) {
            // A worker that exits meanwhile has no time to add.
            if let Ok(time) = procfs::cpu_time(child) {
                total.user += time.user;
                total.system += time.system;
            }
        }
        Ok(total)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Found before the parent dies: nginx's workers outlive a killed master.
        let children = procfs::children(self.pid);
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in children {
            // SAFETY: kill only sends a signal, to a process this one started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// `program`, on `cpus` when given.
fn pinned(program: &Path, cpus: &[usize]) -> Command {
    if cpus.is_empty() {
        return Command::new(program);
    }
    let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
    let mut taskset = Command::new("taskset");
    taskset.arg("-c").arg(list.join(",")).arg(program);
    taskset
}

/// llm-proxy on loopback with `placement`'s workers (one, unless a scenario says), the mock as
/// both upstreams and quiet logs; every limit at the default a user gets (which holds ten
/// thousand streams at once).
fn llm_proxy(
    binary: &Path,
    mock: SocketAddr,
    placement: &Placement,
    default_database: bool,
) -> Command {
    let mut command = pinned(binary, &placement.cpus);
    command
        .env_clear()
        .envs([
            ("HOST", "127.0.0.1".to_owned()),
            ("PORT", "0".to_owned()),
            ("WORKERS", placement.workers.to_string()),
            ("RUST_LOG", "warn".to_owned()),
            ("OPENAI_BASE_URL", format!("http://{mock}/openai")),
            ("ANTHROPIC_BASE_URL", format!("http://{mock}/anthropic")),
        ])
        // dotenvy reads a .env in the working directory or a parent: start where there is
        // none, so that only the variables above apply.
        .current_dir("/");
    if default_database {
        // The default store (usage records of every request), on a fresh file of the
        // benchmark's own rather than in the working directory.
        command.env("DATABASE_URL", fresh_database("llm-proxy.db"));
    }
    command
}

/// `sqlite://target/bench/<name>` (absolute), its old files removed.
pub fn fresh_database(name: &str) -> String {
    let dir = crate::output_dir();
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(name);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    format!("sqlite://{}", file.display())
}

/// Whether `nginx` is an executable file in a directory of `PATH` (as `taskset` and
/// `Command` would find it).
pub fn nginx_on_path() -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join("nginx"))
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

/// nginx as the baseline: one process (no master, so its pid is the worker's; with
/// more than one worker, a master and its workers), no access log, a pooled upstream,
/// `proxy_pass` of each provider's path, streams unbuffered. It cannot listen on port 0, so it
/// gets a port that was free a moment ago.
fn nginx(dir: &Path, mock: SocketAddr, placement: &Placement) -> io::Result<Command> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::create_dir_all(dir)?;
    let dir_text = dir.display();
    let location = |path: &str, upstream_path: &str| {
        format!(
            "location {path} {{ proxy_pass http://mock{upstream_path}; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; proxy_buffering off; }}"
        )
    };
    let (master, workers) = match placement.workers {
        1 => ("off", 1),
        workers => ("on", workers),
    };
    let connections = placement.nginx_connections;
    let config = format!(
        "master_process {master};\ndaemon off;\nworker_processes {workers};\n\
         worker_rlimit_nofile {files};\nerror_log stderr warn;\n\
         pid {dir_text}/nginx.pid;\nevents {{ worker_connections {connections}; }}\nhttp {{\n\
         access_log off;\nkeepalive_requests 1000000000;\n\
         client_body_temp_path {dir_text}/body;\nproxy_temp_path {dir_text}/proxy;\n\
         upstream mock {{ server {mock}; keepalive 4096; keepalive_requests 1000000000; }}\n\
         server {{\nlisten 127.0.0.1:{port} backlog=4096;\n{}\n{}\n}}\n}}\n",
        location("/v1/chat/openai", "/openai/chat/completions"),
        location("/v1/chat/anthropic", "/anthropic/messages"),
        files = connections + 1024,
    );
    let config_path = dir.join("nginx.conf");
    std::fs::write(&config_path, config)?;
    let mut command = pinned(Path::new("nginx"), &placement.cpus);
    command.arg("-p").arg(dir).arg("-c").arg(config_path);
    Ok(command)
}

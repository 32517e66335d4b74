//! Throwaway databases for the store's tests: a SQLite file, or a Postgres server of our own.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use super::Store;

/// A fresh, empty directory under the system's temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!(
            "llm-proxy-{what}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A migrated store on a new SQLite file.
pub struct TestSqlite {
    pub store: Store,
    pub url: String,
    _dir: TempDir,
}

pub async fn sqlite() -> TestSqlite {
    let dir = TempDir::new("store");
    let url = format!("sqlite://{}", dir.0.join("llm-proxy.db").display());
    let store = Store::open(&url).await.expect("a SQLite store");
    TestSqlite {
        store,
        url,
        _dir: dir,
    }
}

/// A migrated store on a Postgres server started for this test alone, from Debian's binaries,
/// on a free loopback port; the server stops and its files go on drop.
pub struct TestPostgres {
    pub store: Store,
    server: PostgresServer,
}

impl TestPostgres {
    /// Stops the server (immediately, as a crash would) until [`TestPostgres::start`].
    pub fn stop(&self) {
        self.server.pg_ctl(&["stop", "-m", "immediate", "-w"]);
    }

    pub fn start(&self) {
        self.server.start();
    }
}

pub async fn postgres() -> TestPostgres {
    let server = PostgresServer::new();
    let store = Store::open(&server.url()).await.expect("a Postgres store");
    TestPostgres { store, server }
}

struct PostgresServer {
    bin: PathBuf,
    /// initdb and postgres refuse to run as root: as root they run as this user.
    user: Option<&'static str>,
    port: u16,
    dir: TempDir,
}

impl PostgresServer {
    fn new() -> PostgresServer {
        let bin = postgres_bin().unwrap_or_else(|| {
            panic!(
                "Postgres is not installed: these tests start Debian's postgresql from \
                 /usr/lib/postgresql/*/bin (apt-get install postgresql; .ci/run does so)"
            )
        });
        // SAFETY: geteuid has no preconditions and cannot fail.
        let user = (unsafe { libc::geteuid() } == 0).then_some("postgres");
        let dir = TempDir::new("postgres");
        if let Some(user) = user {
            run(Command::new("chown").arg(format!("{user}:")).arg(&dir.0));
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free loopback port")
            .port();
        let server = PostgresServer {
            bin,
            user,
            port,
            dir,
        };
        // Trust on loopback is fine for a server that lives as long as one test.
        run(server.command("initdb", &["-D"]).arg(server.data()).args([
            "-U",
            "llm",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]));
        server.start();
        server
    }

    fn start(&self) {
        // Its socket file in our own dir: /var/run/postgresql may not exist or be writable.
        let options = format!(
            "-p {} -h 127.0.0.1 -k {} -F",
            self.port,
            self.dir.0.display()
        );
        let log = self.dir.0.join("server.log");
        let started = self
            .command("pg_ctl", &["-D"])
            .arg(self.data())
            .args([
                "start",
                "-w",
                "-t",
                "30",
                "-o",
                &options,
                "-l",
                &log.to_string_lossy(),
            ])
            .output();
        if !matches!(&started, Ok(output) if output.status.success()) {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!(
                "Postgres did not start on port {}: {started:?}\n{log}",
                self.port
            );
        }
    }

    fn url(&self) -> String {
        format!("postgres://llm@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.0.join("data")
    }

    fn pg_ctl(&self, args: &[&str]) {
        run(self.command("pg_ctl", &["-D"]).arg(self.data()).args(args));
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut command = match self.user {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(program);
                command
            }
            None => Command::new(program),
        };
        command.args(args);
        command
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl", &["-D"])
            .arg(self.data())
            .args(["stop", "-m", "immediate", "-w"])
            .output();
    }
}

/// The newest Postgres under Debian's `/usr/lib/postgresql/<version>/bin`.
fn postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            Path::new(&bin.join("initdb"))
                .exists()
                .then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn run(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

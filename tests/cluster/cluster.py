"""Two llm-proxy instances behind nginx, on one Postgres and one Redis, all on loopback.

Every piece is a real server started for this run: Postgres from Debian's binaries (as a
non-root user when we are root, like src/store/test_db.rs), Debian's redis-server, nginx with
deploy/nginx.conf itself (a copy with loopback addresses and paths swapped in), the proxy binary
twice (A and B) on the same DATABASE_URL, REDIS_URL and providers file, and a mock OpenAI
upstream answering tests/fixtures/openai/completion.json after a configurable delay.

Each process's output goes to target/cluster/<name>.log, and each child's pid to
target/cluster/pids/<name>.pid, so tests/cluster/run can stop whatever is left if this process
dies. Ports are picked free at start and kept, so a server stopped by a test starts again on the
same one.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", REPO_ROOT / "target")).resolve()
BINARY = Path(os.environ.get("LLM_PROXY_BIN", TARGET_DIR / "debug" / "llm-proxy")).resolve()
LOG_DIR = TARGET_DIR / "cluster"
PID_DIR = LOG_DIR / "pids"
FIXTURE = REPO_ROOT / "tests" / "fixtures" / "openai" / "completion.json"
STREAM_FIXTURE = REPO_ROOT / "tests" / "fixtures" / "openai" / "stream.sse"
NGINX_CONF = REPO_ROOT / "deploy" / "nginx.conf"
START_TIMEOUT_SECONDS = 30
#: The header the test copy of nginx.conf adds: every upstream address nginx tried, in order.
UPSTREAM_HEADER = "x-cluster-upstream"
#: The provider key the proxies hold, as a team proxy would; callers use issued keys.
HELD_OPENAI_KEY = "sk-cluster-held-4b1d"
MODEL = "openai/gpt-4o-mini"
#: A model the test keys may not use (they are limited to openai/*).
FORBIDDEN_MODEL = "anthropic/claude-haiku-4-5"

IS_ROOT = os.geteuid() == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[Any] | None, what: str) -> None:
    """Until something accepts connections on the port; fails if `process` exits first."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on port {port} in {START_TIMEOUT_SECONDS} s")


_scratch: Path | None = None


def scratch_dir(name: str) -> Path:
    """A new directory for one server's files, under this run's one temp directory (which
    tests/cluster/run removes if this process dies before `remove_scratch`)."""
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="llm-proxy-cluster-"))
        # Postgres runs as its own user when we are root, and must reach its directory.
        _scratch.chmod(0o755)
        PID_DIR.mkdir(parents=True, exist_ok=True)
        (PID_DIR / "scratch.dir").write_text(f"{_scratch}\n")
    path = _scratch / name
    path.mkdir()
    return path


def remove_scratch() -> None:
    global _scratch
    if _scratch is not None:
        shutil.rmtree(_scratch, ignore_errors=True)
        (PID_DIR / "scratch.dir").unlink(missing_ok=True)
        _scratch = None


def write_pid(name: str, pid: int) -> None:
    PID_DIR.mkdir(parents=True, exist_ok=True)
    (PID_DIR / f"{name}.pid").write_text(f"{pid}\n")


def forget_pid(name: str) -> None:
    (PID_DIR / f"{name}.pid").unlink(missing_ok=True)


def stop_process(process: subprocess.Popen[Any], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- HTTP -----------------------------------------------------------------------------------


@dataclass
class Answer:
    """One HTTP exchange; `status` is None when no answer came (the error says why)."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def upstreams(self) -> list[str]:
        """The instances nginx tried for this request, in order (nginx's `$upstream_addr`)."""
        value = self.headers.get(UPSTREAM_HEADER, "")
        return [part.strip() for part in value.split(",") if part.strip()]


def call(port: int, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None, timeout: float = 10) -> Answer:
    """One request on a new connection to 127.0.0.1:port."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        data = response.read()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    except (OSError, http.client.HTTPException) as e:
        return Answer(None, error=f"{type(e).__name__}: {e}")
    finally:
        connection.close()


def chat(port: int, key: str, content: str, headers: dict[str, str] | None = None,
         timeout: float = 10, model: str = MODEL) -> Answer:
    """A chat completion on the front door, with an issued key."""
    return call(port, "POST", "/v1/chat/completions",
                {"model": model, "messages": [{"role": "user", "content": content}]},
                {"Authorization": f"Bearer {key}", **(headers or {})}, timeout)


# --- The mock upstream ----------------------------------------------------------------------


class QuietServer(ThreadingHTTPServer):
    """A killed proxy resets its idle connections to the upstream: not worth a traceback."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass


class MockOpenAI:
    """OpenAI's Chat Completions on loopback: the documented answer after `delay` seconds, or
    for `"stream": true` the documented stream, one event every `stream_gap` seconds.

    It counts the calls it received and the ones still being answered, so a test can tell what
    reached the upstream.
    """

    def __init__(self) -> None:
        self.answer = FIXTURE.read_bytes()
        self.events = [event + b"\n\n" for event in STREAM_FIXTURE.read_bytes().split(b"\n\n")
                       if event.strip()]
        self.delay = 0.0
        self.stream_gap = 0.2
        self.calls = 0
        self.in_flight = 0
        self._lock = threading.Lock()
        mock = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if not self.path.endswith("/chat/completions"):
                    self.send_error(404)
                    return
                with mock._lock:
                    mock.calls += 1
                    mock.in_flight += 1
                try:
                    time.sleep(mock.delay)
                    if body.get("stream"):
                        self.stream()
                        return
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(mock.answer)))
                    self.end_headers()
                    self.wfile.write(mock.answer)
                except OSError:
                    pass  # the proxy that asked is gone (a test killed it)
                finally:
                    with mock._lock:
                        mock.in_flight -= 1

            def stream(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i, event in enumerate(mock.events):
                    if i > 0:
                        time.sleep(mock.stream_gap)
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- Postgres -------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The newest Postgres under Debian's /usr/lib/postgresql/<version>/bin."""
    versions = sorted(
        (int(path.name), path / "bin") for path in Path("/usr/lib/postgresql").glob("*")
        if path.name.isdigit() and (path / "bin" / "initdb").exists()
    ) if Path("/usr/lib/postgresql").is_dir() else []
    if not versions:
        raise RuntimeError("Postgres is not installed: /usr/lib/postgresql/*/bin/initdb "
                           "(apt-get install postgresql; tests/cluster/run does so)")
    return versions[-1][1]


class Postgres:
    """A server of our own on a free loopback port; initdb and postgres refuse to run as root,
    so as root they run as the `postgres` user. Its files live in a temp dir that user owns."""

    def __init__(self) -> None:
        self.bin = postgres_bin()
        self.port = free_port()
        self.dir = scratch_dir("postgres")
        if IS_ROOT:
            shutil.chown(self.dir, "postgres", "postgres")
        self.data = self.dir / "data"
        self._run("initdb", "-D", str(self.data), "-U", "llm", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        options = f"-p {self.port} -h 127.0.0.1 -k {self.dir} -F"
        self._run("pg_ctl", "-D", str(self.data), "start", "-w", "-t", "30", "-o", options,
                  "-l", str(self.dir / "server.log"))
        pid = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        write_pid("postgres", int(pid))

    @property
    def url(self) -> str:
        return f"postgres://llm@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "stop", "-m", "immediate", "-w")
        finally:
            forget_pid("postgres")
            log = self.dir / "server.log"
            if log.exists():
                shutil.copyfile(log, LOG_DIR / "postgres.log")

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if IS_ROOT:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.dir)
        if done.returncode != 0:
            log = self.dir / "server.log"
            raise RuntimeError(f"{command}: exit {done.returncode}\n{done.stdout}{done.stderr}"
                               f"{log.read_text() if log.exists() else ''}")


# --- Redis ----------------------------------------------------------------------------------


class Redis:
    """Debian's redis-server on a fixed loopback port, with nothing saved to disk."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        with open(LOG_DIR / "redis.log", "ab") as log:
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(LOG_DIR)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        write_pid("redis", self.process.pid)
        wait_for_port(self.port, self.process, "redis-server")

    def keys(self, pattern: str) -> list[str]:
        """`KEYS pattern`, spoken in RESP over a socket of its own."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(f"KEYS {pattern}\r\n".encode())
            reply = s.makefile("rb")
            header = reply.readline()
            if not header.startswith(b"*"):
                raise RuntimeError(f"KEYS {pattern}: {header!r}")
            keys = []
            for _ in range(int(header[1:])):
                length = int(reply.readline()[1:])
                keys.append(reply.read(length + 2)[:-2].decode())
            return keys

    def stop(self) -> None:
        """SIGTERM, as `systemctl stop` would: Redis closes every connection and exits."""
        if self.process is not None:
            stop_process(self.process)
        forget_pid("redis")


# --- The proxy ------------------------------------------------------------------------------


class Proxy:
    """One instance of the binary, on its own fixed port, in an empty working directory (so no
    `.env` is read). Its stderr is copied line by line to target/cluster/proxy-<name>.log."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        if not BINARY.is_file():
            raise RuntimeError(f"{BINARY} is missing: run `cargo build` (tests/cluster/run does)")
        self.name = name
        self.port = free_port()
        self.env = env
        self.dir = scratch_dir(f"proxy-{name.lower()}")
        self.log_path = LOG_DIR / f"proxy-{name.lower()}.log"
        self.process: subprocess.Popen[str] | None = None
        self.start()

    @property
    def address(self) -> str:
        """How nginx's `$upstream_addr` names this instance."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        listening = threading.Event()
        self.process = subprocess.Popen(
            [str(BINARY)], cwd=self.dir,
            env={"HOST": "127.0.0.1", "PORT": str(self.port), "WORKERS": "1",
                 "RUST_LOG": "info", "PATH": os.environ.get("PATH", ""), **self.env},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        write_pid(f"proxy-{self.name.lower()}", self.process.pid)
        threading.Thread(target=self._copy_log, args=(self.process, listening),
                         daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not listening.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                stop_process(self.process, signal.SIGKILL)
                raise RuntimeError(f"proxy {self.name} did not start (exit "
                                   f"{self.process.returncode}); see {self.log_path}")

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill: nothing is finished or flushed."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        forget_pid(f"proxy-{self.name.lower()}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        forget_pid(f"proxy-{self.name.lower()}")

    def metric(self, name: str) -> float | None:
        """A metric without labels from GET /metrics, or None when it is not there."""
        answer = call(self.port, "GET", "/metrics", timeout=2)
        if answer.status != 200:
            return None
        match = re.search(rf"^{re.escape(name)} (\S+)$", answer.body.decode(), re.MULTILINE)
        return float(match[1]) if match else None

    def _copy_log(self, process: subprocess.Popen[str], listening: threading.Event) -> None:
        assert process.stderr is not None
        with open(self.log_path, "a") as log:
            log.write(f"--- started, pid {process.pid}\n")
            for line in process.stderr:
                log.write(line)
                log.flush()
                if "listening on http://" in line:
                    listening.set()
            process.stderr.close()
            log.write(f"--- exited with {process.wait()}\n")


# --- nginx ----------------------------------------------------------------------------------


def nginx_conf(listen_port: int, a: Proxy, b: Proxy, prefix: Path,
               down: Proxy | None = None) -> str:
    """deploy/nginx.conf with loopback addresses and our paths, and `down` marked so. Each swap
    must match exactly once, so a change to the shipped file that the test would silently miss
    fails here."""
    temp_paths = "".join(f"    {kind}_temp_path {prefix}/{kind}_temp;\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    swaps = [
        # Workers as root on loopback: nothing to protect, and no user to create.
        ("user nginx;\n", "user root;\n" if IS_ROOT else ""),
        ("error_log /var/log/nginx/error.log notice;",
         f"error_log {LOG_DIR}/nginx-error.log notice;"),
        ("pid /var/run/nginx.pid;", f"pid {prefix}/nginx.pid;"),
        ("    access_log /var/log/nginx/access.log upstreams;\n",
         f"    access_log {LOG_DIR}/nginx-access.log upstreams;\n{temp_paths}"),
        ("server proxy-a:8000 ", f"server {a.address} {'down ' if down is a else ''}"),
        ("server proxy-b:8000 ", f"server {b.address} {'down ' if down is b else ''}"),
        ("listen 80;", f"listen 127.0.0.1:{listen_port};"),
        ("            proxy_pass http://llm_proxy;\n",
         "            proxy_pass http://llm_proxy;\n"
         f"            add_header {UPSTREAM_HEADER.title()} $upstream_addr always;\n"),
    ]
    text = NGINX_CONF.read_text()
    for old, new in swaps:
        count = text.count(old)
        if count != 1:
            raise RuntimeError(f"deploy/nginx.conf: expected {old.strip()!r} once, found {count}")
        text = text.replace(old, new)
    return text


class Nginx:
    """nginx in the foreground with the test copy of deploy/nginx.conf."""

    def __init__(self, a: Proxy, b: Proxy) -> None:
        self.port = free_port()
        self.a, self.b = a, b
        self.prefix = LOG_DIR / "nginx"
        self.prefix.mkdir(parents=True, exist_ok=True)
        self.conf = self.prefix / "nginx.conf"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def command(self, *args: str) -> list[str]:
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(self.conf), "-p",
                str(self.prefix), "-e", str(LOG_DIR / "nginx-error.log"), *args]

    def start(self) -> None:
        self.conf.write_text(nginx_conf(self.port, self.a, self.b, self.prefix))
        with open(LOG_DIR / "nginx-error.log", "ab") as log:
            self.process = subprocess.Popen(self.command("-g", "daemon off;"),
                                            stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        write_pid("nginx", self.process.pid)
        wait_for_port(self.port, self.process, "nginx")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGQUIT)
        forget_pid("nginx")

    def restart(self) -> None:
        """A fresh nginx: no instance is still marked failed from a test before."""
        self.stop()
        self.start()

    def reload(self, down: Proxy | None) -> None:
        """The configuration again with `down` taken out (None: both in), as an operator
        reloads it (SIGHUP); returns once new connections go only where they should. Old
        workers finish the requests they have and close their idle connections."""
        assert self.process is not None
        self.conf.write_text(nginx_conf(self.port, self.a, self.b, self.prefix, down))
        self.process.send_signal(signal.SIGHUP)
        wanted = {proxy.address for proxy in (self.a, self.b) if proxy is not down}
        deadline = time.monotonic() + 10
        seen: list[str] = []
        # Round robin: with both in, a few requests in a row reach both.
        while set(seen[-6:]) != wanted or len(seen) < 6:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx reload: still {seen[-6:]}, not {sorted(wanted)}")
            answer = call(self.port, "GET", "/healthz", timeout=2)
            seen.append(answer.upstreams[-1] if answer.upstreams else "")


# --- The whole cluster ----------------------------------------------------------------------


class Cluster:
    def __init__(self) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.admin_token = secrets.token_hex(16)
        self.upstream = MockOpenAI()
        self.postgres: Postgres | None = None
        self.redis: Redis | None = None
        self.proxies: list[Proxy] = []
        self.nginx: Nginx | None = None
        # The providers file: the proxies hold the OpenAI key, so callers use issued keys.
        providers = scratch_dir("config") / "providers.json"
        providers.write_text(json.dumps(
            {"providers": {"openai": {"api_key_env": "OPENAI_API_KEY"}}}))
        try:
            self.postgres = Postgres()
            self.redis = Redis()
            env = {
                "DATABASE_URL": self.postgres.url,
                "REDIS_URL": self.redis.url,
                "ADMIN_TOKEN": self.admin_token,
                "PROVIDERS_FILE": str(providers),
                "OPENAI_API_KEY": HELD_OPENAI_KEY,
                "OPENAI_BASE_URL": f"http://127.0.0.1:{self.upstream.port}/v1",
            }
            self.a = Proxy("A", env)
            self.proxies.append(self.a)
            self.b = Proxy("B", env)
            self.proxies.append(self.b)
            self.nginx = Nginx(self.a, self.b)
        except BaseException:
            self.stop()
            raise

    def ensure_up(self) -> None:
        """Starts again what a test before stopped, and gives nginx both instances back."""
        assert self.redis is not None and self.nginx is not None
        if not self.redis.running:
            self.redis.start()
        restarted = False
        for proxy in self.proxies:
            if not proxy.running:
                proxy.start()
                restarted = True
        if restarted or self.nginx.process is None or self.nginx.process.poll() is not None:
            self.nginx.restart()
        self.upstream.delay = 0.0

    def admin_call(self, method: str, path: str, body: Any = None) -> Answer:
        """A call to A's admin API."""
        return call(self.a.port, method, path, body,
                    {"Authorization": f"Bearer {self.admin_token}"})

    def create_key(self, name: str, **limits: Any) -> tuple[str, str]:
        """A key for openai/* made through A's admin API: (id, secret)."""
        answer = self.admin_call("POST", "/admin/keys",
                                 {"name": name, "models": ["openai/*"], **limits})
        if answer.status != 201:
            raise RuntimeError(f"POST /admin/keys: {answer.status} {answer.body!r} "
                               f"{answer.error or ''}")
        created = answer.json()
        return created["id"], created["key"]

    def keys_command(self, *args: str) -> str:
        """`llm-proxy keys ...` on the cluster's Postgres, as an operator would run it."""
        done = subprocess.run(
            [str(BINARY), "keys", *args], capture_output=True, text=True,
            cwd=self.a.dir, env={"DATABASE_URL": self.postgres.url if self.postgres else "",
                                 "PATH": os.environ.get("PATH", "")}, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"llm-proxy keys {' '.join(args)}: exit {done.returncode}\n"
                               f"{done.stdout}{done.stderr}")
        return done.stdout

    def wait_until_known(self, secret: str) -> None:
        """Until both instances know a new key (within 250 ms of its creation, by the store's
        key version). The probe names a model the key may not use: a 403 once the key is known,
        checked before its limits, so waiting spends none of them."""
        deadline = time.monotonic() + 5
        for proxy in self.proxies:
            while (status := chat(proxy.port, secret, "probe",
                                  model=FORBIDDEN_MODEL).status) != 403:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"proxy {proxy.name} still answers {status} for a new key")
                time.sleep(0.02)

    def stop(self) -> None:
        servers = [self.nginx, *self.proxies, self.redis, self.postgres, self.upstream]
        for server in servers:
            if server is None:
                continue
            try:
                server.stop()
            except Exception as e:  # noqa: BLE001 (stop the rest all the same)
                print(f"cluster: stopping: {e}")
        remove_scratch()


# --- Load -----------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request of a load: when it started and ended (time.monotonic), and its answer."""

    start: float
    end: float
    answer: Answer


class Load:
    """`threads` callers sending chat requests through one port, one after another each, until
    stopped; every request is kept."""

    def __init__(self, port: int, key: str, threads: int) -> None:
        self.sent: list[Sent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(port, key, i), daemon=True)
                         for i in range(threads)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> list[Sent]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return sorted(self.sent, key=lambda sent: sent.start)

    def _run(self, port: int, key: str, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            start = time.monotonic()
            answer = chat(port, key, f"load {index}.{n}")
            with self._lock:
                self.sent.append(Sent(start, time.monotonic(), answer))


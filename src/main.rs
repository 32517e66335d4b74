//! The `llm-proxy` binary: configuration from the environment, then the server until a signal;
//! or `llm-proxy keys ...`, the key commands ([`llm_proxy::keys::cli`]).

use std::{net::TcpListener, process::ExitCode};

use llm_proxy::{http::server, Config};

/// mimalloc instead of glibc's malloc: per-thread free lists suit a server that allocates and
/// frees the same small buffers on every request (see Cargo.toml for the figures).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[actix_web::main]
async fn main() -> ExitCode {
    // A missing .env is normal (the environment alone is a complete configuration); a broken
    // one must not be half-read in silence.
    if let Err(e) = dotenvy::dotenv() {
        if !e.not_found() {
            eprintln!("llm-proxy: invalid .env: {e}");
            return ExitCode::from(2);
        }
    }
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let keys_command = args.first().is_some_and(|arg| arg == "keys");
    // A command's output is its answer: only warnings and errors go beside it.
    let default_level = if keys_command { "warn" } else { "info" };
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level));
    if std::env::var("LOG_FORMAT").is_ok_and(|format| format == "json") {
        logger.format(json_line);
    }
    logger.init();
    if keys_command {
        return ExitCode::from(llm_proxy::keys::cli::main(&args[1..]).await);
    }

    let config = match Config::from_env() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("llm-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    match server::raise_open_file_limit() {
        Ok(limit) => log::debug!("open file limit: {limit}"),
        Err(e) => log::warn!("could not raise the open file limit: {e}"),
    }
    let listener = match TcpListener::bind((config.host.as_str(), config.port)) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!(
                "llm-proxy: cannot listen on {}:{}: {e}",
                config.host, config.port
            );
            return ExitCode::from(1);
        }
    };
    let redis = match llm_proxy::cluster::Redis::from_config(&config) {
        Ok(redis) => redis,
        Err(e) => {
            eprintln!("llm-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let accounts = match &config.database_url {
        None => None,
        Some(url) => match server::Accounts::open(url, redis).await {
            Ok(accounts) => Some(accounts),
            Err(e) => {
                eprintln!("llm-proxy: cannot open the store (DATABASE_URL): {e}");
                return ExitCode::from(1);
            }
        },
    };
    // Said once the store is open: a caller that waits for this line finds everything ready.
    if let Ok(address) = listener.local_addr() {
        log::info!(
            "listening on http://{address} with {} workers",
            config.workers
        );
    }
    let server = match server::build(config, accounts.as_ref(), listener) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("llm-proxy: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    actix_web::rt::spawn(server::stop_on_signals(server.handle()));
    let result = server.await;
    // The records of the last requests are still queued: write them before leaving.
    if let Some(accounts) = &accounts {
        accounts.keyring.flush().await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-proxy: {e}");
            ExitCode::from(1)
        }
    }
}

/// `LOG_FORMAT=json`: one object per line. Access lines arrive as JSON objects already and get
/// the timestamp and level in front; every other line is wrapped, and a line about a request
/// (its message starts `request_id=<id> `) gets the id as a field of its own.
fn json_line(
    out: &mut env_logger::fmt::Formatter,
    record: &log::Record<'_>,
) -> std::io::Result<()> {
    use std::io::Write;

    let timestamp = out.timestamp_millis().to_string();
    let message = record.args().to_string();
    if record.target() == "access" && message.starts_with('{') {
        return writeln!(
            out,
            r#"{{"timestamp":"{timestamp}","level":"{}",{}"#,
            record.level(),
            &message[1..]
        );
    }
    let (request_id, message) = match message
        .strip_prefix("request_id=")
        .and_then(|rest| rest.split_once(' '))
    {
        Some((id, rest)) => (Some(id), rest),
        None => (None, message.as_str()),
    };
    let mut line = serde_json::json!({
        "timestamp": timestamp,
        "level": record.level().as_str(),
        "target": record.target(),
        "message": message,
    });
    if let Some(id) = request_id {
        line["request_id"] = id.into();
    }
    writeln!(out, "{line}")
}

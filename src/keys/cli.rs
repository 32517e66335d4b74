//! `llm-proxy keys ...`: the admin API's key operations straight on the store, from a shell.

use std::io::Write;

use serde_json::{Map, Value};

use super::spec::{self, ChangeError, KeySpec, SpecError};
use crate::store::{Store, DEFAULT_URL};

/// Exit codes: done, failed (the store, an unknown id), or the command line was wrong.
pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

pub const USAGE: &str = "\
llm-proxy keys: manage the keys this proxy issues, in the store DATABASE_URL names
(default sqlite://llm-proxy.db). A running proxy sees every change within a second.

Usage:
  llm-proxy keys create --name NAME [KEY FLAGS]   make a key; its secret is shown only then
  llm-proxy keys list                             every key, without secrets
  llm-proxy keys show ID                          one key, as JSON
  llm-proxy keys update ID [KEY FLAGS]            change what the flags name
  llm-proxy keys revoke ID                        stop a key for good (its usage stays)
  llm-proxy keys --help

Key flags (`--flag VALUE` or `--flag=VALUE`):
  --name NAME               at most 128 characters
  --owner OWNER             the team or person it belongs to
  --models GLOB[,GLOB]      models or groups it may call, such as 'openai/*'; repeatable;
                            '' allows any model
  --rpm N                   requests per minute ('none': no limit)
  --tpm N                   tokens per minute ('none': no limit)
  --max-concurrent N        requests in flight at once ('none': no limit)
  --budget-usd USD/PERIOD   such as 20/month (day, week, month, total; 'none': no budget)
  --expires TIME            RFC 3339, such as 2030-01-31T00:00:00Z ('none': never)
  --metadata KEY=VALUE      repeatable; replaces all metadata
  --enable, --disable       turn the key on or off
";

/// Runs `llm-proxy keys` with `args` (those after `keys`), with `DATABASE_URL` from the
/// environment (already holding `.env`), and returns the exit code.
pub async fn main(args: &[String]) -> u8 {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if url.trim() == "none" => {
            eprintln!("llm-proxy keys: DATABASE_URL=none: there is no store to keep keys in");
            return EXIT_USAGE;
        }
        Ok(url) if !url.trim().is_empty() => url.trim().to_owned(),
        _ => DEFAULT_URL.to_owned(),
    };
    run(
        args,
        &url,
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
    .await
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Help,
    Create(KeySpec),
    List,
    Show(String),
    Update(String, KeySpec),
    Revoke(String),
}

/// A command line that does not hold, said as the message to print.
struct Usage(String);

/// Runs the command in `args` against the store at `url`, writing answers to `out` and
/// problems to `err`.
pub async fn run(args: &[String], url: &str, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let command = match parse(args) {
        Ok(command) => command,
        Err(Usage(message)) => {
            let _ = writeln!(
                err,
                "llm-proxy keys: {message}\n(see llm-proxy keys --help)"
            );
            return EXIT_USAGE;
        }
    };
    if command == Command::Help {
        let _ = out.write_all(USAGE.as_bytes());
        return EXIT_OK;
    }
    let store = match Store::open(url).await {
        Ok(store) => store,
        Err(e) => {
            let _ = writeln!(
                err,
                "llm-proxy keys: cannot open the store (DATABASE_URL): {e}"
            );
            return EXIT_FAILED;
        }
    };
    match execute(&store, command, out).await {
        Ok(()) => EXIT_OK,
        Err(ChangeError::Invalid(e)) => {
            let _ = writeln!(err, "llm-proxy keys: {}", as_flag(&e));
            EXIT_USAGE
        }
        Err(e) => {
            let _ = writeln!(err, "llm-proxy keys: {e}");
            EXIT_FAILED
        }
    }
}

async fn execute(store: &Store, command: Command, out: &mut dyn Write) -> Result<(), ChangeError> {
    let now = super::now_ms();
    // Writes to a closed stdout are not worth failing a change that is already stored.
    match command {
        Command::Help => {}
        Command::Create(spec) => {
            let (row, secret) = spec::create(store, &spec, now).await?;
            let _ = writeln!(
                out,
                "created key {} ({})\n\n    {}\n\n\
                 This is the only time the key is shown: store it now.",
                row.id,
                row.name,
                secret.expose()
            );
        }
        Command::List => {
            let rows = store.list_keys().await?;
            let _ = out.write_all(table(&rows, now).as_bytes());
        }
        Command::Show(id) => {
            let row = store.get_key(&id).await?.ok_or(ChangeError::NotFound)?;
            let _ = writeln!(out, "{:#}", spec::key_json(&row, now));
        }
        Command::Update(id, patch) => {
            let row = spec::update(store, &id, &patch, now).await?;
            let _ = writeln!(out, "{:#}", spec::key_json(&row, now));
        }
        Command::Revoke(id) => {
            let row = spec::revoke(store, &id, now).await?;
            let _ = writeln!(out, "revoked key {} ({})", row.id, row.name);
        }
    }
    Ok(())
}

fn parse(args: &[String]) -> Result<Command, Usage> {
    let Some((verb, rest)) = args.split_first() else {
        return Err(Usage(
            "name a command: create, list, show, update or revoke".into(),
        ));
    };
    match verb.as_str() {
        "--help" | "-h" | "help" => Ok(Command::Help),
        "create" => Ok(Command::Create(key_flags(rest)?)),
        "list" => no_more(rest).map(|()| Command::List),
        "show" => one_id(rest).map(Command::Show),
        "revoke" => one_id(rest).map(Command::Revoke),
        "update" => {
            let Some((id, flags)) = rest.split_first().filter(|(id, _)| !id.starts_with('-'))
            else {
                return Err(Usage(
                    "update needs the key's id first: update ID [FLAGS]".into(),
                ));
            };
            Ok(Command::Update(id.clone(), key_flags(flags)?))
        }
        other => Err(Usage(format!(
            "{:?} is not a command (create, list, show, update, revoke)",
            other.chars().take(64).collect::<String>()
        ))),
    }
}

fn no_more(rest: &[String]) -> Result<(), Usage> {
    match rest.first() {
        None => Ok(()),
        Some(extra) => Err(Usage(format!("unexpected {extra:?}"))),
    }
}

fn one_id(rest: &[String]) -> Result<String, Usage> {
    match rest {
        [id] if !id.starts_with('-') => Ok(id.clone()),
        _ => Err(Usage("give exactly one key id".into())),
    }
}

/// The JSON field each flag sets, so the flags are read by the same rules as the admin API's
/// bodies: this only turns text into JSON, [`KeySpec`] decides what holds.
const FLAGS: [(&str, &str); 9] = [
    ("--name", "name"),
    ("--owner", "owner"),
    ("--models", "models"),
    ("--rpm", "rpm"),
    ("--tpm", "tpm"),
    ("--max-concurrent", "max_concurrent"),
    ("--budget-usd", "budget"),
    ("--expires", "expires_at"),
    ("--metadata", "metadata"),
];

fn key_flags(args: &[String]) -> Result<KeySpec, Usage> {
    let mut fields = Map::new();
    let mut models: Option<Vec<Value>> = None;
    let mut metadata: Option<Map<String, Value>> = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--enable" | "--disable" => {
                fields.insert("enabled".into(), Value::Bool(arg == "--enable"));
                continue;
            }
            _ => {}
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) => (flag, Some(value.to_owned())),
            None => (arg.as_str(), None),
        };
        let Some(&(flag, field)) = FLAGS.iter().find(|(name, _)| *name == flag) else {
            return Err(Usage(format!(
                "unknown flag {:?}",
                flag.chars().take(64).collect::<String>()
            )));
        };
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .cloned()
                .ok_or_else(|| Usage(format!("{flag} needs a value")))?,
        };
        match field {
            "models" => models.get_or_insert_with(Vec::new).extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|glob| !glob.is_empty())
                    .map(Value::from),
            ),
            "metadata" => {
                let Some((key, text)) = value.split_once('=') else {
                    return Err(Usage(format!("{flag} takes KEY=VALUE, not {value:?}")));
                };
                metadata
                    .get_or_insert_with(Map::new)
                    .insert(key.to_owned(), Value::from(text));
            }
            "rpm" | "tpm" | "max_concurrent" => {
                let number = match value.as_str() {
                    "none" => Value::Null,
                    text => text
                        .parse::<i64>()
                        .map(Value::from)
                        .map_err(|_| Usage(format!("{flag}: {text:?} is not a whole number")))?,
                };
                fields.insert(field.into(), number);
            }
            "expires_at" if value == "none" => {
                fields.insert(field.into(), Value::Null);
            }
            _ => {
                fields.insert(field.into(), Value::from(value));
            }
        }
    }
    if let Some(models) = models {
        fields.insert("models".into(), Value::Array(models));
    }
    if let Some(metadata) = metadata {
        fields.insert("metadata".into(), Value::Object(metadata));
    }
    KeySpec::from_value(&Value::Object(fields)).map_err(|e| Usage(as_flag(&e)))
}

/// A spec's error, naming the flag instead of the JSON field.
fn as_flag(error: &SpecError) -> String {
    let flag = match error.field.as_str() {
        "enabled" => "--enable/--disable",
        field => FLAGS
            .iter()
            .find(|(_, f)| *f == field)
            .map_or(field, |(flag, _)| *flag),
    };
    format!("{flag}: {}", error.problem)
}

/// The keys as a plain text table, without secrets or hashes.
fn table(rows: &[super::KeyRow], now: i64) -> String {
    let header = [
        "ID", "NAME", "OWNER", "PREFIX", "STATUS", "BUDGET", "MODELS",
    ];
    let mut lines: Vec<[String; 7]> = vec![header.map(String::from)];
    for row in rows {
        let shown = spec::key_json(row, now);
        let text = |field: &str| shown[field].as_str().unwrap_or("-").to_owned();
        lines.push([
            row.id.clone(),
            row.name.clone(),
            text("owner"),
            row.prefix.clone(),
            text("status"),
            text("budget"),
            if row.models.is_empty() {
                "*".to_owned()
            } else {
                row.models.join(",")
            },
        ]);
    }
    let mut widths = [0; 7];
    for line in &lines {
        for (width, cell) in widths.iter_mut().zip(line) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    if rows.is_empty() {
        out.push_str("(no keys yet: llm-proxy keys create --name NAME)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{Budget, Period};
    use crate::store::test_db;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(String::from).collect()
    }

    fn spec_of(text: &str) -> KeySpec {
        match parse(&args(text)) {
            Ok(Command::Create(spec)) | Ok(Command::Update(_, spec)) => spec,
            Ok(other) => panic!("{other:?}"),
            Err(Usage(message)) => panic!("{message}"),
        }
    }

    fn usage_error(text: &str) -> String {
        match parse(&args(text)) {
            Err(Usage(message)) => message,
            Ok(command) => panic!("{text:?} parsed as {command:?}"),
        }
    }

    #[test]
    fn flags_make_the_same_spec_as_the_json_body() {
        let from_flags = spec_of(
            "create --name ci --owner team --models openai/*,anthropic/* --models=fast \
             --rpm 60 --tpm=1000 --max-concurrent 2 --budget-usd 20/month \
             --expires 2030-01-31T00:00:00Z --metadata env=prod --metadata a=b=c --disable",
        );
        let from_json = KeySpec::from_value(&serde_json::json!({
            "name": "ci", "owner": "team", "models": ["openai/*", "anthropic/*", "fast"],
            "rpm": 60, "tpm": 1000, "max_concurrent": 2, "budget": "20/month",
            "expires_at": "2030-01-31T00:00:00Z", "metadata": {"env": "prod", "a": "b=c"},
            "enabled": false,
        }))
        .unwrap();
        assert_eq!(from_flags, from_json);
        assert_eq!(
            from_flags.budget,
            Some(Some(Budget {
                usd: 20.0,
                period: Period::Month
            }))
        );
    }

    #[test]
    fn none_clears_and_an_empty_models_flag_allows_any() {
        let spec = spec_of("update key_x --rpm none --budget-usd none --expires none --models=");
        assert_eq!(spec.rpm, Some(None));
        assert_eq!(spec.budget, Some(None));
        assert_eq!(spec.expires_at, Some(None));
        assert_eq!(spec.models, Some(vec![]));
        assert_eq!(spec.name, None);
    }

    #[test]
    fn bad_command_lines_say_what_is_wrong_naming_the_flag() {
        for (text, says) in [
            ("", "name a command"),
            ("destroy", "\"destroy\" is not a command"),
            ("create --name", "--name needs a value"),
            ("create --colour red", "unknown flag \"--colour\""),
            (
                "create --name ci --rpm many",
                "--rpm: \"many\" is not a whole number",
            ),
            (
                "create --name ci --rpm -3",
                "--rpm: must be a whole number from 0",
            ),
            (
                "create --name ci --budget-usd 20/year",
                "--budget-usd: the budget's period",
            ),
            (
                "create --name ci --expires soon",
                "--expires: \"soon\" is not an RFC 3339",
            ),
            (
                "create --name ci --metadata novalue",
                "--metadata takes KEY=VALUE",
            ),
            ("show", "exactly one key id"),
            ("show a b", "exactly one key id"),
            ("update --rpm 3", "update needs the key's id first"),
            ("list extra", "unexpected \"extra\""),
        ] {
            let message = usage_error(text);
            assert!(message.contains(says), "{text:?}: {message}");
        }
        assert_eq!(parse(&args("--help")).ok(), Some(Command::Help));
    }

    #[actix_web::test]
    async fn create_list_and_revoke_through_the_store() {
        let db = test_db::sqlite().await;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(
            &args("create --name ci --budget-usd 5/day"),
            &db.url,
            &mut out,
            &mut err,
        )
        .await;
        assert_eq!(code, EXIT_OK, "{}", String::from_utf8_lossy(&err));
        let created = String::from_utf8(out).unwrap();
        let secret = created
            .split_whitespace()
            .find(|word| word.starts_with("lp-"))
            .expect("the secret is shown")
            .to_owned();
        assert!(created.contains("only time"), "{created}");
        let row = db.store.list_keys().await.unwrap().remove(0);
        assert_eq!(row.hash, crate::keys::hash_hex(&secret));

        let mut out = Vec::new();
        assert_eq!(
            run(&args("list"), &db.url, &mut out, &mut err).await,
            EXIT_OK
        );
        let listed = String::from_utf8(out).unwrap();
        assert!(listed.contains("ci") && listed.contains("5/day") && listed.contains(&row.prefix));
        assert!(
            !listed.contains(&secret) && !listed.contains(&row.hash),
            "{listed}"
        );

        let mut out = Vec::new();
        let revoke = args(&format!("revoke {}", row.id));
        assert_eq!(run(&revoke, &db.url, &mut out, &mut err).await, EXIT_OK);
        assert!(db
            .store
            .get_key(&row.id)
            .await
            .unwrap()
            .unwrap()
            .revoked_at
            .is_some());

        let mut err = Vec::new();
        let code = run(
            &args("show key_missing"),
            &db.url,
            &mut Vec::new(),
            &mut err,
        )
        .await;
        assert_eq!(code, EXIT_FAILED);
        assert!(String::from_utf8(err)
            .unwrap()
            .contains("no key has this id"));

        let mut err = Vec::new();
        let code = run(
            &args("create --owner x"),
            &db.url,
            &mut Vec::new(),
            &mut err,
        )
        .await;
        assert_eq!(code, EXIT_USAGE);
        assert!(String::from_utf8(err)
            .unwrap()
            .contains("--name: is required"));
    }
}

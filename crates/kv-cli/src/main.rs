//! `kv`: the command-line tool of the kv workspace. One syntax for etcd, Consul, ZooKeeper,
//! Redis, DynamoDB and the embedded store: `kv [--store URL] get | put | rm | ls | exists |
//! cas | watch | lock | txn | elect | schemes | completions`. Run `kv --help` for the
//! examples and the exit codes.

mod exit;
mod output;

use std::io::{IsTerminal, Read, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use futures::StreamExt;
use kv::{Bytes, Condition, KvPair, LockOptions, ReadOptions, Store, Transaction, WriteOptions};
use serde_json::json;

use exit::Failure;

const EXAMPLES: &str = "\
Examples:
  kv put app/config/port 8080          # embedded store in ./.kv (no server needed)
  kv get app/config/port
  kv ls -r app                         # every key below app/
  kv --store etcd://127.0.0.1:2379 put app/flag on --ttl 30s
  export KV_STORE=redis://127.0.0.1:6379
  kv put app/cert @cert.pem            # value from a file; `-` reads stdin
  kv cas app/config/port 8081 --prev-index 42
  kv watch -r app --json               # one JSON object per line, Ctrl-C ends it
  kv lock app/migrate --timeout 10s -- ./migrate.sh
  kv txn --if-index app/a=42 --put app/a=1 --put app/b=2 --del app/old

The store: --store URL, else $KV_STORE, else the embedded store in ./.kv
(bolt:.kv). `kv schemes` lists the URL schemes of this build. The embedded store
admits one process at a time: other kv commands on ./.kv wait while a `watch` or
`lock` holds it open; use a server store to coordinate several processes.

Values: text is printed as is; a binary value (not UTF-8, or with control
characters) is printed escaped like a Rust byte string (\\xNN), and in --json as
\"value_base64\" instead of \"value\". `get --raw` writes the exact bytes.
";

/// One tool for etcd, Consul, ZooKeeper, Redis, DynamoDB and an embedded store.
#[derive(Debug, Parser)]
#[command(
    name = "kv",
    version,
    about = "One tool for the key/value stores: etcd, Consul, ZooKeeper, Redis, DynamoDB, embedded",
    after_help = format!("{EXAMPLES}\n{}", exit::TABLE),
)]
struct Cli {
    /// The store's URL (etcd://…, consul://…, zk://…, redis://…, dynamodb://…, bolt:PATH).
    /// Default: $KV_STORE, else the embedded store in ./.kv
    #[arg(
        long,
        global = true,
        env = "KV_STORE",
        value_name = "URL",
        hide_env_values = true
    )]
    store: Option<String>,

    /// Machine-readable output: JSON (watch: one object per line).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print a key's value (exit 1 if the key does not exist).
    Get {
        /// The key.
        key: String,
        /// Write the value's exact bytes, with no newline and no escaping.
        #[arg(long, conflicts_with = "base64")]
        raw: bool,
        /// Print the value in base64.
        #[arg(long)]
        base64: bool,
        /// Also print the key's last index (its version, for `cas --prev-index`).
        #[arg(long, short = 'i')]
        index: bool,
    },
    /// Create or overwrite a key.
    #[command(
        after_help = "VALUE: text, @FILE (the file's bytes) or - (standard input). \
                            --string takes VALUE literally, even when it starts with @ or is -."
    )]
    Put {
        /// The key.
        key: String,
        /// The value: text, @FILE or - (stdin).
        #[arg(allow_hyphen_values = true)]
        value: String,
        /// Take VALUE literally.
        #[arg(long)]
        string: bool,
        /// Expire the key after this long (500ms, 30s, 5m, 1h).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Delete a key, or with -r a key and everything below it.
    Rm {
        /// The key or, with -r, the directory.
        key: String,
        /// Delete the whole tree below KEY too (exit 0 even if nothing was there).
        #[arg(short, long)]
        recursive: bool,
    },
    /// List the entries below a directory: one level, or every key with -r.
    Ls {
        /// The directory (default: the whole store).
        #[arg(default_value = "")]
        dir: String,
        /// Every key at any depth, not only the first level.
        #[arg(short, long)]
        recursive: bool,
        /// Also print each key's index and value.
        #[arg(short, long)]
        long: bool,
    },
    /// Exit 0 if the key exists, 1 if not (prints true or false).
    Exists {
        /// The key.
        key: String,
    },
    /// Compare-and-swap: write (or delete) a key only if it is as expected.
    #[command(
        group(ArgGroup::new("expect").required(true).args(["create", "prev_index", "prev_value"])),
        after_help = "Examples:\n  kv cas lock/owner me --create\n  \
                      kv cas config/port 8081 --prev-index 42\n  \
                      kv cas config/port 8081 --prev-value 8080\n  \
                      kv cas config/port --delete --prev-index 43\n\
                      Exit 3 when the key is not as expected."
    )]
    Cas {
        /// The key.
        key: String,
        /// The new value: text, @FILE or - (stdin). Not with --delete.
        #[arg(allow_hyphen_values = true, required_unless_present = "delete")]
        value: Option<String>,
        /// Take VALUE literally.
        #[arg(long)]
        string: bool,
        /// Only if the key does not exist yet.
        #[arg(long, conflicts_with = "delete")]
        create: bool,
        /// Only if the key's last index is N (see `get -i`).
        #[arg(long, value_name = "N")]
        prev_index: Option<u64>,
        /// Only if the key's current value is V.
        #[arg(long, value_name = "V")]
        prev_value: Option<String>,
        /// Delete the key instead of writing it.
        #[arg(long, conflicts_with = "value")]
        delete: bool,
        /// Expire the key after this long.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// Print a key's value and every change until interrupted (Ctrl-C ends it, exit 0).
    Watch {
        /// The key, or with -r the directory.
        key: String,
        /// Watch the whole tree below KEY: each change prints the full list.
        #[arg(short, long)]
        recursive: bool,
        /// Stop after N events (the current state counts as the first).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Hold a lock while a command runs, like flock(1).
    #[command(
        after_help = "Runs CMD while holding the lock on KEY, releases it after, and exits \
                            with CMD's status. If the lock is lost while CMD runs (expired, taken \
                            over), CMD is killed and kv exits 5. CMD gets KV_LOCK_KEY and \
                            KV_LOCK_TOKEN (the fencing token) in its environment. When stdin is not a \
                            terminal (scripts, services), CMD runs in a process group of its own, \
                            the whole group is killed on a lost lock and kv forwards SIGINT and \
                            SIGTERM to it; interactively CMD stays in the terminal's group.\n\n\
                            Example:\n  kv lock jobs/backup --timeout 30s -- ./backup.sh --full"
    )]
    Lock {
        /// The lock's key.
        key: String,
        /// Give up after this long (exit 4); default: wait forever.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
        /// The lock's TTL, renewed in the background while held (default 15s).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// The value the key holds while locked (other clients can read it).
        #[arg(long, default_value = "")]
        value: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Atomic transaction: conditions, then puts and deletes, all or nothing.
    #[command(
        after_help = "Conditions and operations apply in the order given. If a condition \
                            fails nothing is written and kv exits 3, naming the first failing \
                            condition. Prints the new index of every key put.\n\n\
                            Examples:\n  kv txn --if-absent app/lock --put app/lock=me --put app/epoch=1\n  \
                            kv txn --if-index app/a=42 --if-exists app/b --put app/a=1 --del app/b\n  \
                            kv txn --put-file app/cert=cert.pem --ttl 1h --put app/ready=yes"
    )]
    Txn(TxnArgs),
    /// Campaign for leadership of an election and hold it until interrupted, or observe it.
    #[command(
        after_help = "Without --observe: waits until elected (print the term, the fencing token \
                      of this leadership), then holds the leadership until Ctrl-C/SIGTERM \
                      (resigns, exit 0) or until it is lost (exit 5). With --observe: prints the \
                      leader (value and term) or `no leader`, then every change, until \
                      interrupted (exit 0). The election's keys are NAME/lock and NAME/value \
                      (see the kv-election crate).\n\n\
                      Examples:\n  kv elect services/scheduler node-1 --ttl 10s\n  \
                      kv elect --observe services/scheduler"
    )]
    Elect {
        /// The election's name (a directory).
        name: String,
        /// The value published while leader.
        #[arg(required_unless_present = "observe")]
        value: Option<String>,
        /// Print the leader and every change instead of campaigning.
        #[arg(long, conflicts_with = "value")]
        observe: bool,
        /// The leadership lock's TTL (default 15s): how long a crashed leader blocks the others.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Give up campaigning after this long (exit 4).
        #[arg(long, value_parser = parse_duration, conflicts_with = "observe")]
        timeout: Option<Duration>,
        /// With --observe: stop after N states (the current one counts as the first).
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// List the store URL schemes this build of kv accepts.
    Schemes,
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Example:\n  kv completions bash > ~/.local/share/bash-completion/completions/kv"
    )]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// The arguments of `kv txn`; their order on the command line is kept.
#[derive(Debug, Args)]
struct TxnArgs {
    /// Condition: KEY does not exist.
    #[arg(long, value_name = "KEY")]
    if_absent: Vec<String>,
    /// Condition: KEY exists.
    #[arg(long, value_name = "KEY")]
    if_exists: Vec<String>,
    /// Condition: KEY's last index is N.
    #[arg(long, value_name = "KEY=N")]
    if_index: Vec<String>,
    /// Put VALUE at KEY (VALUE literal).
    #[arg(long, value_name = "KEY=VALUE")]
    put: Vec<String>,
    /// Put the bytes of FILE at KEY.
    #[arg(long, value_name = "KEY=FILE")]
    put_file: Vec<String>,
    /// Delete KEY.
    #[arg(long, value_name = "KEY")]
    del: Vec<String>,
    /// A TTL for every put of the transaction.
    #[arg(long, value_parser = parse_duration)]
    ttl: Option<Duration>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    kv::kv_core::url::parse_duration(text)
        .ok_or_else(|| format!("{text:?} is not a duration (examples: 500ms, 30s, 5m, 1h)"))
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kv: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::STORE_ERROR);
        }
    };
    let code = match runtime.block_on(run(cli, &matches)) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("kv: error: {}", exit::one_line(&failure.message));
            failure.code
        }
    };
    // Background tasks of a closed store may still be winding down: do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(200));
    ExitCode::from(code)
}

fn store_url(cli: &Cli) -> String {
    cli.store
        .clone()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| kv::DEFAULT_STORE_URL.to_owned())
}

async fn run(cli: Cli, matches: &clap::ArgMatches) -> Result<u8, Failure> {
    match &cli.command {
        Command::Schemes => return Ok(schemes(cli.json)),
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(*shell, &mut command, "kv", &mut std::io::stdout());
            return Ok(exit::OK);
        }
        _ => {}
    }
    // Read inputs before connecting: bad input fails fast, without touching the store.
    let prepared = prepare(&cli, matches)?;
    let url = store_url(&cli);
    let store = kv::connect(&url).await.map_err(|e| {
        let failure = Failure::from(e);
        Failure::new(
            failure.code,
            format!("store {}: {}", exit::redact(&url), failure.message),
        )
    })?;
    let result = execute(&cli, &store, prepared).await;
    let _ = store.close().await;
    result
}

/// What must be read before connecting (values from files or stdin, parsed transactions).
enum Prepared {
    None,
    Value(Bytes),
    Txn(Transaction),
}

fn read_value(spec: &str, literal: bool) -> Result<Bytes, Failure> {
    if literal {
        return Ok(Bytes::copy_from_slice(spec.as_bytes()));
    }
    if spec == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Failure::bad_input(format!("cannot read standard input: {e}")))?;
        return Ok(Bytes::from(buf));
    }
    if let Some(path) = spec.strip_prefix('@') {
        return std::fs::read(path)
            .map(Bytes::from)
            .map_err(|e| Failure::bad_input(format!("cannot read value file {path:?}: {e}")));
    }
    Ok(Bytes::copy_from_slice(spec.as_bytes()))
}

fn prepare(cli: &Cli, matches: &clap::ArgMatches) -> Result<Prepared, Failure> {
    Ok(match &cli.command {
        Command::Put { value, string, .. } => Prepared::Value(read_value(value, *string)?),
        Command::Cas {
            value: Some(value),
            string,
            ..
        } => Prepared::Value(read_value(value, *string)?),
        Command::Txn(args) => {
            let sub = matches
                .subcommand_matches("txn")
                .ok_or_else(|| Failure::bad_input("txn arguments missing"))?;
            Prepared::Txn(build_txn(sub, args.ttl)?)
        }
        _ => Prepared::None,
    })
}

fn split_pair<'a>(text: &'a str, flag: &str) -> Result<(&'a str, &'a str), Failure> {
    text.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| Failure::bad_input(format!("--{flag} {text:?}: expected KEY=…")))
}

/// Builds the transaction from the `txn` arguments in command-line order.
fn build_txn(matches: &clap::ArgMatches, ttl: Option<Duration>) -> Result<Transaction, Failure> {
    let mut items: Vec<(usize, &str, &String)> = Vec::new();
    for id in [
        "if_absent",
        "if_exists",
        "if_index",
        "put",
        "put_file",
        "del",
    ] {
        if let (Some(indices), Some(values)) =
            (matches.indices_of(id), matches.get_many::<String>(id))
        {
            items.extend(indices.zip(values).map(|(i, v)| (i, id, v)));
        }
    }
    if items.is_empty() {
        return Err(Failure::bad_input(
            "txn needs at least one --put, --put-file or --del (see kv txn --help)",
        ));
    }
    items.sort_by_key(|(i, _, _)| *i);
    let options = write_options(ttl);
    let mut txn = Transaction::new();
    for (_, id, text) in items {
        txn = match id {
            "if_absent" => txn.when(Condition::absent(text.as_str())),
            "if_exists" => txn.when(Condition::exists(text.as_str())),
            "if_index" => {
                let (key, n) = split_pair(text, "if-index")?;
                let n: u64 = n.parse().map_err(|_| {
                    Failure::bad_input(format!("--if-index {text:?}: {n:?} is not an index"))
                })?;
                txn.when(Condition::index_equals(key, n))
            }
            "put" => {
                let (key, value) = split_pair(text, "put")?;
                txn.put(
                    key,
                    Bytes::copy_from_slice(value.as_bytes()),
                    options.clone(),
                )
            }
            "put_file" => {
                let (key, path) = split_pair(text, "put-file")?;
                let value = std::fs::read(path).map_err(|e| {
                    Failure::bad_input(format!("cannot read value file {path:?}: {e}"))
                })?;
                txn.put(key, value, options.clone())
            }
            _ => txn.delete(text.as_str()),
        };
    }
    if txn.operations().is_empty() {
        return Err(Failure::bad_input(
            "txn needs at least one --put, --put-file or --del (see kv txn --help)",
        ));
    }
    Ok(txn)
}

fn schemes(json: bool) -> u8 {
    for s in kv::all_schemes() {
        if json {
            println!(
                "{}",
                json!({"scheme": s.scheme, "backend": s.backend, "enabled": s.enabled})
            );
        } else if s.enabled {
            println!("{:<16} {}", format!("{}:", s.scheme), s.backend);
        } else {
            println!(
                "{:<16} {} (not in this build: feature \"{}\")",
                format!("{}:", s.scheme),
                s.backend,
                s.feature
            );
        }
    }
    exit::OK
}

fn not_found(key: &str) -> Failure {
    Failure::new(exit::NOT_FOUND, format!("key not found: {key}"))
}

fn print_pairs(pairs: &[KvPair], json: bool, long: bool) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let bar = output::progress(pairs.len() as u64, "printing");
    if json {
        let list: Vec<_> = pairs.iter().map(output::pair_json).collect();
        let _ = writeln!(out, "{}", serde_json::Value::Array(list));
    } else {
        for (n, pair) in pairs.iter().enumerate() {
            let _ = if long {
                writeln!(
                    out,
                    "{}\t{}\t{}",
                    pair.key,
                    pair.last_index,
                    output::display(&pair.value)
                )
            } else {
                writeln!(out, "{}", pair.key)
            };
            if let Some(bar) = &bar
                && n % 1000 == 0
            {
                bar.set_position(n as u64);
            }
        }
    }
    let _ = out.flush();
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

async fn execute(cli: &Cli, store: &Arc<dyn Store>, prepared: Prepared) -> Result<u8, Failure> {
    let json = cli.json;
    let value = match prepared {
        Prepared::Value(v) => Some(v),
        Prepared::Txn(txn) => return txn_command(store, txn, json).await,
        Prepared::None => None,
    };
    match &cli.command {
        Command::Get {
            key,
            raw,
            base64,
            index,
        } => {
            let pair = store
                .get(key, ReadOptions::default())
                .await?
                .ok_or_else(|| not_found(key))?;
            if json {
                println!("{}", output::pair_json(&pair));
            } else if *raw {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&pair.value);
                let _ = out.flush();
            } else {
                let shown = if *base64 {
                    output::base64(&pair.value)
                } else {
                    output::display(&pair.value)
                };
                if *index {
                    println!("{}\t{shown}", pair.last_index);
                } else {
                    println!("{shown}");
                }
            }
            Ok(exit::OK)
        }
        Command::Put { key, ttl, .. } => {
            let value = value.unwrap_or_default();
            store.put(key, value, write_options(*ttl)).await?;
            Ok(exit::OK)
        }
        Command::Rm { key, recursive } => {
            if *recursive {
                with_spinner(
                    format!("deleting {key} and everything below it"),
                    store.delete_tree(key),
                )
                .await?;
            } else if !store.delete(key).await? {
                return Err(not_found(key));
            }
            Ok(exit::OK)
        }
        Command::Ls {
            dir,
            recursive,
            long,
        } => {
            let pairs = with_spinner(
                format!("listing {dir}"),
                store.list(dir, ReadOptions::default()),
            )
            .await?;
            if *recursive {
                print_pairs(&pairs, json, *long);
            } else {
                print_level(dir, &pairs, json, *long);
            }
            Ok(exit::OK)
        }
        Command::Exists { key } => {
            let found = store.exists(key, ReadOptions::default()).await?;
            if json {
                println!("{}", json!({"key": key, "exists": found}));
            } else {
                println!("{found}");
            }
            Ok(if found { exit::OK } else { exit::NOT_FOUND })
        }
        Command::Cas {
            key,
            create,
            prev_index,
            prev_value,
            delete,
            ttl,
            ..
        } => {
            let previous = if *create {
                None
            } else if let Some(n) = prev_index {
                Some(KvPair::new(key.as_str(), Bytes::new(), *n))
            } else {
                let expected = prev_value.as_deref().unwrap_or_default();
                let current = store
                    .get(key, ReadOptions::default())
                    .await?
                    .ok_or_else(|| Failure::new(exit::CONFLICT, format!("key not found: {key}")))?;
                if current.value.as_ref() != expected.as_bytes() {
                    return Err(Failure::new(
                        exit::CONFLICT,
                        format!(
                            "{key} holds {:?}, not {expected:?}",
                            output::display(&current.value)
                        ),
                    ));
                }
                Some(current)
            };
            if *delete {
                let previous = previous.ok_or_else(|| {
                    Failure::bad_input("cas --delete needs --prev-index or --prev-value")
                })?;
                store.atomic_delete(key, &previous).await?;
                if json {
                    println!("{}", json!({"key": key, "deleted": true}));
                }
            } else {
                let value = value.unwrap_or_default();
                let pair = store
                    .atomic_put(key, value, previous.as_ref(), write_options(*ttl))
                    .await?;
                if json {
                    println!("{}", output::pair_json(&pair));
                } else {
                    println!("{}", pair.last_index);
                }
            }
            Ok(exit::OK)
        }
        Command::Watch {
            key,
            recursive,
            count,
        } => watch(store, key, *recursive, *count, json).await,
        Command::Lock {
            key,
            timeout,
            ttl,
            value,
            command,
        } => lock(store, key, *timeout, *ttl, value, command).await,
        Command::Elect {
            name,
            value,
            observe,
            ttl,
            timeout,
            count,
        } => {
            if *observe {
                elect_observe(store, name, *count, json).await
            } else if count.is_some() {
                Err(Failure::bad_input("elect: --count goes with --observe"))
            } else {
                let value = value.clone().unwrap_or_default();
                elect(store, name, &value, *ttl, *timeout, json).await
            }
        }
        Command::Txn(_) | Command::Schemes | Command::Completions { .. } => Ok(exit::OK),
    }
}

/// Awaits `work`, showing a spinner with `message` on a terminal once it takes longer than
/// a moment (never when the output is piped: see [`output::spinner`]).
async fn with_spinner<T>(message: String, work: impl std::future::Future<Output = T>) -> T {
    tokio::pin!(work);
    tokio::select! {
        done = &mut work => return done,
        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    let bar = output::spinner(message);
    let done = work.await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    done
}

/// `ls` without -r: the first level below `dir`, sub-directories ending in `/`.
fn print_level(dir: &str, pairs: &[KvPair], json: bool, long: bool) {
    let base = dir.trim_matches('/');
    let prefix = if base.is_empty() {
        String::new()
    } else {
        format!("{base}/")
    };
    let mut entries: Vec<(String, Option<&KvPair>)> = Vec::new();
    for pair in pairs {
        let rest = pair.key.strip_prefix(&prefix).unwrap_or(&pair.key);
        match rest.split_once('/') {
            Some((first, _)) => {
                let name = format!("{prefix}{first}/");
                if entries.last().map(|(n, _)| n != &name).unwrap_or(true) {
                    entries.push((name, None));
                }
            }
            None => entries.push((pair.key.clone(), Some(pair))),
        }
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if json {
        let list: Vec<_> = entries
            .iter()
            .map(|(name, pair)| match pair {
                Some(pair) => output::pair_json(pair),
                None => json!({"key": name, "dir": true}),
            })
            .collect();
        let _ = writeln!(out, "{}", serde_json::Value::Array(list));
    } else {
        for (name, pair) in &entries {
            let _ = match (pair, long) {
                (Some(pair), true) => writeln!(
                    out,
                    "{name}\t{}\t{}",
                    pair.last_index,
                    output::display(&pair.value)
                ),
                _ => writeln!(out, "{name}"),
            };
        }
    }
    let _ = out.flush();
}

async fn txn_command(store: &Arc<dyn Store>, txn: Transaction, json: bool) -> Result<u8, Failure> {
    let pairs = store.transaction(txn).await?;
    if json {
        let list: Vec<_> = pairs
            .iter()
            .map(|p| json!({"key": p.key, "index": p.last_index}))
            .collect();
        println!("{}", json!({"committed": true, "puts": list}));
    } else {
        for pair in &pairs {
            println!("{}\t{}", pair.key, pair.last_index);
        }
    }
    Ok(exit::OK)
}

/// How kv was asked to stop, or how it stops a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Ctrl-C (SIGINT).
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGKILL (a lost lock).
    Kill,
}

/// Resolves when the process is asked to stop (Ctrl-C, or SIGTERM on Unix).
async fn interrupted() -> Stop {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            return tokio::select! {
                _ = tokio::signal::ctrl_c() => Stop::Interrupt,
                _ = term.recv() => Stop::Terminate,
            };
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    Stop::Interrupt
}

/// Sends `stop` to every process of the process group `group`.
#[cfg(unix)]
fn signal_group(group: u32, stop: Stop) {
    use rustix::process::{Pid, Signal, kill_process_group};
    let signal = match stop {
        Stop::Interrupt => Signal::INT,
        Stop::Terminate => Signal::TERM,
        Stop::Kill => Signal::KILL,
    };
    if let Some(pid) = i32::try_from(group).ok().and_then(Pid::from_raw) {
        let _ = kill_process_group(pid, signal);
    }
}

#[cfg(not(unix))]
fn signal_group(_group: u32, _stop: Stop) {}

async fn watch(
    store: &Arc<dyn Store>,
    key: &str,
    recursive: bool,
    count: Option<u64>,
    json: bool,
) -> Result<u8, Failure> {
    let limit = count.unwrap_or(u64::MAX);
    let stop = interrupted();
    tokio::pin!(stop);
    let mut seen = 0u64;
    if recursive {
        let mut stream = store.watch_tree(key, ReadOptions::default()).await?;
        while seen < limit {
            let item = tokio::select! {
                _ = &mut stop => return Ok(exit::OK),
                item = stream.next() => item,
            };
            let Some(item) = item else { break };
            let pairs = item?;
            seen += 1;
            if json {
                let list: Vec<_> = pairs.iter().map(output::pair_json).collect();
                println!("{}", json!({"dir": key, "pairs": list}));
            } else {
                println!("--- {key}/: {} keys", pairs.len());
                for pair in &pairs {
                    println!(
                        "{}\t{}\t{}",
                        pair.key,
                        pair.last_index,
                        output::display(&pair.value)
                    );
                }
            }
        }
    } else {
        let mut stream = store.watch(key, ReadOptions::default()).await?;
        while seen < limit {
            let item = tokio::select! {
                _ = &mut stop => return Ok(exit::OK),
                item = stream.next() => item,
            };
            let Some(item) = item else { break };
            seen += 1;
            match (item?, json) {
                (Some(pair), true) => println!("{}", output::pair_json(&pair)),
                (Some(pair), false) => println!(
                    "{}\t{}\t{}",
                    pair.key,
                    pair.last_index,
                    output::display(&pair.value)
                ),
                (None, true) => println!("{}", json!({"key": key, "deleted": true})),
                (None, false) => println!("{key}\t(absent)"),
            }
        }
    }
    Ok(exit::OK)
}

async fn lock(
    store: &Arc<dyn Store>,
    key: &str,
    timeout: Option<Duration>,
    ttl: Option<Duration>,
    value: &str,
    command: &[String],
) -> Result<u8, Failure> {
    let Some((program, args)) = command.split_first() else {
        return Err(Failure::bad_input("lock needs a command after --"));
    };
    let mut options = LockOptions::default().value(value.to_owned());
    if let Some(ttl) = ttl {
        options = options.ttl(ttl);
    }
    let mut lock = store.new_lock(key, options).await?;
    let lease = match timeout {
        Some(limit) => tokio::time::timeout(limit, lock.lock())
            .await
            .map_err(|_| {
                Failure::new(
                    exit::LOCK_TIMEOUT,
                    format!("could not acquire the lock on {key} within {limit:?}"),
                )
            })??,
        None => {
            // Ctrl-C while waiting: give up cleanly (nothing is held yet).
            tokio::select! {
                lease = lock.lock() => lease?,
                _ = interrupted() => return Err(Failure::new(
                    exit::LOCK_TIMEOUT,
                    format!("interrupted while waiting for the lock on {key}"),
                )),
            }
        }
    };
    // Interactive use (stdin a terminal): the command stays in kv's process group, so the
    // terminal's Ctrl-C and job control reach it as usual. Otherwise (scripts, services) it
    // gets a process group of its own, so that a lost lock kills the command AND whatever it
    // started, and kv forwards SIGINT/SIGTERM to that group. Either way kv waits for the
    // command, and releases the lock only once it has ended.
    let own_group = cfg!(unix) && !std::io::stdin().is_terminal();
    let mut builder = tokio::process::Command::new(program);
    builder
        .args(args)
        .env("KV_LOCK_KEY", key)
        .env("KV_LOCK_TOKEN", lease.fencing_token().to_string());
    #[cfg(unix)]
    if own_group {
        builder.process_group(0);
    }
    let mut child = match builder.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = lock.unlock().await;
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                exit::COMMAND_NOT_FOUND
            } else {
                exit::CANNOT_EXECUTE
            };
            return Err(Failure::new(code, format!("cannot run {program:?}: {e}")));
        }
    };
    let group = child.id().filter(|_| own_group);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            _ = lease.lost() => {
                if let Some(group) = group {
                    signal_group(group, Stop::Kill);
                }
                let _ = child.kill().await;
                return Err(Failure::new(
                    exit::LOCK_LOST,
                    format!("the lock on {key} was lost while {program:?} ran: the command was killed"),
                ));
            }
            signal = interrupted() => {
                // Without its own group the command got the signal from the terminal already.
                if let Some(group) = group {
                    signal_group(group, signal);
                }
            }
        }
    };
    let status = status
        .map_err(|e| Failure::new(exit::STORE_ERROR, format!("waiting for {program:?}: {e}")))?;
    if let Err(e) = lock.unlock().await {
        let failure = Failure::from(e);
        return Err(Failure::new(
            failure.code,
            format!(
                "{program:?} finished, but releasing the lock failed: {}",
                failure.message
            ),
        ));
    }
    Ok(exit_code_of(status))
}

/// The election on `store`, with `ttl` when given.
fn election(
    store: &Arc<dyn Store>,
    name: &str,
    ttl: Option<Duration>,
) -> Result<kv_election::Election, Failure> {
    let mut options = kv_election::ElectionOptions::default();
    if let Some(ttl) = ttl {
        options = options.ttl(ttl);
    }
    kv_election::Election::with_options(store.clone(), name, options).map_err(Failure::from)
}

/// `kv elect NAME VALUE`: campaign, then hold the leadership until interrupted or lost.
async fn elect(
    store: &Arc<dyn Store>,
    name: &str,
    value: &str,
    ttl: Option<Duration>,
    timeout: Option<Duration>,
    json: bool,
) -> Result<u8, Failure> {
    let election = election(store, name, ttl)?;
    let stop = interrupted();
    tokio::pin!(stop);
    let campaign = election.campaign(value.to_owned());
    let waited = async {
        match timeout {
            Some(limit) => tokio::time::timeout(limit, campaign).await.map_err(|_| {
                Failure::new(
                    exit::LOCK_TIMEOUT,
                    format!("not elected leader of {name} within {limit:?}"),
                )
            }),
            None => Ok(campaign.await),
        }
    };
    let mut leadership = tokio::select! {
        // Interrupted while waiting: nothing is held (campaign is cancel-safe).
        _ = &mut stop => return Ok(exit::OK),
        result = waited => result??,
    };
    if json {
        println!(
            "{}",
            json!({"election": name, "elected": true, "term": leadership.term()})
        );
    } else {
        println!("elected leader of {name}: term {}", leadership.term());
    }
    tokio::select! {
        _ = &mut stop => {
            leadership.resign().await?;
            if json {
                println!("{}", json!({"election": name, "resigned": true}));
            } else {
                println!("resigned");
            }
            Ok(exit::OK)
        }
        status = leadership.lost() => Err(Failure::new(
            exit::LOCK_LOST,
            format!("lost the leadership of {name} (term {}): {status:?}", leadership.term()),
        )),
    }
}

/// `kv elect --observe NAME`: the leader, then every change, until interrupted.
async fn elect_observe(
    store: &Arc<dyn Store>,
    name: &str,
    count: Option<u64>,
    json: bool,
) -> Result<u8, Failure> {
    let election = election(store, name, None)?;
    let mut states = election.observe().await?;
    let stop = interrupted();
    tokio::pin!(stop);
    let limit = count.unwrap_or(u64::MAX);
    let mut seen = 0;
    while seen < limit {
        let item = tokio::select! {
            _ = &mut stop => return Ok(exit::OK),
            item = states.next() => item,
        };
        let Some(item) = item else { break };
        seen += 1;
        match (item?, json) {
            (kv_election::LeaderState::Leader(leader), true) => println!(
                "{}",
                json!({
                    "election": name,
                    "leader": String::from_utf8_lossy(&leader.value),
                    "term": leader.term,
                })
            ),
            (kv_election::LeaderState::Leader(leader), false) => println!(
                "leader {} (term {})",
                output::display(&leader.value),
                leader.term
            ),
            (_, true) => println!("{}", json!({"election": name, "leader": null})),
            (_, false) => println!("no leader"),
        }
    }
    Ok(exit::OK)
}

fn exit_code_of(status: std::process::ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return u8::try_from(code).unwrap_or(1);
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return u8::try_from(128 + signal).unwrap_or(1);
        }
    }
    1
}

fn write_options(ttl: Option<Duration>) -> WriteOptions {
    ttl.map(WriteOptions::with_ttl).unwrap_or_default()
}

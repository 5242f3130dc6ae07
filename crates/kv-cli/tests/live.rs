//! The `kv` binary against the live servers `scripts/servers` runs (and the embedded store):
//! the same commands on all six backends through `--store`, then watch, lock timeouts and
//! lost locks across processes on Redis and etcd.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BACKENDS, kv, kv_path, run, unique, url};

fn same_commands_on(backend: &str) {
    let store = url(backend, &unique("kvcli"));
    let cli = || {
        let mut cmd = kv("unused");
        cmd.env_remove("KV_STORE").args(["--store", &store]);
        cmd
    };
    run(cli().args(["put", "a/b", "1"]), 0);
    let (out, _) = run(cli().args(["get", "a/b"]), 0);
    assert_eq!(out, "1\n", "{backend}");
    run(cli().args(["put", "a/c/d", "x", "--ttl", "1h"]), 0);
    let (out, _) = run(cli().args(["ls", "a"]), 0);
    assert_eq!(out, "a/b\na/c/\n", "{backend}");
    let (out, _) = run(cli().args(["ls", "-r", "a"]), 0);
    assert_eq!(out, "a/b\na/c/d\n", "{backend}");
    run(cli().args(["cas", "a/b", "2", "--create"]), 3);
    run(cli().args(["cas", "a/b", "2", "--prev-value", "1"]), 0);
    if backend == "nats" {
        // JetStream KV has no transactions: the backend declares it, kv says so (exit 8).
        run(
            cli().args(["txn", "--if-absent", "a/t", "--put", "a/t=1"]),
            8,
        );
        run(cli().args(["put", "a/t", "1"]), 0);
        run(cli().args(["rm", "a/b"]), 0);
    } else {
        run(
            cli().args([
                "txn",
                "--if-absent",
                "a/t",
                "--put",
                "a/t=1",
                "--del",
                "a/b",
            ]),
            0,
        );
        run(
            cli().args(["txn", "--if-absent", "a/t", "--put", "a/t=2"]),
            3,
        );
    }
    run(cli().args(["exists", "a/b"]), 1);
    run(cli().args(["lock", "a/lock", "--", "true"]), 0);
    let (out, _) = run(cli().args(["--json", "watch", "a/t", "--count", "1"]), 0);
    assert!(out.contains("\"value\":\"1\""), "{backend}: {out}");
    run(cli().args(["rm", "a/t"]), 0);
    run(cli().args(["rm", "-r", "a"]), 0);
    let (out, _) = run(cli().args(["ls", "-r", "a"]), 0);
    assert_eq!(out, "", "{backend}");
}

#[test]
fn every_backend_same_commands() {
    for backend in BACKENDS {
        same_commands_on(backend);
    }
}

/// A background `kv`, killed when dropped.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(store: &str, args: &[&str]) -> Background {
    Background(
        Command::new(kv_path())
            .env("KV_STORE", store)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kv"),
    )
}

fn wait_exit(child: &mut Background, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        assert!(
            Instant::now() < deadline,
            "kv did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `watch --json` streams one object per line until Ctrl-C (SIGINT), which ends it with 0.
fn watch_until_interrupted(backend: &str) {
    let store = url(backend, &unique("kvwatch"));
    run(kv(&store).args(["put", "w/k", "0"]), 0);
    let mut watcher = spawn(&store, &["--json", "watch", "w/k"]);
    let stdout = watcher.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let next = || {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a watch line")
    };
    assert!(next().contains("\"value\":\"0\""));
    run(kv(&store).args(["put", "w/k", "1"]), 0);
    assert!(next().contains("\"value\":\"1\""));
    run(kv(&store).args(["rm", "w/k"]), 0);
    let line = next();
    let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(parsed["deleted"], true, "{line}");
    let status = Command::new("kill")
        .args(["-INT", &watcher.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(
        wait_exit(&mut watcher, Duration::from_secs(10)),
        0,
        "{backend}"
    );
}

#[test]
fn watch_ends_cleanly_on_ctrl_c_redis() {
    watch_until_interrupted("redis");
}

#[test]
fn watch_ends_cleanly_on_ctrl_c_etcd() {
    watch_until_interrupted("etcd");
}

#[test]
fn watch_tree_json_lines_etcd() {
    let store = url("etcd", &unique("kvwatchtree"));
    let mut watcher = spawn(&store, &["--json", "watch", "-r", "d", "--count", "3"]);
    // The first snapshot (empty) is printed once the watch runs; then two changes.
    std::thread::sleep(Duration::from_millis(500));
    run(kv(&store).args(["put", "d/a", "1"]), 0);
    run(kv(&store).args(["put", "d/b/c", "2"]), 0);
    assert_eq!(wait_exit(&mut watcher, Duration::from_secs(20)), 0);
    let mut out = String::new();
    std::io::Read::read_to_string(watcher.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    let snapshots: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(snapshots.len(), 3, "{out}");
    assert_eq!(snapshots[2]["pairs"].as_array().unwrap().len(), 2, "{out}");
}

/// `lock --timeout` gives up with 4 while another process holds the lock; the holder's
/// command's status is kv's status; the lock is free again after.
fn lock_timeout(backend: &str) {
    let store = url(backend, &unique("kvlock"));
    let dir = kv_test_support::temp_dir("kv-cli-lock");
    let started = dir.join("started");
    let script = format!("touch {}; sleep 3; exit 3", started.display());
    let mut holder = spawn(&store, &["lock", "l", "--", "sh", "-c", &script]);
    wait_until("the holder's command", Duration::from_secs(20), || {
        started.exists()
    });
    let (_, err) = run(
        kv(&store).args(["lock", "l", "--timeout", "300ms", "--", "true"]),
        4,
    );
    assert!(err.contains("could not acquire"), "{err}");
    assert_eq!(wait_exit(&mut holder, Duration::from_secs(20)), 3);
    run(
        kv(&store).args(["lock", "l", "--timeout", "10s", "--", "true"]),
        0,
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lock_timeout_redis() {
    lock_timeout("redis");
}

#[test]
fn lock_timeout_etcd() {
    lock_timeout("etcd");
}

/// When the lock is lost while the command runs (here: its key deleted by another process),
/// the command is killed and kv exits 5, long before the command would have ended.
fn lock_lost(backend: &str) {
    let store = url(backend, &unique("kvlost"));
    let dir = kv_test_support::temp_dir("kv-cli-lost");
    let started = dir.join("started");
    let script = format!("touch {}; sleep 60", started.display());
    let mut holder = spawn(
        &store,
        &["lock", "l", "--ttl", "5s", "--", "sh", "-c", &script],
    );
    wait_until("the holder's command", Duration::from_secs(20), || {
        started.exists()
    });
    let begun = Instant::now();
    run(kv(&store).args(["rm", "l"]), 0);
    assert_eq!(wait_exit(&mut holder, Duration::from_secs(30)), 5);
    assert!(begun.elapsed() < Duration::from_secs(30));
    // stderr reaches its end only once every process that inherited it is gone: the
    // command's own children (the `sleep`) were killed with it.
    let mut err = String::new();
    std::io::Read::read_to_string(holder.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("was lost") && err.contains("killed"), "{err}");
    assert!(
        begun.elapsed() < Duration::from_secs(30),
        "the command's children outlived the lost lock"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lock_lost_kills_the_command_redis() {
    lock_lost("redis");
}

#[test]
fn lock_lost_kills_the_command_etcd() {
    lock_lost("etcd");
}

/// `kv elect`: a leader process holds the election until SIGINT (resigns, exit 0); a second
/// candidate with `--timeout` gives up with 4 meanwhile; an observer prints the leader, and
/// `no leader` after the resign; a leader whose lock key is deleted exits 5.
fn elect(backend: &str) {
    let store = url(backend, &unique("kvelect"));
    let (out, _) = run(
        kv(&store).args(["elect", "--observe", "jobs", "--count", "1"]),
        0,
    );
    assert_eq!(out.trim(), "no leader");
    let mut leader = spawn(&store, &["elect", "jobs", "node-a", "--ttl", "5s"]);
    wait_until("the leader", Duration::from_secs(20), || {
        run(
            kv(&store).args(["--json", "elect", "--observe", "jobs", "--count", "1"]),
            0,
        )
        .0
        .contains("\"leader\":\"node-a\"")
    });
    let (_, err) = run(
        kv(&store).args(["elect", "jobs", "node-b", "--timeout", "500ms"]),
        4,
    );
    assert!(err.contains("not elected"), "{err}");
    let status = Command::new("kill")
        .args(["-INT", &leader.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(wait_exit(&mut leader, Duration::from_secs(10)), 0);
    let mut out = String::new();
    std::io::Read::read_to_string(leader.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(
        out.contains("elected leader of jobs") && out.contains("resigned"),
        "{out}"
    );
    let (out, _) = run(
        kv(&store).args(["elect", "--observe", "jobs", "--count", "1"]),
        0,
    );
    assert_eq!(out.trim(), "no leader", "after the resign");

    // A leader whose lock key is deleted under it loses the leadership: exit 5.
    let mut leader = spawn(&store, &["elect", "jobs", "node-c", "--ttl", "5s"]);
    wait_until("the second leader", Duration::from_secs(20), || {
        run(
            kv(&store).args(["elect", "--observe", "jobs", "--count", "1"]),
            0,
        )
        .0
        .contains("node-c")
    });
    run(kv(&store).args(["rm", "jobs/lock"]), 0);
    assert_eq!(wait_exit(&mut leader, Duration::from_secs(20)), 5);
}

#[test]
fn elect_hold_resign_observe_redis() {
    elect("redis");
}

#[test]
fn elect_hold_resign_observe_etcd() {
    elect("etcd");
}

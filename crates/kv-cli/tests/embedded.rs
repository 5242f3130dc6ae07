//! The `kv` binary on the embedded store, as a newcomer runs it: no server, no `KV_STORE`,
//! the database in `./.kv` of the current directory.

mod common;

use common::{kv_in, run};

fn fresh_dir() -> std::path::PathBuf {
    kv_test_support::temp_dir("kv-cli-embedded")
}

#[test]
fn put_then_get_with_no_server_and_no_configuration() {
    let dir = fresh_dir();
    run(kv_in(&dir).args(["put", "a/b", "1"]), 0);
    let (out, err) = run(kv_in(&dir).args(["get", "a/b"]), 0);
    assert_eq!(out, "1\n");
    assert_eq!(err, "");
    assert!(
        dir.join(".kv").is_dir(),
        "the embedded store lives in ./.kv"
    );
    // Same store by its explicit URL.
    let (out, _) = run(kv_in(&dir).args(["--store", "bolt:.kv", "get", "a/b"]), 0);
    assert_eq!(out, "1\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn missing_keys_and_bad_input_have_their_exit_codes() {
    let dir = fresh_dir();
    let (out, err) = run(kv_in(&dir).args(["get", "nope"]), 1);
    assert_eq!(out, "");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains("not found"), "{err}");
    run(kv_in(&dir).args(["rm", "nope"]), 1);
    let (out, _) = run(kv_in(&dir).args(["exists", "nope"]), 1);
    assert_eq!(out, "false\n");
    run(kv_in(&dir).args(["put", "x", "1"]), 0);
    let (out, _) = run(kv_in(&dir).args(["--json", "exists", "x"]), 0);
    assert_eq!(out, "{\"exists\":true,\"key\":\"x\"}\n");

    // Invalid key, unreadable value file, bad duration, unknown scheme, usage: all 2.
    let (_, err) = run(kv_in(&dir).args(["put", "a/../b", "1"]), 2);
    assert!(
        err.starts_with("kv: error: ") && err.contains("invalid key"),
        "{err}"
    );
    let (_, err) = run(kv_in(&dir).args(["put", "k", "@/nonexistent/file"]), 2);
    assert!(err.contains("/nonexistent/file"), "{err}");
    run(kv_in(&dir).args(["put", "k", "v", "--ttl", "soon"]), 2);
    let (_, err) = run(kv_in(&dir).args(["--store", "mongodb://h", "get", "k"]), 2);
    assert!(err.contains("unknown store URL scheme"), "{err}");
    run(kv_in(&dir).args(["frobnicate"]), 2);
    run(kv_in(&dir).args(["txn", "--put", "novalue"]), 2);
    run(kv_in(&dir).args(["cas", "k", "v"]), 2);
    // `elect` needs a name and a value (or --observe); --count only with --observe.
    run(kv_in(&dir).args(["elect", "jobs"]), 2);
    run(kv_in(&dir).args(["elect", "jobs", "v", "--count", "1"]), 2);
    let (out, _) = run(
        kv_in(&dir).args(["elect", "--observe", "jobs", "--count", "1"]),
        0,
    );
    assert_eq!(out, "no leader\n");
    // An unreachable server: 6, and the password never printed.
    let port = kv_test_support::free_port();
    let url = format!("redis://user:hunter2@127.0.0.1:{port}?connect_timeout_ms=500");
    let (_, err) = run(kv_in(&dir).args(["--store", &url, "get", "k"]), 6);
    assert!(!err.contains("hunter2") && err.contains("***"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn binary_values_from_files_and_stdin() {
    let dir = fresh_dir();
    let bytes: Vec<u8> = vec![0, 1, 0xff, b'a', b'\n', 0x1b];
    std::fs::write(dir.join("value.bin"), &bytes).unwrap();
    run(kv_in(&dir).args(["put", "bin/file", "@value.bin"]), 0);
    run(
        kv_in(&dir)
            .args(["put", "bin/stdin", "-"])
            .write_stdin(bytes.clone()),
        0,
    );
    run(
        kv_in(&dir).args(["put", "bin/literal", "@not-a-file", "--string"]),
        0,
    );
    for key in ["bin/file", "bin/stdin"] {
        let output = kv_in(&dir).args(["get", "--raw", key]).output().unwrap();
        assert_eq!(output.stdout, bytes, "{key} raw");
        let (out, _) = run(kv_in(&dir).args(["get", key]), 0);
        assert_eq!(out, "\\x00\\x01\\xffa\\n\\x1b\n", "{key} escaped");
        let (out, _) = run(kv_in(&dir).args(["get", "--base64", key]), 0);
        assert_eq!(out, "AAH/YQob\n");
        let (out, _) = run(kv_in(&dir).args(["--json", "get", key]), 0);
        assert!(out.contains("\"value_base64\":\"AAH/YQob\""), "{out}");
    }
    let (out, _) = run(kv_in(&dir).args(["get", "bin/literal"]), 0);
    assert_eq!(out, "@not-a-file\n");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ls_rm_cas_txn_lock() {
    let dir = fresh_dir();
    for (k, v) in [
        ("app/a", "1"),
        ("app/b/c", "2"),
        ("app/b/d", "3"),
        ("apple", "x"),
    ] {
        run(kv_in(&dir).args(["put", k, v]), 0);
    }
    let (out, err) = run(kv_in(&dir).args(["ls", "app"]), 0);
    assert_eq!(out, "app/a\napp/b/\n");
    assert_eq!(err, "", "no progress output when piped");
    let (out, _) = run(kv_in(&dir).args(["ls", "-r", "app"]), 0);
    assert_eq!(out, "app/a\napp/b/c\napp/b/d\n");
    let (out, _) = run(kv_in(&dir).args(["ls", "-rl", "app/b"]), 0);
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(
        lines[0].starts_with("app/b/c\t") && lines[0].ends_with("\t2"),
        "{out}"
    );
    let (out, _) = run(kv_in(&dir).args(["--json", "ls", "-r", "app/b"]), 0);
    assert!(
        out.starts_with("[{") && out.contains("\"key\":\"app/b/d\""),
        "{out}"
    );
    let (out, _) = run(kv_in(&dir).arg("ls"), 0);
    assert_eq!(out, "app/\napple\n");

    // cas: create-only, by index, by value, delete; conflicts exit 3.
    run(kv_in(&dir).args(["cas", "app/a", "9", "--create"]), 3);
    let (out, _) = run(kv_in(&dir).args(["get", "-i", "app/a"]), 0);
    let index: u64 = out.split('\t').next().unwrap().parse().unwrap();
    let (out, _) = run(
        kv_in(&dir).args(["cas", "app/a", "10", "--prev-index", &index.to_string()]),
        0,
    );
    let new_index: u64 = out.trim().parse().unwrap();
    assert!(new_index > index);
    run(
        kv_in(&dir).args(["cas", "app/a", "11", "--prev-index", &index.to_string()]),
        3,
    );
    run(
        kv_in(&dir).args(["cas", "app/a", "11", "--prev-value", "nope"]),
        3,
    );
    run(
        kv_in(&dir).args(["cas", "app/a", "11", "--prev-value", "10"]),
        0,
    );
    run(kv_in(&dir).args(["cas", "app/new", "1", "--create"]), 0);
    run(
        kv_in(&dir).args(["cas", "app/new", "--delete", "--prev-value", "1"]),
        0,
    );
    run(kv_in(&dir).args(["exists", "app/new"]), 1);

    // txn in command-line order; a failed condition writes nothing and exits 3.
    let (out, _) = run(
        kv_in(&dir).args([
            "txn",
            "--if-absent",
            "t/x",
            "--put",
            "t/x=1",
            "--put",
            "t/y=2",
            "--del",
            "app/a",
        ]),
        0,
    );
    assert!(out.starts_with("t/x\t") && out.contains("\nt/y\t"), "{out}");
    run(kv_in(&dir).args(["exists", "app/a"]), 1);
    let (_, err) = run(
        kv_in(&dir).args([
            "txn",
            "--if-exists",
            "t/y",
            "--if-absent",
            "t/x",
            "--put",
            "t/z=3",
        ]),
        3,
    );
    assert!(err.contains("condition 1"), "{err}");
    run(kv_in(&dir).args(["exists", "t/z"]), 1);

    // rm -r removes the tree, not its siblings.
    run(kv_in(&dir).args(["rm", "-r", "app"]), 0);
    let (out, _) = run(kv_in(&dir).args(["ls", "-r"]), 0);
    assert_eq!(out, "apple\nt/x\nt/y\n");

    // lock: the command's status, the fencing token in its environment, the lock released.
    let (out, _) = run(
        kv_in(&dir).args([
            "lock",
            "jobs/l",
            "--",
            "sh",
            "-c",
            "echo $KV_LOCK_KEY:$KV_LOCK_TOKEN; exit 7",
        ]),
        7,
    );
    assert!(out.starts_with("jobs/l:"), "{out}");
    run(kv_in(&dir).args(["exists", "jobs/l"]), 1);
    run(kv_in(&dir).args(["lock", "jobs/l", "--", "true"]), 0);
    run(
        kv_in(&dir).args(["lock", "jobs/l", "--", "/nonexistent/cmd"]),
        127,
    );
    run(kv_in(&dir).args(["lock", "jobs/l"]), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_completions_and_schemes() {
    let dir = fresh_dir();
    let (out, _) = run(kv_in(&dir).arg("--help"), 0);
    for needle in [
        "Examples:",
        "Exit codes:",
        "lock timeout",
        "KV_STORE",
        "base64",
    ] {
        assert!(out.contains(needle), "--help lacks {needle:?}");
    }
    let (out, _) = run(kv_in(&dir).args(["txn", "--help"]), 0);
    assert!(
        out.contains("--if-index") && out.contains("Examples:"),
        "{out}"
    );
    let (out, _) = run(kv_in(&dir).args(["completions", "bash"]), 0);
    assert!(out.contains("_kv()") || out.contains("complete"), "{out}");
    let (out, _) = run(kv_in(&dir).args(["--json", "schemes"]), 0);
    assert_eq!(out.lines().count(), kv::all_schemes().len());
    assert!(out.contains("\"scheme\":\"etcd\""));
    std::fs::remove_dir_all(&dir).unwrap();
}

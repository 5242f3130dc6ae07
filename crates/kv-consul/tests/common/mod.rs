//! A private Consul dev agent for tests that stop the server or need a server configured
//! differently (ACLs, TLS): the binary `scripts/servers install consul` builds, free ports,
//! killed when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use kv_test_support::server::consul_binary;
pub use kv_test_support::{free_port, temp_dir};

/// `n` distinct free ports, none equal to `except` (a port the caller already holds).
pub fn free_ports(n: usize, except: u16) -> Vec<u16> {
    loop {
        let ports = kv_test_support::free_ports(n);
        if !ports.contains(&except) {
            return ports;
        }
    }
}

/// A private dev agent; killed (and its directory removed) when dropped.
pub struct Agent {
    child: Child,
    pub dir: PathBuf,
    /// The HTTP port, or the HTTPS port when `https` was asked for.
    pub port: u16,
}

impl Agent {
    /// Starts an agent on `port` (HTTP, or HTTPS only when `https`), with `extra` HCL appended.
    /// Does not wait for it: see [`Agent::wait_http`].
    pub fn spawn(dir: PathBuf, port: u16, https: bool, extra: &str) -> Agent {
        let others = free_ports(3, port);
        let (http, https_port) = if https {
            (-1, i32::from(port))
        } else {
            (i32::from(port), -1)
        };
        let hcl = format!(
            r#"node_name = "kvtest-private"
datacenter = "dc1"
bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
disable_update_check = true
log_level = "WARN"
session_ttl_min = "1s"
ports {{
  http = {http}
  https = {https_port}
  dns = -1
  grpc = -1
  grpc_tls = -1
  server = {}
  serf_lan = {}
  serf_wan = {}
}}
{extra}
"#,
            others[0], others[1], others[2]
        );
        let config = dir.join("consul.hcl");
        std::fs::write(&config, hcl).unwrap();
        let log = std::fs::File::create(dir.join("consul.log")).unwrap();
        let child = Command::new(consul_binary())
            .arg("agent")
            .arg("-dev")
            .arg(format!("-config-file={}", config.display()))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start a private Consul agent");
        Agent { child, dir, port }
    }

    /// Starts a plain-HTTP agent and waits until it has a leader. An agent that exits at once
    /// (one of its ports was taken meanwhile) is started again on other internal ports.
    pub async fn start(dir: PathBuf, port: u16, extra: &str) -> Agent {
        for _ in 0..3 {
            let mut agent = Agent::spawn(dir.clone(), port, false, extra);
            if agent.wait_http().await {
                return agent;
            }
            let log = agent.log();
            eprintln!("the private Consul agent exited at start, trying again: {log}");
            agent.dir = PathBuf::new();
        }
        panic!("the private Consul agent does not start");
    }

    /// True once the agent exited.
    pub fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Waits until the HTTP API answers with a leader; `false` if the agent exited first.
    pub async fn wait_http(&mut self) -> bool {
        let client = reqwest::Client::new();
        let limit = Instant::now() + Duration::from_secs(30);
        loop {
            let leader = client
                .get(format!("http://127.0.0.1:{}/v1/status/leader", self.port))
                .send()
                .await;
            if let Ok(response) = leader
                && response.text().await.is_ok_and(|t| t.len() > 2)
            {
                return true;
            }
            if self.exited() {
                return false;
            }
            assert!(
                Instant::now() < limit,
                "the private Consul agent did not start: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("consul.log")).unwrap_or_default()
    }

    /// Kills the agent, keeping its directory; returns it and the port for a restart.
    pub fn stop(mut self) -> (PathBuf, u16) {
        self.child.kill().ok();
        self.child.wait().ok();
        let dir = std::mem::take(&mut self.dir);
        (dir, self.port)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
        if !self.dir.as_os_str().is_empty() {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }
}

/// Writes a throw-away CA, a server certificate for 127.0.0.1/localhost and a client
/// certificate into `dir` (the recipe of servers.md §0.1), with the `openssl` command.
pub fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?} failed");
    };
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    for who in ["server", "client"] {
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={who}"),
            "-keyout",
            &format!("{who}.key"),
            "-out",
            &format!("{who}.csr"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{who}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            &format!("{who}.ext"),
            "-out",
            &format!("{who}.crt"),
        ]);
    }
}

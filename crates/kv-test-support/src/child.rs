//! A child process whose standard output lines a test waits for: the process scenarios
//! (killed, paused, skewed holders and leaders) re-run their test binary as one.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::time::Duration;

use tokio::time::{Instant, sleep};

/// A running child process and its stdout lines; killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildProcess {
    child: Child,
    lines: Receiver<String>,
}

impl ChildProcess {
    /// Starts `command` with its stdout piped to this process (stderr inherited).
    pub fn start(mut command: Command) -> Self {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the child process: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        ChildProcess { child, lines }
    }

    /// The rest of the first line containing `tag` (the test harness may print before it);
    /// panics when the child prints no such line within `limit` or exits first. Waits without
    /// blocking the runtime.
    pub async fn expect(&self, tag: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self.lines.try_recv() {
                Ok(line) => {
                    if let Some((_, rest)) = line.split_once(tag) {
                        return rest.trim().to_owned();
                    }
                }
                Err(TryRecvError::Empty) => {
                    assert!(
                        Instant::now() < deadline,
                        "the child did not print {tag:?} within {limit:?}"
                    );
                    sleep(Duration::from_millis(5)).await;
                }
                Err(TryRecvError::Disconnected) => {
                    panic!("the child exited before printing {tag:?}")
                }
            }
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`…) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("kill -{signal}: {e}"));
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

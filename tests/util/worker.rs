//! Worker processes: this very test binary, re-executed as separate OS processes (real
//! processes, not threads: separate lock tables, separate deaths). Each runs one "worker" test
//! function selected with `--exact --ignored`; the job is named by the `HOMELAB_TEST_WORKER`
//! variable and its inputs passed in other variables. A worker test is `#[ignore]`d, so a
//! normal run shows it as skipped rather than counting it as a test that passed.
//!
//! Workers report to the parent with [`report`]: lines on stdout carrying a marker, so that the
//! test harness's own output is told apart. Children are [`Worker`]s: killed (SIGKILL) and
//! reaped when dropped, also when the test fails.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Names the job of a worker process.
pub const ROLE: &str = "HOMELAB_TEST_WORKER";

/// Marks the lines a worker reports.
const MARK: &str = "@@worker@@ ";

/// The job this process was started for, when it is a worker.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok().filter(|r| !r.is_empty())
}

/// An input variable of a worker (panics when missing: the parent always sets it).
pub fn input(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("worker input {name} is not set"))
}

/// Report one line to the parent (stdout is line-buffered: the parent sees it at once).
pub fn report(line: &str) {
    println!("{MARK}{line}");
}

/// A command that runs the test `test` (its full path in this binary, such as
/// `registry_processes::worker`) alone, in a new process, as a worker doing `role`.
pub fn command(test: &str, role: &str) -> Command {
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let mut c = Command::new(exe);
    c.args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1", "--quiet"])
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// A running worker. Dropping it kills it (SIGKILL) and reaps it.
pub struct Worker {
    child: Child,
    reports: Receiver<String>,
    reader: Option<JoinHandle<Vec<String>>>,
    stderr: Option<JoinHandle<String>>,
}

impl Worker {
    /// Start `command` (from [`command`]).
    pub fn spawn(mut command: Command) -> Worker {
        let mut child = command.spawn().expect("worker process starts");
        let stdout: ChildStdout = child.stdout.take().expect("stdout is piped");
        let mut err_pipe = child.stderr.take().expect("stderr is piped");
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut err_pipe, &mut text);
            text
        });
        let (tx, reports) = mpsc::channel();
        // Everything the child prints is kept for failure messages; reports are also sent on.
        let reader = std::thread::spawn(move || {
            let mut all = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(r) = line.strip_prefix(MARK) {
                    let _ = tx.send(r.to_string());
                }
                all.push(line);
            }
            all
        });
        Worker {
            child,
            reports,
            reader: Some(reader),
            stderr: Some(stderr),
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next report, waiting at most `timeout`.
    pub fn next_report(&self, timeout: Duration) -> Option<String> {
        self.reports.recv_timeout(timeout).ok()
    }

    /// Wait (at most `timeout`) for a report satisfying `want`; every report seen on the way
    /// is passed to `seen`. Panics with the worker's output on timeout or exit.
    pub fn wait_for(&mut self, timeout: Duration, mut seen: impl FnMut(&str), want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.reports.recv_timeout(left) {
                Ok(r) => {
                    seen(&r);
                    if want(&r) {
                        return r;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let (status, out, err) = self.finish();
                    panic!("worker {e:?} before the expected report; {status:?}\nstdout:\n{out}\nstderr:\n{err}");
                }
            }
        }
    }

    /// Kill it with SIGKILL (no chance to clean up or unlock) and reap it; the reports it made
    /// before dying.
    pub fn kill(mut self) -> Vec<String> {
        self.child.kill().expect("SIGKILL the worker");
        self.child.wait().expect("reap the worker");
        self.drain()
    }

    /// Wait for it to exit (at most `timeout`, then kill it and panic); its exit status and
    /// every report it made.
    pub fn join(mut self, timeout: Duration) -> (ExitStatus, Vec<String>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the worker") {
                let reports = self.drain();
                let err = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
                return (status, reports, err);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let (status, out, err) = self.finish();
                panic!("worker did not finish in {timeout:?}; {status:?}\nstdout:\n{out}\nstderr:\n{err}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Reports still queued after the child's stdout closed.
    fn drain(&mut self) -> Vec<String> {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.reports.try_iter().collect()
    }

    /// Reap and collect all output (for failure messages).
    fn finish(&mut self) -> (Option<ExitStatus>, String, String) {
        let status = self.child.wait().ok();
        let out = self
            .reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default()
            .join("\n");
        let err = self.stderr.take().and_then(|h| h.join().ok()).unwrap_or_default();
        (status, out, err)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

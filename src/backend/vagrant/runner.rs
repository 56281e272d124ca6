//! Running `vagrant` (and the other long-running tools of the backend) under Terraform's
//! limits: output streamed line by line into the provider log as it comes, the operation's
//! deadline enforced, Terraform's cancellation honoured, and the last lines kept for the
//! error.
//!
//! Each command runs in a process group of its own, so that stopping it reaches everything it
//! started (Vagrant's ssh, rsync, provider helpers), never the provider itself. Stopping goes
//! SIGINT (Vagrant's own "clean up and exit"), then SIGTERM, then SIGKILL, to the whole group,
//! each after a grace period, until no process of the group is left. A run that is dropped
//! half-way (the provider's task is aborted) kills its group too.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{BackendError, OpControl};
use crate::process::{describe_status, Cmd, CommandError};

/// How many of the last output lines an error shows.
pub const TAIL_LINES: usize = 30;
/// Most stdout kept in memory for a caller that parses it.
const STDOUT_CAP: usize = 8 << 20;

/// The limits of one backend operation, fixed when it starts: every command it runs shares
/// the same deadline.
#[derive(Debug, Clone)]
pub struct Limits {
    /// When the operation must be over.
    pub deadline: Instant,
    /// The whole operation's timeout (for the error message).
    pub timeout: Duration,
    /// Terraform's stop signal.
    pub cancel: CancellationToken,
}

impl Limits {
    /// Limits starting now from an [`OpControl`].
    pub fn start(ctl: &OpControl) -> Limits {
        Limits {
            deadline: Instant::now() + ctl.timeout,
            timeout: ctl.timeout,
            cancel: ctl.cancel.clone(),
        }
    }

    /// Limits of `timeout` from now that nothing cancels (for short read-only commands).
    pub fn timeout(timeout: Duration) -> Limits {
        Limits::start(&OpControl::with_timeout(timeout))
    }
}

/// Grace periods when stopping a process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grace {
    /// Wait this long after SIGINT before SIGTERM.
    pub interrupt: Duration,
    /// Wait this long after SIGTERM before SIGKILL.
    pub terminate: Duration,
}

impl Default for Grace {
    /// 20 s for Vagrant to clean up after SIGINT, then 10 s after SIGTERM.
    fn default() -> Self {
        Grace {
            interrupt: Duration::from_secs(20),
            terminate: Duration::from_secs(10),
        }
    }
}

/// Called with each output line of a command as it comes (stdout and stderr).
#[derive(Clone)]
pub struct LineHook(pub std::sync::Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for LineHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineHook")
    }
}

/// One command to run.
#[derive(Debug, Clone)]
pub struct ToolCommand {
    /// The command line.
    pub cmd: Cmd,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Stream every output line into the provider log at INFO (else DEBUG).
    pub log_at_info: bool,
    /// Also hand every line to this, as it comes.
    pub on_line: Option<LineHook>,
    /// What it prints holds secrets (a join command, a kubeconfig): its lines are not logged
    /// and not kept for errors; the caller still gets them in [`Finished`].
    pub secret_output: bool,
    /// While it runs, this file names its process (`process::identity`), so that a provider
    /// killed meanwhile leaves a record of the command it left running (see
    /// [`stop_left_running`]).
    pub pidfile: Option<PathBuf>,
}

impl ToolCommand {
    /// A command with no working directory, environment or streaming at INFO.
    pub fn new(cmd: Cmd) -> Self {
        ToolCommand {
            cmd,
            cwd: None,
            env: Vec::new(),
            log_at_info: false,
            on_line: None,
            secret_output: false,
            pidfile: None,
        }
    }
}

/// A command that ran to its end (whatever its exit status).
#[derive(Debug, Clone)]
pub struct Finished {
    /// The command line as shown in errors.
    pub cmd: String,
    /// How it exited.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// Its last lines, stdout and stderr interleaved as they came.
    pub tail: Vec<String>,
}

impl Finished {
    /// The exit status as text (`exit code 1`).
    pub fn status_text(&self) -> String {
        describe_status(&self.status).0
    }

    /// `Ok(self)` when it exited 0, else [`BackendError::ToolFailed`] with its last lines.
    pub fn ok(self) -> Result<Finished, BackendError> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(BackendError::ToolFailed {
                cmd: self.cmd.clone(),
                status: self.status_text(),
                tail: self.tail.join("\n"),
            })
        }
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

enum Stop {
    Timeout,
    Cancelled,
}

/// Kills the process group if the run is dropped before it finished.
struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_group(self.pgid, libc::SIGKILL);
        }
    }
}

/// The record of a running command; removed when the command is over (a provider killed
/// meanwhile leaves it).
struct PidFile(PathBuf);

impl PidFile {
    fn write(path: &Path, pid: u32) -> Option<PidFile> {
        let id = crate::process::identity(pid)?;
        match std::fs::write(path, id) {
            Ok(()) => Some(PidFile(path.to_path_buf())),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot record the running command");
                None
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A command that an earlier provider process started and left running when it was killed
/// (`pidfile` names it, and it still runs, and not as a child of this process): stop its
/// process group (SIGINT, SIGTERM, then SIGKILL, each for its grace), and forget the record.
/// Returns the pid it stopped.
pub async fn stop_left_running(pidfile: &Path, grace: Grace) -> Option<u32> {
    let recorded = std::fs::read_to_string(pidfile).ok()?;
    let recorded = recorded.trim();
    let pid: Option<u32> = recorded.split('/').nth(1).and_then(|p| p.parse().ok());
    let live = pid.filter(|p| {
        crate::process::identity(*p).as_deref() == Some(recorded) && crate::process::parent_of(*p) != Some(std::process::id())
    });
    if let Some(pid) = live {
        tracing::warn!(pid, record = %pidfile.display(), "stopping a command that a killed provider left running");
        let steps = [
            (libc::SIGINT, grace.interrupt),
            (libc::SIGTERM, grace.terminate),
            (libc::SIGKILL, Duration::from_secs(10)),
        ];
        'steps: for (sig, wait) in steps {
            signal_group(pid as i32, sig);
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if !group_alive(pid as i32) {
                    break 'steps;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let _ = std::fs::remove_file(pidfile);
    live
}

fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: kill(2) with a negative pid signals the process group; no memory is involved.
    unsafe {
        libc::kill(-pgid, sig);
    }
}

/// Whether any live process of the group is left. Zombies do not count: an orphan that died
/// may wait for a PID 1 that is slow to reap it, but it no longer runs.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(-pgid, 0) } != 0 {
        return false;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return true;
    };
    entries.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            return false;
        };
        let mut f = rest.split_whitespace();
        let state = f.next();
        let pgrp = f.nth(1).and_then(|p| p.parse::<i32>().ok());
        pgrp == Some(pgid) && state != Some("Z") && state != Some("X")
    })
}

fn reader<R: AsyncRead + Unpin + Send + 'static>(
    stream: R,
    which: Stream,
    tx: mpsc::UnboundedSender<(Stream, String)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut r = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    // Progress bars redraw with `\r` and ANSI escapes: one line per redraw.
                    let text = strip_ansi(&String::from_utf8_lossy(&buf));
                    for part in text.split(['\n', '\r']).filter(|p| !p.trim().is_empty()) {
                        if tx.send((which, part.trim_end().to_string())).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    })
}

struct Collector {
    short: String,
    /// The command's secrets (see `Cmd::secrets`), never logged even if it prints them.
    cmd: Cmd,
    /// Its whole output is secret.
    secret_output: bool,
    log_at_info: bool,
    on_line: Option<LineHook>,
    stdout: String,
    stderr: String,
    tail: VecDeque<String>,
}

/// `text` without ANSI escape sequences (colours, cursor moves).
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.peek() == Some(&'[') {
            chars.next();
            // CSI: parameters and intermediates up to a final byte in @..~.
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

fn is_progress(line: &str) -> bool {
    line.trim_start().starts_with("Progress:")
}

impl Collector {
    fn take(&mut self, stream: Stream, line: String) {
        if let Some(hook) = &self.on_line {
            (hook.0)(&line);
        }
        let buf = match stream {
            Stream::Stdout => &mut self.stdout,
            Stream::Stderr => &mut self.stderr,
        };
        if buf.len() < STDOUT_CAP {
            buf.push_str(&line);
            buf.push('\n');
        }
        if self.secret_output {
            tracing::debug!(command = %self.short, "({} characters of output not logged: they hold secrets)", line.len());
            return;
        }
        let line = self.cmd.redact(&line);
        let progress = is_progress(&line);
        if progress {
            // Hundreds of redraws of one bar: keep them out of the INFO log and the tail.
            tracing::debug!(command = %self.short, "{line}");
            if self.tail.back().is_some_and(|l| is_progress(l)) {
                self.tail.pop_back();
            }
        } else if self.log_at_info {
            tracing::info!(command = %self.short, "{line}");
        } else {
            tracing::debug!(command = %self.short, "{line}");
        }
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }
}

/// Run `tc` to its end within `limits`. On timeout or cancellation the command's whole
/// process group is stopped (see [`Grace`]) and the error names the command.
pub async fn run_tool(
    tc: &ToolCommand,
    limits: &Limits,
    grace: Grace,
) -> Result<Finished, BackendError> {
    let shown = tc.cmd.to_string();
    // The log names the tool and its verb, not the whole prefix (`vagrant up`).
    let short = short_name(&tc.cmd);
    if limits.cancel.is_cancelled() {
        return Err(BackendError::Cancelled { running: shown });
    }
    if Instant::now() >= limits.deadline {
        return Err(BackendError::Timeout {
            timeout: limits.timeout,
            running: shown,
        });
    }
    tracing::info!(command = %shown, "running");
    let mut command = tokio::process::Command::new(&tc.cmd.argv[0]);
    command
        .args(&tc.cmd.argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &tc.cwd {
        command.current_dir(dir);
    }
    for (k, v) in &tc.env {
        command.env(k, v);
    }
    let mut child = command.spawn().map_err(|source| {
        BackendError::Command(CommandError::Spawn {
            cmd: shown.clone(),
            source,
        })
    })?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let mut guard = GroupGuard {
        pgid,
        armed: pgid > 0,
    };
    let _pidfile = tc.pidfile.as_ref().and_then(|path| PidFile::write(path, pgid as u32));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(reader(out, Stream::Stdout, tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(reader(err, Stream::Stderr, tx.clone()));
    }
    drop(tx);
    let mut col = Collector {
        short,
        cmd: tc.cmd.clone(),
        secret_output: tc.secret_output,
        log_at_info: tc.log_at_info,
        on_line: tc.on_line.clone(),
        stdout: String::new(),
        stderr: String::new(),
        tail: VecDeque::new(),
    };

    let outcome: Result<ExitStatus, Stop> = loop {
        tokio::select! {
            status = child.wait() => match status {
                Ok(s) => break Ok(s),
                Err(source) => {
                    signal_group(pgid, libc::SIGKILL);
                    return Err(BackendError::Command(CommandError::Spawn { cmd: shown, source }));
                }
            },
            Some((stream, line)) = rx.recv() => col.take(stream, line),
            _ = tokio::time::sleep_until(limits.deadline) => break Err(Stop::Timeout),
            _ = limits.cancel.cancelled() => break Err(Stop::Cancelled),
        }
    };

    match outcome {
        Ok(status) => {
            // The tool is done; give its output a moment to drain (a process it left behind
            // may hold the pipes open: do not wait for that).
            let drain_until = Instant::now() + Duration::from_secs(2);
            loop {
                tokio::select! {
                    msg = rx.recv() => match msg {
                        Some((stream, line)) => col.take(stream, line),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(drain_until) => break,
                }
            }
            for r in readers {
                r.abort();
            }
            guard.armed = false;
            let tail = if tc.secret_output {
                vec!["(its output is not shown: it holds secrets)".to_string()]
            } else {
                col.tail.into_iter().collect()
            };
            Ok(Finished {
                cmd: shown,
                status,
                stdout: col.stdout,
                stderr: col.stderr,
                tail,
            })
        }
        Err(stop) => {
            let why = match stop {
                Stop::Timeout => "timeout",
                Stop::Cancelled => "cancelled by Terraform",
            };
            tracing::warn!(command = %shown, "{why}: stopping its process group {pgid}");
            stop_group(pgid, &mut child, grace, &mut rx, &mut col).await;
            for r in readers {
                r.abort();
            }
            guard.armed = false;
            if !col.tail.is_empty() {
                tracing::warn!(
                    command = %shown,
                    "last lines before it was stopped:\n{}",
                    col.tail.iter().cloned().collect::<Vec<_>>().join("\n")
                );
            }
            Err(match stop {
                Stop::Timeout => BackendError::Timeout {
                    timeout: limits.timeout,
                    running: shown,
                },
                Stop::Cancelled => BackendError::Cancelled { running: shown },
            })
        }
    }
}

/// SIGINT, SIGTERM, SIGKILL to the group, each until the group is empty or its grace ran out.
async fn stop_group(
    pgid: i32,
    child: &mut tokio::process::Child,
    grace: Grace,
    rx: &mut mpsc::UnboundedReceiver<(Stream, String)>,
    col: &mut Collector,
) {
    let steps = [
        (libc::SIGINT, grace.interrupt),
        (libc::SIGTERM, grace.terminate),
        (libc::SIGKILL, Duration::from_secs(10)),
    ];
    for (sig, wait) in steps {
        signal_group(pgid, sig);
        let until = Instant::now() + wait;
        loop {
            // Reap the leader as soon as it exits, so that it does not count as alive.
            let _ = child.try_wait();
            if !group_alive(pgid) {
                return;
            }
            if Instant::now() >= until {
                break;
            }
            tokio::select! {
                Some((stream, line)) = rx.recv() => col.take(stream, line),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
    tracing::error!("process group {pgid} still has processes after SIGKILL");
}

/// `vagrant up`, `virsh net-info`: the program's file name and its first word that is not an
/// option, past any namespace-entering prefix.
fn short_name(cmd: &Cmd) -> String {
    let argv = &cmd.argv;
    // Skip a wrapper prefix that ends with `--` (nsenter … --, ip netns exec … style).
    let start = argv
        .iter()
        .position(|a| a == "--")
        .map(|i| i + 1)
        .filter(|&i| i < argv.len())
        .unwrap_or(0);
    let prog = std::path::Path::new(&argv[start])
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| argv[start].clone());
    match argv[start + 1..].iter().find(|a| !a.starts_with('-')) {
        Some(verb) => format!("{prog} {verb}"),
        None => prog,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sh -c script` through `run_tool`, 10 s allowed.
    async fn sh(script: &str) -> Finished {
        let tc = ToolCommand::new(Cmd::new(["sh", "-c", script]));
        run_tool(&tc, &Limits::timeout(Duration::from_secs(10)), Grace::default())
            .await
            .unwrap()
    }

    #[test]
    fn ansi_escapes_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[KProgress: 5%\u{1b}[0m"), "Progress: 5%");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[tokio::test]
    async fn progress_redraws_do_not_fill_the_tail() {
        let script = "printf 'start\\n'; for i in 1 2 3; do printf 'Progress: %s%%\\r\\033[K' $i; done; printf '\\ndone\\n'";
        let f = sh(script).await;
        assert_eq!(f.tail, vec!["start", "Progress: 3%", "done"]);
    }

    #[test]
    fn short_name_skips_namespace_prefix() {
        let c = Cmd::new([
            "nsenter",
            "--net=/run/netns/x",
            "--",
            "/usr/bin/vagrant",
            "up",
            "--provider",
            "libvirt",
        ]);
        assert_eq!(short_name(&c), "vagrant up");
        assert_eq!(short_name(&Cmd::new(["vagrant", "--version"])), "vagrant");
    }

    #[tokio::test]
    async fn exit_status_and_output_are_kept() {
        let f = sh("echo out; echo err >&2; exit 4").await;
        assert_eq!(f.status.code(), Some(4));
        assert_eq!(f.stdout, "out\n");
        assert_eq!(f.stderr, "err\n");
        let err = f.ok().unwrap_err().to_string();
        assert!(err.contains("exit code 4") && err.contains("err"), "{err}");
    }
}

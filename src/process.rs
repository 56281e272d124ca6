//! Running host commands (`ip`, `nft`, `iptables`, `sysctl`, `vagrant`, …) with errors that name
//! the command, its exit status and what it printed on stderr, so a diagnostic can tell the
//! user exactly what failed and what to run by hand; and naming one process of the host
//! exactly (boot id, pid, start time), to tell a process that still runs from a recycled pid.

use std::ffi::OsStr;
use std::fmt;
use std::process::Stdio;

use thiserror::Error;
use tokio::process::Command;

/// This boot of this host (`/proc/sys/kernel/random/boot_id`).
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|b| b.trim().to_string())
}

/// `<boot id>/<pid>/<start time>` of a live (not zombie) process: boot id, pid and start time
/// together name one process exactly, so a recycled pid never reads as the same process.
pub fn identity(pid: u32) -> Option<String> {
    let (state, _, start) = stat_of(pid)?;
    if state == "Z" {
        return None;
    }
    Some(format!("{}/{pid}/{start}", boot_id()?))
}

/// The parent of a live process.
pub fn parent_of(pid: u32) -> Option<u32> {
    stat_of(pid).map(|(_, ppid, _)| ppid)
}

/// State, parent pid and start time of `pid`, from `/proc/<pid>/stat`.
fn stat_of(pid: u32) -> Option<(String, u32, String)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may hold spaces and parentheses. After the command,
    // state is field 3 of stat(5), ppid field 4, start time field 22.
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((fields.first()?.to_string(), fields.get(1)?.parse().ok()?, fields.get(19)?.to_string()))
}

/// A command line, kept as argv so it can be shown in errors and run without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    /// Program and arguments; `argv[0]` is the program.
    pub argv: Vec<String>,
    /// Data written to the command's stdin (for `nft -f -`, `ip -batch -`).
    pub stdin: Option<String>,
    /// Values in its arguments that must never be shown (join tokens, certificate keys):
    /// every display of the command (logs, errors) has [`REDACTED`] in their place.
    pub secrets: Vec<String>,
}

/// What a secret value is shown as.
pub const REDACTED: &str = "<redacted>";

impl Cmd {
    /// A command from a program and its arguments.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Cmd {
            argv: argv
                .into_iter()
                .map(|s| s.as_ref().to_string_lossy().into_owned())
                .collect(),
            stdin: None,
            secrets: Vec::new(),
        }
    }

    /// The same command, with `value` (a whole argument or part of one) never shown.
    pub fn with_secret(mut self, value: impl Into<String>) -> Self {
        let value = value.into();
        if !value.is_empty() {
            self.secrets.push(value);
        }
        self
    }

    /// `text` with this command's secret values replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            out = out.replace(s.as_str(), REDACTED);
        }
        out
    }

    /// The same command with `input` fed to its stdin.
    pub fn with_stdin(mut self, input: impl Into<String>) -> Self {
        self.stdin = Some(input.into());
        self
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted: Vec<String> = self.argv.iter().map(|a| shell_quote(&self.redact(a))).collect();
        f.write_str(&quoted.join(" "))
    }
}

/// Quote one argument for display (and for copy-paste into a POSIX shell).
pub fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
    {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// Output of a command that exited 0.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Everything the command printed on stdout.
    pub stdout: String,
    /// Everything the command printed on stderr.
    pub stderr: String,
}

/// A host command that could not be run or did not succeed.
#[derive(Debug, Error)]
pub enum CommandError {
    /// The program could not be started (not installed, not executable).
    #[error("could not run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Why it could not start.
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited with a non-zero status (or was killed by a signal).
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Exit status as text (`exit code 2`, `killed by signal 9`).
        status: String,
        /// Exit code, when there is one.
        code: Option<i32>,
        /// What it printed on stderr (trimmed).
        stderr: String,
        /// What it printed on stdout (trimmed).
        stdout: String,
    },
}

impl CommandError {
    /// The stderr of a failed command ("" when it could not start).
    pub fn stderr(&self) -> &str {
        match self {
            CommandError::Failed { stderr, .. } => stderr,
            CommandError::Spawn { .. } => "",
        }
    }
}

/// Describe an exit status the way the errors show it.
pub fn describe_status(status: &std::process::ExitStatus) -> (String, Option<i32>) {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => (format!("exit code {code}"), Some(code)),
        (None, Some(sig)) => (format!("killed by signal {sig}"), None),
        (None, None) => ("unknown status".to_string(), None),
    }
}

/// Run `cmd` to completion, capturing stdout and stderr; non-zero exit is an error.
pub async fn run(cmd: &Cmd) -> Result<Output, CommandError> {
    let shown = cmd.to_string();
    tracing::debug!(command = %shown, "running");
    let mut command = Command::new(&cmd.argv[0]);
    command
        .args(&cmd.argv[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| CommandError::Spawn {
        cmd: shown.clone(),
        source,
    })?;
    if let Some(input) = &cmd.stdin {
        use tokio::io::AsyncWriteExt;
        if let Some(mut stdin) = child.stdin.take() {
            // A failed write shows up as the command's own error below.
            let _ = stdin.write_all(input.as_bytes()).await;
        }
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|source| CommandError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        Ok(Output { stdout, stderr })
    } else {
        let (status, code) = describe_status(&out.status);
        Err(CommandError::Failed {
            cmd: shown,
            status,
            code,
            stderr: stderr.trim().to_string(),
            stdout: stdout.trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_values_are_never_shown_and_still_run() {
        let join = "sudo kubeadm join 10.0.0.10:6443 --token abcdef.0123456789abcdef --certificate-key 99ff";
        let c = Cmd::new(["vagrant", "ssh", "acme-cp-2", "-c", join])
            .with_secret("abcdef.0123456789abcdef")
            .with_secret("99ff")
            .with_secret("");
        let shown = c.to_string();
        assert!(!shown.contains("0123456789abcdef") && !shown.contains("99ff"), "{shown}");
        assert_eq!(shown.matches(REDACTED).count(), 2, "{shown}");
        assert!(shown.starts_with("vagrant ssh acme-cp-2 -c 'sudo kubeadm join 10.0.0.10:6443 --token <redacted>"), "{shown}");
        assert_eq!(c.argv[4], join, "what runs is unchanged");
        assert_eq!(c.redact("error: token abcdef.0123456789abcdef rejected"), "error: token <redacted> rejected");
    }

    #[test]
    fn display_quotes_only_what_needs_it() {
        let c = Cmd::new(["ip", "-n", "lab one", "addr", "it's"]);
        assert_eq!(c.to_string(), "ip -n 'lab one' addr 'it'\\''s'");
    }

    #[tokio::test]
    async fn failure_names_command_status_and_stderr() {
        let err = run(&Cmd::new(["sh", "-c", "echo boom >&2; exit 3"]))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("sh -c"), "{text}");
        assert!(text.contains("exit code 3"), "{text}");
        assert!(text.contains("boom"), "{text}");
    }

    #[tokio::test]
    async fn stdin_is_fed() {
        let out = run(&Cmd::new(["cat"]).with_stdin("hello")).await.unwrap();
        assert_eq!(out.stdout, "hello");
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let err = run(&Cmd::new(["/nonexistent/prog"])).await.unwrap_err();
        assert!(matches!(err, CommandError::Spawn { .. }));
    }
}

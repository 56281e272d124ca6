//! Running the backend's commands as one operation: `ip -batch -` groups of commands, and the
//! operation's deadline and Terraform's stop signal, checked between steps and while a command
//! runs.

use tokio::time::Instant;

use crate::backend::{BackendError, OpControl};
use crate::process::{self, Cmd, CommandError, Output};

/// `ip -n <ns> -batch -` (or plain `ip -batch -`) fed `lines`; the error shows the lines.
pub(super) async fn run_batch(
    ns: Option<&str>,
    lines: &[String],
    op: Option<&Op<'_>>,
) -> Result<(), BackendError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut argv = vec!["ip"];
    if let Some(ns) = ns {
        argv.extend(["-n", ns]);
    }
    argv.extend(["-batch", "-"]);
    let text = lines.join("\n") + "\n";
    let cmd = Cmd::new(argv).with_stdin(text.clone());
    let result = match op {
        Some(op) => op.run(&cmd).await.map(|_| ()),
        None => process::run(&cmd)
            .await
            .map(|_| ())
            .map_err(BackendError::from),
    };
    result.map_err(|e| match e {
        BackendError::Command(CommandError::Failed {
            cmd,
            status,
            code,
            stderr,
            stdout,
        }) => BackendError::Command(CommandError::Failed {
            cmd: format!("{cmd} <<EOF\n{text}EOF"),
            status,
            code,
            stderr,
            stdout,
        }),
        other => other,
    })
}

/// A running operation: its deadline and Terraform's stop signal, checked between steps and
/// while a command runs (a command cut short is killed: `process::run` kills on drop).
pub(super) struct Op<'a> {
    pub(super) ctl: &'a OpControl,
    pub(super) deadline: Instant,
}

impl<'a> Op<'a> {
    pub(super) fn new(ctl: &'a OpControl) -> Self {
        Op {
            ctl,
            deadline: Instant::now() + ctl.timeout,
        }
    }

    pub(super) fn check(&self, step: &str) -> Result<(), BackendError> {
        if self.ctl.cancel.is_cancelled() {
            return Err(BackendError::Cancelled {
                running: step.into(),
            });
        }
        if Instant::now() >= self.deadline {
            return Err(BackendError::Timeout {
                timeout: self.ctl.timeout,
                running: step.into(),
            });
        }
        Ok(())
    }

    pub(super) fn remaining(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    pub(super) async fn run(&self, cmd: &Cmd) -> Result<Output, BackendError> {
        let shown = cmd.to_string();
        self.check(&shown)?;
        tokio::select! {
            r = tokio::time::timeout_at(self.deadline, process::run(cmd)) => match r {
                Ok(out) => out.map_err(BackendError::from),
                Err(_) => Err(BackendError::Timeout { timeout: self.ctl.timeout, running: shown }),
            },
            _ = self.ctl.cancel.cancelled() => Err(BackendError::Cancelled { running: shown }),
        }
    }
}

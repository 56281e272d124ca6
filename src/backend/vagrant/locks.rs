//! Ordering the provider's own vagrant commands per instance folder (ssh on single machines
//! shared, whole-lab commands exclusive), and retrying, until the operation's deadline, when
//! another Vagrant process holds a machine (`Vagrant::Errors::MachineLocked`). Beside the
//! [`super::runner`], which runs each command.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::BackendError;

use super::config::{Secrecy, VagrantBackend, RUNNING_FILE};
use super::runner::{self, Finished, Limits};

/// First wait before retrying a command that met a locked machine, and the longest wait.
pub(super) const LOCKED_RETRY_FIRST: Duration = Duration::from_millis(250);

pub(super) const LOCKED_RETRY_MAX: Duration = Duration::from_secs(4);

/// Which machines of an instance folder a vagrant command locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MachineScope {
    /// None (`--version`, `plugin list`, `validate`, `box …`).
    None,
    /// The one machine it names (`ssh <machine>`).
    One,
    /// Possibly every machine of the folder.
    All,
}

pub(super) fn machine_scope(args: &[String]) -> MachineScope {
    match args.first().map(String::as_str) {
        None | Some("--version" | "version" | "plugin" | "validate" | "box" | "global-status") => MachineScope::None,
        Some("ssh") => MachineScope::One,
        Some(_) => MachineScope::All,
    }
}

/// The in-process order of the vagrant commands on one instance folder.
pub(super) fn folder_lock(dir: &Path) -> Arc<tokio::sync::RwLock<()>> {
    static LOCKS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<tokio::sync::RwLock<()>>>>> =
        std::sync::OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    locks.entry(dir.to_path_buf()).or_default().clone()
}

/// Vagrant refused because another Vagrant process holds one of the machines
/// (`Vagrant::Errors::MachineLocked`, machine-readable or not).
pub fn machine_locked(f: &Finished) -> bool {
    [f.stdout.as_str(), f.stderr.as_str()]
        .iter()
        .any(|o| o.contains("Vagrant::Errors::MachineLocked") || o.contains("requested machine because it is locked"))
}

impl VagrantBackend {
    /// [`Self::vagrant`], handing every output line to `on_line` as it comes.
    pub(super) async fn vagrant_with(
        &self,
        dir: &Path,
        args: &[&str],
        limits: &Limits,
        log_at_info: bool,
        on_line: Option<runner::LineHook>,
        secrecy: Secrecy<'_>,
    ) -> Result<Finished, BackendError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut cmd = self.vagrant_cmd(dir, &args, log_at_info);
        cmd.on_line = on_line;
        for v in secrecy.values {
            cmd.cmd = cmd.cmd.with_secret(*v);
        }
        cmd.secret_output = secrecy.output;
        if machine_scope(&args) == MachineScope::All {
            cmd.pidfile = Some(dir.join(RUNNING_FILE));
        }
        // Vagrant locks each machine for the length of a command and fails another command on
        // it at once (MachineLocked). Within this process, commands on one instance folder are
        // ordered: `ssh` (one machine each, run side by side) share the folder, everything else
        // (status, up, destroy, halt: every machine) has it alone. Terraform refreshes an
        // instance and its federation at the same time, and both run vagrant on its machines.
        let lock = folder_lock(dir);
        let mut delay = LOCKED_RETRY_FIRST;
        loop {
            let f = match machine_scope(&args) {
                MachineScope::None => runner::run_tool(&cmd, limits, self.cfg.grace).await?,
                MachineScope::One => {
                    let _shared = lock.read().await;
                    runner::run_tool(&cmd, limits, self.cfg.grace).await?
                }
                MachineScope::All => {
                    let _alone = lock.write().await;
                    runner::run_tool(&cmd, limits, self.cfg.grace).await?
                }
            };
            // Another process (or two `ssh` on one machine) holding a machine: wait and retry
            // while the operation's deadline allows; the lock is released within seconds
            // unless a long `vagrant up` holds it, and then the deadline decides.
            if f.status.success()
                || !machine_locked(&f)
                || limits.cancel.is_cancelled()
                || tokio::time::Instant::now() + delay >= limits.deadline
            {
                return Ok(f);
            }
            tracing::info!(
                command = %f.cmd,
                retry_in_ms = delay.as_millis() as u64,
                "a Vagrant machine is locked by another Vagrant process; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = limits.cancel.cancelled() => return Ok(f),
            }
            delay = (delay * 2).min(LOCKED_RETRY_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_locks_are_recognised_and_scoped() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(machine_scope(&args(&["ssh", "acme-cp-1", "-c", "true"])), MachineScope::One);
        assert_eq!(machine_scope(&args(&["status", "--machine-readable"])), MachineScope::All);
        assert_eq!(machine_scope(&args(&["destroy", "-f", "acme-worker-2"])), MachineScope::All);
        assert_eq!(machine_scope(&args(&["--version"])), MachineScope::None);
        assert_eq!(machine_scope(&args(&["plugin", "list"])), MachineScope::None);
        let finished = |stdout: &str, stderr: &str| Finished {
            cmd: "vagrant status --machine-readable".into(),
            status: std::os::unix::process::ExitStatusExt::from_raw(256),
            stdout: stdout.into(),
            stderr: stderr.into(),
            tail: vec![],
        };
        // As Vagrant 2.3.4 printed it in CI, machine-readable and for humans.
        assert!(machine_locked(&finished(
            "1795684941,,error-exit,Vagrant::Errors::MachineLocked,Vagrant can't use the requested machine because it is locked! This\\nmeans",
            ""
        )));
        assert!(machine_locked(&finished("", "Vagrant can't use the requested machine because it is locked! This")));
        assert!(!machine_locked(&finished("", "The machine with the name 'x' was not found")));
    }
}

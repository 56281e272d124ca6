//! Who plans: the Terraform workspace an instance belongs to, and the run (one provider
//! process, so one `terraform plan` or one `terraform apply`) that made a reservation.
//!
//! A **workspace** is the host, the working directory Terraform runs the provider in (Terraform
//! starts providers in its working directory, `-chdir` included, and a saved plan is applied
//! from the folder that made it), and the Terraform workspace selected there (`TF_WORKSPACE`,
//! else the `environment` file in Terraform's data directory, else `default`). Two folders, or
//! two `terraform workspace`s of one folder, are two workspaces: each has a state of its own,
//! so neither may take the other's instances. It is safe to let a workspace's newer plans take
//! over what its older plans reserved: only that workspace's state can ever hold those
//! instances, and a saved plan whose reservation was taken gets exactly its values or fails
//! naming the new holder (the claim checks).

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The Terraform workspace an entry belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Workspace {
    /// Host name.
    pub host: String,
    /// Terraform's working directory (canonical).
    pub dir: String,
    /// The Terraform workspace selected there (`default` unless chosen).
    pub name: String,
}

impl Workspace {
    /// The workspace of this process: its host, working directory and Terraform workspace.
    pub fn current() -> Workspace {
        let dir = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let dir = dir.canonicalize().unwrap_or(dir);
        let data_dir = std::env::var_os("TF_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".terraform"));
        Workspace {
            host: crate::audit::host_name(),
            name: terraform_workspace(std::env::var("TF_WORKSPACE").ok(), &dir.join(data_dir)),
            dir: dir.display().to_string(),
        }
    }
}

/// The selected Terraform workspace: `TF_WORKSPACE` when set, else what `terraform workspace
/// select` wrote into `<data dir>/environment`, else `default`.
pub fn terraform_workspace(env: Option<String>, data_dir: &Path) -> String {
    if let Some(w) = env.map(|w| w.trim().to_string()).filter(|w| !w.is_empty()) {
        return w;
    }
    std::fs::read_to_string(data_dir.join("environment"))
        .ok()
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty())
        .unwrap_or_else(|| "default".into())
}

impl fmt::Display for Workspace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "workspace `{}` of {} on {}", self.name, self.dir, self.host)
    }
}

/// Who is planning or applying now: a workspace, and one run of the provider in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The workspace.
    pub workspace: Workspace,
    /// This run (provider process): random, never reused.
    pub run: String,
    /// When this run started (whole seconds, as the registry's clock).
    pub started: OffsetDateTime,
    /// This run's provider process, as `registry::interrupted` records it (`None`: unknown).
    pub process: Option<String>,
}

impl Origin {
    /// This process, in the workspace it runs in.
    pub fn current() -> Origin {
        let now = OffsetDateTime::now_utc();
        Origin {
            workspace: Workspace::current(),
            run: new_run_id(),
            started: now.replace_nanosecond(0).unwrap_or(now),
            process: this_process(),
        }
    }
}

/// A run id: 16 hex digits from the kernel's random source (the time and process id when that
/// cannot be read).
pub fn new_run_id() -> String {
    let mut bytes = [0u8; 8];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
    if read.is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes = ((t as u64) ^ (u64::from(std::process::id()) << 40)).to_be_bytes();
    }
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terraform_workspace_comes_from_env_then_environment_file_then_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(terraform_workspace(None, dir.path()), "default");
        std::fs::write(dir.path().join("environment"), "staging\n").unwrap();
        assert_eq!(terraform_workspace(None, dir.path()), "staging");
        assert_eq!(terraform_workspace(Some("ci".into()), dir.path()), "ci");
        assert_eq!(terraform_workspace(Some(" ".into()), dir.path()), "staging");
    }

    #[test]
    fn run_ids_differ() {
        assert_ne!(new_run_id(), new_run_id());
        assert_eq!(new_run_id().len(), 16);
    }
}

/// This process's identity (see [`crate::process::identity`]).
pub(crate) fn this_process() -> Option<String> {
    crate::process::identity(std::process::id())
}

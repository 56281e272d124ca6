//! Machines whose last `vagrant up` failed: `<instance folder>/failed-up.json`.
//!
//! A machine that did not come up (a guest that does not boot, a bring-up that timed out) may
//! be left running on a broken disk, and `vagrant up` would only wait on it again. Its
//! instance folder remembers it: reads report it as not healthy (so the next plan shows the
//! repair), and the next converge destroys it before bringing it up again, instead of
//! timing out a second time. A successful bring-up forgets it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record's file name in the instance folder.
pub const FILE: &str = "failed-up.json";

/// What `state` says of such a machine.
pub const STATE: &str = "failed_to_come_up";

/// The machines of a failed bring-up, and why it failed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FailedUp {
    /// Machine names.
    pub machines: Vec<String>,
    /// The error, in one line.
    pub why: String,
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// The record of `dir`, if any (an unreadable one counts as none).
pub fn load(dir: &Path) -> Option<FailedUp> {
    std::fs::read(path(dir)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Remember that bringing up `machines` failed (adding to what is remembered).
pub fn record(dir: &Path, machines: &[&str], why: &str) -> std::io::Result<()> {
    let mut r = load(dir).unwrap_or_default();
    for m in machines {
        if !r.machines.iter().any(|x| x == m) {
            r.machines.push((*m).to_string());
        }
    }
    r.why = why.lines().next().unwrap_or_default().to_string();
    std::fs::write(path(dir), serde_json::to_vec_pretty(&r).expect("a record serializes"))
}

/// Forget (the machines came up).
pub fn clear(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path(dir)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_machines_accumulate_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), None);
        record(dir.path(), &["acme-cp-1"], "timed out after 480s while running `vagrant up`\nmore").unwrap();
        record(dir.path(), &["acme-cp-1", "acme-worker-1"], "exit code 1").unwrap();
        let r = load(dir.path()).unwrap();
        assert_eq!(r.machines, vec!["acme-cp-1", "acme-worker-1"]);
        assert_eq!(r.why, "exit code 1");
        clear(dir.path()).unwrap();
        clear(dir.path()).unwrap();
        assert_eq!(load(dir.path()), None);
    }
}

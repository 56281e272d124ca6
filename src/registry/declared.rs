//! What a workspace's configuration pins, as its latest validation saw it:
//! `<home>/declared/<workspace digest>.json`.
//!
//! Terraform validates the whole configuration (in a process of its own) before it plans, and
//! then plans independent resources in no fixed order. An instance that takes any network may
//! therefore be planned before another instance of the same configuration that pins the very
//! network it would get (`pod_cidr = "10.96.0.0/16"` next to an automatic instance whose first
//! service CIDR is 10.96.0.0/16). Validation writes down every literal pin here; the plan's
//! automatic choices step around the pins of the other instances of their own workspace, so
//! the outcome does not depend on the order of the calls. Pins that are not known at
//! validation (variables, other resources) are not seen here; the registry's takeover rule
//! (a pin beats an automatic reservation) still makes such a plan converge on its next run.
//!
//! The file is a hint, never a hold: nothing here keeps anyone else from a network, it is
//! rewritten by every validation run of its workspace, and when it cannot be read or written
//! the provider simply plans without it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Kind, Origin, Workspace};
use crate::net::Ipv4Net;

/// One pinned network of one instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pin {
    /// Instance name.
    pub name: String,
    /// Which network.
    pub kind: Kind,
    /// The pinned CIDR.
    pub cidr: Ipv4Net,
}

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Declared {
    /// Whose configuration.
    pub workspace: Workspace,
    /// The validation run that wrote it.
    pub run: String,
    /// The pins it saw.
    pub pins: Vec<Pin>,
}

/// The file of `workspace` under `home`.
pub fn path(home: &Path, workspace: &Workspace) -> PathBuf {
    let key = serde_json::to_vec(workspace).expect("a workspace serializes");
    let digest = hex::encode(Sha256::digest(&key));
    home.join("declared").join(format!("{}.json", &digest[..16]))
}

/// The pins of `workspace`'s latest validation, if any could be read.
pub fn load(home: &Path, workspace: &Workspace) -> Vec<Pin> {
    std::fs::read(path(home, workspace))
        .ok()
        .and_then(|b| serde_json::from_slice::<Declared>(&b).ok())
        .filter(|d| d.workspace == *workspace)
        .map(|d| d.pins)
        .unwrap_or_default()
}

/// What one validation run has seen so far: pins by instance, and the home to write them to.
#[derive(Debug, Default)]
pub struct Recorder {
    state: Mutex<(Option<PathBuf>, BTreeMap<String, Vec<Pin>>)>,
}

impl Recorder {
    /// A recorder with nothing seen.
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// The provider's home (from its validated configuration). Writes only what instances
    /// were already seen: Terraform validates the provider again in the process that plans,
    /// before configuring it, and that must not erase what the validation run wrote.
    pub fn set_home(&self, home: PathBuf, origin: &Origin) {
        let mut st = self.state.lock().expect("declared lock");
        st.0 = Some(home);
        if !st.1.is_empty() {
            Self::write(&st.0, &st.1, origin);
        }
    }

    /// The pins of one instance (replacing what was seen of it before).
    pub fn record(&self, name: &str, pins: Vec<(Kind, Ipv4Net)>, origin: &Origin) {
        let mut st = self.state.lock().expect("declared lock");
        let pins: Vec<Pin> = pins
            .into_iter()
            .map(|(kind, cidr)| Pin { name: name.to_string(), kind, cidr })
            .collect();
        if st.1.get(name) == Some(&pins) {
            return;
        }
        st.1.insert(name.to_string(), pins);
        Self::write(&st.0, &st.1, origin);
    }

    /// Write everything seen, replacing the file of any earlier run (temp file and rename).
    fn write(home: &Option<PathBuf>, seen: &BTreeMap<String, Vec<Pin>>, origin: &Origin) {
        let Some(home) = home else { return };
        let doc = Declared {
            workspace: origin.workspace.clone(),
            run: origin.run.clone(),
            pins: seen.values().flatten().cloned().collect(),
        };
        let file = path(home, &origin.workspace);
        let tmp = file.with_extension(format!("tmp-{}", origin.run));
        let done = file
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| std::fs::write(&tmp, serde_json::to_vec_pretty(&doc).expect("pins serialize")))
            .and_then(|_| std::fs::rename(&tmp, &file));
        if let Err(e) = done {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(file = %file.display(), error = %e, "the configuration's pins could not be written down; plans go without them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(run: &str) -> Origin {
        Origin {
            workspace: Workspace { host: "h".into(), dir: "/w".into(), name: "default".into() },
            run: run.into(),
            started: time::OffsetDateTime::UNIX_EPOCH,
            process: None,
        }
    }

    #[test]
    fn a_validation_run_writes_what_it_saw_and_the_next_one_replaces_it() {
        let home = tempfile::tempdir().unwrap();
        let o = origin("r1");
        let rec = Recorder::new();
        rec.record("globex", vec![(Kind::PodCidr, "10.96.0.0/16".parse().unwrap())], &o);
        assert!(load(home.path(), &o.workspace).is_empty(), "nothing written before the home is known");
        rec.set_home(home.path().into(), &o);
        rec.record("acme", vec![], &o);
        let pins = load(home.path(), &o.workspace);
        assert_eq!(pins, vec![Pin { name: "globex".into(), kind: Kind::PodCidr, cidr: "10.96.0.0/16".parse().unwrap() }]);
        // A process that only validates the provider (the one that plans, before it
        // configures) leaves the file as it is.
        let o2 = origin("r2");
        let rec2 = Recorder::new();
        rec2.set_home(home.path().into(), &o2);
        assert_eq!(load(home.path(), &o2.workspace).len(), 1);
        // The next validation (the pin removed from the configuration) starts afresh.
        rec2.record("globex", vec![], &o2);
        assert!(load(home.path(), &o2.workspace).is_empty());
        // Another workspace's file is another file.
        let other = Workspace { host: "h".into(), dir: "/other".into(), name: "default".into() };
        assert_ne!(path(home.path(), &other), path(home.path(), &o.workspace));
    }

    #[test]
    fn an_unwritable_home_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let rec = Recorder::new();
        rec.set_home(file.clone(), &origin("r"));
        rec.record("a", vec![(Kind::Subnet, "192.168.60.0/24".parse().unwrap())], &origin("r"));
        assert!(load(&file, &origin("r").workspace).is_empty());
    }
}

//! A registry home and a `netns` lab host for one acceptance test, with the configuration
//! snippets the tests build from. The lab host's namespaces are deleted by its guard, also
//! when the test fails.

use homelab::registry::file::FileStore;

use super::netns::{try_sh, LabHostGuard};
use super::terraform::{Run, Tf, Workdir};

/// A registry home and a lab host for one test, driven by one Terraform.
pub struct Lab {
    /// The registry home.
    pub home: tempfile::TempDir,
    /// The lab host (deleted on drop).
    pub host: LabHostGuard,
    /// The Terraform the test runs.
    pub tf: Tf,
}

impl Lab {
    /// A fresh home and lab host.
    pub fn new(tf: Tf) -> Lab {
        Lab {
            home: tempfile::Builder::new().prefix("homelab-home-").tempdir().unwrap(),
            host: LabHostGuard::new(),
            tf,
        }
    }

    /// The provider block (netns backend, this lab's home and host) plus `extra` settings.
    pub fn provider(&self, extra: &str) -> String {
        format!(
            "provider \"homelab\" {{\n  home = \"{}\"\n  default_backend = \"netns\"\n  netns_host = \"{}\"\n{extra}}}\n",
            self.home.path().display(),
            self.host.name
        )
    }

    /// An initialised working directory holding the provider block and `body`.
    pub fn workdir(&self, body: &str) -> Workdir {
        let w = Workdir::new(self.tf, &format!("{}{body}", self.provider("")));
        w.init();
        w
    }

    /// The registry's file store.
    pub fn store(&self) -> FileStore {
        FileStore::new(self.home.path())
    }

    /// The registry file's bytes, if written.
    pub fn registry_bytes(&self) -> Option<Vec<u8>> {
        std::fs::read(self.home.path().join("instances.json")).ok()
    }

    /// The namespace of a node.
    pub fn ns(&self, node: &str) -> String {
        format!("{}-{node}", self.host.name)
    }

    /// One ping from a node.
    pub fn ping(&self, from_node: &str, ip: &str) -> (bool, String) {
        try_sh(&["ip", "netns", "exec", &self.ns(from_node), "ping", "-c", "1", "-W", "1", ip])
    }
}

/// `resource "homelab_instance" "<name>"` named `<name>`, with `extra` lines.
pub fn instance(name: &str, extra: &str) -> String {
    format!("resource \"homelab_instance\" \"{name}\" {{\n  name = \"{name}\"\n{extra}}}\n")
}

/// The plan of `w` is empty.
pub fn plan_is_empty(w: &Workdir) {
    let r = w.plan_exit();
    assert_eq!(r.code, 0, "expected an empty plan:\n{}", r.all());
}

/// The plan updates in place and replaces nothing.
pub fn assert_in_place(r: &Run) {
    let all = r.all();
    assert!(all.contains("updated in-place"), "{all}");
    assert!(!all.contains("must be replaced"), "{all}");
}

/// The inode of a node namespace (a re-created namespace has another).
pub fn inode(ns: &str) -> Option<u64> {
    std::fs::metadata(std::path::Path::new("/run/netns").join(ns))
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
        .ok()
}

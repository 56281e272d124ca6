//! The store suite (lifecycle, takeover, contract) on the file store, in a temporary folder
//! per test.

use super::*;
use crate::registry::file::FileStore;

/// A new, empty store of this suite.
fn backing() -> Arc<dyn Backing> {
    Arc::new(FileBacking(tempfile::tempdir().expect("temporary folder")))
}

struct FileBacking(tempfile::TempDir);

impl Backing for FileBacking {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(FileStore::new(self.0.path()))
    }
}

suite!();

#[path = "lifecycle.rs"]
mod lifecycle;
#[path = "takeover.rs"]
mod takeover;
#[path = "contract.rs"]
mod contract;

//! The store suite (lifecycle, takeover, contract) on the in-memory store.

use super::*;

/// A new, empty store of this suite.
fn backing() -> Arc<dyn Backing> {
    Arc::new(MemoryBacking(Arc::new(MemoryStore::new())))
}

struct MemoryBacking(Arc<MemoryStore>);

impl Backing for MemoryBacking {
    fn open(&self) -> Arc<dyn Store> {
        self.0.clone()
    }
}

suite!();

#[path = "lifecycle.rs"]
mod lifecycle;
#[path = "takeover.rs"]
mod takeover;
#[path = "contract.rs"]
mod contract;

//! The store suite (lifecycle, takeover, contract) on the etcd store: one real etcd (Debian's,
//! installed by `scripts/test.sh`) on loopback per test process, a key prefix of its own per
//! test.

use super::*;
use crate::registry::etcd::{EtcdConfig, EtcdStore};

#[allow(dead_code)]
#[path = "../../../tests/util/etcd_cluster.rs"]
pub(crate) mod etcd_cluster;

/// A new, empty store of this suite: a prefix no other test uses.
fn backing() -> Arc<dyn Backing> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let prefix = format!("/homelab-test-{}-{}/", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    Arc::new(EtcdBacking(EtcdConfig::new(etcd_cluster::shared().endpoints(), prefix)))
}

struct EtcdBacking(EtcdConfig);

impl Backing for EtcdBacking {
    fn open(&self) -> Arc<dyn Store> {
        Arc::new(EtcdStore::new(self.0.clone()))
    }
}

suite!();

#[path = "lifecycle.rs"]
mod lifecycle;
#[path = "takeover.rs"]
mod takeover;
#[path = "contract.rs"]
mod contract;

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

/// What only the etcd store has: a kept snapshot that follows other writers by reading only
/// what they wrote (and the keys of a kind that lost entries), never going stale.
#[test]
fn a_second_store_follows_every_change_of_the_first_through_its_kept_snapshot() {
    let a = lab();
    let b = a.fresh();
    let same = |why: &str| {
        let full = a.fresh().registry.snapshot().unwrap();
        assert_eq!(a.registry.snapshot().unwrap(), full, "{why}: the writer's view");
        assert_eq!(b.registry.snapshot().unwrap(), full, "{why}: the other store's view");
    };
    a.create("acme");
    a.create("globex");
    same("two created");
    a.registry.release("acme").unwrap();
    a.create("initech");
    a.reserve("hooli");
    same("one released, one created, one reserved");
    b.create("umbrella");
    a.registry.release("globex").unwrap();
    a.registry.release("initech").unwrap();
    same("changes from both, two released at once");
    b.registry.federate("hooli", "umbrella", fed_record(), serde_json::json!({"why": "test"})).unwrap_err();
    b.create("hooli");
    b.registry.federate("hooli", "umbrella", fed_record(), serde_json::json!({"why": "test"})).unwrap();
    same("a federation");
    a.registry.unfederate("hooli", "umbrella", serde_json::json!({"why": "test"})).unwrap();
    same("the federation gone");
    assert!(a.registry.verify_events().unwrap().events >= 10);
}

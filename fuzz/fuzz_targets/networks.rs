//! CIDRs and pools: pinned networks and the provider's pool settings. Accepted networks are
//! canonical and outside the special-purpose ranges; accepted settings give disjoint pools in
//! which three instances get disjoint networks inside their pools.
#![no_main]
use std::sync::Arc;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use homelab::audit::{Actor, Client};
use homelab::net;
use homelab::registry::memory::MemoryStore;
use homelab::registry::{Planned, Registry, SystemClock, Wants};
use homelab::settings::{self, RawSettings};

fn fields(data: &[u8]) -> Vec<String> {
    data.split(|b| *b == 0xff).map(|f| String::from_utf8_lossy(f).into_owned()).collect()
}

fuzz_target!(|data: &[u8]| {
    let f = fields(data);
    for text in &f {
        if let Ok(n) = net::parse_canonical(text) {
            assert_eq!(n.trunc(), n, "{text:?}");
        }
        if let Ok(n) = net::parse_lab_network(text) {
            assert!(net::special_range(&n).is_none(), "{text:?}");
        }
    }
    let get = |i: usize| f.get(i).filter(|s| !s.is_empty()).cloned();
    let prefix = |i: usize| f.get(i).and_then(|s| s.bytes().next()).map(|b| i64::from(b as i8));
    let raw = RawSettings {
        home: None,
        host_pool: get(0),
        host_prefix: prefix(1),
        pod_pool: get(2),
        pod_prefix: prefix(3),
        service_pool: get(4),
        service_prefix: prefix(5),
        mgmt_pool: get(6),
        mgmt_prefix: prefix(7),
        reservation_ttl: get(8),
    };
    let Ok(s) = settings::validate(&raw) else { return };
    let pools = s.pools.all();
    for (i, (_, a)) in pools.iter().enumerate() {
        assert!(a.capacity() > 0);
        for (_, b) in &pools[i + 1..] {
            assert!(!net::overlaps(&a.cidr, &b.cidr), "{raw:?}");
        }
    }
    let registry = Registry::new(
        Arc::new(MemoryStore::new()),
        s.pools,
        s.reservation_ttl.min(Duration::from_secs(3600)),
        Arc::new(SystemClock),
        Actor::current(),
        Client::provider("fuzz"),
    );
    let mut held = Vec::new();
    for name in ["acme", "globex", "initech"] {
        if let Ok(Planned::Reserved(e)) = registry.reserve(name, &Wants::auto(true), "netns", &[]) {
            for (kind, cidr) in e.allocation.iter() {
                assert!(s.pools.get(kind).index_of(&cidr).is_some(), "{name} {kind:?} {cidr} outside its pool");
                held.push(cidr);
            }
        }
    }
    for (i, a) in held.iter().enumerate() {
        for b in &held[i + 1..] {
            assert!(!net::overlaps(a, b), "{a} overlaps {b}");
        }
    }
});

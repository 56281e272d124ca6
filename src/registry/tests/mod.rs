//! Tests of the registry operations, from least to most powerful:
//! - `lifecycle`: the reservation lifecycle, names, federation tags and the seed's
//!   architecture test, with a manual clock; `takeover`: who may take what; `contract`: what
//!   every store must give (refused overlaps, distinct names to exhaustion, a fresh reader
//!   seeing what the writer holds). These three are one suite run unchanged on every store:
//!   [`on_memory`], [`on_file`] (a temporary folder) and [`on_etcd`] (a real etcd on loopback,
//!   one per test process, a key prefix of its own per test);
//! - [`file_store`]: what only the file store has: the seed's file test, crash repair of the
//!   event log, and bad inputs that must change nothing;
//! - [`repair`]: generations, and each damage of the file store reported and repaired;
//! - [`properties`]: random sequences of operations on both stores, checked against a model.

mod file_store;
mod properties;
mod repair;

pub(super) mod on_etcd;
mod on_file;
mod on_memory;

use std::sync::Arc;
use std::time::Duration;

use time::macros::datetime;
use time::OffsetDateTime;

use super::memory::MemoryStore;
use super::*;
use crate::audit::{Actor, Client, Event};
use crate::settings::{validate, RawSettings};

/// The tests' "now" at start.
pub(super) const T0: OffsetDateTime = datetime!(2024-03-01 12:00 UTC);
/// The tests' reservation lifetime.
pub(super) const TTL: Duration = Duration::from_secs(3600);

/// What each store's suite module (`on_memory`, `on_file`, `on_etcd`) defines for the suite's
/// tests (`lifecycle`, `takeover`, `contract`, included by each of them): `lab()` and
/// `lab_with()`, registries on a new, empty store of that module's `backing()`.
macro_rules! suite {
    () => {
        /// A registry on a new, empty store of this suite, with the default pools.
        #[allow(dead_code)]
        fn lab() -> Lab {
            Lab::of(backing(), default_pools())
        }

        /// A registry on a new, empty store of this suite, with `pools`.
        #[allow(dead_code)]
        fn lab_with(pools: Pools) -> Lab {
            Lab::of(backing(), pools)
        }
    };
}
use suite;

/// Where a suite's store keeps its registry, and how to open it again (a second reader: another
/// process or lab host on the same registry).
pub(super) trait Backing: Send + Sync {
    /// A store value on this registry.
    fn open(&self) -> Arc<dyn Store>;
}

/// A registry with its clock and store, for tests.
pub(super) struct Lab {
    pub registry: Registry,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn Store>,
    /// Where the store keeps its registry (kept alive as long as the lab; `None`: only `store`).
    pub backing: Option<Arc<dyn Backing>>,
}

impl Lab {
    /// `pools` on a store opened from `backing`.
    pub fn of(backing: Arc<dyn Backing>, pools: Pools) -> Lab {
        let mut lab = Lab::on(backing.open(), pools);
        lab.backing = Some(backing);
        lab
    }

    /// A second registry on the same registry as this one, through a store value of its own
    /// (what another process reads), with the default pools and a clock of its own at now.
    pub fn fresh(&self) -> Lab {
        let backing = self.backing.clone().expect("a lab of a suite");
        let lab = Lab::of(backing, default_pools());
        lab.clock.advance((self.clock.now() - T0).unsigned_abs());
        lab
    }

    /// `pools` on `store`, clock at [`T0`], TTL [`TTL`].
    pub fn on(store: Arc<dyn Store>, pools: Pools) -> Lab {
        let clock = Arc::new(ManualClock::at(T0));
        let registry = Registry::new(
            store.clone(),
            pools,
            TTL,
            clock.clone(),
            actor(),
            Client::provider("1.0.3"),
        )
        .with_origin(origin(0, T0));
        Lab {
            registry,
            clock,
            store,
            backing: None,
        }
    }

    /// Reserve `name` with automatic values; panics when refused.
    pub fn reserve(&self, name: &str) -> Entry {
        match self.registry.reserve(name, &Wants::auto(false), "netns", &[]) {
            Ok(Planned::Reserved(e)) => e,
            other => panic!("reserve {name}: {other:?}"),
        }
    }

    /// Reserve and claim `name` (plan then apply); panics when refused.
    pub fn create(&self, name: &str) -> Entry {
        let planned = self.reserve(name);
        self.registry
            .claim(name, &planned.allocation, "netns", lab_record(), &[])
            .unwrap_or_else(|e| panic!("claim {name}: {e}"))
    }

    /// The document and every event, to compare before and after a refused request.
    pub fn state(&self) -> (Document, Vec<Event>) {
        (
            self.registry.snapshot().expect("document loads"),
            self.store.events().expect("events load"),
        )
    }

    /// Actions of every event, in order.
    pub fn actions(&self) -> Vec<String> {
        self.store
            .events()
            .expect("events load")
            .into_iter()
            .map(|e| format!("{} {}", e.action, e.subject))
            .collect()
    }

    /// The next run (provider process) of the same workspace, on the same store and clock,
    /// starting a second later.
    pub fn new_run(&mut self, run: u32) {
        self.clock.advance(Duration::from_secs(1));
        let pools = *self.registry.pools();
        self.registry = Registry::new(self.store.clone(), pools, TTL, self.clock.clone(), actor(), Client::provider("1.0.3"))
            .with_origin(origin(run, self.clock.now()));
    }

    /// The next run, as [`Lab::new_run`], whose provider process is `process` (see
    /// `interrupted::Creating::process`).
    pub fn new_run_in(&mut self, run: u32, process: Option<String>) {
        self.clock.advance(Duration::from_secs(1));
        let pools = *self.registry.pools();
        self.registry = Registry::new(self.store.clone(), pools, TTL, self.clock.clone(), actor(), Client::provider("1.0.3"))
            .with_origin(Origin { process, ..origin(run, self.clock.now()) });
    }

    /// A registry of another workspace on the same store and clock.
    pub fn other_workspace(&self) -> Registry {
        let pools = *self.registry.pools();
        Registry::new(self.store.clone(), pools, TTL, self.clock.clone(), actor(), Client::provider("1.11.4")).with_origin(Origin {
            workspace: Workspace {
                host: "lab-host".into(),
                dir: "/home/bob/other-lab".into(),
                name: "default".into(),
            },
            run: "b0b0b0b0b0b0b0b0".into(),
            started: self.clock.now(),
            process: None,
        })
    }

    /// Move the clock.
    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }
}

/// The tests' workspace, run `run` of it, started at `started`.
pub(super) fn origin(run: u32, started: OffsetDateTime) -> Origin {
    Origin {
        workspace: Workspace {
            host: "lab-host".into(),
            dir: "/home/alice/lab".into(),
            name: "default".into(),
        },
        run: format!("{run:016x}"),
        started,
        process: None,
    }
}

/// A fixed actor so events do not depend on the machine running the tests.
pub(super) fn actor() -> Actor {
    Actor {
        user: "alice".into(),
        uid: 1000,
        host: "lab-host".into(),
        pid: 4242,
    }
}

/// The provider's default pools (host 192.168.56.0/21 /24, pod 10.240.0.0/12 /16 starting at
/// 10.244.0.0/16, service 10.96.0.0/12 /16).
pub(super) fn default_pools() -> Pools {
    validate(&RawSettings::default()).expect("defaults are valid").pools
}

/// A lab shape for claims.
pub(super) fn lab_record() -> LabRecord {
    LabRecord {
        control_planes: 1,
        workers: 2,
        settings: Default::default(),
        host: None,
    }
}

/// A federation's declaration for `federate`.
pub(super) fn fed_record() -> FederationRecord {
    FederationRecord {
        reason: Some("test".into()),
        namespaces: vec!["default".into()],
        created_at: T0,
        owner: None,
        creating: None,
    }
}

/// Parse a CIDR literal.
pub(super) fn n(s: &str) -> Ipv4Net {
    s.parse().expect("test CIDR")
}

/// Every pair of networks held at `now` (by different entries, or two kinds of one entry)
/// that overlap, in words. Empty when the registry is sound.
pub(super) fn overlaps_among_holders(doc: &Document, now: OffsetDateTime) -> Vec<String> {
    let held: Vec<(&str, Kind, Ipv4Net)> = doc
        .instances
        .values()
        .filter(|e| e.holds(now))
        .flat_map(|e| e.allocation.iter().map(move |(k, c)| (e.name.as_str(), k, c)))
        .collect();
    let mut found = Vec::new();
    for (i, (na, ka, ca)) in held.iter().enumerate() {
        for (nb, kb, cb) in held.iter().skip(i + 1) {
            if crate::net::overlaps(ca, cb) {
                found.push(format!(
                    "{na}.{} ({ca}) overlaps {nb}.{} ({cb})",
                    ka.attribute(),
                    kb.attribute()
                ));
            }
        }
    }
    found
}

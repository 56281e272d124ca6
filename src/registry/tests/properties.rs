//! Property test: random sequences of reserve / claim / release / clock advance / drop on a few
//! names and tiny pools (so pools run out), sometimes with pinned values, checked after every
//! step against a model kept independently of the registry:
//! - no two networks held at that moment (allocations and live reservations) overlap, whatever
//!   their kinds;
//! - the registry holds exactly the names, statuses and values the model expects (no entry is
//!   lost or invented), and claims succeed exactly when the model says the values are free;
//! - the log holds exactly one event per change and its hash chain verifies;
//! - a refused operation leaves the document and the log unchanged;
//! - a reservation is only ever taken over by a later plan of its workspace, or by a request
//!   pinning a network that it had chosen automatically, and a failed plan drops exactly the
//!   reservations it made that pinned nothing.
//!
//! Runs on the in-memory store and, with fewer cases, on the file store. Operations come from
//! several runs (provider processes) of one workspace.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;
use crate::audit;
use crate::registry::file::FileStore;

const NAMES: [&str; 6] = ["acme", "globex", "initech", "hooli", "umbrella", "stark"];

/// Four slots per pool: host 192.168.56.0/25 in /27s, pod 10.240.0.0/14 and service
/// 10.96.0.0/14 in /16s.
fn tiny_pools() -> Pools {
    let raw = RawSettings {
        host_pool: Some("192.168.56.0/25".into()),
        host_prefix: Some(27),
        pod_pool: Some("10.240.0.0/14".into()),
        pod_prefix: Some(16),
        service_pool: Some("10.96.0.0/14".into()),
        service_prefix: Some(16),
        ..Default::default()
    };
    validate(&raw).expect("tiny pools are valid").pools
}

/// A subnet candidate: slot `i` of 192.168.56.0/24 in /27s (0..4 in the pool, 4..8 outside).
fn subnet_candidate(i: u8) -> Ipv4Net {
    Ipv4Net::new(std::net::Ipv4Addr::new(192, 168, 56, i * 32), 27).unwrap()
}

/// A /16 candidate for pod or service CIDRs: 0..4 are pod slots, 4..8 service slots, so a
/// pod CIDR may land in the service pool and collide with another kind.
fn cluster_candidate(i: u8) -> Ipv4Net {
    if i < 4 {
        Ipv4Net::new(std::net::Ipv4Addr::new(10, 240 + i, 0, 0), 16).unwrap()
    } else {
        Ipv4Net::new(std::net::Ipv4Addr::new(10, 96 + (i - 4), 0, 0), 16).unwrap()
    }
}

#[derive(Debug, Clone)]
enum Pin {
    Subnet(u8),
    PodCidr(u8),
    ServiceCidr(u8),
}

#[derive(Debug, Clone)]
enum ClaimWith {
    /// The values of the name's newest plan (a saved plan, possibly stale).
    Planned,
    /// Values of its own (an apply after the registry moved on, a hand-edited state).
    Given(u8, u8, u8),
}

#[derive(Debug, Clone)]
enum Op {
    Reserve(usize, Option<Pin>),
    Claim(usize, ClaimWith),
    Release(usize),
    Advance(u64),
    Drop(Option<usize>, bool),
    /// A new provider process (the next `terraform plan`) of the same workspace.
    NewRun,
    /// A refresh of the name found it in state.
    Confirm(usize),
    /// This run's plan failed.
    PlanFailed,
}

/// Seconds to move the clock: often less than the TTL, sometimes right at its edge (a
/// reservation is free again exactly at its expiry), sometimes well beyond.
fn advance() -> impl Strategy<Value = u64> {
    let ttl = TTL.as_secs();
    prop_oneof![
        Just(0),
        1..=ttl / 4,
        Just(ttl - 1),
        Just(ttl),
        Just(ttl + 1),
        ttl..=ttl * 2,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    let pin = prop_oneof![
        3 => Just(None),
        1 => (0u8..8).prop_map(|i| Some(Pin::Subnet(i))),
        1 => (0u8..8).prop_map(|i| Some(Pin::PodCidr(i))),
        1 => (0u8..8).prop_map(|i| Some(Pin::ServiceCidr(i))),
    ];
    let claim = prop_oneof![
        3 => Just(ClaimWith::Planned),
        1 => (0u8..8, 0u8..8, 0u8..8).prop_map(|(s, p, c)| ClaimWith::Given(s, p, c)),
    ];
    prop_oneof![
        6 => (name.clone(), pin).prop_map(|(n, p)| Op::Reserve(n, p)),
        4 => (name.clone(), claim).prop_map(|(n, c)| Op::Claim(n, c)),
        2 => name.clone().prop_map(Op::Release),
        2 => advance().prop_map(Op::Advance),
        1 => (proptest::option::of(name.clone()), any::<bool>()).prop_map(|(n, e)| Op::Drop(n, e)),
        2 => Just(Op::NewRun),
        1 => name.clone().prop_map(Op::Confirm),
        1 => Just(Op::PlanFailed),
    ]
}

/// What the model knows of one name.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    status: Status,
    allocation: Allocation,
    /// For reservations.
    expires_at: Option<OffsetDateTime>,
    /// The run that last reserved or claimed it, and (reservations) the run that made it.
    run: u32,
    first_run: u32,
    /// For reservations: the kinds the request pinned.
    pinned: Vec<Kind>,
    /// When it was reserved (or claimed).
    reserved_at: OffsetDateTime,
    /// For reservations taken over: the run that took it.
    taken_in_run: Option<u32>,
    /// For allocations not yet seen in state: the run creating it.
    creating: Option<u32>,
}

impl Known {
    fn holds(&self, now: OffsetDateTime) -> bool {
        self.status == Status::Allocated || (self.expires_at.is_some_and(|t| t > now) && self.taken_in_run.is_none())
    }
}

/// The model: what the registry must hold, and how many events it must have written.
#[derive(Debug, Default)]
struct Model {
    names: BTreeMap<&'static str, Known>,
    /// When each run started.
    started: BTreeMap<u32, OffsetDateTime>,
    /// The newest planned values per name (what a saved plan would apply).
    planned: BTreeMap<&'static str, Allocation>,
    events: usize,
}

impl Model {
    /// Whether `cidr` overlaps a network held at `now` by a name other than `me`.
    fn taken_by_others(&self, me: &str, cidr: &Ipv4Net, now: OffsetDateTime) -> bool {
        self.names
            .iter()
            .filter(|(n, k)| **n != me && k.holds(now))
            .any(|(_, k)| k.allocation.iter().any(|(_, c)| crate::net::overlaps(&c, cidr)))
    }

    /// Whether `pool` has a slot free of every network held at `now` by others.
    fn has_free_slot(&self, me: &str, pool: &crate::net::Pool, now: OffsetDateTime) -> bool {
        pool.slots().any(|s| !self.taken_by_others(me, &s, now))
    }
}

fn self_disjoint(a: &Allocation) -> bool {
    let nets: Vec<Ipv4Net> = a.iter().map(|(_, c)| c).collect();
    nets.iter()
        .enumerate()
        .all(|(i, x)| nets[i + 1..].iter().all(|y| !crate::net::overlaps(x, y)))
}

/// The names whose reservation the registry now marks as taken over while the model had it
/// live: what a reserve took over. Each must have been takeable by that request; the model
/// marks them taken (they hold nothing and stay until planned again or dropped).
fn taken_over(model: &mut Model, doc: &Document, me: &str, wants: &Wants, run: u32, now: OffsetDateTime, step: usize) -> Result<Vec<&'static str>, TestCaseError> {
    let gone: Vec<&'static str> = model
        .names
        .iter()
        .filter(|(n, k)| **n != me && k.taken_in_run.is_none())
        .filter(|(n, _)| doc.instances.get(**n).and_then(|e| e.reservation.as_ref()).is_some_and(|r| r.taken.is_some()))
        .map(|(n, _)| *n)
        .collect();
    let pins: Vec<Ipv4Net> = wants.iter().filter_map(|(_, w)| match w { Want::Pinned(c) => Some(c), Want::Auto => None }).collect();
    for n in &gone {
        let k = &model.names[n];
        prop_assert!(k.status == Status::Reserved && k.holds(now), "step {step}: {n} ({k:?}) was taken over, but it was not a live reservation");
        let stale = k.run != run && k.reserved_at < model.started[&run];
        let auto_in_the_way = k
            .allocation
            .iter()
            .any(|(kind, c)| !k.pinned.contains(&kind) && pins.iter().any(|p| crate::net::overlaps(p, &c)));
        prop_assert!(stale || auto_in_the_way, "step {step}: {me} took over {n} ({k:?}), which it had no right to");
    }
    for n in &gone {
        model.names.get_mut(n).expect("known").taken_in_run = Some(run);
    }
    model.events += gone.len();
    Ok(gone)
}

/// Run one sequence of operations, checking the model after every step.
fn run(lab: &mut Lab, ops: &[Op]) -> Result<(), TestCaseError> {
    let pools = *lab.registry.pools();
    let mut model = Model::default();
    let mut run_no = 0u32;
    model.started.insert(0, lab.registry.origin().started);
    for (step, op) in ops.iter().enumerate() {
        let now = lab.registry.now();
        let before = lab.state();
        let mut refused = false;
        match op {
            Op::Advance(secs) => lab.advance(Duration::from_secs(*secs)),
            Op::Confirm(i) => {
                let name = NAMES[*i];
                lab.registry.confirm(name).map_err(|e| TestCaseError::fail(e.to_string()))?;
                match model.names.get_mut(name) {
                    Some(k) if k.status == Status::Allocated && k.creating.is_some_and(|c| c != run_no) => {
                        k.creating = None;
                        model.events += 1;
                    }
                    _ => refused = true,
                }
            }
            Op::NewRun => {
                run_no += 1;
                lab.new_run(run_no);
                model.started.insert(run_no, lab.registry.origin().started);
                refused = true;
            }
            Op::PlanFailed => {
                let dropped = lab.registry.drop_run_reservations().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let mut expected: Vec<&str> = model
                    .names
                    .iter()
                    .filter(|(_, k)| k.status == Status::Reserved && k.run == run_no && k.first_run == run_no && k.pinned.is_empty())
                    .map(|(n, _)| *n)
                    .collect();
                let mut got: Vec<&str> = dropped.iter().map(String::as_str).collect();
                expected.sort();
                got.sort();
                prop_assert_eq!(&got, &expected, "step {}: a failed plan dropped", step);
                for n in expected {
                    model.names.remove(n);
                }
                model.events += got.len();
                refused = got.is_empty();
            }
            Op::Reserve(i, pin) => {
 'reserve: {
                let name = NAMES[*i];
                let mut wants = Wants::auto(false);
                match pin {
                    Some(Pin::Subnet(s)) => wants.subnet = Want::Pinned(subnet_candidate(*s)),
                    Some(Pin::PodCidr(s)) => wants.pod_cidr = Want::Pinned(cluster_candidate(*s)),
                    Some(Pin::ServiceCidr(s)) => wants.service_cidr = Want::Pinned(cluster_candidate(*s)),
                    None => {}
                }
                let mut known = model.names.get(name).cloned();
                let result = lab.registry.reserve(name, &wants, "netns", &[]);
                // A taken-over reservation: the run that took it plans the name afresh; any other
                // run is told who took it, once.
                if let Some(taker) = known.as_ref().and_then(|k| k.taken_in_run) {
                    if taker != run_no {
                        prop_assert!(matches!(result, Err(RegistryError::ReservationTaken { .. })), "step {step}: {name} was taken over, yet: {result:?}");
                        model.names.remove(name);
                        model.events += 1;
                        break 'reserve;
                    }
                    // Replaced by what this reserve makes, or kept when it is refused.
                    known = None;
                }
                let pinned: Vec<Kind> = wants.iter().filter(|(_, w)| matches!(w, Want::Pinned(_))).map(|(k, _)| k).collect();
                let first_run = known.as_ref().filter(|k| k.status == Status::Reserved && k.holds(now)).map(|k| k.first_run).unwrap_or(run_no);
                if matches!(result, Ok(Planned::Reserved(_)) | Err(RegistryError::TakenInThisRun { .. })) {
                    let doc = lab.registry.snapshot().map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let gone = taken_over(&mut model, &doc, name, &wants, run_no, now, step)?;
                    if let Err(RegistryError::TakenInThisRun { other, .. }) = &result {
                        prop_assert!(gone.contains(&other.as_str()), "step {step}: {name} says it took from {other}, which is still there");
                        prop_assert!(pin.is_some(), "step {step}: only a pinned request takes over in its own run");
                        let e = &doc.instances[name];
                        let expires = e.reservation.as_ref().map(|r| r.expires_at);
                        model.names.insert(name, Known { status: Status::Reserved, allocation: e.allocation, expires_at: expires, run: run_no, first_run, pinned: pinned.clone(), reserved_at: now, taken_in_run: None, creating: None });
                        model.planned.insert(name, e.allocation);
                        model.events += 1;
                    }
                }
                match result {
                    Err(RegistryError::TakenInThisRun { .. }) => {}
                    Ok(Planned::Reserved(e)) => {
                        prop_assert!(known.as_ref().is_none_or(|k| k.status == Status::Reserved), "step {step}: {name} allocated but reserved again");
                        if let (Some(k), None) = (&known, pin) {
                            let taken = k.allocation.iter().any(|(_, c)| model.taken_by_others(name, &c, now));
                            // Never silently different values: taken since expiry means lost.
                            prop_assert!(!taken, "step {step}: {name}'s expired values were taken, yet it got new ones");
                            let in_pools = k.allocation.iter().all(|(kind, c)| pools.get(kind).index_of(&c).is_some());
                            if in_pools {
                                prop_assert_eq!(e.allocation, k.allocation, "step {}: a renewed reservation changed values", step);
                            }
                        }
                        for (kind, want) in wants.iter() {
                            if let Want::Pinned(c) = want {
                                prop_assert_eq!(e.allocation.get(kind), Some(c));
                            }
                        }
                        let expires = e.reservation.as_ref().map(|r| r.expires_at);
                        prop_assert_eq!(expires, Some(now + TTL));
                        model.names.insert(name, Known { status: Status::Reserved, allocation: e.allocation, expires_at: expires, run: run_no, first_run, pinned, reserved_at: now, taken_in_run: None, creating: None });
                        model.planned.insert(name, e.allocation);
                        model.events += 1;
                    }
                    Ok(Planned::Existing { entry, .. }) => {
                        prop_assert_eq!(known.map(|k| k.status), Some(Status::Allocated), "step {}: Existing for {}", step, name);
                        prop_assert_eq!(entry.status, Status::Allocated);
                        refused = true; // nothing may be written
                    }
                    Err(RegistryError::ReservationLost { taken, .. }) => {
                        let k = known.expect("only a known name can lose its reservation");
                        prop_assert!(k.status == Status::Reserved && !k.holds(now), "step {step}: live reservation reported lost");
                        let lost = k.allocation.iter().any(|(kind, c)| {
                            matches!(wants.iter().find(|(w, _)| *w == kind), Some((_, Want::Auto)))
                                && model.taken_by_others(name, &c, now)
                        });
                        prop_assert!(lost, "step {step}: {name} reported lost but nothing was taken: {taken}");
                        model.names.remove(name);
                        model.events += 1;
                    }
                    Err(RegistryError::Alloc { source, .. }) => {
                        if pin.is_none() {
                            prop_assert!(matches!(source, AllocError::Exhausted { .. }), "step {step}: {source}");
                            let full = pools.all().iter().take(3).any(|(_, p)| !model.has_free_slot(name, p, now));
                            prop_assert!(full, "step {step}: exhausted while the model has a free slot in every pool: {source}");
                        }
                        refused = true;
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("step {step}: reserve {name}: {e}"))),
                }
            }
            }
            Op::Claim(i, with) => {
                let name = NAMES[*i];
                let values = match with {
                    ClaimWith::Planned => match model.planned.get(name) {
                        Some(a) => *a,
                        None => continue,
                    },
                    ClaimWith::Given(s, p, c) => Allocation {
                        subnet: subnet_candidate(*s),
                        pod_cidr: cluster_candidate(*p),
                        service_cidr: cluster_candidate(*c),
                        mgmt_cidr: None,
                    },
                };
                let known = model.names.get(name).cloned();
                let expected_free = self_disjoint(&values)
                    && values.iter().all(|(_, c)| !model.taken_by_others(name, &c, now));
                let result = lab.registry.claim(name, &values, "netns", lab_record(), &[]);
                match (&known, result) {
                    (Some(k), Ok(e)) if k.status == Status::Allocated => {
                        prop_assert_eq!(k.allocation, values, "step {}: claim with other values succeeded", step);
                        prop_assert_eq!(e.allocation, values);
                        if k.run == run_no {
                            refused = true; // a repeated claim writes nothing
                        } else {
                            // Another run's creation that no refresh confirmed: adopted.
                            prop_assert!(k.creating.is_some_and(|c| c != run_no), "step {step}: a claim adopted a confirmed instance");
                            let k = model.names.get_mut(name).expect("known");
                            k.run = run_no;
                            k.creating = Some(run_no);
                            model.events += 1;
                        }
                    }
                    (Some(k), Err(RegistryError::AlreadyAllocated { .. })) if k.status == Status::Allocated => {
                        let adoptable = k.run != run_no && k.creating.is_some_and(|c| c != run_no);
                        prop_assert!(k.allocation != values || (k.run != run_no && !adoptable), "step {step}: a claim this run may make was refused");
                        refused = true;
                    }
                    (_, Ok(e)) => {
                        prop_assert!(expected_free, "step {step}: claim of taken values {values} succeeded");
                        prop_assert_eq!(e.allocation, values);
                        prop_assert_eq!(e.status, Status::Allocated);
                        model.names.insert(name, Known { status: Status::Allocated, allocation: values, expires_at: None, run: run_no, first_run: run_no, pinned: vec![], reserved_at: now, taken_in_run: None, creating: Some(run_no) });
                        model.events += 1;
                    }
                    (_, Err(RegistryError::ClaimConflict { .. })) => {
                        prop_assert!(!expected_free, "step {step}: claim of free values {values} refused");
                        refused = true;
                    }
                    (_, Err(e)) => return Err(TestCaseError::fail(format!("step {step}: claim {name}: {e}"))),
                }
            }
            Op::Release(i) => {
                let name = NAMES[*i];
                let released = lab.registry.release(name).map_err(|e| TestCaseError::fail(e.to_string()))?;
                match (model.names.remove(name), released) {
                    (Some(k), Some(e)) => {
                        prop_assert_eq!(k.allocation, e.allocation);
                        model.events += 1;
                    }
                    (None, None) => refused = true,
                    (k, e) => return Err(TestCaseError::fail(format!("step {step}: release {name}: model {k:?}, registry {e:?}"))),
                }
            }
            Op::Drop(name, expired_only) => {
                let names: Vec<String> = name.iter().map(|i| NAMES[*i].to_string()).collect();
                let dropped = lab
                    .registry
                    .drop_reservations(&names, *expired_only)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                let expected: Vec<&str> = model
                    .names
                    .iter()
                    .filter(|(n, k)| {
                        k.status == Status::Reserved
                            && (names.is_empty() || names.iter().any(|x| x == **n))
                            && (!expired_only || !k.holds(now))
                    })
                    .map(|(n, _)| *n)
                    .collect();
                let got: Vec<&str> = dropped.iter().map(|e| e.name.as_str()).collect();
                prop_assert_eq!(&got, &expected, "step {}: dropped", step);
                for n in expected {
                    model.names.remove(n);
                }
                model.events += got.len();
                refused = got.is_empty();
            }
        }
        // After every step.
        let (doc, events) = lab.state();
        if refused {
            prop_assert_eq!(&(doc.clone(), events.clone()), &before, "step {}: {:?} wrote although it changed nothing", step, op);
        }
        let now = lab.registry.now();
        let overlaps = overlaps_among_holders(&doc, now);
        prop_assert!(overlaps.is_empty(), "step {step} ({op:?}): {overlaps:?}");
        let got: BTreeMap<&str, (Status, Allocation)> =
            doc.instances.values().map(|e| (e.name.as_str(), (e.status, e.allocation))).collect();
        let want: BTreeMap<&str, (Status, Allocation)> =
            model.names.iter().map(|(n, k)| (*n, (k.status, k.allocation))).collect();
        prop_assert_eq!(got, want, "step {} ({:?}): registry and model differ", step, op);
        prop_assert_eq!(events.len(), model.events, "step {}: one event per change", step);
        check_chain_grew(&before.1, &events, &doc).map_err(|e| TestCaseError::fail(format!("step {step} ({op:?}): {e}")))?;
    }
    // The store's own verification, once per case (it re-hashes the whole log).
    let verified = lab.registry.verify_events().map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(verified.events as usize, model.events);
    Ok(())
}

/// The hash chain verifies after a step, checked incrementally (hashing every line at every
/// step would dominate the run time): the events before the step are unchanged, each new one
/// follows its predecessor (seq + 1, `prev` = hash of the line before), and the document's
/// journal ends at the newest event.
fn check_chain_grew(old: &[Event], new: &[Event], doc: &Document) -> Result<(), String> {
    if new.len() < old.len() || new[..old.len()] != *old {
        return Err("events before the step changed".into());
    }
    let mut head = match old.last() {
        Some(e) => audit::Head { seq: e.seq, hash: audit::line_hash(&audit::encode(e)) },
        None => audit::Head { seq: 0, hash: audit::GENESIS.into() },
    };
    for e in &new[old.len()..] {
        if e.seq != head.seq + 1 || e.prev != head.hash {
            return Err(format!("event {} does not follow seq {} ({})", e.seq, head.seq, head.hash));
        }
        head = audit::Head { seq: e.seq, hash: audit::line_hash(&audit::encode(e)) };
    }
    if new.len() > old.len() && journal_head(doc) != Some(head) {
        return Err("the document's journal does not end at the newest event".into());
    }
    Ok(())
}

fn lab_on(store: Arc<dyn Store>) -> Lab {
    Lab::on(store, tiny_pools())
}

#[test]
fn random_operations_on_the_memory_store_keep_networks_disjoint_and_lose_nothing() {
    let mut runner = TestRunner::new(Config {
        cases: 160,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..50), |ops| {
            run(&mut lab_on(Arc::new(MemoryStore::new())), &ops)
        })
        .unwrap();
}

#[test]
fn random_operations_on_the_file_store_keep_networks_disjoint_and_lose_nothing() {
    let mut runner = TestRunner::new(Config {
        cases: 16,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(op(), 1..30), |ops| {
            let home = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
            run(&mut lab_on(Arc::new(FileStore::new(home.path()))), &ops)
        })
        .unwrap();
}

#[test]
fn random_operations_on_the_etcd_store_keep_networks_disjoint_and_lose_nothing() {
    use crate::registry::etcd::{EtcdConfig, EtcdStore};
    let endpoints = super::on_etcd::etcd_cluster::shared().endpoints();
    let mut runner = TestRunner::new(Config {
        cases: 16,
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicU32::new(0);
    runner
        .run(&prop::collection::vec(op(), 1..30), |ops| {
            let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let prefix = format!("/homelab-props-{}-{case}/", std::process::id());
            run(&mut lab_on(Arc::new(EtcdStore::new(EtcdConfig::new(endpoints.clone(), prefix)))), &ops)
        })
        .unwrap();
}

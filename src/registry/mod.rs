//! The instance registry (`<home>/instances.json`): which networks every instance holds, as
//! allocations or plan-time reservations, and the rules that keep them pairwise disjoint.
//!
//! - `model`: the data model and its file form ([`Document`], [`Entry`], [`Allocation`], …).
//! - `error`: [`RegistryError`] and the advice damaged registries get.
//! - `clock`: [`Clock`], the system clock and the manual one tests move.
//! - `store`: the [`Store`] trait every store implements, and how a change's events are chained
//!   into the document's journal.
//! - `format`: what a valid document is ([`parse_document`], [`validate_name`]).
//!
//! They are layered without loops: `model` at the bottom (with `clock` and [`owner`] beside
//! it), `error` and `format` on it, `store` on those, the stores and [`alloc`] above, and the
//! operations (this file, `reserve`, `federations`, [`interrupted`]) on top.
//! - [`alloc`]: the pure allocation rule (first free slot, conflicts, exhaustion).
//! - [`file`]: the file store (sidecar `fs2` lock, write to a temp file + fsync + rename, events
//!   written under the same lock).
//! - [`generations`]: the newest previous versions of the file (hard links made by each commit).
//! - [`repair`]: what `registry check` reports and `registry repair` does about a damaged file
//!   or event log.
//! - [`etcd`]: the etcd store (one registry for several lab hosts: transactions guarded by
//!   revision compares, reservations on leases).
//! - [`migrate`]: `registry migrate`, moving a file registry into the etcd store.
//! - [`memory`]: the in-memory twin with the same contract, for fast tests.
//! - [`owner`]: the workspace an entry belongs to and the run that reserved it.
//! - [`declared`]: what the workspace's configuration pins, written down by its validation.
//! - [`interrupted`]: creations not yet seen in their workspace's state (adopted by its next
//!   apply, removed by its destroys).
//! - [`Registry`]: the operations (claim, release, …) on top of any [`Store`], with `reserve`
//!   (plan-time reservations) and `federations` (federation records) in rooms of their own;
//!   each is one locked read-modify-write that records exactly one event per change.

pub mod alloc;
mod clock;
pub mod declared;
mod error;
pub mod etcd;
mod federations;
pub mod file;
mod format;
pub mod generations;
pub mod interrupted;
pub mod memory;
pub mod migrate;
mod model;
pub mod owner;
pub mod repair;
mod reserve;
mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{Actor, Client, Draft, Verified};
use crate::net::{Ipv4Net, Pool};

pub use alloc::{AllocError, Holder, Occupied};
pub use owner::{Origin, Workspace};

pub use clock::*;
pub use error::*;
pub use model::*;
pub use store::*;

pub use format::{parse_document, validate_name};

/// The registry operations, on any store.
pub struct Registry {
    store: Arc<dyn Store>,
    pools: Pools,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    actor: Actor,
    client: Client,
    origin: Origin,
    declared: Vec<declared::Pin>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("store", &self.store.location())
            .field("pools", &self.pools)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// [`occupied_by_others`], leaving out the networks `yields` says may be taken over.
fn occupied_except(
    doc: &Document,
    name: &str,
    now: OffsetDateTime,
    host: &[External],
    yields: impl Fn(&Entry, Kind, &Ipv4Net) -> bool,
) -> Vec<Occupied> {
    let mut out = Vec::new();
    for e in doc.instances.values() {
        if e.name == name || !e.holds(now) {
            continue;
        }
        let status = e.describe_status(now);
        for (kind, cidr) in e.allocation.iter() {
            if yields(e, kind, &cidr) {
                continue;
            }
            out.push(Occupied {
                cidr,
                holder: Holder::Instance {
                    name: e.name.clone(),
                    kind,
                    status: status.clone(),
                },
            });
        }
    }
    // A host network that is exactly a network of this name or of an entry that holds it is
    // that lab's own interface (a bridge, a vboxnet): the registry check above covers it. The
    // networks of an expired reservation are nobody's: a host network there stays in the way.
    let lab_nets: Vec<Ipv4Net> = if host.is_empty() {
        Vec::new()
    } else {
        doc.instances
            .values()
            .filter(|e| e.name == name || e.holds(now))
            .flat_map(|e| e.allocation.iter().map(|(_, n)| n))
            .collect()
    };
    for h in host {
        if lab_nets.contains(&h.cidr) {
            continue;
        }
        out.push(Occupied {
            cidr: h.cidr,
            holder: Holder::Host {
                source: h.source.clone(),
            },
        });
    }
    out
}

fn occupied_by_others(
    doc: &Document,
    name: &str,
    now: OffsetDateTime,
    host: &[External],
) -> Vec<Occupied> {
    occupied_except(doc, name, now, host, |_, _, _| false)
}

fn names_pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Registry {
    /// A registry on `store`.
    pub fn new(
        store: Arc<dyn Store>,
        pools: Pools,
        ttl: Duration,
        clock: Arc<dyn Clock>,
        actor: Actor,
        client: Client,
    ) -> Registry {
        Registry {
            store,
            pools,
            ttl,
            clock,
            actor,
            client,
            origin: Origin::current(),
            declared: Vec::new(),
        }
    }

    /// The same registry, knowing what this workspace's configuration pins (automatic choices
    /// step around those pins of the other instances).
    pub fn with_declared(mut self, pins: Vec<declared::Pin>) -> Registry {
        self.declared = pins;
        self
    }

    /// The same registry, planning and applying as `origin` (tests; the provider's own origin
    /// is its process's).
    pub fn with_origin(mut self, origin: Origin) -> Registry {
        self.origin = origin;
        self
    }

    /// Who plans and applies through this registry.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The pools.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The current time of the registry's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The whole document (shared lock).
    pub fn snapshot(&self) -> Result<Document, RegistryError> {
        self.store.load()
    }

    /// One entry, if present.
    pub fn get(&self, name: &str) -> Result<Option<Entry>, RegistryError> {
        Ok(self.store.load()?.instances.remove(name))
    }

    fn commit<T>(
        &self,
        mut change: impl FnMut(&mut Document, OffsetDateTime) -> Result<(T, Vec<Draft>), RegistryError>,
    ) -> Result<T, RegistryError> {
        let now = self.clock.now();
        let mut out = None;
        self.store.commit(
            &mut |doc| {
                let (value, drafts) = change(doc, now)?;
                out = Some(value);
                Ok(drafts)
            },
            now,
            &self.actor,
            &self.client,
        )?;
        Ok(out.expect("commit ran the change"))
    }

    /// What `name` has, or would get next, without writing anything.
    pub fn preview(&self, name: &str, wants: &Wants, host: &[External]) -> Result<Preview, RegistryError> {
        validate_name(name)?;
        let doc = self.store.load()?;
        let now = self.clock.now();
        if let Some(e) = doc.instances.get(name).filter(|e| e.holds(now)) {
            return Ok(Preview {
                status: e.status.as_str(),
                allocation: e.allocation,
                entry: Some(e.clone()),
            });
        }
        let occupied = occupied_by_others(&doc, name, now, host);
        // As `reserve` would: an expired reservation's values, else the released ones.
        let prefer = doc
            .instances
            .get(name)
            .map(|e| e.allocation)
            .or_else(|| doc.released.get(name).map(|r| r.allocation));
        let allocation = alloc::assign(&self.pools, wants, &occupied, prefer.as_ref()).map_err(
            |source| RegistryError::Alloc {
                name: name.into(),
                source,
            },
        )?;
        Ok(Preview {
            status: "free",
            allocation,
            entry: None,
        })
    }

    /// Apply time: turn the reservation into an allocation, only with exactly the planned
    /// networks and only while nobody else holds them. Repeating a successful claim with the
    /// same values succeeds (a retried apply).
    pub fn claim(
        &self,
        name: &str,
        allocation: &Allocation,
        backend: &str,
        lab: LabRecord,
        host: &[External],
    ) -> Result<Entry, RegistryError> {
        validate_name(name)?;
        let pools = self.pools;
        let origin = self.origin.clone();
        self.commit(|doc, now| {
            if let Some(e) = doc.instances.get(name) {
                if e.status == Status::Allocated {
                    // The same run claiming again (a retried call) gets what it has; anything
                    // else is another resource, or another configuration, using this name.
                    let same_run = e.run.as_ref() == Some(&origin.run);
                    if same_run && e.allocation == *allocation && e.backend == backend {
                        return Ok((e.clone(), vec![]));
                    }
                    // A creation of this workspace that was interrupted: this create adopts it
                    // (see interrupted).
                    let mine = e.owner.as_ref().is_none_or(|o| *o == origin.workspace);
                    // Also one a killed destroy was removing: this create repairs what it left.
                    let adoptable = e.interrupted(&origin.run);
                    if mine && adoptable && e.allocation == *allocation && e.backend == backend {
                        still_running(name, e.creating.as_ref())?;
                        let e = doc.instances.get_mut(name).expect("present");
                        let c = e.creating.as_mut().expect("interrupted: creating");
                        let draft = Draft::new(
                            "instance.adopt",
                            name,
                            json!({
                                "interrupted_since": rfc3339(c.since),
                                "run_before": c.run,
                                "answered_before": c.answered.map(rfc3339),
                                "allocation": allocation.details(),
                            }),
                        );
                        c.run = origin.run.clone();
                        c.process = origin.process.clone();
                        c.answered = None;
                        c.removing = false;
                        e.run = Some(origin.run.clone());
                        e.lab = Some(lab.clone());
                        return Ok((e.clone(), vec![draft]));
                    }
                    return Err(RegistryError::AlreadyAllocated {
                        name: name.into(),
                        allocation: e.allocation,
                        backend: e.backend.clone(),
                        created_at: rfc3339(e.created_at),
                        owner: e.owner.clone(),
                    });
                }
                if let Some(by) = e.owner.as_ref().filter(|o| e.holds(now) && **o != origin.workspace) {
                    return Err(RegistryError::ReservedElsewhere {
                        name: name.into(),
                        by: by.clone(),
                        until: e.reservation.as_ref().map(|r| rfc3339(r.expires_at)).unwrap_or_default(),
                    });
                }
            }
            let occupied = occupied_by_others(doc, name, now, host);
            alloc::assign(&pools, &Wants::pinned(allocation), &occupied, None).map_err(|source| {
                RegistryError::ClaimConflict {
                    name: name.into(),
                    source,
                }
            })?;
            let entry = Entry {
                name: name.into(),
                allocation: *allocation,
                backend: backend.into(),
                status: Status::Allocated,
                created_at: now,
                federated: vec![],
                reservation: None,
                lab: Some(lab.clone()),
                owner: Some(origin.workspace.clone()),
                run: Some(origin.run.clone()),
                creating: Some(Creating::begun(now, &origin)),
            };
            doc.instances.insert(name.into(), entry.clone());
            doc.released.remove(name);
            let draft = Draft::new(
                "instance.allocate",
                name,
                json!({"allocation": allocation.details(), "backend": backend, "lab": lab, "workspace": origin.workspace}),
            );
            Ok((entry, vec![draft]))
        })
    }

    /// An import: this workspace becomes the owner of the allocated instance `name` (an event
    /// names the previous owner). The entry as it is, or as it now is; `None` when absent.
    pub fn adopt(&self, name: &str) -> Result<Option<Entry>, RegistryError> {
        let origin = self.origin.clone();
        self.commit(|doc, _| {
            let Some(e) = doc.instances.get_mut(name) else {
                return Ok((None, vec![]));
            };
            if e.status != Status::Allocated || (e.owner.as_ref() == Some(&origin.workspace) && e.creating.is_none()) {
                return Ok((Some(e.clone()), vec![]));
            }
            let before = e.owner.replace(origin.workspace.clone());
            e.run = Some(origin.run.clone());
            // Imported: a state holds it now.
            e.creating = None;
            let draft = Draft::new("instance.import", name, json!({"owner_before": before, "owner": origin.workspace}));
            Ok((Some(e.clone()), vec![draft]))
        })
    }

    /// Record a new lab shape (workers added or removed).
    pub fn update_lab(&self, name: &str, lab: LabRecord) -> Result<Entry, RegistryError> {
        self.commit(|doc, _| {
            let e = doc
                .instances
                .get_mut(name)
                .ok_or_else(|| RegistryError::NotFound { name: name.into() })?;
            if e.status != Status::Allocated {
                return Err(RegistryError::NotAllocated { name: name.into() });
            }
            if e.lab.as_ref() == Some(&lab) {
                return Ok((e.clone(), vec![]));
            }
            let before = e.lab.clone();
            e.lab = Some(lab.clone());
            let draft = Draft::new("instance.update", name, json!({"before": before, "after": lab}));
            Ok((e.clone(), vec![draft]))
        })
    }

    /// Free everything `name` holds. Refused while it has federations. `Ok(None)` when the
    /// name is not in the registry (already released).
    pub fn release(&self, name: &str) -> Result<Option<Entry>, RegistryError> {
        self.commit(|doc, now| {
            let Some(e) = doc.instances.get(name).cloned() else {
                return Ok((None, vec![]));
            };
            if !e.federated.is_empty() {
                return Err(RegistryError::Federated {
                    name: name.into(),
                    peers: e.federated.join(", "),
                    federations: e
                        .federated
                        .iter()
                        .map(|p| {
                            let (a, b) = names_pair(name, p);
                            format!("{a}+{b}")
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            doc.instances.remove(name);
            if e.status == Status::Allocated {
                doc.released.insert(
                    name.into(),
                    Released {
                        allocation: e.allocation,
                        released_at: now,
                    },
                );
                while doc.released.len() > RELEASED_MEMORY {
                    let oldest = doc
                        .released
                        .iter()
                        .min_by_key(|(_, r)| r.released_at)
                        .map(|(n, _)| n.clone())
                        .expect("non-empty");
                    doc.released.remove(&oldest);
                }
            }
            let draft = Draft::new(
                "instance.release",
                name,
                json!({"allocation": e.allocation.details(), "was": e.status.as_str()}),
            );
            Ok((Some(e), vec![draft]))
        })
    }

    /// The lab of an allocated instance is gone (found by a refresh): its allocation becomes a
    /// reservation for `ttl`, so the re-create Terraform plans gets the same networks, and a
    /// destroy leaves nothing allocated for a lab that no longer exists. Federated instances
    /// keep their allocation (their federation must go first). Returns whether it changed.
    pub fn demote(&self, name: &str, why: &str) -> Result<bool, RegistryError> {
        let ttl = self.ttl;
        let actor = self.actor.clone();
        let run = self.origin.run.clone();
        self.commit(|doc, now| {
            let Some(e) = doc.instances.get_mut(name) else {
                return Ok((false, vec![]));
            };
            if e.status != Status::Allocated || !e.federated.is_empty() {
                return Ok((false, vec![]));
            }
            e.status = Status::Reserved;
            let expires_at = now + ttl;
            // Its values were the configuration's choice or not: unknown here, so they are
            // kept as if pinned (no other request takes them over before the re-create). It
            // was made by the run that created the lab, not this one: a failed plan of this
            // run does not drop it.
            e.reservation = Some(Reservation {
                reserved_at: now,
                by: actor.clone(),
                expires_at,
                first_run: e.run.clone(),
                pinned: Kind::ALL.to_vec(),
                taken: None,
            });
            e.run = Some(run.clone());
            let draft = Draft::new(
                "instance.lab_gone",
                name,
                json!({"allocation": e.allocation.details(), "why": why, "reserved_until": rfc3339(expires_at)}),
            );
            Ok((true, vec![draft]))
        })
    }

    /// Record an event that changes no instance (a federation's reason edited, …).
    pub fn record(&self, action: &str, subject: &str, details: serde_json::Value) -> Result<(), RegistryError> {
        self.commit(|_, _| Ok(((), vec![Draft::new(action, subject, details.clone())])))
    }

    /// Usage of every pool at `now`: slots overlapping a network held by an allocation or a
    /// live reservation, whatever its kind. Counted from the held networks (sorted slot-index
    /// intervals), never by scanning the slots: a pool may hold millions of them.
    pub fn usage(&self, doc: &Document) -> Vec<PoolUsage> {
        let now = self.clock.now();
        let held: Vec<Ipv4Net> = doc
            .instances
            .values()
            .filter(|e| e.holds(now))
            .flat_map(|e| e.allocation.iter().map(|(_, n)| n))
            .collect();
        self.pools
            .all()
            .into_iter()
            .map(|(kind, pool)| {
                let used = slots_covered(&pool, &held);
                PoolUsage {
                    kind,
                    cidr: pool.cidr,
                    prefix: pool.prefix,
                    capacity: pool.capacity(),
                    used,
                    free: pool.capacity() - used,
                }
            })
            .collect()
    }

    /// Verify the event log's hash chain against the registry.
    pub fn verify_events(&self) -> Result<Verified, RegistryError> {
        self.store.verify_events()
    }
}

/// How many slots of `pool` overlap at least one of `nets`.
fn slots_covered(pool: &Pool, nets: &[Ipv4Net]) -> u64 {
    let start = u64::from(u32::from(pool.cidr.network()));
    let end = u64::from(u32::from(pool.cidr.broadcast()));
    let size = 1u64 << (32 - u32::from(pool.prefix));
    let mut spans: Vec<(u64, u64)> = nets
        .iter()
        .filter(|n| crate::net::overlaps(n, &pool.cidr))
        .map(|n| {
            let lo = u64::from(u32::from(n.network())).max(start);
            let hi = u64::from(u32::from(n.broadcast())).min(end);
            ((lo - start) / size, (hi - start) / size)
        })
        .collect();
    spans.sort_unstable();
    let mut used = 0;
    let mut open: Option<(u64, u64)> = None;
    for (lo, hi) in spans {
        open = match open {
            Some((a, b)) if lo <= b + 1 => Some((a, b.max(hi))),
            Some((a, b)) => {
                used += b - a + 1;
                Some((lo, hi))
            }
            None => Some((lo, hi)),
        };
    }
    used + open.map_or(0, |(a, b)| b - a + 1)
}


/// Refuse to adopt a creation whose provider process still runs.
fn still_running(name: &str, c: Option<&Creating>) -> Result<(), RegistryError> {
    match c {
        Some(c) if c.running() == Some(true) => Err(RegistryError::StillCreating {
            name: name.into(),
            pid: c.pid().unwrap_or(0),
            since: rfc3339(c.since),
        }),
        _ => Ok(()),
    }
}


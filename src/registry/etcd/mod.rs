//! The etcd store: one registry shared by several lab hosts, on an etcd v3 cluster.
//!
//! Every lab host's provider reads and writes the same keys under one prefix (default
//! `/homelab/`):
//! - `<prefix>registry/instances/<name>`, `<prefix>registry/released/<name>`,
//!   `<prefix>registry/federations/<id>`: the document's entries, one JSON value each;
//! - `<prefix>registry/holds/<name>`: one key per live reservation, attached to an etcd
//!   **lease** whose TTL is the reservation's. When the lease ends, etcd deletes the key and
//!   the reservation counts as expired from then on (as a file registry's reservation past its
//!   time: it stays visible, so a saved plan applied later gets its values when they are still
//!   free, or `ReservationLost` naming who took them);
//! - `<prefix>registry/journal`: the chain head (format version, newest seq and hash, and the
//!   newest change's events);
//! - `<prefix>events/<seq, 20 digits>`: the audit log, one encoded event line per key.
//!
//! A change reads a snapshot (one revision), runs on it, and writes what it changed in **one
//! transaction** guarded by compares: the journal key's `mod_revision` (or its absence, by
//! `create_revision == 0`, for the very first change) and the `mod_revision` of every key it
//! overwrites or deletes (absence for every key it creates). Every change rewrites the journal,
//! so two changes never both commit on the same snapshot: the loser reads again and re-runs
//! (the registry's operations are written to be re-run: a retried claim gets what it has). The
//! events are put in the same transaction, so the log stays one linear hash chain however many
//! hosts write, and nothing is ever half-written: a transaction commits whole or not at all. No
//! client-side lock exists; etcd's own serialisation is the only one.
//!
//! Reads are cheap: the store keeps the newest snapshot it read or wrote, and a read first asks,
//! in one transaction, for the journal key, the holds, the entry keys written since the kept
//! snapshot and how many entries of each kind there are. When the journal's `mod_revision` is the
//! one kept, the kept entries are still exact (every change rewrites the journal); when it moved,
//! the keys written since are put in, and a kind with fewer entries than kept has its keys listed
//! to drop the deleted ones. The whole registry is read only by a store that holds nothing yet.
//!
//! The client is `etcd-client` (async, tonic); the store runs it on a small runtime of its own
//! and waits for each request, so the [`Store`] trait stays synchronous and the store can be
//! called from inside the provider's own runtime.
//!
//! Rooms: `config` (how the cluster is reached), `error` (what can go wrong), `client` (the
//! runtime, one client per member, failover and paged reads), `snapshot` (the read path and
//! the kept snapshot); this file has the store, the write path and the [`Store`] contract.
//! `config` and `error` stand alone; `client` and `snapshot` add methods to the store defined
//! here (`snapshot` reads through `client`'s requests), and this file writes through both.

mod client;
mod config;
mod error;
mod snapshot;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use serde::Serialize;
use time::OffsetDateTime;

use crate::audit::{self, Actor, Client as AuditClient, Event, Head, Verified};

use super::{journal, journal_head, Change, Document, RegistryError, Status, Store, FORMAT_VERSION};

pub use config::{EtcdConfig, DEFAULT_PREFIX};
pub use error::{EtcdError, MAX_TXN_OPS};
use client::{words, Inner};
use snapshot::{HoldValue, JournalValue, Snapshot};

/// A change's transaction: its compares and operations, the leases granted for it, and the
/// leases it leaves without keys.
type WriteSet = (Vec<Compare>, Vec<TxnOp>, Vec<i64>, Vec<i64>);

/// How many times a change is tried again after losing to another writer.
const ATTEMPTS: u32 = 200;

/// The etcd store.
pub struct EtcdStore {
    config: EtcdConfig,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    inner: Mutex<Option<Arc<Inner>>>,
    cache: Mutex<Option<Arc<Snapshot>>>,
    endpoints: String,
    /// Set when a request found no member within its budget.
    gave_up: AtomicBool,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("location", &self.location()).finish()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // The store may be dropped inside another runtime, where a blocking shutdown panics.
        if let Some(rt) = self.runtime.lock().map(|mut g| g.take()).unwrap_or(None) {
            rt.shutdown_background();
        }
    }
}

/// The keys of one prefix.
struct Keys<'a>(&'a str);

impl Keys<'_> {
    fn registry(&self) -> String {
        format!("{}registry/", self.0)
    }
    fn instance(&self, name: &str) -> String {
        format!("{}registry/instances/{name}", self.0)
    }
    fn released(&self, name: &str) -> String {
        format!("{}registry/released/{name}", self.0)
    }
    fn federation(&self, id: &str) -> String {
        format!("{}registry/federations/{id}", self.0)
    }
    fn holds(&self) -> String {
        format!("{}registry/holds/", self.0)
    }
    fn hold(&self, name: &str) -> String {
        format!("{}registry/holds/{name}", self.0)
    }
    fn journal(&self) -> String {
        format!("{}registry/journal", self.0)
    }
    fn events(&self) -> String {
        format!("{}events/", self.0)
    }
    fn event(&self, seq: u64) -> String {
        format!("{}events/{seq:020}", self.0)
    }
}

impl EtcdStore {
    /// A store on `config` (nothing is contacted before the first read).
    pub fn new(config: EtcdConfig) -> EtcdStore {
        let endpoints = config.endpoints.join(",");
        EtcdStore {
            config,
            runtime: Mutex::new(None),
            inner: Mutex::new(None),
            cache: Mutex::new(None),
            endpoints,
            gave_up: AtomicBool::new(false),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    fn keys(&self) -> Keys<'_> {
        Keys(&self.config.prefix)
    }

    /// Grant a lease of `ttl` seconds.
    fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let resp = self.request("granting a lease for a reservation", move |mut c| async move { c.lease_grant(ttl, None).await })?;
        Ok(resp.id())
    }

    /// Revoke leases, in the background (best effort: one left unrevoked, because the process
    /// ended first, holds no key any more and ends by itself at its TTL).
    fn revoke(&self, leases: Vec<i64>) {
        if leases.is_empty() {
            return;
        }
        let Ok(inner) = self.inner() else { return };
        let guard = self.runtime.lock().expect("etcd runtime lock");
        let Some(rt) = guard.as_ref() else { return };
        rt.spawn(async move {
            let at = inner.current.load(Ordering::Relaxed);
            let Ok(mut c) = EtcdStore::client(&inner, at).await else { return };
            for id in leases {
                if let Err(e) = c.lease_revoke(id).await {
                    if !words(&e).contains("lease not found") {
                        tracing::debug!(error = %e, lease = id, "revoking a lease (it ends by itself)");
                    }
                }
            }
        });
    }

    /// Whether the newest of `events` is in the log, exactly (its seq's key holds its line): a
    /// transaction re-sent after its answer was lost finds its own commit in the way. Events
    /// carry their time, actor and process, so no other change writes the same line.
    fn landed(&self, events: &[Event]) -> bool {
        let Some(last) = events.last() else { return false };
        let key = self.keys().event(last.seq);
        let line = audit::encode(last);
        match self.request("reading the registry", move |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        }) {
            Ok(resp) => resp.kvs().first().is_some_and(|kv| kv.value() == line.as_slice()),
            Err(_) => false,
        }
    }

    /// Keep, as the snapshot at journal revision `rev`, `snap` with what the change just
    /// committed (the entries of `working` that differ from `base`, and its journal): the next
    /// read of this store then needs no range read.
    fn keep_written(&self, snap: Arc<Snapshot>, base: &Document, working: &Document, rev: i64) {
        let mut cache = self.cache.lock().expect("etcd cache");
        *cache = None;
        if rev == 0 {
            return;
        }
        let mut next = Arc::unwrap_or_clone(snap);
        let keys = self.keys();
        for (name, e) in working.instances.iter().filter(|(k, e)| base.instances.get(*k) != Some(*e)) {
            next.doc.instances.insert(name.clone(), e.clone());
            next.revs.insert(keys.instance(name), rev);
        }
        for name in base.instances.keys().filter(|k| !working.instances.contains_key(*k)) {
            next.doc.instances.remove(name);
            next.revs.remove(&keys.instance(name));
        }
        for (name, r) in working.released.iter().filter(|(k, r)| base.released.get(*k) != Some(*r)) {
            next.doc.released.insert(name.clone(), r.clone());
            next.revs.insert(keys.released(name), rev);
        }
        for name in base.released.keys().filter(|k| !working.released.contains_key(*k)) {
            next.doc.released.remove(name);
            next.revs.remove(&keys.released(name));
        }
        for (id, f) in working.federations.iter().filter(|(k, f)| base.federations.get(*k) != Some(*f)) {
            next.doc.federations.insert(id.clone(), f.clone());
            next.revs.insert(keys.federation(id), rev);
        }
        for id in base.federations.keys().filter(|k| !working.federations.contains_key(*k)) {
            next.doc.federations.remove(id);
            next.revs.remove(&keys.federation(id));
        }
        next.doc.journal = working.journal.clone();
        next.journal_rev = rev;
        *cache = Some(Arc::new(next));
    }

    /// Write `working` (changed from `snap`) with `events`: the transaction's compares and
    /// operations, and the leases it grants and the ones it makes unused.
    fn write_set(
        &self,
        snap: &Snapshot,
        base: &Document,
        holds: &[KeyValue],
        working: &Document,
        events: &[Event],
        now: OffsetDateTime,
    ) -> Result<WriteSet, EtcdError> {
        let keys = self.keys();
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        let mut granted = Vec::new();
        let mut unused = Vec::new();
        let put = |key: String, value: Vec<u8>, compares: &mut Vec<Compare>, ops: &mut Vec<TxnOp>| {
            match snap.revs.get(&key) {
                Some(rev) => compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)),
                None => compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0)),
            }
            ops.push(TxnOp::put(key, value, None));
        };
        // Instances, released, federations: put what changed (compared as values; only those
        // are serialised), delete what went.
        for (name, e) in working.instances.iter().filter(|(k, e)| base.instances.get(*k) != Some(*e)) {
            put(keys.instance(name), enc(e), &mut compares, &mut ops);
        }
        for (name, r) in working.released.iter().filter(|(k, r)| base.released.get(*k) != Some(*r)) {
            put(keys.released(name), enc(r), &mut compares, &mut ops);
        }
        for (id, f) in working.federations.iter().filter(|(k, f)| base.federations.get(*k) != Some(*f)) {
            put(keys.federation(id), enc(f), &mut compares, &mut ops);
        }
        let gone = base
            .instances
            .keys()
            .filter(|k| !working.instances.contains_key(*k))
            .map(|k| keys.instance(k))
            .chain(base.released.keys().filter(|k| !working.released.contains_key(*k)).map(|k| keys.released(k)))
            .chain(base.federations.keys().filter(|k| !working.federations.contains_key(*k)).map(|k| keys.federation(k)));
        for key in gone {
            if let Some(rev) = snap.revs.get(&key) {
                compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev));
            }
            ops.push(TxnOp::delete(key, None));
        }
        // Holds: one per live reservation, on a lease of its remaining time.
        let prefix = keys.holds();
        let held: HashMap<String, (i64, Option<HoldValue>)> = holds
            .iter()
            .filter_map(|kv| {
                let name = kv.key_str().ok()?.strip_prefix(prefix.as_str())?.to_string();
                Some((name, (kv.lease(), serde_json::from_slice(kv.value()).ok())))
            })
            .collect();
        for e in working.instances.values() {
            let want = (e.status == Status::Reserved)
                .then_some(e.reservation.as_ref())
                .flatten()
                .filter(|r| r.taken.is_none() && r.expires_at > now)
                .map(|r| HoldValue { expires_at: r.expires_at });
            let have = held.get(&e.name);
            match (&want, have) {
                (Some(w), Some((_, Some(h)))) if w == h => {}
                (Some(w), _) => {
                    let ttl = ((w.expires_at - now).whole_milliseconds() as f64 / 1000.0).ceil().max(1.0) as i64;
                    let lease = self.grant(ttl)?;
                    granted.push(lease);
                    let value = serde_json::to_vec(w).expect("hold");
                    ops.push(TxnOp::put(keys.hold(&e.name), value, Some(PutOptions::new().with_lease(lease))));
                    if let Some((old, _)) = have {
                        if *old != 0 {
                            unused.push(*old);
                        }
                    }
                }
                (None, Some((old, _))) => {
                    ops.push(TxnOp::delete(keys.hold(&e.name), None));
                    if *old != 0 {
                        unused.push(*old);
                    }
                }
                (None, None) => {}
            }
        }
        for (name, (old, _)) in &held {
            if !working.instances.contains_key(name) {
                ops.push(TxnOp::delete(keys.hold(name), None));
                if *old != 0 {
                    unused.push(*old);
                }
            }
        }
        // The chain head, guarded: changes commit one after another.
        compares.push(if snap.journal_rev > 0 {
            Compare::mod_revision(keys.journal(), CompareOp::Equal, snap.journal_rev)
        } else {
            Compare::create_revision(keys.journal(), CompareOp::Equal, 0)
        });
        let head = JournalValue {
            version: FORMAT_VERSION,
            journal: working.journal.clone(),
        };
        ops.push(TxnOp::put(keys.journal(), serde_json::to_vec(&head).expect("journal"), None));
        for ev in events {
            ops.push(TxnOp::put(keys.event(ev.seq), audit::encode(ev), None));
        }
        Ok((compares, ops, granted, unused))
    }
}

/// A random pause before attempt `attempt + 1` of a change that lost to another writer: up to
/// 1, 2, 4, … 64 ms.
fn backoff(attempt: u32) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mix = (u64::from(nanos) ^ u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let cap_us = 1000u64 << attempt.min(6);
    Duration::from_micros((mix >> 11) % cap_us)
}

/// The stored form of an entry, a released record or a federation record.
fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("registry values serialise")
}

impl Store for EtcdStore {
    fn location(&self) -> String {
        format!("etcd registry {}", self.config.url())
    }

    fn load(&self) -> Result<Document, RegistryError> {
        let (snap, holds) = self.snapshot()?;
        Ok(self.with_holds(Arc::unwrap_or_clone(snap).doc, &holds))
    }

    fn commit(&self, change: &mut Change<'_>, now: OffsetDateTime, actor: &Actor, client: &AuditClient) -> Result<(), RegistryError> {
        for attempt in 0..ATTEMPTS {
            let (snap, holds) = self.snapshot()?;
            let base = self.with_holds(snap.doc.clone(), &holds);
            let mut working = base.clone();
            let drafts = change(&mut working)?;
            if drafts.is_empty() {
                return Ok(());
            }
            let head = journal_head(&snap.doc).unwrap_or(Head {
                seq: 0,
                hash: audit::GENESIS.into(),
            });
            let events = journal(&mut working, &head, &drafts, now, actor, client);
            let (compares, ops, granted, unused) = self.write_set(&snap, &base, &holds, &working, &events, now)?;
            if ops.len() > MAX_TXN_OPS || compares.len() > MAX_TXN_OPS {
                self.revoke(granted);
                return Err(EtcdError::TooLarge {
                    endpoints: self.endpoints.clone(),
                    ops: ops.len().max(compares.len()),
                    limit: MAX_TXN_OPS,
                }
                .into());
            }
            let txn = Txn::new().when(compares).and_then(ops);
            let outcome = self.request("writing the registry", move |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            });
            match outcome {
                Ok(resp) if resp.succeeded() => {
                    self.revoke(unused);
                    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                    self.keep_written(snap, &base, &working, rev);
                    return Ok(());
                }
                Ok(_) | Err(_) if self.landed(&events) => {
                    // A try whose answer was lost (a member died under it) committed, and the
                    // next try lost to it: this change is in, with its leases.
                    self.revoke(unused);
                    *self.cache.lock().expect("etcd cache") = None;
                    return Ok(());
                }
                Ok(_) => {
                    // Another host committed first: read again (what changed) and run again,
                    // after a random pause that grows with the attempts.
                    self.revoke(granted);
                    drop(snap);
                    std::thread::sleep(backoff(attempt));
                }
                Err(e) => {
                    self.revoke(granted);
                    *self.cache.lock().expect("etcd cache") = None;
                    return Err(e.into());
                }
            }
        }
        Err(EtcdError::Contention {
            endpoints: self.endpoints.clone(),
            attempts: ATTEMPTS,
        }
        .into())
    }

    fn events(&self) -> Result<Vec<Event>, RegistryError> {
        let kvs = self.range(self.keys().events(), 0)?;
        kvs.iter()
            .map(|kv| serde_json::from_slice(kv.value()).map_err(|e| self.corrupt(kv.key(), e).into()))
            .collect()
    }

    fn verify_events(&self) -> Result<Verified, RegistryError> {
        // The journal first, then the log at that same revision.
        let heads = self.heads(None)?;
        let (rev, journal) = (heads.rev, heads.journal);
        let head = match &journal {
            Some(kv) => {
                let v: JournalValue = serde_json::from_slice(kv.value()).map_err(|e| self.corrupt(kv.key(), e))?;
                journal_head(&Document {
                    journal: v.journal,
                    ..Document::default()
                })
            }
            None => None,
        };
        let kvs = self.range(self.keys().events(), rev)?;
        let mut lines = Vec::new();
        for kv in &kvs {
            lines.extend_from_slice(kv.value());
            lines.push(b'\n');
        }
        let name = PathBuf::from(format!("{}events", self.config.url()));
        Ok(audit::verify_from(&lines[..], &name, head.as_ref())?)
    }
}

//! Reading the registry: the snapshot a change runs on (the entries with each key's
//! `mod_revision`), kept between reads and brought up to date by reading only what other writers
//! wrote, and the holds (live reservations) applied to it.

use std::collections::HashMap;
use std::sync::Arc;

use etcd_client::{GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::registry::format::check_document;
use crate::registry::{Document, Journal, RegistryError, Status, FORMAT_VERSION};

use super::error::EtcdError;
use super::EtcdStore;

/// The newest snapshot read: the entries, with the `mod_revision` of each key, as of the
/// journal's `mod_revision`.
#[derive(Clone, Default)]
pub(super) struct Snapshot {
    /// `mod_revision` of the journal key (0: no journal yet).
    pub(super) journal_rev: i64,
    /// The document (holds not yet applied).
    pub(super) doc: Document,
    /// `mod_revision` of every entry key (instances, released, federations).
    pub(super) revs: HashMap<String, i64>,
}

/// What [`EtcdStore::heads`] read.
pub(super) struct Heads {
    /// The revision of the read.
    pub(super) rev: i64,
    /// The journal key.
    pub(super) journal: Option<KeyValue>,
    /// The hold keys.
    pub(super) holds: Vec<KeyValue>,
    /// Keys written since the kept snapshot (when one is kept).
    pub(super) changed: Option<Vec<KeyValue>>,
    /// Entries of each kind (instances, released, federations), when a snapshot is kept.
    pub(super) counts: Vec<i64>,
}

/// The journal key's value.
#[derive(Serialize, Deserialize)]
pub(super) struct JournalValue {
    pub(super) version: u32,
    #[serde(flatten)]
    pub(super) journal: Journal,
}

/// A hold key's value: which reservation it keeps alive.
#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Debug)]
pub(super) struct HoldValue {
    /// The reservation's expiry, as recorded (rfc3339).
    #[serde(with = "time::serde::rfc3339")]
    pub(super) expires_at: OffsetDateTime,
}

impl EtcdStore {
    /// In one transaction (one revision): the journal key, the holds, and, when a snapshot
    /// taken at journal revision `since` is kept, every entry key written since then and the
    /// number of entries of each kind (to tell which were deleted).
    pub(super) fn heads(&self, since: Option<i64>) -> Result<Heads, EtcdError> {
        let keys = self.keys();
        let (journal, holds, registry) = (keys.journal(), keys.holds(), keys.registry());
        let kinds = [keys.instance(""), keys.released(""), keys.federation("")];
        let resp = self.request("reading the registry", move |mut c| {
            let mut ops = vec![
                TxnOp::get(journal.clone(), None),
                TxnOp::get(holds.clone(), Some(GetOptions::new().with_prefix())),
            ];
            if let Some(rev) = since {
                ops.push(TxnOp::get(registry.clone(), Some(GetOptions::new().with_prefix().with_min_mod_revision(rev + 1))));
                for k in &kinds {
                    ops.push(TxnOp::get(k.clone(), Some(GetOptions::new().with_prefix().with_count_only())));
                }
            }
            let txn = Txn::new().and_then(ops);
            async move { c.txn(txn).await }
        })?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut gets = resp.op_responses().into_iter().filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g),
            _ => None,
        });
        let journal = gets.next().and_then(|g| g.kvs().first().cloned());
        let holds = gets.next().map(|g| g.kvs().to_vec()).unwrap_or_default();
        let changed = since.and_then(|_| gets.next()).map(|g| g.kvs().to_vec());
        let counts: Vec<i64> = gets.map(|g| g.count()).collect();
        Ok(Heads {
            rev,
            journal,
            holds,
            changed,
            counts,
        })
    }

    pub(super) fn corrupt(&self, key: &[u8], why: impl std::fmt::Display) -> EtcdError {
        EtcdError::Corrupt {
            endpoints: self.endpoints.clone(),
            key: String::from_utf8_lossy(key).into_owned(),
            why: why.to_string(),
        }
    }

    /// The snapshot of the registry (without holds applied), and the holds of that read. The
    /// kept snapshot is used when the journal did not move; when it moved, only the entries
    /// written since are read (and, when some kind has fewer entries than kept, that kind's keys,
    /// to drop the deleted ones); the whole registry is read only when nothing is kept.
    pub(super) fn snapshot(&self) -> Result<(Arc<Snapshot>, Vec<KeyValue>), RegistryError> {
        let kept = self.cache.lock().expect("etcd cache").clone();
        let since = kept.as_ref().map(|k| k.journal_rev).filter(|r| *r > 0);
        let heads = self.heads(since)?;
        let journal_rev = heads.journal.as_ref().map(|kv| kv.mod_revision()).unwrap_or(0);
        let snap = match (kept, heads.changed) {
            (Some(kept), _) if kept.journal_rev == journal_rev && journal_rev > 0 => return Ok((kept, heads.holds)),
            (Some(kept), Some(changed)) if journal_rev > 0 => self.refresh(kept, &changed, &heads.counts, heads.rev)?,
            _ => {
                let kvs = self.range(self.keys().registry(), heads.rev)?;
                self.parse(&kvs)?
            }
        };
        if snap.journal_rev != journal_rev {
            // Cannot happen (all read at one revision); refuse rather than trust a mix.
            return Err(EtcdError::Request {
                endpoints: self.endpoints.clone(),
                what: "reading the registry",
                why: "the journal moved within one revision".into(),
            }
            .into());
        }
        let snap = Arc::new(snap);
        *self.cache.lock().expect("etcd cache") = Some(snap.clone());
        Ok((snap, heads.holds))
    }

    /// `kept` brought up to `rev`: the entry keys in `changed` (written since `kept`) put in,
    /// and, for each kind whose count in `counts` is below what is then held, the keys listed at
    /// `rev` to drop the ones deleted.
    pub(super) fn refresh(&self, kept: Arc<Snapshot>, changed: &[KeyValue], counts: &[i64], rev: i64) -> Result<Snapshot, EtcdError> {
        let mut snap = Arc::unwrap_or_clone(kept);
        let mut fresh = self.parse(changed)?;
        // `parse` checked what it read; the journal is always among the changed keys.
        snap.journal_rev = fresh.journal_rev;
        snap.doc.journal = std::mem::take(&mut fresh.doc.journal);
        snap.doc.instances.append(&mut fresh.doc.instances);
        snap.doc.released.append(&mut fresh.doc.released);
        snap.doc.federations.append(&mut fresh.doc.federations);
        snap.revs.extend(fresh.revs);
        let keys = self.keys();
        let lens = [snap.doc.instances.len(), snap.doc.released.len(), snap.doc.federations.len()];
        for (i, prefix) in [keys.instance(""), keys.released(""), keys.federation("")].into_iter().enumerate() {
            let want = counts.get(i).copied().unwrap_or(-1);
            if want == lens[i] as i64 {
                continue;
            }
            let listed: std::collections::HashSet<Vec<u8>> = self.range_keys(prefix.clone(), rev)?.into_iter().collect();
            let gone: Vec<String> = match i {
                0 => snap.doc.instances.keys().filter(|n| !listed.contains(keys.instance(n).as_bytes())).cloned().collect(),
                1 => snap.doc.released.keys().filter(|n| !listed.contains(keys.released(n).as_bytes())).cloned().collect(),
                _ => snap.doc.federations.keys().filter(|n| !listed.contains(keys.federation(n).as_bytes())).cloned().collect(),
            };
            for name in gone {
                let key = match i {
                    0 => {
                        snap.doc.instances.remove(&name);
                        keys.instance(&name)
                    }
                    1 => {
                        snap.doc.released.remove(&name);
                        keys.released(&name)
                    }
                    _ => {
                        snap.doc.federations.remove(&name);
                        keys.federation(&name)
                    }
                };
                snap.revs.remove(&key);
            }
        }
        check_document(&snap.doc).map_err(|why| self.corrupt(keys.registry().as_bytes(), why))?;
        Ok(snap)
    }

    /// The document the keys `kvs` (the whole `registry/` range) hold.
    pub(super) fn parse(&self, kvs: &[KeyValue]) -> Result<Snapshot, EtcdError> {
        let keys = self.keys();
        let (inst, rel, fed, journal) = (
            keys.instance(""),
            keys.released(""),
            keys.federation(""),
            keys.journal(),
        );
        let mut snap = Snapshot::default();
        for kv in kvs {
            let key = kv.key_str().map_err(|e| self.corrupt(kv.key(), e))?;
            let value = kv.value();
            macro_rules! json {
                () => {
                    serde_json::from_slice(value).map_err(|e| self.corrupt(kv.key(), e))?
                };
            }
            if let Some(name) = key.strip_prefix(&inst) {
                snap.doc.instances.insert(name.to_string(), json!());
            } else if let Some(name) = key.strip_prefix(&rel) {
                snap.doc.released.insert(name.to_string(), json!());
            } else if let Some(id) = key.strip_prefix(&fed) {
                snap.doc.federations.insert(id.to_string(), json!());
            } else if key == journal {
                let v: JournalValue = json!();
                if v.version != FORMAT_VERSION {
                    return Err(EtcdError::UnknownVersion {
                        endpoints: self.endpoints.clone(),
                        found: v.version,
                    });
                }
                snap.doc.journal = v.journal;
                snap.journal_rev = kv.mod_revision();
                continue;
            } else {
                // Holds, and keys of a newer provider this one does not know.
                continue;
            }
            snap.revs.insert(key.to_string(), kv.mod_revision());
        }
        check_document(&snap.doc).map_err(|why| self.corrupt(keys.registry().as_bytes(), why))?;
        Ok(snap)
    }

    /// `doc` with the holds applied: a reservation whose hold key is gone (its lease ended)
    /// counts as expired (at its recorded time, or now when that is later than now).
    pub(super) fn with_holds(&self, mut doc: Document, holds: &[KeyValue]) -> Document {
        let prefix = self.keys().holds();
        let held: HashMap<&str, Option<HoldValue>> = holds
            .iter()
            .filter_map(|kv| {
                let name = kv.key_str().ok()?.strip_prefix(prefix.as_str())?;
                Some((name, serde_json::from_slice(kv.value()).ok()))
            })
            .collect();
        let now = OffsetDateTime::now_utc();
        for e in doc.instances.values_mut() {
            if e.status != Status::Reserved {
                continue;
            }
            let Some(r) = e.reservation.as_mut() else { continue };
            let alive = held.get(e.name.as_str()).is_some_and(|h| h.as_ref().is_none_or(|h| h.expires_at == r.expires_at));
            if !alive && r.expires_at > now {
                r.expires_at = now;
            }
        }
        doc
    }
}

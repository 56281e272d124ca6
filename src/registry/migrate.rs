//! `registry migrate`: move a file registry into another store (the etcd store), in one change
//! of the target, refused whole when the target holds anything the source collides with.
//!
//! The target may already hold other hosts' instances: the source's entries join them when no
//! name is taken and no network overlaps (an entry the target already holds exactly, from an
//! earlier migrate of this same folder, is left as it is, so a migrate cut short runs again).
//! The move is one `registry.migrate` event in the target's log, naming the source folder, the
//! head of its own log (seq and hash, so its history stays provable) and what moved. Afterwards
//! the folder records where the registry went, and every provider or command that still opens
//! the folder's registry is told so ([`RegistryError::Moved`]).

use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{Actor, Client, Draft};
use crate::net::overlaps;

use super::file::FileStore;
use super::{journal_head, Document, RegistryError, Store};

/// What a migrate did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Instances written to the target.
    pub instances: Vec<String>,
    /// Federations written to the target.
    pub federations: Vec<String>,
    /// Entries the target already held exactly (an earlier, cut-short migrate).
    pub already: Vec<String>,
}

/// Every collision between the source's entries and the target's, in words (empty: none).
fn conflicts(source: &Document, target: &Document, now: OffsetDateTime) -> Vec<String> {
    let mut out = Vec::new();
    for (name, e) in &source.instances {
        if let Some(t) = target.instances.get(name) {
            if t != e {
                out.push(format!("the target already holds an instance named `{name}` ({})", t.allocation));
            }
            continue;
        }
        if !e.holds(now) {
            continue;
        }
        for t in target.instances.values().filter(|t| t.holds(now)) {
            for (kind, mine) in e.allocation.iter() {
                for (tkind, theirs) in t.allocation.iter() {
                    if overlaps(&mine, &theirs) {
                        out.push(format!(
                            "`{name}`'s {} {mine} overlaps the {} {theirs} of `{}` in the target",
                            kind.attribute(),
                            tkind.attribute(),
                            t.name
                        ));
                    }
                }
            }
        }
    }
    for (id, f) in &source.federations {
        if target.federations.get(id).is_some_and(|t| t != f) {
            out.push(format!("the target already holds federation {id}, declared otherwise"));
        }
    }
    out
}

/// Move the registry of `from` into `to` (named `to_url` in events and messages).
pub fn migrate(from: &FileStore, to: &dyn Store, to_url: &str, now: OffsetDateTime, actor: &Actor, client: &Client) -> Result<Migrated, RegistryError> {
    let source = from.load()?;
    let verified = from.verify_events()?;
    let head = journal_head(&source);
    let mut done = Migrated::default();
    to.commit(
        &mut |target: &mut Document| {
            done = Migrated::default();
            let found = conflicts(&source, target, now);
            if !found.is_empty() {
                return Err(RegistryError::MigrateConflict {
                    to: to_url.to_string(),
                    conflicts: found,
                });
            }
            for (name, e) in &source.instances {
                if target.instances.get(name) == Some(e) {
                    done.already.push(name.clone());
                } else {
                    target.instances.insert(name.clone(), e.clone());
                    done.instances.push(name.clone());
                }
            }
            for (id, f) in &source.federations {
                if target.federations.get(id) == Some(f) {
                    done.already.push(format!("federation {id}"));
                } else {
                    target.federations.insert(id.clone(), f.clone());
                    done.federations.push(id.clone());
                }
            }
            for (name, r) in &source.released {
                target.released.entry(name.clone()).or_insert_with(|| r.clone());
            }
            if done.instances.is_empty() && done.federations.is_empty() {
                return Ok(vec![]);
            }
            Ok(vec![Draft::new(
                "registry.migrate",
                to_url,
                json!({
                    "from": from.home().display().to_string(),
                    "source_log": {"events": verified.events, "head": head.as_ref().map(|h| json!({"seq": h.seq, "hash": h.hash}))},
                    "instances": done.instances,
                    "federations": done.federations,
                }),
            )])
        },
        now,
        actor,
        client,
    )?;
    from.mark_moved(to_url)?;
    Ok(done)
}

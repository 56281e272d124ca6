//! What is wrong with a registry home, and the way back: [`diagnose`] (for `registry check`,
//! read-only) and [`repair`] (for `registry repair`).
//!
//! A home has three witnesses: the document (`instances.json`), the hash-chained event log
//! (`events.jsonl`) and the generations (the documents of the newest commits, see
//! [`super::generations`]). A generation is *consistent* with the log when the log ends exactly
//! at its change (or lacks only its own journal's events). Repair rebuilds the registry on the
//! newest consistent generation, or on the document when it is the better witness, and never
//! drops an entry it cannot prove gone:
//!
//! - unparseable, truncated or missing document: the newest consistent generation;
//! - edited by hand (differs from the generation of its own change): that generation, plus
//!   every entry the hand added (kept and reported); changed entries get the generation's
//!   version back, the hand's version is recorded in the repair event;
//! - an older copy restored (the log goes on past it): the newest consistent generation, plus
//!   the copy's entries the log never touched after it; without such a generation the copy
//!   itself, and the instances the log shows changed after it are listed for a refresh;
//! - a missing, broken or short event log: a new chain whose first event is the repair,
//!   recording the old head it could not verify; the old log and generations are set aside.
//!
//! Every repair records one `registry.repair` event, keeps the damaged file beside the new one
//! (`instances.json.damaged-<time>`), and re-links the document to the log so that the next
//! commit succeeds.
//!
//! Rooms: `diagnose` (what is wrong, read-only), `plan` (what to do about it, pure), and here
//! the repair itself (writing the rebuilt registry, setting the damaged files aside).

mod diagnose;
mod plan;

pub use diagnose::*;
pub use plan::*;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;
use thiserror::Error;
use time::OffsetDateTime;

use crate::audit::{self, Actor, Client, Draft, Event, Head};
use crate::registry::file::FileStore;
use crate::registry::generations;
use crate::registry::RegistryError;

use diagnose::look;

/// A registry home that [`repair`] cannot bring back, or a repair that failed.
#[derive(Debug, Error)]
pub enum RepairError {
    /// Nothing to rebuild from, or a state repair must not touch.
    #[error("{home}: cannot repair: {why}")]
    Unrepairable {
        /// The home.
        home: PathBuf,
        /// Why, and what to do instead.
        why: String,
    },
    /// Reading or writing the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// What [`repair`] did.
#[derive(Debug, Clone)]
pub struct Repaired {
    /// What was wrong.
    pub diagnosis: Diagnosis,
    /// What was done (`None`: nothing was wrong, nothing was written).
    pub plan: Option<Plan>,
    /// The `registry.repair` event.
    pub event: Option<Event>,
    /// Where the damaged document was kept.
    pub damaged_copy: Option<PathBuf>,
    /// Where the old event log was kept (a new chain was started).
    pub old_log: Option<PathBuf>,
    /// Where the old generations were moved (a new chain was started).
    pub old_generations: Option<PathBuf>,
}

impl Repaired {
    /// What the user does next, one line each.
    pub fn next_steps(&self) -> Vec<String> {
        let Some(p) = &self.plan else {
            return vec!["nothing to do: the registry is sound".into()];
        };
        let mut out = Vec::new();
        if !p.kept.is_empty() {
            out.push(format!(
                "kept {} though no previous version holds it (added by hand, or from the restored copy): if its lab exists and a configuration declares it, `terraform import` it there (`terraform import homelab_instance.<address> <name>`); if nothing uses it, `terraform-provider-homelab instances remove <name>` releases its networks",
                p.kept.join(", ")
            ));
        }
        if !p.changed_since.is_empty() {
            out.push(format!(
                "the event log shows changes after the accepted copy to: {}. In each workspace that declares them run `terraform apply -refresh-only` (and then `terraform plan`); an instance whose lab exists but that the registry now lacks: `terraform import homelab_instance.<address> <name>`",
                p.changed_since.join(", ")
            ));
        }
        if !p.superseded.is_empty() {
            out.push(format!(
                "the restored copy's version of {} was older than the log: the newer version is back (nothing to do)",
                p.superseded.join(", ")
            ));
        }
        if !p.undone.is_empty() {
            out.push(format!(
                "hand changes to {} were undone (the hand-written versions are in the registry.repair event): make such changes in the configuration and apply instead",
                p.undone.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        out.push("run `terraform plan` in each workspace of this home: it should show no changes (`-detailed-exitcode` gives 0)".into());
        out
    }
}

/// Bring a damaged home back (under the exclusive lock), recording a `registry.repair` event.
pub fn repair(store: &FileStore, now: OffsetDateTime, actor: &Actor, client: &Client) -> Result<Repaired, RepairError> {
    let _lock = store.lock_exclusive()?;
    let diagnosis = look(store);
    let Some(plan) = plan(&diagnosis)? else {
        return Ok(Repaired { diagnosis, plan: None, event: None, damaged_copy: None, old_log: None, old_generations: None });
    };
    let home = store.home();
    let stamp = now.unix_timestamp();
    let io = |path: &Path, what: &'static str| {
        let path = path.to_path_buf();
        move |source| RegistryError::Io { path, what, source }
    };
    let mut damaged_copy = None;
    if !matches!(diagnosis.document, DocState::Missing) {
        let to = home.join(format!("instances.json.damaged-{stamp}"));
        fs::copy(store.registry_path(), &to).map_err(io(&to, "cannot keep a copy of the damaged registry"))?;
        damaged_copy = Some(to);
    }
    let (mut old_log, mut old_generations) = (None, None);
    let mut head = if plan.new_chain {
        if fs::symlink_metadata(store.events_path()).is_ok() {
            let to = home.join(format!("events.jsonl.unverified-{stamp}"));
            fs::rename(store.events_path(), &to).map_err(io(&to, "cannot set the unverified event log aside"))?;
            old_log = Some(to);
        }
        old_generations = generations::set_aside(home, &format!("before-repair-{stamp}"))?;
        Head { seq: 0, hash: audit::GENESIS.into() }
    } else {
        audit::open_head(&store.events_path()).map_err(RegistryError::from)?
    };
    if !plan.missing.is_empty() {
        head = audit::append(&store.events_path(), &plan.missing).map_err(RegistryError::from)?;
    }
    let details = json!({
        "problems": diagnosis.problems.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "base": plan.base,
        "kept": plan.kept,
        "restored": plan.restored,
        "undone": plan.undone,
        "superseded": plan.superseded,
        "changed_since": plan.changed_since,
        "new_chain": plan.new_chain,
        "unverified_old_head": plan.old_head.as_ref().map(|h| json!({"seq": h.seq, "hash": h.hash})),
        "damaged_copy": damaged_copy,
        "old_log": old_log,
    });
    let events = store.persist(
        plan.doc.clone(),
        &head,
        &[Draft::new("registry.repair", "registry", details)],
        now,
        actor,
        client,
    )?;
    Ok(Repaired {
        diagnosis,
        plan: Some(plan),
        event: events.into_iter().last(),
        damaged_copy,
        old_log,
        old_generations,
    })
}


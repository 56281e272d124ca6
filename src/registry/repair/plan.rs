//! What a repair would do, decided from a diagnosis alone (pure): which witness to rebuild on,
//! which entries to keep from the damaged document, and what the user must refresh afterwards.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use crate::audit::{self, Event, Head};

use crate::registry::file::{lacking, missing_events};
use crate::registry::generations::Generation;
use crate::registry::Document;

use super::*;

/// What a repair builds the registry on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Base {
    /// A generation.
    Generation {
        /// Its change.
        seq: u64,
        /// Its file.
        path: PathBuf,
    },
    /// The document as it is (accepted: nothing better is left).
    Document {
        /// Its newest change.
        seq: u64,
    },
}

/// What a repair does, decided from a [`Diagnosis`].
#[derive(Debug, Clone)]
pub struct Plan {
    /// What the registry is rebuilt on.
    pub base: Base,
    /// The rebuilt document (its journal is replaced by the repair event's).
    pub doc: Document,
    /// Entries of the damaged document that no generation holds, kept.
    pub kept: Vec<String>,
    /// Entries the damaged document lacked, brought back from the generation.
    pub restored: Vec<String>,
    /// Entries changed by hand whose generation version is back, with the hand's version.
    pub undone: BTreeMap<String, serde_json::Value>,
    /// Entries of a restored older copy that the log shows changed since: the generation's
    /// (newer) version, or their absence, wins.
    pub superseded: Vec<String>,
    /// Instances and federations the log shows changed after the accepted document: their
    /// labs may differ from it.
    pub changed_since: Vec<String>,
    /// A new event chain is started (the old log could not be verified or is incomplete).
    pub new_chain: bool,
    /// The head the document recorded, which the new chain could not verify.
    pub old_head: Option<Head>,
    /// Events of the base's journal the log lacks, appended first.
    pub missing: Vec<Event>,
}

impl Plan {
    /// What the repair does, one line each.
    pub fn describe(&self) -> Vec<String> {
        let mut out = vec![match &self.base {
            Base::Generation { seq, path } => format!("rebuild on the previous version of change {seq} ({})", path.display()),
            Base::Document { seq } => format!("accept instances.json as it is (its newest change is seq {seq}): no previous version matches the event log"),
        }];
        let list = |word: &str, v: &[String]| (!v.is_empty()).then(|| format!("{word}: {}", v.join(", ")));
        out.extend(list("bring back (lacking from the damaged file)", &self.restored));
        out.extend(list("keep (only the damaged file has them)", &self.kept));
        out.extend(list("take the newer version the log vouches for", &self.superseded));
        let undone: Vec<String> = self.undone.keys().cloned().collect();
        out.extend(list("undo hand changes to", &undone));
        out.extend(list("changed after the accepted copy, per the log", &self.changed_since));
        if !self.missing.is_empty() {
            out.push(format!("append the {} event(s) of the newest change the log lacks", self.missing.len()));
        }
        if self.new_chain {
            out.push(match &self.old_head {
                Some(h) => format!("start a new event chain with the repair as its first event, recording the old head it cannot verify (seq {}, hash {}); the old log and generations are set aside", h.seq, h.hash),
                None => "start a new event chain with the repair as its first event; the old log and generations are set aside".into(),
            });
        } else {
            out.push("record a registry.repair event that re-links the registry to the event log".into());
        }
        out
    }
}

/// Decide what [`repair`] does (`Ok(None)`: nothing is wrong).
pub fn plan(d: &Diagnosis) -> Result<Option<Plan>, RepairError> {
    if d.problems.is_empty() {
        return Ok(None);
    }
    let unrepairable = |why: String| RepairError::Unrepairable { home: d.home.clone(), why };
    for p in &d.problems {
        if p.way_back().is_none() {
            return Err(unrepairable(format!("{p}. Fix that first (a newer format needs a newer provider; an unreadable file needs its disk, link or permissions); repair never replaces what it cannot read")));
        }
    }
    let usable_head = match &d.log {
        LogState::Intact { head, .. } => Some(head.clone()),
        LogState::Missing => Some(Head { seq: 0, hash: audit::GENESIS.into() }),
        LogState::Broken(_) => None,
    };
    let log_events: &[Event] = match &d.log {
        LogState::Intact { events, .. } => events,
        _ => &[],
    };
    let log_problem = d
        .problems
        .iter()
        .any(|p| matches!(p, Problem::LogShort { .. } | Problem::LogMissing { .. } | Problem::LogBroken { .. }));
    let good = |g: &&Generation| g.doc.is_ok();
    let consistent = |g: &&Generation| {
        usable_head
            .as_ref()
            .is_some_and(|h| g.doc.as_ref().is_ok_and(|doc| missing_events(doc, h).is_ok()))
    };
    let gen_doc = |g: &Generation| g.doc.clone().expect("only parsed generations are chosen");
    let base_of = |g: &Generation| Base::Generation { seq: g.seq, path: g.path.clone() };
    let mut plan = Plan {
        base: Base::Document { seq: 0 },
        doc: Document::default(),
        kept: Vec::new(),
        restored: Vec::new(),
        undone: BTreeMap::new(),
        superseded: Vec::new(),
        changed_since: Vec::new(),
        new_chain: false,
        old_head: None,
        missing: Vec::new(),
    };
    match &d.document {
        DocState::Parsed(doc) if log_problem => {
            // The log is the damaged witness: keep the document (with its own generation's
            // entries when it was also edited by hand) and start a new chain.
            plan.new_chain = true;
            plan.old_head = crate::registry::journal_head(doc);
            match d.generations.iter().filter(good).find(|g| g.seq == doc.journal.seq) {
                Some(g) => {
                    plan.base = base_of(g);
                    plan.doc = merge(doc, &gen_doc(g), &BTreeSet::new(), &mut plan);
                }
                None => {
                    plan.base = Base::Document { seq: doc.journal.seq };
                    plan.doc = doc.clone();
                }
            }
        }
        DocState::Parsed(doc) => {
            let head = usable_head.clone().expect("no log problem: the log is usable");
            let own_consistent = missing_events(doc, &head).is_ok();
            let chosen = if own_consistent {
                // Edited by hand: the generation of its own change.
                d.generations.iter().filter(good).find(|g| g.seq == doc.journal.seq)
            } else {
                d.generations.iter().find(consistent)
            };
            match chosen {
                Some(g) => {
                    let base = gen_doc(g);
                    let touched: BTreeSet<String> =
                        log_events.iter().filter(|e| e.seq > doc.journal.seq).map(|e| e.subject.clone()).collect();
                    plan.base = base_of(g);
                    plan.missing = missing_events(&base, &head).unwrap_or_default();
                    plan.doc = merge(doc, &base, &touched, &mut plan);
                }
                None => {
                    // Nothing better than the copy the user restored: accept it, re-link.
                    plan.base = Base::Document { seq: doc.journal.seq };
                    plan.doc = doc.clone();
                    plan.changed_since = changed_after(log_events, doc.journal.seq);
                }
            }
        }
        DocState::Missing | DocState::Damaged(_) => {
            let chosen = if log_problem {
                None
            } else {
                d.generations.iter().find(consistent)
            };
            match chosen {
                Some(g) => {
                    let base = gen_doc(g);
                    plan.missing = missing_events(&base, usable_head.as_ref().expect("consistent with a usable log"))
                        .unwrap_or_default();
                    plan.base = base_of(g);
                    plan.doc = base;
                }
                None => {
                    let Some(g) = d.generations.iter().find(good) else {
                        return Err(unrepairable(
                            "instances.json is damaged and no previous version of it is left in generations/. Copy a backup of instances.json into place (an older one will do), then run `registry repair` again: it accepts it, re-links the event log and lists the instances changed since".into(),
                        ));
                    };
                    let base = gen_doc(g);
                    plan.base = base_of(g);
                    if usable_head.is_some() && !log_problem {
                        // Older than the log: re-link after the log's head.
                        plan.changed_since = changed_after(log_events, base.journal.seq);
                    } else {
                        plan.new_chain = true;
                        plan.old_head = crate::registry::journal_head(&base);
                    }
                    plan.doc = base;
                }
            }
        }
        DocState::Unreadable(_) | DocState::NewerFormat(_) => unreachable!("refused above"),
    }
    Ok(Some(plan))
}

/// Subjects of the log's events after `seq`, each once, in order.
fn changed_after(events: &[Event], seq: u64) -> Vec<String> {
    let mut seen = BTreeSet::new();
    events
        .iter()
        .filter(|e| e.seq > seq && e.subject != "registry")
        .filter(|e| seen.insert(e.subject.clone()))
        .map(|e| e.subject.clone())
        .collect()
}

/// `base`, plus what only `damaged` holds unless the log changed it after `damaged`
/// (`touched`: subjects of later events); the report goes into `plan`.
fn merge(damaged: &Document, base: &Document, touched: &BTreeSet<String>, plan: &mut Plan) -> Document {
    let mut out = base.clone();
    for (k, e) in &damaged.instances {
        match base.instances.get(k) {
            None if touched.contains(k) => plan.superseded.push(k.clone()),
            None => {
                out.instances.insert(k.clone(), e.clone());
                plan.kept.push(k.clone());
            }
            Some(b) if b != e && touched.contains(k) => plan.superseded.push(k.clone()),
            Some(b) if b != e => {
                plan.undone.insert(k.clone(), serde_json::to_value(e).expect("entries serialize"));
            }
            Some(_) => {}
        }
    }
    for (k, r) in &damaged.federations {
        let label = format!("federation {k}");
        match base.federations.get(k) {
            None if touched.contains(k) => plan.superseded.push(label),
            None => {
                out.federations.insert(k.clone(), r.clone());
                plan.kept.push(label);
            }
            Some(b) if b != r && touched.contains(k) => plan.superseded.push(label),
            Some(b) if b != r => {
                plan.undone.insert(label, serde_json::to_value(r).expect("records serialize"));
            }
            Some(_) => {}
        }
    }
    // Federation tags of kept entries name peers that are there.
    for e in out.instances.values_mut() {
        e.federated.retain(|p| base.instances.contains_key(p) || damaged.instances.contains_key(p));
    }
    for (k, r) in &damaged.released {
        out.released.entry(k.clone()).or_insert_with(|| r.clone());
    }
    plan.restored = lacking(damaged, base);
    out
}

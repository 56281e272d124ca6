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

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::json;
use thiserror::Error;
use time::OffsetDateTime;

use crate::audit::{self, Actor, Client, Draft, Event, Head};

use super::file::{lacking, missing_events, parse_document, FileStore, Mismatch};
use super::generations::{self, Generation};
use super::{Document, RegistryError};

/// What `instances.json` is.
#[derive(Debug, Clone)]
pub enum DocState {
    /// There is none.
    Missing,
    /// It cannot be read at all (a directory, a dangling link, a permission).
    Unreadable(String),
    /// A format version this build does not know.
    NewerFormat(String),
    /// Not a registry document: garbage, truncated, the wrong shape.
    Damaged(String),
    /// A registry document.
    Parsed(Document),
}

/// What `events.jsonl` is.
#[derive(Debug, Clone)]
pub enum LogState {
    /// There is none.
    Missing,
    /// A line is not an event, or the chain is broken.
    Broken(String),
    /// The chain verifies; `torn`: an incomplete last line (a crash mid-append) follows it.
    Intact {
        /// The newest complete event.
        head: Head,
        /// Every event.
        events: Vec<Event>,
        /// Whether an incomplete last line follows.
        torn: bool,
    },
}

/// Entries that differ between two documents, by name (`acme`, `federation acme+globex`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Diff {
    /// In the document only.
    pub added: Vec<String>,
    /// In the generation only.
    pub removed: Vec<String>,
    /// In both, different.
    pub changed: Vec<String>,
}

impl Diff {
    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }

    /// `doc` against `base`.
    pub fn of(doc: &Document, base: &Document) -> Diff {
        let mut d = Diff::default();
        diff_map(&doc.instances, &base.instances, "", &mut d);
        diff_map(&doc.federations, &base.federations, "federation ", &mut d);
        d
    }
}

fn diff_map<V: PartialEq>(doc: &BTreeMap<String, V>, base: &BTreeMap<String, V>, label: &str, d: &mut Diff) {
    for (k, v) in doc {
        match base.get(k) {
            None => d.added.push(format!("{label}{k}")),
            Some(b) if b != v => d.changed.push(format!("{label}{k}")),
            Some(_) => {}
        }
    }
    d.removed.extend(base.keys().filter(|k| !doc.contains_key(*k)).map(|k| format!("{label}{k}")));
}

impl std::fmt::Display for Diff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (word, list) in [("added", &self.added), ("removed", &self.removed), ("changed", &self.changed)] {
            if !list.is_empty() {
                parts.push(format!("{word}: {}", list.join(", ")));
            }
        }
        f.write_str(&parts.join("; "))
    }
}

/// One thing wrong with a home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// `instances.json` is not a registry document.
    Unparseable {
        /// Parser message.
        why: String,
    },
    /// `instances.json` is gone while the log holds events.
    DocumentMissing {
        /// The log's newest event.
        log_seq: u64,
    },
    /// `instances.json` cannot be read at all (repair cannot help).
    Unreadable {
        /// The cause.
        why: String,
    },
    /// `instances.json` has a newer format (repair must not touch it).
    NewerFormat {
        /// The message.
        why: String,
    },
    /// The document differs from the generation of its own change.
    EditedByHand {
        /// The change.
        seq: u64,
        /// Its generation.
        generation: PathBuf,
        /// What differs.
        diff: Diff,
    },
    /// The log goes on past the document: an older copy was restored.
    OlderThanLog {
        /// The document's newest change.
        doc_seq: u64,
        /// The log's newest event.
        log_seq: u64,
    },
    /// Document and log end at the same seq with different events.
    OtherHistory {
        /// The seq.
        seq: u64,
    },
    /// The log ends before the document's journal begins (shortened or replaced).
    LogShort {
        /// The document's newest change.
        doc_seq: u64,
        /// The log's newest event.
        log_seq: u64,
    },
    /// `events.jsonl` is missing while the document records changes it lacks.
    LogMissing {
        /// The document's newest change.
        doc_seq: u64,
    },
    /// `events.jsonl` does not verify.
    LogBroken {
        /// What does not verify.
        why: String,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Unparseable { why } => write!(f, "instances.json is not a registry document (garbage or cut short): {why}"),
            Problem::DocumentMissing { log_seq } => write!(f, "instances.json is missing, but the event log holds {log_seq} events"),
            Problem::Unreadable { why } => write!(f, "instances.json cannot be read: {why}"),
            Problem::NewerFormat { why } => write!(f, "{why}"),
            Problem::EditedByHand { seq, generation, diff } => write!(
                f,
                "instances.json was edited by hand: it differs from {} (the registry as change {seq} wrote it): {diff}",
                generation.display()
            ),
            Problem::OlderThanLog { doc_seq, log_seq } => write!(
                f,
                "instances.json is older than the event log: an older copy was restored (its newest change is seq {doc_seq}, the log goes on to seq {log_seq})"
            ),
            Problem::OtherHistory { seq } => write!(
                f,
                "instances.json and the event log disagree about change {seq}: one of them was replaced or edited"
            ),
            Problem::LogShort { doc_seq, log_seq } => write!(
                f,
                "the event log ends at seq {log_seq} but instances.json records changes up to seq {doc_seq}: the log was cut short or replaced by an older one"
            ),
            Problem::LogMissing { doc_seq } => write!(
                f,
                "events.jsonl is missing, but instances.json records changes up to seq {doc_seq}"
            ),
            Problem::LogBroken { why } => write!(f, "the event log does not verify: {why}"),
        }
    }
}

impl Problem {
    /// What `registry repair` does about it, in words (`None`: it cannot help).
    pub fn way_back(&self) -> Option<&'static str> {
        match self {
            Problem::Unparseable { .. } | Problem::DocumentMissing { .. } => Some(
                "repair rebuilds instances.json from the newest previous version the event log vouches for (the damaged file is kept beside it)",
            ),
            Problem::Unreadable { .. } => None,
            Problem::NewerFormat { .. } => None,
            Problem::EditedByHand { .. } => Some(
                "repair restores the version of that change: entries removed by hand come back, entries added by hand are kept and listed, hand changes to entries are undone (and recorded in the repair event)",
            ),
            Problem::OlderThanLog { .. } | Problem::OtherHistory { .. } => Some(
                "repair supersedes the copy with the newest previous version the event log vouches for (keeping entries the log never touched since); without one it accepts the copy, re-links the log to it and lists the instances changed since, to refresh or import",
            ),
            Problem::LogShort { .. } | Problem::LogMissing { .. } | Problem::LogBroken { .. } => Some(
                "repair starts a new event chain whose first event is the repair, recording the old head it could not verify (an old log is kept as events.jsonl.unverified-<time>)",
            ),
        }
    }
}

/// Everything [`diagnose`] found.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// The home.
    pub home: PathBuf,
    /// The document.
    pub document: DocState,
    /// The log.
    pub log: LogState,
    /// Every generation, newest first.
    pub generations: Vec<Generation>,
    /// What is wrong (empty: sound).
    pub problems: Vec<Problem>,
    /// Harmless leftovers of crashes, which the next change tidies.
    pub notes: Vec<String>,
}

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

/// Look at a home without changing anything (under the shared lock).
pub fn diagnose(store: &FileStore) -> Result<Diagnosis, RegistryError> {
    let _lock = store.lock_shared()?;
    Ok(look(store))
}

fn read_log(path: &Path) -> LogState {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return LogState::Missing,
        Err(e) => return LogState::Broken(format!("{}: {e}", path.display())),
    };
    // Bytes after the last newline are a torn append, dropped by the next writer.
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let torn = complete < bytes.len();
    match audit::verify_from(&bytes[..complete], path, None) {
        Ok(v) => match audit::read_all_from(&bytes[..complete], path) {
            Ok(events) => LogState::Intact { head: v.head, events, torn },
            Err(e) => LogState::Broken(e.to_string()),
        },
        Err(e) => LogState::Broken(e.to_string()),
    }
}

fn look(store: &FileStore) -> Diagnosis {
    let home = store.home().to_path_buf();
    let path = store.registry_path();
    let document = match fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && fs::symlink_metadata(&path).is_err() => DocState::Missing,
        Err(e) => DocState::Unreadable(e.to_string()),
        Ok(bytes) => match parse_document(&bytes, &path) {
            Ok(doc) => DocState::Parsed(doc),
            Err(e @ RegistryError::UnknownVersion { .. }) => DocState::NewerFormat(e.to_string()),
            Err(RegistryError::Corrupt { why, .. }) => DocState::Damaged(why),
            Err(e) => DocState::Damaged(e.to_string()),
        },
    };
    let log = read_log(&store.events_path());
    let gens = generations::read_all(&home);
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let head = match &log {
        LogState::Intact { head, torn, .. } => {
            if *torn {
                notes.push("the event log ends with an incomplete line (a writer was killed mid-append); the next change drops it".into());
            }
            Some(head.clone())
        }
        LogState::Missing => Some(Head { seq: 0, hash: audit::GENESIS.into() }),
        LogState::Broken(why) => {
            problems.push(Problem::LogBroken { why: why.clone() });
            None
        }
    };
    match &document {
        DocState::Missing => {
            if let Some(h) = head.as_ref().filter(|h| h.seq > 0) {
                problems.push(Problem::DocumentMissing { log_seq: h.seq });
            }
        }
        DocState::Unreadable(why) => problems.push(Problem::Unreadable { why: why.clone() }),
        DocState::NewerFormat(why) => problems.push(Problem::NewerFormat { why: why.clone() }),
        DocState::Damaged(why) => problems.push(Problem::Unparseable { why: why.clone() }),
        DocState::Parsed(doc) => {
            if let Some(h) = &head {
                match missing_events(doc, h) {
                    Ok(missing) if !missing.is_empty() => notes.push(format!(
                        "the event log lacks the events of the newest change (seq {} to {}): a writer was killed between the document and the log; the next change appends them",
                        h.seq + 1,
                        doc.journal.seq
                    )),
                    Ok(_) => {}
                    Err(Mismatch::LogAhead { doc, log }) => problems.push(Problem::OlderThanLog { doc_seq: doc, log_seq: log }),
                    Err(Mismatch::OtherHistory { seq }) => problems.push(Problem::OtherHistory { seq }),
                    Err(Mismatch::Gap { doc, .. }) if matches!(log, LogState::Missing) => {
                        problems.push(Problem::LogMissing { doc_seq: doc })
                    }
                    Err(Mismatch::Gap { doc, log }) => problems.push(Problem::LogShort { doc_seq: doc, log_seq: log }),
                }
            }
            let seq = doc.journal.seq;
            match gens.iter().find(|g| g.seq == seq) {
                Some(Generation { doc: Ok(base), path, .. }) => {
                    let diff = Diff::of(doc, base);
                    if !diff.is_empty() {
                        problems.push(Problem::EditedByHand { seq, generation: path.clone(), diff });
                    }
                }
                Some(Generation { doc: Err(why), .. }) => notes.push(format!("the previous version of change {seq} does not parse: {why}")),
                None if seq > 0 && !problems.iter().any(|p| matches!(p, Problem::OlderThanLog { .. })) => notes.push(format!(
                    "no previous version of change {seq} is kept (a registry written before generations existed): the next change makes one"
                )),
                None => {}
            }
            let stale: Vec<String> = gens.iter().filter(|g| g.seq > seq).map(|g| g.seq.to_string()).collect();
            if !stale.is_empty() && head.as_ref().is_some_and(|h| h.seq <= seq) {
                notes.push(format!(
                    "generation(s) {} never became the registry (a writer was killed between linking and renaming); the next change removes them",
                    stale.join(", ")
                ));
            }
        }
    }
    Diagnosis {
        home,
        document,
        log,
        generations: gens,
        problems,
        notes,
    }
}

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
            plan.old_head = super::journal_head(doc);
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
                        plan.old_head = super::journal_head(&base);
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

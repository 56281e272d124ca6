//! What `registry check` reports: the state of the document, of the event log and of the
//! generations of a home, and the problems found by comparing them (read-only).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::audit::{self, Event, Head};

use crate::registry::file::{missing_events, FileStore, Mismatch};
use crate::registry::parse_document;
use crate::registry::generations::{self, Generation};
use crate::registry::{Document, RegistryError};

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

pub(super) fn look(store: &FileStore) -> Diagnosis {
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

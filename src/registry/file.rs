//! The file store: `<home>/instances.json`, its sidecar lock `<home>/instances.json.lock`, the
//! event log `<home>/events.jsonl`, and the previous versions `<home>/generations/`.
//!
//! Every change holds an exclusive `fs2` lock on the sidecar (advisory locks die with their
//! holder, so a crashed process never blocks the next). The document is written to a temp
//! file in the same folder, fsynced, also written as the change's generation (see
//! [`super::generations`]), renamed over the old one, and the folder fsynced: the file is
//! always either the old or the new document, never truncated in place. The document carries
//! the events of its newest change (its journal); they are appended to the log right after the
//! rename, and a writer that finds the log behind the document appends what is missing first.
//!
//! Every read checks what a writer would trip over later, so that a damaged registry stops
//! plans as well as applies, naming `registry repair` ([`super::repair`]): a document that
//! lacks entries its own generation holds (edited by hand), a log that goes on past the
//! document (an older copy restored), a log that ends before the document's journal begins (a
//! deleted log), and a document gone while its log remains.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use fs2::FileExt;
use time::OffsetDateTime;

use crate::audit::{self, Actor, Client, Draft, Event, Head, Verified};

use super::generations;
use super::{
    journal, journal_head, parse_document, Change, Document, RegistryError,
    Store,
};

/// How a document and the log it should follow on from disagree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The log goes on past the document: an older copy of the document was restored (or the
    /// log belongs to a newer one).
    LogAhead {
        /// The document's newest change.
        doc: u64,
        /// The log's newest event.
        log: u64,
    },
    /// Both end at the same seq, with different events: one of them was replaced or edited.
    OtherHistory {
        /// The seq.
        seq: u64,
    },
    /// The log ends before the document's journal begins: events are missing (the log was
    /// deleted, truncated or replaced by an older one).
    Gap {
        /// The document's newest change.
        doc: u64,
        /// The log's newest event.
        log: u64,
    },
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mismatch::LogAhead { doc, log } => write!(
                f,
                "the registry's newest change is seq {doc} but the log goes on to seq {log}: an older copy of instances.json was restored"
            ),
            Mismatch::OtherHistory { seq } => write!(
                f,
                "the log's newest event (seq {seq}) is not the registry's: one of the files was replaced or edited"
            ),
            Mismatch::Gap { doc, log } if *log == 0 => write!(
                f,
                "the log is empty or missing but the registry's newest change is seq {doc}: the log was deleted or replaced"
            ),
            Mismatch::Gap { doc, log } => write!(
                f,
                "the log ends at seq {log} but the registry's newest change is seq {doc}, and the events in between are not in its journal"
            ),
        }
    }
}

/// The events of `doc`'s journal that a log ending at `head` lacks (none when they are in
/// step; some after a writer died between its rename and its append), or how they disagree.
pub fn missing_events(doc: &Document, head: &Head) -> Result<Vec<Event>, Mismatch> {
    let seq = doc.journal.seq;
    if head.seq > seq {
        return Err(Mismatch::LogAhead { doc: seq, log: head.seq });
    }
    if head.seq == seq {
        return if seq > 0 && head.hash != doc.journal.hash {
            Err(Mismatch::OtherHistory { seq })
        } else {
            Ok(Vec::new())
        };
    }
    let missing: Vec<Event> = doc.journal.events.iter().filter(|e| e.seq > head.seq).cloned().collect();
    if missing.first().map(|e| (e.seq, e.prev.as_str())) != Some((head.seq + 1, head.hash.as_str())) {
        return Err(Mismatch::Gap { doc: seq, log: head.seq });
    }
    Ok(missing)
}

/// The names of the entries of `base` that `doc` lacks (`acme`, `federation acme+globex`).
pub fn lacking(doc: &Document, base: &Document) -> Vec<String> {
    let mut out: Vec<String> = base.instances.keys().filter(|k| !doc.instances.contains_key(*k)).cloned().collect();
    out.extend(
        base.federations
            .keys()
            .filter(|k| !doc.federations.contains_key(*k))
            .map(|k| format!("federation {k}")),
    );
    out
}

/// Name prefix of the temp file a writer fills before renaming it over `instances.json`.
const TEMP_PREFIX: &str = ".instances.json.tmp-";

/// The registry as files in a folder.
#[derive(Debug, Clone)]
pub struct FileStore {
    home: PathBuf,
    parsed: Arc<Parsed>,
}

/// The newest document this store read or wrote, with its exact bytes. A read that finds the
/// very same bytes reuses it instead of parsing again: a provider process reads the registry
/// for every resource it plans, and each change reads it twice (a shared read, then again under
/// the exclusive lock). Identical bytes parse to the identical document, so this is never
/// stale: any change by anyone gives other bytes.
#[derive(Default)]
struct Parsed(Mutex<Option<(Vec<u8>, Document)>>);

impl Parsed {
    /// The document of `bytes`, if it is the one kept: a copy, or (`take`, for a change that
    /// will write a new one anyway) the kept one itself.
    fn get(&self, bytes: &[u8], take: bool) -> Option<Document> {
        let mut guard = self.0.lock().expect("parsed cache lock");
        if guard.as_ref().is_none_or(|(b, _)| b.as_slice() != bytes) {
            return None;
        }
        if take {
            guard.take().map(|(_, doc)| doc)
        } else {
            guard.as_ref().map(|(_, doc)| doc.clone())
        }
    }

    fn put(&self, bytes: Vec<u8>, doc: Document) {
        *self.0.lock().expect("parsed cache lock") = Some((bytes, doc));
    }
}

impl std::fmt::Debug for Parsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parsed(..)")
    }
}

impl FileStore {
    /// A store in `home` (created on the first write).
    pub fn new(home: impl Into<PathBuf>) -> FileStore {
        FileStore {
            home: home.into(),
            parsed: Arc::default(),
        }
    }

    /// The registry folder.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `<home>/instances.json`.
    pub fn registry_path(&self) -> PathBuf {
        self.home.join("instances.json")
    }

    /// `<home>/instances.json.lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.home.join("instances.json.lock")
    }

    /// `<home>/events.jsonl`.
    pub fn events_path(&self) -> PathBuf {
        self.home.join("events.jsonl")
    }

    /// `<home>/registry-moved-to`: written by `registry migrate` once the registry is in its
    /// new store, holding that store's URL. From then on this folder's registry is history.
    pub fn moved_path(&self) -> PathBuf {
        self.home.join("registry-moved-to")
    }

    /// Where the registry was moved to, when it was.
    pub fn moved_to(&self) -> Option<String> {
        fs::read_to_string(self.moved_path()).ok().map(|s| s.trim().to_string())
    }

    /// Record that the registry now lives at `to` (see [`FileStore::moved_path`]).
    pub fn mark_moved(&self, to: &str) -> Result<(), RegistryError> {
        let path = self.moved_path();
        fs::write(&path, format!("{to}\n")).map_err(self.io(path, "cannot record where the registry moved"))
    }

    fn io(&self, path: PathBuf, what: &'static str) -> impl FnOnce(std::io::Error) -> RegistryError {
        move |source| RegistryError::Io { path, what, source }
    }

    fn ensure_home(&self) -> Result<(), RegistryError> {
        use std::os::unix::fs::DirBuilderExt;
        if self.home.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.home)
            .map_err(self.io(self.home.clone(), "cannot create the registry folder"))
    }

    fn lock(&self, exclusive: bool) -> Result<File, RegistryError> {
        let path = self.lock_path();
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(self.io(path.clone(), "cannot open the registry lock"))?;
        let locked = if exclusive {
            file.lock_exclusive()
        } else {
            file.lock_shared()
        };
        locked.map_err(self.io(path, "cannot lock the registry"))?;
        Ok(file)
    }

    /// Read and check the document without locking (callers hold the lock). `None`: there is
    /// no registry yet. `for_change`: the caller holds the exclusive lock and will write.
    fn read(&self, for_change: bool) -> Result<Option<Document>, RegistryError> {
        if let Some(to) = self.moved_to() {
            return Err(RegistryError::Moved { home: self.home.clone(), to });
        }
        let path = self.registry_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A symbolic link to nothing is not "no registry yet": the registry was moved
                // or its disk is not mounted. Starting afresh would hand out taken networks.
                return match fs::read_link(&path) {
                    Ok(target) => Err(RegistryError::Unreadable {
                        source: std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            format!(
                                "it is a symbolic link to `{}`, which does not exist",
                                target.display()
                            ),
                        ),
                        path,
                    }),
                    Err(_) => Ok(None),
                };
            }
            Err(source) => return Err(RegistryError::Unreadable { path, source }),
        };
        let doc = match self.parsed.get(&bytes, for_change) {
            Some(doc) => doc,
            None => {
                let doc = parse_document(&bytes, &path)?;
                if !for_change {
                    self.parsed.put(bytes.clone(), doc.clone());
                }
                doc
            }
        };
        self.check_generation(&doc, &bytes)?;
        Ok(Some(doc))
    }

    /// Refuse a document that lacks entries the generation of its own change holds (normally
    /// the same bytes: one more read of a small file).
    fn check_generation(&self, doc: &Document, bytes: &[u8]) -> Result<(), RegistryError> {
        let seq = doc.journal.seq;
        if seq == 0 {
            return Ok(());
        }
        let gen = generations::path(&self.home, seq);
        // No generation of it: written before generations existed, or pruned.
        let Ok(gen_bytes) = fs::read(&gen) else { return Ok(()) };
        if gen_bytes == bytes {
            return Ok(());
        }
        let Ok(base) = parse_document(&gen_bytes, &gen) else { return Ok(()) };
        let removed = lacking(doc, &base);
        if removed.is_empty() {
            // Entries added or changed by hand are checked by every operation as it uses them
            // (and shown by `registry check`); only a lost entry is dangerous at once.
            return Ok(());
        }
        Err(RegistryError::EditedByHand {
            path: self.registry_path(),
            seq,
            generation: gen,
            removed,
        })
    }

    /// The exclusive lock, for [`super::repair`].
    pub(super) fn lock_exclusive(&self) -> Result<File, RegistryError> {
        self.ensure_home()?;
        self.lock(true)
    }

    /// The shared lock, for [`super::repair`]'s reads.
    pub(super) fn lock_shared(&self) -> Result<Option<File>, RegistryError> {
        if !self.home.is_dir() {
            return Ok(None);
        }
        self.lock(false).map(Some)
    }

    /// The log's head (read-only) against `doc`: an error naming the log when they disagree.
    fn check_log(&self, doc: &Document, head: &Head) -> Result<Vec<Event>, RegistryError> {
        missing_events(doc, head).map_err(|m| {
            audit::AuditError::Broken {
                path: self.events_path(),
                line: head.seq as usize,
                why: format!("{m}; nothing was changed"),
            }
            .into()
        })
    }

    /// Write `working` with `drafts` chained after `head` as its journal, then append the
    /// events: the second half of every commit, and of a repair.
    pub(super) fn persist(
        &self,
        mut working: Document,
        head: &Head,
        drafts: &[Draft],
        now: OffsetDateTime,
        actor: &Actor,
        client: &Client,
    ) -> Result<Vec<Event>, RegistryError> {
        let events = journal(&mut working, head, drafts, now, actor, client);
        let bytes = self.write(&working)?;
        // The next read in this process finds these bytes: no need to parse them again.
        self.parsed.put(bytes, working);
        audit::append(&self.events_path(), &events)?;
        Ok(events)
    }

    /// Remove temp files left by writers that died before their rename. Only called under the
    /// exclusive lock: a writer writes its temp file only while holding it.
    fn remove_stale_temp_files(&self) {
        let Ok(dir) = fs::read_dir(&self.home) else {
            return;
        };
        for entry in dir.flatten() {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                if let Err(e) = fs::remove_file(entry.path()) {
                    tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove a stale temp file");
                }
            }
        }
    }

    /// Replace the document (temp file, fsync, rename, fsync the folder); the bytes written.
    fn write(&self, doc: &Document) -> Result<Vec<u8>, RegistryError> {
        let path = self.registry_path();
        let mut bytes = serde_json::to_vec_pretty(doc).expect("documents serialize");
        bytes.push(b'\n');
        let tmp = self
            .home
            .join(format!("{TEMP_PREFIX}{}", std::process::id()));
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&tmp)
            .map_err(self.io(tmp.clone(), "cannot write the registry"))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(self.io(tmp.clone(), "cannot write the registry"))?;
        drop(f);
        generations::write(&self.home, doc.journal.seq, &bytes)?;
        fs::rename(&tmp, &path).map_err(self.io(path.clone(), "cannot replace the registry"))?;
        File::open(&self.home)
            .and_then(|d| d.sync_all())
            .map_err(self.io(self.home.clone(), "cannot sync the registry folder"))?;
        generations::prune(&self.home);
        Ok(bytes)
    }
}

impl Store for FileStore {
    fn location(&self) -> String {
        self.registry_path().display().to_string()
    }

    fn load(&self) -> Result<Document, RegistryError> {
        if !self.registry_path().exists() {
            // Reading never creates anything: no file, no lock needed, an empty registry,
            // unless the log says there was one.
            return match self.read(false)? {
                Some(doc) => Ok(doc),
                None => {
                    let head = audit::read_head(&self.events_path())?;
                    if head.seq > 0 {
                        return Err(RegistryError::DocumentMissing {
                            path: self.registry_path(),
                            events: self.events_path(),
                            seq: head.seq,
                        });
                    }
                    Ok(Document::default())
                }
            };
        }
        let _lock = self.lock(false)?;
        let doc = self.read(false)?.unwrap_or_default();
        self.check_log(&doc, &audit::read_head(&self.events_path())?)?;
        Ok(doc)
    }

    fn commit(
        &self,
        change: &mut Change<'_>,
        now: OffsetDateTime,
        actor: &Actor,
        client: &Client,
    ) -> Result<(), RegistryError> {
        self.ensure_home()?;
        let _lock = self.lock(true)?;
        let events_path = self.events_path();
        let existing = self.read(true)?;
        self.remove_stale_temp_files();
        let mut head = audit::open_head(&events_path)?;
        let doc = match existing {
            Some(doc) => {
                let missing = self.check_log(&doc, &head)?;
                if !missing.is_empty() {
                    // The previous writer crashed between the rename and the append.
                    tracing::warn!(from = head.seq + 1, to = doc.journal.seq, "appending events a crashed writer left out");
                    head = audit::append(&events_path, &missing)?;
                }
                doc
            }
            None if head.seq > 0 => {
                return Err(RegistryError::DocumentMissing {
                    path: self.registry_path(),
                    events: events_path,
                    seq: head.seq,
                })
            }
            None => Document::default(),
        };
        let mut working = doc;
        let drafts = change(&mut working)?;
        if drafts.is_empty() {
            return Ok(());
        }
        self.persist(working, &head, &drafts, now, actor, client)?;
        Ok(())
    }

    fn events(&self) -> Result<Vec<Event>, RegistryError> {
        Ok(audit::read_all(&self.events_path())?)
    }

    fn verify_events(&self) -> Result<Verified, RegistryError> {
        let doc = self.load()?;
        Ok(audit::verify(&self.events_path(), journal_head(&doc).as_ref())?)
    }
}

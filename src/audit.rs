//! The append-only, hash-chained event log (`<home>/events.jsonl`), the seed's "event bus".
//!
//! One JSON object per line. Each line carries `prev`, the SHA-256 (hex) of the previous line's
//! bytes (64 zeros for the first), so a removed or edited line breaks the chain. The registry
//! records the hash of the newest line it knows of, so an edit of the last line is caught too.
//! Lines are written by the registry's store under the registry lock, one event per change.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;
use time::OffsetDateTime;

/// `prev` of the first line.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Who made a change: the OS user and process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// User name (from the password database, else `$USER`, else the uid).
    pub user: String,
    /// Numeric user id.
    pub uid: u32,
    /// Host name.
    pub host: String,
    /// Process id of the provider.
    pub pid: u32,
}

impl Actor {
    /// The current process.
    pub fn current() -> Actor {
        // SAFETY: getuid/getpid cannot fail; getpwuid_r and gethostname write into our buffers.
        let uid = unsafe { libc::getuid() };
        let pid = std::process::id();
        Actor {
            user: user_name(uid),
            uid,
            host: host_name(),
            pid,
        }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} (pid {})", self.user, self.host, self.pid)
    }
}

fn user_name(uid: u32) -> String {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return name.to_string_lossy().into_owned();
    }
    std::env::var("USER").unwrap_or_else(|_| uid.to_string())
}

pub(crate) fn host_name() -> String {
    let mut buf = [0u8; 256];
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        return String::from_utf8_lossy(&buf[..end]).into_owned();
    }
    "unknown".into()
}

/// What program made the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Client {
    /// `terraform-provider-homelab <version>`.
    pub provider: String,
    /// Terraform's version as given at configure (empty outside Terraform).
    pub terraform: String,
}

impl Client {
    /// This provider, driven by the given Terraform version.
    pub fn provider(terraform_version: impl Into<String>) -> Client {
        Client {
            provider: format!("terraform-provider-homelab {}", env!("CARGO_PKG_VERSION")),
            terraform: terraform_version.into(),
        }
    }
}

/// An event before the store numbers and chains it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Draft {
    /// `instance.reserve`, `instance.allocate`, `federation.create`, …
    pub action: String,
    /// What it is about (instance name, `acme+globex`).
    pub subject: String,
    /// Action-specific details (CIDRs, reason, expiry…).
    pub details: serde_json::Value,
}

impl Draft {
    /// A draft event.
    pub fn new(action: &str, subject: &str, details: serde_json::Value) -> Draft {
        Draft {
            action: action.into(),
            subject: subject.into(),
            details,
        }
    }
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// 1, 2, 3… without gaps.
    pub seq: u64,
    /// RFC 3339 UTC.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Who.
    pub actor: Actor,
    /// With what.
    pub client: Client,
    /// What.
    pub action: String,
    /// To what.
    pub subject: String,
    /// Details.
    pub details: serde_json::Value,
    /// SHA-256 (hex) of the previous line's bytes.
    pub prev: String,
}

/// SHA-256 of a line's bytes (without its newline), hex.
pub fn line_hash(line: &[u8]) -> String {
    hex::encode(Sha256::digest(line))
}

/// The serialized line of an event (no newline).
pub fn encode(event: &Event) -> Vec<u8> {
    serde_json::to_vec(event).expect("events always serialize")
}

/// A problem with the log.
#[derive(Debug, Error)]
pub enum AuditError {
    /// The log could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line is not an event.
    #[error("{path}, line {line}: not an event: {why}")]
    Malformed {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Parser message.
        why: String,
    },
    /// The chain is broken: a line was removed, inserted or edited.
    #[error("{path}, line {line}: hash chain broken: {why}")]
    Broken {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What does not match.
        why: String,
    },
}

/// The newest line of a log: its seq and hash.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Head {
    /// Seq of the newest line (0: empty log).
    pub seq: u64,
    /// Hash of the newest line (GENESIS for an empty log).
    pub hash: String,
}

/// Result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Number of events.
    pub events: u64,
    /// The newest line.
    pub head: Head,
}

/// Read every event of a log (empty when the file does not exist).
pub fn read_all(path: &Path) -> Result<Vec<Event>, AuditError> {
    let mut out = Vec::new();
    for_each_line(path, |n, raw| {
        out.push(parse_event(raw, n, path)?);
        Ok(())
    })?;
    Ok(out)
}

/// Line `n` of the log at `path`, as an event.
fn parse_event(raw: &[u8], n: usize, path: &Path) -> Result<Event, AuditError> {
    serde_json::from_slice(raw).map_err(|e| AuditError::Malformed {
        path: path.into(),
        line: n,
        why: e.to_string(),
    })
}

/// [`read_all`] of a log's bytes (`path` names it in errors).
pub fn read_all_from(bytes: &[u8], path: &Path) -> Result<Vec<Event>, AuditError> {
    let mut out = Vec::new();
    lines_of(bytes, path, |n, raw| {
        out.push(parse_event(raw, n, path)?);
        Ok(())
    })?;
    Ok(out)
}

fn for_each_line(
    path: &Path,
    f: impl FnMut(usize, &[u8]) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(AuditError::Io { path: path.into(), source }),
    };
    lines_of(BufReader::new(file), path, f)
}

/// Call `f` with each line of `reader` (numbered from 1, without its newline).
fn lines_of(
    mut reader: impl BufRead,
    path: &Path,
    mut f: impl FnMut(usize, &[u8]) -> Result<(), AuditError>,
) -> Result<(), AuditError> {
    let io = |source| AuditError::Io {
        path: path.into(),
        source,
    };
    let mut buf = Vec::new();
    let mut n = 0;
    loop {
        buf.clear();
        let read = reader.read_until(b'\n', &mut buf).map_err(io)?;
        if read == 0 {
            return Ok(());
        }
        n += 1;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        f(n, &buf)?;
    }
}

/// Verify the whole chain: seq 1, 2, 3… and each `prev` equal to the hash of the line before.
/// When `expected_head` is given (the registry's record of the newest line), the log must end
/// exactly there, which also catches an edit of the last line.
pub fn verify(path: &Path, expected_head: Option<&Head>) -> Result<Verified, AuditError> {
    match File::open(path) {
        Ok(f) => verify_from(BufReader::new(f), path, expected_head),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => verify_from(&[][..], path, expected_head),
        Err(source) => Err(AuditError::Io { path: path.into(), source }),
    }
}

/// [`verify`] of a log read from `reader` (`path` names it in errors).
pub fn verify_from(reader: impl BufRead, path: &Path, expected_head: Option<&Head>) -> Result<Verified, AuditError> {
    let mut head = Head {
        seq: 0,
        hash: GENESIS.into(),
    };
    lines_of(reader, path, |n, raw| {
        let ev: Event = serde_json::from_slice(raw).map_err(|e| AuditError::Malformed {
            path: path.into(),
            line: n,
            why: e.to_string(),
        })?;
        if ev.seq != head.seq + 1 {
            return Err(AuditError::Broken {
                path: path.into(),
                line: n,
                why: format!("seq {} follows seq {} (a line is missing or was added)", ev.seq, head.seq),
            });
        }
        if ev.prev != head.hash {
            return Err(AuditError::Broken {
                path: path.into(),
                line: n,
                why: format!("prev is {} but the line before hashes to {}", ev.prev, head.hash),
            });
        }
        head = Head {
            seq: ev.seq,
            hash: line_hash(raw),
        };
        Ok(())
    })?;
    if let Some(want) = expected_head {
        if want.seq != head.seq || want.hash != head.hash {
            return Err(AuditError::Broken {
                path: path.into(),
                line: head.seq as usize,
                why: format!(
                    "the registry records the newest event as seq {} with hash {}, the log ends at seq {} with hash {}",
                    want.seq, want.hash, head.seq, head.hash
                ),
            });
        }
    }
    Ok(Verified {
        events: head.seq,
        head,
    })
}

/// The head of a log, dropping an incomplete last line (a write cut short by a crash was never
/// committed: the registry change it belonged to is replayed from the registry's journal).
/// Reads only the end of the file: the log grows with every change, a commit must not.
pub fn open_head(path: &Path) -> Result<Head, AuditError> {
    head_of(path, true)
}

/// [`open_head`] for readers: an incomplete last line is skipped, not removed, and nothing is
/// written (readers hold only a shared lock).
pub fn read_head(path: &Path) -> Result<Head, AuditError> {
    head_of(path, false)
}

fn head_of(path: &Path, drop_torn_tail: bool) -> Result<Head, AuditError> {
    let io = |source| AuditError::Io {
        path: path.into(),
        source,
    };
    let mut file = match OpenOptions::new().read(true).write(drop_torn_tail).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Head {
                seq: 0,
                hash: GENESIS.into(),
            })
        }
        Err(e) => return Err(io(e)),
    };
    let len = file.metadata().map_err(io)?.len();
    // `tail` holds the bytes from `pos` to the end; grow it backwards until it holds the whole
    // last complete line (or the whole file).
    let mut pos = len;
    let mut tail: Vec<u8> = Vec::new();
    let mut chunk = 8 * 1024u64;
    let (complete, last) = loop {
        let step = chunk.min(pos);
        pos -= step;
        let mut buf = vec![0u8; step as usize];
        file.seek(SeekFrom::Start(pos)).map_err(io)?;
        file.read_exact(&mut buf).map_err(io)?;
        buf.extend_from_slice(&tail);
        tail = buf;
        chunk *= 2;
        // Bytes after the last newline are a torn write.
        let complete = match tail.iter().rposition(|&b| b == b'\n') {
            Some(p) => p + 1,
            None if pos == 0 => 0,
            None => continue,
        };
        if complete == 0 {
            break (0, None);
        }
        match tail[..complete - 1].iter().rposition(|&b| b == b'\n') {
            Some(p) => break (complete, Some(p + 1..complete - 1)),
            None if pos == 0 => break (complete, Some(0..complete - 1)),
            None => continue,
        }
    };
    if complete < tail.len() && drop_torn_tail {
        tracing::warn!(path = %path.display(), "dropping an incomplete last event line left by a crash");
        file.set_len(pos + complete as u64).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    let Some(range) = last else {
        return Ok(Head {
            seq: 0,
            hash: GENESIS.into(),
        });
    };
    let line = &tail[range];
    let ev: Event = serde_json::from_slice(line).map_err(|e| AuditError::Malformed {
        path: path.into(),
        line: line_count(path).unwrap_or(0),
        why: e.to_string(),
    })?;
    Ok(Head {
        seq: ev.seq,
        hash: line_hash(line),
    })
}

/// Number of complete lines of a file (for messages about its last line).
fn line_count(path: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    let mut reader = BufReader::new(File::open(path)?);
    let mut buf = Vec::new();
    while reader.read_until(b'\n', &mut buf)? > 0 {
        n += 1;
        buf.clear();
    }
    Ok(n)
}

/// Append already-chained events and fsync. The caller holds the registry lock.
pub fn append(path: &Path, events: &[Event]) -> Result<Head, AuditError> {
    let io = |source| AuditError::Io {
        path: path.into(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let mut buf = Vec::new();
    let mut head = Head::default();
    for ev in events {
        let line = encode(ev);
        head = Head {
            seq: ev.seq,
            hash: line_hash(&line),
        };
        buf.extend_from_slice(&line);
        buf.push(b'\n');
    }
    file.seek(SeekFrom::End(0)).map_err(io)?;
    // One write for the whole batch: a crash leaves either all of it or a torn tail that
    // `open_head` drops and the registry journal replays.
    file.write_all(&buf).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(head)
}

/// Number and chain a batch of drafts after `head`.
pub fn chain(
    head: &Head,
    drafts: &[Draft],
    now: OffsetDateTime,
    actor: &Actor,
    client: &Client,
) -> Vec<Event> {
    let mut prev = head.hash.clone();
    let mut seq = head.seq;
    drafts
        .iter()
        .map(|d| {
            seq += 1;
            let ev = Event {
                seq,
                time: now,
                actor: actor.clone(),
                client: client.clone(),
                action: d.action.clone(),
                subject: d.subject.clone(),
                details: d.details.clone(),
                prev: prev.clone(),
            };
            prev = line_hash(&encode(&ev));
            ev
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn actor() -> Actor {
        Actor {
            user: "alice".into(),
            uid: 1000,
            host: "box".into(),
            pid: 42,
        }
    }

    fn write_events(path: &Path, n: usize) -> Head {
        let drafts: Vec<Draft> = (0..n)
            .map(|i| Draft::new("instance.reserve", &format!("i{i}"), json!({"i": i})))
            .collect();
        let evs = chain(&open_head(path).unwrap(), &drafts, OffsetDateTime::UNIX_EPOCH, &actor(), &Client::provider("1.0.3"));
        append(path, &evs).unwrap()
    }

    #[test]
    fn chain_verifies_across_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        write_events(&p, 3);
        let head = write_events(&p, 2);
        let v = verify(&p, Some(&head)).unwrap();
        assert_eq!(v.events, 5);
        assert_eq!(read_all(&p).unwrap()[4].seq, 5);
    }

    #[test]
    fn removed_line_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        write_events(&p, 4);
        let text = std::fs::read_to_string(&p).unwrap();
        let kept: Vec<&str> = text.lines().enumerate().filter(|(i, _)| *i != 1).map(|(_, l)| l).collect();
        std::fs::write(&p, kept.join("\n") + "\n").unwrap();
        let err = verify(&p, None).unwrap_err();
        assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");
    }

    #[test]
    fn edited_line_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        write_events(&p, 3);
        let text = std::fs::read_to_string(&p).unwrap().replacen("\"i0\"", "\"evil\"", 1);
        std::fs::write(&p, text).unwrap();
        let err = verify(&p, None).unwrap_err();
        assert!(matches!(err, AuditError::Broken { line: 2, .. }), "{err}");
    }

    #[test]
    fn edited_last_line_is_detected_against_registry_head() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let head = write_events(&p, 2);
        let text = std::fs::read_to_string(&p).unwrap().replacen("\"i1\"", "\"evil\"", 1);
        std::fs::write(&p, text).unwrap();
        assert!(verify(&p, None).is_ok());
        assert!(verify(&p, Some(&head)).is_err());
    }

    fn write_big_event(path: &Path, bytes: usize) -> Head {
        let drafts = vec![Draft::new("instance.update", "big", json!({"blob": "x".repeat(bytes)}))];
        let evs = chain(&open_head(path).unwrap(), &drafts, OffsetDateTime::UNIX_EPOCH, &actor(), &Client::provider("1.0.3"));
        append(path, &evs).unwrap()
    }

    #[test]
    fn head_is_found_when_the_last_line_is_longer_than_a_read_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        write_events(&p, 3);
        let head = write_big_event(&p, 50_000);
        assert_eq!(head.seq, 4);
        assert_eq!(open_head(&p).unwrap(), head);
        assert_eq!(verify(&p, Some(&head)).unwrap().events, 4);
    }

    #[test]
    fn torn_tail_longer_than_a_read_chunk_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let head = write_events(&p, 2);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(format!("{{\"seq\":3,\"details\":\"{}", "y".repeat(40_000)).as_bytes()).unwrap();
        assert_eq!(open_head(&p).unwrap(), head);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn single_torn_line_leaves_an_empty_log() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        std::fs::write(&p, b"{\"seq\":1,").unwrap();
        assert_eq!(open_head(&p).unwrap(), Head { seq: 0, hash: GENESIS.into() });
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
    }

    #[test]
    fn torn_last_line_is_dropped_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.jsonl");
        let head = write_events(&p, 2);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":3,\"ti").unwrap();
        assert_eq!(open_head(&p).unwrap(), head);
        assert!(verify(&p, Some(&head)).is_ok());
    }
}

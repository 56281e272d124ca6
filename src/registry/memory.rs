//! The in-memory twin of the file store: the same contract (one lock per change, document and
//! events written together, nothing written when a change fails), for fast tests such as the
//! seed's architecture test.

use std::sync::Mutex;

use time::OffsetDateTime;

use crate::audit::{self, Actor, Client, Event, Head, Verified};

use super::{journal, journal_head, Change, Document, RegistryError, Store};

/// A registry held in memory.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<(Document, Vec<Event>)>,
}

impl MemoryStore {
    /// An empty registry.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }
}

impl Store for MemoryStore {
    fn location(&self) -> String {
        "in-memory registry".into()
    }

    fn load(&self) -> Result<Document, RegistryError> {
        Ok(self.inner.lock().expect("registry lock").0.clone())
    }

    fn commit(
        &self,
        change: &mut Change<'_>,
        now: OffsetDateTime,
        actor: &Actor,
        client: &Client,
    ) -> Result<(), RegistryError> {
        let mut guard = self.inner.lock().expect("registry lock");
        let mut working = guard.0.clone();
        let drafts = change(&mut working)?;
        if drafts.is_empty() {
            return Ok(());
        }
        let head = guard
            .1
            .last()
            .map(|e| Head {
                seq: e.seq,
                hash: audit::line_hash(&audit::encode(e)),
            })
            .unwrap_or(Head {
                seq: 0,
                hash: audit::GENESIS.into(),
            });
        let events = journal(&mut working, &head, &drafts, now, actor, client);
        guard.0 = working;
        guard.1.extend(events);
        Ok(())
    }

    fn events(&self) -> Result<Vec<Event>, RegistryError> {
        Ok(self.inner.lock().expect("registry lock").1.clone())
    }

    fn verify_events(&self) -> Result<Verified, RegistryError> {
        let guard = self.inner.lock().expect("registry lock");
        let mut head = Head {
            seq: 0,
            hash: audit::GENESIS.into(),
        };
        for (i, e) in guard.1.iter().enumerate() {
            if e.seq != head.seq + 1 || e.prev != head.hash {
                return Err(audit::AuditError::Broken {
                    path: "in-memory".into(),
                    line: i + 1,
                    why: "chain mismatch".into(),
                }
                .into());
            }
            head = Head {
                seq: e.seq,
                hash: audit::line_hash(&audit::encode(e)),
            };
        }
        // As the file store: the log must end where the document says.
        if let Some(want) = journal_head(&guard.0) {
            if want != head {
                return Err(audit::AuditError::Broken {
                    path: "in-memory".into(),
                    line: head.seq as usize,
                    why: format!(
                        "the registry records the newest event as seq {}, the log ends at seq {}",
                        want.seq, head.seq
                    ),
                }
                .into());
            }
        }
        Ok(Verified {
            events: head.seq,
            head,
        })
    }
}

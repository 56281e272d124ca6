//! The storage trait under the registry: one exclusive lock per change, the document and its
//! events written together, nothing written when the change fails. A second store (e.g. on
//! etcd) implements this trait next to [`super::file`] and [`super::memory`].

use time::OffsetDateTime;

use crate::audit::{self, Actor, Client, Draft, Event, Head, Verified};

use super::{Document, Journal, RegistryError};

/// A change to the document: returns the events describing it (none: nothing to write).
pub type Change<'a> = dyn FnMut(&mut Document) -> Result<Vec<Draft>, RegistryError> + 'a;

/// Storage of the registry document and its event log. Two implementations: [`super::file::FileStore`]
/// and [`super::memory::MemoryStore`]; both run every change under one exclusive lock, write the
/// document and its events together, and never write when the change fails.
pub trait Store: Send + Sync {
    /// Where the registry lives (for messages).
    fn location(&self) -> String;
    /// Read the document (an empty one when there is none yet).
    fn load(&self) -> Result<Document, RegistryError>;
    /// Run `change` on the current document under the exclusive lock; when it returns events,
    /// persist the document and append the events, chained after the log's head.
    fn commit(
        &self,
        change: &mut Change<'_>,
        now: OffsetDateTime,
        actor: &Actor,
        client: &Client,
    ) -> Result<(), RegistryError>;
    /// Every event of the log.
    fn events(&self) -> Result<Vec<Event>, RegistryError>;
    /// Verify the hash chain, and that it ends where the document says.
    fn verify_events(&self) -> Result<Verified, RegistryError>;
}

/// The head the document records (for verification against the log).
pub fn journal_head(doc: &Document) -> Option<Head> {
    (doc.journal.seq > 0).then(|| Head {
        seq: doc.journal.seq,
        hash: doc.journal.hash.clone(),
    })
}

/// Chain `drafts` after `head` and record them as the document's journal.
pub(crate) fn journal(doc: &mut Document, head: &Head, drafts: &[Draft], now: OffsetDateTime, actor: &Actor, client: &Client) -> Vec<Event> {
    let events = audit::chain(head, drafts, now, actor, client);
    let last = events.last().expect("at least one draft");
    doc.journal = Journal {
        seq: last.seq,
        hash: audit::line_hash(&audit::encode(last)),
        events: events.clone(),
    };
    events
}

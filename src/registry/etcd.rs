//! The etcd store: one registry shared by several lab hosts, on an etcd v3 cluster.
//!
//! Every lab host's provider reads and writes the same keys under one prefix (default
//! `/homelab/`):
//! - `<prefix>registry/instances/<name>`, `<prefix>registry/released/<name>`,
//!   `<prefix>registry/federations/<id>`: the document's entries, one JSON value each;
//! - `<prefix>registry/holds/<name>`: one key per live reservation, attached to an etcd
//!   **lease** whose TTL is the reservation's. When the lease ends, etcd deletes the key and
//!   the reservation counts as expired from then on (as a file registry's reservation past its
//!   time: it stays visible, so a saved plan applied later gets its values when they are still
//!   free, or `ReservationLost` naming who took them);
//! - `<prefix>registry/journal`: the chain head (format version, newest seq and hash, and the
//!   newest change's events);
//! - `<prefix>events/<seq, 20 digits>`: the audit log, one encoded event line per key.
//!
//! A change reads a snapshot (one revision), runs on it, and writes what it changed in **one
//! transaction** guarded by compares: the journal key's `mod_revision` (or its absence, by
//! `create_revision == 0`, for the very first change) and the `mod_revision` of every key it
//! overwrites or deletes (absence for every key it creates). Every change rewrites the journal,
//! so two changes never both commit on the same snapshot: the loser reads again and re-runs
//! (the registry's operations are written to be re-run: a retried claim gets what it has). The
//! events are put in the same transaction, so the log stays one linear hash chain however many
//! hosts write, and nothing is ever half-written: a transaction commits whole or not at all. No
//! client-side lock exists; etcd's own serialisation is the only one.
//!
//! Reads are cheap: the store keeps the newest snapshot it read or wrote, and a read first asks,
//! in one transaction, for the journal key, the holds, the entry keys written since the kept
//! snapshot and how many entries of each kind there are. When the journal's `mod_revision` is the
//! one kept, the kept entries are still exact (every change rewrites the journal); when it moved,
//! the keys written since are put in, and a kind with fewer entries than kept has its keys listed
//! to drop the deleted ones. The whole registry is read only by a store that holds nothing yet.
//!
//! The client is `etcd-client` (async, tonic); the store runs it on a small runtime of its own
//! and waits for each request, so the [`Store`] trait stays synchronous and the store can be
//! called from inside the provider's own runtime.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue, PutOptions, TlsOptions, Txn,
    TxnOp, TxnOpResponse,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use time::OffsetDateTime;

use crate::audit::{self, Actor, Client as AuditClient, Event, Head, Verified};

use super::format::check_document;
use super::{journal, journal_head, Change, Document, Journal, RegistryError, Status, Store, FORMAT_VERSION};

/// How the provider reaches the etcd cluster (the provider block's `etcd { … }`).
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    /// Client URLs (`http://…` or, with TLS, `https://…`).
    pub endpoints: Vec<String>,
    /// Key prefix every host of one team shares (ends with `/`).
    pub prefix: String,
    /// CA that signed the members' certificates (PEM).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), when the cluster asks for client certificates.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// User name and password, when the cluster has auth enabled.
    pub user: Option<(String, SecretString)>,
    /// How long one request may take before the next member is tried.
    pub timeout: Duration,
}

impl PartialEq for EtcdConfig {
    fn eq(&self, other: &Self) -> bool {
        let user = |c: &EtcdConfig| c.user.as_ref().map(|(n, p)| (n.clone(), p.expose_secret().to_string()));
        self.endpoints == other.endpoints
            && self.prefix == other.prefix
            && self.ca_file == other.ca_file
            && self.identity == other.identity
            && self.timeout == other.timeout
            && user(self) == user(other)
    }
}

impl Eq for EtcdConfig {}

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "/homelab/";

impl EtcdConfig {
    /// A configuration of `endpoints` under `prefix`, without TLS or auth.
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> EtcdConfig {
        EtcdConfig {
            endpoints,
            prefix: prefix.into(),
            ca_file: None,
            identity: None,
            user: None,
            timeout: Duration::from_secs(5),
        }
    }

    /// What is wrong with this configuration, before anything is contacted (for plan-time
    /// diagnostics): (attribute, message) pairs.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.endpoints.is_empty() {
            out.push(("endpoints", "at least one endpoint is needed, e.g. \"http://127.0.0.1:2379\"".to_string()));
        }
        let tls = self.ca_file.is_some() || self.identity.is_some();
        for e in &self.endpoints {
            let host = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://")).map(|h| h.trim_end_matches('/'));
            let port_ok = host.and_then(|h| h.rsplit_once(':')).is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                out.push(("endpoints", format!("{e:?} is not a client URL such as \"http://127.0.0.1:2379\"")));
            } else if tls && e.starts_with("http://") {
                out.push(("endpoints", format!("{e:?} is plain http, but ca_file/cert_file are set: use https:// endpoints with TLS")));
            }
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') || self.prefix.len() < 2 {
            out.push(("prefix", format!("{:?} must start and end with \"/\", e.g. \"/homelab/\"", self.prefix)));
        }
        for (attr, path) in [("ca_file", self.ca_file.as_ref()), ("cert_file", self.identity.as_ref().map(|i| &i.0)), ("key_file", self.identity.as_ref().map(|i| &i.1))] {
            if let Some(p) = path {
                if !p.is_file() {
                    out.push((attr, format!("{} is not a readable file", p.display())));
                }
            }
        }
        if let Some((name, _)) = &self.user {
            if name.is_empty() {
                out.push(("username", "must not be empty when password is set".to_string()));
            }
        }
        out
    }

    /// `etcd://host:port,host:port/prefix/` (or `etcds://` for TLS), for messages and the CLI.
    pub fn url(&self) -> String {
        let tls = self.endpoints.iter().any(|e| e.starts_with("https://"));
        let hosts: Vec<&str> = self
            .endpoints
            .iter()
            .map(|e| e.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/'))
            .collect();
        format!("{}://{}{}", if tls { "etcds" } else { "etcd" }, hosts.join(","), self.prefix)
    }

    /// Parse `etcd://h1:p1,h2:p2/prefix/` (`etcds://` for https). The TLS files and the user
    /// are set apart (CLI flags or environment).
    pub fn parse_url(url: &str) -> Result<EtcdConfig, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not an etcd URL such as etcd://127.0.0.1:2379/homelab/"))?;
        let http = match scheme {
            "etcd" => "http",
            "etcds" => "https",
            _ => return Err(format!("{url:?}: the scheme must be etcd:// (or etcds:// for TLS)")),
        };
        let (hosts, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, DEFAULT_PREFIX),
        };
        if hosts.is_empty() {
            return Err(format!("{url:?} names no endpoint"));
        }
        let mut prefix = path.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let endpoints = hosts.split(',').map(|h| format!("{http}://{h}")).collect();
        Ok(EtcdConfig::new(endpoints, prefix))
    }
}

/// What can go wrong talking to etcd. Every message names the endpoints and what to do.
#[derive(Debug, Error)]
pub enum EtcdError {
    /// No member answered.
    #[error("etcd registry at {endpoints}: no member answered ({why}). Check that etcd runs at these endpoints and that this host reaches them; nothing was changed")]
    Unreachable {
        /// The endpoints.
        endpoints: String,
        /// The client's words.
        why: String,
    },
    /// The user name or password was refused, or the user may not touch the prefix.
    #[error("etcd registry at {endpoints}: {why}. Check `username`/`password` in the provider's etcd block (and that the user's role grants readwrite on the prefix {prefix}); nothing was changed")]
    Auth {
        /// The endpoints.
        endpoints: String,
        /// The prefix.
        prefix: String,
        /// etcd's words.
        why: String,
    },
    /// The TLS handshake failed (unknown CA, missing or refused client certificate, http vs https).
    #[error("etcd registry at {endpoints}: the TLS connection failed ({why}). Check `ca_file` (the CA that signed the members' certificates), `cert_file`/`key_file` (when the cluster asks for client certificates) and that the endpoints say https://; nothing was changed")]
    Tls {
        /// The endpoints.
        endpoints: String,
        /// The client's words.
        why: String,
    },
    /// A file of the configuration cannot be read.
    #[error("etcd registry: cannot read {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// etcd refused or failed a request.
    #[error("etcd registry at {endpoints}: {what} failed: {why}; nothing was changed")]
    Request {
        /// The endpoints.
        endpoints: String,
        /// What was being done.
        what: &'static str,
        /// etcd's words.
        why: String,
    },
    /// A key holds something that is not this build's registry.
    #[error("etcd registry at {endpoints}: key {key} is not a registry entry of this provider ({why}); nothing was changed. Look at it with `etcdctl get {key}`")]
    Corrupt {
        /// The endpoints.
        endpoints: String,
        /// The key.
        key: String,
        /// Why.
        why: String,
    },
    /// The keys were written by a newer provider.
    #[error("etcd registry at {endpoints}: format version {found} is not supported (this provider reads version {FORMAT_VERSION}); use a provider version that knows it")]
    UnknownVersion {
        /// The endpoints.
        endpoints: String,
        /// The version found.
        found: u32,
    },
    /// Other writers kept winning for longer than a change may wait.
    #[error("etcd registry at {endpoints}: {attempts} attempts in a row lost to other hosts' changes; nothing was changed. Try again")]
    Contention {
        /// The endpoints.
        endpoints: String,
        /// How many.
        attempts: u32,
    },
    /// One change touches more keys than one etcd transaction may hold.
    #[error("etcd registry at {endpoints}: this change writes {ops} keys, more than one etcd transaction holds ({limit}, etcd's --max-txn-ops); nothing was changed. Make the change in smaller steps (e.g. drop fewer reservations at once) or raise --max-txn-ops on the members")]
    TooLarge {
        /// The endpoints.
        endpoints: String,
        /// Operations needed.
        ops: usize,
        /// The limit.
        limit: usize,
    },
}

/// What etcd allows in one transaction by default (`--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;
/// Keys read per request when the whole registry is read.
const PAGE: i64 = 2000;
/// How many times a change is tried again after losing to another writer, or after a
/// member failed mid-request.
const ATTEMPTS: u32 = 200;
/// How long one try of a request may take before the next member is tried.
const ATTEMPT: Duration = Duration::from_millis(1500);

/// The newest snapshot read: the entries, with the `mod_revision` of each key, as of the
/// journal's `mod_revision`.
#[derive(Clone, Default)]
struct Snapshot {
    /// `mod_revision` of the journal key (0: no journal yet).
    journal_rev: i64,
    /// The document (holds not yet applied).
    doc: Document,
    /// `mod_revision` of every entry key (instances, released, federations).
    revs: HashMap<String, i64>,
}

/// What [`EtcdStore::heads`] read.
struct Heads {
    /// The revision of the read.
    rev: i64,
    /// The journal key.
    journal: Option<KeyValue>,
    /// The hold keys.
    holds: Vec<KeyValue>,
    /// Keys written since the kept snapshot (when one is kept).
    changed: Option<Vec<KeyValue>>,
    /// Entries of each kind (instances, released, federations), when a snapshot is kept.
    counts: Vec<i64>,
}

/// The journal key's value.
#[derive(Serialize, Deserialize)]
struct JournalValue {
    version: u32,
    #[serde(flatten)]
    journal: Journal,
}

/// A hold key's value: which reservation it keeps alive.
#[derive(Serialize, Deserialize, PartialEq, Eq, Clone, Debug)]
struct HoldValue {
    /// The reservation's expiry, as recorded (rfc3339).
    #[serde(with = "time::serde::rfc3339")]
    expires_at: OffsetDateTime,
}

/// The etcd store.
pub struct EtcdStore {
    config: EtcdConfig,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    inner: Mutex<Option<Arc<Inner>>>,
    cache: Mutex<Option<Arc<Snapshot>>>,
    endpoints: String,
    /// Set when a request found no member within its budget.
    gave_up: AtomicBool,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("location", &self.location()).finish()
    }
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // The store may be dropped inside another runtime, where a blocking shutdown panics.
        if let Some(rt) = self.runtime.lock().map(|mut g| g.take()).unwrap_or(None) {
            rt.shutdown_background();
        }
    }
}

/// The keys of one prefix.
struct Keys<'a>(&'a str);

impl Keys<'_> {
    fn registry(&self) -> String {
        format!("{}registry/", self.0)
    }
    fn instance(&self, name: &str) -> String {
        format!("{}registry/instances/{name}", self.0)
    }
    fn released(&self, name: &str) -> String {
        format!("{}registry/released/{name}", self.0)
    }
    fn federation(&self, id: &str) -> String {
        format!("{}registry/federations/{id}", self.0)
    }
    fn holds(&self) -> String {
        format!("{}registry/holds/", self.0)
    }
    fn hold(&self, name: &str) -> String {
        format!("{}registry/holds/{name}", self.0)
    }
    fn journal(&self) -> String {
        format!("{}registry/journal", self.0)
    }
    fn events(&self) -> String {
        format!("{}events/", self.0)
    }
    fn event(&self, seq: u64) -> String {
        format!("{}events/{seq:020}", self.0)
    }
}

/// Whether a failed request may succeed on another try (a member died or lost its leader).
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Aborted
                    | tonic::Code::Unknown
                    // The client's own timeout ("Timeout expired") or a connection that closed
                    // under the request ("operation was canceled"): another member may answer.
                    | tonic::Code::Cancelled
            ) || s.message().contains("leader changed")
                || s.message().contains("no leader")
                || s.message().contains("timed out")
                || s.message().contains("requested lease not found")
                || s.message().contains("required revision has been compacted")
        }
        // A TLS handshake that fails fails again: not worth another try.
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => !tls_failure(&words(e).to_lowercase()),
        _ => false,
    }
}

/// Whether a client error's words say the TLS handshake failed.
fn tls_failure(lower: &str) -> bool {
    lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") || lower.contains("invalidcontenttype") || lower.contains("corrupt message")
}

/// The whole chain of a client error, in words.
fn words(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let w = s.to_string();
        if !out.contains(&w) {
            out.push_str(": ");
            out.push_str(&w);
        }
        src = s.source();
    }
    out
}

impl EtcdStore {
    /// A store on `config` (nothing is contacted before the first read).
    pub fn new(config: EtcdConfig) -> EtcdStore {
        let endpoints = config.endpoints.join(",");
        EtcdStore {
            config,
            runtime: Mutex::new(None),
            inner: Mutex::new(None),
            cache: Mutex::new(None),
            endpoints,
            gave_up: AtomicBool::new(false),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    fn keys(&self) -> Keys<'_> {
        Keys(&self.config.prefix)
    }

    /// Run `fut` on the store's runtime and wait for it (from any thread, in or out of a
    /// runtime).
    fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        {
            let mut guard = self.runtime.lock().expect("etcd runtime lock");
            let rt = guard.get_or_insert_with(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("homelab-etcd")
                    .enable_all()
                    .build()
                    .expect("the etcd store's runtime")
            });
            rt.spawn(async move {
                let _ = tx.send(fut.await);
            });
        }
        rx.recv().expect("the etcd store's runtime ended")
    }

    /// Classify a client error.
    fn error(&self, what: &'static str, e: etcd_client::Error) -> EtcdError {
        let why = words(&e);
        let endpoints = self.endpoints.clone();
        let lower = why.to_lowercase();
        if let etcd_client::Error::GRpcStatus(s) = &e {
            if matches!(s.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied)
                || lower.contains("authentication failed")
                || lower.contains("permission denied")
                || lower.contains("user name is empty")
                || lower.contains("invalid auth token")
            {
                return EtcdError::Auth {
                    endpoints,
                    prefix: self.config.prefix.clone(),
                    why: s.message().to_string(),
                };
            }
        }
        if tls_failure(&lower) {
            return EtcdError::Tls { endpoints, why };
        }
        if transient(&e) {
            return EtcdError::Unreachable { endpoints, why };
        }
        EtcdError::Request { endpoints, what, why }
    }

    /// The client of member `at` (modulo the endpoints; connecting on first use): one client
    /// per endpoint, so that a request that fails on one member is tried on the next.
    async fn client(inner: &Inner, at: usize) -> Result<Client, etcd_client::Error> {
        let mut guard = inner.clients[at % inner.endpoints.len()].lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = Client::connect([inner.endpoints[at % inner.endpoints.len()].clone()], Some(inner.options.clone())).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// What the async side needs (made once, then shared by every request).
    fn inner(&self) -> Result<Arc<Inner>, EtcdError> {
        let mut kept = self.inner.lock().expect("etcd client lock");
        if let Some(inner) = kept.as_ref() {
            return Ok(inner.clone());
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.config.timeout)
            .with_timeout(self.config.timeout)
            .with_keep_alive(Duration::from_secs(10), self.config.timeout)
            .with_require_leader(true);
        if let Some((name, password)) = &self.config.user {
            options = options.with_user(name.clone(), password.expose_secret().to_string());
        }
        if self.config.ca_file.is_some() || self.config.identity.is_some() {
            let read = |p: &Path| std::fs::read(p).map_err(|source| EtcdError::File { path: p.into(), source });
            let mut tls = TlsOptions::new();
            if let Some(ca) = &self.config.ca_file {
                tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let Some((cert, key)) = &self.config.identity {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        let inner = Arc::new(Inner {
            endpoints: self.config.endpoints.clone(),
            options,
            clients: self.config.endpoints.iter().map(|_| tokio::sync::Mutex::new(None)).collect(),
            current: AtomicUsize::new(0),
        });
        *kept = Some(inner.clone());
        Ok(inner)
    }

    /// Run one request (`f` on a connected client), trying again while members fail over.
    fn request<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, EtcdError>
    where
        T: Send + 'static,
        F: Fn(Client) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, etcd_client::Error>> + Send,
    {
        let inner = self.inner()?;
        // Members fail over within an election (about a second); a request keeps trying for
        // the configured timeout, then reports what the last try said.
        // Once no member answered within that, later requests of this store try once.
        let budget = if self.gave_up.load(Ordering::Relaxed) {
            Duration::ZERO
        } else {
            self.config.timeout
        };
        let result = self.block(async move {
            let deadline = tokio::time::Instant::now() + budget;
            let mut attempt: u64 = 0;
            loop {
                attempt += 1;
                // One try: on the member in use, for at most a part of the budget (a member that
                // hangs, paused or cut off, must not eat all of it).
                let at = inner.current.load(Ordering::Relaxed);
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let attempt_for = if left.is_zero() { ATTEMPT } else { ATTEMPT.min(left).max(Duration::from_millis(250)) };
                let outcome = match tokio::time::timeout(attempt_for, async {
                    match EtcdStore::client(&inner, at).await {
                        Ok(client) => f(client).await,
                        Err(e) => Err(e),
                    }
                })
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(etcd_client::Error::GRpcStatus(tonic::Status::cancelled("Timeout expired"))),
                };
                let e = match outcome {
                    Ok(v) => return Ok(v),
                    Err(e) => e,
                };
                if words(&e).to_lowercase().contains("invalid auth token") && attempt < 3 {
                    // The token expired (etcd's simple tokens live 5 minutes): connect again.
                    for c in &inner.clients {
                        *c.lock().await = None;
                    }
                    continue;
                }
                if !transient(&e) || tokio::time::Instant::now() >= deadline {
                    return Err(e);
                }
                // The next member, from now on (unless another request moved on already).
                let _ = inner.current.compare_exchange(at, at + 1, Ordering::Relaxed, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50 + 25 * attempt.min(20))).await;
            }
        });
        if result.is_ok() {
            self.gave_up.store(false, Ordering::Relaxed);
        }
        result.map_err(|e| {
            let e = self.error(what, e);
            if matches!(e, EtcdError::Unreachable { .. }) {
                self.gave_up.store(true, Ordering::Relaxed);
            }
            e
        })
    }

    /// In one transaction (one revision): the journal key, the holds, and, when a snapshot
    /// taken at journal revision `since` is kept, every entry key written since then and the
    /// number of entries of each kind (to tell which were deleted).
    fn heads(&self, since: Option<i64>) -> Result<Heads, EtcdError> {
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

    /// Every key under `from` (a prefix) at `rev` (0: newest), page by page.
    fn range(&self, from: String, rev: i64) -> Result<Vec<KeyValue>, EtcdError> {
        let end = prefix_end(&from);
        let mut out: Vec<KeyValue> = Vec::new();
        let mut start = from.into_bytes();
        loop {
            let (s, e) = (start.clone(), end.clone());
            let resp = self.request("reading the registry", move |mut c| {
                let opts = GetOptions::new().with_range(e.clone()).with_limit(PAGE).with_revision(rev);
                let s = s.clone();
                async move { c.get(s, Some(opts)).await }
            })?;
            let kvs = resp.kvs();
            if let Some(last) = kvs.last() {
                let mut next = last.key().to_vec();
                next.push(0);
                start = next;
            }
            out.extend_from_slice(kvs);
            if !resp.more() || kvs.is_empty() {
                return Ok(out);
            }
        }
    }

    fn corrupt(&self, key: &[u8], why: impl std::fmt::Display) -> EtcdError {
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
    fn snapshot(&self) -> Result<(Arc<Snapshot>, Vec<KeyValue>), RegistryError> {
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
    fn refresh(&self, kept: Arc<Snapshot>, changed: &[KeyValue], counts: &[i64], rev: i64) -> Result<Snapshot, EtcdError> {
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

    /// The keys (only) under `from` at `rev`.
    fn range_keys(&self, from: String, rev: i64) -> Result<Vec<Vec<u8>>, EtcdError> {
        let end = prefix_end(&from);
        let mut out = Vec::new();
        let mut start = from.into_bytes();
        loop {
            let (s, e) = (start.clone(), end.clone());
            let resp = self.request("reading the registry", move |mut c| {
                let opts = GetOptions::new().with_range(e.clone()).with_limit(PAGE).with_revision(rev).with_keys_only();
                let s = s.clone();
                async move { c.get(s, Some(opts)).await }
            })?;
            let kvs = resp.kvs();
            if let Some(last) = kvs.last() {
                let mut next = last.key().to_vec();
                next.push(0);
                start = next;
            }
            out.extend(kvs.iter().map(|kv| kv.key().to_vec()));
            if !resp.more() || kvs.is_empty() {
                return Ok(out);
            }
        }
    }

    /// The document the keys `kvs` (the whole `registry/` range) hold.
    fn parse(&self, kvs: &[KeyValue]) -> Result<Snapshot, EtcdError> {
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
    fn with_holds(&self, mut doc: Document, holds: &[KeyValue]) -> Document {
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

    /// Grant a lease of `ttl` seconds.
    fn grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let resp = self.request("granting a lease for a reservation", move |mut c| async move { c.lease_grant(ttl, None).await })?;
        Ok(resp.id())
    }

    /// Revoke leases, in the background (best effort: one left unrevoked, because the process
    /// ended first, holds no key any more and ends by itself at its TTL).
    fn revoke(&self, leases: Vec<i64>) {
        if leases.is_empty() {
            return;
        }
        let Ok(inner) = self.inner() else { return };
        let guard = self.runtime.lock().expect("etcd runtime lock");
        let Some(rt) = guard.as_ref() else { return };
        rt.spawn(async move {
            let at = inner.current.load(Ordering::Relaxed);
            let Ok(mut c) = EtcdStore::client(&inner, at).await else { return };
            for id in leases {
                if let Err(e) = c.lease_revoke(id).await {
                    if !words(&e).contains("lease not found") {
                        tracing::debug!(error = %e, lease = id, "revoking a lease (it ends by itself)");
                    }
                }
            }
        });
    }

    /// Whether the newest of `events` is in the log, exactly (its seq's key holds its line): a
    /// transaction re-sent after its answer was lost finds its own commit in the way. Events
    /// carry their time, actor and process, so no other change writes the same line.
    fn landed(&self, events: &[Event]) -> bool {
        let Some(last) = events.last() else { return false };
        let key = self.keys().event(last.seq);
        let line = audit::encode(last);
        match self.request("reading the registry", move |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        }) {
            Ok(resp) => resp.kvs().first().is_some_and(|kv| kv.value() == line.as_slice()),
            Err(_) => false,
        }
    }

    /// Keep, as the snapshot at journal revision `rev`, `snap` with what the change just
    /// committed (the entries of `working` that differ from `base`, and its journal): the next
    /// read of this store then needs no range read.
    fn keep_written(&self, snap: Arc<Snapshot>, base: &Document, working: &Document, rev: i64) {
        let mut cache = self.cache.lock().expect("etcd cache");
        *cache = None;
        if rev == 0 {
            return;
        }
        let mut next = Arc::unwrap_or_clone(snap);
        let keys = self.keys();
        for (name, e) in working.instances.iter().filter(|(k, e)| base.instances.get(*k) != Some(*e)) {
            next.doc.instances.insert(name.clone(), e.clone());
            next.revs.insert(keys.instance(name), rev);
        }
        for name in base.instances.keys().filter(|k| !working.instances.contains_key(*k)) {
            next.doc.instances.remove(name);
            next.revs.remove(&keys.instance(name));
        }
        for (name, r) in working.released.iter().filter(|(k, r)| base.released.get(*k) != Some(*r)) {
            next.doc.released.insert(name.clone(), r.clone());
            next.revs.insert(keys.released(name), rev);
        }
        for name in base.released.keys().filter(|k| !working.released.contains_key(*k)) {
            next.doc.released.remove(name);
            next.revs.remove(&keys.released(name));
        }
        for (id, f) in working.federations.iter().filter(|(k, f)| base.federations.get(*k) != Some(*f)) {
            next.doc.federations.insert(id.clone(), f.clone());
            next.revs.insert(keys.federation(id), rev);
        }
        for id in base.federations.keys().filter(|k| !working.federations.contains_key(*k)) {
            next.doc.federations.remove(id);
            next.revs.remove(&keys.federation(id));
        }
        next.doc.journal = working.journal.clone();
        next.journal_rev = rev;
        *cache = Some(Arc::new(next));
    }

    /// Write `working` (changed from `snap`) with `events`: the transaction's compares and
    /// operations, and the leases it grants and the ones it makes unused.
    fn write_set(
        &self,
        snap: &Snapshot,
        base: &Document,
        holds: &[KeyValue],
        working: &Document,
        events: &[Event],
        now: OffsetDateTime,
    ) -> Result<(Vec<Compare>, Vec<TxnOp>, Vec<i64>, Vec<i64>), EtcdError> {
        let keys = self.keys();
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        let mut granted = Vec::new();
        let mut unused = Vec::new();
        let put = |key: String, value: Vec<u8>, compares: &mut Vec<Compare>, ops: &mut Vec<TxnOp>| {
            match snap.revs.get(&key) {
                Some(rev) => compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev)),
                None => compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0)),
            }
            ops.push(TxnOp::put(key, value, None));
        };
        // Instances, released, federations: put what changed (compared as values; only those
        // are serialised), delete what went.
        for (name, e) in working.instances.iter().filter(|(k, e)| base.instances.get(*k) != Some(*e)) {
            put(keys.instance(name), enc(e), &mut compares, &mut ops);
        }
        for (name, r) in working.released.iter().filter(|(k, r)| base.released.get(*k) != Some(*r)) {
            put(keys.released(name), enc(r), &mut compares, &mut ops);
        }
        for (id, f) in working.federations.iter().filter(|(k, f)| base.federations.get(*k) != Some(*f)) {
            put(keys.federation(id), enc(f), &mut compares, &mut ops);
        }
        let gone = base
            .instances
            .keys()
            .filter(|k| !working.instances.contains_key(*k))
            .map(|k| keys.instance(k))
            .chain(base.released.keys().filter(|k| !working.released.contains_key(*k)).map(|k| keys.released(k)))
            .chain(base.federations.keys().filter(|k| !working.federations.contains_key(*k)).map(|k| keys.federation(k)));
        for key in gone {
            if let Some(rev) = snap.revs.get(&key) {
                compares.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev));
            }
            ops.push(TxnOp::delete(key, None));
        }
        // Holds: one per live reservation, on a lease of its remaining time.
        let prefix = keys.holds();
        let held: HashMap<String, (i64, Option<HoldValue>)> = holds
            .iter()
            .filter_map(|kv| {
                let name = kv.key_str().ok()?.strip_prefix(prefix.as_str())?.to_string();
                Some((name, (kv.lease(), serde_json::from_slice(kv.value()).ok())))
            })
            .collect();
        for e in working.instances.values() {
            let want = (e.status == Status::Reserved)
                .then_some(e.reservation.as_ref())
                .flatten()
                .filter(|r| r.taken.is_none() && r.expires_at > now)
                .map(|r| HoldValue { expires_at: r.expires_at });
            let have = held.get(&e.name);
            match (&want, have) {
                (Some(w), Some((_, Some(h)))) if w == h => {}
                (Some(w), _) => {
                    let ttl = ((w.expires_at - now).whole_milliseconds() as f64 / 1000.0).ceil().max(1.0) as i64;
                    let lease = self.grant(ttl)?;
                    granted.push(lease);
                    let value = serde_json::to_vec(w).expect("hold");
                    ops.push(TxnOp::put(keys.hold(&e.name), value, Some(PutOptions::new().with_lease(lease))));
                    if let Some((old, _)) = have {
                        if *old != 0 {
                            unused.push(*old);
                        }
                    }
                }
                (None, Some((old, _))) => {
                    ops.push(TxnOp::delete(keys.hold(&e.name), None));
                    if *old != 0 {
                        unused.push(*old);
                    }
                }
                (None, None) => {}
            }
        }
        for (name, (old, _)) in &held {
            if !working.instances.contains_key(name) {
                ops.push(TxnOp::delete(keys.hold(name), None));
                if *old != 0 {
                    unused.push(*old);
                }
            }
        }
        // The chain head, guarded: changes commit one after another.
        compares.push(if snap.journal_rev > 0 {
            Compare::mod_revision(keys.journal(), CompareOp::Equal, snap.journal_rev)
        } else {
            Compare::create_revision(keys.journal(), CompareOp::Equal, 0)
        });
        let head = JournalValue {
            version: FORMAT_VERSION,
            journal: working.journal.clone(),
        };
        ops.push(TxnOp::put(keys.journal(), serde_json::to_vec(&head).expect("journal"), None));
        for ev in events {
            ops.push(TxnOp::put(keys.event(ev.seq), audit::encode(ev), None));
        }
        Ok((compares, ops, granted, unused))
    }
}

/// A random pause before attempt `attempt + 1` of a change that lost to another writer: up to
/// 1, 2, 4, … 64 ms.
fn backoff(attempt: u32) -> Duration {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let mix = (u64::from(nanos) ^ u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let cap_us = 1000u64 << attempt.min(6);
    Duration::from_micros((mix >> 11) % cap_us)
}

/// What a request on the store's runtime needs.
struct Inner {
    endpoints: Vec<String>,
    options: ConnectOptions,
    clients: Vec<tokio::sync::Mutex<Option<Client>>>,
    /// The member requests go to (modulo the endpoints) until one fails there.
    current: AtomicUsize,
}

/// The end of the key range of all keys starting with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The stored form of an entry, a released record or a federation record.
fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("registry values serialise")
}

impl Store for EtcdStore {
    fn location(&self) -> String {
        format!("etcd registry {}", self.config.url())
    }

    fn load(&self) -> Result<Document, RegistryError> {
        let (snap, holds) = self.snapshot()?;
        Ok(self.with_holds(Arc::unwrap_or_clone(snap).doc, &holds))
    }

    fn commit(&self, change: &mut Change<'_>, now: OffsetDateTime, actor: &Actor, client: &AuditClient) -> Result<(), RegistryError> {
        for attempt in 0..ATTEMPTS {
            let (snap, holds) = self.snapshot()?;
            let base = self.with_holds(snap.doc.clone(), &holds);
            let mut working = base.clone();
            let drafts = change(&mut working)?;
            if drafts.is_empty() {
                return Ok(());
            }
            let head = journal_head(&snap.doc).unwrap_or(Head {
                seq: 0,
                hash: audit::GENESIS.into(),
            });
            let events = journal(&mut working, &head, &drafts, now, actor, client);
            let (compares, ops, granted, unused) = self.write_set(&snap, &base, &holds, &working, &events, now)?;
            if ops.len() > MAX_TXN_OPS || compares.len() > MAX_TXN_OPS {
                self.revoke(granted);
                return Err(EtcdError::TooLarge {
                    endpoints: self.endpoints.clone(),
                    ops: ops.len().max(compares.len()),
                    limit: MAX_TXN_OPS,
                }
                .into());
            }
            let txn = Txn::new().when(compares).and_then(ops);
            let outcome = self.request("writing the registry", move |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            });
            match outcome {
                Ok(resp) if resp.succeeded() => {
                    self.revoke(unused);
                    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                    self.keep_written(snap, &base, &working, rev);
                    return Ok(());
                }
                Ok(_) | Err(_) if self.landed(&events) => {
                    // A try whose answer was lost (a member died under it) committed, and the
                    // next try lost to it: this change is in, with its leases.
                    self.revoke(unused);
                    *self.cache.lock().expect("etcd cache") = None;
                    return Ok(());
                }
                Ok(_) => {
                    // Another host committed first: read again (what changed) and run again,
                    // after a random pause that grows with the attempts.
                    self.revoke(granted);
                    drop(snap);
                    std::thread::sleep(backoff(attempt));
                }
                Err(e) => {
                    self.revoke(granted);
                    *self.cache.lock().expect("etcd cache") = None;
                    return Err(e.into());
                }
            }
        }
        Err(EtcdError::Contention {
            endpoints: self.endpoints.clone(),
            attempts: ATTEMPTS,
        }
        .into())
    }

    fn events(&self) -> Result<Vec<Event>, RegistryError> {
        let kvs = self.range(self.keys().events(), 0)?;
        kvs.iter()
            .map(|kv| serde_json::from_slice(kv.value()).map_err(|e| self.corrupt(kv.key(), e).into()))
            .collect()
    }

    fn verify_events(&self) -> Result<Verified, RegistryError> {
        // The journal first, then the log at that same revision.
        let heads = self.heads(None)?;
        let (rev, journal) = (heads.rev, heads.journal);
        let head = match &journal {
            Some(kv) => {
                let v: JournalValue = serde_json::from_slice(kv.value()).map_err(|e| self.corrupt(kv.key(), e))?;
                journal_head(&Document {
                    journal: v.journal,
                    ..Document::default()
                })
            }
            None => None,
        };
        let kvs = self.range(self.keys().events(), rev)?;
        let mut lines = Vec::new();
        for kv in &kvs {
            lines.extend_from_slice(kv.value());
            lines.push(b'\n');
        }
        let name = PathBuf::from(format!("{}events", self.config.url()));
        Ok(audit::verify_from(&lines[..], &name, head.as_ref())?)
    }
}

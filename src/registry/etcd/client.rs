//! Talking to the members: the store's own runtime (so the synchronous [`super::Store`] calls
//! can be made from inside another runtime), one client per member, a request tried on the next
//! member when one fails or hangs (within the configured timeout), errors classified into
//! [`EtcdError`], and paged range reads.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, KeyValue, TlsOptions};
use secrecy::ExposeSecret;

use super::error::EtcdError;
use super::EtcdStore;

/// Keys read per request when a range is read.
const PAGE: i64 = 2000;
/// How long one try of a request may take before the next member is tried.
const ATTEMPT: Duration = Duration::from_millis(1500);

/// Whether a failed request may succeed on another try (a member died or lost its leader).
pub(super) fn transient(e: &etcd_client::Error) -> bool {
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
pub(super) fn tls_failure(lower: &str) -> bool {
    lower.contains("certificate") || lower.contains("tls") || lower.contains("handshake") || lower.contains("invalidcontenttype") || lower.contains("corrupt message")
}

/// The whole chain of a client error, in words.
pub(super) fn words(e: &(dyn std::error::Error + 'static)) -> String {
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

/// What a request on the store's runtime needs.
pub(super) struct Inner {
    pub(super) endpoints: Vec<String>,
    pub(super) options: ConnectOptions,
    pub(super) clients: Vec<tokio::sync::Mutex<Option<Client>>>,
    /// The member requests go to (modulo the endpoints) until one fails there.
    pub(super) current: AtomicUsize,
}

/// The end of the key range of all keys starting with `prefix`.
pub(super) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// Run `fut` on the store's runtime and wait for it (from any thread, in or out of a
    /// runtime).
    pub(super) fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> T {
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
    pub(super) fn error(&self, what: &'static str, e: etcd_client::Error) -> EtcdError {
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
    pub(super) async fn client(inner: &Inner, at: usize) -> Result<Client, etcd_client::Error> {
        let mut guard = inner.clients[at % inner.endpoints.len()].lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = Client::connect([inner.endpoints[at % inner.endpoints.len()].clone()], Some(inner.options.clone())).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// What the async side needs (made once, then shared by every request).
    pub(super) fn inner(&self) -> Result<Arc<Inner>, EtcdError> {
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
    pub(super) fn request<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, EtcdError>
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

    /// Every key under `from` (a prefix) at `rev` (0: newest), page by page.
    pub(super) fn range(&self, from: String, rev: i64) -> Result<Vec<KeyValue>, EtcdError> {
        self.paged(from, rev, false)
    }

    /// The keys (only) under `from` at `rev`.
    pub(super) fn range_keys(&self, from: String, rev: i64) -> Result<Vec<Vec<u8>>, EtcdError> {
        Ok(self.paged(from, rev, true)?.into_iter().map(|kv| kv.key().to_vec()).collect())
    }

    /// The keys under `from` at `rev`, with their values unless `keys_only`, page by page.
    fn paged(&self, from: String, rev: i64, keys_only: bool) -> Result<Vec<KeyValue>, EtcdError> {
        let end = prefix_end(&from);
        let mut out: Vec<KeyValue> = Vec::new();
        let mut start = from.into_bytes();
        loop {
            let (s, e) = (start.clone(), end.clone());
            let resp = self.request("reading the registry", move |mut c| {
                let mut opts = GetOptions::new().with_range(e.clone()).with_limit(PAGE).with_revision(rev);
                if keys_only {
                    opts = opts.with_keys_only();
                }
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
}

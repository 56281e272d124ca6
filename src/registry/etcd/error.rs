//! What can go wrong talking to etcd ([`EtcdError`]), each message naming the endpoints and
//! what to do.

use std::path::PathBuf;

use thiserror::Error;

use crate::registry::FORMAT_VERSION;

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

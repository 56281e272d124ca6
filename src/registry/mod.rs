//! The instance registry (`<home>/instances.json`): which networks every instance holds, as
//! allocations or plan-time reservations, and the rules that keep them pairwise disjoint.
//!
//! - [`alloc`]: the pure allocation rule (first free slot, conflicts, exhaustion).
//! - [`file`]: the file store (sidecar `fs2` lock, write to a temp file + fsync + rename, events
//!   written under the same lock).
//! - [`generations`]: the newest previous versions of the file (hard links made by each commit).
//! - [`repair`]: what `registry check` reports and `registry repair` does about a damaged file
//!   or event log.
//! - [`memory`]: the in-memory twin with the same contract, for fast tests.
//! - [`owner`]: the workspace an entry belongs to and the run that reserved it.
//! - [`declared`]: what the workspace's configuration pins, written down by its validation.
//! - [`interrupted`]: creations not yet seen in their workspace's state (adopted by its next
//!   apply, removed by its destroys).
//! - [`Registry`]: the operations (reserve, claim, release, federate, …) on top of any [`Store`];
//!   each is one locked read-modify-write that records exactly one event per change.

pub mod alloc;
pub mod declared;
pub mod file;
pub mod generations;
pub mod interrupted;
pub mod memory;
pub mod owner;
pub mod repair;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use thiserror::Error;
use time::OffsetDateTime;

use crate::audit::{self, Actor, AuditError, Client, Draft, Event, Head, Verified};
use crate::net::{Ipv4Net, Pool};

pub use alloc::{AllocError, Holder, Occupied};
pub use interrupted::Creating;
pub use owner::{Origin, Workspace};

/// Version of the `instances.json` format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// How many released names remember their networks (to get them back on re-creation).
pub const RELEASED_MEMORY: usize = 64;

/// The kinds of network an instance holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Host-only subnet.
    Subnet,
    /// Kubernetes pod CIDR.
    PodCidr,
    /// Kubernetes service CIDR.
    ServiceCidr,
    /// libvirt management network.
    MgmtCidr,
}

impl Kind {
    /// All kinds, in allocation order.
    pub const ALL: [Kind; 4] = [Kind::Subnet, Kind::PodCidr, Kind::ServiceCidr, Kind::MgmtCidr];

    /// The instance attribute (`subnet`, `pod_cidr`, `service_cidr`, `mgmt_cidr`).
    pub fn attribute(&self) -> &'static str {
        match self {
            Kind::Subnet => "subnet",
            Kind::PodCidr => "pod_cidr",
            Kind::ServiceCidr => "service_cidr",
            Kind::MgmtCidr => "mgmt_cidr",
        }
    }

    /// The provider attribute of its pool.
    pub fn pool_attribute(&self) -> &'static str {
        match self {
            Kind::Subnet => "host_pool",
            Kind::PodCidr => "pod_pool",
            Kind::ServiceCidr => "service_pool",
            Kind::MgmtCidr => "mgmt_pool",
        }
    }

    /// The provider attribute of its pool's slot prefix.
    pub fn prefix_attribute(&self) -> &'static str {
        match self {
            Kind::Subnet => "host_prefix",
            Kind::PodCidr => "pod_prefix",
            Kind::ServiceCidr => "service_prefix",
            Kind::MgmtCidr => "mgmt_prefix",
        }
    }

    /// Short pool name used in data source output (`host`, `pod`, `service`, `mgmt`).
    pub fn pool_name(&self) -> &'static str {
        match self {
            Kind::Subnet => "host",
            Kind::PodCidr => "pod",
            Kind::ServiceCidr => "service",
            Kind::MgmtCidr => "mgmt",
        }
    }
}

/// The four pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pools {
    /// Host-only subnets.
    pub host: Pool,
    /// Pod CIDRs.
    pub pod: Pool,
    /// Service CIDRs.
    pub service: Pool,
    /// libvirt management networks.
    pub mgmt: Pool,
}

impl Pools {
    /// The pool of a kind.
    pub fn get(&self, kind: Kind) -> &Pool {
        match kind {
            Kind::Subnet => &self.host,
            Kind::PodCidr => &self.pod,
            Kind::ServiceCidr => &self.service,
            Kind::MgmtCidr => &self.mgmt,
        }
    }

    /// Every pool with its kind.
    pub fn all(&self) -> [(Kind, Pool); 4] {
        [
            (Kind::Subnet, self.host),
            (Kind::PodCidr, self.pod),
            (Kind::ServiceCidr, self.service),
            (Kind::MgmtCidr, self.mgmt),
        ]
    }
}

/// The networks an instance holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Host-only subnet.
    pub subnet: Ipv4Net,
    /// Pod CIDR.
    pub pod_cidr: Ipv4Net,
    /// Service CIDR.
    pub service_cidr: Ipv4Net,
    /// Management network (libvirt only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mgmt_cidr: Option<Ipv4Net>,
}

impl Allocation {
    /// The network of a kind, if held.
    pub fn get(&self, kind: Kind) -> Option<Ipv4Net> {
        match kind {
            Kind::Subnet => Some(self.subnet),
            Kind::PodCidr => Some(self.pod_cidr),
            Kind::ServiceCidr => Some(self.service_cidr),
            Kind::MgmtCidr => self.mgmt_cidr,
        }
    }

    /// Every network held, with its kind.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, Ipv4Net)> + '_ {
        Kind::ALL.into_iter().filter_map(|k| self.get(k).map(|n| (k, n)))
    }

    fn details(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("allocation serializes")
    }
}

impl fmt::Display for Allocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .iter()
            .map(|(k, n)| format!("{} {n}", k.attribute()))
            .collect();
        f.write_str(&parts.join(", "))
    }
}

/// What the caller asks for one kind of network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The first free slot of the pool.
    Auto,
    /// Exactly this network.
    Pinned(Ipv4Net),
}

/// What the caller asks for each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wants {
    /// Host-only subnet.
    pub subnet: Want,
    /// Pod CIDR.
    pub pod_cidr: Want,
    /// Service CIDR.
    pub service_cidr: Want,
    /// Management network (`None`: not needed, as for netns and VirtualBox).
    pub mgmt_cidr: Option<Want>,
}

impl Wants {
    /// Everything automatic; a management network only when `mgmt`.
    pub fn auto(mgmt: bool) -> Wants {
        Wants {
            subnet: Want::Auto,
            pod_cidr: Want::Auto,
            service_cidr: Want::Auto,
            mgmt_cidr: mgmt.then_some(Want::Auto),
        }
    }

    /// Exactly the networks of `a`.
    pub fn pinned(a: &Allocation) -> Wants {
        Wants {
            subnet: Want::Pinned(a.subnet),
            pod_cidr: Want::Pinned(a.pod_cidr),
            service_cidr: Want::Pinned(a.service_cidr),
            mgmt_cidr: a.mgmt_cidr.map(Want::Pinned),
        }
    }

    /// Every wanted kind with what is wanted.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, Want)> {
        [
            Some((Kind::Subnet, self.subnet)),
            Some((Kind::PodCidr, self.pod_cidr)),
            Some((Kind::ServiceCidr, self.service_cidr)),
            self.mgmt_cidr.map(|w| (Kind::MgmtCidr, w)),
        ]
        .into_iter()
        .flatten()
    }
}

/// `reserved` (held for a plan) or `allocated` (the lab exists or is being built).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Held by a plan until it expires.
    Reserved,
    /// Claimed by an apply.
    Allocated,
}

impl Status {
    /// `reserved` / `allocated`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Reserved => "reserved",
            Status::Allocated => "allocated",
        }
    }
}

/// When and by whom a reservation was made, and when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    /// When it was made or last renewed.
    #[serde(with = "time::serde::rfc3339")]
    pub reserved_at: OffsetDateTime,
    /// Who made it.
    pub by: Actor,
    /// When the networks become free again.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// The run that made it (renewals keep it; the entry's `run` is the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_run: Option<String>,
    /// The networks the configuration pinned (the others were chosen automatically, and a
    /// pinned request elsewhere may take them over while they are only reserved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pinned: Vec<Kind>,
    /// Set when another request took the networks over: the entry then holds nothing and only
    /// remains so that the plan it was made for fails naming the taker (once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken: Option<TakenOver>,
}

/// Who took a reservation over, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TakenOver {
    /// The instance that took it.
    pub by: String,
    /// The run that took it (that run's own plans do not trip over it).
    pub run: String,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Why it was allowed to, in words.
    pub why: String,
}

impl Reservation {
    /// Whether `kind` was chosen automatically (not pinned by the configuration).
    pub fn is_auto(&self, kind: Kind) -> bool {
        !self.pinned.contains(&kind)
    }
}

/// The shape of an instance's lab, recorded so that import can rebuild state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LabRecord {
    /// Number of control planes.
    pub control_planes: u32,
    /// Number of workers.
    pub workers: u32,
    /// Backend settings the lab was built with (`netns_host`, `box`, …).
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
}

/// One instance of the registry. In the file its networks sit beside its other fields
/// (`"subnet": …, "pod_cidr": …`); see [`EntryFields`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "EntryFields")]
pub struct Entry {
    /// Instance name.
    pub name: String,
    /// Its networks.
    pub allocation: Allocation,
    /// `netns` or `vagrant`.
    pub backend: String,
    /// Reserved or allocated.
    pub status: Status,
    /// When the entry was created (reservation or allocation).
    pub created_at: OffsetDateTime,
    /// Instances it is federated with (sorted), the seed's `federated: [acme, globex]`.
    pub federated: Vec<String>,
    /// Present while reserved.
    pub reservation: Option<Reservation>,
    /// Present once allocated.
    pub lab: Option<LabRecord>,
    /// The workspace that planned or created it (absent in entries written before owners were
    /// recorded).
    pub owner: Option<Workspace>,
    /// The run (provider process) that last reserved or claimed it.
    pub run: Option<String>,
    /// Set from its claim until a later run of its workspace sees it in state.
    pub creating: Option<Creating>,
}

/// The file form of an [`Entry`]: its networks spelled out beside the other fields. (Serde's
/// `flatten` would give the same JSON, but buffers every entry while parsing: several times
/// slower on a registry of thousands of entries, and every change parses the whole file.)
#[derive(Deserialize)]
struct EntryFields {
    name: String,
    subnet: Ipv4Net,
    pod_cidr: Ipv4Net,
    service_cidr: Ipv4Net,
    #[serde(default)]
    mgmt_cidr: Option<Ipv4Net>,
    backend: String,
    status: Status,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    #[serde(default)]
    federated: Vec<String>,
    #[serde(default)]
    reservation: Option<Reservation>,
    #[serde(default)]
    lab: Option<LabRecord>,
    #[serde(default)]
    owner: Option<Workspace>,
    #[serde(default)]
    run: Option<String>,
    #[serde(default)]
    creating: Option<Creating>,
}

impl From<EntryFields> for Entry {
    fn from(f: EntryFields) -> Entry {
        Entry {
            name: f.name,
            allocation: Allocation {
                subnet: f.subnet,
                pod_cidr: f.pod_cidr,
                service_cidr: f.service_cidr,
                mgmt_cidr: f.mgmt_cidr,
            },
            backend: f.backend,
            status: f.status,
            created_at: f.created_at,
            federated: f.federated,
            reservation: f.reservation,
            lab: f.lab,
            owner: f.owner,
            run: f.run,
            creating: f.creating,
        }
    }
}

/// [`EntryFields`], borrowed, for writing without copying.
#[derive(Serialize)]
struct EntryFieldsRef<'a> {
    name: &'a str,
    subnet: CidrText,
    pod_cidr: CidrText,
    service_cidr: CidrText,
    #[serde(skip_serializing_if = "Option::is_none")]
    mgmt_cidr: Option<CidrText>,
    backend: &'a str,
    status: Status,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    federated: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    reservation: Option<&'a Reservation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lab: Option<&'a LabRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<&'a Workspace>,
    #[serde(skip_serializing_if = "Option::is_none")]
    run: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    creating: Option<&'a Creating>,
}

/// A CIDR written as `a.b.c.d/n` without the formatting machinery (`Ipv4Net`'s own
/// `Display`): writing the registry formats three of them per entry, on every change.
struct CidrText(Ipv4Net);

impl Serialize for CidrText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut out = [0u8; 18];
        let mut len = 0;
        let parts = self.0.addr().octets();
        for (i, v) in parts.iter().chain([self.0.prefix_len()].iter()).enumerate() {
            if i > 0 {
                out[len] = if i == 4 { b'/' } else { b'.' };
                len += 1;
            }
            len += write_decimal(*v, &mut out[len..]);
        }
        serializer.serialize_str(std::str::from_utf8(&out[..len]).expect("digits, dots and a slash"))
    }
}

/// Write `v` in decimal at the start of `out`; the number of bytes written.
fn write_decimal(v: u8, out: &mut [u8]) -> usize {
    let digits = [v / 100, v / 10 % 10, v % 10];
    let skip = if v >= 100 { 0 } else if v >= 10 { 1 } else { 2 };
    for (o, d) in out.iter_mut().zip(&digits[skip..]) {
        *o = b'0' + d;
    }
    3 - skip
}

impl Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EntryFieldsRef {
            name: &self.name,
            subnet: CidrText(self.allocation.subnet),
            pod_cidr: CidrText(self.allocation.pod_cidr),
            service_cidr: CidrText(self.allocation.service_cidr),
            mgmt_cidr: self.allocation.mgmt_cidr.map(CidrText),
            backend: &self.backend,
            status: self.status,
            created_at: self.created_at,
            federated: &self.federated,
            reservation: self.reservation.as_ref(),
            lab: self.lab.as_ref(),
            owner: self.owner.as_ref(),
            run: self.run.as_deref(),
            creating: self.creating.as_ref(),
        }
        .serialize(serializer)
    }
}

impl Entry {
    /// Whether the entry holds its networks at `now` (allocated, or a live reservation).
    pub fn holds(&self, now: OffsetDateTime) -> bool {
        match self.status {
            Status::Allocated => true,
            Status::Reserved => self
                .reservation
                .as_ref()
                .is_some_and(|r| r.expires_at > now && r.taken.is_none()),
        }
    }

    /// `allocated`, or `reserved until <time> by <who>`.
    pub fn describe_status(&self, now: OffsetDateTime) -> String {
        match (&self.status, &self.reservation) {
            (Status::Reserved, Some(Reservation { taken: Some(t), .. })) => {
                format!("reservation taken over by `{}` at {}", t.by, rfc3339(t.at))
            }
            (Status::Reserved, Some(r)) => format!(
                "{} until {} by {}",
                if r.expires_at > now { "reserved" } else { "reservation expired" },
                rfc3339(r.expires_at),
                r.by
            ),
            (s, _) => s.as_str().to_string(),
        }
    }
}

/// The networks a name held when it was last released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// Its networks.
    #[serde(flatten)]
    pub allocation: Allocation,
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub released_at: OffsetDateTime,
}

/// The events of the newest change, kept in the document so that a crash between writing the
/// document and appending to the log is repaired by the next writer (one event per change).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Journal {
    /// Seq of the newest event.
    pub seq: u64,
    /// Hash of the newest event line.
    pub hash: String,
    /// The events of the newest change.
    pub events: Vec<Event>,
}

/// The whole `instances.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    /// Format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// Instances by name.
    pub instances: BTreeMap<String, Entry>,
    /// Networks of recently released names (re-created instances get them back when free).
    #[serde(default)]
    pub released: BTreeMap<String, Released>,
    /// The newest change's events.
    #[serde(default)]
    pub journal: Journal,
    /// Federations by id (`<a>+<b>`): what they were declared with, so import adopts it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub federations: BTreeMap<String, FederationRecord>,
}

/// What a federation was declared with (its pieces on the host are read from the host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationRecord {
    /// The declared reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Kubernetes namespaces that get the NetworkPolicy.
    pub namespaces: Vec<String>,
    /// When it was created.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// The workspace that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Workspace>,
    /// Set from its creation until a later run of its workspace sees it in state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creating: Option<Creating>,
}

impl Default for Document {
    fn default() -> Self {
        Document {
            version: FORMAT_VERSION,
            instances: BTreeMap::new(),
            released: BTreeMap::new(),
            journal: Journal::default(),
            federations: BTreeMap::new(),
        }
    }
}

/// A network the host itself has (an interface address or a route), for the isolation check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct External {
    /// The network.
    pub cidr: Ipv4Net,
    /// Where it comes from, in words.
    pub source: String,
}

/// Usage of one pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolUsage {
    /// Which pool.
    pub kind: Kind,
    /// The pool.
    pub cidr: Ipv4Net,
    /// Slot prefix.
    pub prefix: u8,
    /// Slots in all.
    pub capacity: u64,
    /// Slots overlapping a held network.
    pub used: u64,
    /// `capacity - used`.
    pub free: u64,
}

/// What a name has, or would get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    /// `allocated`, `reserved` or `free`.
    pub status: &'static str,
    /// The networks.
    pub allocation: Allocation,
    /// The registry entry, when there is one that holds.
    pub entry: Option<Entry>,
}

/// Result of a plan-time reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Planned {
    /// A reservation was made or renewed.
    Reserved(Entry),
    /// The name is already allocated (a replacement in progress, or another configuration):
    /// nothing was written; these are the networks it would keep.
    Existing {
        /// The allocated entry.
        entry: Entry,
        /// The networks after applying what was pinned.
        allocation: Allocation,
    },
}

/// The rule for instance names.
pub const NAME_RULE: &str = "a lowercase DNS label of 1 to 32 characters (a-z, 0-9 and '-'), starting with a letter and not ending with '-'";

/// Check an instance name (names become hostnames, folder names and interface names).
pub fn validate_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(RegistryError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// Everything that can go wrong with the registry.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// An instance name breaks the naming rule.
    #[error("invalid instance name {name:?}: must be {rule}", rule = NAME_RULE)]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// `instances.json` is not valid JSON of the expected shape.
    #[error("{path}: the registry is corrupt ({why}); nothing was changed. {hint}", hint = repair_hint(path))]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Parser message.
        why: String,
    },
    /// `instances.json` has a format version this build does not know.
    #[error("{path}: registry format version {found} is not supported (this provider reads version {FORMAT_VERSION}); nothing was changed. Use a provider version that knows it")]
    UnknownVersion {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: String,
    },
    /// A registry file could not be read.
    #[error("{path}: cannot read the registry: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A registry file could not be written or locked.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `instances.json` lacks entries that the generation of its own change holds: it was
    /// edited by hand (or replaced), and using it would hand out networks a lab still holds.
    #[error("{path} was changed by hand: it lacks {removed} that its own version of change {seq} ({generation}) holds, so their networks would be handed out again; nothing was changed. {hint}", removed = removed.join(", "), hint = repair_hint(path))]
    EditedByHand {
        /// The file.
        path: PathBuf,
        /// Seq of the change the document says it is.
        seq: u64,
        /// The generation of that change.
        generation: PathBuf,
        /// The entries it lacks (`acme`, `federation acme+globex`).
        removed: Vec<String>,
    },
    /// `instances.json` is gone while the event log and generations remain.
    #[error("{path} is missing, but the event log {events} holds {seq} events: starting afresh would hand out networks that labs hold; nothing was changed. {hint}", hint = repair_hint(path))]
    DocumentMissing {
        /// The file.
        path: PathBuf,
        /// The event log.
        events: PathBuf,
        /// Seq of the log's newest event.
        seq: u64,
    },
    /// The event log is unreadable or does not match the registry.
    #[error("{0}{hint}", hint = audit_hint(.0))]
    Audit(#[from] AuditError),
    /// No networks can be given to this instance.
    #[error("instance `{name}`: {source}")]
    Alloc {
        /// Instance name.
        name: String,
        /// Why.
        source: AllocError,
    },
    /// The name already has an allocation (created elsewhere, or state was lost).
    #[error("instance `{name}` already exists in the registry ({allocation}, backend {backend}, allocated at {created_at}{owner}); import it (`terraform import homelab_instance.<address> {name}`) or choose another name", owner = owner.as_ref().map(|o| format!(" by {o}")).unwrap_or_default())]
    AlreadyAllocated {
        /// Instance name.
        name: String,
        /// Its networks.
        allocation: Allocation,
        /// Its backend.
        backend: String,
        /// When it was allocated.
        created_at: String,
        /// The workspace that created it, when recorded.
        owner: Option<Workspace>,
    },
    /// An earlier run of this workspace began this creation and its provider still runs (an
    /// apply whose Terraform was killed moments ago winds down within 30 seconds).
    #[error("`{name}` is still being created by an earlier run of this workspace (provider pid {pid}, since {since}), which has not stopped yet: wait for that process to end (a provider whose Terraform was killed stops within 30 seconds), then apply again, and this workspace adopts it")]
    StillCreating {
        /// Instance name, or federation id.
        name: String,
        /// The earlier run's provider process.
        pid: u32,
        /// When it began.
        since: String,
    },
    /// Another workspace's plan holds a reservation for this name.
    #[error("instance name `{name}` is reserved by a plan of {by} until {until}: another configuration plans an instance of this name, and two configurations must never share one. Choose another name; if that plan will never be applied, its reservation expires at {until} or can be dropped (`terraform-provider-homelab reservations drop {name}`)")]
    ReservedElsewhere {
        /// Instance name.
        name: String,
        /// The other workspace.
        by: Workspace,
        /// When its reservation expires.
        until: String,
    },
    /// A pinned network was given, moments before in this same plan, to an instance that asked
    /// for any network: that plan cannot be shown any more, so this one fails once.
    #[error("instance `{name}`: {kind} {cidr} is pinned in the configuration, but earlier in this same plan Terraform planned instance `{other}` first, which was given {other_cidr} automatically. The pinned value wins: it is now reserved for `{name}`, and `{other}` will get another network. Nothing was built: run `terraform plan` (or `apply`) again, and it converges", kind = kind.attribute())]
    TakenInThisRun {
        /// Instance name (the pinned one).
        name: String,
        /// Which of its networks.
        kind: Kind,
        /// The pinned CIDR.
        cidr: Ipv4Net,
        /// The instance it was taken from.
        other: String,
        /// The network the other had been given.
        other_cidr: Ipv4Net,
    },
    /// A saved plan's networks were taken after its reservation expired.
    #[error("instance `{name}`: the reservation made at plan time ({allocation}) expired at {expired_at} and {taken}. The stale reservation was dropped and nothing was built: run `terraform plan` again to get free networks")]
    ReservationLost {
        /// Instance name.
        name: String,
        /// The networks it had reserved.
        allocation: Allocation,
        /// When the reservation expired.
        expired_at: String,
        /// Who took what since, in words.
        taken: String,
    },
    /// Another request took the networks of this name's reservation over since its plan.
    #[error("instance `{name}`: the networks reserved for it at plan time ({allocation}) were taken over by instance `{by}` at {at} ({why}). Nothing was built: run `terraform plan` again to get free networks")]
    ReservationTaken {
        /// Instance name.
        name: String,
        /// The networks it had reserved.
        allocation: Allocation,
        /// Who took them.
        by: String,
        /// When.
        at: String,
        /// Why that was allowed.
        why: String,
    },
    /// The planned networks are no longer free at apply.
    #[error("instance `{name}`: the networks planned for it are no longer free: {source}. Nothing was built; run `terraform plan` again")]
    ClaimConflict {
        /// Instance name.
        name: String,
        /// What collides.
        source: AllocError,
    },
    /// No such instance.
    #[error("instance `{name}` is not in the registry")]
    NotFound {
        /// Instance name.
        name: String,
    },
    /// The instance is not allocated (only reserved).
    #[error("instance `{name}` is only reserved, not created: apply the configuration that declares it first")]
    NotAllocated {
        /// Instance name.
        name: String,
    },
    /// The instance still has federations.
    #[error("instance `{name}` is federated with {peers}: destroy the federation {federations} first (homelab_federation)")]
    Federated {
        /// Instance name.
        name: String,
        /// Peer names, comma-separated.
        peers: String,
        /// Federation ids, comma-separated.
        federations: String,
    },
    /// The pair is already federated.
    #[error("instances `{a}` and `{b}` are already federated (federation {a}+{b}, recorded in the registry); a pair is federated once")]
    AlreadyFederated {
        /// First name (sorted).
        a: String,
        /// Second name (sorted).
        b: String,
    },
}

/// What to run about a damaged registry file at `path` (in its home).
pub fn repair_hint(path: &std::path::Path) -> String {
    let home = path.parent().map(|h| h.display().to_string()).unwrap_or_else(|| ".".into());
    format!(
        "To see what is wrong and the way back: `terraform-provider-homelab registry check --home {home}`; to bring the registry back from its event log and previous versions: `terraform-provider-homelab registry repair --home {home}`"
    )
}

/// [`repair_hint`] for a damaged event log (not for one that cannot be read at all).
fn audit_hint(e: &AuditError) -> String {
    match e {
        AuditError::Broken { path, .. } | AuditError::Malformed { path, .. } if path.parent().is_some_and(|p| !p.as_os_str().is_empty()) => {
            format!(". {}", repair_hint(path))
        }
        _ => String::new(),
    }
}

/// Where "now" comes from (a fake clock in tests).
pub trait Clock: Send + Sync {
    /// The current time, UTC.
    fn now(&self) -> OffsetDateTime;
}

/// The system clock, truncated to whole seconds.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        let now = OffsetDateTime::now_utc();
        now.replace_nanosecond(0).unwrap_or(now)
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    /// A clock at `t`.
    pub fn at(t: OffsetDateTime) -> ManualClock {
        ManualClock(Mutex::new(t))
    }

    /// Move forward.
    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().expect("clock lock");
        *t += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().expect("clock lock")
    }
}

/// RFC 3339 text of a time.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// A change to the document: returns the events describing it (none: nothing to write).
pub type Change<'a> = dyn FnMut(&mut Document) -> Result<Vec<Draft>, RegistryError> + 'a;

/// Storage of the registry document and its event log. Two implementations: [`file::FileStore`]
/// and [`memory::MemoryStore`]; both run every change under one exclusive lock, write the
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

/// The registry operations, on any store.
pub struct Registry {
    store: Arc<dyn Store>,
    pools: Pools,
    ttl: Duration,
    clock: Arc<dyn Clock>,
    actor: Actor,
    client: Client,
    origin: Origin,
    declared: Vec<declared::Pin>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("store", &self.store.location())
            .field("pools", &self.pools)
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn occupied_by_others(
    doc: &Document,
    name: &str,
    now: OffsetDateTime,
    host: &[External],
) -> Vec<Occupied> {
    occupied_except(doc, name, now, host, |_, _, _| false)
}

/// [`occupied_by_others`], leaving out the networks `yields` says may be taken over.
fn occupied_except(
    doc: &Document,
    name: &str,
    now: OffsetDateTime,
    host: &[External],
    yields: impl Fn(&Entry, Kind, &Ipv4Net) -> bool,
) -> Vec<Occupied> {
    let mut out = Vec::new();
    for e in doc.instances.values() {
        if e.name == name || !e.holds(now) {
            continue;
        }
        let status = e.describe_status(now);
        for (kind, cidr) in e.allocation.iter() {
            if yields(e, kind, &cidr) {
                continue;
            }
            out.push(Occupied {
                cidr,
                holder: Holder::Instance {
                    name: e.name.clone(),
                    kind,
                    status: status.clone(),
                },
            });
        }
    }
    // A host network that is exactly a network of this name or of an entry that holds it is
    // that lab's own interface (a bridge, a vboxnet): the registry check above covers it. The
    // networks of an expired reservation are nobody's: a host network there stays in the way.
    let lab_nets: Vec<Ipv4Net> = if host.is_empty() {
        Vec::new()
    } else {
        doc.instances
            .values()
            .filter(|e| e.name == name || e.holds(now))
            .flat_map(|e| e.allocation.iter().map(|(_, n)| n))
            .collect()
    };
    for h in host {
        if lab_nets.contains(&h.cidr) {
            continue;
        }
        out.push(Occupied {
            cidr: h.cidr,
            holder: Holder::Host {
                source: h.source.clone(),
            },
        });
    }
    out
}

/// Whether a network another entry holds may be taken over by a plan of `origin` that pins
/// `pins`: only reservations ever yield (allocations never), and only those that
/// - an older plan of the same workspace made (its newer plans may take them over), or
/// - chose this network automatically, where the request pins a network overlapping it (the
///   automatic one can go anywhere; the pinned one cannot).
fn yields(e: &Entry, kind: Kind, cidr: &Ipv4Net, origin: &Origin, pins: &[Ipv4Net], now: OffsetDateTime) -> bool {
    if e.status != Status::Reserved || !e.holds(now) {
        return false;
    }
    // Older: made before this run started (runs of one workspace do not overlap: Terraform
    // locks the state for a plan or an apply).
    let stale_own = e.owner.as_ref() == Some(&origin.workspace)
        && e.run.as_ref() != Some(&origin.run)
        && e.reservation.as_ref().is_some_and(|r| r.reserved_at < origin.started);
    let auto_in_the_way = e.reservation.as_ref().is_some_and(|r| r.is_auto(kind))
        && pins.iter().any(|p| crate::net::overlaps(p, cidr));
    stale_own || auto_in_the_way
}

/// Remove the reservations `chosen` from the document: one `instance.reservation_drop` event
/// each, saying `why` when it was not a person's choice.
fn drop_entries(doc: &mut Document, chosen: &[Entry], why: Option<&str>) -> Vec<Draft> {
    chosen
        .iter()
        .map(|e| {
            doc.instances.remove(&e.name);
            let mut details = json!({"allocation": e.allocation.details(), "reservation": e.reservation});
            if let Some(why) = why {
                details["why"] = json!(why);
            }
            Draft::new("instance.reservation_drop", &e.name, details)
        })
        .collect()
}

fn names_pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

impl Registry {
    /// A registry on `store`.
    pub fn new(
        store: Arc<dyn Store>,
        pools: Pools,
        ttl: Duration,
        clock: Arc<dyn Clock>,
        actor: Actor,
        client: Client,
    ) -> Registry {
        Registry {
            store,
            pools,
            ttl,
            clock,
            actor,
            client,
            origin: Origin::current(),
            declared: Vec::new(),
        }
    }

    /// The same registry, knowing what this workspace's configuration pins (automatic choices
    /// step around those pins of the other instances).
    pub fn with_declared(mut self, pins: Vec<declared::Pin>) -> Registry {
        self.declared = pins;
        self
    }

    /// The same registry, planning and applying as `origin` (tests; the provider's own origin
    /// is its process's).
    pub fn with_origin(mut self, origin: Origin) -> Registry {
        self.origin = origin;
        self
    }

    /// Who plans and applies through this registry.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The pools.
    pub fn pools(&self) -> &Pools {
        &self.pools
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The current time of the registry's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// The whole document (shared lock).
    pub fn snapshot(&self) -> Result<Document, RegistryError> {
        self.store.load()
    }

    /// One entry, if present.
    pub fn get(&self, name: &str) -> Result<Option<Entry>, RegistryError> {
        Ok(self.store.load()?.instances.remove(name))
    }

    fn commit<T>(
        &self,
        mut change: impl FnMut(&mut Document, OffsetDateTime) -> Result<(T, Vec<Draft>), RegistryError>,
    ) -> Result<T, RegistryError> {
        let now = self.clock.now();
        let mut out = None;
        self.store.commit(
            &mut |doc| {
                let (value, drafts) = change(doc, now)?;
                out = Some(value);
                Ok(drafts)
            },
            now,
            &self.actor,
            &self.client,
        )?;
        Ok(out.expect("commit ran the change"))
    }

    /// What `name` has, or would get next, without writing anything.
    pub fn preview(&self, name: &str, wants: &Wants, host: &[External]) -> Result<Preview, RegistryError> {
        validate_name(name)?;
        let doc = self.store.load()?;
        let now = self.clock.now();
        if let Some(e) = doc.instances.get(name).filter(|e| e.holds(now)) {
            return Ok(Preview {
                status: e.status.as_str(),
                allocation: e.allocation,
                entry: Some(e.clone()),
            });
        }
        let occupied = occupied_by_others(&doc, name, now, host);
        // As `reserve` would: an expired reservation's values, else the released ones.
        let prefer = doc
            .instances
            .get(name)
            .map(|e| e.allocation)
            .or_else(|| doc.released.get(name).map(|r| r.allocation));
        let allocation = alloc::assign(&self.pools, wants, &occupied, prefer.as_ref()).map_err(
            |source| RegistryError::Alloc {
                name: name.into(),
                source,
            },
        )?;
        Ok(Preview {
            status: "free",
            allocation,
            entry: None,
        })
    }

    /// Plan time: reserve networks for `name` (or renew its reservation, keeping its values),
    /// so the plan shows concrete values that apply will get. A refused request writes nothing.
    pub fn reserve(
        &self,
        name: &str,
        wants: &Wants,
        backend: &str,
        host: &[External],
    ) -> Result<Planned, RegistryError> {
        validate_name(name)?;
        // An allocated name is answered without the exclusive lock: nothing is written.
        let doc = self.store.load()?;
        if let Some(e) = doc.instances.get(name).filter(|e| e.status == Status::Allocated) {
            let now = self.clock.now();
            let occupied = occupied_by_others(&doc, name, now, host);
            let allocation = alloc::assign(&self.pools, wants, &occupied, Some(&e.allocation))
                .map_err(|source| RegistryError::Alloc {
                    name: name.into(),
                    source,
                })?;
            return Ok(Planned::Existing {
                entry: e.clone(),
                allocation,
            });
        }
        enum Outcome {
            Done(Planned),
            Refused(RegistryError),
        }
        let ttl = self.ttl;
        let actor = self.actor.clone();
        let pools = self.pools;
        let origin = self.origin.clone();
        let declared = &self.declared;
        let outcome = self.commit(|doc, now| {
            let occupied = occupied_by_others(doc, name, now, host);
            let previous = doc.instances.get(name).cloned();
            if let Some(prev) = previous.as_ref().filter(|e| e.status == Status::Allocated) {
                // Allocated between our read and the lock: answer as above.
                let allocation = alloc::assign(&pools, wants, &occupied, Some(&prev.allocation))
                    .map_err(|source| RegistryError::Alloc {
                        name: name.into(),
                        source,
                    })?;
                return Ok((
                    Outcome::Done(Planned::Existing {
                        entry: prev.clone(),
                        allocation,
                    }),
                    vec![],
                ));
            }
            // Taken over since this name's plan by a request of another run: that plan (a saved
            // plan being applied, or the next plan) fails once, naming the taker. The run that
            // took it plans the name afresh.
            if let Some((prev, t)) = previous.as_ref().and_then(|e| e.reservation.as_ref().and_then(|r| r.taken.as_ref()).map(|t| (e, t))) {
                let lost = t.run != origin.run;
                let err = RegistryError::ReservationTaken {
                    name: name.into(),
                    allocation: prev.allocation,
                    by: t.by.clone(),
                    at: rfc3339(t.at),
                    why: t.why.clone(),
                };
                doc.instances.remove(name);
                if lost {
                    let draft = Draft::new(
                        "instance.reservation_lost",
                        name,
                        json!({"allocation": prev.allocation.details(), "taken_by": t.by}),
                    );
                    return Ok((Outcome::Refused(err), vec![draft]));
                }
            }
            let previous = previous.filter(|e| e.reservation.as_ref().is_none_or(|r| r.taken.is_none()));
            // A live reservation of this name by another workspace: that configuration plans an
            // instance of the same name. Two states must never hold one instance.
            if let Some(prev) = previous.as_ref().filter(|e| e.holds(now)) {
                if let Some(by) = prev.owner.as_ref().filter(|o| **o != origin.workspace) {
                    let until = prev.reservation.as_ref().map(|r| rfc3339(r.expires_at)).unwrap_or_default();
                    return Ok((
                        Outcome::Refused(RegistryError::ReservedElsewhere { name: name.into(), by: by.clone(), until }),
                        vec![],
                    ));
                }
            }
            // What another workspace let expire is not this plan's: start afresh.
            let previous = previous.filter(|e| e.owner.as_ref().is_none_or(|o| *o == origin.workspace));
            // A reservation that expired and whose automatic networks were taken since is lost:
            // drop it and say so (a saved plan must never be applied with other values).
            if let Some(prev) = previous.as_ref().filter(|e| !e.holds(now)) {
                let taken: Vec<String> = wants
                    .iter()
                    .filter(|(_, w)| matches!(w, Want::Auto))
                    .filter_map(|(k, _)| prev.allocation.get(k).map(|c| (k, c)))
                    .filter_map(|(k, c)| {
                        alloc::find_overlap(&occupied, &c)
                            .map(|o| format!("{} {c} is now held by {}", k.attribute(), o.holder))
                    })
                    .collect();
                if !taken.is_empty() {
                    let expired_at = prev
                        .reservation
                        .as_ref()
                        .map(|r| rfc3339(r.expires_at))
                        .unwrap_or_default();
                    doc.instances.remove(name);
                    let err = RegistryError::ReservationLost {
                        name: name.into(),
                        allocation: prev.allocation,
                        expired_at: expired_at.clone(),
                        taken: taken.join("; "),
                    };
                    let draft = Draft::new(
                        "instance.reservation_lost",
                        name,
                        json!({"allocation": prev.allocation.details(), "expired_at": expired_at, "taken": taken}),
                    );
                    return Ok((Outcome::Refused(err), vec![draft]));
                }
            }
            let prefer = previous
                .as_ref()
                .map(|e| e.allocation)
                .or_else(|| doc.released.get(name).map(|r| r.allocation));
            // First try: around everything held, and around what the other instances of this
            // configuration pin (they may simply not be planned yet).
            let mut around = occupied.clone();
            around.extend(
                declared
                    .iter()
                    .filter(|p| p.name != name)
                    .map(|p| Occupied {
                        cidr: p.cidr,
                        holder: Holder::Instance {
                            name: p.name.clone(),
                            kind: p.kind,
                            status: "pinned in this configuration".into(),
                        },
                    }),
            );
            // Then around what is held only; then, only when that fails, with what this request
            // may take over out of the way.
            let retry = |e: &AllocError| matches!(e, AllocError::Conflict { .. } | AllocError::Exhausted { .. });
            let first = alloc::assign(&pools, wants, &around, prefer.as_ref())
                .or_else(|e| if retry(&e) { alloc::assign(&pools, wants, &occupied, prefer.as_ref()) } else { Err(e) });
            let (allocation, taken_over) = match first {
                Ok(a) => (a, Vec::new()),
                Err(e) if retry(&e) => {
                    let pins: Vec<Ipv4Net> = wants
                        .iter()
                        .filter_map(|(_, w)| match w {
                            Want::Pinned(c) => Some(c),
                            Want::Auto => None,
                        })
                        .collect();
                    let soft = occupied_except(doc, name, now, host, |e, kind, cidr| yields(e, kind, cidr, &origin, &pins, now));
                    let a = alloc::assign(&pools, wants, &soft, prefer.as_ref())
                        .map_err(|source| RegistryError::Alloc { name: name.into(), source })?;
                    let taken: Vec<Entry> = doc
                        .instances
                        .values()
                        .filter(|e| e.name != name && e.holds(now) && e.status == Status::Reserved)
                        .filter(|e| e.allocation.iter().any(|(_, c)| a.iter().any(|(_, m)| crate::net::overlaps(&c, &m))))
                        .cloned()
                        .collect();
                    (a, taken)
                }
                Err(source) => return Err(RegistryError::Alloc { name: name.into(), source }),
            };
            let mut drafts = Vec::new();
            let mut lost_in_this_run = None;
            for e in &taken_over {
                let older = e.reservation.as_ref().is_some_and(|r| r.reserved_at < origin.started);
                let why = if e.owner.as_ref() == Some(&origin.workspace) && e.run.as_ref() != Some(&origin.run) && older {
                    "an older plan of this workspace had reserved them, and this newer plan needed the room"
                } else {
                    "they had been chosen automatically, and a pinned value takes precedence"
                };
                // The entry stays, holding nothing, so that the plan it was made for (a saved
                // plan applied later) fails naming the taker instead of getting other values.
                if let Some(r) = doc.instances.get_mut(&e.name).and_then(|t| t.reservation.as_mut()) {
                    r.taken = Some(TakenOver {
                        by: name.to_string(),
                        run: origin.run.clone(),
                        at: now,
                        why: why.to_string(),
                    });
                }
                drafts.push(Draft::new(
                    "instance.reservation_taken",
                    &e.name,
                    json!({"allocation": e.allocation.details(), "by": name, "why": why}),
                ));
                if e.run.as_ref() == Some(&origin.run) && lost_in_this_run.is_none() {
                    // Terraform already has that instance's plan: this plan cannot stand.
                    lost_in_this_run = wants.iter().find_map(|(kind, w)| match w {
                        Want::Pinned(cidr) => e
                            .allocation
                            .iter()
                            .find(|(_, c)| crate::net::overlaps(c, &cidr))
                            .map(|(_, c)| (kind, cidr, e.name.clone(), c)),
                        Want::Auto => None,
                    });
                }
            }
            let expires_at = now + ttl;
            let renewed = previous.as_ref().is_some_and(|e| e.holds(now));
            let first_run = previous
                .as_ref()
                .filter(|e| e.holds(now))
                .and_then(|e| e.reservation.as_ref())
                .and_then(|r| r.first_run.clone())
                .unwrap_or_else(|| origin.run.clone());
            let pinned: Vec<Kind> = wants.iter().filter(|(_, w)| matches!(w, Want::Pinned(_))).map(|(k, _)| k).collect();
            let entry = Entry {
                name: name.into(),
                allocation,
                backend: backend.into(),
                status: Status::Reserved,
                created_at: previous.as_ref().map(|e| e.created_at).unwrap_or(now),
                federated: vec![],
                reservation: Some(Reservation {
                    reserved_at: now,
                    by: actor.clone(),
                    expires_at,
                    first_run: Some(first_run),
                    pinned,
                    taken: None,
                }),
                lab: None,
                owner: Some(origin.workspace.clone()),
                run: Some(origin.run.clone()),
                creating: None,
            };
            doc.instances.insert(name.into(), entry.clone());
            drafts.push(Draft::new(
                "instance.reserve",
                name,
                json!({
                    "allocation": allocation.details(),
                    "backend": backend,
                    "expires_at": rfc3339(expires_at),
                    "renewed": renewed,
                    "workspace": origin.workspace,
                }),
            ));
            match lost_in_this_run {
                Some((kind, cidr, other, other_cidr)) => Ok((
                    Outcome::Refused(RegistryError::TakenInThisRun { name: name.into(), kind, cidr, other, other_cidr }),
                    drafts,
                )),
                None => Ok((Outcome::Done(Planned::Reserved(entry)), drafts)),
            }
        })?;
        match outcome {
            Outcome::Done(p) => Ok(p),
            Outcome::Refused(e) => Err(e),
        }
    }

    /// The run failed (a plan that Terraform will not keep): drop the reservations this run made
    /// that pinned nothing, so a plan that fails leaves nothing in anyone's way. Reservations
    /// that pin a network stay until they expire: they keep the next plan from handing those
    /// networks to an automatic request. Renewed reservations of earlier runs stay too.
    pub fn drop_run_reservations(&self) -> Result<Vec<String>, RegistryError> {
        let run = self.origin.run.clone();
        self.commit(|doc, _| {
            let chosen: Vec<Entry> = doc
                .instances
                .values()
                .filter(|e| e.status == Status::Reserved && e.run.as_ref() == Some(&run))
                .filter(|e| {
                    e.reservation
                        .as_ref()
                        .is_some_and(|r| r.first_run.as_ref() == Some(&run) && r.pinned.is_empty())
                })
                .cloned()
                .collect();
            let drafts = drop_entries(doc, &chosen, Some("the plan that made it failed"));
            Ok((chosen.into_iter().map(|e| e.name).collect(), drafts))
        })
    }

    /// A run of this workspace that destroyed instances ended cleanly: the workspace's
    /// reservations that no call of the run used go. Terraform plans the configuration's
    /// creates before a destroy too (its refresh), and nothing would ever claim what that
    /// reserved; a saved plan they were kept for is stale now (the destroy changed the state).
    pub fn drop_unused_reservations(&self, used: &dyn Fn(&str) -> bool) -> Result<Vec<String>, RegistryError> {
        let workspace = self.origin.workspace.clone();
        self.commit(|doc, _| {
            let chosen: Vec<Entry> = doc
                .instances
                .values()
                .filter(|e| e.status == Status::Reserved && e.owner.as_ref() == Some(&workspace) && !used(&e.name))
                .cloned()
                .collect();
            let drafts = drop_entries(doc, &chosen, Some("a destroy of its workspace ran, and nothing of it used this reservation"));
            Ok((chosen.into_iter().map(|e| e.name).collect(), drafts))
        })
    }

    /// Apply time: turn the reservation into an allocation, only with exactly the planned
    /// networks and only while nobody else holds them. Repeating a successful claim with the
    /// same values succeeds (a retried apply).
    pub fn claim(
        &self,
        name: &str,
        allocation: &Allocation,
        backend: &str,
        lab: LabRecord,
        host: &[External],
    ) -> Result<Entry, RegistryError> {
        validate_name(name)?;
        let pools = self.pools;
        let origin = self.origin.clone();
        self.commit(|doc, now| {
            if let Some(e) = doc.instances.get(name) {
                if e.status == Status::Allocated {
                    // The same run claiming again (a retried call) gets what it has; anything
                    // else is another resource, or another configuration, using this name.
                    let same_run = e.run.as_ref() == Some(&origin.run);
                    if same_run && e.allocation == *allocation && e.backend == backend {
                        return Ok((e.clone(), vec![]));
                    }
                    // A creation of this workspace that was interrupted: this create adopts it
                    // (see interrupted).
                    let mine = e.owner.as_ref().is_none_or(|o| *o == origin.workspace);
                    // Also one a killed destroy was removing: this create repairs what it left.
                    let adoptable = e.interrupted(&origin.run);
                    if mine && adoptable && e.allocation == *allocation && e.backend == backend {
                        still_running(name, e.creating.as_ref())?;
                        let e = doc.instances.get_mut(name).expect("present");
                        let c = e.creating.as_mut().expect("interrupted: creating");
                        let draft = Draft::new(
                            "instance.adopt",
                            name,
                            json!({
                                "interrupted_since": rfc3339(c.since),
                                "run_before": c.run,
                                "answered_before": c.answered.map(rfc3339),
                                "allocation": allocation.details(),
                            }),
                        );
                        c.run = origin.run.clone();
                        c.process = origin.process.clone();
                        c.answered = None;
                        c.removing = false;
                        e.run = Some(origin.run.clone());
                        e.lab = Some(lab.clone());
                        return Ok((e.clone(), vec![draft]));
                    }
                    return Err(RegistryError::AlreadyAllocated {
                        name: name.into(),
                        allocation: e.allocation,
                        backend: e.backend.clone(),
                        created_at: rfc3339(e.created_at),
                        owner: e.owner.clone(),
                    });
                }
                if let Some(by) = e.owner.as_ref().filter(|o| e.holds(now) && **o != origin.workspace) {
                    return Err(RegistryError::ReservedElsewhere {
                        name: name.into(),
                        by: by.clone(),
                        until: e.reservation.as_ref().map(|r| rfc3339(r.expires_at)).unwrap_or_default(),
                    });
                }
            }
            let occupied = occupied_by_others(doc, name, now, host);
            alloc::assign(&pools, &Wants::pinned(allocation), &occupied, None).map_err(|source| {
                RegistryError::ClaimConflict {
                    name: name.into(),
                    source,
                }
            })?;
            let entry = Entry {
                name: name.into(),
                allocation: *allocation,
                backend: backend.into(),
                status: Status::Allocated,
                created_at: now,
                federated: vec![],
                reservation: None,
                lab: Some(lab.clone()),
                owner: Some(origin.workspace.clone()),
                run: Some(origin.run.clone()),
                creating: Some(Creating::begun(now, &origin)),
            };
            doc.instances.insert(name.into(), entry.clone());
            doc.released.remove(name);
            let draft = Draft::new(
                "instance.allocate",
                name,
                json!({"allocation": allocation.details(), "backend": backend, "lab": lab, "workspace": origin.workspace}),
            );
            Ok((entry, vec![draft]))
        })
    }

    /// An import: this workspace becomes the owner of the allocated instance `name` (an event
    /// names the previous owner). The entry as it is, or as it now is; `None` when absent.
    pub fn adopt(&self, name: &str) -> Result<Option<Entry>, RegistryError> {
        let origin = self.origin.clone();
        self.commit(|doc, _| {
            let Some(e) = doc.instances.get_mut(name) else {
                return Ok((None, vec![]));
            };
            if e.status != Status::Allocated || (e.owner.as_ref() == Some(&origin.workspace) && e.creating.is_none()) {
                return Ok((Some(e.clone()), vec![]));
            }
            let before = e.owner.replace(origin.workspace.clone());
            e.run = Some(origin.run.clone());
            // Imported: a state holds it now.
            e.creating = None;
            let draft = Draft::new("instance.import", name, json!({"owner_before": before, "owner": origin.workspace}));
            Ok((Some(e.clone()), vec![draft]))
        })
    }

    /// Record a new lab shape (workers added or removed).
    pub fn update_lab(&self, name: &str, lab: LabRecord) -> Result<Entry, RegistryError> {
        self.commit(|doc, _| {
            let e = doc
                .instances
                .get_mut(name)
                .ok_or_else(|| RegistryError::NotFound { name: name.into() })?;
            if e.status != Status::Allocated {
                return Err(RegistryError::NotAllocated { name: name.into() });
            }
            if e.lab.as_ref() == Some(&lab) {
                return Ok((e.clone(), vec![]));
            }
            let before = e.lab.clone();
            e.lab = Some(lab.clone());
            let draft = Draft::new("instance.update", name, json!({"before": before, "after": lab}));
            Ok((e.clone(), vec![draft]))
        })
    }

    /// Free everything `name` holds. Refused while it has federations. `Ok(None)` when the
    /// name is not in the registry (already released).
    pub fn release(&self, name: &str) -> Result<Option<Entry>, RegistryError> {
        self.commit(|doc, now| {
            let Some(e) = doc.instances.get(name).cloned() else {
                return Ok((None, vec![]));
            };
            if !e.federated.is_empty() {
                return Err(RegistryError::Federated {
                    name: name.into(),
                    peers: e.federated.join(", "),
                    federations: e
                        .federated
                        .iter()
                        .map(|p| {
                            let (a, b) = names_pair(name, p);
                            format!("{a}+{b}")
                        })
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
            doc.instances.remove(name);
            if e.status == Status::Allocated {
                doc.released.insert(
                    name.into(),
                    Released {
                        allocation: e.allocation,
                        released_at: now,
                    },
                );
                while doc.released.len() > RELEASED_MEMORY {
                    let oldest = doc
                        .released
                        .iter()
                        .min_by_key(|(_, r)| r.released_at)
                        .map(|(n, _)| n.clone())
                        .expect("non-empty");
                    doc.released.remove(&oldest);
                }
            }
            let draft = Draft::new(
                "instance.release",
                name,
                json!({"allocation": e.allocation.details(), "was": e.status.as_str()}),
            );
            Ok((Some(e), vec![draft]))
        })
    }

    /// Reservations (live and expired), oldest first.
    pub fn reservations(&self) -> Result<Vec<Entry>, RegistryError> {
        let doc = self.store.load()?;
        let mut v: Vec<Entry> = doc
            .instances
            .into_values()
            .filter(|e| e.status == Status::Reserved)
            .collect();
        v.sort_by_key(|e| e.created_at);
        Ok(v)
    }

    /// Drop reservations before they expire: the given names, or every reservation when
    /// `names` is empty (only expired ones when `expired_only`). Allocated entries are never
    /// touched. Returns what was dropped; one event per dropped reservation.
    pub fn drop_reservations(
        &self,
        names: &[String],
        expired_only: bool,
    ) -> Result<Vec<Entry>, RegistryError> {
        self.commit(|doc, now| {
            let chosen: Vec<Entry> = doc
                .instances
                .values()
                .filter(|e| e.status == Status::Reserved)
                .filter(|e| names.is_empty() || names.contains(&e.name))
                .filter(|e| !expired_only || !e.holds(now))
                .cloned()
                .collect();
            let drafts = drop_entries(doc, &chosen, None);
            Ok((chosen, drafts))
        })
    }

    /// Tag `a` and `b` as federated with each other and keep what the federation was declared
    /// with (`record`). Both must be allocated; a pair already federated is refused. `details`
    /// (reason, CIDRs opened) go into the event.
    pub fn federate(&self, a: &str, b: &str, record: FederationRecord, details: serde_json::Value) -> Result<(), RegistryError> {
        let (a, b) = names_pair(a, b);
        let origin = self.origin.clone();
        self.commit(|doc, now| {
            for n in [&a, &b] {
                match doc.instances.get(n.as_str()) {
                    None => return Err(RegistryError::NotFound { name: n.clone() }),
                    Some(e) if e.status != Status::Allocated => {
                        return Err(RegistryError::NotAllocated { name: n.clone() })
                    }
                    _ => {}
                }
            }
            let ea = &doc.instances[a.as_str()];
            let eb = &doc.instances[b.as_str()];
            let id = format!("{a}+{b}");
            if ea.federated.contains(&b) && eb.federated.contains(&a) {
                // A creation (or removal) of this workspace that was interrupted: this create
                // adopts it.
                let adoptable = doc.federations.get(&id).is_some_and(|r| {
                    r.owner.as_ref().is_none_or(|o| *o == origin.workspace) && r.creating.as_ref().is_some_and(|c| c.run != origin.run)
                });
                if !adoptable {
                    return Err(RegistryError::AlreadyFederated {
                        a: a.clone(),
                        b: b.clone(),
                    });
                }
                still_running(&id, doc.federations[&id].creating.as_ref())?;
                let r = doc.federations.get_mut(&id).expect("adoptable: recorded");
                let c = r.creating.as_mut().expect("adoptable: creating");
                let d = Draft::new(
                    "federation.adopt",
                    &id,
                    json!({"interrupted_since": rfc3339(c.since), "run_before": c.run, "answered_before": c.answered.map(rfc3339)}),
                );
                c.run = origin.run.clone();
                c.process = origin.process.clone();
                c.answered = None;
                c.removing = false;
                return Ok(((), vec![d]));
            }
            tag(doc, &a, &b, true);
            let mut record = record.clone();
            record.owner = Some(origin.workspace.clone());
            record.creating = Some(Creating::begun(now, &origin));
            doc.federations.insert(id, record);
            let d = Draft::new("federation.create", &format!("{a}+{b}"), details.clone());
            Ok(((), vec![d]))
        })
    }

    /// Put back missing federation tags of an existing federation (drift repair).
    pub fn retag(&self, a: &str, b: &str) -> Result<bool, RegistryError> {
        let (a, b) = names_pair(a, b);
        self.commit(|doc, _| {
            for n in [&a, &b] {
                if !doc.instances.contains_key(n.as_str()) {
                    return Err(RegistryError::NotFound { name: n.clone() });
                }
            }
            let missing = !doc.instances[a.as_str()].federated.contains(&b)
                || !doc.instances[b.as_str()].federated.contains(&a);
            if !missing {
                return Ok((false, vec![]));
            }
            tag(doc, &a, &b, true);
            let d = Draft::new("federation.repair", &format!("{a}+{b}"), json!({"restored": "registry tags"}));
            Ok((true, vec![d]))
        })
    }

    /// A federation's declaration changed (reason, namespaces): keep it, with an event.
    pub fn update_federation(&self, a: &str, b: &str, reason: Option<String>, namespaces: Vec<String>, details: serde_json::Value) -> Result<(), RegistryError> {
        let (a, b) = names_pair(a, b);
        let now = self.clock.now();
        self.commit(|doc, _| {
            let id = format!("{a}+{b}");
            let record = doc.federations.entry(id.clone()).or_insert_with(|| FederationRecord {
                reason: None,
                namespaces: Vec::new(),
                created_at: now,
                owner: None,
                creating: None,
            });
            record.reason = reason.clone();
            record.namespaces = namespaces.clone();
            Ok(((), vec![Draft::new("federation.update", &id, details.clone())]))
        })
    }

    /// Remove the federation tags of a pair (tolerates tags or instances already gone).
    pub fn unfederate(&self, a: &str, b: &str, details: serde_json::Value) -> Result<(), RegistryError> {
        let (a, b) = names_pair(a, b);
        self.commit(|doc, _| {
            tag(doc, &a, &b, false);
            doc.federations.remove(&format!("{a}+{b}"));
            let d = Draft::new("federation.destroy", &format!("{a}+{b}"), details.clone());
            Ok(((), vec![d]))
        })
    }

    /// The lab of an allocated instance is gone (found by a refresh): its allocation becomes a
    /// reservation for `ttl`, so the re-create Terraform plans gets the same networks, and a
    /// destroy leaves nothing allocated for a lab that no longer exists. Federated instances
    /// keep their allocation (their federation must go first). Returns whether it changed.
    pub fn demote(&self, name: &str, why: &str) -> Result<bool, RegistryError> {
        let ttl = self.ttl;
        let actor = self.actor.clone();
        let run = self.origin.run.clone();
        self.commit(|doc, now| {
            let Some(e) = doc.instances.get_mut(name) else {
                return Ok((false, vec![]));
            };
            if e.status != Status::Allocated || !e.federated.is_empty() {
                return Ok((false, vec![]));
            }
            e.status = Status::Reserved;
            let expires_at = now + ttl;
            // Its values were the configuration's choice or not: unknown here, so they are
            // kept as if pinned (no other request takes them over before the re-create). It
            // was made by the run that created the lab, not this one: a failed plan of this
            // run does not drop it.
            e.reservation = Some(Reservation {
                reserved_at: now,
                by: actor.clone(),
                expires_at,
                first_run: e.run.clone(),
                pinned: Kind::ALL.to_vec(),
                taken: None,
            });
            e.run = Some(run.clone());
            let draft = Draft::new(
                "instance.lab_gone",
                name,
                json!({"allocation": e.allocation.details(), "why": why, "reserved_until": rfc3339(expires_at)}),
            );
            Ok((true, vec![draft]))
        })
    }

    /// Record an event that changes no instance (a federation's reason edited, …).
    pub fn record(&self, action: &str, subject: &str, details: serde_json::Value) -> Result<(), RegistryError> {
        self.commit(|_, _| Ok(((), vec![Draft::new(action, subject, details.clone())])))
    }

    /// Usage of every pool at `now`: slots overlapping a network held by an allocation or a
    /// live reservation, whatever its kind. Counted from the held networks (sorted slot-index
    /// intervals), never by scanning the slots: a pool may hold millions of them.
    pub fn usage(&self, doc: &Document) -> Vec<PoolUsage> {
        let now = self.clock.now();
        let held: Vec<Ipv4Net> = doc
            .instances
            .values()
            .filter(|e| e.holds(now))
            .flat_map(|e| e.allocation.iter().map(|(_, n)| n))
            .collect();
        self.pools
            .all()
            .into_iter()
            .map(|(kind, pool)| {
                let used = slots_covered(&pool, &held);
                PoolUsage {
                    kind,
                    cidr: pool.cidr,
                    prefix: pool.prefix,
                    capacity: pool.capacity(),
                    used,
                    free: pool.capacity() - used,
                }
            })
            .collect()
    }

    /// Verify the event log's hash chain against the registry.
    pub fn verify_events(&self) -> Result<Verified, RegistryError> {
        self.store.verify_events()
    }
}

/// How many slots of `pool` overlap at least one of `nets`.
fn slots_covered(pool: &Pool, nets: &[Ipv4Net]) -> u64 {
    let start = u64::from(u32::from(pool.cidr.network()));
    let end = u64::from(u32::from(pool.cidr.broadcast()));
    let size = 1u64 << (32 - u32::from(pool.prefix));
    let mut spans: Vec<(u64, u64)> = nets
        .iter()
        .filter(|n| crate::net::overlaps(n, &pool.cidr))
        .map(|n| {
            let lo = u64::from(u32::from(n.network())).max(start);
            let hi = u64::from(u32::from(n.broadcast())).min(end);
            ((lo - start) / size, (hi - start) / size)
        })
        .collect();
    spans.sort_unstable();
    let mut used = 0;
    let mut open: Option<(u64, u64)> = None;
    for (lo, hi) in spans {
        open = match open {
            Some((a, b)) if lo <= b + 1 => Some((a, b.max(hi))),
            Some((a, b)) => {
                used += b - a + 1;
                Some((lo, hi))
            }
            None => Some((lo, hi)),
        };
    }
    used + open.map_or(0, |(a, b)| b - a + 1)
}

fn tag(doc: &mut Document, a: &str, b: &str, on: bool) {
    for (me, peer) in [(a, b), (b, a)] {
        if let Some(e) = doc.instances.get_mut(me) {
            e.federated.retain(|p| p != peer);
            if on {
                e.federated.push(peer.to_string());
                e.federated.sort();
            }
        }
    }
}

/// The head the document records (for verification against the log).
pub fn journal_head(doc: &Document) -> Option<Head> {
    (doc.journal.seq > 0).then(|| Head {
        seq: doc.journal.seq,
        hash: doc.journal.hash.clone(),
    })
}

/// Refuse to adopt a creation whose provider process still runs.
fn still_running(name: &str, c: Option<&Creating>) -> Result<(), RegistryError> {
    match c {
        Some(c) if c.running() == Some(true) => Err(RegistryError::StillCreating {
            name: name.into(),
            pid: c.pid().unwrap_or(0),
            since: rfc3339(c.since),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn check_version(raw: &serde_json::Value, path: &std::path::Path) -> Result<(), RegistryError> {
    match raw.get("version") {
        Some(v) if v.as_u64() == Some(u64::from(FORMAT_VERSION)) => Ok(()),
        Some(v) => Err(RegistryError::UnknownVersion {
            path: path.into(),
            found: v.to_string(),
        }),
        None => Err(RegistryError::Corrupt {
            path: path.into(),
            why: "no `version` field".into(),
        }),
    }
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

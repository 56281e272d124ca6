//! The registry's data model and its file form: the kinds of network and their pools, an
//! instance's allocation, reservation and lab record, the whole document (`instances.json`
//! with its journal and federations), and the name rule. Entries are written and parsed by
//! hand-rolled serde impls (see [`EntryFields`]): every change rewrites the whole file.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::{Actor, Event};
use crate::net::{Ipv4Net, Pool};

use super::{rfc3339, Workspace};

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

    pub(crate) fn details(&self) -> serde_json::Value {
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
    /// The lab host it lives on: the machine's host name, and for the netns backend
    /// `<host name>/<netns_host>` (several lab hosts can share one registry on etcd; each
    /// host's own addresses and routes are checked only on that host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
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

/// A creation not yet seen in its workspace's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creating {
    /// When it began.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// The run that began it (or last adopted it).
    pub run: String,
    /// A run of its workspace is removing it (its lab is being torn down).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
    /// That run's provider process (`<boot id>/<pid>/<start time>`, on the workspace's host):
    /// `registry list` and `registry check` tell a creation still running from an interrupted
    /// one by it, and a create does not adopt one whose process still runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    /// When that run's create answered Terraform (it may hold it in its state already).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    pub answered: Option<OffsetDateTime>,
}

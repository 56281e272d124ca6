//! Everything that can go wrong with the registry ([`RegistryError`]), and the advice a damaged
//! registry's errors carry (which `registry` command brings it back).

use std::path::PathBuf;

use thiserror::Error;

use crate::audit::AuditError;
use crate::net::Ipv4Net;

use super::{AllocError, Allocation, Kind, Workspace, FORMAT_VERSION, NAME_RULE};

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
    /// The file registry was moved to another store by `registry migrate`.
    #[error("the registry in {home} was moved to {to} (`registry migrate`): configure the provider's `etcd` block for it (the folder still holds the instance folders; its instances.json and events.jsonl are kept as history only), or pass `--registry {to}` to the provider's commands")]
    Moved {
        /// The registry folder.
        home: PathBuf,
        /// Where it went.
        to: String,
    },
    /// `registry migrate` found entries in the target that the source's collide with.
    #[error("cannot move the registry into {to}: {conflicts}. Nothing was written; resolve these (release or rename one side) and run `registry migrate` again", conflicts = conflicts.join("; "))]
    MigrateConflict {
        /// The target store.
        to: String,
        /// Each collision in words.
        conflicts: Vec<String>,
    },
    /// The etcd store could not do what was asked (unreachable, refused, …).
    #[error(transparent)]
    Etcd(#[from] super::etcd::EtcdError),
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


//! The one place where domain errors become Terraform diagnostics: a summary that says what
//! happened to what, a detail that says why and what to do next, and the attribute at fault
//! when there is one.

use tf_provider::{AttributePath, Diagnostic, Diagnostics};

use crate::backend::BackendError;
use crate::federation::FederationError;
use crate::hostnet::HostNetError;
use crate::registry::etcd::EtcdError;
use crate::registry::{AllocError, RegistryError};
use crate::settings::SettingError;

/// A domain error as Terraform shows it.
pub trait Report {
    /// One line: what failed.
    fn summary(&self) -> String;
    /// Why, and what to do next.
    fn detail(&self) -> String;
    /// The attribute at fault, if any.
    fn attribute(&self) -> Option<AttributePath> {
        None
    }
}

/// Add `err` as an error diagnostic. `context` names the operation and object
/// (`plan of homelab_instance "acme"`), and prefixes the summary.
pub fn error(diags: &mut Diagnostics, context: &str, err: &dyn Report) {
    let summary = if context.is_empty() {
        err.summary()
    } else {
        format!("{context}: {}", err.summary())
    };
    diags.add_error(Diagnostic::new(
        summary,
        err.detail(),
        err.attribute().unwrap_or_default(),
    ));
}

/// A result the lifecycle methods report: `Ok` becomes `Some`; an `Err` is added as an error
/// diagnostic (see [`error`]) and becomes `None`, so a method stops with
/// `let x = step().or_report(diags, &context)?;`.
pub trait OrReport<T> {
    /// See the trait.
    fn or_report(self, diags: &mut Diagnostics, context: &str) -> Option<T>;
}

impl<T, E: Report> OrReport<T> for Result<T, E> {
    fn or_report(self, diags: &mut Diagnostics, context: &str) -> Option<T> {
        match self {
            Ok(v) => Some(v),
            Err(e) => {
                error(diags, context, &e);
                None
            }
        }
    }
}

/// Add an error about one attribute.
pub fn attribute_error(diags: &mut Diagnostics, attribute: &str, summary: String, detail: String) {
    diags.add_error(Diagnostic::new(summary, detail, AttributePath::new(attribute.to_string())));
}

/// Add a warning.
pub fn warning(diags: &mut Diagnostics, summary: String, detail: String) {
    diags.add_warning(Diagnostic::new(summary, detail, AttributePath::default()));
}

impl Report for SettingError {
    fn summary(&self) -> String {
        format!("Invalid provider setting `{}`", self.attribute)
    }
    fn detail(&self) -> String {
        self.message.clone()
    }
    fn attribute(&self) -> Option<AttributePath> {
        // A nested block's attribute (`etcd.endpoints`): the block is a list of at most one.
        Some(match self.attribute.split_once('.') {
            Some((block, attr)) => AttributePath::new(block).index(0).attribute(attr),
            None => AttributePath::new(self.attribute),
        })
    }
}

fn alloc_attribute(e: &AllocError) -> &'static str {
    match e {
        AllocError::Conflict { kind, .. }
        | AllocError::Exhausted { kind, .. }
        | AllocError::WrongPrefix { kind, .. }
        | AllocError::SpecialPurpose { kind, .. }
        | AllocError::NotCanonical { kind, .. } => kind.attribute(),
    }
}

impl Report for RegistryError {
    fn summary(&self) -> String {
        match self {
            RegistryError::InvalidName { .. } => "Invalid instance name".into(),
            RegistryError::Alloc { source: AllocError::Conflict { kind, .. }, .. } => {
                format!("Isolation check failed: {} overlaps another network", kind.attribute())
            }
            RegistryError::Alloc { source: AllocError::Exhausted { kind, .. }, .. } => {
                format!("Pool exhausted: {}", kind.pool_attribute())
            }
            RegistryError::Alloc { source: AllocError::WrongPrefix { kind, .. }, .. } => {
                format!("Wrong prefix length for {}", kind.attribute())
            }
            RegistryError::Alloc { source: AllocError::NotCanonical { kind, .. }, .. } => {
                format!("Host bits set in {}", kind.attribute())
            }
            RegistryError::Alloc { source: AllocError::SpecialPurpose { kind, .. }, .. } => {
                format!("{} is in a special-purpose range", kind.attribute())
            }
            RegistryError::Corrupt { .. }
            | RegistryError::EditedByHand { .. }
            | RegistryError::DocumentMissing { .. }
            | RegistryError::UnknownVersion { .. }
            | RegistryError::Unreadable { .. }
            | RegistryError::Io { .. } => "Instance registry unusable".into(),
            RegistryError::Audit(_) => "Event log unusable".into(),
            RegistryError::Moved { .. } => "Instance registry moved".into(),
            RegistryError::MigrateConflict { .. } => "Registry cannot be moved".into(),
            RegistryError::Etcd(e) => match e {
                EtcdError::Unreachable { .. } => "etcd registry unreachable".into(),
                EtcdError::Auth { .. } => "etcd registry refused the credentials".into(),
                EtcdError::Tls { .. } => "etcd registry: TLS connection failed".into(),
                EtcdError::File { .. } => "etcd registry: a TLS file cannot be read".into(),
                EtcdError::Contention { .. } => "etcd registry busy".into(),
                EtcdError::TooLarge { .. } => "Change too large for one etcd transaction".into(),
                EtcdError::Request { .. } | EtcdError::Corrupt { .. } | EtcdError::UnknownVersion { .. } => {
                    "Instance registry unusable".into()
                }
            },
            RegistryError::AlreadyAllocated { name, .. } => format!("Instance `{name}` already exists"),
            RegistryError::ReservationLost { name, .. } => {
                format!("Networks planned for `{name}` were taken after its reservation expired")
            }
            RegistryError::ReservationTaken { name, by, .. } => {
                format!("Networks planned for `{name}` were taken over by `{by}`")
            }
            RegistryError::ClaimConflict { name, .. } => {
                format!("Networks planned for `{name}` are no longer free")
            }
            RegistryError::NotFound { name } => format!("Instance `{name}` not found"),
            RegistryError::NotAllocated { name } => format!("Instance `{name}` is not created"),
            RegistryError::Federated { name, .. } => format!("Instance `{name}` is federated"),
            RegistryError::AlreadyFederated { a, b } => format!("`{a}` and `{b}` are already federated"),
            RegistryError::ReservedElsewhere { name, .. } => {
                format!("Instance name `{name}` is planned by another configuration")
            }
            RegistryError::StillCreating { name, .. } => format!("`{name}` is still being created by an earlier run"),
            RegistryError::TakenInThisRun { kind, other, .. } => {
                format!("Pinned {} was planned for `{other}` moments ago: plan again", kind.attribute())
            }
        }
    }
    fn detail(&self) -> String {
        self.to_string()
    }
    fn attribute(&self) -> Option<AttributePath> {
        match self {
            RegistryError::InvalidName { .. }
            | RegistryError::AlreadyAllocated { .. }
            | RegistryError::ReservedElsewhere { .. } => Some(AttributePath::new("name")),
            RegistryError::TakenInThisRun { kind, .. } => Some(AttributePath::new(kind.attribute())),
            RegistryError::Alloc { source, .. } | RegistryError::ClaimConflict { source, .. } => {
                Some(AttributePath::new(alloc_attribute(source)))
            }
            _ => None,
        }
    }
}

impl Report for BackendError {
    fn summary(&self) -> String {
        match self {
            BackendError::Unavailable { what, .. } => what.clone(),
            BackendError::Command(_) => "A host command failed".into(),
            BackendError::Timeout { .. } => "Timed out".into(),
            BackendError::Cancelled { .. } => "Interrupted".into(),
            BackendError::ToolFailed { .. } => "Vagrant failed".into(),
            BackendError::Io { .. } => "Lab files could not be written".into(),
            BackendError::Render(_) => "The lab cannot be rendered".into(),
            BackendError::Option(e) => format!("Invalid {}", e.attribute),
            BackendError::HostNet(e) => e.summary(),
            BackendError::Task { .. } => "A step of the backend did not finish".into(),
            BackendError::Other(_) => "Backend error".into(),
            BackendError::WithConsoles { source, .. } => source.summary(),
        }
    }
    fn detail(&self) -> String {
        match self {
            BackendError::Unavailable { what, fix } => format!("{what}\n\n{fix}"),
            BackendError::Option(e) => e.message.clone(),
            BackendError::HostNet(e) => e.detail(),
            BackendError::WithConsoles { source, consoles } => format!("{}\n\n{consoles}", source.detail()),
            other => other.to_string(),
        }
    }
    fn attribute(&self) -> Option<AttributePath> {
        match self {
            BackendError::Option(e) => Some(AttributePath::new(e.attribute)),
            BackendError::WithConsoles { source, .. } => source.attribute(),
            _ => None,
        }
    }
}

impl Report for HostNetError {
    fn summary(&self) -> String {
        match self {
            HostNetError::NotPermitted(_) => "Not permitted to change the host network".into(),
            _ => "Host network operation failed".into(),
        }
    }
    fn detail(&self) -> String {
        self.to_string()
    }
}

/// A plain message as a report (for checks done in the resource layer itself).
#[derive(Debug, Clone)]
pub struct Message {
    /// Summary.
    pub summary: String,
    /// Detail.
    pub detail: String,
    /// Attribute at fault.
    pub attribute: Option<&'static str>,
}

impl Report for Message {
    fn summary(&self) -> String {
        self.summary.clone()
    }
    fn detail(&self) -> String {
        self.detail.clone()
    }
    fn attribute(&self) -> Option<AttributePath> {
        self.attribute.map(AttributePath::new)
    }
}

impl Report for FederationError {
    fn summary(&self) -> String {
        match self {
            FederationError::Registry(e) => e.summary(),
            FederationError::Invalid(_) => "Cannot federate these instances".into(),
            FederationError::Backend { .. } => "A guest or backend step failed".into(),
            FederationError::HostNet { .. } => "A host forwarding step failed".into(),
            FederationError::K8s { .. } => "A Kubernetes step failed".into(),
        }
    }
    fn detail(&self) -> String {
        match self {
            FederationError::K8s { source, .. } => {
                let hint = match source.status_code() {
                    Some(401) | Some(403) => "\n\nCheck that the kubeconfig's user may manage networkpolicies (RBAC).",
                    None => "\n\nIs the cluster running (`vagrant status` in the instance folder)?",
                    _ => "",
                };
                format!("{self}{hint}")
            }
            _ => self.to_string(),
        }
    }
    fn attribute(&self) -> Option<AttributePath> {
        match self {
            FederationError::Registry(RegistryError::AlreadyFederated { .. })
            | FederationError::Registry(RegistryError::NotFound { .. })
            | FederationError::Invalid(_) => Some(AttributePath::new("instances")),
            _ => None,
        }
    }
}

impl Report for crate::reachability::ReachabilityError {
    fn summary(&self) -> String {
        match self {
            crate::reachability::ReachabilityError::UnknownInstance { .. } => "No such instance to probe from".into(),
            crate::reachability::ReachabilityError::Backend { .. } => "A reachability probe could not be made".into(),
        }
    }
    fn detail(&self) -> String {
        match self {
            crate::reachability::ReachabilityError::UnknownInstance { .. } => {
                format!("{self}. Name an instance that has been applied, or leave `instance` out to probe from all of them.")
            }
            crate::reachability::ReachabilityError::Backend { .. } => {
                format!("{self}\n\nIs the lab running? A refresh of its homelab_instance shows what is missing, and an apply repairs it.")
            }
        }
    }
    fn attribute(&self) -> Option<AttributePath> {
        match self {
            crate::reachability::ReachabilityError::UnknownInstance { .. } => Some(AttributePath::new("instance")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::vagrant::{check_options, default_options, RenderError};

    #[test]
    fn backend_errors_keep_the_attribute_and_the_words_of_their_cause() {
        let mut o = default_options();
        o.mirrors.images = Some("registry.lab".into());
        let e: BackendError = check_options(&o).unwrap_err().into();
        assert_eq!(e.summary(), "Invalid image_registry_mirror");
        assert_eq!(e.attribute(), Some(AttributePath::new("image_registry_mirror")));
        assert!(e.detail().contains("not an http:// or https:// URL"), "{}", e.detail());
        // Transparent: the message is the cause's own, said once.
        let r: BackendError = RenderError::NoNodes("acme".into()).into();
        assert_eq!(r.to_string(), "instance `acme` has no node");
        assert_eq!(r.summary(), "The lab cannot be rendered");
        assert_eq!(r.attribute(), None);
    }
}

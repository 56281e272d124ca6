//! Taking away what interrupted applies left: instances and federations whose creation an
//! earlier run of this workspace began and no state of it ever showed (see
//! `registry::interrupted`), and, for people whose workspace is gone for good, any instance by
//! name. Each lab is torn down through its backend, then released in the registry.

use std::path::Path;

use thiserror::Error;

use crate::backend::{BackendError, BackendSet, OpControl};
use crate::federation::{FederationError, Pair, Side};
use crate::registry::{Entry, Registry, RegistryError};

/// Why something could not be taken away.
#[derive(Debug, Error)]
pub enum RecoveryError {
    /// The registry refused or failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The lab could not be described from its registry entry, or its federation not closed.
    #[error(transparent)]
    Federation(#[from] FederationError),
    /// The backend failed to tear the lab down.
    #[error("tearing down the lab of `{name}`: {source}")]
    Backend {
        /// Instance name.
        name: String,
        /// Why.
        #[source]
        source: BackendError,
    },
    /// No such instance.
    #[error("instance `{0}` is not in the registry")]
    NotFound(String),
}

/// Tear down the lab of `entry` and release it.
async fn remove_entry(registry: &Registry, backends: &dyn BackendSet, home: &Path, entry: Entry, ctl: &OpControl) -> Result<(), RecoveryError> {
    let name = entry.name.clone();
    let side = Side::from_entry(entry, backends, home)?;
    side.backend
        .teardown(&side.spec, ctl)
        .await
        .map_err(|source| RecoveryError::Backend { name: name.clone(), source })?;
    registry.release(&name)?;
    Ok(())
}

/// Close the federation `a`+`b` (host rules, routes, policies) and remove its registry tags.
async fn close_federation(registry: &Registry, backends: &dyn BackendSet, home: &Path, id: &str, namespaces: &[String], ctl: &OpControl) -> Result<(), RecoveryError> {
    let doc = registry.snapshot()?;
    let (a, b) = id.split_once('+').unwrap_or((id, ""));
    let mut pair = None;
    if let (Some(ea), Some(eb)) = (doc.instances.get(a).cloned(), doc.instances.get(b).cloned()) {
        let p = Pair::new(Side::from_entry(ea, backends, home)?, Side::from_entry(eb, backends, home)?)?;
        p.close(namespaces, ctl).await?;
        pair = Some(p);
    }
    registry.unfederate(a, b, serde_json::json!({"why": "its creation was interrupted; removed by a destroy of its workspace"}))?;
    if let Some(p) = pair {
        let doc = registry.snapshot()?;
        let still = |n: &str| doc.instances.get(n).is_some_and(|e| !e.federated.is_empty());
        p.release_pods(&still, ctl).await?;
    }
    Ok(())
}

/// What [`remove_interrupted`] did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Removed: instance names and federation ids.
    pub removed: Vec<String>,
    /// Of those, the ones whose create had answered Terraform before its run was killed (the
    /// answer never reached a state, or no refresh or plan of the workspace has seen it since).
    pub unconfirmed: Vec<String>,
    /// What could not be removed.
    pub failed: Vec<RecoveryError>,
}

/// Remove this workspace's interrupted creations that `in_use` does not claim (`in_use` gets
/// instance names and `federation:<a>+<b>` keys): federations first (an instance with a
/// federation cannot go), then instances.
pub async fn remove_interrupted(
    registry: &Registry,
    backends: &dyn BackendSet,
    home: &Path,
    in_use: &(dyn Fn(&str) -> bool + Sync),
    ctl: &OpControl,
) -> Swept {
    let mut removed = Vec::new();
    let mut failed = Vec::new();
    let mut unconfirmed = Vec::new();
    match registry.interrupted_federations() {
        Ok(list) => {
            for (id, record) in list {
                if in_use(&format!("federation:{id}")) {
                    continue;
                }
                let answered = record.creating.as_ref().is_some_and(|c| c.answered.is_some());
                match registry.begin_federation_removal(&id) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        failed.push(e.into());
                        continue;
                    }
                }
                tracing::warn!(federation = %id, "removing a federation whose creation was interrupted");
                match close_federation(registry, backends, home, &id, &record.namespaces, ctl).await {
                    Ok(()) => {
                        if answered {
                            unconfirmed.push(id.clone());
                        }
                        removed.push(id);
                    }
                    Err(e) => failed.push(e),
                }
            }
        }
        Err(e) => failed.push(e.into()),
    }
    match registry.interrupted() {
        Ok(list) => {
            for entry in list {
                if in_use(&entry.name) || !entry.federated.is_empty() {
                    continue;
                }
                let answered = entry.creating.as_ref().is_some_and(|c| c.answered.is_some());
                match registry.begin_removal(&entry.name) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        failed.push(e.into());
                        continue;
                    }
                }
                tracing::warn!(instance = %entry.name, "removing an instance whose creation was interrupted");
                let name = entry.name.clone();
                match remove_entry(registry, backends, home, entry, ctl).await {
                    Ok(()) => {
                        if answered {
                            unconfirmed.push(name.clone());
                        }
                        removed.push(name);
                    }
                    Err(e) => failed.push(e),
                }
            }
        }
        Err(e) => failed.push(e.into()),
    }
    Swept { removed, unconfirmed, failed }
}

/// Remove the instance `name` whatever holds it (for a workspace that is gone for good): its
/// federations are closed first, then its lab torn down and its networks released.
pub async fn remove_instance(registry: &Registry, backends: &dyn BackendSet, home: &Path, name: &str, ctl: &OpControl) -> Result<Vec<String>, RecoveryError> {
    let doc = registry.snapshot()?;
    let entry = doc.instances.get(name).cloned().ok_or_else(|| RecoveryError::NotFound(name.into()))?;
    let mut closed = Vec::new();
    for peer in &entry.federated {
        let id = crate::federation::pair_id(name, peer);
        let namespaces = doc.federations.get(&id).map(|r| r.namespaces.clone()).unwrap_or_else(|| vec!["default".into()]);
        close_federation(registry, backends, home, &id, &namespaces, ctl).await?;
        closed.push(id);
    }
    let entry = registry.get(name)?.ok_or_else(|| RecoveryError::NotFound(name.into()))?;
    if entry.lab.is_some() {
        remove_entry(registry, backends, home, entry, ctl).await?;
    } else {
        registry.release(name)?;
    }
    Ok(closed)
}

//! The context every resource, data source and ephemeral resource reads: [`Shared`] (who this
//! process is, what validation saw, and what configure filled in) and [`Configured`] (the
//! validated settings, the registry and the backends). Both the provider, which fills it, and
//! the resources, which read it, import this module; neither imports the other for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use tf_provider::Diagnostics;

use crate::backend::BackendSet;
use crate::diagnostics;
use crate::registry::{declared, External, Origin, Registry};
use crate::resources::names::NameBook;
use crate::settings::{BackendChoices, Settings};

/// Everything resources and data sources need once the provider is configured.
pub struct Configured {
    /// Validated settings.
    pub settings: Settings,
    /// Backend choices.
    pub choices: BackendChoices,
    /// The instance registry.
    pub registry: Registry,
    /// The backends.
    pub backends: Arc<dyn BackendSet>,
    /// The instance names the resource objects of this run use (one provider process serves
    /// one plan or one apply).
    pub names: NameBook,
    /// A plan call of this run failed: Terraform will not keep this plan.
    pub plan_failed: AtomicBool,
    /// This run removed the interrupted creations of its workspace already.
    pub swept: AtomicBool,
    /// Host networks to use instead of reading the host's (tests).
    pub host_networks_override: Option<Vec<External>>,
}

impl std::fmt::Debug for Configured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Configured")
            .field("settings", &self.settings)
            .field("choices", &self.choices)
            .finish()
    }
}

impl Configured {
    /// After a plan call: when it failed, this run's plan will not be kept, so the reservations
    /// it made (and any it makes after this) must not stay in anyone's way.
    pub fn after_plan(&self, diags: &Diagnostics) {
        if diags.errors.is_empty() && !self.plan_failed.load(Ordering::SeqCst) {
            return;
        }
        self.plan_failed.store(true, Ordering::SeqCst);
        match self.registry.drop_run_reservations() {
            Ok(dropped) if !dropped.is_empty() => {
                tracing::info!(dropped = %dropped.join(", "), "the plan failed: its reservations were dropped");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the plan failed, and its reservations could not be dropped"),
        }
    }

    /// Once per run, from a destroy: remove the interrupted creations of this workspace that
    /// no call of this run concerns (see `registry::interrupted`). They belong to this
    /// workspace's configuration, and no state can hold them; a destroy of it must not leave
    /// them behind. Failures are warnings: the destroy itself goes on.
    pub async fn remove_interrupted(&self, diags: &mut Diagnostics) {
        if self.swept.swap(true, Ordering::SeqCst) {
            return;
        }
        let ctl = crate::backend::OpControl { timeout: std::time::Duration::from_secs(600), cancel: tf_provider::stop_token() };
        let swept = crate::recovery::remove_interrupted(
            &self.registry,
            self.backends.as_ref(),
            &self.settings.home,
            &|key: &str| self.names.used(key),
            &ctl,
        )
        .await;
        if !swept.removed.is_empty() {
            let answered = if swept.unconfirmed.is_empty() {
                String::new()
            } else {
                format!(
                    " Of those, {} had been created and answered just before the kill, and no refresh, plan or destroy of this workspace has shown them since: no state of it holds them.",
                    swept.unconfirmed.join(", ")
                )
            };
            diagnostics::warning(
                diags,
                "Removed what killed applies of this workspace had begun".into(),
                format!(
                    "{}: an apply of this workspace began them and was killed before Terraform recorded them. This destroy tore their labs down and released their networks (the events log records each).{answered}",
                    swept.removed.join(", ")
                ),
            );
        }
        for e in swept.failed {
            diagnostics::warning(diags, "An interrupted creation could not be removed".into(), format!("{e}. `terraform-provider-homelab registry list` shows it; `terraform-provider-homelab instances remove NAME` removes it."));
        }
    }

    /// The host's own networks (addresses and routes of this namespace), for the isolation check.
    pub async fn host_networks(&self) -> Result<Vec<External>, crate::hostnet::HostNetError> {
        if let Some(v) = &self.host_networks_override {
            return Ok(v.clone());
        }
        Ok(crate::hostnet::host_networks()
            .await?
            .into_iter()
            .map(|h| External {
                cidr: h.cidr,
                source: h.source,
            })
            .collect())
    }
}

/// State shared by the provider and its resources: who this process is, what validation
/// sees, and what configure fills in.
pub struct Shared {
    configured: RwLock<Option<Arc<Configured>>>,
    /// This process: its workspace and run (found on first use: nothing but the plugin
    /// handshake runs before Terraform hears from the provider).
    origin: OnceLock<Origin>,
    /// The configuration's pins, as validation sees them (see `registry::declared`).
    pub declared: declared::Recorder,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            configured: RwLock::new(None),
            origin: OnceLock::new(),
            declared: declared::Recorder::new(),
        }
    }
}

impl Shared {
    /// This process: its workspace and run.
    pub fn origin(&self) -> &Origin {
        self.origin.get_or_init(Origin::current)
    }

    /// A context that is already configured (tests).
    pub fn with(configured: Configured) -> Arc<Shared> {
        Arc::new(Shared {
            configured: RwLock::new(Some(Arc::new(configured))),
            ..Shared::default()
        })
    }

    /// The configured context, or an error diagnostic when configure has not run.
    pub fn get(&self, diags: &mut Diagnostics) -> Option<Arc<Configured>> {
        let c = self.configured.read().expect("provider state lock").clone();
        if c.is_none() {
            diags.root_error(
                "Provider not configured",
                "The homelab provider has not been configured (its configuration may depend on values unknown until apply). Set the provider block with known values.",
            );
        }
        c
    }

    pub(crate) fn set(&self, c: Configured) {
        *self.configured.write().expect("provider state lock") = Some(Arc::new(c));
    }

    /// Terraform ended this provider cleanly (`GRPCController.Shutdown`, which it sends only
    /// after its last answer): every creation this run answered is in Terraform's hands now.
    pub fn ended_cleanly(&self) {
        let Some(c) = self.configured.read().expect("provider state lock").clone() else { return };
        match c.registry.delivered() {
            Ok(done) if !done.is_empty() => tracing::info!(created = ?done, "answers delivered"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not record this run's delivered creations"),
        }
        if c.names.destroyed_any_instance() {
            match c.registry.drop_unused_reservations(&|name: &str| c.names.used(name)) {
                Ok(dropped) if !dropped.is_empty() => tracing::info!(?dropped, "dropped the reservations a destroy left unused"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not drop the reservations this destroy left unused"),
            }
        }
    }
}


//! The real backends of this host, built from the provider's settings: `netns` in the
//! configured lab-host namespace, `vagrant` with the configured binary and hypervisor. Labs
//! record the settings they were built with, so an instance keeps being managed where it lives
//! even if the provider block changes later.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::netns::NetnsBackend;
use super::vagrant::{Hypervisor, LibvirtDriver, VagrantBackend, VagrantConfig};
use super::{Backend, BackendKind, BackendSet};
use crate::settings::{BackendChoices, Settings};

/// Backends of this host.
#[derive(Debug, Clone)]
pub struct HostBackends {
    home: std::path::PathBuf,
    choices: BackendChoices,
}

/// The backends of this host for the given provider settings.
pub fn host_backends(settings: &Settings, choices: &BackendChoices) -> Arc<dyn BackendSet> {
    Arc::new(HostBackends {
        home: settings.home.clone(),
        choices: choices.clone(),
    })
}

impl BackendSet for HostBackends {
    fn lab_settings(&self, kind: BackendKind) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        match kind {
            BackendKind::Netns => {
                m.insert("netns_host".into(), self.choices.netns_host.clone());
            }
            BackendKind::Vagrant => {
                m.insert("hypervisor".into(), self.choices.hypervisor.as_str().into());
                m.insert("libvirt_driver".into(), self.choices.libvirt_driver.as_str().into());
            }
        }
        m
    }

    fn backend(&self, kind: BackendKind, settings: &BTreeMap<String, String>) -> Arc<dyn Backend> {
        match kind {
            BackendKind::Netns => {
                let host = settings.get("netns_host").cloned().unwrap_or_else(|| self.choices.netns_host.clone());
                Arc::new(NetnsBackend::new(host))
            }
            BackendKind::Vagrant => {
                let mut config = VagrantConfig::new(self.home.clone());
                config.vagrant_bin = self.choices.vagrant_bin.clone().into();
                config.hypervisor = recorded(settings, "hypervisor", Hypervisor::parse, self.choices.hypervisor);
                config.libvirt_driver = recorded(settings, "libvirt_driver", LibvirtDriver::parse, self.choices.libvirt_driver);
                Arc::new(VagrantBackend::new(config))
            }
        }
    }

    fn needs_mgmt_network(&self, kind: BackendKind) -> bool {
        kind == BackendKind::Vagrant && self.choices.hypervisor == Hypervisor::Libvirt
    }
}

/// What a lab recorded for `key` (the choice it was built with), else the provider's choice.
/// A value this build does not know (an edited registry) is said in the log, not guessed.
fn recorded<T: Copy>(settings: &BTreeMap<String, String>, key: &str, parse: fn(&str) -> Option<T>, choice: T) -> T {
    match settings.get(key) {
        None => choice,
        Some(v) => parse(v).unwrap_or_else(|| {
            tracing::warn!(setting = key, value = %v, "the lab records an unknown value; using the provider's choice");
            choice
        }),
    }
}

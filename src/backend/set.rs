//! The real backends of this host, built from the provider's settings: `netns` in the
//! configured lab-host namespace, `vagrant` with the configured binary and hypervisor. Labs
//! record the settings they were built with, so an instance keeps being managed where it lives
//! even if the provider block changes later.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::netns::NetnsBackend;
use super::vagrant::{Hypervisor, LibvirtDriver, VagrantBackend, VagrantConfig};
use super::{Backend, BackendKind, BackendSet};
use crate::provider::BackendChoices;
use crate::settings::Settings;

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
                m.insert("hypervisor".into(), self.choices.hypervisor.clone());
                m.insert("libvirt_driver".into(), self.choices.libvirt_driver.clone());
            }
        }
        m
    }

    fn backend(&self, kind: BackendKind, settings: &BTreeMap<String, String>) -> Arc<dyn Backend> {
        let get = |k: &str, default: &str| settings.get(k).cloned().unwrap_or_else(|| default.to_string());
        match kind {
            BackendKind::Netns => Arc::new(NetnsBackend::new(get("netns_host", &self.choices.netns_host))),
            BackendKind::Vagrant => {
                let hypervisor = match get("hypervisor", &self.choices.hypervisor).as_str() {
                    "libvirt" => Hypervisor::Libvirt,
                    _ => Hypervisor::VirtualBox,
                };
                let libvirt_driver = match get("libvirt_driver", &self.choices.libvirt_driver).as_str() {
                    "qemu" => LibvirtDriver::Qemu,
                    _ => LibvirtDriver::Kvm,
                };
                let mut config = VagrantConfig::new(self.home.clone());
                config.vagrant_bin = self.choices.vagrant_bin.clone().into();
                config.hypervisor = hypervisor;
                config.libvirt_driver = libvirt_driver;
                Arc::new(VagrantBackend::new(config))
            }
        }
    }

    fn needs_mgmt_network(&self, kind: BackendKind) -> bool {
        kind == BackendKind::Vagrant && self.choices.hypervisor == "libvirt"
    }
}

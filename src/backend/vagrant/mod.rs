//! The `vagrant` backend: each instance's lab as Vagrant VMs on its own host-only network,
//! with VirtualBox or libvirt (KVM, or QEMU software emulation).
//!
//! An instance lives in `<home>/instances/<name>/`: a generated `Vagrantfile` ([`render`]),
//! the provisioning scripts under `scripts/`, Vagrant's own `.vagrant/` records, and after
//! provisioning `kubeconfig` (mode 0600). Every operation drives the `vagrant` CLI through
//! [`runner`] (streamed output, deadline, cancellation, process-group stop) and reads state
//! back from `vagrant status --machine-readable` ([`status`]). With libvirt, every network of
//! an instance is isolated (no `<forward>`), including its own management network, and
//! teardown removes whatever Vagrant left of it in libvirt ([`libvirt`]). Vagrant fails a
//! command on a machine another command holds: this process orders its own commands per
//! instance folder, and retries (until the operation's deadline) when another process holds one.
//!
//! Optional `exec_prefix` runs every host command (vagrant, virsh, ip) through a wrapper such
//! as `nsenter --net=… --mount=… --`: that is how the tests keep libvirt in a namespace.
//!
//! Rooms: here the backend's lifecycle (preflight, converge, teardown, guest routes);
//! `locks` orders and retries vagrant commands; `observe` reads a lab back; `files` writes the
//! instance folder; `console` tails serial consoles; [`provision`] joins nodes; [`libvirt`]
//! holds libvirt's names and network I/O; [`render`], [`validate`], [`status`], [`runner`],
//! [`box_import`] and [`failed_up`] as their own docs say.

pub mod box_import;
mod config;
mod console;
pub mod probe;
pub mod failed_up;
pub mod hypervisor;
mod files;
pub mod libvirt;
mod observe;
mod locks;
pub mod provision;
pub mod render;
pub mod runner;
pub mod status;
pub mod validate;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{
    Backend, BackendError, LabSpec, LabStatus, NodeStatus, OpControl,
};
use crate::hostnet::iptables::IptablesForwarding;
use crate::hostnet::{ip, Forwarding};
use crate::net::Ipv4Net;
use crate::process::CommandError;

pub use config::{VagrantBackend, VagrantConfig, RUNNING_FILE};
pub use hypervisor::{Hypervisor, LibvirtDriver};
pub use render::{render_scripts, render_vagrantfile, ruby_str, sh_str, RenderError, RenderTarget};
pub use runner::{Finished, Grace, Limits, ToolCommand};
pub use status::{parse_status, MachineState, StatusReport};

use config::{Secrecy, QUICK};
use files::io_err;
pub use validate::{
    check_instance, check_options, check_virtualbox_subnet, default_options, options_from_settings,
    options_into_settings, virtualbox_allowed_ranges, virtualbox_allowed_ranges_here, OptionError,
    DEFAULT_BOX, DEFAULT_CILIUM_VERSION, DEFAULT_CPUS, DEFAULT_KUBERNETES_VERSION,
    DEFAULT_MEMORY_MB, MIRROR_ATTRIBUTES,
};

fn unavailable(what: impl Into<String>, fix: impl Into<String>) -> BackendError {
    BackendError::Unavailable {
        what: what.into(),
        fix: fix.into(),
    }
}

#[async_trait]
impl Backend for VagrantBackend {
    fn name(&self) -> &'static str {
        "vagrant"
    }

    async fn preflight(&self) -> Result<(), BackendError> {
        let dir = std::env::temp_dir();
        let bin = self.cfg.vagrant_bin.display().to_string();
        match self.vagrant(&dir, &["--version"], &Limits::timeout(QUICK), false).await {
            Ok(f) if f.status.success() => {}
            Ok(f) => {
                return Err(unavailable(
                    format!("`{bin} --version` failed ({}): {}", f.status_text(), f.tail.join("\n")),
                    "install Vagrant (Debian: apt-get install vagrant) or set vagrant_bin to a working vagrant",
                ))
            }
            Err(BackendError::Command(CommandError::Spawn { source, .. })) => {
                return Err(unavailable(
                    format!("cannot run `{bin}`: {source}"),
                    "install Vagrant (Debian: apt-get install vagrant) or set vagrant_bin to the vagrant program",
                ))
            }
            Err(e) => return Err(e),
        }
        match self.cfg.hypervisor {
            Hypervisor::Libvirt => {
                let plugins = self
                    .vagrant(&dir, &["plugin", "list"], &Limits::timeout(QUICK), false)
                    .await?;
                if !plugins.stdout.contains("vagrant-libvirt") {
                    return Err(unavailable(
                        "the vagrant-libvirt plugin is not installed",
                        "install it (Debian: apt-get install vagrant-libvirt; elsewhere: vagrant plugin install vagrant-libvirt), or use hypervisor = \"virtualbox\"",
                    ));
                }
                match self.virsh(&["version"]).await {
                    Ok(f) if f.status.success() => Ok(()),
                    Ok(f) => Err(unavailable(
                        format!(
                            "virsh cannot reach libvirtd at {} ({}): {}",
                            self.cfg.libvirt_uri,
                            f.status_text(),
                            f.stderr.trim()
                        ),
                        "start libvirtd and virtlogd (as root), or install them (Debian: apt-get install libvirt-daemon-system libvirt-clients qemu-system-x86)",
                    )),
                    Err(BackendError::Command(CommandError::Spawn { source, .. })) => Err(unavailable(
                        format!("cannot run virsh: {source}"),
                        "install libvirt's client (Debian: apt-get install libvirt-clients)",
                    )),
                    Err(e) => Err(e),
                }
            }
            Hypervisor::VirtualBox => {
                let f = runner::run_tool(
                    &ToolCommand::new(self.host_cmd(["VBoxManage", "--version"])),
                    &Limits::timeout(QUICK),
                    self.cfg.grace,
                )
                .await;
                match f {
                    Ok(f) if f.status.success() => Ok(()),
                    Ok(f) => Err(unavailable(
                        format!(
                            "`VBoxManage --version` failed ({}): {}",
                            f.status_text(),
                            f.tail.join("\n")
                        ),
                        "repair the VirtualBox installation, or use hypervisor = \"libvirt\"",
                    )),
                    Err(BackendError::Command(CommandError::Spawn { source, .. })) => {
                        Err(unavailable(
                            format!(
                                "VirtualBox is not installed (cannot run VBoxManage: {source})"
                            ),
                            "install VirtualBox, or use hypervisor = \"libvirt\"",
                        ))
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    async fn converge(&self, spec: &LabSpec, ctl: &OpControl) -> Result<LabStatus, BackendError> {
        let limits = Limits::start(ctl);
        let opts = spec.vagrant.as_ref().ok_or_else(|| {
            BackendError::from(RenderError::NoOptions(spec.instance.clone()))
        })?;
        check_options(opts)?;
        let dir = self.instance_dir(&spec.instance)?;
        std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;

        // 0. What a killed provider left running here goes first: it holds Vagrant's machine
        //    locks, and what it was bringing up is rebuilt (step 4).
        self.stop_left_running(&dir).await;

        // 1. Nodes the spec no longer lists go first, with a Vagrantfile that still defines
        //    them (Vagrant only acts on machines its Vagrantfile names).
        let recorded = self.recorded_machines(&dir);
        let (with_old, removed) = Self::with_leftovers(spec, &recorded);
        if !removed.is_empty() {
            self.write_instance_files(&with_old, &dir)?;
            let mut args = vec!["destroy", "-f"];
            args.extend(removed.iter().map(String::as_str));
            tracing::info!(instance = %spec.instance, machines = ?removed, "removing nodes no longer in the configuration");
            self.vagrant(&dir, &args, &limits, true).await?.ok()?;
        }

        // 2. The Vagrantfile and scripts of the spec.
        self.write_instance_files(spec, &dir)?;

        // 3. The instance's libvirt networks, defined here with deterministic bridge names
        //    (see libvirt::network_xml) so that concurrent `vagrant up`s cannot collide.
        if self.cfg.hypervisor == Hypervisor::Libvirt {
            self.ensure_networks(spec, &dir).await?;
        }

        // 4. Machines whose last bring-up failed are destroyed first: `vagrant up` would only
        //    wait on them again (see failed_up).
        if let Some(failed) = failed_up::load(&dir) {
            let rebuild: Vec<&str> = failed
                .machines
                .iter()
                .map(String::as_str)
                .filter(|m| spec.nodes.iter().any(|n| n.name == *m))
                .collect();
            if !rebuild.is_empty() {
                tracing::warn!(instance = %spec.instance, machines = ?rebuild, why = %failed.why, "rebuilding machines whose last bring-up failed");
                let mut args = vec!["destroy", "-f"];
                args.extend(rebuild.iter().copied());
                self.vagrant(&dir, &args, &limits, true).await?.ok()?;
            }
        }

        // 5. Bring up what is not running (created, halted or missing); leave the rest. A
        //    machine Vagrant keeps no record of (no `.vagrant/machines/<m>/<provider>/id`) is
        //    not created: `vagrant status` (seconds of Vagrant's start-up) is asked only when
        //    a machine of the spec has a record.
        let recorded = self.recorded_machines(&dir);
        let report = if spec.nodes.iter().any(|n| recorded.contains(&n.name)) {
            Some(self.machine_status(&dir, &limits).await?)
        } else {
            None
        };
        let down: Vec<&str> = spec
            .nodes
            .iter()
            .filter(|n| !report.as_ref().is_some_and(|r| r.get(&n.name).is_some_and(MachineState::running)))
            .map(|n| n.name.as_str())
            .collect();
        if !down.is_empty() {
            let mut args = vec!["up", "--provider", self.cfg.hypervisor.as_str()];
            if !self.cfg.parallel {
                args.push("--no-parallel");
            }
            args.extend(down.iter().copied());
            // On libvirt, one `vagrant up` at a time imports the box (see box_import).
            let import = match self.cfg.hypervisor {
                Hypervisor::Libvirt => {
                    let patience = limits.deadline.saturating_duration_since(tokio::time::Instant::now());
                    Some(
                        box_import::BoxImport::begin(&opts.r#box, &self.cfg.libvirt_uri, patience)
                            .await
                            .map_err(|e| BackendError::Other(format!("waiting to import box {:?} into libvirt's storage pool: {e}", opts.r#box)))?,
                    )
                }
                Hypervisor::VirtualBox => None,
            };
            tracing::info!(instance = %spec.instance, machines = ?down, "bringing machines up");
            // Written ahead: a provider killed during this `up` leaves these machines half
            // made, and the next converge rebuilds them (a successful `up` forgets them).
            if let Err(io) = failed_up::record(&dir, &down, "their `vagrant up` was interrupted (its provider process was killed)") {
                tracing::warn!(error = %io, "cannot record the machines being brought up");
            }
            let hook = import.as_ref().map(box_import::BoxImport::hook);
            let up = self.vagrant_with(&dir, &args, &limits, true, hook, Secrecy::NONE).await.and_then(Finished::ok);
            drop(import);
            if let Err(e) = up {
                if let Err(io) = failed_up::record(&dir, &down, &e.to_string()) {
                    tracing::warn!(error = %io, "cannot record the machines that failed to come up");
                }
                return Err(self.with_consoles(e, &dir, &down));
            }
        }
        // Every machine of the spec is up now: nothing is left to rebuild.
        failed_up::clear(&dir).map_err(|e| io_err(&dir.join(failed_up::FILE), e))?;

        // 6. Kubernetes: join the other nodes, fetch the kubeconfig.
        if opts.provision {
            self.run_join(spec, &dir, &limits).await?;
        }
        // Every node of the spec runs now (it did, or its `vagrant up` succeeded), and the
        // nodes it no longer lists were destroyed in step 1: no second `vagrant status`.
        let problems = if self.cfg.hypervisor == Hypervisor::Libvirt {
            self.network_problems(&spec.instance).await?
        } else {
            Vec::new()
        };
        Ok(LabStatus {
            exists: true,
            nodes: spec
                .nodes
                .iter()
                .map(|n| NodeStatus { name: n.name.clone(), state: "running".into(), healthy: true })
                .collect(),
            extra_nodes: Vec::new(),
            problems,
        })
    }

    async fn observe(&self, spec: &LabSpec) -> Result<LabStatus, BackendError> {
        self.observe_with(spec, &Limits::timeout(QUICK)).await
    }

    async fn teardown(&self, spec: &LabSpec, ctl: &OpControl) -> Result<(), BackendError> {
        let limits = Limits::start(ctl);
        let dir = self.instance_dir(&spec.instance)?;
        if dir.is_dir() {
            self.stop_left_running(&dir).await;
            let recorded = self.recorded_machines(&dir);
            let (mut full, _) = Self::with_leftovers(spec, &recorded);
            if full.vagrant.is_none() {
                full.vagrant = Some(default_options());
            }
            if !recorded.is_empty() || dir.join(render::VAGRANTFILE).is_file() {
                // A Vagrantfile naming every machine Vagrant knows of, so that destroy sees
                // them all; provisioning is irrelevant to destroy.
                if let Some(o) = full.vagrant.as_mut() {
                    o.provision = false;
                }
                if self.cfg.hypervisor == Hypervisor::Libvirt && full.mgmt_cidr.is_none() {
                    // Only needed to render; destroy never creates networks.
                    full.mgmt_cidr = Some(full.subnet);
                }
                self.write_instance_files(&full, &dir)?;
                let destroyed = self
                    .vagrant(&dir, &["destroy", "-f"], &limits, true)
                    .await?
                    .ok();
                match destroyed {
                    Ok(_) => {}
                    // With libvirt, what Vagrant failed to destroy is removed below by name.
                    Err(e) if self.cfg.hypervisor == Hypervisor::Libvirt => {
                        tracing::warn!(instance = %spec.instance, "vagrant destroy failed, removing the lab through libvirt: {e}");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if self.cfg.hypervisor == Hypervisor::Libvirt {
            self.cleanup_libvirt(&spec.instance).await?;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&dir, e)),
        }
    }

    async fn host_interface(&self, spec: &LabSpec) -> Result<String, BackendError> {
        if self.cfg.hypervisor == Hypervisor::Libvirt {
            let net = render::hostonly_network_name(&spec.instance);
            let f = self.virsh(&["net-info", &net]).await?;
            if let Some(bridge) = f
                .status
                .success()
                .then(|| libvirt::parse_net_info_bridge(&f.stdout))
                .flatten()
            {
                return Ok(bridge);
            }
        }
        // VirtualBox (or libvirt without the network): the interface holding the gateway.
        let f = runner::run_tool(
            &ToolCommand::new(self.host_cmd(["ip", "-j", "-4", "addr", "show"])),
            &Limits::timeout(QUICK),
            self.cfg.grace,
        )
        .await?
        .ok()?;
        let cmd = "ip -j -4 addr show";
        iface_with_address(&f.stdout, spec.gateway)
            .map_err(|why| BackendError::HostNet(crate::hostnet::HostNetError::Parse { cmd: cmd.into(), why }))?
            .ok_or_else(|| {
            BackendError::Other(format!(
                "no host interface holds {}, the gateway of instance {} ({}): is the lab up?",
                spec.gateway, spec.instance, spec.subnet
            ))
        })
    }

    fn forwarding(&self) -> Arc<dyn Forwarding> {
        Arc::new(IptablesForwarding::new(self.cfg.host_netns.clone()))
    }

    async fn guest_routes(&self, spec: &LabSpec) -> Result<Vec<(String, Ipv4Net)>, BackendError> {
        let mut routes = Vec::new();
        for (node, f) in self
            .ssh_each(spec, "ip -4 -j route show", &Limits::timeout(QUICK))
            .await?
        {
            let f = f.ok()?;
            let dests = routes_via(&f.stdout, spec.gateway).map_err(|why| {
                BackendError::HostNet(crate::hostnet::HostNetError::Parse { cmd: format!("vagrant ssh {node} -c 'ip -4 -j route show'"), why })
            })?;
            for dest in dests {
                routes.push((node.clone(), dest));
            }
        }
        Ok(routes)
    }

    async fn probe(&self, spec: &LabSpec, from: &str, targets: &[std::net::Ipv4Addr], timeout: Duration) -> Result<Vec<super::ProbeOutcome>, BackendError> {
        // One `vagrant ssh` per source guest: Vagrant's own start-up dominates (seconds).
        let dir = self.instance_dir(&spec.instance)?;
        let limits = Limits::timeout(timeout + Duration::from_secs(60));
        let command = probe::command(targets, timeout);
        let f = self.vagrant(&dir, &["ssh", from, "--no-tty", "-c", &command], &limits, false).await?;
        Ok(probe::parse(&f.stdout, targets))
    }

    async fn set_guest_route(
        &self,
        spec: &LabSpec,
        dest: Ipv4Net,
        present: bool,
        ctl: &OpControl,
    ) -> Result<(), BackendError> {
        let limits = Limits::start(ctl);
        let command = if present {
            format!("sudo ip route replace {dest} via {}", spec.gateway)
        } else {
            format!("sudo ip route del {dest} via {}", spec.gateway)
        };
        for (_, f) in self.ssh_each(spec, &command, &limits).await? {
            let gone = !present
                && (f.stderr.contains("No such process") || f.stdout.contains("No such process"));
            if !gone {
                f.ok()?;
            }
        }
        Ok(())
    }
}

/// The interface in `ip -j -4 addr show` output that holds `addr` (`None`: none does).
pub fn iface_with_address(ip_json: &str, addr: Ipv4Addr) -> Result<Option<String>, String> {
    Ok(ip::links(ip_json)?.into_iter().find(|l| l.addrs.iter().any(|a| a.local == addr)).map(|l| l.name))
}

/// Destinations of the routes in `ip -4 -j route show` output that go via `gateway`.
pub fn routes_via(ip_json: &str, gateway: Ipv4Addr) -> Result<Vec<Ipv4Net>, String> {
    Ok(ip::routes(ip_json)?.into_iter().filter(|r| r.gateway == Some(gateway)).filter_map(|r| r.dst).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_via_the_gateway_are_found() {
        let json = r#"[{"dst":"default","gateway":"10.0.0.1","dev":"eth0"},
            {"dst":"10.30.0.0/24","gateway":"10.20.0.1","dev":"eth1"},
            {"dst":"10.20.0.0/24","dev":"eth1","prefsrc":"10.20.0.10"},
            {"dst":"10.40.0.5","gateway":"10.20.0.1","dev":"eth1"}]"#;
        let got = routes_via(json, "10.20.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            got,
            vec![
                "10.30.0.0/24".parse::<Ipv4Net>().unwrap(),
                "10.40.0.5/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn interface_holding_an_address_is_found() {
        let json = r#"[{"ifname":"lo","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},{"ifname":"virbr1","addr_info":[{"family":"inet","local":"10.20.0.1","prefixlen":24}]}]"#;
        assert_eq!(
            iface_with_address(json, "10.20.0.1".parse().unwrap()).unwrap().as_deref(),
            Some("virbr1")
        );
        assert_eq!(iface_with_address(json, "10.9.9.9".parse().unwrap()).unwrap(), None);
        assert!(iface_with_address("nonsense", "10.9.9.9".parse().unwrap()).is_err());
    }

}

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
mod console;
pub mod failed_up;
mod files;
pub mod libvirt;
mod observe;
mod locks;
pub mod provision;
pub mod render;
pub mod runner;
pub mod status;
pub mod validate;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{
    Backend, BackendError, LabSpec, LabStatus, NodeSpec, NodeStatus, OpControl, Role,
    CONTROL_PLANE_OFFSET, WORKER_OFFSET,
};
use crate::hostnet::iptables::IptablesForwarding;
use crate::hostnet::Forwarding;
use crate::net::{self, Ipv4Net};
use crate::process::{Cmd, CommandError};

pub use render::{render_scripts, render_vagrantfile, ruby_str, sh_str, RenderError, RenderTarget};
pub use runner::{Finished, Grace, Limits, ToolCommand};
pub use status::{parse_status, MachineState, StatusReport};

use files::{io_err, write_private};
pub use validate::{
    check_instance, check_options, check_virtualbox_subnet, default_options, options_from_settings,
    options_into_settings, virtualbox_allowed_ranges, virtualbox_allowed_ranges_here, OptionError,
    DEFAULT_BOX, DEFAULT_CILIUM_VERSION, DEFAULT_CPUS, DEFAULT_KUBERNETES_VERSION,
    DEFAULT_MEMORY_MB, MIRROR_ATTRIBUTES,
};

/// Where the VMs run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Hypervisor {
    /// VirtualBox (host-only networks on vboxnet interfaces).
    #[default]
    VirtualBox,
    /// libvirt through the vagrant-libvirt plugin.
    Libvirt,
}

impl Hypervisor {
    /// `virtualbox` / `libvirt`: the attribute value and Vagrant's provider name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Hypervisor::VirtualBox => "virtualbox",
            Hypervisor::Libvirt => "libvirt",
        }
    }

    /// Parse `virtualbox` / `libvirt`.
    pub fn parse(text: &str) -> Option<Hypervisor> {
        match text {
            "virtualbox" => Some(Hypervisor::VirtualBox),
            "libvirt" => Some(Hypervisor::Libvirt),
            _ => None,
        }
    }
}

/// libvirt's domain type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LibvirtDriver {
    /// Hardware virtualisation.
    #[default]
    Kvm,
    /// Software emulation (TCG), for hosts whose KVM cannot boot a stock kernel.
    Qemu,
}

impl LibvirtDriver {
    /// `kvm` / `qemu`.
    pub fn as_str(&self) -> &'static str {
        match self {
            LibvirtDriver::Kvm => "kvm",
            LibvirtDriver::Qemu => "qemu",
        }
    }

    /// Parse `kvm` / `qemu`.
    pub fn parse(text: &str) -> Option<LibvirtDriver> {
        match text {
            "kvm" => Some(LibvirtDriver::Kvm),
            "qemu" => Some(LibvirtDriver::Qemu),
            _ => None,
        }
    }
}

/// How the Vagrant backend runs on this host.
#[derive(Debug, Clone)]
pub struct VagrantConfig {
    /// The `vagrant` program (default `vagrant` on PATH).
    pub vagrant_bin: PathBuf,
    /// VirtualBox or libvirt.
    pub hypervisor: Hypervisor,
    /// kvm or qemu (libvirt only).
    pub libvirt_driver: LibvirtDriver,
    /// The registry folder; instance folders are `<home>/instances/<name>/`.
    pub home: PathBuf,
    /// Extra environment for every vagrant run (e.g. `VAGRANT_HOME`).
    pub env: Vec<(String, String)>,
    /// Prefix for every host command (vagrant, virsh, ip), e.g. `nsenter --net=… --`.
    pub exec_prefix: Vec<String>,
    /// Network namespace holding the lab's host side (libvirt's bridges), for forwarding;
    /// `None`: the current one.
    pub host_netns: Option<String>,
    /// libvirt connection URI.
    pub libvirt_uri: String,
    /// Bring machines up in parallel (libvirt); off by default, as Vagrant advises.
    pub parallel: bool,
    /// Grace periods when stopping a vagrant run.
    pub grace: Grace,
}

impl VagrantConfig {
    /// Defaults (VirtualBox, `vagrant` on PATH) for a registry at `home`.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        VagrantConfig {
            vagrant_bin: PathBuf::from("vagrant"),
            hypervisor: Hypervisor::VirtualBox,
            libvirt_driver: LibvirtDriver::Kvm,
            home: home.into(),
            env: Vec::new(),
            exec_prefix: Vec::new(),
            host_netns: None,
            libvirt_uri: "qemu:///system".to_string(),
            parallel: false,
            grace: Grace::default(),
        }
    }
}

/// Timeout of the short read-only commands (status, virsh, ssh probes).
const QUICK: Duration = Duration::from_secs(120);

/// The Vagrant backend. See the module documentation.
#[derive(Debug, Clone)]
pub struct VagrantBackend {
    cfg: VagrantConfig,
}

impl VagrantBackend {
    /// A backend with this configuration.
    pub fn new(config: VagrantConfig) -> Self {
        VagrantBackend { cfg: config }
    }

    /// Its configuration.
    pub fn config(&self) -> &VagrantConfig {
        &self.cfg
    }

    /// `<home>/instances/<name>/` (an error when `name` is not a DNS label).
    pub fn instance_dir(&self, instance: &str) -> Result<PathBuf, BackendError> {
        if !render::is_dns_label(instance) {
            return Err(RenderError::BadName(instance.to_string()).into());
        }
        Ok(self.cfg.home.join("instances").join(instance))
    }

    /// The instance's generated Vagrantfile.
    pub fn vagrantfile_path(&self, instance: &str) -> Result<PathBuf, BackendError> {
        Ok(self.instance_dir(instance)?.join(render::VAGRANTFILE))
    }

    /// Where the instance's kubeconfig is written after provisioning (mode 0600).
    pub fn kubeconfig_path(&self, instance: &str) -> Result<PathBuf, BackendError> {
        Ok(self.instance_dir(instance)?.join("kubeconfig"))
    }

    /// `https://<cp-1 ip>:6443`, or with several control planes their virtual IP's.
    pub fn api_endpoint(spec: &LabSpec) -> Option<String> {
        crate::backend::api_address(&spec.subnet, &spec.nodes).map(provision::api_endpoint)
    }

    fn target(&self) -> RenderTarget {
        RenderTarget {
            hypervisor: self.cfg.hypervisor,
            libvirt_driver: self.cfg.libvirt_driver,
        }
    }

    /// A host command, through the configured prefix.
    fn host_cmd<I, S>(&self, argv: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut full: Vec<String> = self.cfg.exec_prefix.clone();
        full.extend(Cmd::new(argv).argv);
        Cmd::new(full)
    }

    /// A vagrant command for the instance folder `dir`.
    fn vagrant_cmd(&self, dir: &Path, args: &[String], log_at_info: bool) -> ToolCommand {
        let mut argv = vec![self.cfg.vagrant_bin.to_string_lossy().into_owned()];
        argv.extend(args.iter().cloned());
        let mut env = vec![
            // The prefix may change directories (nsenter does): Vagrant finds its folder here.
            (
                "VAGRANT_CWD".to_string(),
                dir.to_string_lossy().into_owned(),
            ),
            ("VAGRANT_CHECKPOINT_DISABLE".to_string(), "1".to_string()),
            (
                "VAGRANT_BOX_UPDATE_CHECK_DISABLE".to_string(),
                "1".to_string(),
            ),
            ("VAGRANT_NO_COLOR".to_string(), "1".to_string()),
        ];
        if self.cfg.hypervisor == Hypervisor::Libvirt {
            env.push((
                "LIBVIRT_DEFAULT_URI".to_string(),
                self.cfg.libvirt_uri.clone(),
            ));
        }
        env.extend(self.cfg.env.iter().cloned());
        ToolCommand {
            cmd: self.host_cmd(argv),
            cwd: Some(dir.to_path_buf()),
            env,
            log_at_info,
            on_line: None,
            secret_output: false,
            pidfile: None,
        }
    }

    async fn vagrant(
        &self,
        dir: &Path,
        args: &[&str],
        limits: &Limits,
        log_at_info: bool,
    ) -> Result<Finished, BackendError> {
        self.vagrant_with(dir, args, limits, log_at_info, None, Secrecy::NONE).await
    }

    /// [`Self::vagrant`] for a command that carries secrets: `secrets` are values in `args`
    /// never to be shown, `secret_output` says whether what it prints holds secrets (see
    /// `runner::ToolCommand`).
    async fn vagrant_secret(
        &self,
        dir: &Path,
        args: &[&str],
        limits: &Limits,
        secrets: &[&str],
        secret_output: bool,
    ) -> Result<Finished, BackendError> {
        let secrecy = Secrecy { values: secrets, output: secret_output };
        self.vagrant_with(dir, args, limits, !secret_output, None, secrecy).await
    }

    /// Stop a vagrant command a killed provider left running in `dir`.
    async fn stop_left_running(&self, dir: &Path) {
        if let Some(pid) = runner::stop_left_running(&dir.join(RUNNING_FILE), self.cfg.grace).await {
            tracing::warn!(folder = %dir.display(), pid, "stopped a vagrant command that a killed provider had left running");
        }
    }

    /// Run `command` in every node of the spec with `vagrant ssh -c`, all nodes at once
    /// (each is its own vagrant process group); results in node order.
    async fn ssh_each(
        &self,
        spec: &LabSpec,
        command: &str,
        limits: &Limits,
    ) -> Result<Vec<(String, Finished)>, BackendError> {
        let dir = self.instance_dir(&spec.instance)?;
        let mut set = tokio::task::JoinSet::new();
        for (i, node) in spec.nodes.iter().enumerate() {
            let (this, dir, limits) = (self.clone(), dir.clone(), limits.clone());
            let (name, command) = (node.name.clone(), command.to_string());
            set.spawn(async move {
                let f = this
                    .vagrant(
                        &dir,
                        &["ssh", &name, "--no-tty", "-c", &command],
                        &limits,
                        false,
                    )
                    .await;
                (i, name, f)
            });
        }
        let mut out: Vec<Option<(String, Finished)>> = vec![None; spec.nodes.len()];
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            let (i, name, f) =
                joined.map_err(|source| BackendError::Task { what: "a `vagrant ssh` of this operation".into(), source })?;
            match f {
                Ok(f) => out[i] = Some((name, f)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(out.into_iter().flatten().collect())
    }
}

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
        iface_with_address(&f.stdout, spec.gateway).ok_or_else(|| {
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
            for dest in routes_via(&f.stdout, spec.gateway) {
                routes.push((node.clone(), dest));
            }
        }
        Ok(routes)
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

/// What of a vagrant command must never be shown (see `runner::ToolCommand`).
#[derive(Clone, Copy)]
struct Secrecy<'a> {
    /// Values in its arguments.
    values: &'a [&'a str],
    /// Its whole output.
    output: bool,
}

impl Secrecy<'_> {
    const NONE: Secrecy<'static> = Secrecy { values: &[], output: false };
}

/// While a vagrant command on every machine of an instance folder runs, this file of the
/// folder names its process; a provider killed meanwhile leaves it (see
/// `runner::stop_left_running`).
pub const RUNNING_FILE: &str = "vagrant-running.pid";

/// The interface of `ip -j addr` output that holds `addr`.
pub fn iface_with_address(ip_json: &str, addr: Ipv4Addr) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(ip_json).ok()?;
    v.as_array()?.iter().find_map(|link| {
        let holds = link["addr_info"]
            .as_array()?
            .iter()
            .any(|a| a["local"].as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()) == Some(addr));
        holds
            .then(|| link["ifname"].as_str().map(str::to_string))
            .flatten()
    })
}

/// Destinations of the routes in `ip -4 -j route show` output that go via `gateway`.
pub fn routes_via(ip_json: &str, gateway: Ipv4Addr) -> Vec<Ipv4Net> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(ip_json.trim()) else {
        return Vec::new();
    };
    v.as_array()
        .map(|rs| {
            rs.iter()
                .filter(|r| {
                    r["gateway"]
                        .as_str()
                        .and_then(|g| g.parse::<Ipv4Addr>().ok())
                        == Some(gateway)
                })
                .filter_map(|r| {
                    let dst = r["dst"].as_str()?;
                    if dst == "default" {
                        return None;
                    }
                    if dst.contains('/') {
                        dst.parse::<Ipv4Net>().ok()
                    } else {
                        dst.parse::<Ipv4Addr>()
                            .ok()
                            .map(|a| Ipv4Net::new(a, 32).expect("/32"))
                    }
                })
                .collect()
        })
        .unwrap_or_default()
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
        let got = routes_via(json, "10.20.0.1".parse().unwrap());
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
        let json = r#"[{"ifname":"lo","addr_info":[{"local":"127.0.0.1"}]},{"ifname":"virbr1","addr_info":[{"local":"10.20.0.1","prefixlen":24}]}]"#;
        assert_eq!(
            iface_with_address(json, "10.20.0.1".parse().unwrap()).as_deref(),
            Some("virbr1")
        );
        assert_eq!(iface_with_address(json, "10.9.9.9".parse().unwrap()), None);
    }

}

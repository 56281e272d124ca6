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

pub mod box_import;
pub mod probe;
pub mod failed_up;
pub mod libvirt;
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
pub use validate::{
    check_instance, check_options, check_virtualbox_subnet, default_options,
    virtualbox_allowed_ranges, virtualbox_allowed_ranges_here, OptionError, DEFAULT_BOX,
    DEFAULT_CPUS, DEFAULT_KUBERNETES_VERSION, DEFAULT_MEMORY_MB,
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
            return Err(BackendError::Other(
                RenderError::BadName(instance.to_string()).to_string(),
            ));
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

    /// [`Self::vagrant`], handing every output line to `on_line` as it comes.
    async fn vagrant_with(
        &self,
        dir: &Path,
        args: &[&str],
        limits: &Limits,
        log_at_info: bool,
        on_line: Option<runner::LineHook>,
        secrecy: Secrecy<'_>,
    ) -> Result<Finished, BackendError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut cmd = self.vagrant_cmd(dir, &args, log_at_info);
        cmd.on_line = on_line;
        for v in secrecy.values {
            cmd.cmd = cmd.cmd.with_secret(*v);
        }
        cmd.secret_output = secrecy.output;
        if machine_scope(&args) == MachineScope::All {
            cmd.pidfile = Some(dir.join(RUNNING_FILE));
        }
        // Vagrant locks each machine for the length of a command and fails another command on
        // it at once (MachineLocked). Within this process, commands on one instance folder are
        // ordered: `ssh` (one machine each, run side by side) share the folder, everything else
        // (status, up, destroy, halt: every machine) has it alone. Terraform refreshes an
        // instance and its federation at the same time, and both run vagrant on its machines.
        let lock = folder_lock(dir);
        let mut delay = LOCKED_RETRY_FIRST;
        loop {
            let f = match machine_scope(&args) {
                MachineScope::None => runner::run_tool(&cmd, limits, self.cfg.grace).await?,
                MachineScope::One => {
                    let _shared = lock.read().await;
                    runner::run_tool(&cmd, limits, self.cfg.grace).await?
                }
                MachineScope::All => {
                    let _alone = lock.write().await;
                    runner::run_tool(&cmd, limits, self.cfg.grace).await?
                }
            };
            // Another process (or two `ssh` on one machine) holding a machine: wait and retry
            // while the operation's deadline allows; the lock is released within seconds
            // unless a long `vagrant up` holds it, and then the deadline decides.
            if f.status.success()
                || !machine_locked(&f)
                || limits.cancel.is_cancelled()
                || tokio::time::Instant::now() + delay >= limits.deadline
            {
                return Ok(f);
            }
            tracing::info!(
                command = %f.cmd,
                retry_in_ms = delay.as_millis() as u64,
                "a Vagrant machine is locked by another Vagrant process; retrying"
            );
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = limits.cancel.cancelled() => return Ok(f),
            }
            delay = (delay * 2).min(LOCKED_RETRY_MAX);
        }
    }

    /// Stop a vagrant command a killed provider left running in `dir`.
    async fn stop_left_running(&self, dir: &Path) {
        if let Some(pid) = runner::stop_left_running(&dir.join(RUNNING_FILE), self.cfg.grace).await {
            tracing::warn!(folder = %dir.display(), pid, "stopped a vagrant command that a killed provider had left running");
        }
    }

    async fn virsh(&self, args: &[&str]) -> Result<Finished, BackendError> {
        let mut argv = vec!["virsh", "-q", "-c", self.cfg.libvirt_uri.as_str()];
        argv.extend_from_slice(args);
        runner::run_tool(
            &ToolCommand::new(self.host_cmd(argv)),
            &Limits::timeout(QUICK),
            self.cfg.grace,
        )
        .await
    }

    /// Define and start the instance's host-only and management networks if they are not
    /// there (serialized across processes by a host lock).
    async fn ensure_networks(&self, spec: &LabSpec, dir: &Path) -> Result<(), BackendError> {
        let mut nets = vec![(
            render::hostonly_network_name(&spec.instance),
            libvirt::hostonly_bridge(&spec.subnet),
            spec.subnet,
            false,
        )];
        if let Some(m) = spec.mgmt_cidr {
            nets.push((render::mgmt_network_name(&spec.instance), libvirt::mgmt_bridge(&m), m, true));
        }
        let _lock = crate::hostnet::host::HostLock::acquire("libvirt-networks", Duration::from_secs(120))
            .await
            .map_err(|e| BackendError::Other(format!("locking libvirt network creation: {e}")))?;
        for (name, bridge, subnet, dhcp) in nets {
            let info = self.virsh(&["net-info", &name]).await?;
            if !info.status.success() {
                let file = dir.join(format!("{name}.net.xml"));
                std::fs::write(&file, libvirt::network_xml(&name, &bridge, &subnet, dhcp))
                    .map_err(|e| io_err(&file, e))?;
                tracing::info!(network = %name, bridge = %bridge, %subnet, "defining isolated libvirt network");
                let path = file.display().to_string();
                self.virsh(&["net-define", &path]).await?.ok()?;
            }
            let info = self.virsh(&["net-info", &name]).await?;
            let active = info
                .stdout
                .lines()
                .any(|l| l.starts_with("Active:") && l.trim_end().ends_with("yes"));
            if !active {
                self.virsh(&["net-start", &name]).await?.ok()?;
            }
        }
        Ok(())
    }

    /// `err` with the last lines of the serial consoles of `nodes` (libvirt keeps them in the
    /// instance folder); `err` itself when there are none.
    fn with_consoles(&self, err: BackendError, dir: &Path, nodes: &[&str]) -> BackendError {
        if self.cfg.hypervisor != Hypervisor::Libvirt {
            return err;
        }
        let mut consoles = String::new();
        for node in nodes {
            let path = dir.join(render::console_log(node));
            let Ok(bytes) = std::fs::read(&path) else { continue };
            let tail = console_tail(&String::from_utf8_lossy(&bytes), CONSOLE_LINES);
            let shown = if tail.is_empty() { "(nothing yet)".to_string() } else { tail.join("\n") };
            consoles.push_str(&format!(
                "last lines of the serial console of {node} ({}):\n{shown}\n",
                path.display()
            ));
        }
        if consoles.is_empty() {
            err
        } else {
            BackendError::WithConsoles { source: Box::new(err), consoles: consoles.trim_end().to_string() }
        }
    }

    /// `vagrant status --machine-readable` in `dir`.
    pub async fn machine_status(
        &self,
        dir: &Path,
        limits: &Limits,
    ) -> Result<StatusReport, BackendError> {
        let f = self
            .vagrant(dir, &["status", "--machine-readable"], limits, false)
            .await?
            .ok()?;
        Ok(parse_status(&f.stdout))
    }

    /// Machines Vagrant has created in `dir` for the configured provider (its own records,
    /// `.vagrant/machines/<name>/<provider>/id`), read without running Vagrant.
    pub fn recorded_machines(&self, dir: &Path) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let Ok(entries) = std::fs::read_dir(dir.join(".vagrant").join("machines")) else {
            return out;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = e.path().join(self.cfg.hypervisor.as_str()).join("id");
            if std::fs::metadata(&id).map(|m| m.len() > 0).unwrap_or(false) {
                out.insert(name);
            }
        }
        out
    }

    /// The spec's nodes plus nodes of the instance that Vagrant created but the spec no longer
    /// lists (their addresses follow the naming plan), for a Vagrantfile that can still
    /// destroy them.
    fn with_leftovers(spec: &LabSpec, recorded: &BTreeSet<String>) -> (LabSpec, Vec<String>) {
        let mut full = spec.clone();
        let mut removed = Vec::new();
        for name in recorded {
            if spec.nodes.iter().any(|n| &n.name == name) {
                continue;
            }
            if let Some(node) = node_from_name(&spec.instance, name, &spec.subnet) {
                removed.push(name.clone());
                full.nodes.push(node);
            } else {
                tracing::warn!(machine = %name, "Vagrant records a machine that does not follow this instance's naming; leaving it");
            }
        }
        (full, removed)
    }

    fn write_instance_files(&self, spec: &LabSpec, dir: &Path) -> Result<(), BackendError> {
        let vf = render_vagrantfile(spec, self.target())
            .map_err(|e| BackendError::Other(e.to_string()))?;
        let scripts = render_scripts(spec).map_err(|e| BackendError::Other(e.to_string()))?;
        if !scripts.is_empty() {
            let sdir = dir.join(render::SCRIPTS_DIR);
            std::fs::create_dir_all(&sdir).map_err(|e| io_err(&sdir, e))?;
            for (name, content) in &scripts {
                write_if_changed(&sdir.join(name), content, 0o755)?;
            }
        }
        write_if_changed(&dir.join(render::VAGRANTFILE), &vf, 0o644)
    }

    async fn run_join(
        &self,
        spec: &LabSpec,
        dir: &Path,
        limits: &Limits,
    ) -> Result<(), BackendError> {
        let Some(cp1) = render::first_control_plane(spec) else {
            return Ok(());
        };
        for node in spec.nodes.iter().filter(|n| n.name != cp1.name) {
            let joined = self
                .vagrant(
                    dir,
                    &[
                        "ssh",
                        &node.name,
                        "--no-tty",
                        "-c",
                        "test -f /etc/kubernetes/kubelet.conf",
                    ],
                    limits,
                    false,
                )
                .await?;
            if joined.status.success() {
                continue;
            }
            // Its output is the join command: the bootstrap token.
            let out = self
                .vagrant_secret(
                    dir,
                    &["ssh", &cp1.name, "--no-tty", "-c", "sudo kubeadm token create --print-join-command"],
                    limits,
                    &[],
                    true,
                )
                .await?
                .ok()?;
            let params = provision::parse_join_command(&out.stdout).ok_or_else(|| {
                BackendError::Other(format!(
                    "{}: could not read the join command from `kubeadm token create --print-join-command` ({} lines of output, not shown: they may hold the bootstrap token)",
                    cp1.name,
                    out.stdout.lines().count()
                ))
            })?;
            let key = if node.role == Role::ControlPlane {
                // Its output is the certificate key.
                let out = self
                    .vagrant_secret(
                        dir,
                        &["ssh", &cp1.name, "--no-tty", "-c", "sudo kubeadm init phase upload-certs --upload-certs"],
                        limits,
                        &[],
                        true,
                    )
                    .await?
                    .ok()?;
                Some(
                    provision::parse_certificate_key(&out.stdout).ok_or_else(|| {
                        BackendError::Other(format!(
                        "{}: no certificate key in the output of `kubeadm init phase upload-certs`",
                        cp1.name
                    ))
                    })?,
                )
            } else {
                None
            };
            let join = provision::join_command(node, &params, key.as_deref());
            tracing::info!(node = %node.name, "joining the cluster");
            let mut secrets = vec![params.token.as_str()];
            secrets.extend(key.as_deref());
            self.vagrant_secret(dir, &["ssh", &node.name, "--no-tty", "-c", &join], limits, &secrets, false)
                .await?
                .ok()?;
        }
        // The cluster's admin credentials (client key included).
        let out = self
            .vagrant_secret(dir, &["ssh", &cp1.name, "--no-tty", "-c", "sudo cat /etc/kubernetes/admin.conf"], limits, &[], true)
            .await?
            .ok()?;
        if !out.stdout.contains("apiVersion:") {
            return Err(BackendError::Other(format!(
                "{}: /etc/kubernetes/admin.conf is not a kubeconfig (did `kubeadm init` run? see the control-plane provisioner's output); its {} lines are not shown (they may hold credentials)",
                cp1.name,
                out.stdout.lines().count()
            )));
        }
        write_private(&dir.join("kubeconfig"), &out.stdout)
    }

    /// libvirt networks of the instance that exist (`virsh net-list --all --name`).
    async fn existing_networks(&self, instance: &str) -> Result<Vec<String>, BackendError> {
        let out = self.virsh(&["net-list", "--all", "--name"]).await?.ok()?;
        let all = libvirt::parse_names(&out.stdout);
        Ok(libvirt::instance_networks(instance)
            .into_iter()
            .filter(|n| all.contains(n))
            .collect())
    }

    async fn network_problems(&self, instance: &str) -> Result<Vec<String>, BackendError> {
        let mut problems = Vec::new();
        let existing = self.existing_networks(instance).await?;
        for net in libvirt::instance_networks(instance) {
            if !existing.contains(&net) {
                problems.push(format!("libvirt network {net} is missing"));
                continue;
            }
            let xml = self.virsh(&["net-dumpxml", &net]).await?.ok()?;
            if !libvirt::is_isolated(&xml.stdout) {
                problems.push(format!(
                    "libvirt network {net} forwards traffic (it has a <forward> element): it must be isolated"
                ));
            }
        }
        Ok(problems)
    }

    /// Remove what Vagrant left of the instance in libvirt: domains, disks, networks.
    async fn cleanup_libvirt(&self, instance: &str) -> Result<(), BackendError> {
        let domains = self.virsh(&["list", "--all", "--name"]).await?.ok()?;
        for dom in libvirt::parse_names(&domains.stdout)
            .into_iter()
            .filter(|d| libvirt::is_domain_of(instance, d))
        {
            tracing::info!(domain = %dom, "removing a domain Vagrant left behind");
            let _ = self.virsh(&["destroy", &dom]).await?;
            self.virsh(&["undefine", &dom, "--remove-all-storage"])
                .await?
                .ok()?;
        }
        if let Ok(vols) = self.virsh(&["vol-list", "default"]).await?.ok() {
            for vol in libvirt::parse_vol_list(&vols.stdout)
                .into_iter()
                .filter(|v| libvirt::is_volume_of(instance, v))
            {
                tracing::info!(volume = %vol, "removing a disk Vagrant left behind");
                self.virsh(&["vol-delete", &vol, "--pool", "default"])
                    .await?
                    .ok()?;
            }
        }
        for net in self.existing_networks(instance).await? {
            tracing::info!(network = %net, "removing the instance's libvirt network");
            let _ = self.virsh(&["net-destroy", &net]).await?;
            self.virsh(&["net-undefine", &net]).await?.ok()?;
        }
        Ok(())
    }

    async fn observe_with(
        &self,
        spec: &LabSpec,
        limits: &Limits,
    ) -> Result<LabStatus, BackendError> {
        let dir = self.instance_dir(&spec.instance)?;
        let absent = |nodes: &[NodeSpec]| LabStatus {
            exists: false,
            nodes: nodes
                .iter()
                .map(|n| NodeStatus {
                    name: n.name.clone(),
                    state: "not_created".into(),
                    healthy: false,
                })
                .collect(),
            extra_nodes: Vec::new(),
            problems: Vec::new(),
        };
        if !dir.join(render::VAGRANTFILE).is_file() {
            return Ok(absent(&spec.nodes));
        }
        let report = self.machine_status(&dir, limits).await?;
        let recorded = self.recorded_machines(&dir);
        let failed = failed_up::load(&dir).unwrap_or_default();
        let nodes: Vec<NodeStatus> = spec
            .nodes
            .iter()
            .map(|n| {
                let mut state = report
                    .get(&n.name)
                    .map(|m| m.state.clone())
                    .unwrap_or_else(|| "not_created".into());
                // Running, maybe, but its last bring-up failed: the next apply rebuilds it.
                if failed.machines.contains(&n.name) && state != "not_created" {
                    state = failed_up::STATE.into();
                }
                NodeStatus {
                    healthy: state == "running",
                    name: n.name.clone(),
                    state,
                }
            })
            .collect();
        let in_spec = |name: &str| spec.nodes.iter().any(|n| n.name == name);
        let mut extra: BTreeSet<String> =
            recorded.iter().filter(|m| !in_spec(m)).cloned().collect();
        extra.extend(
            report
                .machines
                .iter()
                .filter(|m| m.created() && !in_spec(&m.name))
                .map(|m| m.name.clone()),
        );
        let exists = nodes.iter().any(|n| n.state != "not_created") || !extra.is_empty();
        if !exists {
            return Ok(absent(&spec.nodes));
        }
        let problems = if self.cfg.hypervisor == Hypervisor::Libvirt {
            self.network_problems(&spec.instance).await?
        } else {
            Vec::new()
        };
        Ok(LabStatus {
            exists,
            nodes,
            extra_nodes: extra.into_iter().collect(),
            problems,
        })
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
                joined.map_err(|e| BackendError::Other(format!("vagrant ssh task failed: {e}")))?;
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

/// Rebuild a node of `instance` from its name (`acme-worker-3` → worker at .22).
fn node_from_name(instance: &str, name: &str, subnet: &Ipv4Net) -> Option<NodeSpec> {
    if !libvirt::is_node_of(instance, name) {
        return None;
    }
    let rest = &name[instance.len() + 1..];
    let (role, base, n) = if let Some(n) = rest.strip_prefix("cp-") {
        (Role::ControlPlane, CONTROL_PLANE_OFFSET, n)
    } else {
        (Role::Worker, WORKER_OFFSET, rest.strip_prefix("worker-")?)
    };
    let index: u32 = n.parse().ok()?;
    Some(NodeSpec {
        name: name.to_string(),
        role,
        ip: net::nth_address(subnet, base + index - 1)?,
    })
}

fn io_err(path: &Path, source: std::io::Error) -> BackendError {
    BackendError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Write `content` to `path` atomically (temporary file + rename), only when it differs.
fn write_if_changed(path: &Path, content: &str, mode: u32) -> Result<(), BackendError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(());
    }
    write_atomic(path, content, mode)
}

fn write_atomic(path: &Path, content: &str, mode: u32) -> Result<(), BackendError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("homelab-tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| io_err(&tmp, e))?;
    f.write_all(content.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))
}

/// Write a secret (the kubeconfig): created 0600, never readable by others even briefly.
fn write_private(path: &Path, content: &str) -> Result<(), BackendError> {
    write_atomic(path, content, 0o600)
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
            BackendError::Other(RenderError::NoOptions(spec.instance.clone()).to_string())
        })?;
        check_options(opts).map_err(|e| BackendError::Other(e.to_string()))?;
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

        // 5. Bring up what is not running (created, halted or missing); leave the rest.
        let report = self.machine_status(&dir, &limits).await?;
        let down: Vec<&str> = spec
            .nodes
            .iter()
            .filter(|n| !report.get(&n.name).is_some_and(MachineState::running))
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
        self.observe_with(spec, &limits).await
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

/// How many lines of a serial console an error shows.
const CONSOLE_LINES: usize = 12;

/// The last `n` lines of a serial console log that hold text (escape sequences and carriage
/// returns removed).
pub fn console_tail(log: &str, n: usize) -> Vec<String> {
    let clean = |line: &str| {
        let text = runner::strip_ansi(line);
        text.chars()
            .filter(|c| !c.is_control() || *c == '\t')
            .collect::<String>()
            .trim_end()
            .to_string()
    };
    let lines: Vec<String> = log.lines().map(clean).filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
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

/// First wait before retrying a command that met a locked machine, and the longest wait.
const LOCKED_RETRY_FIRST: Duration = Duration::from_millis(250);
const LOCKED_RETRY_MAX: Duration = Duration::from_secs(4);

/// Which machines of an instance folder a vagrant command locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MachineScope {
    /// None (`--version`, `plugin list`, `validate`, `box …`).
    None,
    /// The one machine it names (`ssh <machine>`).
    One,
    /// Possibly every machine of the folder.
    All,
}

fn machine_scope(args: &[String]) -> MachineScope {
    match args.first().map(String::as_str) {
        None | Some("--version" | "version" | "plugin" | "validate" | "box" | "global-status") => MachineScope::None,
        Some("ssh") => MachineScope::One,
        Some(_) => MachineScope::All,
    }
}

/// The in-process order of the vagrant commands on one instance folder.
fn folder_lock(dir: &Path) -> Arc<tokio::sync::RwLock<()>> {
    static LOCKS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<PathBuf, Arc<tokio::sync::RwLock<()>>>>> =
        std::sync::OnceLock::new();
    let mut locks = LOCKS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    locks.entry(dir.to_path_buf()).or_default().clone()
}

/// Vagrant refused because another Vagrant process holds one of the machines
/// (`Vagrant::Errors::MachineLocked`, machine-readable or not).
pub fn machine_locked(f: &Finished) -> bool {
    [f.stdout.as_str(), f.stderr.as_str()]
        .iter()
        .any(|o| o.contains("Vagrant::Errors::MachineLocked") || o.contains("requested machine because it is locked"))
}

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
    fn a_failed_boot_shows_the_consoles_of_the_machines_it_was_starting() {
        let home = tempfile::tempdir().unwrap();
        let mut cfg = VagrantConfig::new(home.path());
        cfg.hypervisor = Hypervisor::Libvirt;
        let backend = VagrantBackend::new(cfg.clone());
        let dir = backend.instance_dir("acme").unwrap();
        std::fs::create_dir_all(dir.join("console")).unwrap();
        std::fs::write(dir.join(render::console_log("acme-cp-1")), "Booting\r\nGave up waiting for root file system device.\r\n").unwrap();
        let timeout = || BackendError::Timeout { timeout: Duration::from_secs(480), running: "vagrant up".into() };
        let err = backend.with_consoles(timeout(), &dir, &["acme-cp-1", "acme-worker-1"]);
        let text = err.to_string();
        assert!(matches!(err, BackendError::WithConsoles { .. }), "{err:?}");
        assert!(text.starts_with("timed out after 480s while running `vagrant up`"), "{text}");
        assert!(text.contains("last lines of the serial console of acme-cp-1"), "{text}");
        assert!(text.ends_with("Booting\nGave up waiting for root file system device."), "{text}");
        assert!(!text.contains("acme-worker-1"), "a machine without a console log is not listed: {text}");
        // VirtualBox keeps no console file: the error stays as it was.
        cfg.hypervisor = Hypervisor::VirtualBox;
        let err = VagrantBackend::new(cfg).with_consoles(timeout(), &dir, &["acme-cp-1"]);
        assert!(matches!(err, BackendError::Timeout { .. }), "{err:?}");
    }

    #[test]
    fn console_tails_drop_escapes_and_blank_lines() {
        let log = "SeaBIOS\r\n\u{1b}[0m\u{1b}[1;31mBegin: Mounting root\u{1b}[0m\r\n\r\n  \r\nGave up waiting for root file system device.\r\n(initramfs) ";
        assert_eq!(
            console_tail(log, 2),
            vec!["Gave up waiting for root file system device.".to_string(), "(initramfs)".to_string()]
        );
        assert_eq!(console_tail(log, 10)[1], "Begin: Mounting root");
        assert!(console_tail("", 5).is_empty());
    }

    #[test]
    fn machine_locks_are_recognised_and_scoped() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(machine_scope(&args(&["ssh", "acme-cp-1", "-c", "true"])), MachineScope::One);
        assert_eq!(machine_scope(&args(&["status", "--machine-readable"])), MachineScope::All);
        assert_eq!(machine_scope(&args(&["destroy", "-f", "acme-worker-2"])), MachineScope::All);
        assert_eq!(machine_scope(&args(&["--version"])), MachineScope::None);
        assert_eq!(machine_scope(&args(&["plugin", "list"])), MachineScope::None);
        let finished = |stdout: &str, stderr: &str| Finished {
            cmd: "vagrant status --machine-readable".into(),
            status: std::os::unix::process::ExitStatusExt::from_raw(256),
            stdout: stdout.into(),
            stderr: stderr.into(),
            tail: vec![],
        };
        // As Vagrant 2.3.4 printed it in CI, machine-readable and for humans.
        assert!(machine_locked(&finished(
            "1795684941,,error-exit,Vagrant::Errors::MachineLocked,Vagrant can't use the requested machine because it is locked! This\\nmeans",
            ""
        )));
        assert!(machine_locked(&finished("", "Vagrant can't use the requested machine because it is locked! This")));
        assert!(!machine_locked(&finished("", "The machine with the name 'x' was not found")));
    }

    #[test]
    fn leftover_nodes_are_rebuilt_from_their_names() {
        let subnet: Ipv4Net = "10.20.0.0/24".parse().unwrap();
        let n = node_from_name("acme", "acme-worker-3", &subnet).unwrap();
        assert_eq!(
            (n.role, n.ip.to_string()),
            (Role::Worker, "10.20.0.22".to_string())
        );
        let n = node_from_name("acme", "acme-cp-2", &subnet).unwrap();
        assert_eq!(
            (n.role, n.ip.to_string()),
            (Role::ControlPlane, "10.20.0.11".to_string())
        );
        assert!(node_from_name("acme", "globex-cp-1", &subnet).is_none());
    }

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

    #[test]
    fn kubeconfig_is_written_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("kubeconfig");
        write_private(&p, "secret").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "secret");
    }
}

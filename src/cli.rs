//! The provider binary's own subcommands, for people rather than Terraform:
//!
//! - `reservations list [--home DIR]`: plan-time reservations, live, expired and taken over,
//!   with who made them in which workspace.
//! - `reservations drop [--home DIR] [--expired] (--all | NAME...)`: drop them before they
//!   expire (recorded in the audit log).
//! - `registry list [--home DIR]`: every entry with its status, workspace and age, interrupted
//!   creations included.
//! - `registry check [--home DIR]`: the registry document and event log are sound (else what is
//!   wrong and the way back, exit code 1), and which creations were interrupted (exit code 3
//!   when there are some), with how to finish each.
//! - `registry repair [--home DIR]`: bring a damaged registry back from its event log and
//!   previous versions (see [`crate::registry::repair`]), saying what to run next.
//! - `instances remove [--home DIR] NAME...`: tear down instances whose workspace is gone for
//!   good (their federations first) and release their networks.
//! - `events verify [--home DIR]`: verify the event log's hash chain against the registry.
//! - `registry migrate [--home DIR] --to etcd://…`: move the file registry into the etcd store
//!   (see [`crate::registry::migrate`]).
//!
//! With `--registry etcd://…` (or `$HOMELAB_REGISTRY`) the commands work on the etcd store.
//! - `docs --schema FILE --examples DIR --out DIR`: generate `docs/` (see [`crate::docs`]).
//!
//! Run without arguments by Terraform, the binary serves the plugin protocol instead.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::{Actor, Client};
use crate::registry::etcd::{EtcdConfig, EtcdStore};
use crate::registry::file::FileStore;
use crate::registry::repair::{self, DocState, LogState};
use crate::registry::{migrate, rfc3339, Clock, Registry, Store, SystemClock};
use crate::settings::{self, RawSettings};

/// Usage text.
pub const USAGE: &str = "\
terraform-provider-homelab: a Terraform/OpenTofu provider (run by Terraform, not by hand).

Subcommands for people:
  reservations list [--home DIR]
      List plan-time reservations (live, expired, or taken over) and their workspaces.
  reservations drop [--home DIR] [--expired] (--all | NAME...)
      Drop reservations before they expire (e.g. left by a plan that was never applied).
  registry list [--home DIR]
      List every instance and federation of the registry: status (allocated, reserved, creating
      (pid N) while a run works on it; interrupted, unconfirmed or removal interrupted when that
      run was killed: the next apply of its workspace adopts it), workspace, since when.
  registry check [--home DIR]
      Check the registry and its event log, and report interrupted creations (an apply killed
      part way) with how to finish or remove each. Exit code: 0 sound, 1 broken, 3 interrupted
      creations waiting for their workspace. A damaged registry (unparseable, edited by hand, an
      older copy restored, a missing or broken event log) is described with its way back.
  registry repair [--home DIR]
      Bring a damaged registry back from its event log and its previous versions
      (<home>/generations/), record a registry.repair event, and say what to run next.
  instances remove [--home DIR] NAME...
      Tear down the labs of instances whose workspace is gone for good (their federations first)
      and release their networks, recorded in the audit log.
  events verify [--home DIR]
      Verify the hash chain of the event log against the registry.
  registry migrate [--home DIR] --to etcd://HOST:PORT[,HOST:PORT...]/PREFIX/
      Move the file registry of DIR into the etcd store (etcds:// for TLS), refused whole when
      the target holds a name or a network the registry collides with; recorded as a
      registry.migrate event, and DIR/registry-moved-to says where it went.

Every command but docs and migrate works on the etcd store instead of DIR with
--registry etcd://HOST:PORT,.../PREFIX/ (or $HOMELAB_REGISTRY); with TLS: --etcd-ca FILE,
--etcd-cert FILE --etcd-key FILE; with auth: --etcd-user NAME and $HOMELAB_ETCD_PASSWORD.
  docs --schema FILE --examples DIR --out DIR
      Generate the registry docs from `terraform providers schema -json` output and examples.
  --version

DIR defaults to $HOMELAB_HOME, else ~/.homelab.
";

/// A failed subcommand: message and exit code.
#[derive(Debug)]
pub struct CliError {
    /// What to print on stderr.
    pub message: String,
    /// Exit code (2: usage, 1: failure).
    pub code: u8,
}

fn usage(msg: impl Into<String>) -> CliError {
    CliError {
        message: format!("{}\n\n{USAGE}", msg.into()),
        code: 2,
    }
}

fn fail(msg: impl std::fmt::Display) -> CliError {
    CliError {
        message: msg.to_string(),
        code: 1,
    }
}

struct Args {
    home: PathBuf,
    flags: Vec<String>,
    positional: Vec<String>,
    options: Vec<(String, String)>,
}

fn parse(args: &[String]) -> Result<Args, CliError> {
    let mut home = None;
    let mut flags = Vec::new();
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--home" | "--schema" | "--examples" | "--out" | "--registry" | "--to" | "--etcd-ca" | "--etcd-cert" | "--etcd-key" | "--etcd-user" => {
                let v = it.next().ok_or_else(|| usage(format!("{a} needs a value")))?;
                if a == "--home" {
                    home = Some(PathBuf::from(v));
                } else {
                    options.push((a.trim_start_matches('-').to_string(), v.clone()));
                }
            }
            f if f.starts_with("--") => flags.push(f.to_string()),
            p => positional.push(p.to_string()),
        }
    }
    Ok(Args {
        home: home.unwrap_or_else(settings::default_home),
        flags,
        positional,
        options,
    })
}

impl Args {
    fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The etcd store named by `url` with the TLS and user options (password from
    /// `$HOMELAB_ETCD_PASSWORD`, never from the command line).
    fn etcd(&self, url: &str) -> Result<EtcdConfig, CliError> {
        let parsed = EtcdConfig::parse_url(url).map_err(usage)?;
        let raw = settings::RawEtcd {
            endpoints: Some(parsed.endpoints),
            prefix: Some(parsed.prefix),
            ca_file: self.option("etcd-ca").map(String::from),
            cert_file: self.option("etcd-cert").map(String::from),
            key_file: self.option("etcd-key").map(String::from),
            username: self.option("etcd-user").map(String::from),
            password: std::env::var("HOMELAB_ETCD_PASSWORD").ok().map(secrecy::SecretString::from),
        };
        settings::etcd_config(&raw).map_err(|errors| {
            usage(errors.iter().map(|e| format!("--{}: {}", e.attribute.trim_start_matches("etcd."), e.message)).collect::<Vec<_>>().join("; "))
        })
    }

    /// The etcd store of `--registry etcd://…` (or `$HOMELAB_REGISTRY`), if one is named.
    fn etcd_store(&self) -> Result<Option<EtcdStore>, CliError> {
        let url = self.option("registry").map(String::from).or_else(|| std::env::var("HOMELAB_REGISTRY").ok().filter(|v| !v.is_empty()));
        match url {
            Some(url) => Ok(Some(EtcdStore::new(self.etcd(&url)?))),
            None => Ok(None),
        }
    }

    /// The store the command works on: the etcd store named, else the file store in `--home`.
    fn store(&self) -> Result<Arc<dyn Store>, CliError> {
        Ok(match self.etcd_store()? {
            Some(s) => Arc::new(s),
            None => Arc::new(FileStore::new(self.home.clone())),
        })
    }

    /// Where the registry is, for messages.
    fn place(&self) -> Result<String, CliError> {
        Ok(match self.etcd_store()? {
            Some(s) => s.config().url(),
            None => self.home.display().to_string(),
        })
    }
}

fn cli_client() -> Client {
    Client {
        provider: format!("terraform-provider-homelab {} (cli)", env!("CARGO_PKG_VERSION")),
        terraform: String::new(),
    }
}

fn registry(a: &Args) -> Result<Registry, CliError> {
    let s = settings::validate(&RawSettings::default()).map_err(|e| fail(format!("{e:?}")))?;
    Ok(Registry::new(
        a.store()?,
        s.pools,
        s.reservation_ttl,
        Arc::new(SystemClock),
        Actor::current(),
        cli_client(),
    ))
}

/// One line of output.
fn w(out: &mut dyn Write, s: String) -> Result<(), CliError> {
    writeln!(out, "{s}").map_err(fail)
}

/// Run a subcommand; its output goes to `out`.
pub fn run(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let (cmd, rest) = args.split_first().ok_or_else(|| usage("no subcommand"))?;
    match cmd.as_str() {
        "--version" | "version" => w(out, format!("terraform-provider-homelab {}", env!("CARGO_PKG_VERSION"))),
        "--help" | "help" | "-h" => w(out, USAGE.to_string()),
        "reservations" => {
            let (sub, rest) = rest.split_first().ok_or_else(|| usage("reservations: list or drop?"))?;
            let a = parse(rest)?;
            let reg = registry(&a)?;
            match sub.as_str() {
                "list" => {
                    let now = reg.now();
                    let list = reg.reservations().map_err(fail)?;
                    if list.is_empty() {
                        return w(out, format!("no reservations in {}", a.place()?));
                    }
                    w(out, format!("{:<20} {:<9} {:<18} {:<16} {:<16} {:<26} BY", "NAME", "STATE", "SUBNET", "POD_CIDR", "SERVICE_CIDR", "EXPIRES"))?;
                    for e in list {
                        let r = e.reservation.as_ref();
                        let taken = r.and_then(|r| r.taken.as_ref());
                        let state = match (taken, e.holds(now)) {
                            (Some(_), _) => "taken",
                            (None, true) => "live",
                            (None, false) => "expired",
                        };
                        let mut by = r.map(|r| r.by.to_string()).unwrap_or_default();
                        if let Some(ws) = &e.owner {
                            by.push_str(&format!(", {ws}"));
                        }
                        if let Some(t) = taken {
                            by.push_str(&format!("; taken over by `{}` at {} ({})", t.by, rfc3339(t.at), t.why));
                        }
                        w(out, format!(
                            "{:<20} {:<9} {:<18} {:<16} {:<16} {:<26} {}",
                            e.name,
                            state,
                            e.allocation.subnet.to_string(),
                            e.allocation.pod_cidr.to_string(),
                            e.allocation.service_cidr.to_string(),
                            r.map(|r| rfc3339(r.expires_at)).unwrap_or_default(),
                            by,
                        ))?;
                    }
                    Ok(())
                }
                "drop" => {
                    let all = a.flags.iter().any(|f| f == "--all");
                    let expired = a.flags.iter().any(|f| f == "--expired");
                    if let Some(f) = a.flags.iter().find(|f| *f != "--all" && *f != "--expired") {
                        return Err(usage(format!("unknown flag {f}")));
                    }
                    if !all && !expired && a.positional.is_empty() {
                        return Err(usage("reservations drop: name the reservations, or say --all or --expired"));
                    }
                    let dropped = reg.drop_reservations(&a.positional, expired).map_err(fail)?;
                    for n in &a.positional {
                        if !dropped.iter().any(|e| &e.name == n) {
                            w(out, format!("{n}: no reservation (allocated instances are never dropped)"))?;
                        }
                    }
                    for e in &dropped {
                        w(out, format!("dropped {} ({})", e.name, e.allocation))?;
                    }
                    w(out, format!("{} reservation(s) dropped", dropped.len()))
                }
                other => Err(usage(format!("reservations: unknown subcommand {other}"))),
            }
        }
        "registry" => {
            let (sub, rest) = rest.split_first().ok_or_else(|| usage("registry: list, check or repair?"))?;
            let a = parse(rest)?;
            let reg = registry(&a)?;
            match sub.as_str() {
                "list" => registry_list(&reg, &a, out),
                "check" => registry_check(&a, out),
                "repair" => registry_repair(&a, out),
                "migrate" => registry_migrate(&a, out),
                other => Err(usage(format!("registry: unknown subcommand {other}"))),
            }
        }
        "instances" => {
            let (sub, rest) = rest.split_first().ok_or_else(|| usage("instances: remove?"))?;
            if sub != "remove" {
                return Err(usage(format!("instances: unknown subcommand {sub}")));
            }
            let a = parse(rest)?;
            if a.positional.is_empty() {
                return Err(usage("instances remove: name the instances"));
            }
            let reg = registry(&a)?;
            let s = settings::validate(&RawSettings { home: Some(a.home.display().to_string()), ..Default::default() }).map_err(|e| fail(format!("{e:?}")))?;
            // The labs record where they live (lab host, hypervisor); these are only defaults.
            let choices = settings::backend_choices(&settings::RawChoices::default()).expect("the default choices are valid");
            let backends = crate::backend::set::host_backends(&s, &choices);
            let runtime = tokio::runtime::Runtime::new().map_err(fail)?;
            for name in &a.positional {
                let ctl = crate::backend::OpControl::with_timeout(std::time::Duration::from_secs(900));
                let closed = runtime
                    .block_on(crate::recovery::remove_instance(&reg, backends.as_ref(), &a.home, name, &ctl))
                    .map_err(fail)?;
                for id in closed {
                    w(out, format!("closed federation {id}"))?;
                }
                w(out, format!("removed {name}"))?;
            }
            Ok(())
        }
        "events" => {
            let (sub, rest) = rest.split_first().ok_or_else(|| usage("events: verify?"))?;
            if sub != "verify" {
                return Err(usage(format!("events: unknown subcommand {sub}")));
            }
            let a = parse(rest)?;
            let reg = registry(&a)?;
            let v = reg.verify_events().map_err(fail)?;
            w(out, format!("ok: {} events, chain intact, newest seq {} ({})", v.events, v.head.seq, v.head.hash))
        }
        "docs" => {
            let a = parse(rest)?;
            let opt = |k: &str| a.options.iter().find(|(n, _)| n == k).map(|(_, v)| PathBuf::from(v));
            let (Some(schema), Some(examples), Some(outdir)) = (opt("schema"), opt("examples"), opt("out")) else {
                return Err(usage("docs needs --schema, --examples and --out"));
            };
            let written = crate::docs::generate(&schema, &examples, &outdir).map_err(fail)?;
            w(out, format!("wrote {} files under {}", written.len(), outdir.display()))
        }
        other => Err(usage(format!("unknown subcommand {other}"))),
    }
}

/// `registry list`.
fn registry_list(reg: &Registry, a: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let now = reg.now();
    let doc = reg.snapshot().map_err(fail)?;
    if doc.instances.is_empty() {
        return w(out, format!("no instances in {}", a.place()?));
    }
    w(out, format!("{:<20} {:<20} {:<18} {:<22} WORKSPACE", "NAME", "STATUS", "SUBNET", "SINCE"))?;
    for e in doc.instances.values() {
        let (status, since) = match (&e.creating, e.status) {
            (Some(c), _) => (creating_word(c), c.since),
            (None, crate::registry::Status::Allocated) => ("allocated".to_string(), e.created_at),
            (None, _) => match e.reservation.as_ref() {
                Some(r) if r.taken.is_some() => ("reservation taken".into(), r.reserved_at),
                Some(r) if e.holds(now) => ("reserved".into(), r.reserved_at),
                Some(r) => ("reservation expired".into(), r.reserved_at),
                None => ("reserved".into(), e.created_at),
            },
        };
        let ws = e.owner.as_ref().map(|o| o.to_string()).unwrap_or_else(|| "(not recorded)".into());
        w(out, format!("{:<20} {:<20} {:<18} {:<22} {ws}", e.name, status, e.allocation.subnet.to_string(), rfc3339(since)))?;
    }
    for (id, r) in &doc.federations {
        let status = r.creating.as_ref().map(creating_word).filter(|w| w != "allocated").unwrap_or_else(|| "federated".into());
        let since = r.creating.as_ref().map(|c| c.since).unwrap_or(r.created_at);
        let ws = r.owner.as_ref().map(|o| o.to_string()).unwrap_or_else(|| "(not recorded)".into());
        w(out, format!("{:<20} {:<20} {:<18} {:<22} {ws}", id, status, "(federation)", rfc3339(since)))?;
    }
    Ok(())
}

/// `registry migrate --to etcd://…`: move the file registry of `--home` into the etcd store.
fn registry_migrate(a: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let Some(to) = a.option("to") else {
        return Err(usage("registry migrate: say where to, e.g. --to etcd://127.0.0.1:2379/homelab/"));
    };
    let config = a.etcd(to)?;
    let url = config.url();
    let target = EtcdStore::new(config);
    let from = FileStore::new(a.home.clone());
    let done = migrate::migrate(&from, &target, &url, SystemClock.now(), &Actor::current(), &cli_client()).map_err(fail)?;
    for n in &done.instances {
        w(out, format!("moved instance {n}"))?;
    }
    for id in &done.federations {
        w(out, format!("moved federation {id}"))?;
    }
    for n in &done.already {
        w(out, format!("already there: {n}"))?;
    }
    w(out, format!(
        "registry {} moved to {url}: {} instance(s), {} federation(s) (event registry.migrate). Configure the provider's etcd block for it in every workspace of this home; {} records the move",
        a.home.display(),
        done.instances.len() + done.already.iter().filter(|n| !n.starts_with("federation ")).count(),
        done.federations.len() + done.already.iter().filter(|n| n.starts_with("federation ")).count(),
        from.moved_path().display()
    ))
}

/// `registry repair` on the etcd store: every change is one transaction, so nothing is ever
/// half-written; what remains is to say whether the store is sound.
fn etcd_repair(store: &EtcdStore, out: &mut dyn Write) -> Result<(), CliError> {
    let url = store.config().url();
    store.load().map_err(|e| fail(format!("registry {url}: {e}")))?;
    let v = store.verify_events().map_err(|e| fail(format!("registry {url}: {e}; the etcd store cannot be repaired from here: restore the cluster from its snapshot (`etcdctl snapshot restore`)")))?;
    w(out, format!("registry {url} is sound: nothing to repair (every change is one etcd transaction; event log intact, {} events)", v.events))
}

/// `registry repair`: rebuild a damaged registry and say what to do next.
fn registry_repair(a: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    if let Some(store) = a.etcd_store()? {
        return etcd_repair(&store, out);
    }
    let home = a.home.display().to_string();
    let store = FileStore::new(a.home.clone());
    let client = cli_client();
    let r = repair::repair(&store, SystemClock.now(), &Actor::current(), &client).map_err(fail)?;
    let Some(plan) = &r.plan else {
        w(out, format!("registry {home} is sound: nothing to repair"))?;
        for n in &r.diagnosis.notes {
            w(out, format!("note: {n}"))?;
        }
        return Ok(());
    };
    w(out, format!("repaired registry {home}"))?;
    for p in &r.diagnosis.problems {
        w(out, format!("was: {p}"))?;
    }
    for line in plan.describe() {
        w(out, format!("done: {line}"))?;
    }
    if let Some(p) = &r.damaged_copy {
        w(out, format!("kept the damaged file as {}", p.display()))?;
    }
    if let Some(p) = &r.old_log {
        w(out, format!("kept the old event log as {}", p.display()))?;
    }
    if let Some(p) = &r.old_generations {
        w(out, format!("moved the old generations to {}", p.display()))?;
    }
    if let Some(e) = &r.event {
        w(out, format!("recorded event seq {} registry.repair", e.seq))?;
    }
    for step in r.next_steps() {
        w(out, format!("next: {step}"))?;
    }
    Ok(())
}

/// `creating (pid N)`, `removing (pid N)`, `interrupted`, `removal interrupted`, …
fn creating_word(c: &crate::registry::Creating) -> String {
    match c.pid() {
        Some(pid) if c.running() == Some(true) && c.word() != "allocated" => format!("{} (pid {pid})", c.word()),
        _ => c.word().to_string(),
    }
}

/// `registry check`: soundness of the document and the log, then interrupted creations.
fn registry_check(a: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    if let Some(store) = a.etcd_store()? {
        let url = store.config().url();
        let doc = store.load().map_err(|e| fail(format!("broken: registry {url}: {e}")))?;
        let v = store.verify_events().map_err(|e| fail(format!("broken: registry {url}: {e}")))?;
        w(out, format!("ok: registry {url} sound: {} instance(s), {} federation(s); event log intact ({} events)", doc.instances.len(), doc.federations.len(), v.events))?;
        return interrupted_report(doc, out);
    }
    let home = a.home.display().to_string();
    let store = FileStore::new(a.home.clone());
    let d = repair::diagnose(&store).map_err(|e| fail(format!("registry {home}: {e}")))?;
    if !d.problems.is_empty() {
        for p in &d.problems {
            w(out, format!("broken: {p}"))?;
            match p.way_back() {
                Some(way) => w(out, format!("  way back: {way}"))?,
                None => w(out, "  way back: none by repair (see below)".into())?,
            }
        }
        for n in &d.notes {
            w(out, format!("note: {n}"))?;
        }
        let next = match repair::plan(&d) {
            Ok(Some(plan)) => {
                w(out, "`registry repair` would:".into())?;
                for line in plan.describe() {
                    w(out, format!("  - {line}"))?;
                }
                format!("run `terraform-provider-homelab registry repair --home {home}`, then `terraform plan` in each workspace of this home")
            }
            Ok(None) => String::new(),
            Err(e) => e.to_string(),
        };
        w(out, format!("next: {next}"))?;
        return Err(fail(format!("registry {home} is damaged ({} problem(s)): {next}", d.problems.len())));
    }
    let doc = match d.document {
        DocState::Parsed(doc) => doc,
        _ => Default::default(),
    };
    let events = match &d.log {
        LogState::Intact { events, .. } => events.len(),
        _ => 0,
    };
    w(out, format!("ok: registry {home} sound: {} instance(s), {} federation(s); event log intact ({events} events)", doc.instances.len(), doc.federations.len()))?;
    for n in &d.notes {
        w(out, format!("note: {n}"))?;
    }
    interrupted_report(doc, out)
}

/// The part of `registry check` about creations that a killed apply left (exit code 3 when
/// some wait for their workspace).
fn interrupted_report(doc: crate::registry::Document, out: &mut dyn Write) -> Result<(), CliError> {
    let mut waiting = 0;
    let ws_hint = |owner: &Option<crate::registry::owner::Workspace>| match owner {
        Some(o) => format!("run `terraform apply` (or `destroy`) in {} with Terraform workspace `{}`, on {}", o.dir, o.name, o.host),
        None => "run `terraform apply` (or `destroy`) in the configuration that declares it".into(),
    };
    for e in doc.instances.values() {
        let Some(c) = e.creating.as_ref().filter(|c| c.word() != "allocated") else { continue };
        let word = creating_word(c);
        if c.running() == Some(true) {
            w(out, format!("{}: {word}, since {}: a run of its workspace is at work on it", e.name, rfc3339(c.since)))?;
            continue;
        }
        waiting += 1;
        w(out, format!(
            "{}: {word} since {} ({}); to finish it, {}: an apply adopts it (or re-makes what a killed destroy took away), a destroy removes it. If that workspace is gone for good: `terraform-provider-homelab instances remove {}`",
            e.name, rfc3339(c.since), e.allocation, ws_hint(&e.owner), e.name
        ))?;
    }
    for (id, r) in &doc.federations {
        let Some(c) = r.creating.as_ref().filter(|c| c.word() != "allocated") else { continue };
        let word = creating_word(c);
        if c.running() == Some(true) {
            w(out, format!("federation {id}: {word}, since {}: a run of its workspace is at work on it", rfc3339(c.since)))?;
            continue;
        }
        waiting += 1;
        w(out, format!(
            "federation {id}: {word} since {}; to finish it, {}. If that workspace is gone for good, removing either instance (`instances remove`) closes it",
            rfc3339(c.since), ws_hint(&r.owner)
        ))?;
    }
    if waiting > 0 {
        return Err(CliError { message: format!("{waiting} interrupted creation(s) wait for their workspace"), code: 3 });
    }
    w(out, "no interrupted creations".to_string())
}

//! The provider binary's own subcommands, for people rather than Terraform:
//!
//! - `reservations list [--home DIR]`: plan-time reservations, live, expired and taken over,
//!   with who made them in which workspace.
//! - `reservations drop [--home DIR] [--expired] (--all | NAME...)`: drop them before they
//!   expire (recorded in the audit log).
//! - `events verify [--home DIR]`: verify the event log's hash chain against the registry.
//! - `docs --schema FILE --examples DIR --out DIR`: generate `docs/` (see [`crate::docs`]).
//!
//! Run without arguments by Terraform, the binary serves the plugin protocol instead.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::audit::{Actor, Client};
use crate::registry::file::FileStore;
use crate::registry::{rfc3339, Registry, SystemClock};
use crate::settings::{self, RawSettings};

/// Usage text.
pub const USAGE: &str = "\
terraform-provider-homelab: a Terraform/OpenTofu provider (run by Terraform, not by hand).

Subcommands for people:
  reservations list [--home DIR]
      List plan-time reservations (live, expired, or taken over) and their workspaces.
  reservations drop [--home DIR] [--expired] (--all | NAME...)
      Drop reservations before they expire (e.g. left by a plan that was never applied).
  events verify [--home DIR]
      Verify the hash chain of the event log against the registry.
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
            "--home" | "--schema" | "--examples" | "--out" => {
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

fn registry(home: PathBuf) -> Result<Registry, CliError> {
    let s = settings::validate(&RawSettings::default()).map_err(|e| fail(format!("{e:?}")))?;
    Ok(Registry::new(
        Arc::new(FileStore::new(home)),
        s.pools,
        s.reservation_ttl,
        Arc::new(SystemClock),
        Actor::current(),
        Client {
            provider: format!("terraform-provider-homelab {} (cli)", env!("CARGO_PKG_VERSION")),
            terraform: String::new(),
        },
    ))
}

/// Run a subcommand; its output goes to `out`.
pub fn run(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let (cmd, rest) = args.split_first().ok_or_else(|| usage("no subcommand"))?;
    let w = |out: &mut dyn Write, s: String| writeln!(out, "{s}").map_err(fail);
    match cmd.as_str() {
        "--version" | "version" => w(out, format!("terraform-provider-homelab {}", env!("CARGO_PKG_VERSION"))),
        "--help" | "help" | "-h" => w(out, USAGE.to_string()),
        "reservations" => {
            let (sub, rest) = rest.split_first().ok_or_else(|| usage("reservations: list or drop?"))?;
            let a = parse(rest)?;
            let reg = registry(a.home.clone())?;
            match sub.as_str() {
                "list" => {
                    let now = reg.now();
                    let list = reg.reservations().map_err(fail)?;
                    if list.is_empty() {
                        return w(out, format!("no reservations in {}", a.home.display()));
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
        "events" => {
            let (sub, rest) = rest.split_first().ok_or_else(|| usage("events: verify?"))?;
            if sub != "verify" {
                return Err(usage(format!("events: unknown subcommand {sub}")));
            }
            let a = parse(rest)?;
            let reg = registry(a.home.clone())?;
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

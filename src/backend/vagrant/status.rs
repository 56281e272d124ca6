//! Parsing `vagrant status --machine-readable`: one `timestamp,target,type,data…` line per
//! fact, commas inside data written as `%!(VAGRANT_COMMA)` and line breaks as `\n`. We keep,
//! per machine, its state (`running`, `poweroff`, `shutoff`, `not_created`, …) and provider,
//! and any `error-exit` Vagrant reported.

/// What `vagrant status` said of one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineState {
    /// Machine name (`acme-cp-1`).
    pub name: String,
    /// Provider Vagrant uses for it (`libvirt`, `virtualbox`), when it said.
    pub provider: Option<String>,
    /// State id (`running`, `poweroff`, `shutoff`, `not_created`, …).
    pub state: String,
}

impl MachineState {
    /// The machine exists in the hypervisor (any state but `not_created`).
    pub fn created(&self) -> bool {
        self.state != "not_created"
    }

    /// The machine is up.
    pub fn running(&self) -> bool {
        self.state == "running"
    }
}

/// Everything parsed from one `--machine-readable` run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusReport {
    /// Machines in the order Vagrant listed them.
    pub machines: Vec<MachineState>,
    /// `error-exit` lines: (error class, message).
    pub errors: Vec<(String, String)>,
}

impl StatusReport {
    /// The machine called `name`, if Vagrant listed it.
    pub fn get(&self, name: &str) -> Option<&MachineState> {
        self.machines.iter().find(|m| m.name == name)
    }
}

/// Undo Vagrant's escaping of machine-readable data fields.
pub fn unescape(field: &str) -> String {
    field
        .replace("%!(VAGRANT_COMMA)", ",")
        .replace("\\n", "\n")
        .replace("\\r", "\r")
}

/// Parse the whole output of `vagrant status --machine-readable`. Lines that are not
/// machine-readable (warnings some plugins print) are skipped.
pub fn parse_status(output: &str) -> StatusReport {
    let mut report = StatusReport::default();
    for line in output.lines() {
        let mut parts = line.trim_end_matches('\r').splitn(4, ',');
        let (Some(ts), Some(target), Some(kind)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if ts.is_empty() || !ts.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let data: Vec<String> = parts
            .next()
            .map(|d| d.split(',').map(unescape).collect())
            .unwrap_or_default();
        let first = data.first().cloned().unwrap_or_default();
        match kind {
            "error-exit" => {
                let message = data.get(1).cloned().unwrap_or_default();
                report.errors.push((first, message));
            }
            "state" | "provider-name" | "metadata" if !target.is_empty() => {
                let idx = match report.machines.iter().position(|m| m.name == target) {
                    Some(i) => i,
                    None => {
                        report.machines.push(MachineState {
                            name: target.to_string(),
                            provider: None,
                            state: String::new(),
                        });
                        report.machines.len() - 1
                    }
                };
                let m = &mut report.machines[idx];
                match kind {
                    "state" => m.state = first,
                    "provider-name" => m.provider = Some(first),
                    _ if first == "provider" => m.provider = data.get(1).cloned(),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    // A machine only mentioned in metadata has no state line: leave it out.
    report.machines.retain(|m| !m.state.is_empty());
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_and_newlines_are_unescaped() {
        assert_eq!(unescape("a%!(VAGRANT_COMMA)b\\nc"), "a,b\nc");
    }

    #[test]
    fn states_and_errors_are_collected() {
        let out = "1,acme-cp-1,metadata,provider,libvirt\n\
                   1,acme-cp-1,provider-name,libvirt\n\
                   1,acme-cp-1,state,running\n\
                   1,acme-worker-1,state,shutoff\n\
                   garbage line\n\
                   1,,error-exit,Vagrant::Errors::Foo,bad%!(VAGRANT_COMMA) very\\nbad\n";
        let r = parse_status(out);
        assert_eq!(r.machines.len(), 2);
        assert_eq!(
            r.get("acme-cp-1").unwrap().provider.as_deref(),
            Some("libvirt")
        );
        assert!(r.get("acme-cp-1").unwrap().running());
        assert_eq!(r.get("acme-worker-1").unwrap().state, "shutoff");
        assert_eq!(
            r.errors,
            vec![(
                "Vagrant::Errors::Foo".to_string(),
                "bad, very\nbad".to_string()
            )]
        );
    }
}

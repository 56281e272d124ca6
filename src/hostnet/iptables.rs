//! Forwarding for VM hosts (libvirt, VirtualBox) with `iptables`: one accept rule per direction
//! of a federated pair, inserted at the top of `FORWARD` so that it takes effect ahead of
//! libvirt's own REJECT rules for isolated networks, plus `net.ipv4.ip_forward=1`.
//!
//! Rules carry the comment `homelab:<a>+<b>` (names sorted) and are read back from
//! `iptables -S FORWARD`, in order, so that a rule that has slipped behind a REJECT (libvirt
//! re-inserting its own jumps at the top) counts as missing and is moved up again.
//!
//! IPv4 forwarding is turned off again when the last pair goes, but only if this provider
//! turned it on: a libvirt host forwards for its NAT networks and must keep doing so. A marker
//! file under `/run/homelab` (tmpfs, like the sysctl itself) remembers that it was off.
//!
//! Everything runs in an optional named network namespace (`ip netns exec <ns> iptables …`),
//! which is how the tests use it and how a libvirtd started inside a namespace is federated.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use super::host::{find_program, process_has_cap_net_admin, HostLock};
use super::nft::pair_comment;
use super::{Forwarding, HostNetError, Link};
use crate::net::Ipv4Net;
use crate::process::{self, Cmd, CommandError};

/// How long to wait for another provider process to finish with the same `FORWARD` chain.
const LOCK_PATIENCE: Duration = Duration::from_secs(60);
/// Folder of the "forwarding was off before us" markers.
const MARKER_DIR: &str = "/run/homelab";

/// One `-A FORWARD …` line of `iptables -S FORWARD`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IptRule {
    /// 1-based position in the chain (what `iptables -D FORWARD N` takes).
    pub position: usize,
    /// `-i`.
    pub iif: Option<String>,
    /// `-o`.
    pub oif: Option<String>,
    /// `-s`.
    pub src: Option<Ipv4Net>,
    /// `-d`.
    pub dst: Option<Ipv4Net>,
    /// `--comment`.
    pub comment: Option<String>,
    /// `-j` target (`ACCEPT`, `REJECT`, `LIBVIRT_FWI`…).
    pub target: Option<String>,
}

impl IptRule {
    fn is_direction(&self, from: &Link, to: &Link) -> bool {
        self.target.as_deref() == Some("ACCEPT")
            && self.iif.as_deref() == Some(from.iface.as_str())
            && self.oif.as_deref() == Some(to.iface.as_str())
            && self.src == Some(from.subnet)
            && self.dst == Some(to.subnet)
    }

    /// A rule that stops forwarded traffic, or a jump to libvirt's chains that may.
    fn blocks(&self) -> bool {
        matches!(self.target.as_deref(), Some("REJECT" | "DROP"))
            || self
                .target
                .as_deref()
                .is_some_and(|t| t.starts_with("LIBVIRT_"))
    }
}

/// Parse `iptables -S FORWARD`: the `-A FORWARD` lines, numbered in chain order.
pub fn parse_forward_listing(text: &str) -> Vec<IptRule> {
    let mut rules = Vec::new();
    for line in text.lines() {
        let words = split_words(line);
        if words.len() < 2 || words[0] != "-A" || words[1] != "FORWARD" {
            continue;
        }
        let mut rule = IptRule {
            position: rules.len() + 1,
            ..IptRule::default()
        };
        let mut it = words.iter().skip(2);
        while let Some(w) = it.next() {
            let value = |it: &mut std::iter::Skip<std::slice::Iter<'_, String>>| it.next().cloned();
            match w.as_str() {
                "-i" => rule.iif = value(&mut it),
                "-o" => rule.oif = value(&mut it),
                "-s" => rule.src = value(&mut it).and_then(|v| parse_net(&v)),
                "-d" => rule.dst = value(&mut it).and_then(|v| parse_net(&v)),
                "--comment" => rule.comment = value(&mut it),
                "-j" => rule.target = value(&mut it),
                _ => {}
            }
        }
        rules.push(rule);
    }
    rules
}

/// Split an `iptables -S` line into words, honouring the double quotes around comments.
fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

fn parse_net(text: &str) -> Option<Ipv4Net> {
    text.parse::<Ipv4Net>()
        .ok()
        .or_else(|| Ipv4Net::new(text.parse().ok()?, 32).ok())
}

/// iptables forwarding in the current network namespace (`None`) or a named one.
#[derive(Debug, Clone)]
pub struct IptablesForwarding {
    netns: Option<String>,
}

impl IptablesForwarding {
    /// Forwarding in `netns` (`None`: the namespace the provider runs in, i.e. the real host).
    pub fn new(netns: Option<String>) -> Self {
        IptablesForwarding { netns }
    }

    /// The namespace the rules live in (`None`: the current one).
    pub fn netns(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// `netns <name>` or `host`: the prefix of the human lines.
    fn place(&self) -> String {
        match &self.netns {
            Some(ns) => format!("netns {ns}"),
            None => "host".into(),
        }
    }

    fn cmd(&self, argv: &[&str]) -> Cmd {
        let mut full: Vec<&str> = Vec::new();
        if let Some(ns) = &self.netns {
            full.extend(["ip", "netns", "exec", ns.as_str()]);
        }
        full.extend_from_slice(argv);
        Cmd::new(full)
    }

    fn iptables(&self, args: &[&str]) -> Cmd {
        // `-w`: wait for the xtables lock instead of failing when libvirt holds it.
        let mut argv = vec!["iptables", "-w", "10"];
        argv.extend_from_slice(args);
        self.cmd(&argv)
    }

    fn netns_gone(&self) -> bool {
        self.netns
            .as_ref()
            .is_some_and(|ns| !Path::new("/run/netns").join(ns).exists())
    }

    fn marker(&self) -> PathBuf {
        let name = self
            .netns
            .as_deref()
            .map_or("host".to_string(), |ns| format!("netns-{ns}"));
        Path::new(MARKER_DIR).join(format!("iptables-{name}.ip_forward-was-0"))
    }

    async fn lock(&self) -> Result<HostLock, HostNetError> {
        let name = self
            .netns
            .as_deref()
            .map_or("iptables-host".to_string(), |ns| format!("iptables-{ns}"));
        HostLock::acquire(&name, LOCK_PATIENCE)
            .await
            .map_err(|e| HostNetError::NotPermitted(format!("cannot take the iptables lock: {e}")))
    }

    /// The `FORWARD` chain as it is now, in order.
    pub async fn list_forward(&self) -> Result<Vec<IptRule>, HostNetError> {
        let out = process::run(&self.iptables(&["-S", "FORWARD"])).await?;
        Ok(parse_forward_listing(&out.stdout))
    }

    /// `net.ipv4.ip_forward` where the rules live.
    pub async fn ip_forward(&self) -> Result<bool, HostNetError> {
        let out = process::run(&self.cmd(&["sysctl", "-n", "net.ipv4.ip_forward"])).await?;
        Ok(out.stdout.trim() == "1")
    }

    async fn set_ip_forward(&self, on: bool) -> Result<(), HostNetError> {
        let setting = format!("net.ipv4.ip_forward={}", u8::from(on));
        process::run(&self.cmd(&["sysctl", "-q", "-w", &setting])).await?;
        Ok(())
    }

    fn describe(&self, from: &Link, to: &Link) -> String {
        format!(
            "{}: iptables FORWARD: accept {} -> {} {} -> {}",
            self.place(),
            from.iface,
            to.iface,
            from.subnet,
            to.subnet
        )
    }

    /// Which pair rules are in place and ahead of every blocking rule: `[a->b, b->a]`, plus
    /// the positions of this pair's rules that must go (stale, duplicate, or behind a REJECT).
    fn assess(rules: &[IptRule], a: &Link, b: &Link) -> ([bool; 2], Vec<usize>) {
        let comment = pair_comment(&a.instance, &b.instance);
        let first_block = rules.iter().find(|r| r.blocks()).map(|r| r.position);
        let mut ok = [false, false];
        let mut remove = Vec::new();
        for rule in rules
            .iter()
            .filter(|r| r.comment.as_deref() == Some(comment.as_str()))
        {
            let ahead = first_block.is_none_or(|p| rule.position < p);
            let dir = [(a, b), (b, a)]
                .iter()
                .position(|(f, t)| rule.is_direction(f, t));
            match dir {
                Some(i) if ahead && !ok[i] => ok[i] = true,
                _ => remove.push(rule.position),
            }
        }
        (ok, remove)
    }
}

#[async_trait]
impl Forwarding for IptablesForwarding {
    async fn preflight(&self) -> Result<(), HostNetError> {
        if find_program("iptables").is_none() {
            return Err(HostNetError::Command(CommandError::Spawn {
                cmd: "iptables".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not found on PATH; install the Debian package `iptables`",
                ),
            }));
        }
        if !process_has_cap_net_admin() {
            return Err(HostNetError::NotPermitted(format!(
                "writing iptables rules on the {} needs CAP_NET_ADMIN: run Terraform as root (`sudo -E terraform apply`)",
                self.place()
            )));
        }
        Ok(())
    }

    async fn allow_pair(&self, a: &Link, b: &Link) -> Result<Vec<String>, HostNetError> {
        let comment = pair_comment(&a.instance, &b.instance);
        let _lock = self.lock().await?;
        let rules = self.list_forward().await?;
        let (ok, mut remove) = Self::assess(&rules, a, b);
        // Highest first, so the positions still to delete stay valid.
        remove.sort_unstable_by(|x, y| y.cmp(x));
        for pos in remove {
            process::run(&self.iptables(&["-D", "FORWARD", &pos.to_string()])).await?;
        }
        for (i, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
            if !ok[i] {
                let (src, dst) = (from.subnet.to_string(), to.subnet.to_string());
                let args = [
                    "-I",
                    "FORWARD",
                    "1",
                    "-i",
                    &from.iface,
                    "-o",
                    &to.iface,
                    "-s",
                    &src,
                    "-d",
                    &dst,
                    "-m",
                    "comment",
                    "--comment",
                    &comment,
                    "-j",
                    "ACCEPT",
                ];
                tracing::info!(rule = %self.describe(from, to), "inserting forward rule");
                process::run(&self.iptables(&args)).await?;
            }
        }
        if !self.ip_forward().await? {
            tracing::info!(place = %self.place(), "turning IPv4 forwarding on");
            let marker = self.marker();
            std::fs::create_dir_all(MARKER_DIR)
                .and_then(|_| std::fs::write(&marker, b"0\n"))
                .map_err(|e| {
                    HostNetError::NotPermitted(format!("cannot write {}: {e}", marker.display()))
                })?;
            self.set_ip_forward(true).await?;
        }
        Ok(self.describe_pair(a, b))
    }

    fn describe_pair(&self, a: &Link, b: &Link) -> Vec<String> {
        vec![
            self.describe(a, b),
            self.describe(b, a),
            format!("{}: net.ipv4.ip_forward=1", self.place()),
        ]
    }

    async fn deny_pair(&self, a: &Link, b: &Link) -> Result<(), HostNetError> {
        if self.netns_gone() {
            let _ = std::fs::remove_file(self.marker());
            return Ok(());
        }
        let comment = pair_comment(&a.instance, &b.instance);
        let _lock = self.lock().await?;
        let result = async {
            let rules = self.list_forward().await?;
            let mut mine: Vec<usize> = rules
                .iter()
                .filter(|r| r.comment.as_deref() == Some(comment.as_str()))
                .map(|r| r.position)
                .collect();
            mine.sort_unstable_by(|x, y| y.cmp(x));
            if !mine.is_empty() {
                tracing::info!(place = %self.place(), pair = %comment, "removing forward rules");
            }
            for pos in &mine {
                process::run(&self.iptables(&["-D", "FORWARD", &pos.to_string()])).await?;
            }
            let others = rules.iter().any(|r| {
                r.comment
                    .as_deref()
                    .is_some_and(|c| c.starts_with(super::nft::COMMENT_PREFIX) && c != comment)
            });
            let marker = self.marker();
            if !others && marker.exists() {
                tracing::info!(place = %self.place(), "no federated pair left: IPv4 forwarding back off");
                self.set_ip_forward(false).await?;
                let _ = std::fs::remove_file(&marker);
            }
            Ok(())
        }
        .await;
        match result {
            Err(_) if self.netns_gone() => Ok(()),
            other => other,
        }
    }

    async fn missing_for_pair(&self, a: &Link, b: &Link) -> Result<Vec<String>, HostNetError> {
        if self.netns_gone() {
            return Ok(vec![format!(
                "network namespace {} does not exist",
                self.place()
            )]);
        }
        let rules = self.list_forward().await?;
        let (ok, _) = Self::assess(&rules, a, b);
        let mut missing = Vec::new();
        for (i, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
            if !ok[i] {
                missing.push(self.describe(from, to));
            }
        }
        if !self.ip_forward().await? {
            missing.push(format!("{}: net.ipv4.ip_forward=1 (it is 0)", self.place()));
        }
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(instance: &str, iface: &str, subnet: &str) -> Link {
        Link {
            instance: instance.into(),
            iface: iface.into(),
            subnet: subnet.parse().unwrap(),
            pod_cidr: None,
        }
    }

    const LISTING: &str = "-P FORWARD ACCEPT\n\
        -A FORWARD -s 192.168.56.0/24 -d 192.168.57.0/24 -i virbr1 -o virbr2 -m comment --comment \"homelab:acme+globex\" -j ACCEPT\n\
        -A FORWARD -j LIBVIRT_FWX\n\
        -A FORWARD -i virbr2 -j REJECT --reject-with icmp-port-unreachable\n\
        -A FORWARD -s 192.168.57.0/24 -d 192.168.56.0/24 -i virbr2 -o virbr1 -m comment --comment homelab:acme+globex -j ACCEPT\n";

    #[test]
    fn listing_is_parsed_in_order() {
        let rules = parse_forward_listing(LISTING);
        assert_eq!(rules.len(), 4);
        assert_eq!(rules[0].position, 1);
        assert_eq!(rules[0].iif.as_deref(), Some("virbr1"));
        assert_eq!(rules[0].dst, Some("192.168.57.0/24".parse().unwrap()));
        assert_eq!(rules[0].comment.as_deref(), Some("homelab:acme+globex"));
        assert_eq!(rules[1].target.as_deref(), Some("LIBVIRT_FWX"));
        assert_eq!(rules[3].comment.as_deref(), Some("homelab:acme+globex"));
    }

    #[test]
    fn rule_behind_a_libvirt_jump_counts_as_missing_and_is_moved() {
        let a = link("acme", "virbr1", "192.168.56.0/24");
        let b = link("globex", "virbr2", "192.168.57.0/24");
        let (ok, remove) = IptablesForwarding::assess(&parse_forward_listing(LISTING), &a, &b);
        assert_eq!(ok, [true, false]);
        assert_eq!(remove, vec![4]);
    }

    #[test]
    fn quoted_words_keep_spaces() {
        assert_eq!(
            split_words(r#"-A FORWARD -m comment --comment "a b\"c" -j ACCEPT"#),
            vec![
                "-A",
                "FORWARD",
                "-m",
                "comment",
                "--comment",
                "a b\"c",
                "-j",
                "ACCEPT"
            ]
        );
    }
}

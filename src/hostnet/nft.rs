//! Forwarding for the `netns` backend: an nftables table `inet homelab`, owned by the provider,
//! inside the lab host namespace. Its `forward` chain has policy drop, so nothing crosses
//! between instance bridges unless a federated pair has its accept rules (one per direction and
//! pair of networks: subnet to subnet, and with pods each of subnet and pod CIDR to each of the
//! other side's); turning IPv4 forwarding on is never the only guard.
//!
//! Each pair's rules carry the comment `homelab:<a>+<b>` (names sorted), which is how they are
//! found again for drift checks and removal. Changes to the table are serialized between
//! provider processes by a [`HostLock`] per namespace, so two federations applied at once never
//! duplicate or lose a rule.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use super::host::{find_program, process_has_cap_net_admin, HostLock};
use super::{Forwarding, HostNetError, Link};
use crate::net::Ipv4Net;
use crate::process::{self, Cmd, CommandError};

/// The nftables family and table the provider owns.
pub const TABLE: &str = "inet homelab";
/// The base chain of [`TABLE`] hooked on forward.
pub const CHAIN: &str = "forward";
/// Prefix of the comment of every pair rule.
pub const COMMENT_PREFIX: &str = "homelab:";

/// How long to wait for another provider process to finish with the same table.
const LOCK_PATIENCE: Duration = Duration::from_secs(60);

/// The comment that marks the rules of the pair `a`+`b` (`homelab:acme+globex`, names sorted).
pub fn pair_comment(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("{COMMENT_PREFIX}{x}+{y}")
}

/// One rule of the forward chain as read back from `nft -j`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRule {
    /// The rule handle (what `nft delete rule … handle N` needs).
    pub handle: u64,
    /// The rule comment, if any.
    pub comment: Option<String>,
    /// `iifname` matched, if exactly one name is matched.
    pub iif: Option<String>,
    /// `oifname` matched.
    pub oif: Option<String>,
    /// `ip saddr` matched.
    pub saddr: Option<Ipv4Net>,
    /// `ip daddr` matched.
    pub daddr: Option<Ipv4Net>,
    /// Whether the verdict is accept.
    pub accept: bool,
}

impl ForwardRule {
    fn is(&self, r: &PairRule<'_>) -> bool {
        self.accept
            && self.iif.as_deref() == Some(r.from.iface.as_str())
            && self.oif.as_deref() == Some(r.to.iface.as_str())
            && self.saddr == Some(r.src)
            && self.daddr == Some(r.dst)
    }
}

/// One accept rule a pair needs: from one side's network to one of the other side's.
#[derive(Debug, Clone, Copy)]
struct PairRule<'a> {
    from: &'a Link,
    to: &'a Link,
    src: Ipv4Net,
    dst: Ipv4Net,
}

/// Every rule of the pair `a`+`b`: each direction, each network of the one side to each of the
/// other's (subnet to subnet first; with pods, subnet and pod CIDR both ways).
fn pair_rules<'a>(a: &'a Link, b: &'a Link) -> Vec<PairRule<'a>> {
    let mut out = Vec::new();
    for (from, to) in [(a, b), (b, a)] {
        for src in from.networks() {
            for dst in to.networks() {
                out.push(PairRule { from, to, src, dst });
            }
        }
    }
    out
}

/// The forward chain as read back: its policy and rules. `None` from [`NftForwarding::read_chain`]
/// when the table or the chain is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// `drop` or `accept`.
    pub policy: String,
    /// Rules in chain order.
    pub rules: Vec<ForwardRule>,
}

/// Parse `nft -j list chain inet homelab forward`.
pub fn parse_chain_json(text: &str) -> Result<ChainState, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no `nftables` array")?;
    let mut policy = None;
    let mut rules = Vec::new();
    for item in items {
        if let Some(chain) = item.get("chain") {
            policy = Some(
                chain
                    .get("policy")
                    .and_then(Value::as_str)
                    .unwrap_or("accept")
                    .to_string(),
            );
        }
        if let Some(rule) = item.get("rule") {
            rules.push(parse_rule(rule)?);
        }
    }
    Ok(ChainState {
        policy: policy.ok_or("no chain in the listing")?,
        rules,
    })
}

fn parse_rule(rule: &Value) -> Result<ForwardRule, String> {
    let handle = rule
        .get("handle")
        .and_then(Value::as_u64)
        .ok_or_else(|| format!("rule without handle: {rule}"))?;
    let mut out = ForwardRule {
        handle,
        comment: rule
            .get("comment")
            .and_then(Value::as_str)
            .map(String::from),
        iif: None,
        oif: None,
        saddr: None,
        daddr: None,
        accept: false,
    };
    for expr in rule
        .get("expr")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if expr.get("accept").is_some() {
            out.accept = true;
        }
        let Some(m) = expr.get("match") else { continue };
        if m.get("op").and_then(Value::as_str) != Some("==") {
            continue;
        }
        let left = m.get("left").unwrap_or(&Value::Null);
        let right = m.get("right").unwrap_or(&Value::Null);
        match left.pointer("/meta/key").and_then(Value::as_str) {
            Some("iifname") => out.iif = right.as_str().map(String::from),
            Some("oifname") => out.oif = right.as_str().map(String::from),
            _ => {}
        }
        if left.pointer("/payload/protocol").and_then(Value::as_str) == Some("ip") {
            let net = json_net(right);
            match left.pointer("/payload/field").and_then(Value::as_str) {
                Some("saddr") => out.saddr = net,
                Some("daddr") => out.daddr = net,
                _ => {}
            }
        }
    }
    Ok(out)
}

/// `{"prefix": {"addr": "192.168.56.0", "len": 24}}`, or a plain address for a /32.
fn json_net(v: &Value) -> Option<Ipv4Net> {
    if let Some(addr) = v.as_str() {
        return Ipv4Net::new(addr.parse().ok()?, 32).ok();
    }
    let addr = v.pointer("/prefix/addr")?.as_str()?.parse().ok()?;
    let len = u8::try_from(v.pointer("/prefix/len")?.as_u64()?).ok()?;
    Ipv4Net::new(addr, len).ok()
}

/// nftables forwarding inside one named network namespace (the netns lab host).
#[derive(Debug, Clone)]
pub struct NftForwarding {
    netns: String,
}

impl NftForwarding {
    /// Forwarding in the named namespace `netns` (`/run/netns/<netns>`).
    pub fn new(netns: impl Into<String>) -> Self {
        NftForwarding {
            netns: netns.into(),
        }
    }

    /// The namespace the rules live in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    fn exec(&self, argv: &[&str]) -> Cmd {
        let mut full = vec!["ip", "netns", "exec", self.netns.as_str()];
        full.extend_from_slice(argv);
        Cmd::new(full)
    }

    fn netns_exists(&self) -> bool {
        Path::new("/run/netns").join(&self.netns).exists()
    }

    async fn lock(&self) -> Result<HostLock, HostNetError> {
        HostLock::acquire(&format!("nft-{}", self.netns), LOCK_PATIENCE)
            .await
            .map_err(|e| HostNetError::NotPermitted(format!("cannot take the nftables lock: {e}")))
    }

    fn base_script() -> String {
        // `add` (not `create`) leaves an existing table and its rules alone; naming the policy
        // again puts it back to drop if someone changed it.
        format!(
            "add table {TABLE}\nadd chain {TABLE} {CHAIN} {{ type filter hook forward priority 0; policy drop; }}\n"
        )
    }

    async fn ensure_base_unlocked(&self) -> Result<(), HostNetError> {
        process::run(
            &self
                .exec(&["nft", "-f", "-"])
                .with_stdin(Self::base_script()),
        )
        .await?;
        Ok(())
    }

    /// Create the table `inet homelab` and its `forward` chain (policy drop) if missing. Never
    /// flushes: existing pair rules stay.
    pub async fn ensure_base(&self) -> Result<(), HostNetError> {
        let _lock = self.lock().await?;
        self.ensure_base_unlocked().await
    }

    /// The forward chain as it is now; `None` when the table or chain does not exist.
    pub async fn read_chain(&self) -> Result<Option<ChainState>, HostNetError> {
        let cmd = self.exec(&["nft", "-j", "list", "chain", "inet", "homelab", CHAIN]);
        match process::run(&cmd).await {
            Ok(out) => parse_chain_json(&out.stdout)
                .map(Some)
                .map_err(|why| HostNetError::Parse {
                    cmd: cmd.to_string(),
                    why,
                }),
            Err(CommandError::Failed { ref stderr, .. })
                if stderr.contains("No such file or directory") && self.netns_exists() =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// `net.ipv4.ip_forward` in the namespace.
    pub async fn ip_forward(&self) -> Result<bool, HostNetError> {
        let out = process::run(&self.exec(&["sysctl", "-n", "net.ipv4.ip_forward"])).await?;
        Ok(out.stdout.trim() == "1")
    }

    async fn set_ip_forward(&self, on: bool) -> Result<(), HostNetError> {
        let setting = format!("net.ipv4.ip_forward={}", u8::from(on));
        process::run(&self.exec(&["sysctl", "-q", "-w", &setting])).await?;
        Ok(())
    }

    fn describe(&self, r: &PairRule<'_>) -> String {
        format!(
            "netns {}: nft {TABLE} {CHAIN}: accept {} -> {} {} -> {}",
            self.netns, r.from.iface, r.to.iface, r.src, r.dst
        )
    }

    fn rule_text(r: &PairRule<'_>, comment: &str) -> String {
        format!(
            "add rule {TABLE} {CHAIN} iifname \"{}\" oifname \"{}\" ip saddr {} ip daddr {} accept comment \"{comment}\"\n",
            r.from.iface, r.to.iface, r.src, r.dst
        )
    }
}

#[async_trait]
impl Forwarding for NftForwarding {
    async fn preflight(&self) -> Result<(), HostNetError> {
        if find_program("nft").is_none() {
            return Err(HostNetError::Command(CommandError::Spawn {
                cmd: "nft".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not found on PATH; install the Debian package `nftables`",
                ),
            }));
        }
        if !process_has_cap_net_admin() {
            return Err(HostNetError::NotPermitted(format!(
                "writing nftables rules in network namespace {} needs CAP_NET_ADMIN: run Terraform as root (`sudo -E terraform apply`)",
                self.netns
            )));
        }
        Ok(())
    }

    async fn allow_pair(&self, a: &Link, b: &Link) -> Result<Vec<String>, HostNetError> {
        let comment = pair_comment(&a.instance, &b.instance);
        let _lock = self.lock().await?;
        self.ensure_base_unlocked().await?;
        let chain = self.read_chain().await?.unwrap_or(ChainState {
            policy: "drop".into(),
            rules: Vec::new(),
        });
        let mut script = String::new();
        let wanted = pair_rules(a, b);
        let mut kept = vec![false; wanted.len()];
        for rule in chain
            .rules
            .iter()
            .filter(|r| r.comment.as_deref() == Some(&comment))
        {
            match wanted.iter().position(|w| rule.is(w)) {
                Some(i) if !kept[i] => kept[i] = true,
                // A duplicate or a stale rule of this pair (other interface or network):
                // exactly the pair's rules, no more.
                _ => script.push_str(&format!(
                    "delete rule {TABLE} {CHAIN} handle {}\n",
                    rule.handle
                )),
            }
        }
        for (i, w) in wanted.iter().enumerate() {
            if !kept[i] {
                script.push_str(&Self::rule_text(w, &comment));
                tracing::info!(netns = %self.netns, rule = %self.describe(w), "adding forward rule");
            }
        }
        if !script.is_empty() {
            process::run(&self.exec(&["nft", "-f", "-"]).with_stdin(script)).await?;
        }
        if !self.ip_forward().await? {
            tracing::info!(netns = %self.netns, "turning IPv4 forwarding on");
            self.set_ip_forward(true).await?;
        }
        Ok(self.describe_pair(a, b))
    }

    fn describe_pair(&self, a: &Link, b: &Link) -> Vec<String> {
        let mut lines: Vec<String> = pair_rules(a, b).iter().map(|r| self.describe(r)).collect();
        lines.push(format!("netns {}: net.ipv4.ip_forward=1", self.netns));
        lines
    }

    async fn deny_pair(&self, a: &Link, b: &Link) -> Result<(), HostNetError> {
        if !self.netns_exists() {
            return Ok(());
        }
        let comment = pair_comment(&a.instance, &b.instance);
        let _lock = self.lock().await?;
        let result = async {
            let Some(chain) = self.read_chain().await? else {
                // No table: no pair can be open; forwarding has nothing left to serve.
                return self.set_ip_forward(false).await;
            };
            let mut script = String::new();
            for rule in chain.rules.iter().filter(|r| r.comment.as_deref() == Some(&comment)) {
                script.push_str(&format!("delete rule {TABLE} {CHAIN} handle {}\n", rule.handle));
            }
            if !script.is_empty() {
                tracing::info!(netns = %self.netns, pair = %comment, "removing forward rules");
                process::run(&self.exec(&["nft", "-f", "-"]).with_stdin(script)).await?;
            }
            let others = chain.rules.iter().any(|r| {
                r.comment
                    .as_deref()
                    .is_some_and(|c| c.starts_with(COMMENT_PREFIX) && c != comment)
            });
            if !others && self.ip_forward().await? {
                tracing::info!(netns = %self.netns, "no federated pair left: turning IPv4 forwarding off");
                self.set_ip_forward(false).await?;
            }
            Ok(())
        }
        .await;
        match result {
            // The namespace vanished meanwhile (lab torn down): everything is gone with it.
            Err(_) if !self.netns_exists() => Ok(()),
            other => other,
        }
    }

    async fn missing_for_pair(&self, a: &Link, b: &Link) -> Result<Vec<String>, HostNetError> {
        if !self.netns_exists() {
            return Ok(vec![format!(
                "network namespace {} does not exist",
                self.netns
            )]);
        }
        let comment = pair_comment(&a.instance, &b.instance);
        let mut missing = Vec::new();
        match self.read_chain().await? {
            None => {
                missing.push(format!(
                    "netns {}: nft table {TABLE} with chain {CHAIN} (policy drop) is missing",
                    self.netns
                ));
                for r in pair_rules(a, b) {
                    missing.push(self.describe(&r));
                }
            }
            Some(chain) => {
                if chain.policy != "drop" {
                    missing.push(format!(
                        "netns {}: nft chain {TABLE} {CHAIN} has policy {}, not drop",
                        self.netns, chain.policy
                    ));
                }
                for w in pair_rules(a, b) {
                    let present = chain
                        .rules
                        .iter()
                        .any(|r| r.comment.as_deref() == Some(&comment) && r.is(&w));
                    if !present {
                        missing.push(self.describe(&w));
                    }
                }
            }
        }
        if !self.ip_forward().await? {
            missing.push(format!(
                "netns {}: net.ipv4.ip_forward=1 (it is 0)",
                self.netns
            ));
        }
        Ok(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_comment_sorts_names() {
        assert_eq!(pair_comment("globex", "acme"), "homelab:acme+globex");
        assert_eq!(pair_comment("acme", "globex"), "homelab:acme+globex");
    }

    #[test]
    fn chain_listing_is_parsed_into_rules() {
        let text = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"chain": {"family": "inet", "table": "homelab", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}, {"rule": {"family": "inet", "table": "homelab", "chain": "forward", "handle": 2, "comment": "homelab:acme+globex", "expr": [{"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "hlbc0a83800"}}, {"match": {"op": "==", "left": {"meta": {"key": "oifname"}}, "right": "hlbc0a83900"}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": {"prefix": {"addr": "192.168.56.0", "len": 24}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "192.168.57.9"}}, {"accept": null}]}}]}"#;
        let chain = parse_chain_json(text).unwrap();
        assert_eq!(chain.policy, "drop");
        assert_eq!(
            chain.rules,
            vec![ForwardRule {
                handle: 2,
                comment: Some("homelab:acme+globex".into()),
                iif: Some("hlbc0a83800".into()),
                oif: Some("hlbc0a83900".into()),
                saddr: Some("192.168.56.0/24".parse().unwrap()),
                daddr: Some("192.168.57.9/32".parse().unwrap()),
                accept: true,
            }]
        );
    }

    #[test]
    fn a_pair_with_pods_gets_every_network_to_every_network_both_ways() {
        let link = |i: &str, s: &str, p: Option<&str>| Link {
            instance: i.into(),
            iface: format!("br-{i}"),
            subnet: s.parse().unwrap(),
            pod_cidr: p.map(|p| p.parse().unwrap()),
        };
        let a = link("acme", "192.168.56.0/24", Some("10.244.0.0/16"));
        let b = link("globex", "192.168.57.0/24", Some("10.245.0.0/16"));
        let lines: Vec<String> = pair_rules(&a, &b)
            .iter()
            .map(|r| format!("{} {} {} {}", r.from.iface, r.to.iface, r.src, r.dst))
            .collect();
        assert_eq!(
            lines,
            vec![
                "br-acme br-globex 192.168.56.0/24 192.168.57.0/24",
                "br-acme br-globex 192.168.56.0/24 10.245.0.0/16",
                "br-acme br-globex 10.244.0.0/16 192.168.57.0/24",
                "br-acme br-globex 10.244.0.0/16 10.245.0.0/16",
                "br-globex br-acme 192.168.57.0/24 192.168.56.0/24",
                "br-globex br-acme 192.168.57.0/24 10.244.0.0/16",
                "br-globex br-acme 10.245.0.0/16 192.168.56.0/24",
                "br-globex br-acme 10.245.0.0/16 10.244.0.0/16",
            ]
        );
        let plain = pair_rules(&link("a", "192.168.56.0/24", None), &link("b", "192.168.57.0/24", None)).len();
        assert_eq!(plain, 2, "without pods: the two subnet rules of before");
    }

    #[test]
    fn listing_without_chain_is_an_error() {
        assert!(parse_chain_json(r#"{"nftables": []}"#).is_err());
        assert!(parse_chain_json("nope").is_err());
    }
}

//! ICMP probes from inside a Vagrant guest: one shell command, sent over `vagrant ssh` (the
//! ordered channel federation uses), pings every target at once with the guest's own `ping`
//! and prints one line per target; [`parse`] reads them back. Pure text, no I/O here.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::backend::ProbeOutcome;

/// Marks the lines the command prints, so that login banners never read as results.
const MARK: &str = "homelab-probe";

/// The command: one `ping -n -c1 -W<s>` per target in the background, each printing
/// `homelab-probe <ip> <exit code> <ping's output on one line>`.
pub fn command(targets: &[Ipv4Addr], timeout: Duration) -> String {
    let secs = timeout.as_secs_f64().ceil().max(1.0) as u64;
    let list: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    format!(
        "for ip in {}; do (out=$(ping -n -c1 -W{secs} \"$ip\" 2>&1); rc=$?; echo \"{MARK} $ip $rc $(echo \"$out\" | tr '\\n' ' ')\") & done; wait",
        list.join(" ")
    )
}

/// What the command printed, in target order (a target without a line: `Failed`).
pub fn parse(stdout: &str, targets: &[Ipv4Addr]) -> Vec<ProbeOutcome> {
    targets
        .iter()
        .map(|t| {
            let line = stdout.lines().find_map(|l| {
                let rest = l.trim().strip_prefix(MARK)?.trim_start();
                let (ip, rest) = rest.split_once(' ')?;
                (ip == t.to_string()).then_some(rest)
            });
            let Some(rest) = line else {
                return ProbeOutcome::Failed(format!("no result for {t} from the guest"));
            };
            let (rc, text) = rest.split_once(' ').unwrap_or((rest, ""));
            if rc == "0" {
                ProbeOutcome::Answered
            } else if text.contains("Network is unreachable") {
                ProbeOutcome::NoRoute("Network is unreachable".into())
            } else if let Some(pos) = text.find("Destination ") {
                // `From 192.168.56.1 icmp_seq=1 Destination Net Unreachable`
                let before = &text[..pos];
                let from = before.rfind("From ").and_then(|i| before[i + 5..].split_whitespace().next()).unwrap_or("?");
                let what = text[pos..].split_whitespace().take(3).collect::<Vec<_>>().join(" ");
                ProbeOutcome::Unreachable(format!("ICMP {} from {from}", what.to_lowercase()))
            } else if rc == "1" {
                ProbeOutcome::NoAnswer
            } else {
                ProbeOutcome::Failed(format!("ping exited {rc}: {}", text.trim()))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_pings_every_target_at_once_with_a_whole_second_timeout() {
        let c = command(&["192.168.57.10".parse().unwrap(), "10.245.0.2".parse().unwrap()], Duration::from_millis(500));
        assert!(c.starts_with("for ip in 192.168.57.10 10.245.0.2; do"), "{c}");
        assert!(c.contains("ping -n -c1 -W1 ") && c.ends_with("done; wait"), "{c}");
    }

    #[test]
    fn each_kind_of_answer_is_told_apart() {
        let t: Vec<Ipv4Addr> = ["192.168.56.20", "192.168.57.10", "10.245.0.2", "10.96.0.1", "10.0.0.9"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let out = "Welcome to Ubuntu\n\
            homelab-probe 192.168.56.20 0 PING 192.168.56.20 56(84) bytes of data. 64 bytes from 192.168.56.20: icmp_seq=1 ttl=64 time=0.3 ms\n\
            homelab-probe 192.168.57.10 2 ping: connect: Network is unreachable \n\
            homelab-probe 10.245.0.2 1 PING 10.245.0.2 56(84) bytes of data. From 192.168.56.1 icmp_seq=1 Destination Net Unreachable\n\
            homelab-probe 10.96.0.1 1 PING 10.96.0.1 56(84) bytes of data. --- 10.96.0.1 ping statistics --- 1 packets transmitted, 0 received, 100% packet loss\n";
        assert_eq!(
            parse(out, &t),
            vec![
                ProbeOutcome::Answered,
                ProbeOutcome::NoRoute("Network is unreachable".into()),
                ProbeOutcome::Unreachable("ICMP destination net unreachable from 192.168.56.1".into()),
                ProbeOutcome::NoAnswer,
                ProbeOutcome::Failed("no result for 10.0.0.9 from the guest".into()),
            ]
        );
    }
}

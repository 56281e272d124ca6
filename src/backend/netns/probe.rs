//! ICMP probes from inside one of the lab's own namespaces, in-process: a short-lived thread
//! joins the namespace (`setns`), opens a raw ICMP socket there (a socket belongs to the
//! namespace it was made in), sends one echo request to every target at once and reads what
//! comes back until every target is settled or the timeout passes. No process is spawned and
//! no `ping` binary is needed; nothing is sent from any other namespace.
//!
//! What a probe tells apart (the isolation proof depends on it): a send refused at once by the
//! guest's own routing table (`Network is unreachable`: no route), an ICMP error from a router
//! (net/host unreachable, administratively prohibited), an echo reply, and silence.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use super::naming::NETNS_DIR;
use crate::backend::ProbeOutcome;

const ECHO_REPLY: u8 = 0;
const DEST_UNREACH: u8 = 3;
const ECHO_REQUEST: u8 = 8;
const TIME_EXCEEDED: u8 = 11;

/// Identifiers of this process's probes (each probe run gets its own).
static NEXT_ID: AtomicU16 = AtomicU16::new(0);

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request with identifier `id` and sequence `seq`.
fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = ECHO_REQUEST;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"homelab!");
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// What one received packet (IPv4 header included, as a raw socket gets it) says about probe
/// `seq` of identifier `id`: `(seq, outcome)`, or `None` when it is not about our probes.
fn classify(packet: &[u8], id: u16, targets: &[Ipv4Addr]) -> Option<(usize, ProbeOutcome)> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    let src = Ipv4Addr::new(*packet.get(12)?, *packet.get(13)?, *packet.get(14)?, *packet.get(15)?);
    let icmp = packet.get(ihl..)?;
    let (kind, code) = (*icmp.first()?, *icmp.get(1)?);
    let ids = |b: &[u8]| -> Option<(u16, usize)> {
        Some((u16::from_be_bytes([*b.get(4)?, *b.get(5)?]), usize::from(u16::from_be_bytes([*b.get(6)?, *b.get(7)?]))))
    };
    match kind {
        ECHO_REPLY => {
            let (got, seq) = ids(icmp)?;
            (got == id && targets.get(seq) == Some(&src)).then_some((seq, ProbeOutcome::Answered))
        }
        DEST_UNREACH | TIME_EXCEEDED => {
            // The error quotes our request's IP header and the first 8 bytes of its ICMP.
            let inner = icmp.get(8..)?;
            let inner_ihl = usize::from(inner.first()? & 0x0f) * 4;
            if *inner.get(9)? != 1 {
                return None;
            }
            let dst = Ipv4Addr::new(*inner.get(16)?, *inner.get(17)?, *inner.get(18)?, *inner.get(19)?);
            let (got, seq) = ids(inner.get(inner_ihl..)?)?;
            if got != id || targets.get(seq) != Some(&dst) {
                return None;
            }
            let what = match (kind, code) {
                (DEST_UNREACH, 0) => "network unreachable",
                (DEST_UNREACH, 1) => "host unreachable",
                (DEST_UNREACH, 9 | 10 | 13) => "administratively prohibited",
                (DEST_UNREACH, 3) => "port unreachable",
                (DEST_UNREACH, _) => "destination unreachable",
                _ => "time exceeded",
            };
            Some((seq, ProbeOutcome::Unreachable(format!("ICMP {what} from {src}"))))
        }
        _ => None,
    }
}

/// The probe itself, on the calling thread, which has joined the guest's namespace.
fn probe_here(targets: &[Ipv4Addr], timeout: Duration) -> std::io::Result<Vec<ProbeOutcome>> {
    // SAFETY: plain socket calls on a descriptor owned by `sock`; buffers outlive the calls.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_ICMP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let id = (std::process::id() as u16) ^ NEXT_ID.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37);
    let mut out: Vec<Option<ProbeOutcome>> = vec![None; targets.len()];
    for (seq, ip) in targets.iter().enumerate() {
        let packet = echo_request(id, seq as u16);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr { s_addr: u32::from(*ip).to_be() },
            sin_zero: [0; 8],
        };
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&addr as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            let e = std::io::Error::last_os_error();
            out[seq] = Some(match e.raw_os_error() {
                Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => ProbeOutcome::NoRoute(e.to_string()),
                _ => ProbeOutcome::Failed(format!("sending to {ip}: {e}")),
            });
        }
    }
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1500];
    while out.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ready < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if ready == 0 {
            break;
        }
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n <= 0 {
            continue;
        }
        if let Some((seq, outcome)) = classify(&buf[..n as usize], id, targets) {
            // The first word on a target stands (a late duplicate changes nothing).
            out[seq].get_or_insert(outcome);
        }
    }
    Ok(out.into_iter().map(|o| o.unwrap_or(ProbeOutcome::NoAnswer)).collect())
}

/// Probe `targets` from inside the named namespace `ns`. `Ok(None)`: no such namespace.
pub(super) fn probe_from(ns: &str, targets: &[Ipv4Addr], timeout: Duration) -> std::io::Result<Option<Vec<ProbeOutcome>>> {
    let file = match std::fs::File::open(Path::new(NETNS_DIR).join(ns)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> std::io::Result<Vec<ProbeOutcome>> {
                // SAFETY: setns only changes this thread's network namespace; the thread ends
                // when the probe is over, and its socket is closed before.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                probe_here(targets, timeout)
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("probe thread panicked")))
    })
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    /// An IPv4 header (no options) from `src` to `dst` with `proto`, then `payload`.
    fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        h.extend(src.octets());
        h.extend(dst.octets());
        h.extend(payload);
        h
    }

    #[test]
    fn the_checksum_of_a_request_verifies() {
        let p = echo_request(0x1234, 7);
        assert_eq!(checksum(&p), 0, "a packet with its checksum sums to zero");
        assert_eq!(&p[4..8], &[0x12, 0x34, 0, 7]);
    }

    #[test]
    fn replies_and_errors_are_matched_to_their_probe_and_others_ignored() {
        let targets = [ip("192.168.57.10"), ip("10.245.0.2")];
        let mut reply = echo_request(42, 1);
        reply[0] = ECHO_REPLY;
        let pkt = ipv4(targets[1], ip("10.244.0.2"), 1, &reply);
        assert_eq!(classify(&pkt, 42, &targets), Some((1, ProbeOutcome::Answered)));
        // Another process's id, or a reply from an address we did not probe with that seq.
        assert_eq!(classify(&pkt, 43, &targets), None);
        let wrong_src = ipv4(targets[0], ip("10.244.0.2"), 1, &reply);
        assert_eq!(classify(&wrong_src, 42, &targets), None);
        // A router's "network unreachable" quoting our request to target 0.
        let quoted = ipv4(ip("10.244.0.2"), targets[0], 1, &echo_request(42, 0));
        let mut err = vec![DEST_UNREACH, 0, 0, 0, 0, 0, 0, 0];
        err.extend(&quoted);
        let pkt = ipv4(ip("192.168.56.10"), ip("10.244.0.2"), 1, &err);
        assert_eq!(
            classify(&pkt, 42, &targets),
            Some((0, ProbeOutcome::Unreachable("ICMP network unreachable from 192.168.56.10".into())))
        );
        // Our own echo request seen on the way in (loopback) is not an answer.
        let req = ipv4(ip("10.244.0.2"), targets[0], 1, &echo_request(42, 0));
        assert_eq!(classify(&req, 42, &targets), None);
        assert_eq!(classify(&[0x45], 42, &targets), None, "a cut packet is ignored");
    }
}

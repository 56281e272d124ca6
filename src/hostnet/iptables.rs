//! hostnet::iptables (work in progress).

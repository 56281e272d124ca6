#!/usr/bin/env python3
"""Print a reachability matrix for netns instances: from each instance's first node, ping its
own gateway and every node of every instance. Reads `terraform output -json instances` on stdin.
Pings run only inside the node namespaces the netns backend created (`<netns_host>-<node>`)."""
import json
import subprocess
import sys


def ping(ns, ip):
    r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", ip],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


def main():
    host = sys.argv[1] if len(sys.argv) > 1 else "homelab"
    instances = json.load(sys.stdin)
    names = sorted(instances)
    crossed = []
    cols = ["gateway"] + names
    print("\nReachability from each instance's first node (ping, 1 s):\n")
    print(f"{'from':<22}" + "".join(f"{c:<12}" for c in cols))
    for src in names:
        node = sorted(instances[src]["nodes"])[0]
        ns = f"{host}-{node}"
        row = [("ok" if ping(ns, instances[src]["gateway"]) else "FAIL")]
        for dst in names:
            ips = list(instances[dst]["nodes"].values())
            got = sum(ping(ns, ip) for ip in ips)
            if dst == src:
                row.append(f"{got}/{len(ips)}")
            else:
                row.append("none" if got == 0 else f"{got}/{len(ips)}!")
                if got:
                    crossed.append((src, dst))
        print(f"{node:<22}" + "".join(f"{c:<12}" for c in row))
    print()
    if crossed:
        print("ISOLATION BROKEN: " + ", ".join(f"{a} -> {b}" for a, b in crossed))
        return 1
    print("Each instance reaches itself; nothing crosses between instances.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

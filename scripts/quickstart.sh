#!/usr/bin/env bash
# The main job: set up what is missing, apply examples/quickstart (three isolated labs on the
# netns backend, with a check block that re-proves isolation at every plan), and print the
# reachability matrix the homelab_reachability data source measured, through `terraform
# output`. `--destroy` tears the labs down.
#
# `--etcd`: the same three labs from two lab hosts sharing one registry on etcd. It starts a
# one-member etcd (/usr/bin/etcd) listening on 127.0.0.1 only, on a free port, with its data, log,
# port and PID in .tools/etcd/ (an etcd already running there is reused: the PID in
# .tools/etcd/pid must be alive, be that etcd and answer `etcdctl endpoint health`). It applies
# examples/quickstart-etcd in the Terraform workspaces host-a and host-b, two netns lab hosts
# (namespaces qshosta and qshostb, homes .tools/etcd/homes/<workspace>) with the same etcd
# block, and prints every instance's host and networks and, for every pair of the six instances,
# whether any of their networks (subnet, pod_cidr, service_cidr) overlap. It exits non-zero when
# a pair overlaps. `--etcd --destroy` destroys both workspaces (and deletes them), stops that etcd
# (by the PID in its pid file, once checked to be that etcd) and removes .tools/etcd/.
# Environment of --etcd (tests set it; users need none):
#   HOMELAB_QUICKSTART_ETCD_DIR      etcd's folder (and the homes') instead of .tools/etcd
#   HOMELAB_QUICKSTART_ETCD_EXAMPLE  the Terraform folder applied instead of examples/quickstart-etcd
#   TF_VAR_netns_host_prefix         the start of the lab hosts' namespace names instead of qs
source "$(dirname "$0")/lib.sh"

ETCD_BIN=/usr/bin/etcd
ETCDCTL_BIN=/usr/bin/etcdctl
ETCD_WORKSPACES=(host-a host-b)
ETCD_PREFIX=/homelab/

# env_without PREFIX CMD...: run CMD without the environment variables starting with PREFIX (etcd
# and etcdctl refuse a flag that a variable also sets).
env_without() {
  local prefix="$1" unset=() v; shift
  for v in $(compgen -e); do [[ "$v" == "$prefix"* ]] && unset+=(-u "$v"); done
  env "${unset[@]}" "$@"
}

etcd_endpoint() { echo "http://127.0.0.1:$(cat "$ETCD_DIR/port")"; }

# etcd_ours PID: whether PID is alive (not a zombie), runs /usr/bin/etcd, and with our data dir.
etcd_ours() {
  local pid="$1" stat
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
  [ "$(echo "${stat##*) }" | cut -d' ' -f1)" != Z ] || return 1
  [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$ETCD_BIN" ] || return 1
  tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qxF -- "--data-dir=$ETCD_DIR/data"
}

etcd_healthy() {
  env_without ETCDCTL_ "$ETCDCTL_BIN" --endpoints="$(etcd_endpoint)" --dial-timeout=2s --command-timeout=3s \
    endpoint health >/dev/null 2>&1
}

# etcd_wait_healthy PID SECONDS: until etcd PID answers; fails when it ends or the time is up.
etcd_wait_healthy() {
  local pid="$1" deadline=$((SECONDS + $2))
  while [ "$SECONDS" -lt "$deadline" ]; do
    etcd_ours "$pid" || return 1
    etcd_healthy && return 0
    sleep 0.2
  done
  return 1
}

# Start etcd in $ETCD_DIR (its data kept from an earlier start, if any), on two free loopback
# ports (client, peer), in a session of its own so that it outlives the script and its terminal.
etcd_start() {
  local client peer pid
  mkdir -p "$ETCD_DIR"
  for _ in 1 2 3; do
    read -r client peer < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*(x.getsockname()[1] for x in s))')
    echo "$client" > "$ETCD_DIR/port"
    pid="$(python3 - "$ETCD_DIR" "$ETCD_BIN" --name=quickstart "--data-dir=$ETCD_DIR/data" \
      "--listen-client-urls=http://127.0.0.1:$client" "--advertise-client-urls=http://127.0.0.1:$client" \
      "--listen-peer-urls=http://127.0.0.1:$peer" "--initial-advertise-peer-urls=http://127.0.0.1:$peer" \
      "--initial-cluster=quickstart=http://127.0.0.1:$peer" --initial-cluster-token=homelab-quickstart \
      --initial-cluster-state=new <<'EOP'
import os, subprocess, sys
env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
log = open(os.path.join(sys.argv[1], "etcd.log"), "ab")
p = subprocess.Popen(sys.argv[2:], cwd=sys.argv[1], env=env, stdin=subprocess.DEVNULL, stdout=log,
                     stderr=subprocess.STDOUT, start_new_session=True)
print(p.pid)
EOP
)"
    echo "$pid" > "$ETCD_DIR/pid"
    if etcd_wait_healthy "$pid" 30; then
      say "etcd started: PID $pid, $(etcd_endpoint) (data and log in $ETCD_DIR)"
      return 0
    fi
    etcd_ours "$pid" && kill -KILL "$pid"
    # A port found free was taken before etcd bound it: again, on other ports.
    tail -n 5 "$ETCD_DIR/etcd.log" | grep -q "address already in use" || break
  done
  tail -n 20 "$ETCD_DIR/etcd.log" >&2
  say "etcd did not start (log above: $ETCD_DIR/etcd.log)"
  exit 1
}

# The etcd of $ETCD_DIR, running: reused when its PID is alive, is that etcd and answers; else
# started.
etcd_ensure() {
  local pid
  pid="$(cat "$ETCD_DIR/pid" 2>/dev/null || true)"
  if etcd_ours "$pid"; then
    if etcd_wait_healthy "$pid" 10; then
      say "reusing the running etcd: PID $pid, $(etcd_endpoint)"
      return 0
    fi
    say "etcd PID $pid (of $ETCD_DIR) runs but does not answer at $(etcd_endpoint): see $ETCD_DIR/etcd.log"
    exit 1
  fi
  etcd_start
}

# Stop the etcd of $ETCD_DIR by the PID in its pid file, once checked to be that etcd.
etcd_stop() {
  local pid
  pid="$(cat "$ETCD_DIR/pid" 2>/dev/null || true)"
  if ! etcd_ours "$pid"; then
    [ -z "$pid" ] || say "PID $pid of $ETCD_DIR/pid is not that etcd (any more): nothing to stop"
    return 0
  fi
  say "stopping etcd (PID $pid)"
  kill -TERM "$pid"
  for _ in $(seq 50); do etcd_ours "$pid" || return 0; sleep 0.2; done
  kill -KILL "$pid"
  for _ in $(seq 25); do etcd_ours "$pid" || return 0; sleep 0.2; done
  say "etcd PID $pid did not stop"
  exit 1
}

etcd_workspaces() { tf workspace list -no-color | sed 's/^[* ] *//'; }

# The matrix: every instance of every workspace (file pairs WORKSPACE OUTPUT-JSON) against every
# other, whether any of their networks overlap. Exits 1 when a pair overlaps.
overlap_matrix() {
  python3 - "$@" <<'EOP'
import ipaddress, json, sys
endpoint, prefix, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
KINDS = ("subnet", "pod_cidr", "service_cidr")
insts = []  # (name, workspace, attributes)
for ws, path in zip(rest[::2], rest[1::2]):
    doc = json.load(open(path))
    insts += [(name, ws, doc[name]) for name in sorted(doc)]
hosts = sorted({i[2]["host"] for i in insts})
print(f"Networks of {len(insts)} instances on {len(hosts)} lab hosts sharing one registry (etcd {endpoint}, prefix {prefix}):")
print()
cols = [("instance", lambda i: i[0]), ("workspace", lambda i: i[1]), ("host", lambda i: i[2]["host"])]
cols += [(k, lambda i, k=k: i[2][k]) for k in KINDS]
widths = [max(len(h), *(len(f(i)) for i in insts)) + 2 for h, f in cols]
print("".join(h.ljust(w) for (h, _), w in zip(cols, widths)).rstrip())
for i in insts:
    print("".join(f(i).ljust(w) for (_, f), w in zip(cols, widths)).rstrip())
print()
print("Overlap of their networks (any of subnet, pod_cidr, service_cidr of the row's instance with any of the column's):")
print()
nets = {i[0]: [(k, ipaddress.ip_network(i[2][k])) for k in KINDS] for i in insts}
def clash(a, b):
    return [(ka, na, kb, nb) for ka, na in nets[a] for kb, nb in nets[b] if na.overlaps(nb)]
names = [i[0] for i in insts]
w = max(len("disjoint"), *(len(n) for n in names)) + 2
print("".ljust(w) + "".join(n.ljust(w) for n in names).rstrip())
overlaps = []
for i, a in enumerate(names):
    cells = []
    for j, b in enumerate(names):
        if i == j:
            cells.append("-")
            continue
        c = clash(a, b)
        cells.append("OVERLAP" if c else "disjoint")
        if c and i < j:
            overlaps += [f"{a} {ka} {na} overlaps {b} {kb} {nb}" for ka, na, kb, nb in c]
    print(a.ljust(w) + "".join(x.ljust(w) for x in cells).rstrip())
print()
pairs = len(names) * (len(names) - 1) // 2
if overlaps:
    print("OVERLAP: " + "; ".join(overlaps))
    sys.exit(1)
print(f"All {pairs} pairs of instances are disjoint: the hosts {' and '.join(hosts)} share one address plan.")
EOP
}

# scripts/quickstart.sh --etcd [--destroy].
quickstart_etcd() {
  local destroy="" a ws rc=0 newest
  for a in "$@"; do
    case "$a" in
      --etcd) ;;
      --destroy) destroy=1 ;;
      *) say "unknown argument: $a (usage: scripts/quickstart.sh [--etcd] [--destroy])"; exit 2 ;;
    esac
  done
  ETCD_DIR="$(realpath -m "${HOMELAB_QUICKSTART_ETCD_DIR:-$TOOLS/etcd}")"
  local example="${HOMELAB_QUICKSTART_ETCD_EXAMPLE:-$ROOT/examples/quickstart-etcd}"
  ensure_base
  ensure_provider
  cd "$example"
  # No check block here: the newest Terraform on the machine runs it, else Terraform 1.0.3.
  if newest="$(newest_terraform)"; then TERRAFORM="${newest%% *}"; fi
  write_release_lock .
  tf init -input=false -no-color >/dev/null
  local existing; existing="$(etcd_workspaces)"
  if [ -n "$destroy" ] && [ ! -d "$ETCD_DIR" ] && ! grep -qxF -e host-a -e host-b <<<"$existing"; then
    say "nothing to destroy: no etcd in $ETCD_DIR and no workspace host-a or host-b"
    exit 0
  fi
  etcd_ensure
  local vars=(-var "etcd_endpoint=$(etcd_endpoint)" -var "etcd_prefix=$ETCD_PREFIX" -var "home_root=$ETCD_DIR/homes")
  if [ -n "$destroy" ]; then
    for ws in "${ETCD_WORKSPACES[@]}"; do
      grep -qxF "$ws" <<<"$existing" || continue
      say "host $ws: terraform destroy (workspace $ws)"
      TF_WORKSPACE="$ws" tf destroy -auto-approve -input=false -no-color "${vars[@]}"
    done
    tf workspace select default -no-color >/dev/null
    for ws in "${ETCD_WORKSPACES[@]}"; do
      if grep -qxF "$ws" <<<"$existing"; then tf workspace delete -no-color "$ws" >/dev/null; fi
    done
    rmdir terraform.tfstate.d 2>/dev/null || true
    etcd_stop
    rm -rf "$ETCD_DIR"
    say "destroyed both hosts' labs, stopped etcd, removed $ETCD_DIR"
    exit 0
  fi
  ETCD_OUT="$(mktemp -d)"
  trap 'rm -rf "$ETCD_OUT"' EXIT
  local pairs=()
  for ws in "${ETCD_WORKSPACES[@]}"; do
    grep -qxF "$ws" <<<"$existing" || tf workspace new -no-color "$ws" >/dev/null
    say "host $ws: terraform apply (workspace $ws)"
    TF_WORKSPACE="$ws" tf apply -auto-approve -input=false -no-color "${vars[@]}"
    TF_WORKSPACE="$ws" tf output -no-color -json instances > "$ETCD_OUT/$ws.json"
    pairs+=("$ws" "$ETCD_OUT/$ws.json")
  done
  echo
  overlap_matrix "$(etcd_endpoint)" "$ETCD_PREFIX" "${pairs[@]}" || rc=$?
  echo
  echo "To destroy both hosts' labs and stop etcd: scripts/quickstart.sh --etcd --destroy"
  exit "$rc"
}

for a in "$@"; do
  if [ "$a" = "--etcd" ]; then quickstart_etcd "$@"; fi
done

ensure_base
ensure_provider
cd "$ROOT/examples/quickstart"
# The example's check block needs Terraform 1.5+: the newest Terraform on the machine runs it.
if newest="$(newest_terraform)" && [ "$(printf '1.5.0\n%s\n' "${newest#* }" | sort -V | head -n1)" = "1.5.0" ]; then
  TERRAFORM="${newest%% *}"
else
  say "the quickstart's check block needs Terraform 1.5 or newer on PATH (or HOMELAB_TERRAFORM_NEWEST); found none"
  exit 1
fi
write_release_lock .   # the packed release's h1: and zh: hashes: init verifies the package against them
tf init -input=false -no-color >/dev/null
if [ "${1:-}" = "--destroy" ]; then
  tf destroy -auto-approve -input=false -no-color
  exit 0
fi
tf apply -auto-approve -input=false -no-color
echo
tf output -raw reachability
echo
echo "To destroy the labs: scripts/quickstart.sh --destroy"

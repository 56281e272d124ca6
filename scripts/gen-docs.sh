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
# The newest Terraform reports everything (ephemeral resources need protocol 6.7, Terraform
# 1.10+); without one, the ephemeral resources' pages cannot be generated.
tf="$TERRAFORM"
if newest="$(newest_terraform)" && [ -n "$newest" ]; then
  tf="${newest%% *}"
else
  echo "gen-docs: no Terraform newer than $TF_VERSION: docs/ephemeral-resources/ is left out" >&2
fi
(cd "$work" && TF_CLI_CONFIG_FILE="$work/terraformrc" "$tf" init -input=false -no-color >/dev/null \
  && TF_CLI_CONFIG_FILE="$work/terraformrc" "$tf" providers schema -json > schema.json)
rm -rf "$ROOT/docs"
"$ROOT/target/debug/terraform-provider-homelab" docs --schema "$work/schema.json" --examples "$ROOT/examples" --out "$ROOT/docs"

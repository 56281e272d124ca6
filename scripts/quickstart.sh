#!/usr/bin/env bash
# The main job: set up what is missing, apply examples/quickstart (three isolated labs on the
# netns backend, with a check block that re-proves isolation at every plan), and print the
# reachability matrix the homelab_reachability data source measured, through `terraform
# output`. `--destroy` tears the labs down.
source "$(dirname "$0")/lib.sh"
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

#!/usr/bin/env bash
# The main job: set up what is missing, apply examples/quickstart (three isolated labs on the
# netns backend), and print the reachability matrix. `--destroy` tears the labs down.
source "$(dirname "$0")/lib.sh"
ensure_base
ensure_provider
cd "$ROOT/examples/quickstart"
write_release_lock .   # the packed release's h1: and zh: hashes: init verifies the package against them
tf init -input=false -no-color >/dev/null
if [ "${1:-}" = "--destroy" ]; then
  tf destroy -auto-approve -input=false -no-color
  exit 0
fi
tf apply -auto-approve -input=false -no-color
tf output -json instances | python3 "$ROOT/scripts/reachability.py" homelab
echo
echo "To destroy the labs: scripts/quickstart.sh --destroy"

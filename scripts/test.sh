#!/usr/bin/env bash
# Set up everything the tests need (only what is missing) and run every test: unit tests,
# trait-level tests on real network namespaces, acceptance tests through the real Terraform
# 1.0.3 CLI, and the real-VM tests (libvirt + QEMU inside a network namespace of their own).
# The last lines printed are the test runner's summary.
source "$(dirname "$0")/lib.sh"
ensure_base
apt_install util-linux iptables
bash "$ROOT/scripts/vm/install.sh"
say "building (or reusing) the test box"
HOMELAB_TEST_BOX="$(bash "$ROOT/scripts/vm/build-box.sh")"
export HOMELAB_TEST_BOX
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest from crates.io"
  cargo install --locked cargo-nextest
fi
export HOMELAB_TERRAFORM="$TERRAFORM"
cd "$ROOT"
say "building the tests"
cargo build --quiet --tests --bins
exec cargo nextest run --lib --bins --tests --no-fail-fast "$@"

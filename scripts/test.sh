#!/usr/bin/env bash
# Set up everything the tests need (only what is missing) and run every test: unit tests,
# trait-level tests on real network namespaces, acceptance tests through the real Terraform CLI
# (1.0.3, and the newest Terraform on the machine), and the real-VM test (libvirt + QEMU inside
# a network namespace of its own).
# The last lines printed are the test runner's summary.
source "$(dirname "$0")/lib.sh"
ensure_base
apt_install util-linux iptables gnupg openssl
bash "$ROOT/scripts/vm/install.sh"
if ! cargo nextest --version >/dev/null 2>&1; then
  say "installing cargo-nextest from crates.io"
  cargo install --locked cargo-nextest
fi
# The test box (debootstrap, cached per machine) builds while cargo compiles the tests.
box_log="$(mktemp)"
say "building (or reusing) the test box in the background (log: $box_log)"
bash "$ROOT/scripts/vm/build-box.sh" > "$box_log.path" 2> "$box_log" &
box_pid=$!
cd "$ROOT"
say "building the tests"
cargo build --quiet --tests --bins --example test-echo-provider
# The release tests pack the release binary (scripts/release.sh): build it once, here.
say "building the release binary"
cargo build --quiet --release --locked --bin terraform-provider-homelab
if ! wait "$box_pid"; then
  cat "$box_log" >&2
  say "building the test box failed (log above)"
  exit 1
fi
HOMELAB_TEST_BOX="$(cat "$box_log.path")"
rm -f "$box_log" "$box_log.path"
export HOMELAB_TEST_BOX HOMELAB_TERRAFORM="$TERRAFORM"
# Panic messages without backtraces: a failing test ends with what failed, not with tokio frames.
export RUST_BACKTRACE="${HOMELAB_TEST_BACKTRACE:-0}"
# The acceptance tests run on Terraform 1.0.3 and on the newest Terraform of the machine.
skip=()
if newest="$(newest_terraform)"; then
  export HOMELAB_TERRAFORM_NEWEST="${newest%% *}"
  say "acceptance tests run on Terraform $TF_VERSION ($TERRAFORM) and Terraform ${newest#* } ($HOMELAB_TERRAFORM_NEWEST)"
else
  say "no Terraform newer than $TF_VERSION on PATH: the terraform_newest acceptance tests are SKIPPED (install one to run them)"
  skip+=("test(/::terraform_newest$/)" "test(/terraform_1_0_3_then_newest/)")
fi
if [ -n "${HOMELAB_SKIP_VM_TESTS:-}" ]; then
  say "HOMELAB_SKIP_VM_TESTS is set: the real-VM tests are SKIPPED"
  skip+=("test(/vagrant_vms|acceptance_vagrant::/)")
fi
if command -v VBoxManage >/dev/null 2>&1; then
  say "VirtualBox is installed: the test of the message for its absence is SKIPPED"
  skip+=("test(/preflight_names_a_missing_virtualbox$/)")
fi
filter=()
if [ "${#skip[@]}" -gt 0 ]; then
  expr="$(IFS='|'; echo "${skip[*]}" | sed 's/|/ | /g')"
  filter=(-E "not ($expr)")
fi
exec cargo nextest run --lib --bins --tests --no-fail-fast "${filter[@]}" "$@"

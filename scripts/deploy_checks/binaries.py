"""What the plugworker binaries read from the environment, from their own `--help`.

clap prints `[env: NAME=...]` under each option and the required options in the usage
line, so the built binaries are the source of truth: a compose file or task definition
that sets a misspelt variable, or misses a required one, is caught without a list kept
by hand.
"""
import dataclasses
import functools
import os
import pathlib
import re
import subprocess


@dataclasses.dataclass
class Interface:
    known: set  # every variable the command reads
    required: dict  # flag -> variable, for options without a default


def bin_dir() -> pathlib.Path:
    if "PLUGWORKER_BIN" in os.environ:  # scripts/env.sh
        return pathlib.Path(os.environ["PLUGWORKER_BIN"])
    target = os.environ.get("CARGO_TARGET_DIR", str(pathlib.Path(__file__).resolve().parents[2] / "target"))
    return pathlib.Path(target) / "debug"


def parse_help(text: str) -> Interface:
    known, flag_env = set(), {}
    current = None
    for line in text.splitlines():
        option = re.match(r"\s+(?:-\w, )?(--[\w-]+)", line)
        if option:
            current = option.group(1)
        for name in re.findall(r"\[env: (\w+)[=\]]", line):
            known.add(name)
            if current:
                flag_env[current] = name
    usage = next((line for line in text.splitlines() if line.startswith("Usage:")), "")
    # Required options appear in the usage line outside brackets: `--flag <VALUE>`.
    required_flags = re.findall(r"(?<!\[)(--[\w-]+) <", re.sub(r"\[[^\]]*\]", "", usage))
    return Interface(known, {flag: flag_env.get(flag, "") for flag in required_flags})


def subcommands(binary: str, args: list) -> list:
    """The subcommands `binary args --help` lists (none for a leaf command)."""
    path = bin_dir() / binary
    if not path.exists():
        return []
    text = _help(path, tuple(args), path.stat().st_mtime_ns)
    section = re.search(r"^Commands:\n((?:  .*\n)+)", text, re.M)
    if not section:
        return []
    return [m for m in re.findall(r"^  (\w[\w-]*)", section.group(1), re.M) if m != "help"]


def interface(binary: str, args: list) -> Interface:
    path = bin_dir() / binary
    if not path.exists():
        raise SystemExit(f"deploy checks: {path} is missing; build the workspace binaries first (cargo build --workspace --bins)")
    return parse_help(_help(path, tuple(args), path.stat().st_mtime_ns))


@functools.lru_cache(maxsize=None)
def _help(path: pathlib.Path, args: tuple, mtime_ns: int) -> str:
    """`path args --help`, run once per binary build (the checks ask a hundred times a run)."""
    return subprocess.run([str(path), *args, "--help"], capture_output=True, text=True, check=True).stdout

"""The processes the self-tests run scripts against, each on a port the OS chose and
reported (never a port found free and then released, which another test could take in
between): moto, AWS's emulator (services/testkit/python/moto_atomic.py writes its
address to a file), and `plugworker registry` (prints its address)."""
import json
import os
import pathlib
import subprocess
import tempfile
import time
import unittest

from . import binaries

REPO = pathlib.Path(__file__).resolve().parents[2]
VENV = pathlib.Path(os.environ.get("PLUGWORKER_VENV", pathlib.Path.home() / ".cache/plugworker/venv"))
MOTO_PYTHON = VENV / "bin" / "python"
MOTO_INSTALLED = (VENV / "bin" / "moto_server").exists()
MOTO_WRAPPER = REPO / "services/testkit/python/moto_atomic.py"
PLUGWORKER = binaries.bin_dir() / "plugworker"


def moto(test: unittest.TestCase, env=None) -> str:
    """Starts moto for `test` (stopped at its cleanup) and returns its endpoint URL."""
    folder = pathlib.Path(test.enterContext(tempfile.TemporaryDirectory()))
    address = folder / "moto.json"
    process = subprocess.Popen([str(MOTO_PYTHON), str(MOTO_WRAPPER), "--address-file", str(address), "-p", "0"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    test.addCleanup(process.wait)
    test.addCleanup(process.terminate)
    deadline = time.time() + 30
    while not address.exists():
        if process.poll() is not None or time.time() > deadline:
            raise AssertionError(f"moto did not start (exit {process.poll()})")
        time.sleep(0.05)
    return "http://" + json.loads(address.read_text())["http"]


def registry(test: unittest.TestCase, *args: str) -> str:
    """Starts `plugworker registry ARGS` for `test` (stopped at its cleanup) and returns its
    address, host:port."""
    process = subprocess.Popen([str(PLUGWORKER), "registry", "--listen", "127.0.0.1:0", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    test.addCleanup(process.wait)
    test.addCleanup(process.terminate)
    test.addCleanup(process.stdout.close)
    line = process.stdout.readline()  # "registry listening on http://ADDRESS", once bound
    if not line.startswith("registry listening on http://"):
        raise AssertionError(f"plugworker registry did not start (exit {process.poll()}, said {line!r})")
    return line.strip().removeprefix("registry listening on http://")

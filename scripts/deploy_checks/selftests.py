"""`python -m deploy_checks.selftests NAME...`: the deploy checks' self-tests (unittest names,
as `python -m unittest` takes them), the classes that start emulators (moto, the registry)
in a second process beside the rest. Those mostly wait on their processes, the rest parse
files: side by side on 2 cores they take about half as long as one after the other.
Exit status 1 if either half fails."""
import subprocess
import sys
import unittest

# Classes whose tests start moto or `plugworker registry` and run scripts against them.
EMULATED = {"MeshScript", "GalleryPolicies", "CreateQueues", "ConsulInitRun"}


def tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from tests(item)
        else:
            yield item


def main() -> int:
    suite = unittest.defaultTestLoader.loadTestsFromNames(sys.argv[1:])
    emulated, rest = [], unittest.TestSuite()
    for test in tests(suite):
        if type(test).__name__ in EMULATED:
            emulated.append(test.id())
        else:
            rest.addTest(test)
    beside = subprocess.Popen([sys.executable, "-m", "unittest", *emulated]) if emulated else None
    ok = unittest.TextTestRunner().run(rest).wasSuccessful()
    if beside is not None:
        ok = beside.wait() == 0 and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

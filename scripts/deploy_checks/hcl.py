"""Loading terraform/ with python-hcl2 into something easy to query."""
import copy
import dataclasses
import pathlib
import re

import hcl2


@dataclasses.dataclass
class Block:
    """One resource, data source, module call or variable, with where it is."""

    kind: str  # "resource", "data", "module", "variable", "locals"
    type: str  # e.g. "aws_sqs_queue" (empty for module/variable)
    name: str
    body: dict
    file: pathlib.Path

    def where(self) -> str:
        return f"{self.file}:{self.body.get('__start_line__', '?')}"

    def attr(self, key, default=None):
        """An attribute's value (python-hcl2 wraps single values in lists)."""
        value = self.body.get(key, default)
        if isinstance(value, list) and len(value) == 1 and not isinstance(value[0], dict):
            return value[0]
        return value

    def blocks(self, key) -> list:
        """Nested blocks named `key` (e.g. "ingress"), as dicts."""
        value = self.body.get(key, [])
        if isinstance(value, dict):
            return [value]
        return [v for v in value if isinstance(v, dict)]


def unwrap(value):
    if isinstance(value, list) and len(value) == 1 and not isinstance(value[0], dict):
        return value[0]
    return value


# Parsed documents by file text. The self-tests load a copy of terraform/ well over a
# hundred times, one file changed in each, and parsing was most of their time; a copy of
# the cached document is what each load gets, so no check can change another's.
_parsed: dict = {}


def parse(path: pathlib.Path) -> dict:
    """`path` parsed by python-hcl2 (a fresh copy; SystemExit naming the file if it does not parse)."""
    text = path.read_text()
    if text not in _parsed:
        try:
            _parsed[text] = hcl2.loads(text)
        except Exception as error:  # the parser's errors have no common base
            raise SystemExit(f"{path}: does not parse as HCL: {error}")
    return copy.deepcopy(_parsed[text])


def load_dir(directory: pathlib.Path) -> list:
    """Every block of every .tf file directly in `directory`."""
    blocks = []
    for path in sorted(directory.glob("*.tf")):
        document = parse(path)
        for entry in document.get("resource", []):
            for rtype, named in entry.items():
                for name, body in named.items():
                    blocks.append(Block("resource", rtype, name, body, path))
        for entry in document.get("data", []):
            for dtype, named in entry.items():
                for name, body in named.items():
                    blocks.append(Block("data", dtype, name, body, path))
        for entry in document.get("module", []):
            for name, body in entry.items():
                blocks.append(Block("module", "", name, body, path))
        for entry in document.get("variable", []):
            for name, body in entry.items():
                blocks.append(Block("variable", "", name, body, path))
        for entry in document.get("locals", []):
            for name, value in entry.items():
                if not name.startswith("__"):
                    blocks.append(Block("locals", "", name, {"value": value}, path))
    return blocks


def modules(root: pathlib.Path) -> dict:
    """Blocks by module folder: "" for the root, "queues" for modules/queues, ..."""
    found = {"": load_dir(root)}
    for directory in sorted((root / "modules").iterdir()) if (root / "modules").is_dir() else []:
        if directory.is_dir():
            found[directory.name] = load_dir(directory)
    return found


def of(blocks, kind, type_=""):
    return [b for b in blocks if b.kind == kind and b.type == type_]


def references(expression) -> set:
    """`var.x`, `local.y`, `aws_sqs_queue.dlq` ... referenced by an expression string."""
    return set(re.findall(r"\b(var\.\w+|local\.\w+|module\.\w+|aws_\w+\.\w+)", str(expression)))

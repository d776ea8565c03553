"""Adds a runner to a copy of the repository exactly as the README's "Adding a runner"
says, from that section's own blocks: scripts/check-add-runner.sh runs this on a copy, then
updates the lock file, builds the crate and runs the deploy checks there.

The section shows services/runners/nlp's Cargo.toml, build.rs and src/main.rs verbatim, a
compose entry and a tfvars line for its example runner. `add(root)`:

1. fails unless the three files shown are the repository's, byte for byte, and every
   `docs/<page>.md, "<section>"` the section or runners.auto.tfvars points to is a heading
   of that page (what a reader follows must exist);
2. writes the crate `services/runners/<short>/` from the three files with the name and
   description changed and nlp's test dependencies left out (as the section says), and
   nlp's algorithms as its own (what they are does not matter to the checks);
3. inserts the compose block after the last runner entry and the tfvars line at the end
   of `runners = { ... }`, unchanged, and fails unless the line is aligned as
   `terraform fmt` leaves the others.

Run from scripts/: `python3 -m deploy_checks.add_runner COPY` prints the runner's name.
"""
import pathlib
import re
import sys

TEMPLATE = "services/runners/nlp"
TEMPLATE_NAME = "nlp-runner"
HEADING = "### Adding a runner"
TFVARS = "terraform/runners.auto.tfvars"
COMPOSE = "infra/docker-compose.yml"
# A reference a reader follows: [docs/page.md](docs/page.md), "Section" or docs/page.md, "Section".
DOC_REFERENCE = re.compile(r"(docs/[\w.-]+\.md)(?:\]\([^)]*\))?, \"([^\"]+)\"")

class Refused(Exception):
    """The README's section cannot be followed as written; the message says where."""


def section(readme: str) -> str:
    """The README's "Adding a runner" section, up to the next heading outside a code block."""
    lines = readme.splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip("\n") == HEADING)
    except StopIteration:
        raise Refused(f"README.md has no section {HEADING!r}") from None
    fenced, end = False, len(lines)
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,3} ", lines[i]):
            end = i
            break
    return "".join(lines[start:end])


def blocks(text: str) -> list:
    """(label, language, body) of each fenced block; the label is the last non-empty line
    before the fence (e.g. "`services/runners/nlp/build.rs`:")."""
    found, label, fence = [], "", None
    for line in text.splitlines(keepends=True):
        if fence is None and line.startswith("```"):
            fence = (label, line[3:].strip(), [])
        elif fence is not None and line.startswith("```"):
            found.append((fence[0], fence[1], "".join(fence[2])))
            fence = None
        elif fence is not None:
            fence[2].append(line)
        elif line.strip():
            label = line.strip()
    return found


def _one(found: list, language: str) -> str:
    bodies = [body for _, lang, body in found if lang == language]
    if len(bodies) != 1:
        raise Refused(f"README.md, {HEADING}: expected one {language} block, found {len(bodies)}")
    return bodies[0]


def _check_references(root: pathlib.Path, where: str, text: str) -> None:
    for page, title in DOC_REFERENCE.findall(text):
        path = root / page
        headings = {m.group(1).strip() for m in re.finditer(r"(?m)^#+ (.+)$", path.read_text())} if path.exists() else set()
        if title not in headings:
            raise Refused(f"{where} points to {page}, \"{title}\", which has no such section")


def _template_files(root: pathlib.Path, found: list) -> dict:
    """The template's files the section shows, checked to be verbatim."""
    files = {}
    for label, _, body in found:
        shown = re.fullmatch(rf"`{re.escape(TEMPLATE)}/([\w./-]+)`:", label)
        if shown:
            relative = shown.group(1)
            if (root / TEMPLATE / relative).read_text() != body:
                raise Refused(f"README.md, {HEADING}: its {TEMPLATE}/{relative} is not the file's text")
            files[relative] = body
    missing = {"Cargo.toml", "build.rs", "src/main.rs"} - set(files)
    if missing:
        raise Refused(f"README.md, {HEADING}: does not show {TEMPLATE}'s {sorted(missing)}")
    return files


def _crate_manifest(template: str, name: str) -> str:
    manifest = template.replace(f'name = "{TEMPLATE_NAME}"', f'name = "{name}"', 1)
    manifest = re.sub(r'(?m)^description = ".*"$', f'description = "plugworker runner {name} (added by scripts/check-add-runner.sh)."', manifest, count=1)
    return manifest.split("\n[dev-dependencies]")[0].rstrip("\n") + "\n"  # nlp's tests'


def _insert_compose_entry(path: pathlib.Path, entry: str) -> None:
    text = path.read_text()
    marker = "\nvolumes:\n"  # the top-level key after the services, the runners last among them
    if marker not in text:
        raise Refused(f"{path}: no top-level volumes: to add the runner entry before")
    path.write_text(text.replace(marker, "\n" + entry + marker, 1))


def _insert_tfvars_entry(path: pathlib.Path, entry: str) -> None:
    text = path.read_text()
    block = re.search(r"(?ms)^runners = \{\n.*?^\}", text)
    if block is None:
        raise Refused(f"{path}: no `runners = {{ ... }}` block")
    path.write_text(text[: block.end() - 1] + entry + text[block.end() - 1:])
    # What `terraform fmt` would change in the entry (the deploy checks run terraform fmt
    # itself where it is installed; CI has none): every `=` of the block in one column.
    columns = {line.index(" = ") for line in re.search(r"(?ms)^runners = \{\n(.*?)^\}", path.read_text()).group(1).splitlines()}
    if len(columns) != 1:
        raise Refused(f"README.md, {HEADING}: its tfvars line is not aligned as terraform fmt leaves {path.name}")


def example_name(text: str) -> str:
    """The runner the section adds: its compose block's service."""
    name = re.match(r"  ([\w-]+):\n", _one(blocks(text), "yaml"))
    if name is None:
        raise Refused(f"README.md, {HEADING}: the compose block does not start with a service name")
    return name.group(1)


def add(root: pathlib.Path) -> str:
    """Adds the README's example runner to the copy at `root`; returns its name."""
    text = section((root / "README.md").read_text())
    found = blocks(text)
    _check_references(root, f"README.md, {HEADING}", text)
    _check_references(root, TFVARS, (root / TFVARS).read_text())
    files = _template_files(root, found)
    entry = _one(found, "yaml")
    name = example_name(text)
    if _one(found, "sh").strip() != "cargo update --workspace":
        raise Refused(f"README.md, {HEADING}: the lock file command is not `cargo update --workspace`")
    crate = root / "services" / "runners" / name.removesuffix("-runner")
    if crate.exists() or f"\n  {name}:\n" in (root / COMPOSE).read_text():
        raise Refused(f"README.md, {HEADING}: its example {name} is a runner of the repository already; the example needs a new name")
    (crate / "src" / "algorithms").mkdir(parents=True)
    (crate / "Cargo.toml").write_text(_crate_manifest(files["Cargo.toml"], name))
    (crate / "build.rs").write_text(files["build.rs"])
    (crate / "src" / "main.rs").write_text(files["src/main.rs"].replace(TEMPLATE_NAME, name))
    for algorithm in (root / TEMPLATE / "src" / "algorithms").glob("*.rs"):  # the user's own, here nlp's
        (crate / "src" / "algorithms" / algorithm.name).write_text(algorithm.read_text())
    _insert_compose_entry(root / COMPOSE, entry)
    _insert_tfvars_entry(root / TFVARS, _one(found, "hcl"))
    return name


def main() -> int:
    try:
        print(add(pathlib.Path(sys.argv[1])))
    except Refused as error:
        print(f"add-runner: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The deployables' Dockerfiles: multi-stage, non-root, health-checked, copying only
paths that exist, run-time files fetched by the developers' own checksummed script.

There are exactly two recipes: `controller.Dockerfile` and `runner.Dockerfile`, the one
image recipe of every runner (the runner is its build argument RUNNER). A per-runner
Dockerfile, or a runner's name in the runner recipe, fails: a new runner must need no
file here.
"""
import dataclasses
import json
import pathlib
import re

# recipe -> the binary its ENTRYPOINT runs
DEPLOYABLES = {
    "controller": "plugworker",
    "runner": "runner",
}
RUNNER_ARG = "RUNNER"


@dataclasses.dataclass
class Dockerfile:
    path: pathlib.Path
    stages: list  # FROM lines
    final: list  # (instruction, argument) of the last stage
    env: dict  # ENV of the last stage
    entrypoint: list
    cmd: list
    copies: list  # sources of COPY without --from, in every stage


def _exec_form(argument: str) -> list:
    try:
        value = json.loads(argument)
        return value if isinstance(value, list) else [argument]
    except json.JSONDecodeError:
        return argument.split()


def parse(path: pathlib.Path) -> Dockerfile:
    text = re.sub(r"\\\n", " ", path.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, argument = line.partition(" ")
        instructions.append((instruction.upper(), argument.strip()))
    stages = [arg for ins, arg in instructions if ins == "FROM"]
    last_from = max((i for i, (ins, _) in enumerate(instructions) if ins == "FROM"), default=0)
    final = instructions[last_from:]
    env = {}
    for ins, arg in final:
        if ins == "ENV":
            for key, value in re.findall(r"(\w+)=(\S+)", arg):
                env[key] = value
    entrypoint = next((_exec_form(a) for i, a in reversed(final) if i == "ENTRYPOINT"), [])
    cmd = next((_exec_form(a) for i, a in reversed(final) if i == "CMD"), [])
    copies = []
    for ins, arg in instructions:
        if ins == "COPY" and "--from" not in arg:
            parts = [p for p in arg.split() if not p.startswith("--")]
            copies += parts[:-1]
    return Dockerfile(path, stages, final, env, entrypoint, cmd, copies)


def _stage_args(path: pathlib.Path) -> list:
    """For each stage, the ARG names it declares (an ARG before the first FROM is only in
    scope for FROM lines)."""
    stages, current = [], None
    for line in re.sub(r"\\\n", " ", path.read_text()).splitlines():
        line = line.strip()
        if line.upper().startswith("FROM "):
            current = set()
            stages.append(current)
        elif line.upper().startswith("ARG ") and current is not None:
            current.add(line.split()[1].split("=")[0])
    return stages


def _runner_recipe(path: pathlib.Path, runner_names) -> list:
    problems = []
    text = path.read_text()
    uses = [i for i, stage in enumerate(re.split(r"(?im)^FROM ", text)[1:]) if "${RUNNER}" in stage or "$RUNNER" in stage]
    declared = _stage_args(path)
    for stage in uses:
        if RUNNER_ARG not in declared[stage]:
            problems.append(f"{path}: stage {stage + 1} uses ${{{RUNNER_ARG}}} without declaring ARG {RUNNER_ARG} (it would be empty)")
    if not re.search(r"cargo-build\.sh\s+\"?\$\{RUNNER\}", text):
        problems.append(f"{path}: the build stage must build the binary named by the RUNNER build argument (infra/docker/cargo-build.sh \"${{RUNNER}}\" ...)")
    if not re.search(r"fetch-models\.sh\s+--runner\s+\"?\$\{RUNNER\}", text):
        problems.append(f"{path}: a runner's run-time files must be the ones it declares, fetched and checksummed by scripts/fetch-models.sh --runner \"${{RUNNER}}\"")
    for name in runner_names:
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text):
            problems.append(f"{path}: names the runner {name}; the one runner recipe must not know any runner")
    return problems


def run(repo: pathlib.Path, runner_names=()) -> list:
    """`runner_names`: the runners the deployment declares (compose entries), which no
    recipe may name."""
    problems = []
    docker = repo / "infra" / "docker"
    expected = {f"{deployable}.Dockerfile" for deployable in DEPLOYABLES}
    for extra in sorted(p.name for p in docker.glob("*Dockerfile*") if p.name not in expected):
        problems.append(f"{docker / extra}: only {sorted(expected)} may exist: every runner is built from runner.Dockerfile (build arg {RUNNER_ARG})")
    for deployable, binary in DEPLOYABLES.items():
        path = docker / f"{deployable}.Dockerfile"
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        dockerfile = parse(path)
        if len(dockerfile.stages) < 2:
            problems.append(f"{path}: not multi-stage (build tools must stay out of the runtime image)")
        users = [arg for ins, arg in dockerfile.final if ins == "USER"]
        if not users or users[-1].split(":")[0] in ("root", "0"):
            problems.append(f"{path}: the runtime stage does not switch to a non-root USER")
        if not any(ins == "HEALTHCHECK" and "NONE" not in arg for ins, arg in dockerfile.final):
            problems.append(f"{path}: the runtime stage has no HEALTHCHECK")
        if not dockerfile.entrypoint or dockerfile.entrypoint[0] != binary:
            problems.append(f"{path}: ENTRYPOINT should be {binary}, got {dockerfile.entrypoint}")
        for source in dockerfile.copies:
            if "$" not in source and source != "." and not (repo / source).exists():
                problems.append(f"{path}: COPY {source}: no such path in the repository")
        text = path.read_text()
        if "--mount=type=cache" not in text:
            problems.append(f"{path}: the cargo build does not use cache mounts (dependency-cached builds)")
        if deployable == "runner":
            problems += _runner_recipe(path, runner_names)
    return problems

"""The deployables' Dockerfiles: multi-stage, non-root, health-checked, copying only
paths that exist, models fetched by the developers' own script."""
import dataclasses
import json
import pathlib
import re

DEPLOYABLES = {
    "controller": "plugworker",
    "image-runner": "image-runner",
    "nlp-runner": "nlp-runner",
}


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


def run(repo: pathlib.Path) -> list:
    problems = []
    for deployable, binary in DEPLOYABLES.items():
        path = repo / "infra" / "docker" / f"{deployable}.Dockerfile"
        if not path.is_file():
            problems.append(f"{path}: missing (one Dockerfile per deployable)")
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
            if source != "." and not (repo / source).exists():
                problems.append(f"{path}: COPY {source}: no such path in the repository")
        text = path.read_text()
        if deployable == "image-runner" and "scripts/fetch-models.sh" not in text:
            problems.append(f"{path}: models must be fetched (and checksummed) by scripts/fetch-models.sh")
        if "--mount=type=cache" not in text:
            problems.append(f"{path}: the cargo build does not use cache mounts (dependency-cached builds)")
    return problems

"""The controller's shutdown fits in ECS's stop timeout.

On SIGTERM the controller finishes a receive in progress (at most PLUGWORKER_RECEIVE_WAIT),
lets running jobs finish until PLUGWORKER_SHUTDOWN_GRACE after the signal, then re-queues
the rest (at most REQUEUE_SECONDS). ECS sends SIGKILL after the container's stopTimeout:
shorter than that shutdown, a deploy or scale-in kills the controller while it re-queues,
and the jobs it held come back only after their visibility timeout, one receive spent
(docs/delivery.md).
"""
import pathlib
import re

from . import hcl
from .terraform_rules import _evaluate

# What the controller allows itself to put unfinished jobs back (REQUEUE_GRACE in
# services/controller/src/controller.rs).
REQUEUE_SECONDS = 15
# Fargate's ceiling for stopTimeout.
FARGATE_MAX_STOP_TIMEOUT = 120
# The controller's defaults when the task definition does not set the variable.
DEFAULTS = {"PLUGWORKER_SHUTDOWN_GRACE": 30, "PLUGWORKER_RECEIVE_WAIT": 20}


def _seconds(text: str, locals_: dict):
    """Seconds of a humantime duration such as "30s", "2m", "500ms", "${local.x}s"."""
    text = re.sub(r"\$\{([^}]*)\}", lambda m: str(_evaluate(m.group(1), {}, locals_)), text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not match:
        raise ValueError(f"{text!r} is not a duration")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def controller_stop_timeout(tree) -> list:
    problems = []
    blocks = tree.get("ecs", [])
    locals_ = {b.name: hcl.unwrap(b.body["value"]) for b in blocks if b.kind == "locals"}
    where = next((b.where() for b in blocks if b.kind == "locals" and b.name == "controller_container"), "terraform/modules/ecs")
    container = locals_.get("controller_container")
    if isinstance(container, list) and container:
        container = container[0]
    if not isinstance(container, dict):
        return [f"{where}: no local controller_container (the controller's container definition) found"]
    environment = str(container.get("environment", ""))
    durations = {}
    for name, default in DEFAULTS.items():
        found = re.search(rf"'name': '{name}', 'value': '([^']*)'", environment)
        try:
            durations[name] = _seconds(found.group(1), locals_) if found else default
        except ValueError as error:
            problems.append(f"{where}: cannot evaluate the controller's {name}: {error}")
    stop = hcl.unwrap(container.get("stopTimeout"))
    if stop is None:
        problems.append(f"{where}: the controller container sets no stopTimeout (ECS's default, 30 s, is shorter than its shutdown)")
        return problems
    try:
        stop = _evaluate(stop, {}, locals_)
    except ValueError as error:
        return problems + [f"{where}: cannot evaluate the controller's stopTimeout: {error}"]
    if len(durations) == len(DEFAULTS):
        grace, wait = durations["PLUGWORKER_SHUTDOWN_GRACE"], durations["PLUGWORKER_RECEIVE_WAIT"]
        needed = max(grace, wait) + REQUEUE_SECONDS
        if stop < needed:
            problems.append(
                f"{where}: the controller's stopTimeout is {stop:g}s, shorter than its shutdown: max(shutdown grace {grace:g}s, "
                f"receive wait {wait:g}s) + {REQUEUE_SECONDS}s to re-queue unfinished jobs = {needed:g}s"
            )
    if stop > FARGATE_MAX_STOP_TIMEOUT:
        problems.append(f"{where}: the controller's stopTimeout is {stop:g}s; Fargate allows at most {FARGATE_MAX_STOP_TIMEOUT}s")
    return problems


def run(root: pathlib.Path) -> list:
    tree = hcl.modules(root)
    return [f"[controller_stop_timeout] {p}" for p in controller_stop_timeout(tree)]

"""`python -m deploy_checks [REPO]`: every deployment check; exit 1 on any violation."""
import pathlib
import sys

from . import compose_rules, dockerfile_rules, shutdown_rules, terraform_rules, tools


def sections(repo: pathlib.Path) -> dict:
    """Every check's problems, by check name (what `python -m deploy_checks` prints)."""
    found = {
        "terraform HCL rules": terraform_rules.run(repo / "terraform"),
        "controller shutdown vs ECS stop timeout": shutdown_rules.run(repo / "terraform"),
        "checkov terraform": tools.checkov(repo / "terraform", "terraform"),
        "checkov dockerfiles": tools.checkov(repo / "infra" / "docker", "dockerfile"),
        "Dockerfiles": dockerfile_rules.run(repo, compose_rules.runner_names(repo)),
        "docker compose": compose_rules.run(repo),
    }
    fmt = tools.terraform_fmt(repo / "terraform")
    if fmt is not None:
        found["terraform fmt"] = fmt
    return found


def main() -> int:
    repo = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parents[2])
    found = sections(repo)
    if "terraform fmt" not in found:
        print("deploy checks: terraform fmt: no terraform binary here, skipped")
    failed = False
    for name, problems in found.items():
        print(f"deploy checks: {name}: {'ok' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  - {problem}")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

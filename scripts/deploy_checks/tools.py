"""External checkers: checkov (offline) and terraform fmt."""
import json
import pathlib
import shutil
import subprocess
import sys


def checkov(directory: pathlib.Path, framework: str) -> list:
    """Failed checkov checks in `directory`, and skips without a justification. (Not
    --quiet: it leaves the skipped checks out of the report.)"""
    executable = pathlib.Path(sys.executable).parent / "checkov"
    command = [str(executable if executable.exists() else "checkov"), "-d", str(directory),
               "--framework", framework, "--skip-download", "--output", "json"]
    result = subprocess.run(command, capture_output=True, text=True)
    if not result.stdout.strip():
        return [f"checkov {framework} on {directory} produced no report: {result.stderr.strip()[-500:]}"]
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    problems = []
    for report in reports:
        if not isinstance(report, dict) or "results" not in report:
            continue  # an empty directory for this framework
        for failed in report["results"].get("failed_checks", []):
            problems.append(f"checkov {failed['check_id']} ({failed['check_name']}): {failed['resource']} in {failed['file_path']}:{failed['file_line_range'][0]}")
        for skipped in report["results"].get("skipped_checks", []):
            reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
            if not reason or reason.strip().lower() in ("", "no comment provided"):
                problems.append(f"checkov {skipped['check_id']} skipped without a justification: {skipped['resource']} in {skipped['file_path']}")
    return problems


def terraform_fmt(directory: pathlib.Path):
    """Files `terraform fmt` would change; None when no terraform binary is installed."""
    terraform = shutil.which("terraform")
    if terraform is None:
        return None
    result = subprocess.run([terraform, "fmt", "-check", "-recursive", "-list=true", str(directory)], capture_output=True, text=True)
    if result.returncode == 0:
        return []
    return [f"terraform fmt: {line} is not formatted" for line in result.stdout.split()] or [result.stderr.strip()]

"""infra/docker-compose.yml: everything a service refers to exists and agrees.

- each service has an image or a build whose context and Dockerfile exist; mounted files
  exist; `depends_on` names services; `${VAR}` interpolations have defaults;
- plugworker services: every variable set is one the binary reads (its `--help`) or a
  documented algorithm setting (README) or standard (AWS_*, OTEL_*, RUST_LOG), and every
  required option is set;
- ports: every `service:port` in an environment value, in the Prometheus targets, the
  collector's exporters and Grafana's data sources is a port that service listens on;
  published ports are ports the service listens on;
- the queues the controller uses are the ones the init job creates, with the same job
  timeout, and so is its payload bucket.
"""
import pathlib
import re
import shlex

import yaml

from . import binaries, dockerfile_rules

STANDARD_PREFIXES = ("AWS_", "OTEL_", "RUST_LOG", "ORT_DYLIB_PATH")


def _environment(service: dict) -> dict:
    env = service.get("environment", {}) or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _port(address: str):
    match = re.search(r":(\d+)$", address.strip())
    return int(match.group(1)) if match else None


def _third_party_ports(name: str, service: dict, infra: pathlib.Path) -> set:
    """Ports a non-plugworker service listens on, from its image and its config file."""
    image = str(service.get("image", ""))
    env = _environment(service)
    if "consul" in image:
        return {8500, 8600, 8301, 8300}
    if "moto" in image:
        return {int(env.get("MOTO_PORT", 5000))}
    if "grafana/grafana" in image:
        return {3000}
    if "prometheus" in image:
        return {9090}
    if "opentelemetry-collector" in image:
        config = yaml.safe_load((infra / "otel-collector.yaml").read_text())
        ports = set()
        for protocol in config["receivers"]["otlp"]["protocols"].values():
            ports.add(_port(protocol["endpoint"]))
        for exporter in config.get("exporters", {}).values():
            if isinstance(exporter, dict) and str(exporter.get("endpoint", "")).startswith("0.0.0.0:"):
                ports.add(_port(exporter["endpoint"]))
        for extension in config.get("extensions", {}).values():
            ports.add(_port(extension["endpoint"]))
        return ports
    if "tempo" in image:
        config = yaml.safe_load((infra / "tempo.yaml").read_text())
        ports = {int(config["server"]["http_listen_port"])}
        for protocol in config["distributor"]["receivers"]["otlp"]["protocols"].values():
            ports.add(_port(protocol["endpoint"]))
        return ports
    return set()


def _plugworker_ports(env: dict, dockerfile_env: dict) -> set:
    merged = dict(dockerfile_env, **env)
    return {
        _port(merged[name])
        for name in ("PLUGWORKER_HEALTH_ADDRESS", "PLUGWORKER_LISTEN", "PLUGWORKER_METRICS_ADDRESS")
        if name in merged and _port(merged[name])
    }


def _documented_settings(repo: pathlib.Path) -> set:
    return set(re.findall(r"`(PLUGWORKER_\w+)`", (repo / "README.md").read_text()))


def _closed_ports(value: str, listening: dict):
    """(service, port) pairs a value names (URLs, host:port) where that service does not
    listen on that port."""
    for host, port in re.findall(r"(?:^|//|\s|\")([a-z][\w-]*):(\d+)", value):
        if host in listening and int(port) not in listening[host]:
            yield host, int(port)


def run(repo: pathlib.Path, compose_path: pathlib.Path = None) -> list:
    infra = repo / "infra"
    compose_path = compose_path or infra / "docker-compose.yml"
    text = compose_path.read_text()
    document = yaml.safe_load(text)
    services = document.get("services", {})
    names = set(services)
    problems = []
    where = compose_path

    for variable, default in re.findall(r"\$\{(\w+)(:?-[^}]*)?\}", text):
        if not default and not (compose_path.parent / ".env").exists():
            problems.append(f"{where}: ${{{variable}}} has no default and there is no .env")

    listening, plugworker = {}, {}
    for name, service in services.items():
        env = _environment(service)
        if "image" not in service and "build" not in service:
            problems.append(f"{where}: service {name} has neither image nor build")
        build = service.get("build")
        if build:
            context = compose_path.parent / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            if not context.is_dir():
                problems.append(f"{where}: service {name}: build context {context} does not exist")
            elif not dockerfile.is_file():
                problems.append(f"{where}: service {name}: Dockerfile {dockerfile} does not exist")
            else:
                plugworker[name] = dockerfile_rules.parse(dockerfile)
        for volume in service.get("volumes", []) or []:
            source = str(volume).split(":")[0]
            if source.startswith((".", "/")) and not (compose_path.parent / source).exists():
                problems.append(f"{where}: service {name} mounts {source}, which does not exist")
        depends = service.get("depends_on", []) or []
        for dependency in depends if isinstance(depends, list) else depends.keys():
            if dependency not in names:
                problems.append(f"{where}: service {name} depends on {dependency}, which is not a service")
        if name in plugworker:
            listening[name] = _plugworker_ports(env, plugworker[name].env)
        else:
            listening[name] = _third_party_ports(name, service, infra)

    documented = _documented_settings(repo)
    for name, dockerfile in plugworker.items():
        service = services[name]
        env = _environment(service)
        command = service.get("command", dockerfile.cmd)
        command = shlex.split(command) if isinstance(command, str) else list(command or [])
        if not dockerfile.entrypoint:
            problems.append(f"{where}: service {name}: its Dockerfile has no ENTRYPOINT")
            continue
        binary, *entry_args = dockerfile.entrypoint
        # Subcommands only (flags in `command` are handled below).
        args = entry_args + [a for a in command if not a.startswith("-")][:1]
        interface = binaries.interface(binary, args)
        for variable in env:
            if variable in interface.known or variable in documented or variable.startswith(STANDARD_PREFIXES):
                continue
            problems.append(f"{where}: service {name} sets {variable}, which `{' '.join([binary, *args])}` does not read (typo?)")
        for flag, variable in interface.required.items():
            if variable not in env and variable not in dockerfile.env and flag not in command:
                problems.append(f"{where}: service {name} does not set {variable} ({flag}), which `{' '.join([binary, *args])}` requires")
        for published in service.get("ports", []) or []:
            container_port = int(str(published).split(":")[-1].split("/")[0])
            if container_port not in listening[name]:
                problems.append(f"{where}: service {name} publishes {published}, but listens on {sorted(listening[name])}")

    for name, service in services.items():
        for variable, value in _environment(service).items():
            for host, port in _closed_ports(value, listening):
                problems.append(f"{where}: service {name}: {variable}={value} names {host}:{port}, but {host} listens on {sorted(listening[host])}")

    problems += _config_references(infra, names, listening)
    problems += _queues(where, services)
    return problems


def _config_references(infra, names, listening) -> list:
    problems = []
    prometheus = yaml.safe_load((infra / "prometheus.yml").read_text())
    for job in prometheus.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            for target in static.get("targets", []):
                host, port = target.rsplit(":", 1)
                if host not in names or int(port) not in listening[host]:
                    problems.append(f"{infra}/prometheus.yml: job {job['job_name']} scrapes {target}, which no service listens on")
        for sd in job.get("dns_sd_configs", []):
            for host in sd.get("names", []):
                if host not in names or int(sd["port"]) not in listening[host]:
                    problems.append(f"{infra}/prometheus.yml: job {job['job_name']} scrapes {host}:{sd['port']}, which no service listens on")
    collector = yaml.safe_load((infra / "otel-collector.yaml").read_text())
    for exporter_name, exporter in (collector.get("exporters") or {}).items():
        endpoint = str((exporter or {}).get("endpoint", ""))
        for host, port in _closed_ports(endpoint, listening):
            problems.append(f"{infra}/otel-collector.yaml: exporter {exporter_name} sends to {endpoint}, but {host} listens on {sorted(listening[host])}")
    datasources = yaml.safe_load((infra / "grafana/provisioning/datasources/datasources.yaml").read_text())
    for source in datasources.get("datasources", []):
        for host, port in _closed_ports(str(source.get("url", "")), listening):
            problems.append(f"{infra}/grafana/provisioning/datasources/datasources.yaml: {source['name']} at {source['url']}, but {host} listens on {sorted(listening[host])}")
    return problems


def _seconds(value: str):
    match = re.fullmatch(r"(\d+)(s|m)?", value.strip())
    if not match:
        return None
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def _queues(where, services) -> list:
    """The controller's queue URLs are the queues the init job creates, and the init job
    derives their visibility from the controller's job timeout."""
    problems = []
    init = next((s for s in services.values() if "create_queues.py" in " ".join(map(str, s.get("entrypoint", []) or []))), None)
    controller = next((s for s in services.values() if "PLUGWORKER_JOBS_QUEUE_URL" in _environment(s)), None)
    if init is None or controller is None:
        return [f"{where}: need a queue-creating service (create_queues.py) and a controller"]
    init_env, env = _environment(init), _environment(controller)
    prefix = init_env.get("QUEUE_PREFIX", "plugworker")
    expected = {
        "PLUGWORKER_JOBS_QUEUE_URL": f"{prefix}-jobs",
        "PLUGWORKER_RESULTS_QUEUE_URL": f"{prefix}-results",
        "PLUGWORKER_DLQ_URL": f"{prefix}-jobs-dlq",
    }
    for variable, queue in expected.items():
        if variable in env and env[variable].rstrip("/").rsplit("/", 1)[-1] != queue:
            problems.append(f"{where}: controller {variable}={env[variable]} is not the queue {queue} that sqs-init creates")
    bucket = init_env.get("PAYLOAD_BUCKET", f"{prefix}-payloads")
    if env.get("PLUGWORKER_PAYLOAD_BUCKET", bucket) != bucket:
        problems.append(f"{where}: controller PLUGWORKER_PAYLOAD_BUCKET={env['PLUGWORKER_PAYLOAD_BUCKET']} is not the bucket {bucket} that sqs-init creates")
    job_timeout = _seconds(env.get("PLUGWORKER_JOB_TIMEOUT", "300s"))
    if job_timeout != _seconds(init_env.get("JOB_TIMEOUT_SECONDS", "300")):
        problems.append(
            f"{where}: sqs-init JOB_TIMEOUT_SECONDS={init_env.get('JOB_TIMEOUT_SECONDS')} differs from the controller's PLUGWORKER_JOB_TIMEOUT={env.get('PLUGWORKER_JOB_TIMEOUT', '300s')}: the visibility timeout would not follow the job timeout"
        )
    return problems

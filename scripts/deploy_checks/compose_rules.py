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
  timeout, and so is its payload bucket;
- runners (`runners`): every runner is one entry built from the shared anchors
  (x-runner, x-runner-build, x-runner-env) with nothing of its own but its name (the
  RUNNER build argument, its token file) and replicas; a runner's name appears nowhere
  else in infra/; what models/manifest.json declares for runners is for runner entries;
  the compose runners are the terraform runners (terraform/runners.auto.tfvars);
- trust (`trust`): Consul runs with ACLs, default deny, and Connect, and its HTTP API is
  reachable on the network only over HTTPS; every process talking to Consul has its own
  token file, in a volume that only that role mounts (read-only) and the init job writes;
  no token literal; nothing runs with --insecure-plaintext; the controller's policy
  (init.sh) grants exactly what the code's controller_rules does;
- the gallery (`galleries`): a runner following it merges x-gallery-runner and
  x-gallery-runner-env (x-runner's and x-runner-env's own plus the `gallery` volume
  read-only as PLUGWORKER_MEME_GALLERY); consul-init lists the same runners and gives their
  tokens exactly the galleries' KV read, the operators' token exactly its write (the key
  services/meme/src/store.rs writes); no runner mounts the gallery writable;
- Prometheus finds the controller and the runners through Consul (`consul_sd_configs`
  filtered on Meta plugworker_role, scraped at plugworker_metrics_port), with its own
  token; no static target names a plugworker service.
"""
import copy
import functools
import json
import pathlib
import re
import shlex

import yaml

from . import binaries, consul_rules, dockerfile_rules, hcl

RUNNER_DOCKERFILE = "infra/docker/runner.Dockerfile"
RUNNER_ANCHORS = {"service": "x-runner", "build": "x-runner-build", "environment": "x-runner-env"}
# A runner following the gallery merges these instead of x-runner and x-runner-env.
GALLERY_ANCHORS = {"service": "x-gallery-runner", "environment": "x-gallery-runner-env"}
GALLERY_VARIABLE = "PLUGWORKER_MEME_GALLERY"
# What a runner entry may add to the anchors: its name (build arg, token file) and replicas.
RUNNER_ENTRY_KEYS = {"build", "environment", "deploy"}
RUNNER_ANCHOR_ENV = ("PLUGWORKER_LISTEN", "PLUGWORKER_HEALTH_LISTEN", "PLUGWORKER_METRICS_ADDRESS", "CONSUL_HTTP_ADDR")
MERGE_TAG = "tag:yaml.org,2002:merge"
LOOPBACK = ("127.", "localhost", "::1")

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
        config = consul_config(service, infra)
        return consul_network_ports(config) if config is not None else {8500, 8600, 8301, 8300}
    if "moto" in image:
        return {int(env.get("MOTO_PORT", 5000))}
    if "grafana/grafana" in image:
        return {3000}
    if "prometheus" in image:
        return {9090}
    if "opentelemetry-collector" in image:
        config = _yaml((infra / "otel-collector.yaml").read_text())
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
        config = _yaml((infra / "tempo.yaml").read_text())
        ports = {int(config["server"]["http_listen_port"])}
        for protocol in config["distributor"]["receivers"]["otlp"]["protocols"].values():
            ports.add(_port(protocol["endpoint"]))
        return ports
    return set()


def _plugworker_ports(env: dict, dockerfile_env: dict) -> set:
    merged = dict(dockerfile_env, **env)
    return {
        _port(merged[name])
        for name in ("PLUGWORKER_HEALTH_ADDRESS", "PLUGWORKER_LISTEN", "PLUGWORKER_HEALTH_LISTEN", "PLUGWORKER_METRICS_ADDRESS")
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
    document = _yaml(text)
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
            elif not source.startswith((".", "/")) and source not in (document.get("volumes") or {}):
                problems.append(f"{where}: service {name} mounts the volume {source}, which the top-level volumes do not declare")
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
        entrypoint = service.get("entrypoint") or dockerfile.entrypoint
        entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else list(entrypoint)
        if not entrypoint:
            problems.append(f"{where}: service {name}: its Dockerfile has no ENTRYPOINT")
            continue
        binary, *entry_args = entrypoint
        runner = _build_args(service).get(dockerfile_rules.RUNNER_ARG)
        if binary == dockerfile_rules.DEPLOYABLES["runner"] and runner:
            binary = runner  # the one runner recipe installs the RUNNER binary under this name
            if not (binaries.bin_dir() / binary).exists():
                problems.append(f"{where}: service {name}: RUNNER={binary} is not a binary of the workspace (none in {binaries.bin_dir()})")
                continue
        # Subcommands only (flags in `command` are handled below).
        args = entry_args + [a for a in command if not a.startswith("-")][:1]
        interface = binaries.interface(binary, args)
        if service.get("entrypoint") and binaries.subcommands(binary, entry_args):
            # A command group as the entry point (`plugworker gallery`, run with a
            # subcommand): its environment serves every subcommand.
            interface = binaries.Interface(set().union(*(binaries.interface(binary, entry_args + [s]).known
                                                         for s in binaries.subcommands(binary, entry_args))), {})
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
    runners = runner_entries(compose_path)
    problems += _runner_entries(where, text, runners)
    problems += _runner_names_elsewhere(repo, compose_path, text, runners)
    problems += _manifest_runners(repo, runners)
    problems += _terraform_runners(repo, where, runners)
    problems += _trust(where, services, plugworker, infra, set(runners))
    problems += _controller_policy(repo, infra)
    problems += _galleries(repo, where, text, services, runners)
    problems += _prometheus(infra, services, plugworker, runners)
    return problems


def _controller_policy(repo, infra) -> list:
    """The policy init.sh gives the controller is the code's controller_rules("controller")."""
    init = infra / "consul" / "init.sh"
    found = re.search(r"ensure_policy plugworker-controller '([^']*)'", init.read_text()) if init.exists() else None
    if not found:
        return [f"{init}: no `ensure_policy plugworker-controller '<rules>'` (the controller's policy)"]
    granted, wanted = consul_rules.parse(found.group(1)), consul_rules.controller_rules(repo)
    problems = []
    if wanted - granted:
        problems.append(f"{init}: the controller's policy lacks {consul_rules.describe(wanted - granted)} (consul_client::admin::controller_rules)")
    if granted - wanted:
        problems.append(f"{init}: the controller's policy grants {consul_rules.describe(granted - wanted)} beyond consul_client::admin::controller_rules")
    return problems


def _config_references(infra, names, listening) -> list:
    problems = []
    prometheus = _yaml((infra / "prometheus.yml").read_text())
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
    collector = _yaml((infra / "otel-collector.yaml").read_text())
    for exporter_name, exporter in (collector.get("exporters") or {}).items():
        endpoint = str((exporter or {}).get("endpoint", ""))
        for host, port in _closed_ports(endpoint, listening):
            problems.append(f"{infra}/otel-collector.yaml: exporter {exporter_name} sends to {endpoint}, but {host} listens on {sorted(listening[host])}")
    datasources = _yaml((infra / "grafana/provisioning/datasources/datasources.yaml").read_text())
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


# --- runners ---------------------------------------------------------------------------

def _build_args(service: dict) -> dict:
    build = service.get("build")
    args = (build.get("args") if isinstance(build, dict) else None) or {}
    if isinstance(args, list):
        args = dict(item.split("=", 1) if "=" in item else (item, "") for item in args)
    return {str(k): str(v) for k, v in args.items()}


def _mapping(node) -> dict:
    """key -> (key node, value node) of a YAML mapping node, merge keys included."""
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {key.value: (key, value) for key, value in node.value}


def _merged(node) -> list:
    """The nodes a mapping node merges (`<<: *a` or `<<: [*a, *b]`)."""
    merged = []
    for key, value in node.value if isinstance(node, yaml.MappingNode) else []:
        if key.tag == MERGE_TAG or key.value == "<<":
            merged += value.value if isinstance(value, yaml.SequenceNode) else [value]
    return merged


# libyaml's loader where PyYAML has it (the same documents, several times faster).
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=64)
def _parsed(text: str):
    return yaml.load(text, Loader=_LOADER)


def _yaml(text: str):
    """`text` as YAML: a fresh copy of a cached parse. One check run reads the compose
    file and its neighbours many times, and the self-tests run the checks some hundred
    times on copies with one edit each; parsing was most of their time."""
    return copy.deepcopy(_parsed(text))


@functools.lru_cache(maxsize=8)
def _compose(text: str):
    """The YAML node graph of a file, once per text: anchors are recognised by node
    identity, so every rule must look at the same graph."""
    return yaml.compose(text)


def runner_entries(compose_path: pathlib.Path) -> dict:
    """Runner entries of a compose file: service name -> (resolved service, YAML node),
    for every service built from the runner recipe or merging the x-runner anchor."""
    text = compose_path.read_text()
    document = _yaml(text) or {}
    root = _mapping(_compose(text))
    anchor = root.get(RUNNER_ANCHORS["service"], (None, None))[1]
    service_nodes = _mapping(root.get("services", (None, None))[1])
    found = {}
    for name, service in (document.get("services") or {}).items():
        build = service.get("build")
        dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
        node = service_nodes[name][1]
        if dockerfile == RUNNER_DOCKERFILE or (anchor is not None and any(m is anchor for m in _merged(node))):
            found[name] = (service, node)
    return found


def runner_names(repo: pathlib.Path) -> list:
    """The runners the local stack deploys: its compose runner entries."""
    return sorted(runner_entries(repo / "infra" / "docker-compose.yml"))


def _runner_entries(where, text, runners) -> list:
    """Every runner entry is the x-runner anchors plus its name and replicas, nothing else
    (a runner needing more than that is a change to the shared anchors, for every runner)."""
    problems = []
    root = _mapping(_compose(text))
    anchors = {}
    for role, key in RUNNER_ANCHORS.items():
        if key not in root:
            problems.append(f"{where}: no top-level {key} anchor (what every runner entry shares)")
        else:
            anchors[role] = root[key][1]
    if problems:
        return problems
    gallery = {role: root[key][1] for role, key in GALLERY_ANCHORS.items() if key in root}
    shared = _yaml(yaml.serialize(anchors["service"])) or {}
    shared_env = _yaml(yaml.serialize(anchors["environment"])) or {}
    for key in ("healthcheck", "stop_grace_period", "volumes", "depends_on"):
        if key not in shared:
            problems.append(f"{where}: x-runner has no {key} (every runner needs it)")
    for variable in RUNNER_ANCHOR_ENV:
        if variable not in shared_env:
            problems.append(f"{where}: x-runner-env does not set {variable} (every runner needs it)")
    if not runners:
        problems.append(f"{where}: no runner entries (services built from {RUNNER_DOCKERFILE})")
    for name, (service, node) in sorted(runners.items()):
        entry = f"{where}: runner {name}"
        keys = _mapping(node)
        if not any(m is anchors["service"] or m is gallery.get("service") for m in _merged(node)):
            problems.append(f"{entry} does not merge the x-runner anchor (<<: *runner, or <<: *gallery-runner)")
        extra = set(keys) - {"<<"} - RUNNER_ENTRY_KEYS
        if extra:
            problems.append(f"{entry} sets {sorted(extra)} itself; a runner entry adds only {sorted(RUNNER_ENTRY_KEYS)} to x-runner (put what every runner needs in the anchor)")
        build = keys.get("build", (None, None))[1]
        if build is None or not any(m is anchors["build"] for m in _merged(build)):
            problems.append(f"{entry}: build must be {{<<: *runner-build, args: {{RUNNER: {name}}}}}")
        else:
            if set(_mapping(build)) - {"<<", "args"}:
                problems.append(f"{entry}: build adds {sorted(set(_mapping(build)) - {'<<', 'args'})} to x-runner-build")
            args = _build_args(service)
            if args != {dockerfile_rules.RUNNER_ARG: name}:
                problems.append(f"{entry}: build args must be exactly {{RUNNER: {name}}} (the binary is the service name), got {args}")
        environment = keys.get("environment", (None, None))[1]
        follows = any(m is gallery.get("service") for m in _merged(node))
        wanted_env = gallery.get("environment") if follows else anchors["environment"]
        if environment is None or not any(m is wanted_env for m in _merged(environment)):
            anchor = "gallery-runner-env" if follows else "runner-env"
            problems.append(f"{entry}: environment must be {{<<: *{anchor}, CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{name}}}"
                            + (" (it merges x-gallery-runner)" if follows else ""))
        else:
            own = set(_mapping(environment)) - {"<<"}
            if own != {"CONSUL_HTTP_TOKEN_FILE"}:
                problems.append(f"{entry}: environment adds {sorted(own)} to x-runner-env; only its own CONSUL_HTTP_TOKEN_FILE belongs in the entry")
            elif _environment(service).get("CONSUL_HTTP_TOKEN_FILE") != f"/run/consul-tokens/{name}":
                problems.append(f"{entry}: its token file must be /run/consul-tokens/{name} (consul-init names each runner's token after it)")
        deploy = service.get("deploy") or {}
        if set(deploy) - {"replicas"}:
            problems.append(f"{entry}: deploy sets {sorted(set(deploy) - {'replicas'})}; only replicas belong in a runner entry")
    return problems


def _name_pattern(name: str):
    return re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")


def _runner_names_elsewhere(repo, compose_path, text, runners) -> list:
    """A runner's name appears in infra/ only inside its own compose entry."""
    problems = []
    spans = {name: (node.start_mark.line, node.end_mark.line) for name, (_, node) in runners.items()}
    keys = {}
    for key, _ in _mapping(_mapping(_compose(text)).get("services", (None, None))[1]).values():
        keys[key.value] = key.start_mark.line
    for path in sorted((repo / "infra").rglob("*")):
        if not path.is_file():
            continue
        try:
            lines = path.read_text().splitlines()
        except UnicodeDecodeError:
            continue
        for name in runners:
            pattern = _name_pattern(name)
            for number, line in enumerate(lines):
                if not pattern.search(line):
                    continue
                if path.resolve() == compose_path.resolve() and (number == keys.get(name) or spans[name][0] <= number <= spans[name][1]):
                    continue
                problems.append(f"{path}:{number + 1}: names the runner {name} outside its compose entry (a runner must be one entry; derive the rest from the entries)")
    return problems


def _manifest_runners(repo, runners) -> list:
    manifest = repo / "models" / "manifest.json"
    if not manifest.is_file():
        return []
    declared = json.loads(manifest.read_text()).get("runners", {})
    return [f"{manifest}: runners.{name} is not a runner entry of infra/docker-compose.yml (typo? its image would get nothing)"
            for name in sorted(declared) if name not in runners]


def _terraform_runners(repo, where, runners) -> list:
    """The local stack and the AWS deployment run the same runners."""
    tfvars = repo / "terraform" / "runners.auto.tfvars"
    if not tfvars.is_file():
        return []  # terraform not yet driven by runners.auto.tfvars
    from . import terraform_rules
    declared = set(terraform_rules.runner_names(repo / "terraform"))
    problems = []
    for name in sorted(set(runners) - declared):
        problems.append(f"{where}: runner {name} has a compose entry but no entry in {tfvars}")
    for name in sorted(declared - set(runners)):
        problems.append(f"{tfvars}: runner {name} has no compose entry in {where}")
    return problems


# --- galleries -------------------------------------------------------------------------

def gallery_runner_names(compose_path: pathlib.Path) -> list:
    """The runner entries that follow the gallery: those merging x-gallery-runner."""
    text = compose_path.read_text()
    root = _mapping(_compose(text))
    anchor = root.get(GALLERY_ANCHORS["service"], (None, None))[1]
    if anchor is None:
        return []
    return sorted(name for name, (_, node) in runner_entries(compose_path).items() if any(m is anchor for m in _merged(node)))


def _tfvars_galleries(tfvars: pathlib.Path):
    """runner -> whether its runners.auto.tfvars entry names a gallery; None without the file."""
    if not tfvars.is_file():
        return None
    runners = _one(hcl.parse(tfvars).get("runners")) or {}
    return {str(name).strip('"'): bool(_one(entry).get("gallery")) if isinstance(_one(entry), dict) else False
            for name, entry in runners.items() if not str(name).startswith("__")}


def _init_policy(init_text: str, name: str) -> set:
    found = re.search(rf"ensure_policy {re.escape(name)} '([^']*)'", init_text)
    return consul_rules.parse(found.group(1)) if found else set()


def _galleries(repo, where, text, services, runners) -> list:
    """x-gallery-runner is x-runner plus the gallery volume read-only, x-gallery-runner-env
    is x-runner-env plus PLUGWORKER_MEME_GALLERY at that mount; no runner writes the
    gallery; consul-init grants exactly the galleries' KV read to those runners and its
    write to the operators' token."""
    root = _mapping(_compose(text))
    problems = []
    # The image carries no gallery: a runner reading one must be given one, here and on AWS.
    gallery_runners = gallery_runner_names(where)
    tfvars = repo / "terraform" / "runners.auto.tfvars"
    tf_galleries = _tfvars_galleries(tfvars)
    for name in sorted(runners):
        if not (binaries.bin_dir() / name).exists():
            continue  # reported with the binaries
        if GALLERY_VARIABLE not in binaries.interface(name, []).known:
            continue
        if name not in gallery_runners:
            problems.append(f"{where}: runner {name} reads {GALLERY_VARIABLE} (its --help) but does not follow the gallery (<<: *gallery-runner): its image carries none")
        if tf_galleries is not None and name in tf_galleries and not tf_galleries[name]:
            problems.append(f"{tfvars}: runner {name} reads {GALLERY_VARIABLE} (its --help) but its entry names no gallery: its image carries none")
    if not any(key in root for key in GALLERY_ANCHORS.values()):
        return problems
    nodes = {}
    for role, key in GALLERY_ANCHORS.items():
        if key not in root:
            problems.append(f"{where}: {key} without {GALLERY_ANCHORS['environment' if role == 'service' else 'service']}: a runner following the gallery needs both")
        else:
            nodes[role] = root[key][1]
    if problems:
        return problems
    base_service, base_env = root[RUNNER_ANCHORS["service"]][1], root[RUNNER_ANCHORS["environment"]][1]
    if not any(m is base_service for m in _merged(nodes["service"])):
        problems.append(f"{where}: x-gallery-runner does not merge x-runner (<<: *runner)")
    if not any(m is base_env for m in _merged(nodes["environment"])):
        problems.append(f"{where}: x-gallery-runner-env does not merge x-runner-env (<<: *runner-env)")
    own_env = set(_mapping(nodes["environment"])) - {"<<"}
    if own_env != {GALLERY_VARIABLE}:
        problems.append(f"{where}: x-gallery-runner-env sets {sorted(own_env)}; it adds {GALLERY_VARIABLE} alone to x-runner-env")
    service = _yaml(yaml.serialize(nodes["service"])) or {}
    base = _yaml(yaml.serialize(base_service)) or {}
    env = _yaml(yaml.serialize(nodes["environment"])) or {}
    extra_keys = {k for k in service if k not in ("volumes", "depends_on") and service[k] != base.get(k)}
    if extra_keys:
        problems.append(f"{where}: x-gallery-runner changes {sorted(extra_keys)} of x-runner; it adds the gallery volume (and what starts it) only")
    added = [str(v) for v in service.get("volumes") or [] if str(v) not in [str(b) for b in base.get("volumes") or []]]
    missing = [str(b) for b in base.get("volumes") or [] if str(b) not in [str(v) for v in service.get("volumes") or []]]
    if missing:
        problems.append(f"{where}: x-gallery-runner drops x-runner's mounts {missing}")
    mount = str(env.get(GALLERY_VARIABLE, ""))
    if len(added) != 1 or added[0].split(":")[1:2] != [mount]:
        problems.append(f"{where}: x-gallery-runner must add exactly one mount, the gallery at {GALLERY_VARIABLE}={mount or '?'} (got {added})")
        return problems
    parts = added[0].split(":")
    if "ro" not in parts[2:]:
        problems.append(f"{where}: x-gallery-runner mounts the gallery {added[0]} writable; runners only read it (operators publish)")
    volume = parts[0]
    for name, svc in services.items():
        for v in svc.get("volumes") or []:
            bits = str(v).split(":")
            if bits[0] == volume and name in runners and "ro" not in bits[2:]:
                problems.append(f"{where}: runner {name} mounts the gallery volume {volume} writable; runners only read it")
    init = repo / "infra" / "consul" / "init.sh"
    init_text = init.read_text() if init.exists() else ""
    for policy, wanted in (("plugworker-gallery-reader", consul_rules.gallery_reader(repo)), ("plugworker-gallery-operator", consul_rules.gallery_publisher(repo))):
        granted = _init_policy(init_text, policy)
        if granted != wanted:
            problems.append(f"{init}: policy {policy} grants {consul_rules.describe(granted) or 'nothing'}; it must grant exactly {consul_rules.describe(wanted)} (the key services/meme/src/store.rs writes)")
    # `plugworker dev` grants its runners the same read, its operator token the write.
    dev = repo / consul_rules.DEV_MESH
    if consul_rules.dev_rules(repo, "GALLERY_READER_RULES") != consul_rules.gallery_reader(repo):
        problems.append(f"{dev}: GALLERY_READER_RULES grants {consul_rules.describe(consul_rules.dev_rules(repo, 'GALLERY_READER_RULES')) or 'nothing'}; dev's runners need exactly {consul_rules.describe(consul_rules.gallery_reader(repo))}")
    if not consul_rules.gallery_publisher(repo) <= consul_rules.dev_rules(repo, "OPERATOR_RULES"):
        problems.append(f"{dev}: OPERATOR_RULES lacks {consul_rules.describe(consul_rules.gallery_publisher(repo))} (dev's `plugworker gallery` announces versions with it)")
    if gallery_runners and not re.search(r'-service-identity="\$runner" \\\n\s+-policy-name=plugworker-gallery-reader', init_text):
        problems.append(f"{init}: the runners following the gallery ({', '.join(gallery_runners)}) get no plugworker-gallery-reader policy on their token")
    return problems


# --- trust -----------------------------------------------------------------------------

def consul_config(service: dict, infra: pathlib.Path):
    """The Consul agent configuration mounted into a consul service (merged), or None."""
    config = {}
    found = False
    for volume in service.get("volumes", []) or []:
        parts = str(volume).split(":")
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].startswith("/consul/config") and parts[0].endswith((".hcl", ".json")):
            found = True
            if parts[0].endswith(".hcl"):
                loaded = hcl.parse(infra / parts[0])
            else:
                with open(infra / parts[0]) as handle:
                    loaded = json.load(handle)
            config.update(loaded)
    return config if found else None


def _one(value):
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


def _block(config: dict, name: str) -> dict:
    value = _one(config.get(name, {}))
    return value if isinstance(value, dict) else {}


def consul_listeners(config: dict) -> dict:
    """Listener kind -> port, for what the agent serves beyond its container's loopback
    (Consul's defaults for a server where the config says nothing)."""
    ports, addresses = _block(config, "ports"), _block(config, "addresses")
    client = str(_one(config.get("client_addr", "127.0.0.1")))
    defaults = {"http": 8500, "https": -1, "dns": 8600, "grpc": -1, "grpc_tls": 8503}
    listening = {}
    for kind, default in defaults.items():
        port = _one(ports.get(kind, default))
        try:
            port = int(str(port).strip("${}"))
        except ValueError:
            continue
        address = str(_one(addresses.get(kind, client)))
        if port > 0 and not address.startswith(LOOPBACK):
            listening[kind] = port
    return listening


def consul_network_ports(config: dict) -> set:
    return set(consul_listeners(config).values())


def _consul_service(services):
    for name, service in services.items():
        command = service.get("command", [])
        command = shlex.split(command) if isinstance(command, str) else list(command or [])
        if "consul" in str(service.get("image", "")) and command[:1] == ["agent"]:
            return name, service
    return None, None


def _token_volume(service: dict, path: str):
    """(volume name, read-only, path inside the volume) of the named volume a file path
    is in, or (None, None, None)."""
    best = (None, None, "")
    for volume in service.get("volumes", []) or []:
        parts = str(volume).split(":")
        if len(parts) < 2 or parts[0].startswith((".", "/")):
            continue
        target = parts[1].rstrip("/") + "/"
        if path.startswith(target) and len(target) > len(best[2]):
            best = (parts[0], "ro" in parts[2:], target)
    return best[0], best[1], (path[len(best[2]):] if best[0] else None)


def _trust(where, services, plugworker, infra, runners) -> list:
    problems = []
    consul_name, consul = _consul_service(services)
    if consul is None:
        return [f"{where}: no Consul agent service (image hashicorp/consul, command agent ...)"]
    command = consul.get("command", [])
    if "-dev" in (shlex.split(command) if isinstance(command, str) else command):
        problems.append(f"{where}: service {consul_name} runs a -dev agent (no persistence; ACLs must come from its config)")
    config = consul_config(consul, infra)
    if config is None:
        return problems + [f"{where}: service {consul_name} mounts no agent configuration under /consul/config (ACLs, Connect, TLS)"]
    acl, connect = _block(config, "acl"), _block(config, "connect")
    if _one(acl.get("enabled")) is not True:
        problems.append(f"{where}: Consul ({consul_name}) runs without ACLs (acl.enabled)")
    if _one(acl.get("default_policy")) != "deny":
        problems.append(f"{where}: Consul ACL default_policy is {_one(acl.get('default_policy', 'allow'))!r}, not \"deny\"")
    if _one(connect.get("enabled")) is not True:
        problems.append(f"{where}: Consul Connect is not enabled (connect.enabled): no CA for the runners' mTLS")
    plaintext = {kind: port for kind, port in consul_listeners(config).items() if kind in ("http", "grpc")}
    if plaintext:
        problems.append(f"{where}: Consul serves {sorted(plaintext.values())} ({', '.join(sorted(plaintext))}) beyond its loopback: tokens would cross the network in clear (HTTPS only)")

    # Every Consul client has its own token file, in a volume its role alone mounts.
    clients = {}
    for name, service in services.items():
        env = _environment(service)
        if "CONSUL_HTTP_TOKEN" in env:
            problems.append(f"{where}: service {name} sets CONSUL_HTTP_TOKEN inline; tokens are files (CONSUL_HTTP_TOKEN_FILE) written by the init job")
        if name in plugworker or "CONSUL_HTTP_TOKEN_FILE" in env:
            if name in plugworker and "CONSUL_HTTP_TOKEN_FILE" not in env:
                problems.append(f"{where}: service {name} talks to Consul without a token (CONSUL_HTTP_TOKEN_FILE)")
                continue
            if env.get("CONSUL_HTTP_ADDR", "").startswith(("http://",)) or (env.get("CONSUL_HTTP_ADDR") and "://" not in env["CONSUL_HTTP_ADDR"] and not env["CONSUL_HTTP_ADDR"].startswith(LOOPBACK)):
                problems.append(f"{where}: service {name} reaches Consul at {env['CONSUL_HTTP_ADDR']} in plain HTTP (its token would travel in clear)")
            clients[name] = env.get("CONSUL_HTTP_TOKEN_FILE", "")
    prometheus = next((n for n, s in services.items() if "prom/prometheus" in str(s.get("image", ""))), None)
    if prometheus:
        config_file = _yaml((infra / "prometheus.yml").read_text())
        for job in config_file.get("scrape_configs", []):
            for sd in job.get("consul_sd_configs", []) or []:
                if "token" in sd:
                    problems.append(f"{infra}/prometheus.yml: job {job['job_name']} has an inline Consul token; use authorization.credentials_file")
                credentials = (sd.get("authorization") or {}).get("credentials_file")
                if not credentials:
                    problems.append(f"{infra}/prometheus.yml: job {job['job_name']} reads Consul without a token (authorization.credentials_file)")
                else:
                    clients.setdefault(prometheus, credentials)
    seen = {}
    roles = {}
    for name, path in clients.items():
        volume, read_only, inside = _token_volume(services[name], path)
        if (volume, inside) in seen and volume is not None:
            problems.append(f"{where}: services {seen[(volume, inside)]} and {name} share the Consul token {inside} of volume {volume}; every process has its own")
        seen.setdefault((volume, inside), name)
        if volume is None:
            problems.append(f"{where}: service {name}'s token {path} is not in a mounted volume the init job writes")
            continue
        if not read_only:
            problems.append(f"{where}: service {name} mounts its token volume {volume} writable; mount it :ro")
        role = "runner" if name in runners else name
        roles.setdefault(volume, set()).add(role)
    for volume, holders in roles.items():
        writers = [n for n, s in services.items() if any(str(v).split(":")[0] == volume and "ro" not in str(v).split(":")[2:] for v in s.get("volumes", []) or [])]
        if not writers:
            problems.append(f"{where}: no service writes the token volume {volume} (the init job creates the tokens)")
        if len(holders) > 1:
            problems.append(f"{where}: the token volume {volume} is mounted by {sorted(holders)}: each role's tokens in a volume of its own")
        mounted_by = {n for n, s in services.items() if any(str(v).split(":")[0] == volume for v in s.get("volumes", []) or [])}
        strangers = mounted_by - set(writers) - {n for n in clients if _token_volume(services[n], clients[n])[0] == volume}
        for stranger in sorted(strangers):
            problems.append(f"{where}: service {stranger} mounts the token volume {volume}, whose tokens are not its own")

    # No plaintext runner or controller.
    for name, service in services.items():
        env = _environment(service)
        value = env.get("PLUGWORKER_INSECURE_PLAINTEXT")
        if value is not None and value.strip().lower() not in ("", "false", "0", "no"):
            problems.append(f"{where}: service {name} sets PLUGWORKER_INSECURE_PLAINTEXT={value}: the stack runs mTLS only")
        for key in ("command", "entrypoint"):
            words = service.get(key) or []
            words = shlex.split(words) if isinstance(words, str) else [str(w) for w in words]
            if "--insecure-plaintext" in words:
                problems.append(f"{where}: service {name} runs with --insecure-plaintext: the stack runs mTLS only")
    for name, dockerfile in plugworker.items():
        if "PLUGWORKER_INSECURE_PLAINTEXT" in dockerfile.env or "--insecure-plaintext" in dockerfile.cmd + dockerfile.entrypoint:
            problems.append(f"{dockerfile.path}: the image runs in plaintext mode (--insecure-plaintext)")
    return problems


# --- Prometheus ------------------------------------------------------------------------

def _keeps(job: dict, role: str) -> bool:
    for rule in job.get("relabel_configs", []) or []:
        if (rule.get("action") == "keep" and rule.get("source_labels") == ["__meta_consul_service_metadata_plugworker_role"]
                and re.fullmatch(str(rule.get("regex", "(.*)")), role)):
            return True
    return False


def _prometheus(infra, services, plugworker, runners) -> list:
    path = infra / "prometheus.yml"
    config = _yaml(path.read_text())
    problems = []
    plugworker_names = set(plugworker) | set(runners)
    for job in config.get("scrape_configs", []):
        for kind in ("static_configs", "dns_sd_configs", "file_sd_configs"):
            for sd in job.get(kind, []) or []:
                named = [str(t) for t in sd.get("targets", []) + sd.get("names", [])]
                for target in named:
                    if target.split(":")[0] in plugworker_names:
                        problems.append(f"{path}: job {job['job_name']} lists {target} in {kind}; plugworker services are found through Consul (consul_sd_configs)")
                if kind == "file_sd_configs":
                    problems.append(f"{path}: job {job['job_name']} reads targets from files; plugworker services are found through Consul")
    for role in ("controller", "runner"):
        jobs = [j for j in config.get("scrape_configs", []) if j.get("consul_sd_configs") and _keeps(j, role)]
        if not jobs:
            problems.append(f"{path}: no consul_sd_configs job keeps Meta plugworker_role={role} (relabel keep on __meta_consul_service_metadata_plugworker_role)")
        for job in jobs:
            rewrites = [r for r in job.get("relabel_configs", []) or [] if r.get("target_label") == "__address__"]
            if not any("__meta_consul_service_metadata_plugworker_metrics_port" in (r.get("source_labels") or []) for r in rewrites):
                problems.append(f"{path}: job {job['job_name']} does not scrape at Meta plugworker_metrics_port (relabel __address__)")
            for sd in job["consul_sd_configs"]:
                server = str(sd.get("server", "localhost:8500"))
                consul = next((s for n, s in services.items() if n == server.split(":")[0]), None)
                if consul is None:
                    problems.append(f"{path}: job {job['job_name']} reads Consul at {server}, which is not a service")
                    continue
                config_file = consul_config(consul, infra)
                # Without a datacenter Prometheus first reads /v1/agent/self, which needs
                # agent:read: its read-only token gets 403 and discovery never starts.
                datacenter = str(sd.get("datacenter") or "").strip()
                if not datacenter:
                    problems.append(f"{path}: job {job['job_name']} does not name Consul's datacenter (datacenter); Prometheus would ask /v1/agent/self, which its read-only token may not read")
                if config_file is not None:
                    agent_datacenter = str(_one(config_file.get("datacenter", "dc1")))
                    if datacenter and datacenter != agent_datacenter:
                        problems.append(f"{path}: job {job['job_name']} asks datacenter {datacenter}, but Consul at {server} is in {agent_datacenter}")
                    port = int(server.rsplit(":", 1)[1]) if ":" in server else 8500
                    if port not in consul_network_ports(config_file):
                        problems.append(f"{path}: job {job['job_name']} reads Consul at {server}, but it serves {sorted(consul_network_ports(config_file))} on the network")
                    https = int(str(_one(_block(config_file, "ports").get("https", -1))).strip("${}"))
                    if port == https and sd.get("scheme") != "https":
                        problems.append(f"{path}: job {job['job_name']} reads Consul's HTTPS port {port} without scheme: https")
    return problems

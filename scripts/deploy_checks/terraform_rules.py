"""HCL assertions on terraform/: the rules the deployment must keep whatever else changes."""
import pathlib
import re

from . import hcl
from .hcl import Block

OPEN_CIDRS = {"0.0.0.0/0", "::/0"}
SQS_MAX_VISIBILITY = 43200
# The margin a job's visibility must keep over its run's timeout (seconds).
MIN_VISIBILITY_MARGIN = 30
CONTROLLER_SQS = {
    "jobs": {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes"},
    "results": {"sqs:SendMessage"},
    "dlq": {"sqs:SendMessage"},
}


def all_blocks(tree):
    for module, blocks in tree.items():
        for block in blocks:
            yield module, block


def queues(tree):
    return [(m, b) for m, b in all_blocks(tree) if b.kind == "resource" and b.type == "aws_sqs_queue"]


def redrive(tree) -> list:
    """The jobs queue redrives to a DLQ defined here, after a bounded number of receives,
    and the DLQ keeps messages at least as long as the queue feeding it."""
    problems = []
    found_jobs = False
    by_name = {(m, b.name): b for m, b in queues(tree)}
    for module, queue in queues(tree):
        name = str(queue.attr("name", ""))
        is_jobs = name.endswith("-jobs")
        policy = queue.attr("redrive_policy")
        if is_jobs:
            found_jobs = True
            if not policy:
                problems.append(f"{queue.where()}: the jobs queue {name} has no redrive_policy (poison jobs would loop forever)")
                continue
        if not policy:
            continue
        target = re.search(r"deadLetterTargetArn['\"]?\s*[:=]\s*['\"]?\$\{aws_sqs_queue\.(\w+)\.arn\}", str(policy))
        if not target:
            problems.append(f"{queue.where()}: redrive_policy of {name} does not target an aws_sqs_queue of this module")
            continue
        dlq = by_name.get((module, target.group(1)))
        if dlq is None:
            problems.append(f"{queue.where()}: redrive target aws_sqs_queue.{target.group(1)} is not defined in modules/{module}")
            continue
        if not re.search(r"maxReceiveCount['\"]?\s*[:=]\s*['\"]?(\d+|\$\{var\.\w+\})", str(policy)):
            problems.append(f"{queue.where()}: redrive_policy of {name} sets no maxReceiveCount")
        source_retention = queue.attr("message_retention_seconds", 345600)
        dlq_retention = dlq.attr("message_retention_seconds", 345600)
        if isinstance(source_retention, int) and isinstance(dlq_retention, int) and dlq_retention < source_retention:
            problems.append(
                f"{dlq.where()}: the DLQ keeps messages {dlq_retention}s, less than {name} ({source_retention}s): poison jobs could expire unseen"
            )
    if not found_jobs:
        problems.append("terraform/: no jobs queue (an aws_sqs_queue named *-jobs) found")
    return problems


def encryption(tree) -> list:
    """Data at rest is encrypted: queues, log groups, image repositories, volumes; KMS keys rotate."""
    problems = []
    for _, block in all_blocks(tree):
        if block.kind != "resource":
            continue
        if block.type == "aws_sqs_queue":
            if not block.attr("kms_master_key_id") and block.attr("sqs_managed_sse_enabled") is not True:
                problems.append(f"{block.where()}: aws_sqs_queue.{block.name} is not encrypted at rest (kms_master_key_id or sqs_managed_sse_enabled)")
        elif block.type == "aws_cloudwatch_log_group":
            if not block.attr("kms_key_id"):
                problems.append(f"{block.where()}: aws_cloudwatch_log_group.{block.name} has no kms_key_id")
        elif block.type == "aws_ecr_repository":
            config = block.blocks("encryption_configuration")
            if not config or hcl.unwrap(config[0].get("encryption_type")) != "KMS":
                problems.append(f"{block.where()}: aws_ecr_repository.{block.name} is not KMS-encrypted")
        elif block.type == "aws_kms_key":
            if block.attr("enable_key_rotation") is not True:
                problems.append(f"{block.where()}: aws_kms_key.{block.name} does not rotate (enable_key_rotation)")
        elif block.type == "aws_launch_template":
            for mapping in block.blocks("block_device_mappings"):
                for ebs in mapping.get("ebs", []):
                    if hcl.unwrap(ebs.get("encrypted")) is not True:
                        problems.append(f"{block.where()}: aws_launch_template.{block.name} has an unencrypted volume")
    return problems


def _cidrs(rule: dict) -> set:
    found = set()
    for key in ("cidr_blocks", "ipv6_cidr_blocks", "cidr_ipv4", "cidr_ipv6"):
        value = rule.get(key)
        if value is None:
            continue
        value = hcl.unwrap(value)
        values = value if isinstance(value, list) else [value]
        for v in values:
            found.update(v if isinstance(v, list) else [v])
    return {str(c) for c in found}


def open_ingress(tree) -> list:
    """No security group lets the whole internet in."""
    problems = []
    for _, block in all_blocks(tree):
        if block.kind != "resource":
            continue
        rules = []
        if block.type == "aws_security_group":
            rules = block.blocks("ingress")
        elif block.type == "aws_security_group_rule" and block.attr("type") == "ingress":
            rules = [block.body]
        elif block.type == "aws_vpc_security_group_ingress_rule":
            rules = [block.body]
        for rule in rules:
            wide = _cidrs(rule) & OPEN_CIDRS
            if wide:
                problems.append(f"{block.where()}: {block.type}.{block.name} allows ingress from {', '.join(sorted(wide))}")
    return problems


def _defaults(blocks) -> dict:
    return {b.name: b.attr("default") for b in blocks if b.kind == "variable"}


def _evaluate(expression, variables: dict, locals_: dict, depth=0):
    """The number an arithmetic HCL expression of variables and locals comes to."""
    if isinstance(expression, (int, float)):
        return expression
    text = str(expression).strip()
    if text.startswith("${") and text.endswith("}"):
        text = text[2:-1]
    if depth > 10:
        raise ValueError(f"{expression}: locals nest too deep")

    def substitute(match):
        kind, name = match.group(1), match.group(2)
        if kind == "var":
            if variables.get(name) is None:
                raise ValueError(f"var.{name} has no value")
            return str(variables[name])
        if name not in locals_:
            raise ValueError(f"local.{name} is not defined")
        return str(_evaluate(locals_[name], variables, locals_, depth + 1))

    text = re.sub(r"\b(var|local)\.(\w+)", substitute, text)
    if not re.fullmatch(r"[\d\s+\-*/().]+", text):
        raise ValueError(f"{expression}: not plain arithmetic ({text})")
    return eval(text, {"__builtins__": {}})  # only digits and operators reach here


def visibility(tree, root: pathlib.Path) -> list:
    """The jobs queue's visibility timeout is derived from the controller's job timeout:
    it references var.job_timeout_seconds, always exceeds it by a margin, and the very
    same root variable sets both the queue and the controller's --job-timeout."""
    problems = []
    jobs = [(m, b) for m, b in queues(tree) if str(b.attr("name", "")).endswith("-jobs")]
    for module, queue in jobs:
        blocks = tree[module]
        expression = queue.attr("visibility_timeout_seconds")
        if expression is None:
            problems.append(f"{queue.where()}: the jobs queue sets no visibility_timeout_seconds")
            continue
        locals_ = {b.name: hcl.unwrap(b.body["value"]) for b in blocks if b.kind == "locals"}
        resolved = str(expression)
        for _ in range(10):
            resolved = re.sub(r"\$\{local\.(\w+)\}", lambda m: str(locals_.get(m.group(1), m.group(0))), resolved)
        if "var.job_timeout_seconds" not in resolved:
            problems.append(f"{queue.where()}: visibility_timeout_seconds ({expression}) is not derived from var.job_timeout_seconds")
            continue
        defaults = _defaults(blocks)
        for job_timeout in (1, 300, 3600, 43000 - 200):
            variables = dict(defaults, job_timeout_seconds=job_timeout)
            try:
                value = _evaluate(expression, variables, locals_)
            except ValueError as error:
                problems.append(f"{queue.where()}: cannot evaluate visibility_timeout_seconds: {error}")
                break
            if value < job_timeout + MIN_VISIBILITY_MARGIN:
                problems.append(
                    f"{queue.where()}: with a {job_timeout}s job timeout the visibility timeout is {value}s; it must exceed the job timeout by at least {MIN_VISIBILITY_MARGIN}s"
                )
                break
            if value > SQS_MAX_VISIBILITY:
                problems.append(f"{queue.where()}: with a {job_timeout}s job timeout the visibility timeout is {value}s, above the SQS maximum {SQS_MAX_VISIBILITY}s")
                break
    if not jobs:
        problems.append("terraform/: no jobs queue to check the visibility timeout of")

    # Same root variable to the queues and to the controller.
    calls = {str(b.attr("source")): b for b in tree[""] if b.kind == "module"}
    for source in ("./modules/queues", "./modules/ecs"):
        call = calls.get(source)
        if call is None:
            problems.append(f"{root}/main.tf: no module call of {source}")
        elif call.attr("job_timeout_seconds") != "${var.job_timeout_seconds}":
            problems.append(f"{call.where()}: module {call.name} must get job_timeout_seconds = var.job_timeout_seconds (got {call.attr('job_timeout_seconds')})")
    ecs_text = "".join(p.read_text() for p in sorted((root / "modules" / "ecs").glob("*.tf")))
    if not re.search(r'name\s*=\s*"PLUGWORKER_JOB_TIMEOUT",\s*value\s*=\s*"\$\{var\.job_timeout_seconds\}s"', ecs_text):
        problems.append(f"{root}/modules/ecs: the controller's PLUGWORKER_JOB_TIMEOUT is not set from var.job_timeout_seconds")
    return problems


def _statements(node) -> list:
    """Every policy statement in a document body, including `dynamic "statement"` content."""
    found = []
    if isinstance(node, dict):
        if "actions" in node:
            found.append(node)
        for key, value in node.items():
            if not key.startswith("__"):
                found += _statements(value)
    elif isinstance(node, list):
        for item in node:
            found += _statements(item)
    return found


def _queue_key(resource: str):
    match = re.search(r'var\.queues\[\\?"(\w+)\\?"\]\.arn', resource)
    return match.group(1) if match else None


def controller_permissions(tree) -> list:
    """The controller may only receive, delete and change visibility on jobs (and read its
    depth), and send to results and the DLQ; no other policy touches SQS."""
    problems = []
    seen_controller = False
    for module, block in all_blocks(tree):
        if block.kind == "data" and block.type == "aws_iam_policy_document":
            for statement in _statements(block.body):
                actions = {str(a) for a in hcl.unwrap(statement.get("actions", [])) or []}
                resources = [str(r) for r in (hcl.unwrap(statement.get("resources", [])) or [])]
                sqs = {a for a in actions if a.lower().startswith("sqs:")}
                if not sqs:
                    continue
                if any("*" in a for a in sqs):
                    problems.append(f"{block.where()}: wildcard SQS action {sorted(sqs)}")
                if block.name != "controller":
                    problems.append(f"{block.where()}: policy {block.name} grants {sorted(sqs)}; only the controller uses SQS")
                    continue
                seen_controller = True
                for resource in resources:
                    key = _queue_key(resource)
                    if key is None:
                        problems.append(f"{block.where()}: SQS actions on {resource}, which is not one of the stack's queues")
                        continue
                    extra = sqs - CONTROLLER_SQS.get(key, set())
                    if extra:
                        problems.append(f"{block.where()}: the controller may not {sorted(extra)} on the {key} queue")
        elif block.kind == "resource" and block.type in ("aws_iam_role_policy", "aws_iam_policy"):
            policy = str(block.attr("policy", ""))
            if re.search(r"sqs:", policy, re.IGNORECASE):
                problems.append(f"{block.where()}: {block.type}.{block.name} grants SQS actions outside the controller's policy document")
    if not seen_controller:
        problems.append("terraform/: no controller policy document with SQS permissions found")
    return problems


def _of_bucket(blocks, type_: str, bucket: str) -> list:
    """The `type_` resources of a module attached to aws_s3_bucket.`bucket`."""
    ref = f"${{aws_s3_bucket.{bucket}.id}}"
    return [b for b in blocks if b.kind == "resource" and b.type == type_ and b.attr("bucket") in (ref, f"${{aws_s3_bucket.{bucket}.bucket}}")]


def _first(node, *path):
    """The value down a path of nested blocks/attributes (python-hcl2 lists unwrapped)."""
    for key in path:
        if isinstance(node, list):
            node = node[0] if node else None
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return hcl.unwrap(node)


def _denies_plain_http(document: Block, bucket: str) -> bool:
    """A Deny of s3:* to everyone when aws:SecureTransport is false, on the bucket and
    its objects."""
    arn = f"${{aws_s3_bucket.{bucket}.arn}}"
    for statement in _statements(document.body):
        if str(hcl.unwrap(statement.get("effect"))) != "Deny":
            continue
        actions = {str(a) for a in hcl.unwrap(statement.get("actions", [])) or []}
        resources = {str(r) for r in hcl.unwrap(statement.get("resources", [])) or []}
        principals = statement.get("principals", [])
        everyone = any(
            str(_first(p, "type")) in ("*", "AWS") and "*" in [str(i) for i in (hcl.unwrap(p.get("identifiers", [])) or [])]
            for p in principals if isinstance(p, dict)
        )
        insecure = any(
            str(_first(c, "variable")) == "aws:SecureTransport" and [str(v).lower() for v in (hcl.unwrap(c.get("values", [])) or [])] == ["false"]
            and str(_first(c, "test")) == "Bool"
            for c in statement.get("condition", []) if isinstance(c, dict)
        )
        if actions & {"s3:*"} and {arn, f"{arn}/*"} <= resources and everyone and insecure:
            return True
    return False


def _root_value(tree, module: str, expression):
    """A module variable's value as the root module sets it (its default when the root
    passes one of its own variables)."""
    match = re.fullmatch(r"\$\{var\.(\w+)\}", str(expression))
    if not match:
        return expression
    name = match.group(1)
    blocks = tree[module]
    if module:
        calls = [b for b in tree[""] if b.kind == "module" and str(b.attr("source")) == f"./modules/{module}"]
        if calls and calls[0].attr(name) is not None:
            return _root_value(tree, "", calls[0].attr(name))
    return _defaults(blocks).get(name)


def s3_buckets(tree) -> list:
    """Every bucket: SSE-KMS with a key, public access blocked (all four settings), a
    policy refusing plain HTTP, and objects expiring after every message that may point at
    them (claim-check payloads) is gone: no sooner than the longest queue retention."""
    problems = []
    retention = max([int(q.attr("message_retention_seconds", 345600)) for _, q in queues(tree)
                     if isinstance(q.attr("message_retention_seconds", 345600), int)] or [0])
    for module, bucket in all_blocks(tree):
        if bucket.kind != "resource" or bucket.type != "aws_s3_bucket":
            continue
        blocks, name, where = tree[module], bucket.name, bucket.where()
        encryption = _of_bucket(blocks, "aws_s3_bucket_server_side_encryption_configuration", name)
        default = _first(encryption[0].body, "rule", "apply_server_side_encryption_by_default") if encryption else None
        if not encryption or _first(default, "sse_algorithm") != "aws:kms" or not _first(default, "kms_master_key_id"):
            problems.append(f"{where}: aws_s3_bucket.{name} is not encrypted with a KMS key (aws_s3_bucket_server_side_encryption_configuration with aws:kms and kms_master_key_id)")
        block = _of_bucket(blocks, "aws_s3_bucket_public_access_block", name)
        settings = ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets")
        open_settings = [s for s in settings if not block or block[0].attr(s) is not True]
        if open_settings:
            problems.append(f"{where}: aws_s3_bucket.{name} does not block public access ({', '.join(open_settings)} not true)")
        policies = _of_bucket(blocks, "aws_s3_bucket_policy", name)
        documents = {b.name: b for b in blocks if b.kind == "data" and b.type == "aws_iam_policy_document"}
        referenced = [re.search(r"data\.aws_iam_policy_document\.(\w+)\.json", str(p.attr("policy", ""))) for p in policies]
        if not any(m and m.group(1) in documents and _denies_plain_http(documents[m.group(1)], name) for m in referenced):
            problems.append(f"{where}: aws_s3_bucket.{name} has no bucket policy denying s3:* to everyone without TLS (aws:SecureTransport false) on the bucket and its objects")
        lifecycle = _of_bucket(blocks, "aws_s3_bucket_lifecycle_configuration", name)
        days = [_root_value(tree, module, _first(rule, "expiration", "days"))
                for config in lifecycle for rule in config.blocks("rule")
                if _first(rule, "status") == "Enabled" and _first(rule, "expiration", "days") is not None]
        if not days:
            problems.append(f"{where}: aws_s3_bucket.{name} has no lifecycle rule expiring objects")
        for value in days:
            if not isinstance(value, int):
                problems.append(f"{where}: cannot tell how many days objects of aws_s3_bucket.{name} live ({value})")
            elif value * 86400 <= retention:
                problems.append(
                    f"{where}: objects of aws_s3_bucket.{name} expire after {value} days, not after the longest queue retention ({retention // 86400} days): a message could outlive the body it points at"
                )
    return problems


def run(root: pathlib.Path) -> list:
    tree = hcl.modules(root)
    problems = []
    for rule in (redrive, encryption, open_ingress, controller_permissions, s3_buckets):
        problems += [f"[{rule.__name__}] {p}" for p in rule(tree)]
    problems += [f"[visibility] {p}" for p in visibility(tree, root)]
    return problems


"""HCL assertions on terraform/: the rules the deployment must keep whatever else changes."""
import ast
import pathlib
import re

import hcl2
import yaml

from . import consul_rules, hcl
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


def _gallery_bucket(tree, blocks, bucket, lifecycle) -> list:
    """A galleries bucket: no current object ever expires (a template would vanish from a
    gallery that names it), versioning on, noncurrent versions expiring."""
    problems, where, name = [], bucket.where(), bucket.name
    rules = [rule for config in lifecycle for rule in config.blocks("rule") if _first(rule, "status") == "Enabled"]
    if any(_first(rule, "expiration") is not None for rule in rules):
        problems.append(f"{where}: aws_s3_bucket.{name} expires current objects (a lifecycle expiration): a gallery's templates, embeddings or `current` would vanish while a version names them")
    if not any(_first(rule, "noncurrent_version_expiration", "noncurrent_days") is not None for rule in rules):
        problems.append(f"{where}: aws_s3_bucket.{name} has no lifecycle rule expiring noncurrent versions")
    versioning = _of_bucket(blocks, "aws_s3_bucket_versioning", name)
    if not versioning or _first(versioning[0].body, "versioning_configuration", "status") != "Enabled":
        problems.append(f"{where}: aws_s3_bucket.{name} is not versioned (aws_s3_bucket_versioning Enabled): a stray delete or overwrite of `current` could not be undone")
    return problems


def s3_buckets(tree) -> list:
    """Every bucket: SSE-KMS with a key, public access blocked (all four settings), a
    policy refusing plain HTTP, and objects expiring after every message that may point at
    them (claim-check payloads) is gone: no sooner than the longest queue retention. The
    galleries bucket instead keeps its current objects for good (_gallery_bucket)."""
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
        if module == GALLERIES_MODULE:
            problems += _gallery_bucket(tree, blocks, bucket, lifecycle)
            continue
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


# ---------------------------------------------------------------------------------------
# Galleries: a runner entry's `gallery` gives that runner read on that prefix, and nothing
# else; operators (a policy no task gets) write.

GALLERIES_MODULE = "galleries"
GALLERY_ARN = "${var.galleries.arn}"
# The dynamic statements of a runner's document exist only for a runner with a gallery.
GALLERY_FOR_EACH = "${each.value.gallery == None ? [] : ['${each.value.gallery}']}"
GALLERY_OBJECTS = "${var.galleries.arn}/${statement.value}/*"
GALLERY_PREFIX = "${statement.value}/*"


def _strings(value) -> list:
    value = hcl.unwrap(value)
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    flat = []
    for v in values:
        flat += v if isinstance(v, list) else [v]
    return [str(v) for v in flat]


def _runner_gallery_statements(document: Block) -> list:
    """Problems with how a runner's policy document reaches the galleries bucket: only
    GetObject on its prefix's objects and ListBucket limited to its prefix, each in a
    `dynamic "statement"` present only for a runner with a gallery."""
    problems, granted = [], set()
    for statement in document.blocks("statement"):
        resources = _strings(statement.get("resources"))
        if any("var.galleries" in r for r in resources if "kms_key_arn" not in r):
            problems.append(f"{document.where()}: statement {_strings(statement.get('sid'))} grants {_strings(statement.get('actions'))} on the galleries bucket to every runner; only a runner whose entry names a gallery may read, and only its prefix")
    for dynamic in document.body.get("dynamic", []) or []:
        dynamic = _one(dynamic)
        body = _one(dynamic.get("statement")) if isinstance(dynamic, dict) else None
        if not isinstance(body, dict):
            continue
        content = _one(body.get("content"))
        if not isinstance(content, dict):
            continue
        actions, resources = set(_strings(content.get("actions"))), _strings(content.get("resources"))
        if not any("var.galleries" in r for r in resources):
            continue
        for_each = str(_one(body.get("for_each")))
        if for_each != GALLERY_FOR_EACH:
            problems.append(f"{document.where()}: a statement on the galleries bucket exists for runners {for_each!r}; it must exist only for a runner with a gallery (for_each = each.value.gallery == null ? [] : [each.value.gallery])")
            continue
        conditions = [c for c in content.get("condition", []) or [] if isinstance(c, dict)]
        limited = any(_first(c, "test") == "StringLike" and _first(c, "variable") == "s3:prefix" and _strings(c.get("values")) == [GALLERY_PREFIX] for c in conditions)
        if actions == {"s3:GetObject"} and resources == [GALLERY_OBJECTS]:
            granted.add("get")
        elif actions == {"s3:ListBucket"} and resources == [GALLERY_ARN] and limited:
            granted.add("list")
        else:
            problems.append(
                f"{document.where()}: a runner with a gallery gets {sorted(actions)} on {resources}{'' if limited else ' (no s3:prefix limit)'}; it may have only s3:GetObject on {GALLERY_OBJECTS} and s3:ListBucket on {GALLERY_ARN} limited by StringLike s3:prefix {GALLERY_PREFIX}")
    if "get" not in granted:
        problems.append(f"{document.where()}: a runner whose entry names a gallery is not granted s3:GetObject on {GALLERY_OBJECTS}")
    if "list" not in granted:
        problems.append(f"{document.where()}: a runner whose entry names a gallery is not granted s3:ListBucket limited to its prefix (S3 would answer a missing `current` 403)")
    return problems


def runner_galleries(tree, root: pathlib.Path) -> list:
    """A runner entry of var.runners with `gallery` gets exactly read on that prefix of the
    galleries bucket (its own role: GetObject on the prefix's objects, ListBucket limited to
    it) and read on the galleries' KV versions (its Consul token), and PLUGWORKER_MEME_GALLERY
    naming that same prefix; a runner without one gets neither. Only the operators' policy
    (modules/galleries, attached to no task) and the operators' Consul token write."""
    problems = []
    variables = [b for b in tree.get("", []) if b.kind == "variable" and b.name == "runners"]
    if not variables or "'gallery': '${optional(string)}'" not in str(variables[0].attr("type")):
        problems.append(f"{root}/variables.tf: the runners' entries have no optional `gallery` (gallery = optional(string))")
    ecs = tree.get("ecs", [])
    documents = {b.name: b for b in ecs if b.kind == "data" and b.type == "aws_iam_policy_document"}
    roles = {b.name: b for b in ecs if b.kind == "resource" and b.type == "aws_iam_role"}
    policies = {b.name: b for b in ecs if b.kind == "resource" and b.type == "aws_iam_role_policy"}
    document, role, policy = documents.get("runner"), roles.get("runner"), policies.get("runner")
    if not (document and role and policy) or not all(b.attr("for_each") == "${var.runners}" for b in (document, role, policy)):
        problems.append("terraform/modules/ecs: each runner needs its own policy document, role and role policy (data.aws_iam_policy_document.runner, aws_iam_role.runner, aws_iam_role_policy.runner, each for_each = var.runners): a gallery is read by the runners that name it only")
    else:
        if policy.attr("policy") != "${data.aws_iam_policy_document.runner[each.key].json}" or policy.attr("role") != "${aws_iam_role.runner[each.key].id}":
            problems.append(f"{policy.where()}: each runner's role must get its own document (role = aws_iam_role.runner[each.key].id, policy = data.aws_iam_policy_document.runner[each.key].json)")
        problems += _runner_gallery_statements(document)
    for module, block in all_blocks(tree):
        if block.kind != "data" or block.type != "aws_iam_policy_document":
            continue
        if module == "ecs" and block.name == "runner":
            continue
        if module == GALLERIES_MODULE and block.name in ("operators", "galleries"):
            continue
        text = str(block.body)
        if re.search(r"var\.galleries\.arn|aws_s3_bucket\.galleries\.arn|module\.galleries\.bucket", text):
            problems.append(f"{block.where()}: policy {block.name} grants access to the galleries bucket; runners read through their own document, operators write through modules/galleries' operators policy")
    # The operators' policy and token reach no task.
    for module in ("ecs", "observability"):
        for block in tree.get(module, []):
            text = str(block.body)
            if "gallery_operator" in text or "operators_policy_arn" in text:
                problems.append(f"{block.where()}: {block.kind} {block.name} hands a task the gallery operators' policy or Consul token; operators publish, no task does")
    calls = {b.name: b for b in tree.get("", []) if b.kind == "module"}
    galleries = calls.get("galleries")
    if galleries is None or galleries.attr("operator_roles") != "${var.gallery_operator_roles}":
        problems.append(f"{root}/main.tf: module galleries must attach the operators' policy to var.gallery_operator_roles only (operator_roles = var.gallery_operator_roles)")
    # The environment names the prefix the role may read.
    _, containers = _local(tree, "ecs", "runner_containers")
    text = str(containers)
    loop = re.match(r"\$\{\{for \w+ , (\w+) in var\.runners :", text)
    runner = loop.group(1) if loop else "runner"
    if not re.search(rf"{runner}\.gallery == None \? \[\] : \[\{{'name': 'PLUGWORKER_MEME_GALLERY', 'value': 's3://\$\{{var\.galleries\.name\}}/\$\{{{runner}\.gallery\}}'\}}", text):
        problems.append("terraform/modules/ecs: a runner with a gallery must get PLUGWORKER_MEME_GALLERY = \"s3://${var.galleries.name}/${runner.gallery}\" (the prefix its role may read), and a runner without one none")
    # Consul: the runner's token reads the KV versions exactly when its entry names a gallery.
    mesh_call = calls.get("mesh")
    if mesh_call is None or not re.fullmatch(r"\$\{\[for (\w+) , (\w+) in var\.runners : \1 if \2\.gallery != None\]\}", str(mesh_call.attr("gallery_runners"))):
        problems.append(f"{root}/main.tf: module mesh must get gallery_runners = [for name, runner in var.runners : name if runner.gallery != null]")
    _, roles_value = _local(tree, "mesh", "roles")
    roles_text = str(roles_value)
    if not re.search(r"for (\w+) in var\.runner_names : \"runner:\$\{\1\}\" => \{'parameter': '[^']*', 'policy': '\$\{contains\(var\.gallery_runners,\1\) \? \"gallery-reader\" : \"\"\}', 'service': '\$\{\1\}'\}", roles_text):
        problems.append("terraform/modules/mesh: a runner's token must get policy \"gallery-reader\" exactly when it is one of var.gallery_runners (policy = contains(var.gallery_runners, runner) ? \"gallery-reader\" : \"\")")
    if not re.search(r"'gallery-operator': \{'parameter': '[^']*', 'policy': 'gallery-operator', 'service': ''\}", roles_text):
        problems.append("terraform/modules/mesh: no role gallery-operator (policy \"gallery-operator\", no service identity) for the operators' token")
    script = (root / MESH_SCRIPT).read_text() if (root / MESH_SCRIPT).exists() else ""
    repo = root.parent
    for short, wanted in (("gallery-reader", consul_rules.gallery_reader(repo)), ("gallery-operator", consul_rules.gallery_publisher(repo))):
        found = re.search(rf'"{short}": \("[^"]*", \'([^\']*)\'\)', script)
        granted = consul_rules.parse(found.group(1).replace("\\n", "\n")) if found else set()
        if granted != wanted:
            problems.append(f"{root / MESH_SCRIPT}: policy {short} grants {consul_rules.describe(granted) or 'nothing'}; it must grant exactly {consul_rules.describe(wanted)} (the key services/meme/src/store.rs writes)")
    return problems


# ---------------------------------------------------------------------------------------
# Runners as data: runners.auto.tfvars is the one place a runner is named.

RUNNERS_FILE = "runners.auto.tfvars"
# Files under terraform/ that are not code: Terraform's own working files and state.
NOT_CODE = (".terraform", ".terraform.lock.hcl")
# A string literal naming a runner by the convention (`"ocr-runner"`), wherever it appears.
RUNNER_LITERAL = re.compile(r"""["']([a-z0-9][a-z0-9-]*-runner)["']""")


def runner_names(terraform_dir) -> list:
    """The runners the stack deploys: the keys of `runners` in runners.auto.tfvars."""
    path = pathlib.Path(terraform_dir) / RUNNERS_FILE
    if not path.exists():
        raise SystemExit(f"{path}: missing; it names the runners the stack deploys")
    runners = _one(hcl.parse(path).get("runners"))
    if not isinstance(runners, dict) or not runners:
        raise SystemExit(f"{path}: sets no `runners` map")
    return sorted(name for name in runners if not name.startswith("__"))


def _code_files(root: pathlib.Path):
    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(NOT_CODE) for part in path.relative_to(root).parts):
            continue
        if path.name.endswith((".tfstate", ".tfstate.backup")) or path.name == RUNNERS_FILE:
            continue
        # Operators' own settings (terraform.tfvars is not committed) are not the code.
        if path.suffix == ".tfvars":
            continue
        try:
            yield path, path.read_text()
        except UnicodeDecodeError:
            continue


def runner_names_only_in_tfvars(root: pathlib.Path) -> list:
    """No runner is named anywhere in terraform/ but runners.auto.tfvars: not in a
    default, a validation, a list, a comment or the example settings; and no `*-runner`
    string literal either (a runner that is not deployed yet is named nowhere too)."""
    problems = []
    try:
        names = runner_names(root)
    except SystemExit as error:
        return [str(error)]
    named = re.compile(r"(?<![A-Za-z0-9_-])(" + "|".join(re.escape(n) for n in names) + r")(?![A-Za-z0-9_-])")
    for path, text in _code_files(root):
        for number, line in enumerate(text.splitlines(), 1):
            found = set(named.findall(line)) | set(RUNNER_LITERAL.findall(line))
            for name in sorted(found):
                problems.append(f"{path}:{number}: names the runner {name}; runners are named only in {RUNNERS_FILE} (the code follows from var.runners)")
    variables = [b for b in hcl.load_dir(root) if b.kind == "variable" and b.name == "runners"]
    if not variables:
        problems.append(f"{root}/variables.tf: no variable \"runners\"")
    elif variables[0].attr("default") is not None:
        problems.append(f"{variables[0].where()}: variable runners has a default; its value lives in {RUNNERS_FILE}")
    return problems


def images_pushed(tree, root: pathlib.Path) -> list:
    """Every deployable's image (the controller and each of var.runners) is looked up in
    its repository at plan time, so a runner without a pushed image fails `terraform plan`,
    and the tasks run what the lookup found."""
    problems = []
    calls = {b.name: b for b in tree.get("", []) if b.kind == "module"}
    ecr, ecs = calls.get("ecr"), calls.get("ecs")
    if ecr is None or ecs is None:
        return [f"{root}/main.tf: no module ecr or ecs"]
    deployables = str(ecr.attr("deployables"))
    if not (deployables.startswith("${concat(") and "local.controller_service" in deployables and "keys(var.runners)" in deployables):
        problems.append(f"{ecr.where()}: module ecr must get deployables = concat([local.controller_service], keys(var.runners)) (got {deployables})")
    lookups = [b for b in tree.get("", []) if b.kind == "data" and b.type == "aws_ecr_image"]
    if not any(b.attr("for_each") == "${module.ecr.repository_names}" and b.attr("image_tag") == "${var.image_tag}" for b in lookups):
        problems.append(f"{root}: no data \"aws_ecr_image\" for each of module.ecr.repository_names with image_tag = var.image_tag")
    outputs = (root / "modules" / "ecr" / "outputs.tf").read_text() if (root / "modules" / "ecr" / "outputs.tf").exists() else ""
    names = re.search(r'output "repository_names" \{.*?value\s*=\s*([^\n]*)', outputs, re.S)
    locals_ = {b.name: str(hcl.unwrap(b.body["value"])) for b in tree.get("ecr", []) if b.kind == "locals"}
    resolved = names.group(1) if names else ""
    for _ in range(5):
        resolved = re.sub(r"local\.(\w+)", lambda m: locals_.get(m.group(1), m.group(0)), resolved)
    if not names or "aws_ecr_repository" in resolved:
        problems.append(f"{root}/modules/ecr/outputs.tf: repository_names must come from the module's inputs, not its resources, or the image lookup waits for apply")
    _, images = _local(tree, "", "images")
    if ecs.attr("images") != "${local.images}" or "data.aws_ecr_image." not in str(images):
        problems.append(f"{ecs.where()}: module ecs must run the images the lookup found (images = local.images, from data.aws_ecr_image)")
    return problems


# ---------------------------------------------------------------------------------------
# The mesh: Consul ACLs, gossip encryption, TLS, Connect and intentions (issue 13).

SERVER_SCRIPT = "modules/consul/server.sh.tftpl"
MESH_SCRIPT = "modules/consul/mesh.py"
PROMETHEUS_TEMPLATE = "modules/observability/prometheus.yml.tftpl"


def _one(node):
    """python-hcl2 wraps values and blocks in one-element lists; "${-1}" is -1."""
    while isinstance(node, list) and len(node) == 1:
        node = node[0]
    if node == "${-1}":
        return -1
    return node


def _get(node, *path):
    for key in path:
        node = _one(node)
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return _one(node)


def server_config(root: pathlib.Path):
    """The Consul servers' configuration: the HCL the bootstrap script writes to
    /etc/consul.d/consul.hcl (template placeholders in value position read as 0)."""
    path = root / SERVER_SCRIPT
    if not path.exists():
        return None, f"{path}: missing"
    match = re.search(r"<<'CONFIG'\n(.*?)\nCONFIG\n", path.read_text(), re.S)
    if not match:
        return None, f"{path}: no consul.hcl heredoc (<<'CONFIG' ... CONFIG)"
    text = re.sub(r"=\s*\$\{\w+\}\s*$", "= 0", match.group(1), flags=re.M)
    try:
        return hcl2.loads(text), str(path)
    except Exception as error:  # the parser's errors have no common base
        return None, f"{path}: the server configuration does not parse as HCL: {error}"


def _jsonencoded(value):
    """The object inside `jsonencode({...})` as python-hcl2 renders it, or None."""
    match = re.fullmatch(r"\$\{jsonencode\((.*)\)\}", str(hcl.unwrap(value)), re.S)
    if not match:
        return None
    try:
        return ast.literal_eval(match.group(1))
    except (ValueError, SyntaxError):
        return None


def _local(tree, module: str, name: str):
    found = [b for b in tree.get(module, []) if b.kind == "locals" and b.name == name]
    return (found[0], hcl.unwrap(found[0].body["value"])) if found else (None, None)


def agent_config(tree):
    """The configuration of the Consul client agent in every task (modules/ecs)."""
    block, value = _local(tree, "ecs", "consul_agent_config")
    if block is None:
        return None, "terraform/modules/ecs: no local consul_agent_config (the task agents' configuration)"
    config = _jsonencoded(value)
    if not isinstance(config, dict):
        return None, f"{block.where()}: consul_agent_config is not a jsonencode({{...}}) of a literal object"
    return config, block.where()


def _configs(tree, root):
    """(what, config or None, where) for the servers and the task agents."""
    server, server_where = server_config(root)
    agent, agent_where = agent_config(tree)
    return [("the Consul servers", server, server_where), ("the task agents", agent, agent_where)]


def consul_acls(tree, root: pathlib.Path) -> list:
    """ACLs on with default deny, on the servers and on every task's agent."""
    problems = []
    for what, config, where in _configs(tree, root):
        if config is None:
            problems.append(where)
            continue
        if _get(config, "acl", "enabled") is not True:
            problems.append(f"{where}: {what} do not enable ACLs (acl.enabled = true)")
        if _get(config, "acl", "default_policy") != "deny":
            problems.append(f"{where}: {what}' ACL default policy is {_get(config, 'acl', 'default_policy')!r}, not \"deny\"")
    return problems


def gossip_encryption(tree, root: pathlib.Path) -> list:
    """Gossip is encrypted with a generated key (>= 32 random bytes, in SSM) and both
    directions are verified, on the servers and the task agents."""
    problems = []
    for what, config, where in _configs(tree, root):
        if config is None:
            problems.append(where)
            continue
        for key in ("encrypt_verify_incoming", "encrypt_verify_outgoing"):
            if _get(config, key) is False:
                problems.append(f"{where}: {what} set {key} = false")
    script = (root / SERVER_SCRIPT).read_text() if (root / SERVER_SCRIPT).exists() else ""
    if not re.search(r"--arg encrypt \"\$\(param \"\$\{prefix\}/gossip-key\"\)\"", script) or "encrypt: $encrypt" not in script:
        problems.append(f"{root / SERVER_SCRIPT}: the servers' encrypt key is not read from the SSM parameter gossip-key")
    _, agent = _local(tree, "ecs", "consul_agent")
    agent_text = str(agent)
    if "CONSUL_GOSSIP_KEY" not in agent_text or not re.search(r"encrypt\W+:\W+%s", agent_text):
        problems.append("terraform/modules/ecs: the task agents do not write the gossip key (secret CONSUL_GOSSIP_KEY) into their configuration as encrypt")
    keys = [b for b in tree.get("mesh", []) if b.kind == "resource" and b.type == "random_bytes"]
    if not keys or not all(isinstance(k.attr("length"), int) and k.attr("length") >= 32 for k in keys):
        problems.append("terraform/modules/mesh: no gossip key generated as random_bytes of length >= 32")
    parameters = [b for b in tree.get("mesh", []) if b.kind == "resource" and b.type == "aws_ssm_parameter" and "gossip-key" in str(b.attr("name"))]
    if not parameters or not any("random_bytes." in str(p.attr("value")) for p in parameters):
        problems.append("terraform/modules/mesh: the gossip-key parameter does not hold the generated random_bytes key")
    return problems


def consul_tls(tree, root: pathlib.Path) -> list:
    """TLS on RPC (verified both ways, server hostnames checked) and HTTPS only (no HTTP
    port), auto-encrypt between servers and task agents; every service reaches its agent
    over https:// with the stack's CA as CONSUL_CACERT."""
    problems = []
    for what, config, where in _configs(tree, root):
        if config is None:
            problems.append(where)
            continue
        if _get(config, "ports", "http") != -1:
            problems.append(f"{where}: {what} serve plain HTTP (ports.http must be -1)")
        if not isinstance(_get(config, "ports", "https"), (int, str)) or _get(config, "ports", "https") in (None, -1):
            problems.append(f"{where}: {what} have no HTTPS port (ports.https)")
        if _get(config, "tls", "defaults", "verify_outgoing") is not True:
            problems.append(f"{where}: {what} do not verify outgoing TLS (tls.defaults.verify_outgoing)")
        if not _get(config, "tls", "defaults", "ca_file"):
            problems.append(f"{where}: {what} have no CA (tls.defaults.ca_file)")
        if _get(config, "tls", "internal_rpc", "verify_server_hostname") is not True:
            problems.append(f"{where}: {what} do not verify server hostnames (tls.internal_rpc.verify_server_hostname)")
    server, where = server_config(root)
    if server is not None:
        if _get(server, "tls", "defaults", "verify_incoming") is not True and _get(server, "tls", "internal_rpc", "verify_incoming") is not True:
            problems.append(f"{where}: the servers do not verify incoming RPC certificates (tls verify_incoming)")
        if _get(server, "auto_encrypt", "allow_tls") is not True:
            problems.append(f"{where}: the servers do not allow auto-encrypt (auto_encrypt.allow_tls)")
    agent, where = agent_config(tree)
    if agent is not None and _get(agent, "auto_encrypt", "tls") is not True:
        problems.append(f"{where}: the task agents do not use auto-encrypt (auto_encrypt.tls)")
    block, environment = _local(tree, "ecs", "consul_environment")
    text = str(environment)
    if block is None or not re.search(r"'CONSUL_HTTP_ADDR', 'value': 'https://", text) or "'CONSUL_CACERT'" not in text:
        problems.append("terraform/modules/ecs: the services' consul_environment does not set CONSUL_HTTP_ADDR to https://… and CONSUL_CACERT")
    return problems


def connect_enabled(tree, root: pathlib.Path) -> list:
    """Connect on servers and agents, its CA root the stack's CA (one trust anchor)."""
    problems = []
    for what, config, where in _configs(tree, root):
        if config is None:
            problems.append(where)
        elif _get(config, "connect", "enabled") is not True:
            problems.append(f"{where}: {what} do not enable Connect (connect.enabled = true)")
    script = (root / SERVER_SCRIPT).read_text() if (root / SERVER_SCRIPT).exists() else ""
    if not re.search(r"connect:\s*\{ca_config:\s*\{private_key:\s*\$key,\s*root_cert:\s*\$root\}\}", script):
        problems.append(f"{root / SERVER_SCRIPT}: the Connect CA is not configured with the stack's CA (connect.ca_config private_key/root_cert)")
    return problems


def intentions(tree, root: pathlib.Path) -> list:
    """Intentions: default deny ("*" from "*") and controller -> each runner, for every
    runner of var.runners; the servers apply them (mesh.py, on a timer)."""
    problems = []
    parameters = [b for b in tree.get("mesh", []) if b.kind == "resource" and b.type == "aws_ssm_parameter" and b.name == "mesh"]
    if not parameters:
        return ["terraform/modules/mesh: no aws_ssm_parameter.mesh (the tokens and intentions the servers create)"]
    value, where = str(parameters[0].attr("value")), parameters[0].where()
    if not re.search(r"\{'Kind': 'service-intentions', 'Name': '\*', 'Sources': \[\{'Name': '\*', 'Action': 'deny'\}\]\}", value):
        problems.append(f"{where}: the intentions have no default deny (service-intentions \"*\" with source \"*\" deny)")
    if not re.search(r"for (\w+) in var\.runner_names : \{'Kind': 'service-intentions', 'Name': '\$\{\1\}', 'Sources': \[\{'Name': '\$\{var\.controller_service\}', 'Action': 'allow'\}\]\}", value):
        problems.append(f"{where}: not every runner has the intention controller -> runner allow (for each of var.runner_names)")
    calls = [b for b in tree.get("", []) if b.kind == "module" and str(b.attr("source")) == "./modules/mesh"]
    if not calls or calls[0].attr("runner_names") != "${keys(var.runners)}":
        problems.append(f"{calls[0].where() if calls else root / 'main.tf'}: module mesh must get runner_names = keys(var.runners)")
    mesh_script = (root / MESH_SCRIPT).read_text() if (root / MESH_SCRIPT).exists() else ""
    if not re.search(r'consul\.call\("PUT", "/v1/config", dict\(entry', mesh_script) or 'apply_intentions(consul, stack, mesh["intentions"])' not in mesh_script:
        problems.append(f"{root / MESH_SCRIPT}: does not write the mesh parameter's intentions (PUT /v1/config)")
    script = (root / SERVER_SCRIPT).read_text() if (root / SERVER_SCRIPT).exists() else ""
    if "${mesh_script}" not in script or "plugworker-consul-mesh.timer" not in script:
        problems.append(f"{root / SERVER_SCRIPT}: the servers do not install mesh.py on a timer")
    return problems


def controller_grants(tree, root: pathlib.Path) -> list:
    """The controller's token grants what the code's controller_rules does: its service
    identity, plus the policy mesh.py defines for it (the stored pipelines' read)."""
    mesh = root / "modules" / "mesh" / "main.tf"
    text = mesh.read_text() if mesh.exists() else ""
    role = re.search(r'\bcontroller\s*=\s*\{.*?\bpolicy\s*=\s*"(\w*)".*?\bservice\s*=\s*var\.controller_service\s*\}', text)
    if not role:
        return [f"{mesh}: no controller role (policy = \"...\", service = var.controller_service) in local.roles"]
    granted = consul_rules.service_identity("controller")
    if role.group(1):
        script = (root / MESH_SCRIPT).read_text() if (root / MESH_SCRIPT).exists() else ""
        policy = re.search(rf'"{role.group(1)}": \("[^"]*", \'([^\']*)\'\)', script)
        if not policy:
            return [f"{root / MESH_SCRIPT}: POLICIES defines no {role.group(1)!r} policy, which the controller's token names"]
        granted |= consul_rules.parse(policy.group(1).replace("\\n", "\n"))
    missing = consul_rules.controller_rules(root.parent) - granted
    if missing:
        return [f"{mesh}: the controller's token lacks {consul_rules.describe(missing)} (consul_client::admin::controller_rules); give its role a policy mesh.py defines"]
    return []


def _containers(tree):
    """(module, label, container dict) of every container definition the stack declares."""
    found = []
    for module, block in all_blocks(tree):
        if block.kind == "locals" and block.name in ("controller_container", "consul_agent"):
            found.append((module, block.name, _one(block.body["value"]), block))
        elif block.kind == "locals" and block.name == "runner_containers":
            value = str(hcl.unwrap(block.body["value"]))
            found.append((module, "runner_containers", value, block))
        elif block.kind == "resource" and block.type == "aws_ecs_task_definition":
            found.append((module, f"aws_ecs_task_definition.{block.name}", block.attr("container_definitions"), block))
    return found


def tokens_from_ssm(tree, root: pathlib.Path) -> list:
    """Consul tokens reach tasks only through ECS `secrets` from SSM SecureString
    parameters holding generated IDs; never as plain environment."""
    problems = []
    for module, label, container, block in _containers(tree):
        text = str(container)
        for name in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_GOSSIP_KEY", "CONSUL_AGENT_TOKEN"):
            if re.search(rf"'name': '{name}', 'value'", text) or re.search(rf"\{{\s*name\s*=\s*\\?\"{name}\\?\",\s*value\s*=", text):
                problems.append(f"{block.where()}: {label} sets {name} as plain environment; tokens come from SSM through `secrets`")
    wanted = {
        ("ecs", "controller_container"): r"var\.mesh\.controller_token_arn",
        ("ecs", "runner_containers"): r"var\.mesh\.runner_token_arns\[\w+\]",
        ("ecs", "consul_agent"): r"var\.mesh\.agent_token_arn",
        ("observability", "aws_ecs_task_definition.this"): r"var\.prometheus_consul_token_arn",
    }
    containers = {(module, label): (container, block) for module, label, container, block in _containers(tree)}
    for key, reference in wanted.items():
        found = containers.get(key)
        if found is None:
            problems.append(f"terraform/modules/{key[0]}: no {key[1]} found")
            continue
        text = str(found[0])
        if not re.search(r"'?name'?\s*[:=]\s*\\?['\"]CONSUL_HTTP_TOKEN\\?['\"],\s*'?valueFrom'?\s*[:=]\s*\\?['\"]\$\{" + reference, text):
            problems.append(f"{found[1].where()}: {key[1]} does not get CONSUL_HTTP_TOKEN from SSM through `secrets` ({reference.replace(chr(92), '')})")
    for module, block in all_blocks(tree):
        if block.kind != "resource" or block.type != "aws_ssm_parameter":
            continue
        name = str(block.attr("name"))
        # By what it holds: its name (or, for a for_each of tokens, its resource name).
        holds = f"{name} {block.name}"
        if not re.search(r"token|gossip|ca.key", holds):
            continue
        if block.attr("type") != "SecureString" or not block.attr("key_id"):
            problems.append(f"{block.where()}: aws_ssm_parameter.{block.name} ({name}) must be a SecureString with key_id")
        if "token" in holds and "random_uuid." not in str(block.attr("value")):
            problems.append(f"{block.where()}: aws_ssm_parameter.{block.name} ({name}) does not hold a generated token (random_uuid)")
    return problems


def _security_group_rules(tree):
    """(block, rule dict, security group reference) of every ingress rule."""
    rules = []
    for _, block in all_blocks(tree):
        if block.kind != "resource":
            continue
        if block.type == "aws_security_group":
            for rule in block.blocks("ingress"):
                rules.append((block, rule, f"aws_security_group.{block.name}"))
        elif block.type in ("aws_vpc_security_group_ingress_rule",) or (block.type == "aws_security_group_rule" and block.attr("type") == "ingress"):
            target = re.search(r"aws_security_group\.(\w+)", str(block.attr("security_group_id")))
            rules.append((block, block.body, f"aws_security_group.{target.group(1)}" if target else str(block.attr("security_group_id"))))
    return rules


def runner_ingress(tree) -> list:
    """A runner's security group lets in: its gRPC port from the controller's group only,
    its metrics port from the observability (Prometheus) group only, and Consul gossip;
    nothing else (its plaintext health port is checked from inside the task)."""
    problems = []
    groups = [b for b in tree.get("ecs", []) if b.kind == "resource" and b.type == "aws_security_group" and b.name == "runner"]
    if not groups or groups[0].attr("for_each") != "${var.runners}":
        return ["terraform/modules/ecs: no aws_security_group.runner for each of var.runners"]
    allowed = {
        ("${each.value.port}", "${aws_security_group.controller.id}"),
        ("${each.value.metrics_port}", "${aws_security_group.observability.id}"),
    }
    seen = set()
    for block, rule, group in _security_group_rules(tree):
        runner_group = group == "aws_security_group.runner" or (
            group.startswith("${each.value") and "runner" in str(_get(block.body, "for_each")))
        if group == "aws_security_group.runner" and block.type == "aws_security_group":
            problems.append(f"{block.where()}: the runners' group has an inline ingress rule")
            continue
        if not runner_group:
            # Gossip rules apply to every task group (for_each over local.task_security_groups).
            continue
        port, source = _get(rule, "from_port"), _get(rule, "referenced_security_group_id") or _get(rule, "source_security_group_id")
        if _cidrs(rule):
            problems.append(f"{block.where()}: {block.type}.{block.name} opens a runner's port {port} to {', '.join(sorted(_cidrs(rule)))}; runners accept only the controller (gRPC) and Prometheus (metrics)")
            continue
        if _get(rule, "to_port") != port or (port, source) not in allowed:
            problems.append(f"{block.where()}: {block.type}.{block.name} lets {source} reach a runner's port {port}; allowed: the gRPC port from the controller's group, the metrics port from Prometheus's")
            continue
        seen.add((port, source))
    if ("${each.value.port}", "${aws_security_group.controller.id}") not in seen:
        problems.append("terraform/modules/ecs: no rule lets the controller's group reach each runner's gRPC port (each.value.port)")
    # Gossip rules cover every task group: they must open 8301 only.
    for block, rule, group in _security_group_rules(tree):
        if group.startswith("${each.value") and "task_security_groups" in str(_get(block.body, "for_each")):
            if (_get(rule, "from_port"), _get(rule, "to_port")) != (8301, 8301):
                problems.append(f"{block.where()}: {block.type}.{block.name} opens ports {_get(rule, 'from_port')}-{_get(rule, 'to_port')} on every task's group (runners included); only Consul gossip (8301) may be")
    return problems


def runner_ports(tree) -> list:
    """Each runner listens where its security group and Consul registration expect: gRPC
    (mTLS) on its `port`, plaintext health on its `health_port`, metrics on its
    `metrics_port`, all from var.runners."""
    block, value = _local(tree, "ecs", "runner_containers")
    if block is None:
        return ["terraform/modules/ecs: no local runner_containers"]
    text = str(value)
    loop = re.match(r"\$\{\{for \w+ , (\w+) in var\.runners :", text)
    if not loop:
        return [f"{block.where()}: runner_containers is not built for each of var.runners"]
    runner = loop.group(1)
    problems = []
    for variable, field in (("PLUGWORKER_LISTEN", "port"), ("PLUGWORKER_HEALTH_LISTEN", "health_port"), ("PLUGWORKER_METRICS_ADDRESS", "metrics_port")):
        found = re.search(rf"'name': '{variable}', 'value': '([^']*)'", text)
        if not found or not found.group(1).endswith(f":${{{runner}.{field}}}"):
            problems.append(f"{block.where()}: a runner's {variable} must listen on its {field} from var.runners (got {found.group(1) if found else 'nothing'})")
    return problems


def client_address(tree, root: pathlib.Path) -> list:
    """Consul's HTTP(S) API listens on the task's (or server's) own loopback, not 0.0.0.0."""
    problems = []
    for what, config, where in _configs(tree, root):
        if config is None:
            problems.append(where)
            continue
        address = str(_get(config, "client_addr"))
        if _get(config, "client_addr") is None or re.search(r"0\.0\.0\.0|::(?!1)|\[::\]", address):
            problems.append(f"{where}: {what}' client_addr is {address!r}; Consul's API must listen on the host's own address (127.0.0.1), not every interface")
    for path, text in _code_files(root):
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(r"-client[= ]\S*0\.0\.0\.0|CONSUL_CLIENT_INTERFACE|client_addr\W+0\.0\.0\.0", line):
                problems.append(f"{path}:{number}: Consul's client address set to every interface")
    return problems


def no_insecure_plaintext(root: pathlib.Path) -> list:
    """The plaintext mode exists for development only: nothing in terraform/ turns it on."""
    problems = []
    for path, text in _code_files(root):
        for number, line in enumerate(text.splitlines(), 1):
            if re.search(r"insecure[-_]plaintext", line, re.IGNORECASE):
                problems.append(f"{path}:{number}: the plaintext mode (insecure-plaintext) has no place in the AWS deployment")
    return problems


def prometheus_discovery(tree, root: pathlib.Path) -> list:
    """Prometheus finds the controller and runners in Consul (consul_sd_configs over HTTPS
    with its own token from a file, kept by Meta plugworker_role, addressed by Meta
    plugworker_metrics_port); no static or DNS target list names a service."""
    problems = []
    path = root / PROMETHEUS_TEMPLATE
    if not path.exists():
        return [f"{path}: missing"]
    text = re.sub(r"\$\{(\w+)\}", lambda m: m.group(1).upper(), path.read_text())
    try:
        config = yaml.safe_load(text)
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        return [f"{path}: not YAML: {error}"]
    jobs = config.get("scrape_configs") or []
    discovering = []
    for job in jobs:
        name = job.get("job_name")
        for kind in ("static_configs", "dns_sd_configs", "file_sd_configs", "ec2_sd_configs", "ecs_sd_configs"):
            for entry in job.get(kind) or []:
                targets = entry.get("targets") or entry.get("names") or entry.get("files") or [kind]
                outside = [t for t in targets if not str(t).startswith(("localhost:", "127.0.0.1:"))]
                if outside:
                    problems.append(f"{path}: job {name} lists targets {outside} ({kind}); services are found through Consul (consul_sd_configs)")
        if job.get("consul_sd_configs"):
            discovering.append(job)
    if not discovering:
        return problems + [f"{path}: no job uses consul_sd_configs"]
    for job in discovering:
        name = job.get("job_name")
        for sd in job["consul_sd_configs"]:
            if sd.get("scheme") != "https" or not (sd.get("tls_config") or {}).get("ca_file"):
                problems.append(f"{path}: job {name} reads Consul without HTTPS and the stack's CA (scheme https, tls_config.ca_file)")
            if sd.get("token") or not (sd.get("authorization") or {}).get("credentials_file"):
                problems.append(f"{path}: job {name} must read Consul with its token from a file (authorization.credentials_file), not inline")
            if sd.get("services"):
                problems.append(f"{path}: job {name} lists services {sd['services']}; it must keep instances by their Meta instead")
        # Without a datacenter Prometheus first reads /v1/agent/self, which needs agent:read:
        # its read-only token gets 403 and discovery never starts. It comes from the stack's
        # datacenter (a template variable), never a literal that could name another.
        for raw_job in (raw or {}).get("scrape_configs") or []:
            if raw_job.get("job_name") != name:
                continue
            for sd in raw_job.get("consul_sd_configs") or []:
                datacenter = str(sd.get("datacenter") or "").strip()
                if not datacenter:
                    problems.append(f"{path}: job {name} does not name Consul's datacenter (datacenter); Prometheus would ask /v1/agent/self, which its read-only token may not read")
                elif not re.fullmatch(r"\$\{\w+\}", datacenter):
                    problems.append(f"{path}: job {name} names datacenter {datacenter!r}; it must be the stack's (a template variable)")
        relabels = job.get("relabel_configs") or []
        keeps_role = any(r.get("action") == "keep" and "__meta_consul_service_metadata_plugworker_role" in (r.get("source_labels") or []) for r in relabels)
        addressed = any(r.get("target_label") == "__address__" and "__meta_consul_service_metadata_plugworker_metrics_port" in (r.get("source_labels") or []) for r in relabels)
        if not keeps_role:
            problems.append(f"{path}: job {name} does not keep instances by Meta plugworker_role")
        if not addressed:
            problems.append(f"{path}: job {name} does not address targets by Meta plugworker_metrics_port")
    mesh_script = (root / MESH_SCRIPT).read_text() if (root / MESH_SCRIPT).exists() else ""
    policy = re.search(r'"prometheus": \("[^"]*", \'([^\']*)\'\)', mesh_script)
    if not policy or "write" in policy.group(1) or "read" not in policy.group(1):
        problems.append(f"{root / MESH_SCRIPT}: Prometheus's policy must be read-only (service_prefix and node_prefix read)")
    return problems


def run(root: pathlib.Path) -> list:
    tree = hcl.modules(root)
    problems = []
    for rule in (redrive, encryption, open_ingress, controller_permissions, s3_buckets):
        problems += [f"[{rule.__name__}] {p}" for p in rule(tree)]
    problems += [f"[visibility] {p}" for p in visibility(tree, root)]
    for rule in (images_pushed, consul_acls, gossip_encryption, consul_tls, connect_enabled, intentions, controller_grants, tokens_from_ssm, client_address,
                 prometheus_discovery, runner_galleries):
        problems += [f"[{rule.__name__}] {p}" for p in rule(tree, root)]
    problems += [f"[runner_ingress] {p}" for p in runner_ingress(tree)]
    problems += [f"[runner_ports] {p}" for p in runner_ports(tree)]
    for rule in (runner_names_only_in_tfvars, no_insecure_plaintext):
        problems += [f"[{rule.__name__}] {p}" for p in rule(root)]
    return problems


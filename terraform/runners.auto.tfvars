# The runners this stack deploys: the one place in terraform/ a runner is named (the deploy
# checks fail on a runner name anywhere else). Adding a runner is one entry here, after its
# image is pushed to the repository NAME/<runner> (docs/deploy-aws.md, "Images first").
#
# Each entry: task size (cpu units, memory MiB), autoscaling on average CPU (min_count,
# max_count, cpu_target percent) and, optionally, its ports:
#   port         gRPC over Connect mTLS, open only to the controller   (default 50051)
#   health_port  plaintext gRPC health, for the Consul agent in the task (default 50052)
#   metrics_port Prometheus /metrics, open only to Prometheus          (default 9464)
# and, for a runner serving meme_classifier, the gallery it follows:
#   gallery      a prefix in the stack's galleries bucket: the runner gets
#                PLUGWORKER_MEME_GALLERY=s3://<galleries_bucket>/<gallery>, read on that prefix
#                only (its role and its Consul token); operators publish to it
#                (docs/deploy-aws.md, "Galleries")
runners = {
  image-runner = { cpu = 2048, memory = 4096, min_count = 2, max_count = 10, cpu_target = 60, gallery = "memes" }
  nlp-runner   = { cpu = 512, memory = 1024, min_count = 1, max_count = 4, cpu_target = 60 }
}

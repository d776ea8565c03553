//! `plugworker controller` flags; each has an environment variable. [`Settings`] is the job
//! loop's part of them, and the only place its defaults are written.

use plugworker_lifecycle::Backoff;
use std::time::Duration;

#[cfg(feature = "sqs")]
/// Where the queues are.
#[derive(clap::Args, Debug, Clone)]
pub struct QueueArgs {
    /// URL of the jobs queue.
    #[arg(long, env = "PLUGWORKER_JOBS_QUEUE_URL")]
    pub jobs_queue_url: String,
    /// URL of the results queue.
    #[arg(long, env = "PLUGWORKER_RESULTS_QUEUE_URL")]
    pub results_queue_url: String,
    /// URL of the dead-letter queue (default: the jobs queue's redrive target; if both
    /// are given they must agree).
    #[arg(long, env = "PLUGWORKER_DLQ_URL")]
    pub dlq_url: Option<String>,
    /// Run on a jobs queue without a redrive policy. Failed jobs still get a final error
    /// result (transient failures after 5 attempts) and are copied to --dlq-url if given,
    /// but a message the controller cannot act on is received forever.
    #[arg(long, env = "PLUGWORKER_ALLOW_NO_DLQ")]
    pub allow_no_dlq: bool,
    #[command(flatten)]
    pub sqs: SqsArgs,
    /// Large jobs, results and DLQ copies through S3 (AWS's extended client format).
    #[command(flatten)]
    pub payload: plugworker_claim_check::PayloadArgs,
    /// Largest job body fetched from S3 (claim-check), in bytes, by its declared and by
    /// its real size; a larger one gets a permanent `payload_too_large` error result
    /// without being downloaded. Default: the runners' default --max-message-bytes.
    #[arg(long, env = "PLUGWORKER_MAX_JOB_BYTES", default_value_t = DEFAULT_MAX_JOB_BYTES)]
    pub max_job_bytes: usize,
    /// Keys that sign what the controller writes on re-queued copies of jobs (the
    /// original message id, attempts, unpublishable results): `KEY_ID:SECRET`, or two
    /// while rotating (the first signs, both verify; docs/delivery.md#message-keys).
    /// Secrets of at least 32 characters (`openssl rand -hex 16`). Every controller on a
    /// queue needs the same keys. Without keys a random per-process key is made: a copy one controller
    /// re-queued is a new job to another (its result carries the copy's message id), and
    /// a producer's `plugworker_message_id` is never believed either way. Prefer
    /// --message-keys-file or the environment over the command line.
    #[arg(long, env = "PLUGWORKER_MESSAGE_KEYS", hide_env_values = true)]
    pub message_keys: Option<String>,
    /// File holding the --message-keys (one `KEY_ID:SECRET` per line or comma-separated).
    #[arg(
        long,
        env = "PLUGWORKER_MESSAGE_KEYS_FILE",
        conflicts_with = "message_keys"
    )]
    pub message_keys_file: Option<std::path::PathBuf>,
}

/// The runners' default largest gRPC message (`--max-message-bytes` in
/// services/kit/src/config.rs): a larger job body could not be sent to a runner anyway.
pub const DEFAULT_MAX_JOB_BYTES: usize = 16 * 1024 * 1024;

#[cfg(feature = "sqs")]
impl QueueArgs {
    /// The keys from --message-keys or --message-keys-file; a per-process key (with a
    /// warning) if neither is set.
    pub fn message_keys(&self) -> anyhow::Result<crate::sqs::MessageKeys> {
        use anyhow::Context as _;
        let spec = match (&self.message_keys, &self.message_keys_file) {
            (Some(spec), _) => spec.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --message-keys-file {}", path.display()))?,
            (None, None) => {
                tracing::warn!(
                    "no --message-keys (PLUGWORKER_MESSAGE_KEYS): re-queued copies are signed with a key of this process only; another controller runs them as new jobs, under the copy's message id. Give every controller on the queue the same key"
                );
                return Ok(crate::sqs::MessageKeys::ephemeral());
            }
        };
        Ok(crate::sqs::MessageKeys::parse(&spec)?)
    }
}

#[cfg(feature = "sqs")]
/// How to reach SQS; shared by every command that talks to a queue.
#[derive(clap::Args, Debug, Clone)]
pub struct SqsArgs {
    /// SQS endpoint override, for local emulators (e.g. http://127.0.0.1:5000).
    #[arg(long, env = "PLUGWORKER_SQS_ENDPOINT")]
    pub sqs_endpoint: Option<String>,
    /// AWS region (default: the standard AWS configuration chain).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,
}

#[cfg(feature = "sqs")]
impl SqsArgs {
    /// An SQS client from the standard AWS configuration chain, with these overrides.
    pub async fn client(&self) -> aws_sdk_sqs::Client {
        crate::sqs::client(self.sqs_endpoint.as_deref(), self.region.as_deref()).await
    }
}

#[cfg(feature = "sqs")]
/// `plugworker controller`'s flags: where the queues and Consul are, and how jobs run.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub queues: QueueArgs,
    /// Long-poll wait of each receive (SQS allows up to 20 s). Shutdown waits at most this
    /// long for a receive in progress.
    #[arg(long, env = "PLUGWORKER_RECEIVE_WAIT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub receive_wait: Duration,
    /// Override the jobs queue's visibility timeout (default: read from the queue); checked
    /// as the queue's would be (not 0; a job's fetch, wait and run within SQS's 12 h).
    #[arg(long, env = "PLUGWORKER_VISIBILITY_TIMEOUT", value_parser = humantime::parse_duration)]
    pub visibility_timeout: Option<Duration>,
    /// How long Consul may hold each blocking query of the resolver.
    #[arg(long, env = "PLUGWORKER_CONSUL_WAIT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub consul_wait: Duration,
    #[command(flatten)]
    pub settings: Settings,
    #[command(flatten)]
    pub mesh: MeshArgs,
}

/// How the controller runs jobs, whatever the queue: the job loop's [`Settings`].
///
/// Each field is a flag with its environment variable, and its default is written once,
/// here, in its `#[arg]`: [`Settings::default`] reads those same defaults (and not the
/// environment), so `plugworker dev`, tests and benchmarks start from exactly what an
/// unconfigured `plugworker controller` runs with. A new setting is one field.
#[derive(clap::Args, Debug, Clone)]
pub struct Settings {
    /// Jobs running at once, all algorithms together.
    #[arg(long, env = "PLUGWORKER_MAX_IN_FLIGHT", default_value_t = 64)]
    pub max_in_flight: usize,
    /// Jobs running at once per algorithm (default: --max-in-flight).
    #[arg(long, env = "PLUGWORKER_MAX_IN_FLIGHT_PER_ALGORITHM")]
    pub max_in_flight_per_algorithm: Option<usize>,
    /// Jobs waiting for a runner of their algorithm to appear (they hold no run slot);
    /// beyond this, such a job is put back at once with a `no_runner` error.
    #[arg(long, env = "PLUGWORKER_MAX_WAITING_FOR_RUNNER", default_value_t = 64)]
    pub max_waiting_for_runner: usize,
    /// Concurrent calls to one runner instance.
    #[arg(long, env = "PLUGWORKER_MAX_CALLS_PER_INSTANCE", default_value_t = 64)]
    pub max_calls_per_instance: usize,
    /// Deadline of one run (propagated to the runner as the gRPC deadline).
    #[arg(long, env = "PLUGWORKER_JOB_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub job_timeout: Duration,
    /// How long a job waits for a runner of its algorithm to appear before it is put back.
    #[arg(long, env = "PLUGWORKER_RUNNER_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub runner_wait: Duration,
    /// First redelivery delay after a transient error (doubles per attempt, jittered).
    #[arg(long, env = "PLUGWORKER_RETRY_BASE", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_base: Duration,
    /// Longest redelivery delay.
    #[arg(long, env = "PLUGWORKER_RETRY_MAX", default_value = "5m", value_parser = humantime::parse_duration)]
    pub retry_max: Duration,
    /// Extend a running job's visibility every (visibility timeout × this).
    #[arg(long, env = "PLUGWORKER_HEARTBEAT_FRACTION", default_value_t = 0.5)]
    pub heartbeat_fraction: f64,
    /// On SIGTERM, how long running jobs may finish before they are put back for another
    /// controller. Keep the orchestrator's stop timeout above this + --receive-wait + 15 s
    /// (ECS: the container's stopTimeout).
    #[arg(long, env = "PLUGWORKER_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Runner services that may receive jobs without an intention. Otherwise (in the mesh)
    /// a service receives jobs only while an intention allows this controller's
    /// --mesh-service to call it, as Consul's /v1/connect/intentions/check decides (default
    /// policy included). With --insecure-plaintext and a list, only the services listed.
    #[arg(
        long = "allow-service",
        env = "PLUGWORKER_ALLOW_SERVICES",
        value_delimiter = ','
    )]
    pub allow_services: Vec<String>,
    /// The largest input a pipeline step may be given (`--max-job-bytes` where the queue
    /// has that flag; the runners' default message limit otherwise).
    #[arg(skip = DEFAULT_MAX_JOB_BYTES)]
    pub max_job_bytes: usize,
}

impl Settings {
    /// Jobs running at once per algorithm: `max_in_flight_per_algorithm`, or
    /// `max_in_flight` when that is unset.
    pub fn per_algorithm_limit(&self) -> usize {
        self.max_in_flight_per_algorithm
            .unwrap_or(self.max_in_flight)
    }

    /// The redelivery delay after a transient error: `retry_base` doubling per attempt,
    /// up to `retry_max`, jittered so jobs that failed together are not retried together.
    pub fn retry_backoff(&self) -> Backoff {
        Backoff::new(self.retry_base, self.retry_max)
    }
}

impl Default for Settings {
    /// The flags' own defaults, as `plugworker controller` with no flags and no
    /// `PLUGWORKER_*` variables would run.
    fn default() -> Self {
        flag_defaults()
    }
}

/// `T` as its flags' defaults say, ignoring the environment: the command line is empty
/// and every `env = ...` is cleared first.
fn flag_defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults"))
        .mut_args(|arg| arg.env(None::<&'static str>));
    let matches = command
        .try_get_matches_from(["defaults"])
        .expect("every setting has a default");
    T::from_arg_matches(&matches).expect("the defaults parse")
}

/// How the controller reaches runners: Consul Connect mTLS unless `--insecure-plaintext`.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Service mesh")]
pub struct MeshArgs {
    /// The Connect service the controller's leaf certificate names, i.e. who it is to the
    /// runners' intentions. Its Consul token needs `service "<name>" { policy = "write" }`.
    #[arg(long, env = "PLUGWORKER_MESH_SERVICE", default_value = "controller")]
    pub mesh_service: String,
    /// How long start-up waits for the first leaf certificate and CA roots.
    #[arg(long, env = "PLUGWORKER_MESH_READY_WITHIN", default_value = "30s", value_parser = humantime::parse_duration)]
    pub mesh_ready_within: Duration,
    /// INSECURE: call runners over plaintext gRPC and send jobs to any instance registered
    /// under a runner's name, Connect-native or not. No certificate proves who a runner
    /// is, so whoever can register in Consul or reach the network can read and answer
    /// jobs. For runners started with --insecure-plaintext only.
    #[arg(long, env = "PLUGWORKER_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,
}

impl MeshArgs {
    /// The resolver mode and transport these flags ask for; in the mesh, fetches the
    /// controller's leaf certificate first (waiting up to `--mesh-ready-within`).
    pub async fn transport(
        &self,
        consul: &plugworker_consul_client::ConsulClient,
    ) -> Result<(plugworker_discovery::Mode, crate::dispatch::Transport), plugworker_mesh::Error>
    {
        use crate::dispatch::Transport;
        use plugworker_discovery::Mode;
        if self.insecure_plaintext {
            tracing::warn!(
                "--insecure-plaintext: runners are called over plaintext gRPC with no identity check; anyone who can register in Consul or reach the network can read and answer jobs"
            );
            return Ok((Mode::Plain, Transport::Plaintext));
        }
        let identity = plugworker_mesh::Identity::start(
            consul.clone(),
            &self.mesh_service,
            self.mesh_ready_within,
        )
        .await?;
        tracing::info!(spiffe_id = %identity.spiffe_id(), "mesh identity ready; runners are called over mTLS");
        Ok((Mode::Connect, Transport::Mesh(identity)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn the_default_is_what_the_flags_default_to() {
        let defaults = Settings::default();
        assert_eq!(defaults.max_in_flight, 64);
        assert_eq!(
            defaults.per_algorithm_limit(),
            64,
            "follows --max-in-flight"
        );
        assert_eq!(defaults.job_timeout, Duration::from_secs(300));
        assert_eq!(defaults.runner_wait, Duration::from_secs(10));
        assert_eq!(defaults.retry_base, Duration::from_secs(2));
        assert_eq!(defaults.retry_max, Duration::from_secs(300));
        assert_eq!(defaults.shutdown_grace, Duration::from_secs(30));
        assert_eq!(defaults.heartbeat_fraction, 0.5);
        assert_eq!(defaults.max_in_flight_per_algorithm, None);
    }

    #[test]
    fn flags_set_the_settings() {
        let settings =
            Command::parse_from(["controller", "--max-in-flight", "8", "--job-timeout", "90s"])
                .settings;
        assert_eq!(settings.max_in_flight, 8);
        assert_eq!(settings.per_algorithm_limit(), 8);
        assert_eq!(settings.job_timeout, Duration::from_secs(90));
    }
}

//! The plugworker controller: the only component that talks to the job queue. It knows no
//! algorithm by name; the [`Resolver`](plugworker_discovery::Resolver) says which healthy
//! runners serve what, live, from Consul.
//!
//! - [`queue`]: what the controller needs of a queue and a result destination;
//!   [`sqs`] implements them on Amazon SQS (the `sqs` feature, on by default: it brings the
//!   AWS SDK), [`memory`] in process (`plugworker dev`).
//! - [`dispatch`]: instance choice (power of two choices), connections, retry elsewhere.
//! - [`classify`] maps a gRPC status to an error class.
//! - [`controller`] is the job loop and its delivery rules; [`pipeline`] runs a pipeline
//!   job's steps, [`stored_pipelines`] follows the named ones in Consul's KV store.
//! - [`config`] holds the flags.

pub mod classify;
pub mod config;
pub mod controller;
pub mod dispatch;
pub mod memory;
pub mod metrics;
pub mod pipeline;
pub mod queue;
#[cfg(feature = "sqs")]
pub mod sqs;
pub mod stored_pipelines;

pub use config::MeshArgs;
#[cfg(feature = "sqs")]
pub use config::{ControllerArgs, QueueArgs, SqsArgs};
pub use controller::{Controller, Settings};
pub use dispatch::{Dispatcher, Transport};

#[cfg(feature = "sqs")]
use anyhow::Context as _;
use plugworker_consul_client::ConsulClient;
use plugworker_discovery::{Admission, Resolver};
use std::sync::Arc;

#[cfg(feature = "sqs")]
/// Connects the controller to SQS and Consul, ready to [`Controller::run`]; also returns
/// its metrics. The queues are checked first ([`sqs::StartupError`] names the attribute
/// at fault).
pub async fn build_on_sqs(
    mut args: ControllerArgs,
    consul: ConsulClient,
) -> anyhow::Result<(Controller, metrics::MetricsSource)> {
    // A pipeline step's built input is held to what a job's body may be.
    args.settings.max_job_bytes = args.queues.max_job_bytes;
    let client = args.queues.sqs.client().await;
    // One claim-check: it resolves pointers of received jobs whatever their bucket; its
    // threshold is set per destination from that queue's MaximumMessageSize.
    let claim = args
        .queues
        .payload
        .claim_check(
            args.queues.sqs.region.as_deref(),
            plugworker_claim_check::SQS_MAXIMUM_MESSAGE_SIZE,
        )
        .await;
    // Received pointers: only into the payload bucket (and listed ones), at most
    // --max-job-bytes; results and DLQ copies use the same claim-check unrestricted
    // otherwise.
    let jobs_claim = claim
        .clone()
        .restrict_reads(args.queues.payload.read_policy())
        .with_max_payload_size(args.queues.max_job_bytes);
    let keys = args.queues.message_keys()?;
    let queue = sqs::SqsJobQueue::connect(
        client.clone(),
        args.queues.jobs_queue_url.clone(),
        args.queues.dlq_url.clone(),
        args.receive_wait,
        args.visibility_timeout,
        &sqs::JobsQueueOptions {
            allow_no_dlq: args.queues.allow_no_dlq,
            job_timeout: args.settings.job_timeout,
            runner_wait: args.settings.runner_wait,
        },
        jobs_claim,
        keys,
    )
    .await
    .with_context(|| format!("cannot use the jobs queue {}", args.queues.jobs_queue_url))?;
    let sink = sqs::SqsResults::connect(
        client,
        args.queues.results_queue_url.clone(),
        claim.clone(),
        args.queues.payload.payload_threshold.is_some(),
    )
    .await
    .with_context(|| {
        format!(
            "cannot use the results queue {}",
            args.queues.results_queue_url
        )
    })?;
    tracing::info!(
        jobs = %args.queues.jobs_queue_url,
        results = %args.queues.results_queue_url,
        dlq = queue.dlq_url().unwrap_or("none"),
        fifo = queue.is_fifo(),
        visibility = ?crate::queue::JobQueue::visibility_timeout(&queue),
        max_attempts = crate::queue::JobQueue::max_attempts(&queue),
        results_max_bytes = sink.max_message_size(),
        payload_bucket = claim.bucket().unwrap_or("none"),
        consul = %consul.base_url(),
        "controller starting"
    );
    let link = args
        .mesh
        .transport(&consul)
        .await
        .context("cannot join the service mesh (or pass --insecure-plaintext)")?;
    let controller = assemble(
        Arc::new(queue),
        Arc::new(sink),
        consul,
        args.consul_wait,
        link,
        args.settings,
    );
    let metrics = controller.metrics_source();
    Ok((controller, metrics))
}

/// The one controller wiring, whatever the queue: a resolver of runners in the mode the
/// transport needs (Connect-native instances for mTLS), a dispatcher dialling through that
/// transport, the stored pipelines' watch, and the job loop. `plugworker controller` (SQS, [`build_on_sqs`]) and
/// `plugworker dev` (the in-process queue) both build their controller here.
pub fn assemble(
    queue: Arc<dyn queue::JobQueue>,
    sink: Arc<dyn queue::ResultSink>,
    consul: ConsulClient,
    consul_wait: std::time::Duration,
    (mode, transport): (plugworker_discovery::Mode, dispatch::Transport),
    settings: Settings,
) -> Controller {
    // In the mesh, runners are admitted by intentions naming this controller's identity,
    // re-checked as often as a runner re-checks its authorize decisions.
    let admission = match &transport {
        dispatch::Transport::Mesh(identity) => Admission::intentions(
            identity.service(),
            settings.allow_services.iter().cloned(),
            plugworker_mesh::ServerSettings::default().authorize_cache_ttl,
        ),
        dispatch::Transport::Plaintext => Admission {
            allow_list: settings.allow_services.iter().cloned().collect(),
            ..Admission::open()
        },
    };
    let pipelines = stored_pipelines::StoredPipelines::start(consul.clone(), consul_wait);
    let resolver = Arc::new(Resolver::start_admitting(
        consul,
        consul_wait,
        mode,
        admission,
    ));
    let dispatcher = Arc::new(
        Dispatcher::new(
            resolver,
            settings.max_calls_per_instance,
            settings.job_timeout,
        )
        .with_transport(transport),
    );
    Controller::new(queue, sink, dispatcher, settings).with_pipelines(pipelines)
}

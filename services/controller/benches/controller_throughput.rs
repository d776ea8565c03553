//! Controller overhead: jobs/s and job latency through the controller (in-memory queue,
//! live resolver, P2C dispatcher, result sink) for the trivial `echo` algorithm, next to
//! direct gRPC calls to the same runner process at the same concurrency; the ratio (goal
//! >= 0.8). Then, for information, jobs/s through the SQS emulator (moto).
//!
//! Direct and controller runs alternate (BENCH_ROUNDS, default 3); throughput is the
//! median round, latency percentiles over all rounds.
//!
//! `scripts/bench-controller.sh`; BENCH_JOBS per round (default 10000), BENCH_CONCURRENCY
//! (32), BENCH_SQS_JOBS (100; moto slows down with queue depth).

use plugworker_consul_client::{ConsulClient, ConsulConfig};
use plugworker_controller::memory::{ChannelSink, MemoryQueue};
use plugworker_controller::sqs::{JobsQueueOptions, SqsJobQueue, SqsResults};
use plugworker_controller::{Controller, Dispatcher, Settings};
use plugworker_discovery::Resolver;
use plugworker_embedded_consul::{Registry, RegistryConfig};
use plugworker_rpc::runner::v1::RunRequest;
use plugworker_rpc::runner::v1::runner_client::RunnerClient;
use plugworker_testkit::sqs::Sqs;
use plugworker_testkit::{Process, bin_path};
use std::sync::Arc;
use std::time::{Duration, Instant};

const JOB: &str = r#"{"algorithm": "echo", "payload": {"message": "hello, plugworker"}}"#;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn settings(concurrency: usize) -> Settings {
    Settings {
        max_in_flight: concurrency,
        retry_base: Duration::from_millis(100),
        shutdown_grace: Duration::from_secs(5),
        ..Settings::default()
    }
}

async fn through_controller(
    queue: Arc<dyn plugworker_controller::queue::JobQueue>,
    send: impl Fn(),
    jobs: usize,
    resolver: Arc<Resolver>,
    concurrency: usize,
    sink: Option<Arc<dyn plugworker_controller::queue::ResultSink>>,
    results_via_sqs: Option<(&Sqs, &str)>,
) -> (f64, Vec<f64>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let sink = sink.unwrap_or_else(|| Arc::new(ChannelSink(tx)));
    let settings = settings(concurrency);
    let dispatcher = Arc::new(Dispatcher::new(
        resolver,
        settings.max_calls_per_instance,
        settings.job_timeout,
    ));
    let controller = Controller::new(queue, sink, dispatcher, settings);
    send();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let running = tokio::spawn(controller.run(async {
        let _ = stopped.await;
    }));
    let mut latencies = Vec::with_capacity(jobs);
    match results_via_sqs {
        None => {
            while latencies.len() < jobs {
                let result = rx.recv().await.expect("controller running");
                assert_eq!(result.status, plugworker_jobs::Status::Ok, "{result:?}");
                latencies.push(result.timings.total_ms);
            }
        }
        Some((sqs, results)) => {
            for value in sqs
                .collect_results(results, jobs, Duration::from_secs(300))
                .await
            {
                latencies.push(value["timings"]["total_ms"].as_f64().unwrap());
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = stop.send(());
    let _ = running.await;
    latencies.sort_by(f64::total_cmp);
    (latencies.len() as f64 / elapsed, latencies)
}

async fn direct(address: &str, jobs: usize, concurrency: usize) -> (f64, Vec<f64>) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let per_caller = jobs / concurrency;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let mut client = RunnerClient::new(channel.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_caller);
                for _ in 0..per_caller {
                    let sent = Instant::now();
                    let payload = br#"{"message": "hello, plugworker"}"#.to_vec();
                    client
                        .run(RunRequest {
                            algorithm: "echo".into(),
                            payload,
                        })
                        .await
                        .unwrap();
                    latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    (latencies.len() as f64 / elapsed, latencies)
}

/// The median round's throughput, with the latencies of every round.
fn median_of(mut runs: Vec<(f64, Vec<f64>)>) -> (f64, Vec<f64>) {
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let median = runs[runs.len() / 2].0;
    let mut latencies: Vec<f64> = runs.into_iter().flat_map(|r| r.1).collect();
    latencies.sort_by(f64::total_cmp);
    (median, latencies)
}

fn report(name: &str, (rate, latencies): &(f64, Vec<f64>)) {
    println!(
        "{name:<48} {rate:>8.0} jobs/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} jobs)",
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        latencies.len()
    );
}

fn main() {
    let jobs: usize = env_or("BENCH_JOBS", 10_000);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    let concurrency: usize = env_or("BENCH_CONCURRENCY", 32);
    let sqs_jobs: usize = env_or("BENCH_SQS_JOBS", 100);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let registry = Registry::spawn("127.0.0.1:0", RegistryConfig::default()).await.unwrap();
        let (_runner, addresses) = Process::spawn_reporting(
            &bin_path("test-runner"),
            &["--listen", "127.0.0.1:0", "--consul-address", &registry.url(), "--check-interval", "1s", "--max-concurrent-runs", "256", "--max-queued-runs", "4096", "--insecure-plaintext"],
            &[("RUST_LOG", "warn")],
        )
        .await;
        let address = addresses.grpc().to_string();
        let consul = ConsulClient::new(ConsulConfig { address: registry.url(), ..Default::default() }).unwrap();
        let resolver = Arc::new(Resolver::start(consul, Duration::from_secs(60)));
        let mut snapshots = resolver.subscribe();
        tokio::time::timeout(Duration::from_secs(30), snapshots.wait_for(|s| !s.instances("echo").is_empty()))
            .await
            .expect("runner registered")
            .unwrap();
        println!("controller throughput: {rounds} alternating rounds of {jobs} echo jobs, {concurrency} in flight, {} CPUs", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));

        // Warm both paths.
        direct(&address, 2000, concurrency).await;
        let warm = Arc::new(MemoryQueue::new(Duration::from_millis(100), Duration::from_secs(60), 5));
        through_controller(warm.clone(), || { for _ in 0..2000 { warm.send(JOB); } }, 2000, resolver.clone(), concurrency, None, None).await;

        let mut direct_runs = Vec::new();
        let mut controller_runs = Vec::new();
        for _ in 0..rounds {
            direct_runs.push(direct(&address, jobs, concurrency).await);
            let queue = Arc::new(MemoryQueue::new(Duration::from_millis(100), Duration::from_secs(60), 5));
            controller_runs.push(
                through_controller(queue.clone(), || { for _ in 0..jobs { queue.send(JOB); } }, jobs, resolver.clone(), concurrency, None, None).await,
            );
        }
        let direct_run = median_of(direct_runs);
        let controller_run = median_of(controller_runs);
        report("direct gRPC calls to the runner", &direct_run);
        report("through the controller (in-memory queue)", &controller_run);
        let ratio = controller_run.0 / direct_run.0;
        println!("throughput ratio controller/direct: {ratio:.3} (goal >= 0.8) {}", if ratio >= 0.8 { "MET" } else { "NOT MET" });
        println!("  (controller latency: receipt to published result; direct latency: one gRPC round trip)");

        // For information: the same through the SQS emulator.
        let sqs = Sqs::start().await;
        let queues = sqs.create_queues("bench", Duration::from_secs(60), 5).await;
        let queue = Arc::new(
            SqsJobQueue::connect(
                sqs.client.clone(),
                queues.jobs.clone(),
                None,
                Duration::from_secs(1),
                None,
                &JobsQueueOptions { allow_no_dlq: false, job_timeout: Duration::from_secs(300), runner_wait: Duration::from_secs(10) },
                plugworker_claim_check::ClaimCheck::disabled(),
                plugworker_controller::sqs::MessageKeys::ephemeral(),
            )
            .await
            .unwrap(),
        );
        for _ in 0..sqs_jobs {
            sqs.send(&queues.jobs, JOB).await;
        }
        let sink: Arc<dyn plugworker_controller::queue::ResultSink> = Arc::new(SqsResults::connect(sqs.client.clone(), queues.results.clone(), plugworker_claim_check::ClaimCheck::disabled(), false).await.unwrap());
        let sqs_run = through_controller(queue, || {}, sqs_jobs, resolver.clone(), concurrency, Some(sink), Some((&sqs, &queues.results))).await;
        report("through the controller (moto SQS, information)", &sqs_run);
        registry.stop().await;
    });
}

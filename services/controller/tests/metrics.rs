//! The Prometheus endpoints of the controller (`/metrics` beside `/healthz`) and of a
//! runner (`--metrics-address`) expose the documented series, and their values follow
//! the jobs that ran.

use crate::common;

use common::{Stack, job};
use plugworker_testkit::{eventually, metric_value};
use serde_json::json;
use std::time::Duration;

/// The body of `GET url`; an error while nothing listens there yet.
async fn http_get(url: &str) -> reqwest::Result<String> {
    reqwest::get(url).await?.error_for_status()?.text().await
}

#[tokio::test]
async fn controller_and_runner_metrics_count_what_happened() {
    // A 2 s visibility timeout so a 3 s job needs extensions.
    let stack = Stack::start(Duration::from_secs(2), 3).await;
    let (_nlp, nlp_addresses) = stack
        .runner_reporting("nlp-runner", &[common::METRICS_ON_ANY_PORT])
        .await;
    let runner_metrics = nlp_addresses.metrics().to_string();
    let (_test, _) = stack.runner("test-runner", &[]).await;
    let (_controller, health) = stack.controller(&[]).await;
    let controller_metrics = health.replace("/healthz", "/metrics");

    let before = eventually(
        Duration::from_secs(30),
        "both runners seen by the controller",
        || async {
            let text = http_get(&controller_metrics).await.ok()?;
            let nlp = metric_value(
                &text,
                "plugworker_runner_instances",
                &[("algorithm", "language_detection")],
            )?;
            let echo = metric_value(
                &text,
                "plugworker_runner_instances",
                &[("algorithm", "echo")],
            )?;
            (nlp == 1.0 && echo == 1.0).then_some(text)
        },
    )
    .await;
    assert_eq!(
        metric_value(&before, "plugworker_jobs_in_flight", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric_value(&before, "plugworker_consul_watch_errors_total", &[]),
        Some(0.0)
    );

    for text in [
        "The weather is lovely today.",
        "Il fait très beau aujourd'hui.",
        "Das Wetter ist heute schön.",
    ] {
        stack
            .submit(job("language_detection", json!({ "text": text })))
            .await;
    }
    stack
        .submit(job("language_detection", json!({ "text": 42 })))
        .await;
    stack
        .submit(job("echo", json!({ "message": "slow", "delay_ms": 3000 })))
        .await;
    // A pipeline job, so the pipeline series (and the dashboard's pipelines row) exist.
    stack
        .submit(json!({ "pipeline": { "say": { "algorithm": "echo" } }, "payload": { "message": "hi" } }))
        .await;
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, 6, Duration::from_secs(60))
        .await;
    assert_eq!(results.len(), 6, "{results:#?}");

    let text = eventually(Duration::from_secs(10), "all six jobs counted", || async {
        let text = http_get(&controller_metrics).await.ok()?;
        (metric_value(&text, "plugworker_sqs_deletes_total", &[]) == Some(6.0)).then_some(text)
    })
    .await;
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&text, name, labels);
    let lang = ("algorithm", "language_detection");
    assert_eq!(
        value("plugworker_jobs_total", &[lang, ("outcome", "ok")]),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            "plugworker_jobs_total",
            &[lang, ("outcome", "permanent_error")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "plugworker_jobs_total",
            &[("algorithm", "echo"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            "plugworker_job_duration_seconds_count",
            &[lang, ("outcome", "ok")]
        ),
        Some(3.0)
    );
    let slow = value(
        "plugworker_job_duration_seconds_sum",
        &[("algorithm", "echo"), ("outcome", "ok")],
    )
    .unwrap();
    assert!(slow >= 3.0, "the echo job took its 3 s: {slow}");
    assert_eq!(
        value(
            "plugworker_dlq_moves_total",
            &[("reason", "permanent_error")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value("plugworker_sqs_messages_received_total", &[]),
        Some(6.0)
    );
    assert_eq!(
        value(
            "plugworker_pipeline_jobs_total",
            &[("pipeline", "inline"), ("status", "ok")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            "plugworker_pipeline_steps_total",
            &[("algorithm", "echo"), ("status", "ok")]
        ),
        Some(1.0)
    );
    assert!(value("plugworker_sqs_receives_total", &[]).unwrap() >= 1.0);
    assert!(
        value("plugworker_visibility_extensions_total", &[]).unwrap() >= 1.0,
        "{text}"
    );
    assert_eq!(value("plugworker_jobs_in_flight", &[]), Some(0.0));
    assert_eq!(
        value("plugworker_queue_messages", &[("state", "visible")]),
        Some(0.0)
    );
    assert_eq!(value("plugworker_runner_instances", &[lang]), Some(1.0));

    let runner = http_get(&format!("http://{runner_metrics}/metrics"))
        .await
        .unwrap();
    check_dashboard(&format!("{text}\n{runner}"));
    let value = |name: &str, labels: &[(&str, &str)]| metric_value(&runner, name, labels);
    assert_eq!(
        value("plugworker_runner_runs_total", &[lang, ("code", "ok")]),
        Some(3.0),
        "{runner}"
    );
    assert_eq!(
        value(
            "plugworker_runner_runs_total",
            &[lang, ("code", "invalid_argument")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value("plugworker_runner_run_duration_seconds_count", &[lang]),
        Some(3.0)
    );
    assert_eq!(
        value("plugworker_runner_runs_in_flight", &[lang]),
        Some(0.0)
    );
}

/// Every PromQL query of the Grafana dashboard refers to series the controller or a
/// runner exposes, with labels those series carry.
fn check_dashboard(scraped: &str) {
    let dashboard = plugworker_testkit::dashboard::load();
    let queries = plugworker_testkit::dashboard::queries(&dashboard, "prometheus");
    assert!(queries.len() >= 10, "{queries:#?}");
    for query in &queries {
        let metrics = plugworker_testkit::dashboard::identifiers(query, "plugworker_");
        assert!(
            !metrics.is_empty(),
            "query uses no plugworker metric: {query}"
        );
        for metric in &metrics {
            let series: Vec<&str> = scraped
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && (l.starts_with(&format!("{metric}{{"))
                            || l.starts_with(&format!("{metric} ")))
                })
                .collect();
            assert!(!series.is_empty(), "{metric} (in {query}) is not exposed");
            for label in plugworker_testkit::dashboard::label_names(query) {
                assert!(
                    series.iter().any(|l| l.contains(&format!("{label}=\""))),
                    "label {label} (in {query}) is not on {metric}"
                );
            }
        }
    }
}

/// What Prometheus' `consul_sd_configs` does in infra/prometheus.yml and on AWS: list the
/// services, keep instances whose Meta `plugworker_role` is `runner` or `controller`, and
/// scrape `<address>:<Meta plugworker_metrics_port>/metrics`. Both the controller (which
/// registers itself) and a runner with `--metrics-address` are found that way, with no
/// target list, and each scrape answers with its own series.
#[tokio::test]
async fn prometheus_finds_the_controller_and_runners_through_consul() {
    let stack = Stack::start(Duration::from_secs(30), 3).await;
    let (_nlp, nlp_addresses) = stack
        .runner_reporting("nlp-runner", &[common::METRICS_ON_ANY_PORT])
        .await;
    let runner_metrics = nlp_addresses.metrics().to_string();
    let (_controller, health) = stack.controller(&[]).await;
    stack.wait_passing("nlp-runner", 1).await;
    stack.wait_passing("controller", 1).await;

    let consul = stack.consul();
    let (services, _) = consul
        .catalog_services(Default::default())
        .await
        .expect("catalog");
    let mut targets = Vec::new();
    for name in services.keys() {
        let (entries, _) = consul
            .health_service(name, &[], true, Default::default())
            .await
            .expect("health");
        for entry in entries {
            let meta = &entry.service.meta;
            let role = meta.get("plugworker_role").map(String::as_str);
            if !matches!(role, Some("runner") | Some("controller")) {
                continue;
            }
            let port = meta
                .get("plugworker_metrics_port")
                .unwrap_or_else(|| panic!("{name} has no plugworker_metrics_port: {meta:?}"));
            targets.push((
                role.unwrap().to_string(),
                format!("http://{}:{port}/metrics", entry.address()),
            ));
        }
    }
    targets.sort();
    let controller_url = health.replace("/healthz", "/metrics");
    assert_eq!(
        targets,
        vec![
            ("controller".to_string(), controller_url),
            (
                "runner".to_string(),
                format!("http://{runner_metrics}/metrics")
            ),
        ]
    );
    let controller = http_get(&targets[0].1).await.expect("controller scrape");
    assert!(
        controller.contains("plugworker_jobs_in_flight"),
        "{controller}"
    );
    let runner = http_get(&targets[1].1).await.expect("runner scrape");
    // A runner that has run nothing has no samples yet: an empty OpenMetrics exposition.
    assert!(runner.trim_end().ends_with("# EOF"), "{runner}");
}

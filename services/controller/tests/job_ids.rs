//! Every error result names its job when the job's `id` is valid, whatever else is wrong
//! with it (issue 25): a consumer matching results on ids can tell which job failed. Real
//! processes: moto SQS, the embedded registry and `plugworker controller`.

use crate::common;

use common::Stack;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn refused_jobs_with_a_valid_id_echo_it_in_their_error_result() {
    let stack = Stack::start_plain(Duration::from_secs(30), 3).await;
    let (controller, _) = stack.controller(&[]).await;
    let cases = [
        (
            json!({"id": "long-name", "algorithm": "a".repeat(300), "payload": {}}),
            "invalid_job",
        ),
        (
            json!({"id": "no-algorithm", "payload": {}}),
            "missing_algorithm",
        ),
        (
            json!({"id": "no-payload", "algorithm": "add"}),
            "invalid_job",
        ),
    ];
    for (body, _) in &cases {
        stack.submit(body.clone()).await;
    }
    let results = stack
        .sqs
        .collect_results(&stack.queues.results, cases.len(), Duration::from_secs(60))
        .await;
    assert_eq!(
        results.len(),
        cases.len(),
        "{results:#?}\n{}",
        controller.log()
    );
    for (body, code) in &cases {
        let id = body["id"].as_str().unwrap();
        let result = results
            .iter()
            .find(|r| r["job_id"] == id)
            .unwrap_or_else(|| panic!("no result names {id}: {results:#?}"));
        assert_eq!(result["status"], "error", "{result}");
        assert_eq!(result["error"]["code"], *code, "{result}");
    }
}

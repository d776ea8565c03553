//! Reading the Grafana dashboard (`infra/grafana/dashboards/plugworker.json`) so tests can
//! check that every query refers to series and attributes the services really emit.

use std::collections::BTreeSet;
use std::path::Path;

/// The dashboard, parsed (panics with the parse error if it is not valid JSON).
pub fn load() -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../infra/grafana/dashboards/plugworker.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every query string of `datasource_type` (`prometheus`: PromQL `expr`s, including the
/// template variables'; `tempo`: TraceQL `query`s).
pub fn queries(dashboard: &serde_json::Value, datasource_type: &str) -> Vec<String> {
    let mut found = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let kind = target["datasource"]["type"]
                .as_str()
                .or(panel["datasource"]["type"].as_str());
            if kind != Some(datasource_type) {
                continue;
            }
            let field = if datasource_type == "prometheus" {
                "expr"
            } else {
                "query"
            };
            if let Some(query) = target[field].as_str() {
                found.push(query.to_string());
            }
        }
    }
    if datasource_type == "prometheus" {
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if variable["datasource"]["type"] == "prometheus"
                && let Some(query) = variable["query"]["query"].as_str()
            {
                found.push(query.to_string());
            }
        }
    }
    found
}

/// Identifiers in `text` that start with `prefix` (metric names, attribute paths).
pub fn identifiers(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(prefix) {
        let boundary = start == 0
            || !rest[..start]
                .ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        if boundary {
            found.insert(tail[..end].to_string());
        }
        rest = &tail[end.max(1)..];
    }
    found
}

/// Label names a PromQL expression groups by (`by (a, b)`) or matches on (`{a="…"}`).
pub fn label_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(start) = rest.find("by (") {
        let tail = &rest[start + 4..];
        let end = tail.find(')').unwrap_or(tail.len());
        names.extend(
            tail[..end]
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
        );
        rest = &tail[end..];
    }
    let mut rest = expr;
    while let Some(start) = rest.find('{') {
        let tail = &rest[start + 1..];
        let end = tail.find('}').unwrap_or(tail.len());
        for matcher in tail[..end].split(',') {
            let name: String = matcher
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
        rest = &tail[end..];
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_and_labels_are_found_in_queries() {
        let expr = r#"histogram_quantile(0.5, sum by (le, algorithm) (rate(plugworker_job_duration_seconds_bucket{outcome!="ok",algorithm=~"$algorithm"}[5m])))"#;
        assert_eq!(
            identifiers(expr, "plugworker_")
                .into_iter()
                .collect::<Vec<_>>(),
            ["plugworker_job_duration_seconds_bucket"]
        );
        assert_eq!(
            label_names(expr).into_iter().collect::<Vec<_>>(),
            ["algorithm", "le", "outcome"]
        );
        let traceql = r#"{ resource.service.name = "x" && span.plugworker.algorithm =~ "$a" }"#;
        assert_eq!(
            identifiers(traceql, "span.")
                .into_iter()
                .collect::<Vec<_>>(),
            ["span.plugworker.algorithm"]
        );
    }
}

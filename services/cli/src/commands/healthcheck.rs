//! `plugworker healthcheck`: asks the controller running next to it whether it is healthy.
//!
//! Container runtimes (Docker's HEALTHCHECK, ECS) run a command inside the container; this
//! one reads the same `PLUGWORKER_HEALTH_ADDRESS` as the controller, so the image needs no
//! curl and the probe follows the controller's configuration.

use anyhow::{Context, bail};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The controller's health address (`0.0.0.0` is probed on 127.0.0.1).
    #[arg(
        long,
        env = "PLUGWORKER_HEALTH_ADDRESS",
        default_value = "0.0.0.0:9090"
    )]
    pub health_address: String,
    /// Give up after this long.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// The URL of `/healthz` at `address`, with "all interfaces" replaced by loopback.
fn healthz_url(address: &str) -> String {
    let local = match address.rsplit_once(':') {
        Some(("0.0.0.0" | "" | "[::]", port)) => format!("127.0.0.1:{port}"),
        _ => address.to_string(),
    };
    format!("http://{local}/healthz")
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let url = healthz_url(&args.health_address);
    let response = reqwest::Client::builder()
        .timeout(args.timeout)
        // The controller is in this container: a proxy from the environment cannot reach
        // it, and a failed probe would get a healthy controller replaced.
        .no_proxy()
        .build()?
        .get(&url)
        .send()
        .await
        .with_context(|| format!("no controller answers at {url}"))?;
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{url} answered {status}: {}", body.trim());
    }
    println!("{url}: {}", body.trim());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::healthz_url;

    #[test]
    fn all_interfaces_are_probed_on_loopback() {
        assert_eq!(healthz_url("0.0.0.0:9090"), "http://127.0.0.1:9090/healthz");
        assert_eq!(healthz_url("[::]:9090"), "http://127.0.0.1:9090/healthz");
        assert_eq!(healthz_url("10.0.0.7:80"), "http://10.0.0.7:80/healthz");
    }
}

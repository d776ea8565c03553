//! `echo`: returns its message, optionally after a delay (slow runs for drain and
//! deadline tests).
//!
//! Test hooks read at load time: `TEST_RUNNER_LOAD_DELAY_MS` delays loading (to observe
//! health before load), `TEST_RUNNER_REQUIRED_FILE` names a file that must exist, as a
//! model file would (to observe a failed load), and `TEST_RUNNER_ALWAYS_UNAVAILABLE=1`
//! makes every run fail with `UNAVAILABLE` while health stays `SERVING` (a broken
//! dependency the health check cannot see).

use plugworker_kit::{Algorithm, LoadContext, LoadError, RunContext, RunError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Text to send back.
    pub message: String,
    /// Milliseconds to wait before answering.
    #[serde(default)]
    #[schemars(range(max = 600_000))]
    pub delay_ms: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    pub message: String,
    pub delayed_ms: u32,
    /// When the run began and ended, in milliseconds since the Unix epoch, by this
    /// runner's clock: what tests read to show runs overlapped (or did not).
    pub started_unix_ms: u64,
    pub finished_unix_ms: u64,
}

pub struct Echo {
    always_unavailable: bool,
}

impl Algorithm for Echo {
    type Input = Input;
    type Output = Output;
    const NAME: &'static str = "echo";
    const VERSION: &'static str = "1.0.0";
    const DESCRIPTION: &'static str = "Returns the message it is given, after an optional delay.";

    fn load(_context: &LoadContext) -> Result<Self, LoadError> {
        if let Some(delay) = std::env::var("TEST_RUNNER_LOAD_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if let Ok(file) = std::env::var("TEST_RUNNER_REQUIRED_FILE") {
            std::fs::metadata(&file).map_err(|e| LoadError::file(&file, e))?;
        }
        Ok(Self {
            always_unavailable: std::env::var("TEST_RUNNER_ALWAYS_UNAVAILABLE")
                .is_ok_and(|v| v == "1"),
        })
    }

    async fn run(&self, input: Input, _context: &RunContext) -> Result<Output, RunError> {
        if self.always_unavailable {
            return Err(RunError::Unavailable(
                "echo's backend is down (TEST_RUNNER_ALWAYS_UNAVAILABLE)".into(),
            ));
        }
        let started_unix_ms = unix_ms();
        if input.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(input.delay_ms.into())).await;
        }
        Ok(Output {
            message: input.message,
            delayed_ms: input.delay_ms,
            started_unix_ms,
            finished_unix_ms: unix_ms(),
        })
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

plugworker_kit::register_algorithm!(Echo);

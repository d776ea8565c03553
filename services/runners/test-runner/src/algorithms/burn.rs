//! `burn`: blocking work of a given length (a thread held, optionally with memory
//! allocated and touched), run through `RunContext::blocking` as CPU-heavy algorithms do.
//!
//! It counts how many of its blocking sections run at once in this process and reports
//! the highest count seen, so a test can check that the runner's concurrency bound holds
//! for blocking work that outlives its caller's deadline.

use plugworker_kit::{Algorithm, LoadContext, LoadError, RunContext, RunError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// How long the blocking section holds its thread, in milliseconds.
    #[schemars(range(max = 60_000))]
    pub ms: u32,
    /// Memory to allocate and touch for the section's duration, in MiB.
    #[serde(default)]
    #[schemars(range(max = 1024))]
    pub megabytes: u32,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    pub ms: u32,
    /// Most blocking sections that ran at once in this process, this one included.
    pub max_concurrent: usize,
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MAX_RUNNING: AtomicUsize = AtomicUsize::new(0);

pub struct Burn;

impl Algorithm for Burn {
    type Input = Input;
    type Output = Output;
    const NAME: &'static str = "burn";
    const VERSION: &'static str = "1.0.0";
    const DESCRIPTION: &'static str = "Holds a blocking thread (and optionally memory) for a while; reports the most such sections seen at once.";

    fn load(_context: &LoadContext) -> Result<Self, LoadError> {
        Ok(Self)
    }

    async fn run(&self, input: Input, context: &RunContext) -> Result<Output, RunError> {
        let Input { ms, megabytes } = input;
        context
            .blocking(move || {
                let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
                MAX_RUNNING.fetch_max(now, Ordering::SeqCst);
                // Touch every page so the memory is resident, as a decoded image would be.
                let memory = vec![1u8; megabytes as usize * 1024 * 1024];
                std::thread::sleep(Duration::from_millis(ms.into()));
                std::hint::black_box(&memory);
                drop(memory);
                RUNNING.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
            .await?;
        Ok(Output {
            ms,
            max_concurrent: MAX_RUNNING.load(Ordering::SeqCst),
        })
    }
}

plugworker_kit::register_algorithm!(Burn);

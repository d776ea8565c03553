//! `add`: the sum of a list of numbers (a schema with a required, typed field).

use plugworker_kit::{Algorithm, LoadContext, LoadError, RunContext, RunError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Input {
    /// Numbers to add.
    #[schemars(length(min = 1, max = 10_000))]
    pub numbers: Vec<f64>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    pub sum: f64,
}

pub struct Add;

impl Algorithm for Add {
    type Input = Input;
    type Output = Output;
    const NAME: &'static str = "add";
    const VERSION: &'static str = "1.0.0";
    const DESCRIPTION: &'static str = "Adds a list of numbers.";

    fn load(_context: &LoadContext) -> Result<Self, LoadError> {
        Ok(Self)
    }

    async fn run(&self, input: Input, _context: &RunContext) -> Result<Output, RunError> {
        let sum: f64 = input.numbers.iter().sum();
        if !sum.is_finite() {
            return Err(RunError::Unprocessable("the sum overflows".into()));
        }
        Ok(Output { sum })
    }
}

plugworker_kit::register_algorithm!(Add);

//! Algorithms the kit's unit tests plug in (one definition for every test module).

use crate::{Algorithm, LoadContext, LoadError, RunContext, RunError};

/// Doubles a number: the smallest algorithm that validates input and answers.
pub(crate) struct Twice;

impl Algorithm for Twice {
    type Input = f64;
    type Output = f64;
    const NAME: &'static str = "twice";
    const VERSION: &'static str = "1";
    const DESCRIPTION: &'static str = "Doubles a number.";
    fn load(_: &LoadContext) -> Result<Self, LoadError> {
        Ok(Self)
    }
    async fn run(&self, input: f64, _: &RunContext) -> Result<f64, RunError> {
        Ok(input * 2.0)
    }
}

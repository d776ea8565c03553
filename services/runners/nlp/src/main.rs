//! `nlp-runner`: text algorithms. Each module in `src/algorithms/` is one algorithm.

plugworker_kit::algorithms!();

fn main() -> std::process::ExitCode {
    plugworker_kit::main(env!("CARGO_BIN_NAME"))
}

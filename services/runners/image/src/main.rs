//! `image-runner`: image algorithms. Each module in `src/algorithms/` is one algorithm;
//! `algorithm_env` reads and checks the environment variables that configure them.

mod algorithm_env;

plugworker_kit::algorithms!();

fn main() -> std::process::ExitCode {
    plugworker_kit::main(env!("CARGO_BIN_NAME"))
}

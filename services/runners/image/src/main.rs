//! `image-runner`: image algorithms. Each module in `src/algorithms/` is one algorithm;
//! `settings` reads the environment variables they share.

mod settings;

plugworker_kit::algorithms!();

fn main() -> std::process::ExitCode {
    plugworker_kit::main(env!("CARGO_BIN_NAME"))
}

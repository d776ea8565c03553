//! `test-runner`: small deterministic algorithms that exercise the kit in tests and
//! benchmarks. Each module in `src/algorithms/` is one algorithm.

plugworker_kit::algorithms!();

fn main() -> std::process::ExitCode {
    plugworker_kit::main(env!("CARGO_BIN_NAME"))
}

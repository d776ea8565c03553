//! `plugworker`: see `plugworker --help`.

fn main() -> std::process::ExitCode {
    plugworker_cli::main()
}

//! `image-runner`: image algorithms. Each module in `src/algorithms/` is one algorithm;
//! `settings` holds what they share, `live_gallery` how `meme_classifier` follows its
//! gallery while serving.

mod live_gallery;
mod settings;

plugworker_kit::algorithms!();

fn main() -> std::process::ExitCode {
    plugworker_kit::main(env!("CARGO_BIN_NAME"))
}

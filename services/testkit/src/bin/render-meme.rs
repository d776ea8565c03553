//! Renders a meme the way the tests do: `render-meme TEMPLATE TOP BOTTOM OUT.jpg`.
//! Used to make `scripts/demo/meme.jpg`, and handy for trying the runner by hand.

use plugworker_testkit::memes;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [template, top, bottom, out] = args.as_slice() else {
        eprintln!("usage: render-meme TEMPLATE TOP BOTTOM OUT.jpg");
        return ExitCode::from(2);
    };
    let template = memes::load(std::path::Path::new(template));
    let image = memes::caption(&template, top, bottom, &memes::fonts()[0]);
    if let Err(e) = std::fs::write(out, memes::jpeg_bytes(&image, 85)) {
        eprintln!("render-meme: {out}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

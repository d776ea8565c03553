//! Compiles `proto/` with the protoc binary shipped by the `protoc-bin-vendored` crate, so a
//! fresh machine needs nothing beyond crates.io to build.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with env!(): cargo reuses a compiled build script when the
    // workspace moves (a clone elsewhere sharing CARGO_TARGET_DIR), and a path baked in
    // at compile time would point at the old checkout.
    let proto_root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let runner = proto_root.join("plugworker/runner/v1/runner.proto");
    println!("cargo:rerun-if-changed={}", proto_root.display());

    if std::env::var_os("PROTOC").is_none() {
        // SAFETY: build scripts are single-threaded; nothing else reads the environment now.
        unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    }
    let descriptor = PathBuf::from(std::env::var("OUT_DIR")?).join("plugworker_descriptor.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptor)
        .compile_protos(&[runner], &[proto_root])?;
    Ok(())
}

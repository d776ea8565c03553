//! Generated code for plugworker's gRPC contracts (`proto/`).
//!
//! The `.proto` files are the source of truth; this crate only compiles them so every other
//! crate shares one copy of the generated types.

/// `plugworker.runner.v1`: the `Runner` service every runner serves.
pub mod runner {
    pub mod v1 {
        tonic::include_proto!("plugworker.runner.v1");
    }
}

/// Encoded `FileDescriptorSet` of every plugworker proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("plugworker_descriptor");

/// Fully qualified name of the runner service, as used by `grpc.health.v1` and reflection.
pub const RUNNER_SERVICE_NAME: &str = "plugworker.runner.v1.Runner";

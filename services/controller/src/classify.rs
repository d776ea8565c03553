//! gRPC status → error class and stable code (docs/architecture.md §4).

use plugworker_jobs::{ErrorClass, ErrorInfo, codes};
use tonic::Code;

/// Classifies a runner's (or the transport's) status.
pub fn status_error(status: &tonic::Status) -> ErrorInfo {
    let (code, class) = match status.code() {
        Code::InvalidArgument => (codes::INVALID_PAYLOAD, ErrorClass::Permanent),
        Code::FailedPrecondition => (codes::UNPROCESSABLE, ErrorClass::Permanent),
        Code::OutOfRange => (codes::PAYLOAD_TOO_LARGE, ErrorClass::Permanent),
        // Another instance (or a newer deployment) may serve it.
        Code::NotFound => (codes::ALGORITHM_NOT_SERVED, ErrorClass::Transient),
        Code::Unavailable => (codes::RUNNER_UNAVAILABLE, ErrorClass::Transient),
        Code::ResourceExhausted => (codes::RUNNER_BUSY, ErrorClass::Transient),
        Code::DeadlineExceeded | Code::Cancelled => (codes::TIMEOUT, ErrorClass::Transient),
        _ => (codes::RUNNER_ERROR, ErrorClass::Transient),
    };
    // Capped: a runner's message may quote the job.
    ErrorInfo::new(
        code,
        class,
        format!(
            "{:?}: {}",
            status.code(),
            plugworker_jobs::text::cap(status.message(), plugworker_jobs::MAX_ERROR_MESSAGE_CHARS)
        ),
    )
}

/// Whether a failed call should be tried once more on another instance right away.
pub fn retry_elsewhere(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_only_for_problems_of_the_job_itself() {
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::OutOfRange,
        ] {
            assert_eq!(
                status_error(&tonic::Status::new(code, "x")).class,
                ErrorClass::Permanent
            );
        }
        for code in [
            Code::Unavailable,
            Code::NotFound,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
            Code::Cancelled,
            Code::Internal,
            Code::Unknown,
        ] {
            assert_eq!(
                status_error(&tonic::Status::new(code, "x")).class,
                ErrorClass::Transient,
                "{code:?}"
            );
        }
    }
}

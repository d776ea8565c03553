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
            plugworker_jobs::text::cap(
                &described(status),
                plugworker_jobs::MAX_ERROR_MESSAGE_CHARS
            )
        ),
    )
}

/// The status's message, then each error behind it that the text does not already say: a
/// call that failed in the transport carries only "transport error" as its message, and
/// the causes are what tell a reset connection from a refused handshake.
fn described(status: &tonic::Status) -> String {
    plugworker_lifecycle::error_chain::with_causes(status.message().to_string(), causes(status))
}

/// Whether a failed call should be tried once more on another instance right away.
pub fn retry_elsewhere(status: &tonic::Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::NotFound)
}

/// Why a failed call provably never reached the runner's service, so sending it again (on
/// a fresh connection) cannot run the job twice. HTTP/2 says so in two ways (RFC 9113
/// §8.7), and hyper in a third:
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unprocessed {
    /// The runner reset the stream with `REFUSED_STREAM`: "closed prior to any
    /// processing" (a runner answers calls arriving on a connection it is closing so).
    RefusedStream,
    /// The runner's GOAWAY refused the stream: its ID is above the GOAWAY's last stream
    /// ID, or the call was started on the connection after the GOAWAY arrived (h2 then
    /// fails it without sending it).
    GoAway,
    /// hyper dropped the request before writing it: the connection was closing or closed
    /// (`is_canceled`: "connection closed", "connection was not ready").
    NotSent,
}

impl Unprocessed {
    pub fn label(self) -> &'static str {
        match self {
            Unprocessed::RefusedStream => "refused_stream",
            Unprocessed::GoAway => "goaway",
            Unprocessed::NotSent => "not_sent",
        }
    }
}

/// Whether `status` is a call the runner provably did not process ([`Unprocessed`]), read
/// from the HTTP/2 error in its cause chain; `None` when it may have run: any answer of
/// the runner's (a gRPC status), a reset other than `REFUSED_STREAM` (`CANCEL`,
/// `INTERNAL_ERROR`: the runner may have received the call), a connection lost with the
/// call open (h2 reports a broken pipe for streams at or below a GOAWAY's last stream ID,
/// which the runner may have processed), a GOAWAY or reset raised by the controller's own
/// h2 (a protocol error it detected), and connection failures (left to the retry on
/// another instance: an unreachable instance is no reason to call it again at once).
pub fn unprocessed(status: &tonic::Status) -> Option<Unprocessed> {
    for cause in causes(status) {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            // A stream the runner refused, or one its GOAWAY left out: both only when the
            // frame came from the runner.
            return if !h2.is_remote() {
                None
            } else if h2.is_go_away() {
                Some(Unprocessed::GoAway)
            } else if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
                Some(Unprocessed::RefusedStream)
            } else {
                None
            };
        }
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return Some(Unprocessed::NotSent);
        }
    }
    None
}

/// The errors behind a failed call, outermost first (tonic keeps the transport's error as
/// the status's source).
pub fn causes(status: &tonic::Status) -> impl Iterator<Item = &(dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(status), |error| error.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error behind a transport failure is in its result, not only "transport error";
    /// what the message already says is not repeated.
    #[test]
    fn a_transport_failure_names_its_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("transport error")]
        struct Transport(#[source] std::io::Error);
        let reset = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset by peer",
        );
        let status = tonic::Status::from_error(Box::new(Transport(reset)));
        assert_eq!(
            status_error(&status).message,
            "Unknown: transport error: connection reset by peer"
        );
        assert_eq!(
            status_error(&tonic::Status::unavailable("runner draining")).message,
            "Unavailable: runner draining"
        );
    }
    use plugworker_rpc::runner::v1::RunRequest;
    use plugworker_rpc::runner::v1::runner_client::RunnerClient;
    use std::future::poll_fn;
    use std::time::Duration;
    use tokio::net::TcpListener;

    /// What the HTTP/2 server on the other end of [`call`] does with the call.
    #[derive(Clone, Copy)]
    enum Runner {
        /// `RST_STREAM(REFUSED_STREAM)` at the call's headers.
        RefusesStreams,
        /// GOAWAY (last stream ID 0) as soon as the connection is up: the call is refused.
        GoesAwayAtOnce,
        /// Reads the whole call, then resets its stream with this reason.
        ResetsAfterReading(h2::Reason),
        /// Reads the whole call, sends GOAWAY (the call below its last stream ID), then
        /// closes the connection without answering.
        GoesAwayThenHangsUp,
    }

    /// The status a real tonic client gets from an HTTP/2 server (h2's) that behaves as
    /// `runner` says.
    async fn call(runner: Runner) -> tonic::Status {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut connection = h2::server::handshake(tcp).await.unwrap();
            // Runs the connection (writing what was queued) for at most `within`.
            macro_rules! drive {
                ($connection:expr, $within:expr) => {
                    tokio::time::timeout($within, poll_fn(|cx| $connection.poll_closed(cx)))
                };
            }
            if let Runner::GoesAwayAtOnce = runner {
                connection.abrupt_shutdown(h2::Reason::NO_ERROR);
                let _ = drive!(connection, Duration::from_secs(5)).await;
                return;
            }
            let (request, mut respond) = connection.accept().await.unwrap().unwrap();
            if let Runner::RefusesStreams = runner {
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                let _ = drive!(connection, Duration::from_secs(5)).await;
                return;
            }
            // The whole call arrives (the connection driven meanwhile): from here on the
            // runner may have run it.
            let mut body = request.into_body();
            tokio::select! {
                () = async { while let Some(Ok(_)) = body.data().await {} } => {}
                _ = drive!(connection, Duration::from_secs(5)) => {}
            }
            match runner {
                Runner::ResetsAfterReading(reason) => {
                    respond.send_reset(reason);
                    let _ = drive!(connection, Duration::from_secs(5)).await;
                }
                Runner::GoesAwayThenHangsUp => {
                    connection.graceful_shutdown();
                    // Both GOAWAYs out (the second after the client's PING answer).
                    let _ = drive!(connection, Duration::from_millis(300)).await;
                    drop(connection);
                    drop(respond);
                }
                Runner::RefusesStreams | Runner::GoesAwayAtOnce => unreachable!(),
            }
        });
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect_lazy();
        let status = RunnerClient::new(channel)
            .run(RunRequest {
                algorithm: "echo".into(),
                payload: b"{}".to_vec(),
            })
            .await
            .expect_err("the server answers no call");
        server.await.unwrap();
        status
    }

    #[tokio::test]
    async fn only_calls_the_runner_never_saw_count_as_unprocessed() {
        let refused = call(Runner::RefusesStreams).await;
        assert_eq!(
            unprocessed(&refused),
            Some(Unprocessed::RefusedStream),
            "{refused:?}"
        );
        let gone = call(Runner::GoesAwayAtOnce).await;
        assert_eq!(unprocessed(&gone), Some(Unprocessed::GoAway), "{gone:?}");
        // tonic maps a GOAWAY's NO_ERROR to INTERNAL: only the cause tells it apart.
        assert_eq!(gone.code(), Code::Internal, "{gone:?}");
        for reason in [h2::Reason::CANCEL, h2::Reason::INTERNAL_ERROR] {
            let reset = call(Runner::ResetsAfterReading(reason)).await;
            assert_eq!(unprocessed(&reset), None, "{reason:?}: {reset:?}");
        }
        let lost = call(Runner::GoesAwayThenHangsUp).await;
        assert_eq!(unprocessed(&lost), None, "{lost:?}");
        // A runner's own answer, whatever its code, was processed.
        assert_eq!(unprocessed(&tonic::Status::unavailable("busy")), None);
    }

    #[tokio::test]
    async fn a_request_hyper_never_wrote_is_unprocessed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut send, connection) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        // The connection gone before the request was handed to it.
        drop(connection);
        let error = send
            .send_request(tonic::codegen::http::Request::new(
                tonic::body::Body::empty(),
            ))
            .await
            .unwrap_err();
        assert!(error.is_canceled(), "{error:?}");
        // As tonic's channel turns it into a status.
        let status = tonic::Status::from_error(Box::new(error));
        assert_eq!(
            unprocessed(&status),
            Some(Unprocessed::NotSent),
            "{status:?}"
        );
    }

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

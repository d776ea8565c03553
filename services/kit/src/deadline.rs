//! The caller's deadline, from the `grpc-timeout` header (gRPC over HTTP/2 spec:
//! up to 8 digits and a unit H, M, S, m, u or n).

use std::time::{Duration, Instant};
use tonic::metadata::MetadataMap;

/// The kit's transport applies the same header with its own timer, until the response
/// starts (for a unary call, until the handler returns), and answers `CANCELLED` when it
/// fires, as tonic's server does. The Runner's deadline fires earlier, so callers get the
/// `DEADLINE_EXCEEDED` the contract promises: by a tenth of the timeout, between these
/// bounds. A fixed 3 ms was not enough on a loaded 2-core machine, where the kit's task
/// can be scheduled late.
const MIN_AHEAD_OF_TRANSPORT: Duration = Duration::from_millis(3);
const MAX_AHEAD_OF_TRANSPORT: Duration = Duration::from_millis(25);

tokio::task_local! {
    /// When the headers of the call being served arrived, set by [`StampArrival`] for the
    /// call's whole future.
    static ARRIVED: Instant;
}

/// When the headers of the call being served arrived, if [`StampArrival`] serves it.
pub(crate) fn arrived() -> Option<Instant> {
    ARRIVED.try_with(|arrived| *arrived).ok()
}

/// The Runner service with the arrival time of each call stamped before its body is read:
/// a large image can take a while to arrive, and the caller's `grpc-timeout` counts from
/// when it sent the headers.
///
/// The stamp is a task-local scoped to the call's future rather than a request extension:
/// inserting into the extensions map and dropping the entry cost an allocation and about
/// 400 instructions per call (docs/benchmarks.md, the runner kit under h2load). tonic's
/// generated service awaits the handler inside its future, so `RunnerService::run` sees
/// it. It wraps the one service that reads it, so the health and reflection routes do
/// not pay for it.
#[derive(Clone)]
pub(crate) struct StampArrival<S>(pub S);

impl<S: tonic::server::NamedService> tonic::server::NamedService for StampArrival<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for StampArrival<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tokio::task::futures::TaskLocalFuture<Instant, S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        ARRIVED.scope(Instant::now(), self.0.call(request))
    }
}

/// The deadline of a request that arrived at `arrived`, if the caller set one.
pub(crate) fn deadline(metadata: &MetadataMap, arrived: Instant) -> Option<Instant> {
    let timeout = grpc_timeout(metadata.as_ref())?;
    let ahead = (timeout / 10).clamp(MIN_AHEAD_OF_TRANSPORT, MAX_AHEAD_OF_TRANSPORT);
    Some(arrived + timeout.saturating_sub(ahead))
}

/// The caller's `grpc-timeout`, if it set a well-formed one (a malformed value is ignored,
/// as tonic does).
pub(crate) fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    // A key built once: looking up by `&str` validates and lowercases the name per call.
    static GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    parse(headers.get(&GRPC_TIMEOUT)?.to_str().ok()?)
}

fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    #[tokio::test]
    async fn the_wrapped_service_sees_when_the_call_arrived_not_when_it_was_polled() {
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(arrived())
        });
        let mut stamped = StampArrival(inner);
        let before = Instant::now();
        let call = stamped.ready().await.unwrap().call(http::Request::new(()));
        let called = Instant::now();
        // Polled later, as a call whose body takes a while to arrive would be.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let seen = call
            .await
            .unwrap()
            .expect("the stamp is visible inside the call");
        assert!(
            before <= seen && seen <= called,
            "stamped when called: {seen:?} not in [{before:?}, {called:?}]"
        );
        assert_eq!(arrived(), None, "and nowhere outside it");
    }

    #[test]
    fn the_deadline_comes_a_tenth_of_the_timeout_early_within_bounds() {
        let now = Instant::now();
        let with = |value: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().unwrap());
            deadline(&metadata, now).unwrap() - now
        };
        assert_eq!(with("300m"), Duration::from_millis(275));
        assert_eq!(with("100m"), Duration::from_millis(90));
        assert_eq!(with("10m"), Duration::from_millis(7));
        assert_eq!(with("60S"), Duration::from_millis(59_975));
        assert_eq!(deadline(&MetadataMap::new(), now), None);
    }

    #[test]
    fn parses_the_grpc_timeout_format() {
        assert_eq!(parse("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("10u"), Some(Duration::from_micros(10)));
        for bad in ["", "S", "5", "5s", "123456789S", "-1S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}

//! How a runner serves gRPC: hyper's HTTP/2 server, with the request routed to a service
//! by the gRPC service name in its path.
//!
//! tonic's `transport::Server` does the same job with more work per call: an axum router
//! (a path match whose captured parameters are inserted into the request's extensions,
//! an allocation), the connection's details copied into every request's extensions, the
//! request body boxed, the response body wrapped and boxed again on its way back, and a
//! layer that turns service errors into statuses (tonic's generated services cannot fail). A runner serves one hot
//! method, so the kit matches the service name itself and hands hyper's request body
//! straight to tonic's generated service. For the same handler that is about 11 % less
//! CPU per call (docs/benchmarks.md, "The kit's own HTTP/2 server").
//!
//! What tonic's server did and this one keeps:
//! - HTTP/2 only (prior knowledge on plaintext, ALPN `h2` over the mesh's TLS), TCP_NODELAY
//!   on accepted sockets (the caller's incoming stream sets it);
//! - tonic's HTTP/2 settings: no limit on concurrent streams (admission is the run slots'
//!   job, answered `RESOURCE_EXHAUSTED`, not a stream limit that makes callers queue),
//!   hyper's windows and frame sizes;
//! - `grpc-timeout` enforced for every call, answered `CANCELLED` when it passes (the Runner
//!   service answers `DEADLINE_EXCEEDED` a little earlier; see `deadline`);
//! - `UNIMPLEMENTED` for a service this port does not serve;
//! - a graceful stop: no new connections, GOAWAY on every open one, calls in flight
//!   finish, then the server returns.
//!
//! What it leaves out: the connection's details in each request (nothing in the kit reads
//! them; the mesh authorizes whole connections before they reach this server), and
//! tonic's optional layers (concurrency limit, load shed, tracing), which the kit does
//! itself.
//!
//! It differs in two small ways: it keeps hyper's limit of 1 024 streams reset for errors
//! on one connection before the connection is closed (tonic's settings lift it), and it
//! sends no `date` header (gRPC does not use one).

use futures::{Stream, StreamExt};
use http::{HeaderName, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;
use tower::util::BoxCloneSyncService;

/// How long to wait before accepting again after `accept` failed (out of file
/// descriptors, typically): retrying at once would spin on the error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A service of the other routes: boxed, since they are called rarely (health checks,
/// reflection) and boxing keeps [`Routes`] one type whatever they are.
type BoxedGrpcService = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// The gRPC services one port serves, found by service name. `P`, the primary service, is
/// the one the port exists for (the Runner on the main port, health on the health port):
/// it is called without boxing; the others are boxed.
///
/// Every service here is one of tonic's generated servers (or a wrapper of one that
/// forwards `poll_ready`), which are always ready: `poll_ready` returns `Ready(Ok(()))`
/// unconditionally. So each call clones the service and calls it directly, as tonic's own
/// router does, without waiting for readiness first.
#[derive(Clone)]
pub(crate) struct Routes<P> {
    primary: P,
    others: Arc<[(&'static str, BoxedGrpcService)]>,
}

impl<P> Routes<P>
where
    P: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + 'static,
    P::Future: Send + 'static,
{
    /// Routes with `primary` alone.
    pub(crate) fn new(primary: P) -> Self {
        Self {
            primary,
            others: Arc::new([]),
        }
    }

    /// Also serves `service`, under its gRPC service name.
    pub(crate) fn with<S>(self, service: S) -> Self
    where
        S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let mut others = self.others.to_vec();
        others.push((S::NAME, BoxCloneSyncService::new(service)));
        Self {
            primary: self.primary,
            others: others.into(),
        }
    }
}

impl<P> hyper::service::Service<Request<Incoming>> for Routes<P>
where
    P: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + NamedService
        + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture<P::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let timeout = request
            .headers()
            .get(&GRPC_TIMEOUT)
            .and_then(|value| crate::deadline::parse(value.to_str().ok()?));
        let routed = match service_name(request.uri().path()) {
            Some(name) if name == P::NAME => Routed::Primary {
                future: self.primary.clone().call(request),
            },
            Some(name) => match self.others.iter().find(|(other, _)| *other == name) {
                Some((_, service)) => Routed::Other {
                    future: service.clone().call(request),
                },
                None => Routed::Answered {
                    response: Some(unimplemented(name)),
                },
            },
            None => Routed::Answered {
                response: Some(unimplemented(request.uri().path())),
            },
        };
        RouteFuture {
            routed,
            timeout: timeout.map(tokio::time::sleep),
        }
    }
}

/// `grpc-timeout`, built once: a lookup by `&str` validates the name on every call.
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The service name of a gRPC path, `/{service}/{method}`.
fn service_name(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some(service)
}

fn unimplemented(what: &str) -> Response<Body> {
    tonic::Status::unimplemented(format!("no such gRPC service here: {what}")).into_http()
}

pin_project_lite::pin_project! {
    /// The response to one call: the routed service's, unless its `grpc-timeout` passes
    /// first.
    pub(crate) struct RouteFuture<F> {
        #[pin]
        routed: Routed<F>,
        #[pin]
        timeout: Option<tokio::time::Sleep>,
    }
}

pin_project_lite::pin_project! {
    #[project = RoutedProjection]
    enum Routed<F> {
        Primary { #[pin] future: F },
        Other { future: <BoxedGrpcService as Service<Request<Incoming>>>::Future },
        // Answered without a service (`Some` until polled).
        Answered { response: Option<Response<Body>> },
    }
}

impl<F> Future for RouteFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answered = match this.routed.project() {
            RoutedProjection::Primary { future } => future.poll(cx),
            RoutedProjection::Other { future } => future.as_mut().poll(cx),
            RoutedProjection::Answered { response } => Poll::Ready(Ok(response
                .take()
                .expect("a RouteFuture is not polled after it completed"))),
        };
        if answered.is_ready() {
            return answered;
        }
        let timed_out = this
            .timeout
            .as_pin_mut()
            .is_some_and(|timeout| timeout.poll(cx).is_ready());
        if timed_out {
            // What tonic's server answers when a call's `grpc-timeout` passes.
            return Poll::Ready(Ok(tonic::Status::cancelled("Timeout expired").into_http()));
        }
        Poll::Pending
    }
}

/// Serves `routes` on every connection `incoming` yields until `stop` completes. Then it
/// stops accepting (dropping `incoming`, which closes the listener), asks every open
/// connection to close (GOAWAY: calls in flight finish, no new ones start) and returns
/// once they all have.
///
/// An `accept` error is logged and retried after a pause; the mesh's incoming stream
/// yields none (it handles refusals itself).
pub(crate) async fn serve<I, IO, P>(incoming: I, routes: Routes<P>, stop: impl Future<Output = ()>)
where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    P::Future: Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(None)
        .auto_date_header(false);
    let graceful = GracefulShutdown::new();
    {
        let mut incoming = std::pin::pin!(incoming);
        let mut stop = std::pin::pin!(stop);
        loop {
            let io = tokio::select! {
                () = &mut stop => break,
                next = incoming.next() => match next {
                    Some(Ok(io)) => io,
                    Some(Err(error)) => {
                        tracing::warn!(%error, pause = ?ACCEPT_ERROR_PAUSE, "cannot accept a gRPC connection");
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                        continue;
                    }
                    None => break,
                },
            };
            let connection =
                graceful.watch(builder.serve_connection(TokioIo::new(io), routes.clone()));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "gRPC connection ended with an error");
                }
            });
        }
    }
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_name_is_the_first_of_exactly_two_path_segments() {
        assert_eq!(
            service_name("/plugworker.runner.v1.Runner/Run"),
            Some("plugworker.runner.v1.Runner")
        );
        assert_eq!(
            service_name("/grpc.health.v1.Health/Check"),
            Some("grpc.health.v1.Health")
        );
        for bad in [
            "",
            "/",
            "/Runner",
            "/Runner/",
            "//Run",
            "Runner/Run",
            "/a/b/c",
        ] {
            assert_eq!(service_name(bad), None, "{bad:?}");
        }
    }
}

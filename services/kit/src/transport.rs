//! How a runner serves gRPC: hyper's HTTP/2 server, with the request routed to a service
//! by the gRPC service name in its path.
//!
//! tonic's `transport::Server` does the same job with more work per call: an axum router
//! (a path match whose captured parameters are inserted into the request's extensions,
//! an allocation), the connection's details copied into every request's extensions, the
//! request body boxed, the response body wrapped and boxed again on its way back, and a
//! layer that turns service errors into statuses (tonic's generated services cannot
//! fail). A runner serves one hot method, so the kit matches the service name itself and
//! hands hyper's request body straight to tonic's generated service. For the same handler
//! that is about 11 % less CPU per call (docs/benchmarks.md, "The kit's own HTTP/2
//! server").
//!
//! What tonic's server did and this one keeps:
//! - HTTP/2 only (prior knowledge on plaintext, ALPN `h2` over the mesh's TLS), TCP_NODELAY
//!   on accepted sockets (the caller's incoming stream sets it);
//! - tonic's HTTP/2 settings: no limit on concurrent streams (admission is the run slots'
//!   job, answered `RESOURCE_EXHAUSTED`, not a stream limit that makes callers queue),
//!   hyper's windows and frame sizes;
//! - `grpc-timeout` enforced for every call until its response starts (for a unary call,
//!   until the handler returns), answered `CANCELLED` when it passes (the Runner service
//!   answers `DEADLINE_EXCEEDED` a little earlier; see `deadline`);
//! - `UNIMPLEMENTED` for a service this port does not serve;
//! - a graceful stop: no new connections, GOAWAY on every open one, calls in flight
//!   finish, then the server returns.
//!
//! What it leaves out: the connection's details in each request (nothing in the kit reads
//! them; the mesh authorizes whole connections before they reach this server), and
//! tonic's optional layers (concurrency limit, load shed, tracing), which the kit does
//! itself.
//!
//! It differs in two ways. It sends no `date` header (gRPC does not use one). And it keeps
//! hyper's guard against stream-reset floods, which tonic's settings lift: a connection on
//! which this server has had to reset 1 024 streams for protocol errors (counted over the
//! connection's life) is closed with GOAWAY, failing the calls in flight on it. A
//! well-behaved client does not cause such resets (the reset after an early answer is not
//! counted); without the guard, any client that reaches the port could make the server
//! spend its time on streams it resets.

use futures::{Stream, StreamExt};
use http::{Request, Response};
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

/// A gRPC service a port can route to: one of tonic's generated servers (or a wrapper of
/// one), which take hyper's request as it comes and cannot fail.
pub(crate) trait GrpcService:
    Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send>
    + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: Service<Request<Incoming>, Response = Response<Body>, Error = Infallible, Future: Send>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A service of the other routes: boxed, since they are called rarely (health checks,
/// reflection) and boxing keeps [`Routes`] one type whatever they are.
type BoxedGrpcService = BoxCloneSyncService<Request<Incoming>, Response<Body>, Infallible>;

/// The gRPC services one port serves, found by service name. `P`, the primary service, is
/// the one the port exists for (the Runner on the main port, health on the health port):
/// it is called without boxing; the others are boxed.
///
/// Every service given must be always ready: `poll_ready` returns `Ready(Ok(()))`
/// unconditionally, as tonic's generated servers do (and [`StampArrival`], which forwards
/// it). So each call clones the service and calls it without polling for readiness first,
/// which saves a step per call. A service with backpressure (a tower concurrency limit, a
/// buffer) must not be routed here: calling it without `poll_ready` would panic or bypass
/// the limit. `tests::the_services_the_kit_routes_are_always_ready` checks the kit's.
///
/// [`StampArrival`]: crate::deadline::StampArrival
#[derive(Clone)]
pub(crate) struct Routes<P> {
    primary: P,
    others: Arc<[(&'static str, BoxedGrpcService)]>,
}

impl<P: GrpcService> Routes<P> {
    /// Routes with `primary` alone.
    pub(crate) fn new(primary: P) -> Self {
        Self {
            primary,
            others: Arc::new([]),
        }
    }

    /// Also serves `service`, under its gRPC service name.
    pub(crate) fn with<S: GrpcService>(self, service: S) -> Self {
        let mut others = self.others.to_vec();
        others.push((S::NAME, BoxCloneSyncService::new(service)));
        Self {
            primary: self.primary,
            others: others.into(),
        }
    }
}

impl<P: GrpcService> hyper::service::Service<Request<Incoming>> for Routes<P> {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture<P::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let timeout = crate::deadline::grpc_timeout(request.headers());
        let routed = match service_name(request.uri().path()) {
            Some(name) if name == P::NAME => Routed::Primary {
                future: self.primary.clone().call(request),
            },
            Some(name) => match self.others.iter().find(|(other, _)| *other == name) {
                Some((_, service)) => Routed::Other {
                    future: service.clone().call(request),
                },
                None => Routed::Answered {
                    response: Some(unimplemented_response(name)),
                },
            },
            None => Routed::Answered {
                response: Some(unimplemented_response(request.uri().path())),
            },
        };
        RouteFuture {
            routed,
            timeout: timeout.map(tokio::time::sleep),
        }
    }
}

/// The service name of a gRPC path, `/{service}/{method}`.
fn service_name(path: &str) -> Option<&str> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/')).then_some(service)
}

fn unimplemented_response(what: &str) -> Response<Body> {
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

/// Serves `routes` on every connection `incoming` yields until `stop` completes (or
/// `incoming` ends, which only happens if its accept loop died). Then it stops accepting
/// (dropping `incoming`, which closes the listener), asks every open connection to close
/// (GOAWAY: calls in flight finish, no new ones start) and returns once they all have.
///
/// An `accept` error is logged and retried after a pause; the mesh's incoming stream
/// yields none (it handles refusals itself).
pub(crate) async fn serve<I, IO, P>(incoming: I, routes: Routes<P>, stop: impl Future<Output = ()>)
where
    I: Stream<Item = std::io::Result<IO>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: GrpcService,
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
                        tracing::warn!(
                            %error,
                            pause = ?ACCEPT_ERROR_PAUSE,
                            "cannot accept a gRPC connection"
                        );
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

    fn is_ready<S: Service<Request<Incoming>>>(mut service: S) -> bool {
        let mut context = Context::from_waker(std::task::Waker::noop());
        matches!(service.poll_ready(&mut context), Poll::Ready(Ok(())))
    }

    /// The routes skip `poll_ready` (see [`Routes`]): the services the kit routes must be
    /// ready whenever asked, the Runner's (the same generated code) included.
    #[test]
    fn the_services_the_kit_routes_are_always_ready() {
        let (_, health) = tonic_health::server::health_reporter();
        assert!(is_ready(health.clone()));
        assert!(is_ready(crate::deadline::StampArrival(health)));
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(plugworker_rpc::FILE_DESCRIPTOR_SET)
            .build_v1()
            .unwrap();
        assert!(is_ready(reflection));
    }

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

//! How a runner serves gRPC: hyper's HTTP/2 server, with the request routed to a service
//! by the gRPC service name in its path.
//!
//! tonic's `transport::Server` does the same job with more work per call: an axum router
//! (a path match whose captured parameters are inserted into the request's extensions,
//! an allocation), the connection's details copied into every request's extensions, the
//! request body boxed, the response body wrapped and boxed again on its way back, and a
//! layer that turns service errors into statuses (tonic's generated services cannot
//! fail). A runner serves one hot method, so the kit matches the service name itself and
//! hands hyper's request body, wrapped unboxed to read it within the port's bounds, to
//! tonic's generated service (docs/benchmarks.md, "The kit's own HTTP/2 server").
//!
//! What tonic's server did and this one keeps:
//! - HTTP/2 only (prior knowledge on plaintext, ALPN `h2` over the mesh's TLS), TCP_NODELAY
//!   on accepted sockets (the caller's incoming stream sets it);
//! - `grpc-timeout` enforced for every call until its response starts (for a unary call,
//!   until the handler returns), answered `CANCELLED` when it passes (the Runner service
//!   answers `DEADLINE_EXCEEDED` a little earlier; see `deadline`);
//! - `UNIMPLEMENTED` for a service this port does not serve;
//! - the connection's details in each request's extensions, as one `Arc` per connection
//!   (`Arc<TcpConnectInfo>` on plaintext ports, `Arc<MeshConnectInfo>` over the mesh:
//!   the peer's address and SPIFFE ID), cloned into each call;
//! - a graceful stop: no new connections, GOAWAY on every open one, calls in flight
//!   finish, then the server returns.
//!
//! What it adds: every port is served within stated bounds, [`ServerParams`] (set from
//! the runner's flags in `config.rs`, listed in docs/runner-bounds.md), so that what a
//! client can make a runner hold is bounded by its configuration, not by its clients:
//! connections per port (at the cap the oldest idle one is closed), streams per
//! connection, header, idle and body timeouts, keepalive pings, a maximum connection age,
//! flow-control windows, and a per-port budget of request bytes being received (see
//! [`RequestBody`]: tonic's decoder reads whatever arrives, so windows alone do not bound
//! it). Each bound that acts is counted (`metrics::ServerMetrics`).
//!
//! It differs from tonic's server in two more ways. It sends no `date` header (gRPC does
//! not use one). And it keeps hyper's guard against stream-reset floods, which tonic's
//! settings lift: a connection on which this server has had to reset 1 024 streams for
//! protocol errors (counted over the connection's life) is closed with GOAWAY, failing
//! the calls in flight on it. A well-behaved client does not cause such resets (the reset
//! after an early answer is not counted); without the guard, any client that reaches the
//! port could make the server spend its time on streams it resets.

use futures::{Stream, StreamExt};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::Connected;
use tower::Service;
use tower::util::BoxCloneSyncService;

/// How long to wait before accepting again after `accept` failed (out of file
/// descriptors, typically): retrying at once would spin on the error.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// A gRPC service a port can route to: one of tonic's generated servers (or a wrapper of
/// one), which take hyper's request as it comes and cannot fail.
pub(crate) trait GrpcService:
    Service<Request<RequestBody>, Response = Response<Body>, Error = Infallible, Future: Send>
    + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> GrpcService for S where
    S: Service<Request<RequestBody>, Response = Response<Body>, Error = Infallible, Future: Send>
        + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A service of the other routes: boxed, since they are called rarely (health checks,
/// reflection) and boxing keeps [`Routes`] one type whatever they are.
type BoxedGrpcService = BoxCloneSyncService<Request<RequestBody>, Response<Body>, Infallible>;

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

impl<P: GrpcService> Routes<P> {
    /// The call, handed to the service its path names.
    fn route(&self, request: Request<RequestBody>) -> RouteFuture<P::Future> {
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
        Other { future: <BoxedGrpcService as Service<Request<RequestBody>>>::Future },
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

/// The bounds of one port's HTTP/2 server, in one place: `config.rs` sets them from the
/// runner's flags (`RunnerConfig::server_params`, `RunnerConfig::health_server_params`),
/// and docs/runner-bounds.md lists them with their defaults and the memory they bound.
#[derive(Clone, Debug)]
pub(crate) struct ServerParams {
    /// The port's name in metrics: `main` or `health`.
    pub port: &'static str,
    /// Connections open at once. At the cap a new connection makes the oldest idle one
    /// close (or the oldest one, if none is idle); see [`Port::open`].
    pub max_connections: usize,
    /// Streams (calls) open at once on one connection (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`:
    /// a client that opens more gets `REFUSED_STREAM`).
    pub max_concurrent_streams: u32,
    /// A new connection must send the headers of its first call within this.
    pub header_read_timeout: Duration,
    /// A connection without an open stream this long is closed (GOAWAY).
    pub idle_timeout: Duration,
    /// Longest silence inside a request body (or wait for the port's body budget); then
    /// the call is answered `UNAVAILABLE` and its stream reset.
    pub body_read_timeout: Duration,
    /// HTTP/2 PING sent after this long without a frame from the client...
    pub keepalive_interval: Duration,
    /// ...and the connection closed if the PING is not answered within this.
    pub keepalive_timeout: Duration,
    /// A connection older than this gets GOAWAY (calls in flight finish)...
    pub max_connection_age: Duration,
    /// ...and is closed this long after GOAWAY, whatever is still in flight.
    pub max_connection_age_grace: Duration,
    /// HTTP/2 flow-control window of each stream: request bytes a client may send that
    /// the server has not read yet.
    pub stream_window_bytes: u32,
    /// The same for the whole connection: what one connection can make the server buffer
    /// unread, however many streams it opens.
    pub connection_window_bytes: u32,
    /// Request-body bytes all calls on this port together may have reserved for messages
    /// being received (a message over one frame reserves its whole length at its prefix
    /// and releases it once decoded). A body that needs more waits, within
    /// `body_read_timeout`. At least `max_message_bytes` + 5, so every legal message fits.
    pub max_receiving_bytes: usize,
    /// Longest a call's response may last (`None`: unbounded). The health port sets it,
    /// so a `Watch` (a stream that never ends) cannot hold a connection forever.
    pub max_call_duration: Option<Duration>,
    /// Largest gRPC message any service on this port accepts: a message declared larger
    /// is refused at its prefix (`OUT_OF_RANGE`, as tonic does). Each service's own
    /// smaller limit is tonic's to enforce, also at the prefix.
    pub max_message_bytes: usize,
}

/// The largest HTTP/2 DATA frame the server accepts (`SETTINGS_MAX_FRAME_SIZE`, hyper's
/// default): a request body reads at most this much at a time, which is what it reserves
/// from its port's budget before each read.
const MAX_FRAME_BYTES: u32 = 16 * 1024;

/// Largest header block of one call (hyper's default, stated here as a bound).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// How long an idle connection closed at the cap or by a timeout may take to see its
/// GOAWAY before its socket is closed: it has no call in flight to finish. A well-behaved
/// client ends the connection within a round trip; the grace only bounds one that does
/// not. It must also cover a call the client sent as the GOAWAY left, whose headers a
/// busy runner may read late: cut before they are read, that call dies mid-send (seen at
/// 100 ms on a loaded 2-core machine). Sockets stay bounded without a short grace: the
/// port closes connections outright at 1.5 × its cap. If a call arrived with the GOAWAY
/// and is still open at its end, the connection gets `max_connection_age_grace` more (see
/// [`drive`]).
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// How long a connection's socket is still read (and what arrives discarded) after the
/// server is done with it, before it is closed: see [`Lingering`].
const LINGER: Duration = Duration::from_secs(2);

/// Why the server refused or closed a connection, or reset a stream: the `reason` label
/// of `plugworker_runner_server_closed_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// A connection closed outright (no GOAWAY): the port was at its cap plus the slack
    /// for connections still closing, and this was the oldest of those.
    ClosedAtCap,
    /// The oldest (idle, if one was) connection closed to make room for a new one.
    Evicted,
    /// No call's headers within `header_read_timeout` of the connection's start.
    HeaderTimeout,
    /// No open stream for `idle_timeout`.
    IdleTimeout,
    /// A request body silent for `body_read_timeout`: the call answered `UNAVAILABLE`.
    BodyTimeout,
    /// `max_connection_age` reached.
    MaxAge,
    /// Closed this long after its GOAWAY with calls still open (`max_connection_age_grace`).
    GraceExpired,
    /// Mesh: authorize, asked again, no longer allows the client (GOAWAY).
    Deauthorized,
    /// Mesh: the client certificate the connection was accepted with reached its
    /// `NotAfter` (GOAWAY).
    CertificateExpired,
    /// A call declaring a message over the port's `max_message_bytes`: refused at its
    /// prefix.
    MessageTooLarge,
    /// A call that would wait for the receiving budget behind as many calls of its own
    /// connection as that connection's window can hold: answered `UNAVAILABLE` at once
    /// (see [`RequestBody`]).
    BudgetBusy,
}

impl Reason {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::ClosedAtCap => "closed_at_cap",
            Reason::Evicted => "evicted",
            Reason::HeaderTimeout => "header_timeout",
            Reason::IdleTimeout => "idle_timeout",
            Reason::BodyTimeout => "body_timeout",
            Reason::MaxAge => "max_age",
            Reason::GraceExpired => "grace_expired",
            Reason::Deauthorized => "deauthorized",
            Reason::CertificateExpired => "certificate_expired",
            Reason::MessageTooLarge => "message_too_large",
            Reason::BudgetBusy => "budget_busy",
        }
    }
}

/// One port: its bounds, its request-body budget, its metrics and its open connections.
struct Port {
    params: ServerParams,
    /// Permits are bytes: see [`ServerParams::max_receiving_bytes`] and [`RequestBody`].
    budget: Arc<Semaphore>,
    metrics: crate::metrics::PortMetrics,
    open: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Sockets lingering after their connection ended ([`Lingering`]): half the cap at
    /// most, so a port holds at most 2 × `max_connections` sockets in all.
    lingering: Arc<Semaphore>,
}

impl Port {
    /// Registers a new connection. At the cap, the oldest idle connection is told to close
    /// (the oldest busy one if none is idle: a flood of connections that each keep a stream
    /// open must not lock out Consul's check), and the new one is served at once. A
    /// connection that has had no call yet and is younger than the header timeout is not
    /// told to close: it may be the next health check, its headers still on their way (a
    /// reconnect flood would otherwise evict each check before it is read).
    /// Connections told to close hold their sockets until they have (an idle one within
    /// [`IDLE_CLOSE_GRACE`]); when those fill the slack of half the cap again, the oldest
    /// of them is closed outright. So a port never holds more than 1.5 × `max_connections`
    /// connections (and half a cap of sockets [`Lingering`] after theirs ended), and a new
    /// connection (the next health check) is always served.
    fn open(self: &Arc<Self>, next_id: u64) -> Arc<Connection> {
        let mut open = self.open.lock().expect("connection table lock");
        let cap = self.params.max_connections.max(1);
        let now = Instant::now();
        // No call yet, within the header timeout: its first call's headers may still be on
        // their way (a health check's, say), so it is not idle yet.
        let young = |c: &Connection| {
            c.idle_since_ms.load(Ordering::Acquire) == NEVER
                && now.duration_since(c.accepted) < self.params.header_read_timeout
        };
        if open.len() >= cap {
            let oldest = open
                .values()
                .filter(|c| !c.closing.load(Ordering::Acquire) && !young(c))
                .min_by_key(|c| (c.streams.load(Ordering::Acquire) > 0, c.accepted));
            if let Some(oldest) = oldest {
                let grace = if oldest.streams.load(Ordering::Acquire) == 0 {
                    IDLE_CLOSE_GRACE
                } else {
                    self.params.max_connection_age_grace
                };
                oldest.close(Reason::Evicted, grace);
            }
        }
        if open.len() >= cap + cap / 2 {
            // Closing ones first, then idle old ones, then idle young ones, then busy
            // ones: what a flood of new connections closes last is a call in progress.
            let oldest = open
                .values()
                .min_by_key(|c| {
                    (
                        !c.closing.load(Ordering::Acquire),
                        c.streams.load(Ordering::Acquire) > 0,
                        young(c),
                        c.accepted,
                    )
                })
                .map(|c| c.id);
            if let Some(closed) = oldest.and_then(|id| open.remove(&id)) {
                self.metrics.connections.dec();
                self.metrics.closed(Reason::ClosedAtCap);
                if let Some(task) = closed.task.get() {
                    task.abort();
                }
            }
        }
        let connection = Arc::new(Connection {
            port: self.clone(),
            id: next_id,
            accepted: Instant::now(),
            streams: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(NEVER),
            close: CancellationToken::new(),
            closing: AtomicBool::new(false),
            grace_ms: AtomicU64::new(0),
            refusing: AtomicBool::new(false),
            task: OnceLock::new(),
            waiting_for_budget: AtomicU32::new(0),
            ended: AtomicBool::new(false),
        });
        open.insert(next_id, connection.clone());
        self.metrics.connections.inc();
        connection
    }

    /// Streams open on the port's connections (read when metrics are scraped).
    fn open_streams(&self) -> u64 {
        let open = self.open.lock().expect("connection table lock");
        open.values()
            .map(|c| u64::from(c.streams.load(Ordering::Relaxed)))
            .sum()
    }

    fn forget(&self, id: u64) {
        let removed = self.open.lock().expect("connection table lock").remove(&id);
        if removed.is_some() {
            self.metrics.connections.dec();
        }
    }
}

/// `idle_since_ms` before the connection's first stream.
const NEVER: u64 = u64::MAX;

/// One open connection, shared by its task and its streams.
struct Connection {
    port: Arc<Port>,
    id: u64,
    accepted: Instant,
    /// Streams open on it: calls whose response has not been sent (or reset) yet.
    streams: AtomicU32,
    /// Milliseconds after `accepted` at which its last stream ended ([`NEVER`] before the
    /// first): a clock read when a connection goes idle, not on every call.
    idle_since_ms: AtomicU64,
    /// Cancelled to make the connection close: GOAWAY, then closed after `grace_ms`.
    close: CancellationToken,
    closing: AtomicBool,
    grace_ms: AtomicU64,
    /// Set when its client is no longer authorized, or the client certificate it was
    /// accepted with has expired: new calls are refused with `REFUSED_STREAM` (calls in
    /// flight finish within the grace).
    refusing: AtomicBool,
    /// Its task, aborted (the socket closed outright) when the port needs the room.
    task: OnceLock<tokio::task::AbortHandle>,
    /// Its calls' bodies waiting for the receiving budget ([`RequestBody`]).
    waiting_for_budget: AtomicU32,
    /// Set when its task ends by itself (not aborted): its socket then lingers.
    ended: AtomicBool,
}

impl Connection {
    /// Tells the connection to close (once), counting why; `false` if it already was.
    fn close(&self, reason: Reason, grace: Duration) -> bool {
        let first = !self.closing.swap(true, Ordering::AcqRel);
        if first {
            self.grace_ms.store(
                grace.as_millis().min(u64::MAX as u128) as u64,
                Ordering::Release,
            );
            self.port.metrics.closed(reason);
            self.close.cancel();
        }
        first
    }

    /// When the connection will have been idle too long (and why), or `None` while a
    /// stream is open.
    fn idle_deadline(&self) -> Option<(Instant, Reason)> {
        if self.streams.load(Ordering::Acquire) > 0 {
            return None;
        }
        let params = &self.port.params;
        Some(match self.idle_since_ms.load(Ordering::Acquire) {
            NEVER => (
                self.accepted + params.header_read_timeout,
                Reason::HeaderTimeout,
            ),
            since => (
                self.accepted + Duration::from_millis(since) + params.idle_timeout,
                Reason::IdleTimeout,
            ),
        })
    }
}

/// Counts a stream as open on its connection (and port) while it lives: it moves into the
/// response body, which hyper drops once the response is sent or the stream is reset.
struct StreamGuard(Arc<Connection>);

impl StreamGuard {
    fn new(connection: Arc<Connection>) -> Self {
        connection.streams.fetch_add(1, Ordering::AcqRel);
        Self(connection)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let connection = &self.0;
        if connection.streams.fetch_sub(1, Ordering::AcqRel) == 1 {
            let since = connection
                .accepted
                .elapsed()
                .as_millis()
                .min(NEVER as u128 - 1);
            connection
                .idle_since_ms
                .store(since as u64, Ordering::Release);
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's response body, holding its stream's [`StreamGuard`], and ended (its
    /// stream reset) at the port's `max_call_duration` when it has one.
    pub(crate) struct ResponseBody {
        #[pin]
        inner: Body,
        #[pin]
        ends: Option<tokio::time::Sleep>,
        _stream: StreamGuard,
    }
}

impl hyper::body::Body for ResponseBody {
    type Data = <Body as hyper::body::Body>::Data;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = this.inner.poll_frame(cx);
        if frame.is_pending()
            && let Some(ends) = this.ends.as_pin_mut()
            && ends.poll(cx).is_ready()
        {
            // A never-ending stream (a health Watch) holds its connection busy, out of
            // reach of the idle timeout: it ends here (its stream reset; clients watch
            // again on a new call).
            return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(
                "this port bounds how long a call lasts",
            ))));
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

pin_project_lite::pin_project! {
    /// A call's request body as the services read it: hyper's, read against the port's
    /// byte budget and timed for silence.
    ///
    /// Reading a DATA frame returns its bytes to the client's flow-control window, so
    /// what the windows bound is only what nobody has read; tonic's decoder reads
    /// everything that arrives and buffers it until its message is whole. So the body
    /// follows the gRPC messages in it: once a message's 5-byte prefix has arrived, a
    /// message larger than one frame reserves its whole declared length (plus the prefix)
    /// from the port's budget at once, before the body is read further, and keeps it until
    /// the decoder asks for more after the message (it has decoded it by then) or the body
    /// is dropped. The budget's semaphore is fair, so calls that together need more than
    /// the budget get it in turn and complete one after another (a reservation frame by
    /// frame would let each hold a part and all wait for the rest). A message declared
    /// larger than the port's `max_message_bytes` is refused at its prefix, so a call never
    /// holds more than `max_message_bytes` + 5 bytes of budget. A body that cannot get its
    /// budget stops reading: its client's windows fill and it must wait (within
    /// `body_read_timeout`). Bytes read without the budget: under two frames per open stream.
    ///
    /// What a waiting body leaves unread also fills its connection's window, which the
    /// calls holding the budget need for the rest of their messages: if the calls waiting
    /// on one connection could fill its whole window, a call holding the budget on that
    /// connection would starve, and everything on it would wait until the body timeout.
    /// So a body waits only while its connection's waiting bodies, itself included, hold
    /// less than the connection window at their stream windows (3 with the defaults);
    /// beyond that the call is answered `UNAVAILABLE` at once, before its service has
    /// seen its message (the controller retries it).
    pub(crate) struct RequestBody {
        #[pin]
        inner: Incoming,
        // Its port reached through it: the connection's Arc is cloned, not the port's,
        // which every call on every connection would share.
        connection: Arc<Connection>,
        // Permits held (bytes): the current message's reservation.
        held: usize,
        messages: Messages,
        // Waiting for the budget (boxed: only when the budget is spent).
        acquiring: Option<Acquiring>,
        // Armed when the body has nothing to give: its silence.
        #[pin]
        silence: Option<tokio::time::Sleep>,
    }

    impl PinnedDrop for RequestBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if *this.held > 0 {
                this.connection.port.budget.add_permits(*this.held);
            }
            if this.acquiring.is_some() {
                this.connection.waiting_for_budget.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

impl RequestBody {
    fn new(inner: Incoming, connection: Arc<Connection>) -> Self {
        Self {
            inner,
            connection,
            held: 0,
            messages: Messages::default(),
            acquiring: None,
            silence: None,
        }
    }
}

/// Where a request body is in its gRPC messages, and what that asks of the budget.
#[derive(Default)]
struct Messages {
    /// Bytes of the current message's prefix seen (0 to 5), and its declared length.
    prefix_seen: u8,
    declared: u32,
    /// Bytes of the current message's payload still to come.
    remaining: usize,
    /// Permits to return at the next poll: the previous message's reservation.
    release: usize,
    /// Permits the current message needs before the body is read further.
    wanted: usize,
}

impl Messages {
    /// Follows the messages through `data` (the body's next bytes), `held` being what the
    /// body holds: when a message's prefix completes, the message before it is to be
    /// released and this one reserves its whole length (if over a frame). `Err` with the
    /// declared length when it is over `max`.
    fn follow(&mut self, data: &[u8], held: usize, max: usize) -> Result<(), u32> {
        let mut rest = data;
        while !rest.is_empty() {
            if self.prefix_seen == 5 {
                let taken = self.remaining.min(rest.len());
                self.remaining -= taken;
                rest = &rest[taken..];
                if self.remaining == 0 {
                    self.prefix_seen = 0;
                }
                continue;
            }
            // Byte 0 is the compression flag, bytes 1 to 4 the length (big-endian).
            if self.prefix_seen == 0 {
                self.declared = 0;
            } else {
                self.declared = (self.declared << 8) | u32::from(rest[0]);
            }
            self.prefix_seen += 1;
            rest = &rest[1..];
            if self.prefix_seen == 5 {
                let length = self.declared as usize;
                if length > max {
                    return Err(self.declared);
                }
                // The message before this one is decoded once the decoder asks for more.
                self.release = held;
                let total = length + 5;
                self.wanted = if total > MAX_FRAME_BYTES as usize {
                    total
                } else {
                    0
                };
                self.remaining = length;
                if length == 0 {
                    self.prefix_seen = 0;
                }
            }
        }
        Ok(())
    }
}

impl hyper::body::Body for RequestBody {
    type Data = hyper::body::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        if this.messages.release > 0 {
            this.connection
                .port
                .budget
                .add_permits(this.messages.release);
            *this.held -= this.messages.release;
            this.messages.release = 0;
        }
        // A message of one frame or less needs no budget: a small call (a health check,
        // most jobs) never waits behind big bodies that hold it.
        if this.messages.wanted > 0 && !this.inner.is_end_stream() {
            let wanted = this.messages.wanted;
            if this.acquiring.is_none() {
                match this.connection.port.budget.try_acquire_many(wanted as u32) {
                    Ok(permit) => {
                        permit.forget();
                        *this.held += wanted;
                        this.messages.wanted = 0;
                    }
                    Err(_) => {
                        let connection = &this.connection;
                        let params = &connection.port.params;
                        let waiting =
                            connection.waiting_for_budget.fetch_add(1, Ordering::AcqRel) + 1;
                        if u64::from(waiting) * u64::from(params.stream_window_bytes)
                            >= u64::from(params.connection_window_bytes)
                        {
                            connection.waiting_for_budget.fetch_sub(1, Ordering::AcqRel);
                            connection.port.metrics.closed(Reason::BudgetBusy);
                            return Poll::Ready(Some(Err(Box::new(tonic::Status::unavailable(
                                format!(
                                    "the runner's receiving budget is taken, and {} calls on this connection already wait for it (all its flow-control window could hold): sent again, the call can succeed",
                                    waiting - 1
                                ),
                            )))));
                        }
                        *this.acquiring = Some(Box::pin(
                            this.connection
                                .port
                                .budget
                                .clone()
                                .acquire_many_owned(wanted as u32),
                        ));
                    }
                }
            }
            if let Some(acquiring) = this.acquiring.as_mut() {
                match acquiring.as_mut().poll(cx) {
                    Poll::Ready(Ok(permit)) => {
                        permit.forget();
                        *this.held += wanted;
                        this.messages.wanted = 0;
                        *this.acquiring = None;
                        this.connection
                            .waiting_for_budget
                            .fetch_sub(1, Ordering::AcqRel);
                    }
                    // The budget's semaphore is never closed.
                    Poll::Ready(Err(closed)) => return Poll::Ready(Some(Err(closed.into()))),
                    Poll::Pending => return silent(this.silence, &this.connection.port, cx),
                }
            }
        }
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let max = this.connection.port.params.max_message_bytes;
                    if let Err(declared) = this.messages.follow(data, *this.held, max) {
                        this.connection.port.metrics.closed(Reason::MessageTooLarge);
                        // What tonic's decoder answers (it checks each service's own
                        // limit, at most this one, the same way).
                        return Poll::Ready(Some(Err(Box::new(tonic::Status::out_of_range(
                            format!(
                                "Error, decoded message length too large: found {declared} bytes, the limit is: {max} bytes"
                            ),
                        )))));
                    }
                }
                this.silence.set(None);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => Poll::Ready(Some(Err(error.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => silent(this.silence, &this.connection.port, cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body with nothing to give: pending, unless it has been silent for the port's
/// `body_read_timeout` (the timer is armed at the first silence after data, so a body that
/// arrives whole costs no timer). Then the call fails `UNAVAILABLE` (tonic answers with
/// it; hyper resets the stream), and the controller retries the job elsewhere.
fn silent<T>(
    mut silence: Pin<&mut Option<tokio::time::Sleep>>,
    port: &Port,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<T, BoxError>>> {
    let timeout = port.params.body_read_timeout;
    if silence.is_none() {
        silence.set(Some(tokio::time::sleep(timeout)));
    }
    let timer = silence.as_pin_mut().expect("armed above");
    if timer.poll(cx).is_pending() {
        return Poll::Pending;
    }
    port.metrics.closed(Reason::BodyTimeout);
    Poll::Ready(Some(Err(Box::new(tonic::Status::unavailable(format!(
        "the request body stopped arriving: nothing for {timeout:?}"
    ))))))
}

/// What serves one connection: the port's routes, with each call counted as a stream of
/// this connection, its body read under the port's bounds, and the connection's
/// information (`Arc<C>`: the peer's address, and its SPIFFE ID over the mesh) in its
/// extensions.
struct ConnectionService<P, C> {
    routes: Routes<P>,
    connection: Arc<Connection>,
    info: Arc<C>,
}

impl<P: GrpcService, C: Send + Sync + 'static> hyper::service::Service<Request<Incoming>>
    for ConnectionService<P, C>
{
    type Response = Response<ResponseBody>;
    type Error = BoxError;
    type Future = StreamFuture<P::Future>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        if self.connection.refusing.load(Ordering::Relaxed) {
            // Arrived after the GOAWAY of a deny or of an expired client certificate (from
            // a client that ignores it): refused before any processing (`REFUSED_STREAM`).
            // The controller sends a refused call again on a new connection, whose
            // handshake is authorized afresh: served with a renewed certificate, refused
            // (`UNAVAILABLE`, retried elsewhere) after a deny. An answer such as
            // `PERMISSION_DENIED` would spend a delivery attempt on a call never run.
            return StreamFuture {
                inner: None,
                stream: None,
            };
        }
        let stream = StreamGuard::new(self.connection.clone());
        let mut request = request.map(|body| RequestBody::new(body, self.connection.clone()));
        request.extensions_mut().insert(self.info.clone());
        StreamFuture {
            inner: Some(self.routes.route(request)),
            stream: Some(stream),
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's response, to which its stream's guard is attached; `inner` is `None` for
    /// a call refused with `REFUSED_STREAM`.
    pub(crate) struct StreamFuture<F> {
        #[pin]
        inner: Option<RouteFuture<F>>,
        stream: Option<StreamGuard>,
    }
}

impl<F> Future for StreamFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<ResponseBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            // hyper resets the stream with the reason of an h2 error its service returns.
            return Poll::Ready(Err(Box::new(h2::Error::from(h2::Reason::REFUSED_STREAM))));
        };
        let Ok(response) = std::task::ready!(inner.poll(cx));
        let stream = this
            .stream
            .take()
            .expect("a StreamFuture is not polled after it completed");
        let ends = stream
            .0
            .port
            .params
            .max_call_duration
            .map(tokio::time::sleep);
        Poll::Ready(Ok(response.map(|inner| ResponseBody {
            inner,
            ends,
            _stream: stream,
        })))
    }
}

/// Serves `routes` on every connection `incoming` yields, within `params`, until `stop`
/// completes (or `incoming` ends, which only happens if its accept loop died). Then it
/// stops accepting (dropping `incoming`, which closes the listener), asks every open
/// connection to close (GOAWAY: calls in flight finish, no new ones start) and returns
/// once they all have.
///
/// Each connection is closed with GOAWAY when it has been idle too long (or sent no call
/// within the header timeout), when it reaches its maximum age (then closed after the
/// grace), or when the port is at its cap and it is the oldest idle one.
///
/// An `accept` error is logged and retried after a pause; the mesh's incoming stream
/// yields none (it handles refusals itself).
pub(crate) async fn serve<I, IO, P>(
    incoming: I,
    routes: Routes<P>,
    params: ServerParams,
    metrics: &crate::metrics::ServerMetrics,
    stop: impl Future<Output = ()>,
) where
    I: Stream<Item = std::io::Result<IO>>,
    IO: Connected + Revocable + AsyncRead + AsyncWrite + Unpin + Send + 'static,
    P: GrpcService,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(params.max_concurrent_streams)
        .initial_stream_window_size(params.stream_window_bytes)
        .initial_connection_window_size(params.connection_window_bytes)
        .max_frame_size(MAX_FRAME_BYTES)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(params.keepalive_interval)
        .keep_alive_timeout(params.keepalive_timeout)
        .auto_date_header(false);
    let port = Arc::new(Port {
        budget: Arc::new(Semaphore::new(
            params
                .max_receiving_bytes
                .max(params.max_message_bytes + 5)
                .min(Semaphore::MAX_PERMITS),
        )),
        metrics: metrics.port(params.port),
        lingering: Arc::new(Semaphore::new(params.max_connections.max(1).div_ceil(2))),
        params,
        open: Mutex::new(HashMap::new()),
    });
    let counted = Arc::downgrade(&port);
    metrics.count_streams(
        port.params.port,
        Box::new(move || counted.upgrade().map(|port| port.open_streams())),
    );
    let stopping = CancellationToken::new();
    let mut connections = tokio::task::JoinSet::new();
    let mut next_id = 0u64;
    {
        let mut incoming = std::pin::pin!(incoming);
        let mut stop = std::pin::pin!(stop);
        loop {
            let io = tokio::select! {
                () = &mut stop => break,
                // Reaps finished connection tasks, so the set holds only open ones.
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
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
            next_id += 1;
            let connection = port.open(next_id);
            let info = Arc::new(io.connect_info());
            let revoked = io.revoked();
            let served = builder.serve_connection(
                TokioIo::new(Lingering {
                    io: Some(io),
                    connection: connection.clone(),
                }),
                ConnectionService {
                    routes: routes.clone(),
                    connection: connection.clone(),
                    info,
                },
            );
            let task =
                connections.spawn(drive(served, connection.clone(), revoked, stopping.clone()));
            let _ = connection.task.set(task);
        }
    }
    stopping.cancel();
    while connections.join_next().await.is_some() {}
}

/// One connection until it ends: closed gracefully (GOAWAY, calls in flight finish) when
/// told to, when idle too long, at its maximum age or when the server stops; closed
/// outright once its grace after GOAWAY has passed.
async fn drive<F>(
    served: F,
    connection: Arc<Connection>,
    revoked: Option<Revoked>,
    stopping: CancellationToken,
) where
    F: Future<Output = hyper::Result<()>> + GracefulConnection,
{
    // Forgets the connection however the task ends, aborted included.
    struct Forget<'a>(&'a Connection);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            self.0.port.forget(self.0.id);
        }
    }
    let _forget = Forget(&connection);
    let params = &connection.port.params;
    let mut served = std::pin::pin!(served);
    let age = tokio::time::sleep(params.max_connection_age);
    let mut age = std::pin::pin!(age);
    let idle_check = tokio::time::sleep(params.header_read_timeout);
    let mut idle_check = std::pin::pin!(idle_check);
    let grace = tokio::time::sleep(Duration::ZERO);
    let mut grace = std::pin::pin!(grace);
    let mut revoked = revoked.unwrap_or_else(|| Box::pin(std::future::pending()));
    let mut revoked_fired = false;
    // `Some` once GOAWAY was sent with a deadline to close by.
    let mut closing: Option<bool> = None;
    // Whether the grace is already the full one (a short one is extended once for calls
    // still open at its end).
    let mut extended = false;
    loop {
        tokio::select! {
            // The connection first, so a GOAWAY just asked for is written before a grace
            // of zero ends it.
            biased;
            ended = served.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "gRPC connection ended with an error");
                }
                break;
            }
            () = connection.close.cancelled(), if closing.is_none() => {
                let wait = Duration::from_millis(connection.grace_ms.load(Ordering::Acquire));
                grace.as_mut().reset(tokio::time::Instant::now() + wait);
                extended = wait >= params.max_connection_age_grace;
                served.as_mut().graceful_shutdown();
                closing = Some(true);
            }
            () = stopping.cancelled(), if closing.is_none() => {
                // The runner bounds its own stop; calls in flight finish meanwhile.
                served.as_mut().graceful_shutdown();
                closing = Some(false);
            }
            // Polled whether or not the connection is already closing (max age, idle,
            // eviction, stop): a deny or `NotAfter` during a grace of up to
            // `max_connection_age_grace` still refuses every new call at once.
            reason = &mut revoked, if !revoked_fired => {
                revoked_fired = true;
                connection.refusing.store(true, Ordering::Relaxed);
                if !connection.close(reason, params.max_connection_age_grace) {
                    // Already closing: counted all the same.
                    connection.port.metrics.closed(reason);
                }
            }
            () = &mut age, if closing.is_none() => {
                connection.close(Reason::MaxAge, params.max_connection_age_grace);
            }
            () = &mut idle_check, if closing.is_none() => {
                match connection.idle_deadline() {
                    Some((deadline, reason)) if deadline <= Instant::now() => {
                        connection.close(reason, IDLE_CLOSE_GRACE);
                    }
                    Some((deadline, _)) => idle_check.as_mut().reset(deadline.into()),
                    None => idle_check
                        .as_mut()
                        .reset(tokio::time::Instant::now() + params.idle_timeout),
                }
            }
            () = &mut grace, if closing == Some(true) => {
                if connection.streams.load(Ordering::Acquire) > 0 {
                    // Calls that arrived with the GOAWAY of a short grace (HTTP/2 accepts
                    // those sent before the client saw it): they get the full grace, as
                    // calls in flight at any GOAWAY do, instead of dying mid-run.
                    if !extended {
                        extended = true;
                        grace
                            .as_mut()
                            .reset(tokio::time::Instant::now() + params.max_connection_age_grace);
                        continue;
                    }
                    connection.port.metrics.closed(Reason::GraceExpired);
                }
                break;
            }
        }
    }
    connection.ended.store(true, Ordering::Release);
}

/// A connection's socket that, once the server is done with it (its GOAWAY and FIN
/// sent), is read for up to [`LINGER`] more, what arrives discarded, instead of being
/// closed at once: closing a socket with unread bytes in it makes the kernel answer with
/// a reset, and a client that sent a call as the GOAWAY left then gets a broken pipe on
/// its next write, possibly before it has read the GOAWAY that says the call was not
/// processed (so it cannot resend it safely). Read to its end, the socket closes cleanly
/// once the client closes its side. A connection closed outright (aborted at 1.5 × the
/// cap) does not linger, nor one that ends while half the cap already lingers.
struct Lingering<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    io: Option<IO>,
    connection: Arc<Connection>,
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<IO> {
    fn io(&mut self) -> Pin<&mut IO> {
        Pin::new(self.io.as_mut().expect("taken only on drop"))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.io().poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.io().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.io().poll_shutdown(cx)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<IO> {
    fn drop(&mut self) {
        if !self.connection.ended.load(Ordering::Acquire) {
            return;
        }
        let (Some(mut io), Ok(runtime), Ok(permit)) = (
            self.io.take(),
            tokio::runtime::Handle::try_current(),
            self.connection.port.lingering.clone().try_acquire_owned(),
        ) else {
            return;
        };
        runtime.spawn(async move {
            let _permit = permit;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut discarded = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                // The FIN (after TLS's close_notify), if hyper has not sent it: a grace
                // that ran out leaves the connection unfinished.
                let _ = io.shutdown().await;
                while matches!(io.read(&mut discarded).await, Ok(read) if read > 0) {}
            })
            .await;
        });
    }
}

/// Why a connection must end, from outside the server (its calls in flight then have the
/// port's `max_connection_age_grace`).
type Revoked = Pin<Box<dyn Future<Output = Reason> + Send>>;

/// A connection something outside the server may end: the mesh's re-authorization.
pub(crate) trait Revocable {
    /// `None` when nothing will (plaintext connections).
    fn revoked(&self) -> Option<Revoked>;
}

impl Revocable for tokio::net::TcpStream {
    fn revoked(&self) -> Option<Revoked> {
        None
    }
}

impl Revocable for plugworker_mesh::MeshStream {
    fn revoked(&self) -> Option<Revoked> {
        let revoked = plugworker_mesh::MeshStream::revoked(self);
        let peer = self.info().peer.to_string();
        let remote = self.info().remote_addr;
        Some(Box::pin(async move {
            match revoked.await {
                // Routine: Connect renews leaves well before they end, and the client
                // reconnects with the new one.
                error @ plugworker_mesh::Error::CertificateExpired { .. } => {
                    tracing::debug!(%error, %peer, %remote, "mesh connection's client certificate expired: closing it (GOAWAY)");
                    Reason::CertificateExpired
                }
                error => {
                    tracing::warn!(%error, %peer, %remote, "mesh connection no longer authorized: closing it (GOAWAY)");
                    Reason::Deauthorized
                }
            }
        }))
    }
}

/// hyper's HTTP/2 connection, whatever its type parameters: what [`drive`] needs of it.
trait GracefulConnection {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, B> GracefulConnection for hyper::server::conn::http2::Connection<I, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_ready<S: Service<Request<RequestBody>>>(mut service: S) -> bool {
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

    /// The reservation follows the messages whatever the frames cut: a prefix split
    /// across frames, a small message (no reservation), a large one (its whole length),
    /// the previous message released when the next one starts, and a declared length over
    /// the limit refused.
    #[test]
    fn each_large_message_reserves_its_declared_length_at_its_prefix() {
        let mut messages = Messages::default();
        const MAX: usize = 1 << 20;
        // A small message (10 bytes), then the first 3 prefix bytes of a 100 000-byte one.
        let mut first = vec![0, 0, 0, 0, 10];
        first.extend([7; 10]);
        first.extend([0, 0, 1]);
        messages.follow(&first, 0, MAX).unwrap();
        assert_eq!((messages.release, messages.wanted), (0, 0));
        messages.follow(&[0x86, 0xa0, 1, 2], 0, MAX).unwrap();
        assert_eq!(messages.wanted, 100_005);
        // The rest of it, then the next message's prefix: the large one is released.
        messages.wanted = 0;
        messages.follow(&vec![0; 99_998], 100_005, MAX).unwrap();
        messages.follow(&[0, 0, 0, 0, 1], 100_005, MAX).unwrap();
        assert_eq!((messages.release, messages.wanted), (100_005, 0));
        // Its one byte, then a message declaring 2 MiB + 1 (the limit is 1 MiB).
        let over = messages.follow(&[7, 0, 0, 0x20, 0, 1], 0, MAX);
        assert_eq!(over, Err(0x0020_0001));
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

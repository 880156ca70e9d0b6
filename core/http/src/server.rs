//! The HTTP server every Nexus component serves its router with: HTTP/1 and cleartext HTTP/2
//! (h2c: the schedulers serve gRPC on their HTTP port) on hyper-util's `auto` connection builder,
//! with the bounds `axum::serve` lacks.
//!
//! What [`serve`] guarantees (keys of [`ServerConfig`], section `server` of every component):
//! * **Header timeout.** An HTTP/1 request whose header is not complete `header_read_timeout`
//!   after the server started waiting for it is cut off (hyper's timer; it starts when the
//!   server waits for a request, so it also bounds an idle HTTP/1 keep-alive connection). A
//!   connection that has not started its first request (no byte, or an HTTP/2 preface trickled)
//!   within `header_read_timeout` of being accepted is closed too.
//! * **Body timeout.** A request body that delivers no byte for `body_idle_timeout` while the
//!   handler waits for it fails; the client gets `408 Request Timeout` and the connection is
//!   closed. The timer only runs while the server is waiting for the client (a handler that is
//!   busy writing what it read is not the client's fault). gRPC requests are exempt: their streams
//!   are long-lived by design and bounded by gRPC deadlines and HTTP/2 keep-alive.
//! * **Idle timeout.** A connection with no request in flight for `idle_timeout` is closed
//!   (gracefully: an HTTP/2 GOAWAY). For HTTP/1 the header timer above usually fires first.
//! * **Connection limit.** At most `max_connections` connections are served. Past it, a new
//!   connection takes the place of the connection that has been idle longest (no request in
//!   flight), which is closed: a flood of idle connections cannot lock out new clients. When
//!   every connection has a request in flight, up to `health_reserve` more connections are
//!   accepted that may only reach `/health/*` (probes stay answerable; anything else gets `503`
//!   with `Retry-After`), one request each; past that, new connections are accepted and closed at
//!   once (the listen backlog never fills with clients waiting in vain).
//! * **Accept errors.** When `accept` fails for lack of resources (`EMFILE`, `ENFILE`,
//!   `ENOBUFS`, `ENOMEM`), the longest-idle connection is closed to free a descriptor and
//!   accepting resumes after a back-off (10 ms doubling to 1 s); one warning per burst, never a
//!   busy loop, never an exit. Other accept errors concern one connection and are skipped.
//! * **Graceful shutdown.** When `stop` is cancelled: no more accepts, every connection is asked
//!   to finish (HTTP/1: after the request in flight; HTTP/2: GOAWAY), and whatever is still open
//!   after `shutdown_grace` is closed. [`serve`] returns when every connection is gone.
//! * Handlers see the peer address as axum's `ConnectInfo<SocketAddr>` (the rate limiter keys on
//!   it).
//!
//! What it must not do: hold a lock across an await, or let one connection's trouble stop the
//! accept loop.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, Request, Response, StatusCode, Version, header};
use axum::response::IntoResponse as _;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::ApiError;
use crate::tls::{ServerTls, TlsConfig};

/// Bounds of the HTTP server (section `server`); see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Most connections served at once; past it the longest-idle one makes room (see the
    /// module docs). Keep it under the process's open-file limit (`ulimit -n`).
    pub max_connections: usize,
    /// Connections accepted past `max_connections` when every connection is busy, for
    /// `/health/*` only.
    pub health_reserve: usize,
    /// Time a client has to send a request header (and to start its first request).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest wait for the next bytes of a request body before the request fails with 408.
    #[serde(with = "humantime_serde")]
    pub body_idle_timeout: Duration,
    /// Slowest average rate of a request body, in bytes per second, judged once the body has
    /// taken longer than `body_idle_timeout`: a body that drips in (a byte just before each idle
    /// timeout) fails with 408 too. 0 turns the check off.
    pub body_min_rate: u64,
    /// A connection with no request in flight for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// On shutdown, how long requests in flight get to finish before their connections close.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// On shutdown, how long the listener keeps accepting (readiness already off) before it
    /// closes: the time a load balancer or kube-proxy takes to stop sending new connections to a
    /// stopping pod. 0 (the default) closes at once; the Helm chart sets 5s.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// TLS of the listener (section `server.tls`; off unless `cert_file` and `key_file` are set).
    pub tls: TlsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            health_reserve: 32,
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(30),
            body_min_rate: 1024,
            idle_timeout: Duration::from_secs(90),
            shutdown_grace: Duration::from_secs(10),
            shutdown_delay: Duration::ZERO,
            tls: TlsConfig::default(),
        }
    }
}

impl ServerConfig {
    /// Checks every value; messages name the key under `section` (e.g. `server`).
    ///
    /// # Errors
    /// Every problem, joined by "; ".
    pub fn validate(&self, section: &str) -> Result<(), String> {
        let mut e = Vec::new();
        if !(1..=1_000_000).contains(&self.max_connections) {
            e.push(format!(
                "{section}.max_connections: {} must be between 1 and 1000000",
                self.max_connections
            ));
        }
        if self.health_reserve > 10_000 {
            e.push(format!(
                "{section}.health_reserve: {} must be at most 10000",
                self.health_reserve
            ));
        }
        for (key, v) in [
            ("header_read_timeout", self.header_read_timeout),
            ("body_idle_timeout", self.body_idle_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if v < Duration::from_millis(10) || v > Duration::from_secs(24 * 3600) {
                e.push(format!(
                    "{section}.{key}: {} must be between 10ms and 24h",
                    humantime::format_duration(v)
                ));
            }
        }
        if self.shutdown_delay > Duration::from_secs(300) {
            e.push(format!(
                "{section}.shutdown_delay: {} must be at most 5m",
                humantime::format_duration(self.shutdown_delay)
            ));
        }
        if self.shutdown_grace > Duration::from_secs(3600) {
            e.push(format!(
                "{section}.shutdown_grace: {} must be at most 1h",
                humantime::format_duration(self.shutdown_grace)
            ));
        }
        if let Err(m) = self.tls.validate(&format!("{section}.tls")) {
            e.push(m);
        }
        if e.is_empty() {
            Ok(())
        } else {
            Err(e.join("; "))
        }
    }
}

/// The state of one connection that its requests, its watchdog and the accept loop share.
#[derive(Debug)]
struct Conn {
    /// Requests whose response has not been sent in full yet.
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight, in ms since the server's epoch.
    idle_since_ms: AtomicU64,
    /// Set once a request started: the idle limit is then `idle_timeout`, before it
    /// `header_read_timeout`.
    started: AtomicBool,
    /// Wakes the watchdog when `in_flight` changes.
    changed: Notify,
    /// Cancelled by the accept loop to make room (connection limit, out of descriptors).
    evict: CancellationToken,
}

/// What the accept loop decided for a new connection.
enum Admission {
    /// Served normally, registered under this id.
    Served(u64),
    /// Over the limit: health probes only, one request.
    Reserve,
    /// Closed at once.
    Refused,
}

/// Counters of the limit's interventions since the last warning.
#[derive(Debug, Default)]
struct LimitLog {
    evicted: u64,
    reserved: u64,
    refused: u64,
    last_ms: Option<u64>,
}

/// The state shared by the accept loop and the connections.
#[derive(Debug)]
struct Shared {
    config: ServerConfig,
    epoch: Instant,
    /// Served connections (not the reserve), by id.
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    reserve_used: AtomicUsize,
    limit_log: Mutex<LimitLog>,
}

/// How often, at most, the connection limit is reported in the log.
const LIMIT_LOG_EVERY_MS: u64 = 10_000;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a few map operations that cannot panic halfway.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn new_conn(&self) -> Arc<Conn> {
        Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            started: AtomicBool::new(false),
            changed: Notify::new(),
            evict: CancellationToken::new(),
        })
    }

    /// Closes the connection idle longest (taking it out of the registry); false when every
    /// connection has a request in flight.
    fn evict_longest_idle(conns: &mut HashMap<u64, Arc<Conn>>) -> bool {
        let victim = conns
            .iter()
            .filter(|(_, c)| c.in_flight.load(Ordering::Acquire) == 0)
            .min_by_key(|(_, c)| c.idle_since_ms.load(Ordering::Acquire))
            .map(|(id, _)| *id);
        match victim.and_then(|id| conns.remove(&id)) {
            Some(c) => {
                c.evict.cancel();
                true
            }
            None => false,
        }
    }

    fn admit(&self, conn: &Arc<Conn>) -> Admission {
        let mut conns = lock(&self.conns);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if conns.len() < self.config.max_connections {
            conns.insert(id, conn.clone());
            return Admission::Served(id);
        }
        if Self::evict_longest_idle(&mut conns) {
            conns.insert(id, conn.clone());
            drop(conns);
            self.note_limit(|l| l.evicted += 1);
            return Admission::Served(id);
        }
        drop(conns);
        let reserved = self
            .reserve_used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.config.health_reserve).then_some(n + 1)
            })
            .is_ok();
        if reserved {
            self.note_limit(|l| l.reserved += 1);
            Admission::Reserve
        } else {
            self.note_limit(|l| l.refused += 1);
            Admission::Refused
        }
    }

    /// Counts an intervention of the limit and logs a summary at most every 10 s.
    fn note_limit(&self, count: impl FnOnce(&mut LimitLog)) {
        let now = self.now_ms();
        let mut l = lock(&self.limit_log);
        count(&mut l);
        if l.last_ms
            .is_some_and(|t| now.saturating_sub(t) < LIMIT_LOG_EVERY_MS)
        {
            return;
        }
        tracing::warn!(
            max_connections = self.config.max_connections,
            idle_closed = l.evicted,
            health_only = l.reserved,
            refused = l.refused,
            "connection limit reached (server.max_connections): idle connections are closed to \
             make room; when all are busy only /health/* is served on extra connections"
        );
        l.evicted = 0;
        l.reserved = 0;
        l.refused = 0;
        l.last_ms = Some(now);
    }
}

/// Counts a request in flight on its connection until dropped (when its response body has
/// been sent, or the request was abandoned).
#[derive(Debug)]
struct InFlight {
    conn: Arc<Conn>,
    shared: Arc<Shared>,
}

impl InFlight {
    fn new(conn: &Arc<Conn>, shared: &Arc<Shared>) -> Self {
        conn.started.store(true, Ordering::Release);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        conn.changed.notify_one();
        Self {
            conn: conn.clone(),
            shared: shared.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn
            .idle_since_ms
            .store(self.shared.now_ms(), Ordering::Release);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.conn.changed.notify_one();
    }
}

/// A response body that keeps its request counted as in flight until it has been sent.
#[derive(Debug)]
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error of a request body that stopped delivering bytes.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request body delivered no bytes for {}: request abandoned (server.body_idle_timeout)",
    humantime::format_duration(*.0)
)]
pub struct BodyIdleTimeout(pub Duration);

/// A request body that fails when the client sends nothing for `timeout` while the server
/// waits for it (the timer runs only between a `Pending` poll and the next bytes), or when,
/// past `timeout` since its first poll, it has arrived slower than `min_rate` bytes per second.
/// `fired` keeps the reason, for the 408.
struct IdleTimeoutBody {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    fired: Arc<std::sync::OnceLock<String>>,
    min_rate: u64,
    started: Option<tokio::time::Instant>,
    received: u64,
}

impl IdleTimeoutBody {
    /// The reason to fail a body that has arrived too slowly, if it has.
    fn too_slow(&self) -> Option<String> {
        let elapsed = self.started?.elapsed();
        if self.min_rate == 0 || elapsed <= self.timeout {
            return None;
        }
        #[allow(clippy::cast_precision_loss)] // byte counts and rates far below 2^53
        let rate = self.received as f64 / elapsed.as_secs_f64();
        #[allow(clippy::cast_precision_loss)]
        let slow = rate < self.min_rate as f64;
        slow.then(|| {
            format!(
                "the request body arrived at {rate:.0} bytes/s, below the minimum of {} bytes/s: request abandoned (server.body_min_rate)",
                self.min_rate
            )
        })
    }
}

impl hyper::body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        this.started.get_or_insert_with(tokio::time::Instant::now);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep = None;
                if let Some(Ok(f)) = &frame
                    && let Some(d) = f.data_ref()
                {
                    this.received += d.len() as u64;
                    if let Some(why) = this.too_slow() {
                        let _ = this.fired.set(why.clone());
                        return Poll::Ready(Some(Err(why.into())));
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.sleep = None;
                    let _ = this.fired.set(BodyIdleTimeout(timeout).to_string());
                    return Poll::Ready(Some(Err(BodyIdleTimeout(timeout).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Asks an HTTP/1 client to close the connection after this response (HTTP/2 has no such
/// header: hyper would refuse it).
fn close_after(resp: &mut Response<Body>, version: Version) {
    if version < Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

/// Serves one request of a connection: connect info, body timeout, reserve rules.
async fn handle(
    req: Request<Incoming>,
    router: Router,
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    peer: SocketAddr,
    reserve: bool,
) -> Result<Response<Tracked>, Infallible> {
    let in_flight = InFlight::new(&conn, &shared);
    let version = req.version();
    if reserve && !req.uri().path().starts_with("/health/") {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the server is at its connection limit ({} connections, all busy: \
                 server.max_connections); retry shortly",
                shared.config.max_connections
            ),
        );
        e.retry_after = Some(1);
        let mut resp = e.into_response();
        close_after(&mut resp, version);
        return Ok(resp.map(|inner| Tracked {
            inner,
            _in_flight: in_flight,
        }));
    }
    let fired = Arc::new(std::sync::OnceLock::new());
    let min_rate = shared.config.body_min_rate;
    let timeout = shared.config.body_idle_timeout;
    let mut req = if is_grpc(&req) {
        req.map(Body::new)
    } else {
        let fired = fired.clone();
        req.map(move |inner| {
            Body::new(IdleTimeoutBody {
                inner,
                timeout,
                sleep: None,
                fired,
                min_rate,
                started: None,
                received: 0,
            })
        })
    };
    req.extensions_mut().insert(ConnectInfo(peer));
    let mut resp = match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if let Some(why) = fired.get() {
        // Whatever the handler made of the failed body, the client's request timed out.
        resp = ApiError::new(StatusCode::REQUEST_TIMEOUT, why.clone()).into_response();
        close_after(&mut resp, version);
    } else if reserve {
        close_after(&mut resp, version);
    }
    Ok(resp.map(|inner| Tracked {
        inner,
        _in_flight: in_flight,
    }))
}

/// Drives one connection until it ends, is evicted, idles out or the server stops.
#[allow(clippy::too_many_arguments)]
async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    admission: Admission,
    graceful: CancellationToken,
    hard: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let reserve = matches!(admission, Admission::Reserve);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.header_read_timeout)
        .keep_alive(!reserve);
    let svc = {
        let (shared, conn) = (shared.clone(), conn.clone());
        hyper::service::service_fn(move |req| {
            handle(
                req,
                router.clone(),
                shared.clone(),
                conn.clone(),
                peer,
                reserve,
            )
        })
    };
    let http = builder.serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(http);
    let mut closing = false;
    // A connection asked to close that is still open this long after is dropped.
    let mut close_by: Option<Instant> = None;
    loop {
        let idle_deadline = (conn.in_flight.load(Ordering::Acquire) == 0 && !closing).then(|| {
            let limit = if conn.started.load(Ordering::Acquire) {
                shared.config.idle_timeout
            } else {
                shared.config.header_read_timeout
            };
            shared.epoch + Duration::from_millis(conn.idle_since_ms.load(Ordering::Acquire)) + limit
        });
        let wake = match (idle_deadline, close_by) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            res = http.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                break;
            }
            () = hard.cancelled() => break,
            () = graceful.cancelled(), if !closing => {
                http.as_mut().graceful_shutdown();
                closing = true;
            }
            () = conn.evict.cancelled(), if !closing => {
                if conn.in_flight.load(Ordering::Acquire) == 0 {
                    break;
                }
                // A request started after it was chosen: let it finish.
                http.as_mut().graceful_shutdown();
                closing = true;
            }
            () = conn.changed.notified() => {}
            () = sleep_until_opt(wake) => {
                if close_by.is_some_and(|t| Instant::now() >= t) {
                    break;
                }
                if idle_deadline.is_some_and(|t| Instant::now() >= t)
                    && conn.in_flight.load(Ordering::Acquire) == 0
                {
                    http.as_mut().graceful_shutdown();
                    closing = true;
                    close_by = Some(Instant::now() + Duration::from_secs(1));
                }
            }
        }
    }
    release(&shared, &admission);
}

/// Gives back the slot a connection held.
fn release(shared: &Shared, admission: &Admission) {
    match admission {
        Admission::Served(id) => {
            lock(&shared.conns).remove(id);
        }
        Admission::Reserve => {
            shared.reserve_used.fetch_sub(1, Ordering::AcqRel);
        }
        Admission::Refused => {}
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// True for accept errors that mean "out of resources" rather than "this one connection failed".
fn out_of_resources(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|n| {
        [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
            .iter()
            .any(|x| *x as i32 == n)
    })
}

/// First and longest pause after an accept error for lack of resources.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Serves `router` on `listener` with the bounds of `config` until `stop` is cancelled, then
/// shuts down gracefully (see the module docs) and returns once every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServerConfig,
    stop: CancellationToken,
) {
    // Start-up already loaded these files once (`check_tls`); failing here means they changed
    // in between: refuse to serve plain text in place of TLS.
    let tls = match ServerTls::load(&config.tls) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "server.tls: cannot load the certificate; not serving");
            return;
        }
    };
    if let Some(t) = &tls {
        crate::tls::describe();
        tokio::spawn(t.clone().watch(stop.clone()));
    }
    let shared = Arc::new(Shared {
        config,
        epoch: Instant::now(),
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        reserve_used: AtomicUsize::new(0),
        limit_log: Mutex::new(LimitLog::default()),
    });
    let tracker = TaskTracker::new();
    let graceful = CancellationToken::new();
    let hard = CancellationToken::new();
    let mut backoff = ACCEPT_BACKOFF.0;
    let mut failing_since: Option<(Instant, u64)> = None;
    // Stop accepting `shutdown_delay` after `stop`: new connections routed here meanwhile
    // (endpoints not yet updated) are still served.
    let delay = shared.config.shutdown_delay;
    let closing = async move {
        stop.cancelled().await;
        if !delay.is_zero() {
            tracing::info!(
                seconds = delay.as_secs_f64(),
                "stopping: still accepting connections for server.shutdown_delay"
            );
            tokio::time::sleep(delay).await;
        }
    };
    tokio::pin!(closing);
    loop {
        let accepted = tokio::select! {
            () = &mut closing => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) if out_of_resources(&e) => {
                match &mut failing_since {
                    Some((_, n)) => *n += 1,
                    None => {
                        tracing::warn!(
                            max_connections = shared.config.max_connections,
                            error = %e,
                            "accept error: closing the longest-idle connection and retrying \
                             with back-off (raise the open-file limit, `ulimit -n`, or lower \
                             server.max_connections)"
                        );
                        failing_since = Some((Instant::now(), 1));
                    }
                }
                Shared::evict_longest_idle(&mut lock(&shared.conns));
                tokio::select! {
                    () = &mut closing => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept error (one connection)");
                continue;
            }
        };
        if let Some((since, n)) = failing_since.take() {
            tracing::info!(
                failed_accepts = n,
                for_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                "accepting connections again"
            );
        }
        backoff = ACCEPT_BACKOFF.0;
        let conn = shared.new_conn();
        let admission = shared.admit(&conn);
        if matches!(admission, Admission::Refused) {
            drop(stream);
            continue;
        }
        // Small responses go out at once (no Nagle delay waiting for the client's ACK).
        let _ = stream.set_nodelay(true);
        let (router, shared, graceful, hard) = (
            router.clone(),
            shared.clone(),
            graceful.clone(),
            hard.clone(),
        );
        match &tls {
            None => {
                tracker.spawn(connection(
                    stream, peer, router, shared, conn, admission, graceful, hard,
                ));
            }
            Some(tls) => {
                let acceptor = tls.acceptor();
                tracker.spawn(async move {
                    // The handshake shares the header timeout: a client that never finishes
                    // it holds a slot no longer than one that never sends a request.
                    let limit = shared.config.header_read_timeout;
                    let accepted = tokio::select! {
                        r = tokio::time::timeout(limit, acceptor.accept(stream)) => r,
                        () = graceful.cancelled() => return release(&shared, &admission),
                    };
                    match accepted {
                        Ok(Ok(tls_stream)) => {
                            connection(
                                tls_stream, peer, router, shared, conn, admission, graceful, hard,
                            )
                            .await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            release(&shared, &admission);
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            release(&shared, &admission);
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    tracker.close();
    graceful.cancel();
    if tokio::time::timeout(shared.config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tracker.len(),
            "connections still busy after server.shutdown_grace: closing them"
        );
        hard.cancel();
        tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant as StdInstant;

    use axum::routing::{get, put};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        ServerConfig::default().validate("server").unwrap();
        let c = ServerConfig {
            max_connections: 0,
            header_read_timeout: Duration::ZERO,
            idle_timeout: Duration::from_secs(100_000),
            ..ServerConfig::default()
        };
        let e = c.validate("server").unwrap_err();
        assert!(e.contains("server.max_connections: 0 must be"), "{e}");
        assert!(e.contains("server.header_read_timeout"), "{e}");
        assert!(e.contains("server.idle_timeout"), "{e}");
        assert!(!e.contains("body_idle_timeout"), "{e}");
    }

    #[test]
    fn resource_errors_are_told_apart() {
        assert!(out_of_resources(&std::io::Error::from_raw_os_error(
            nix::errno::Errno::EMFILE as i32
        )));
        assert!(!out_of_resources(&std::io::Error::from_raw_os_error(
            nix::errno::Errno::ECONNABORTED as i32
        )));
    }

    /// A generous deadline for "eventually": these tests assert outcomes, not timings.
    const EVENTUALLY: Duration = Duration::from_secs(20);

    fn app() -> Router {
        Router::new()
            .route("/health/readyz", get(|| async { "ready" }))
            .route(
                "/peer",
                get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
            )
            .route(
                "/sink",
                put(|body: Bytes| async move { format!("{} bytes", body.len()) }),
            )
    }

    async fn start(
        config: ServerConfig,
    ) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(l, app(), config, stop.clone()));
        (addr, stop, task)
    }

    /// Sends `request` on a new connection and returns everything read until the server closes
    /// it (or `EVENTUALLY` passes: then the test fails).
    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        read_to_close(&mut s).await
    }

    async fn read_to_close(s: &mut TcpStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(EVENTUALLY, async {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .expect("the server closes the connection");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// True once the server closed `s` (EOF or reset); false while it is open.
    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) | Err(_) => false,
        }
    }

    const READYZ: &[u8] = b"GET /health/readyz HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flood_of_idle_connections_leaves_readiness_answerable() {
        // Long timeouts: only the connection limit closes connections in the first phase.
        let (addr, stop, task) = start(ServerConfig {
            max_connections: 50,
            health_reserve: 4,
            header_read_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            ..ServerConfig::default()
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..200 {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let answer = exchange(addr, READYZ).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("ready"), "{answer}");
        // The server keeps at most 50: the 150 (and more) idle longest were closed to make room.
        let deadline = StdInstant::now() + EVENTUALLY;
        loop {
            let mut n = 0;
            for s in &mut idle {
                if closed(s).await {
                    n += 1;
                }
            }
            if n >= 151 {
                break;
            }
            assert!(
                StdInstant::now() < deadline,
                "only {n} of 200 idle connections closed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The handler sees the peer address.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let local = s.local_addr().unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut s).await;
        assert!(answer.ends_with(&local.to_string()), "{answer}");
        stop.cancel();
        tokio::time::timeout(EVENTUALLY, task)
            .await
            .unwrap()
            .unwrap();
    }

    /// After a stop, new connections are still accepted and answered for `shutdown_delay`
    /// (load balancers still routing here); then the listener closes and `serve` returns.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_still_accepted_for_the_shutdown_delay() {
        let (addr, stop, task) = start(ServerConfig {
            shutdown_delay: Duration::from_secs(5),
            ..ServerConfig::default()
        })
        .await;
        stop.cancel();
        let answer = exchange(addr, READYZ).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("serve returns after the delay")
            .unwrap();
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed once serve returned"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_are_closed_after_the_idle_timeout() {
        let (addr, stop, task) = start(ServerConfig {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            ..ServerConfig::default()
        })
        .await;
        // Ten that never send a byte, ten that served a request and keep the connection alive.
        let mut conns = Vec::new();
        for i in 0..20 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            if i % 2 == 1 {
                s.write_all(b"GET /health/readyz HTTP/1.1\r\nhost: t\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).await.unwrap();
                assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            }
            conns.push(s);
        }
        for s in &mut conns {
            read_to_close(s).await;
        }
        stop.cancel();
        tokio::time::timeout(EVENTUALLY, task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_trickled_header_is_cut_off() {
        let (addr, stop, task) = start(ServerConfig {
            header_read_timeout: Duration::from_millis(500),
            ..ServerConfig::default()
        })
        .await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health/readyz HTTP/1.1\r\n")
            .await
            .unwrap();
        let deadline = StdInstant::now() + EVENTUALLY;
        // One header byte every 50 ms, for ever: the server must hang up.
        let mut cut = false;
        while StdInstant::now() < deadline {
            if s.write_all(b"x").await.is_err() || closed(&mut s).await {
                cut = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            cut,
            "a header trickled for {EVENTUALLY:?} was never cut off"
        );
        stop.cancel();
        tokio::time::timeout(EVENTUALLY, task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_that_drips_in_below_the_minimum_rate_gets_408() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (addr, stop, task) = start(ServerConfig {
            body_idle_timeout: Duration::from_millis(300),
            body_min_rate: 1000,
            ..ServerConfig::default()
        })
        .await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"PUT /sink HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\n")
            .await
            .unwrap();
        // A byte every 200 ms: never idle for 300 ms, but 5 bytes/s.
        let mut answer = Vec::new();
        for _ in 0..50 {
            if s.write_all(b"x").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut buf = [0u8; 1024];
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await
            {
                answer.extend_from_slice(&buf[..n]);
                if n == 0 || !answer.is_empty() {
                    break;
                }
            }
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("server.body_min_rate"), "{answer}");
        stop.cancel();
        tokio::time::timeout(EVENTUALLY, task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_body_that_stops_gets_408_and_the_connection_closes() {
        let (addr, stop, task) = start(ServerConfig {
            body_idle_timeout: Duration::from_millis(300),
            ..ServerConfig::default()
        })
        .await;
        // A chunked body that never ends.
        let answer = exchange(
            addr,
            b"PUT /sink HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("server.body_idle_timeout"), "{answer}");
        // A complete body is fine.
        let answer = exchange(
            addr,
            b"PUT /sink HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
        )
        .await;
        assert!(answer.ends_with("5 bytes"), "{answer}");
        stop.cancel();
        tokio::time::timeout(EVENTUALLY, task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_lets_the_request_in_flight_finish() {
        let (addr, stop, task) = start(ServerConfig::default()).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Headers and half the body: the request is in flight when the server stops.
        s.write_all(b"PUT /sink HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nhello")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener is closed at once"
        );
        s.write_all(b"world").await.unwrap();
        let answer = read_to_close(&mut s).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("10 bytes"), "{answer}");
        tokio::time::timeout(EVENTUALLY, task)
            .await
            .unwrap()
            .unwrap();
    }

    /// A self-signed certificate for 127.0.0.1 named `cn`, written to `dir` (cert, key paths).
    fn write_cert(dir: &std::path::Path, cn: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join("tls.crt"), dir.join("tls.key"));
        // Written next to the target and renamed in, as Kubernetes swaps a Secret's files.
        std::fs::write(dir.join("tls.crt.new"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key.new"), key.serialize_pem()).unwrap();
        std::fs::rename(dir.join("tls.key.new"), &k).unwrap();
        std::fs::rename(dir.join("tls.crt.new"), &c).unwrap();
        (c, k)
    }

    #[tokio::test]
    async fn tls_serves_https_and_reloads_the_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca1 = dir.path().join("ca1.pem");
        let (cert, key) = write_cert(dir.path(), "first");
        std::fs::copy(&cert, &ca1).unwrap();
        let config = ServerConfig {
            tls: TlsConfig {
                cert_file: Some(cert),
                key_file: Some(key),
                reload_interval: Duration::from_millis(50),
            },
            ..ServerConfig::default()
        };
        let (addr, stop, task) = start(config).await;
        let url = format!("https://127.0.0.1:{}/peer", addr.port());
        let client = |ca: &std::path::Path| {
            crate::client::HttpClient::new(Some(ca), EVENTUALLY, 1 << 20, "test").unwrap()
        };
        let a = client(&ca1)
            .send(axum::http::Method::GET, &url, &[], None)
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::OK);
        // Plain HTTP on the TLS port gets no answer.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(!read_to_close(&mut s).await.contains("200 OK"));
        // A new certificate: served to new connections once reloaded.
        let ca2 = dir.path().join("ca2.pem");
        let (cert2, _) = write_cert(dir.path(), "second");
        std::fs::copy(&cert2, &ca2).unwrap();
        let deadline = StdInstant::now() + EVENTUALLY;
        loop {
            if let Ok(a) = client(&ca2)
                .send(axum::http::Method::GET, &url, &[], None)
                .await
            {
                assert_eq!(a.status, StatusCode::OK);
                break;
            }
            assert!(StdInstant::now() < deadline, "certificate not reloaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The old certificate is no longer trusted by a client that only knows it.
        assert!(
            client(&ca1)
                .send(axum::http::Method::GET, &url, &[], None)
                .await
                .is_err()
        );
        // A broken file keeps the current certificate in service.
        std::fs::write(dir.path().join("tls.key"), "not a key").unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let a = client(&ca2)
            .send(axum::http::Method::GET, &url, &[], None)
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::OK);
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn tls_settings_are_checked() {
        let c = TlsConfig {
            cert_file: Some("/x.crt".into()),
            ..TlsConfig::default()
        };
        assert!(
            c.validate("server.tls")
                .unwrap_err()
                .contains("server.tls.key_file: required")
        );
        let missing = TlsConfig {
            cert_file: Some("/nonexistent.crt".into()),
            key_file: Some("/nonexistent.key".into()),
            ..TlsConfig::default()
        };
        let e = ServerTls::load(&missing).unwrap_err().to_string();
        assert!(e.contains("/nonexistent.crt: cannot read"), "{e}");
    }
}

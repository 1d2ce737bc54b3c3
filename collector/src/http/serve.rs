//! Serving the API so that it keeps answering under abuse: tapwire's own accept loop over
//! hyper's HTTP/1 connections, since axum's `serve` has no knobs for connection counts or
//! timeouts. Every connection, plain or TLS, on `--api` or `--listen`, passes one [`Gate`]:
//!
//! - **Caps.** At most [`Limits::max_connections`] in all (a share of the descriptor limit,
//!   [`crate::fds`]) and [`Limits::max_per_client`] per client (an IPv4 address, or an IPv6
//!   /64, which one host can fill). At a cap, the connection of that client (at the
//!   per-client cap) or of anyone (at the total) that has been quiet longest with no request
//!   in progress is closed to make room: idle keep-alive connections are cheap to lose and
//!   clients reconnect. When every connection is busy the new one is refused (plain HTTP gets
//!   a 503 first).
//! - **Timeouts.** A TLS handshake within [`Limits::tls_handshake`]; a request's head within
//!   [`Limits::header_read`] of when the server starts waiting for it (hyper's
//!   `header_read_timeout`: after the accept, or after the previous response of a keep-alive
//!   connection, so it also ends idle keep-alive connections); no byte moving while no request
//!   is handled (a response the client does not read, a silent connection) for
//!   [`Limits::idle`]; a request handled for [`Limits::request`] at most.
//! - **Long-polls** (a probe waiting for its flows) are legitimate long-lived requests: a
//!   budget of their own ([`Limits::max_long_polls`] at once, each [`Limits::long_poll`] at
//!   most), never closed to make room.
//!
//! One reaper task applies the idle and request timeouts to the table every
//! [`REAP_EVERY`]; each connection task only serves, and ends when the reaper or an eviction
//! tells it to. What was refused and closed, and why, is counted for `/metrics` and logged
//! at most every [`PRESSURE_LOG_EVERY`].

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tapwire_api_types::control::MAX_WAIT_S;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::Peer;

/// A request's head must be complete this long after the server starts waiting for it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request in progress on which no byte moves is closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// A TLS handshake (a round trip or two) must be done within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a request other than a long-poll is handled (body upload included): changes
/// wait at most a few seconds for the engine, filters 2 s for their compiler.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a long-poll is handled: its wait, at most `MAX_WAIT_S`, and room to answer.
pub const LONG_POLL_TIMEOUT: Duration = Duration::from_secs(MAX_WAIT_S + 15);
/// The largest request body (JSON definitions and probe reports).
pub const MAX_BODY_BYTES: usize = 2 << 20;
/// The largest request head (request line and headers) hyper buffers.
pub const MAX_HEAD_BYTES: usize = 64 << 10;
/// How often the reaper applies the idle and request timeouts.
pub const REAP_EVERY: Duration = Duration::from_millis(250);
/// Refusals and closings are logged at most this often (they are counted always).
pub const PRESSURE_LOG_EVERY: Duration = Duration::from_secs(10);
/// After a failed accept (EMFILE, ENFILE, ENOBUFS) the listener waits this long.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// What a connection refused at a cap is told, on plain HTTP (no request is read).
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 55\r\n\r\n{\"ok\":false,\"message\":\"too many connections: try again\"}";

/// The API's limits; [`Limits::for_descriptor_limit`] gives the collector's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_client: usize,
    pub max_long_polls: usize,
    pub header_read: Duration,
    pub idle: Duration,
    pub tls_handshake: Duration,
    pub request: Duration,
    pub long_poll: Duration,
}

impl Limits {
    /// For a process whose descriptor limit is `nofile`: the API's share of it
    /// ([`crate::fds::api_connections`]), an eighth of that per client and half of it for
    /// long-polls; the timeouts above.
    pub fn for_descriptor_limit(nofile: u64) -> Limits {
        let max_connections = crate::fds::api_connections(nofile);
        Limits {
            max_connections,
            max_per_client: (max_connections / 8).max(1),
            max_long_polls: (max_connections / 2).max(1),
            header_read: HEADER_READ_TIMEOUT,
            idle: IDLE_TIMEOUT,
            tls_handshake: TLS_HANDSHAKE_TIMEOUT,
            request: REQUEST_TIMEOUT,
            long_poll: LONG_POLL_TIMEOUT,
        }
    }
}

/// Why a connection was closed by the server (or refused), for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Refused at a cap with every connection busy.
    Refused,
    /// Closed to make room for a new connection at a cap.
    Evicted,
    Idle,
    HeaderTimeout,
    RequestTimeout,
    TlsHandshake,
}

impl Closed {
    pub const ALL: [Closed; 6] = [
        Closed::Refused,
        Closed::Evicted,
        Closed::Idle,
        Closed::HeaderTimeout,
        Closed::RequestTimeout,
        Closed::TlsHandshake,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Closed::Refused => "refused",
            Closed::Evicted => "evicted",
            Closed::Idle => "idle",
            Closed::HeaderTimeout => "header_timeout",
            Closed::RequestTimeout => "request_timeout",
            Closed::TlsHandshake => "tls_handshake",
        }
    }
}

/// One connection as the gate sees it; times are milliseconds since the gate's epoch.
#[derive(Debug)]
pub(crate) struct Conn {
    client: IpAddr,
    last_io_ms: AtomicU64,
    /// Requests being handled (HTTP/1: 0 or 1).
    in_flight: AtomicU32,
    request_since_ms: AtomicU64,
    long_poll: AtomicBool,
    /// Serving a live session stream: no request or idle timeout (a reader may stall; the
    /// stream drops for it), never closed to make room (streams have their own cap,
    /// `collect --max-streams`).
    live_stream: AtomicBool,
    /// Told to stop: the task drops the connection.
    close: Notify,
}

/// The connection a request came on, for a handler that changes how it is timed (a long-poll).
#[derive(Clone)]
pub(crate) struct ThisConnection(Arc<Conn>);

impl ThisConnection {
    /// Marks the request a long-poll until the guard is dropped: it gets the long-poll budget.
    pub(crate) fn long_poll(&self) -> LongPollMark {
        self.0.long_poll.store(true, Ordering::Relaxed);
        LongPollMark(Arc::clone(&self.0))
    }

    /// Marks the connection as serving a live stream until the guard (held by the response
    /// body) is dropped: busy all along, with no timeout.
    pub(crate) fn live_stream(&self) -> LiveStreamMark {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        self.0.live_stream.store(true, Ordering::Relaxed);
        LiveStreamMark(Arc::clone(&self.0))
    }
}

pub(crate) struct LiveStreamMark(Arc<Conn>);

impl Drop for LiveStreamMark {
    fn drop(&mut self) {
        self.0.live_stream.store(false, Ordering::Relaxed);
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) struct LongPollMark(Arc<Conn>);

impl Drop for LongPollMark {
    fn drop(&mut self) {
        self.0.long_poll.store(false, Ordering::Relaxed);
    }
}

/// Every connection of the API, against the limits.
pub struct Gate {
    limits: Limits,
    epoch: Instant,
    table: Mutex<Table>,
    closed: [AtomicU64; Closed::ALL.len()],
    accepted: AtomicU64,
    /// What was last logged, and when.
    logged: Mutex<([u64; Closed::ALL.len()], Option<Instant>)>,
}

#[derive(Default)]
struct Table {
    conns: HashMap<u64, Arc<Conn>>,
    per_client: HashMap<IpAddr, usize>,
    next_id: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The per-client key: an IPv4 address, or the /64 of an IPv6 one.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

impl Table {
    /// Makes room for one more connection of `client` if it can (closing the quietest idle
    /// connection at a cap) and adds it; the closed ones are returned to be told.
    fn admit(&mut self, conn: Arc<Conn>, limits: &Limits) -> Result<(u64, Vec<Arc<Conn>>), Closed> {
        let mut evicted = Vec::new();
        let client = conn.client;
        if self.per_client.get(&client).copied().unwrap_or(0) >= limits.max_per_client {
            let id = self
                .quietest(|c| c.client == client)
                .ok_or(Closed::Refused)?;
            evicted.extend(self.remove(id));
        }
        if self.conns.len() >= limits.max_connections {
            let id = self.quietest(|_| true).ok_or(Closed::Refused)?;
            evicted.extend(self.remove(id));
        }
        let id = self.next_id;
        self.next_id += 1;
        *self.per_client.entry(client).or_default() += 1;
        self.conns.insert(id, conn);
        Ok((id, evicted))
    }

    /// The connection among `which` with no request in progress that moved a byte longest ago.
    fn quietest(&self, which: impl Fn(&Conn) -> bool) -> Option<u64> {
        self.conns
            .iter()
            .filter(|(_, c)| which(c) && c.in_flight.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, c)| c.last_io_ms.load(Ordering::Relaxed))
            .map(|(id, _)| *id)
    }

    fn remove(&mut self, id: u64) -> Option<Arc<Conn>> {
        let c = self.conns.remove(&id)?;
        if let Some(n) = self.per_client.get_mut(&c.client) {
            *n -= 1;
            if *n == 0 {
                self.per_client.remove(&c.client);
            }
        }
        Some(c)
    }

    /// Connections past a timeout at `now_ms`, and why.
    fn expired(&self, now_ms: u64, limits: &Limits) -> Vec<(u64, Closed)> {
        let ms = |d: Duration| d.as_millis() as u64;
        self.conns
            .iter()
            .filter_map(|(id, c)| {
                let since = |t: &AtomicU64| now_ms.saturating_sub(t.load(Ordering::Relaxed));
                if c.in_flight.load(Ordering::Relaxed) == 0 {
                    (since(&c.last_io_ms) >= ms(limits.idle)).then_some((*id, Closed::Idle))
                } else if c.live_stream.load(Ordering::Relaxed) {
                    None
                } else {
                    let budget = if c.long_poll.load(Ordering::Relaxed) {
                        limits.long_poll
                    } else {
                        limits.request
                    };
                    (since(&c.request_since_ms) >= ms(budget))
                        .then_some((*id, Closed::RequestTimeout))
                }
            })
            .collect()
    }
}

/// A connection's place in the gate, given back when the connection ends.
pub(crate) struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    conn: Arc<Conn>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        lock(&self.gate.table).remove(self.id);
    }
}

impl Gate {
    pub fn new(limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
            closed: Default::default(),
            accepted: AtomicU64::new(0),
            logged: Mutex::new(([0; Closed::ALL.len()], None)),
        })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Connections held now.
    pub fn connections(&self) -> usize {
        lock(&self.table).conns.len()
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed by the server (or refused) for `why` since the start.
    pub fn closed(&self, why: Closed) -> u64 {
        self.closed[why as usize].load(Ordering::Relaxed)
    }

    fn count(&self, why: Closed) {
        self.closed[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A place for a new connection from `peer`, or `None`: refused.
    pub(crate) fn admit(self: &Arc<Gate>, peer: IpAddr) -> Option<Ticket> {
        let now = self.now_ms();
        let conn = Arc::new(Conn {
            client: client_of(peer),
            last_io_ms: AtomicU64::new(now),
            in_flight: AtomicU32::new(0),
            request_since_ms: AtomicU64::new(now),
            long_poll: AtomicBool::new(false),
            live_stream: AtomicBool::new(false),
            close: Notify::new(),
        });
        let admitted = lock(&self.table).admit(Arc::clone(&conn), &self.limits);
        match admitted {
            Ok((id, evicted)) => {
                for c in evicted {
                    self.count(Closed::Evicted);
                    c.close.notify_one();
                }
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Some(Ticket {
                    gate: Arc::clone(self),
                    id,
                    conn,
                })
            }
            Err(why) => {
                self.count(why);
                None
            }
        }
    }

    /// Closes the connections past a timeout; logs pressure now and then.
    fn reap(&self) {
        let now = self.now_ms();
        let closed: Vec<(Arc<Conn>, Closed)> = {
            let mut t = lock(&self.table);
            let expired = t.expired(now, &self.limits);
            expired
                .into_iter()
                .filter_map(|(id, why)| t.remove(id).map(|c| (c, why)))
                .collect()
        };
        for (c, why) in closed {
            self.count(why);
            c.close.notify_one();
        }
        self.log_pressure();
    }

    fn log_pressure(&self) {
        let mut logged = lock(&self.logged);
        if logged.1.is_some_and(|t| t.elapsed() < PRESSURE_LOG_EVERY) {
            return;
        }
        let now: [u64; Closed::ALL.len()] = std::array::from_fn(|i| self.closed(Closed::ALL[i]));
        let new = |w: Closed| now[w as usize] - logged.0[w as usize];
        if new(Closed::Refused) + new(Closed::Evicted) + new(Closed::HeaderTimeout) == 0 {
            return;
        }
        tracing::warn!(
            refused = new(Closed::Refused),
            evicted = new(Closed::Evicted),
            header_timeouts = new(Closed::HeaderTimeout),
            connections = self.connections(),
            max = self.limits.max_connections,
            per_client = self.limits.max_per_client,
            "API connections at their limits"
        );
        *logged = (now, Some(Instant::now()));
    }
}

/// Serves `listener` through `gate` until the runtime stops; TLS when `tls` is given.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    gate: Arc<Gate>,
    app: Router,
) {
    let mut last_error_log: Option<Instant> = None;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or buffers: the connection stays in the backlog; wait
                // rather than spin on it.
                if last_error_log.is_none_or(|t| t.elapsed() >= PRESSURE_LOG_EVERY) {
                    tracing::warn!(error = %e, "API: accept failed");
                    last_error_log = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        match gate.admit(peer.ip()) {
            Some(ticket) => {
                tokio::spawn(connection(tcp, peer, tls.clone(), ticket, app.clone()));
            }
            None => {
                if tls.is_none() {
                    // Best effort, never waiting: the socket is new, its buffer empty.
                    let _ = tcp.try_write(REFUSED);
                }
            }
        }
    }
}

/// The reaper: applies the idle and request timeouts until the runtime stops.
pub(crate) async fn reaper(gate: Arc<Gate>) {
    let mut tick = tokio::time::interval(REAP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        gate.reap();
    }
}

/// One connection: the TLS handshake if any, then HTTP/1 until the client leaves, hyper ends
/// it (a header timeout) or the gate closes it.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    ticket: Ticket,
    app: Router,
) {
    let gate = Arc::clone(&ticket.gate);
    let conn = Arc::clone(&ticket.conn);
    let io = Watched {
        inner: tcp,
        conn: Arc::clone(&conn),
        epoch: gate.epoch,
    };
    let work = async {
        let served = match tls {
            None => http(io, peer, &conn, &gate, app).await,
            Some(acceptor) => {
                match tokio::time::timeout(gate.limits.tls_handshake, acceptor.accept(io)).await {
                    Ok(Ok(tls)) => http(tls, peer, &conn, &gate, app).await,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        gate.count(Closed::TlsHandshake);
                        return;
                    }
                }
            }
        };
        if let Err(e) = served {
            if e.is_timeout() {
                gate.count(Closed::HeaderTimeout);
            }
            tracing::debug!(%peer, error = %e, "API connection ended");
        }
    };
    tokio::select! {
        () = work => {}
        () = conn.close.notified() => {}
    }
    drop(ticket);
}

/// HTTP/1 on `io`: every request goes into `app` with the peer's address and its connection,
/// and is counted in progress while it is handled.
async fn http<S>(
    io: S,
    peer: SocketAddr,
    conn: &Arc<Conn>,
    gate: &Arc<Gate>,
    app: Router,
) -> Result<(), hyper::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (conn, gate) = (Arc::clone(conn), Arc::clone(gate));
    let header_read = gate.limits.header_read;
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (app, conn, gate) = (app.clone(), Arc::clone(&conn), Arc::clone(&gate));
        async move {
            let _busy = Busy::begin(&conn, gate.now_ms());
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(Peer(peer)));
            req.extensions_mut().insert(ThisConnection(conn));
            app.oneshot(req).await
        }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .await
}

/// A request in progress on its connection.
struct Busy(Arc<Conn>);

impl Busy {
    fn begin(conn: &Arc<Conn>, now_ms: u64) -> Busy {
        if conn.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            conn.request_since_ms.store(now_ms, Ordering::Relaxed);
        }
        Busy(Arc::clone(conn))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that notes when a byte last moved either way (under TLS: handshakes count).
struct Watched<S> {
    inner: S,
    conn: Arc<Conn>,
    epoch: Instant,
}

impl<S> Watched<S> {
    fn moved(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.conn.last_io_ms.store(now, Ordering::Relaxed);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.moved();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.moved();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_per_client: usize) -> Limits {
        Limits {
            max_connections,
            max_per_client,
            ..Limits::for_descriptor_limit(1 << 20)
        }
    }

    fn conn(client: &str, last_io_ms: u64) -> Arc<Conn> {
        Arc::new(Conn {
            client: client_of(client.parse().unwrap()),
            last_io_ms: AtomicU64::new(last_io_ms),
            in_flight: AtomicU32::new(0),
            request_since_ms: AtomicU64::new(last_io_ms),
            long_poll: AtomicBool::new(false),
            live_stream: AtomicBool::new(false),
            close: Notify::new(),
        })
    }

    #[test]
    fn a_client_at_its_cap_loses_its_quietest_idle_connection_never_anothers() {
        let l = limits(10, 2);
        let mut t = Table::default();
        let (a1, _) = t.admit(conn("192.0.2.1", 5), &l).unwrap();
        let (_, _) = t.admit(conn("192.0.2.1", 9), &l).unwrap();
        let (_, _) = t.admit(conn("192.0.2.2", 1), &l).unwrap();
        let (_, evicted) = t.admit(conn("192.0.2.1", 20), &l).unwrap();
        assert_eq!(evicted.len(), 1);
        assert_eq!(evicted[0].last_io_ms.load(Ordering::Relaxed), 5);
        assert!(!t.conns.contains_key(&a1));
        assert_eq!(t.per_client[&client_of("192.0.2.1".parse().unwrap())], 2);
        // Every connection of the client busy: the new one is refused.
        for c in t.conns.values() {
            c.in_flight.store(1, Ordering::Relaxed);
        }
        assert_eq!(
            t.admit(conn("192.0.2.1", 30), &l).unwrap_err(),
            Closed::Refused
        );
        assert_eq!(t.conns.len(), 3);
    }

    #[test]
    fn at_the_total_cap_the_quietest_idle_connection_of_anyone_goes() {
        let l = limits(3, 3);
        let mut t = Table::default();
        t.admit(conn("192.0.2.1", 7), &l).unwrap();
        let (busy, _) = t.admit(conn("192.0.2.2", 1), &l).unwrap();
        t.conns[&busy].in_flight.store(1, Ordering::Relaxed);
        t.admit(conn("192.0.2.3", 4), &l).unwrap();
        let (_, evicted) = t.admit(conn("192.0.2.4", 9), &l).unwrap();
        // The busy one is quieter but is handling a request.
        assert_eq!(evicted[0].last_io_ms.load(Ordering::Relaxed), 4);
        assert_eq!(t.conns.len(), 3);
        assert!(t.conns.contains_key(&busy));
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        assert_eq!(
            client_of("2001:db8:1:2:aaaa::1".parse().unwrap()),
            client_of("2001:db8:1:2:bbbb::2".parse().unwrap())
        );
        assert_ne!(
            client_of("2001:db8:1:2::1".parse().unwrap()),
            client_of("2001:db8:1:3::1".parse().unwrap())
        );
        assert_eq!(
            client_of("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn timeouts_idle_request_and_long_poll() {
        let l = Limits {
            idle: Duration::from_millis(100),
            request: Duration::from_millis(1000),
            long_poll: Duration::from_millis(5000),
            ..limits(10, 10)
        };
        let mut t = Table::default();
        let (idle, _) = t.admit(conn("192.0.2.1", 0), &l).unwrap();
        let (request, _) = t.admit(conn("192.0.2.1", 0), &l).unwrap();
        let (poll, _) = t.admit(conn("192.0.2.1", 0), &l).unwrap();
        for id in [request, poll] {
            t.conns[&id].in_flight.store(1, Ordering::Relaxed);
        }
        t.conns[&poll].long_poll.store(true, Ordering::Relaxed);
        assert!(t.expired(99, &l).is_empty());
        assert_eq!(t.expired(100, &l), vec![(idle, Closed::Idle)]);
        let mut at_1s = t.expired(1000, &l);
        at_1s.sort_by_key(|x| x.0);
        assert_eq!(
            at_1s,
            vec![(idle, Closed::Idle), (request, Closed::RequestTimeout)]
        );
        assert!(
            t.expired(5000, &l)
                .contains(&(poll, Closed::RequestTimeout))
        );
    }

    /// A connection serving a live stream is busy while its body lives: no idle or request
    /// timeout however long its reader stalls, never evicted; then the idle rule again.
    #[test]
    fn a_live_stream_has_no_timeout_and_is_never_evicted() {
        let l = Limits {
            idle: Duration::from_millis(100),
            request: Duration::from_millis(1000),
            ..limits(2, 2)
        };
        let mut t = Table::default();
        let (id, _) = t.admit(conn("192.0.2.1", 0), &l).unwrap();
        let mark = ThisConnection(Arc::clone(&t.conns[&id])).live_stream();
        assert!(t.expired(1_000_000, &l).is_empty());
        t.admit(conn("192.0.2.1", 5), &l).unwrap();
        let (_, evicted) = t.admit(conn("192.0.2.1", 9), &l).unwrap();
        assert_eq!(evicted[0].last_io_ms.load(Ordering::Relaxed), 5);
        assert!(t.conns.contains_key(&id));
        drop(mark);
        assert!(t.expired(1_000_000, &l).contains(&(id, Closed::Idle)));
    }
}

//! A lean gRPC client for the request/response workloads (`put`, `range`, `txn-put`),
//! written directly on `h2` so that the benchmark spends little CPU of its own and adds
//! no latency of its own to the requests it measures.
//!
//! A unary call opens a stream, queues its HEADERS and its one DATA frame (the encoded
//! message, with END_STREAM) from the calling task, and the connection task writes both
//! in one flush, with those of every other client of the connection that queued a request
//! meanwhile (`Batched`, `Copying`), as grpc-go's writer batches the frames of its
//! streams. The answer is read in the same task: `:status` must be 200, the DATA
//! frames hold one length-prefixed message, and the `grpc-status` trailer (or, for a
//! trailers-only answer, header) decides success; `grpc-message` is percent-decoded into
//! the error. Received data is handed back to flow control as it is consumed.
//!
//! A [`GrpcConnection`] is one benchmark connection: one HTTP/2 connection (TCP_NODELAY)
//! per endpoint, each driven by its own task. Its [`GrpcClient`]s send each request to
//! the next endpoint round-robin, skipping endpoints whose connection is down, so with
//! several endpoints the load is spread as clientv3's balancer spreads it. A connection
//! that breaks fails the requests on it (with `Unavailable`, or the code of the HTTP/2
//! error); its task then dials again, waiting 20 ms, doubling up to 250 ms, between tries.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use h2::client::{Connection, SendRequest};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use skiff_etcd_proto::prost::bytes::{BufMut, Bytes, BytesMut};
use skiff_etcd_proto::prost::Message;
use tokio::net::TcpStream;
use tonic::{Code, Status};

use super::BenchError;

/// `etcdserverpb.KV/Put`.
pub const KV_PUT: &str = "/etcdserverpb.KV/Put";
/// `etcdserverpb.KV/Range`.
pub const KV_RANGE: &str = "/etcdserverpb.KV/Range";
/// `etcdserverpb.KV/Txn`.
pub const KV_TXN: &str = "/etcdserverpb.KV/Txn";

/// Largest response message accepted, as tonic's default receive limit.
pub const MAX_RESPONSE_MESSAGE: usize = 4 * 1024 * 1024;

/// Bytes before each gRPC message: a compression flag and a big-endian length.
const MESSAGE_PREFIX: usize = 5;
/// HTTP/2 receive windows, as hyper's (and so tonic's) client sets them.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// Waits between attempts to dial a broken connection again.
const FIRST_REDIAL_WAIT: Duration = Duration::from_millis(20);
const LAST_REDIAL_WAIT: Duration = Duration::from_millis(250);

/// One HTTP/2 connection to one endpoint, and what is known of its state.
struct Link {
    /// The endpoint as given (`http://host:port`), for errors.
    uri: String,
    /// `host:port`, for dialing and for `:authority`.
    authority: Authority,
    dial_timeout: Duration,
    /// False from the moment the connection is known to be broken until it is dialed again.
    up: AtomicBool,
    /// Bumped whenever `sender` is replaced, so clients know their copy is stale.
    generation: AtomicU64,
    /// The live connection's handle, when there is one.
    sender: Mutex<Option<SendRequest<Bytes>>>,
    /// Why the connection is down.
    last_error: Mutex<String>,
}

impl Link {
    fn down_error(&self) -> Status {
        let reason = self
            .last_error
            .lock()
            .map(|error| error.clone())
            .unwrap_or_default();
        Status::unavailable(format!("connection to {} is down: {reason}", self.uri))
    }

    fn mark_down(&self, reason: String) {
        if let Ok(mut error) = self.last_error.lock() {
            *error = reason;
        }
        self.up.store(false, Ordering::Release);
        if let Ok(mut sender) = self.sender.lock() {
            *sender = None;
        }
    }

    fn mark_up(&self, sender: SendRequest<Bytes>) {
        if let Ok(mut slot) = self.sender.lock() {
            *slot = Some(sender);
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.up.store(true, Ordering::Release);
    }
}

/// A TCP stream that tells `h2` it has no vectored writes. `h2` then copies a DATA frame of
/// up to 1 KiB into its write buffer instead of chaining it (it chains frames over 256
/// bytes when the stream writes vectors), and a chained frame ends the buffer: each put of a
/// 256-byte value went out in a write of its own, however many were queued. Copied, the
/// requests queued together go out together.
struct Copying(TcpStream);

impl tokio::io::AsyncRead for Copying {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Copying {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Opens a TCP connection with TCP_NODELAY and starts HTTP/2 on it.
async fn dial(
    authority: &Authority,
    dial_timeout: Duration,
) -> Result<(SendRequest<Bytes>, Connection<Copying, Bytes>), String> {
    let connecting = async {
        let tcp = TcpStream::connect(authority.as_str())
            .await
            .map_err(|error| error.to_string())?;
        tcp.set_nodelay(true).map_err(|error| error.to_string())?;
        h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake(Copying(tcp))
            .await
            .map_err(|error| format!("HTTP/2 handshake: {error}"))
    };
    match tokio::time::timeout(dial_timeout, connecting).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("timed out after {dial_timeout:?}")),
    }
}

/// Drives a link's connection (when it has one); when it ends, marks the link down and
/// dials again until that succeeds. Stops once nobody uses the link.
async fn keep_connected(
    link: Weak<Link>,
    clients: Arc<AtomicUsize>,
    mut connection: Option<Connection<Copying, Bytes>>,
) {
    loop {
        if let Some(connection) = connection.take() {
            let reason = match (Batched {
                connection,
                clients: &clients,
                yielded: false,
            })
            .await
            {
                Ok(()) => "connection closed".to_string(),
                Err(error) => error.to_string(),
            };
            let Some(strong) = link.upgrade() else { return };
            strong.mark_down(reason);
        }
        let mut wait = FIRST_REDIAL_WAIT;
        while connection.is_none() {
            tokio::time::sleep(wait).await;
            let Some(strong) = link.upgrade() else { return };
            match dial(&strong.authority, strong.dial_timeout).await {
                Ok((sender, next)) => {
                    strong.mark_up(sender);
                    connection = Some(next);
                }
                Err(error) => {
                    strong.mark_down(error);
                    wait = (wait * 2).min(LAST_REDIAL_WAIT);
                }
            }
        }
    }
}

/// A link's connection, polled so that the requests of the clients sharing it go out
/// together.
///
/// A client that queues a request wakes the connection's task, and tokio runs the task
/// woken last first: the connection would write that one request, then be woken again by
/// the next client the same read of answers woke, and so on, one write per request. So
/// when several clients share the connection, each wake-up first yields once, letting the
/// other tasks that are ready run (and queue their requests), and the poll after that
/// writes them all in one flush. A lone client has nothing to batch with, and a yield costs
/// a wake-up of another worker thread, so then the connection is polled at once.
struct Batched<'a, C> {
    connection: C,
    /// The clients of the benchmark connection the link belongs to.
    clients: &'a AtomicUsize,
    /// This wake-up was already yielded once.
    yielded: bool,
}

impl<C: Future + Unpin> Future for Batched<'_, C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        if !self.yielded && self.clients.load(Ordering::Relaxed) > 1 {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.yielded = false;
        Pin::new(&mut self.connection).poll(cx)
    }
}

struct Shared {
    links: Vec<Arc<Link>>,
    /// Live [`GrpcClient`]s of this connection.
    clients: Arc<AtomicUsize>,
    /// The round-robin position shared by the connection's clients.
    next: AtomicUsize,
}

/// One benchmark connection: an HTTP/2 connection to each endpoint.
#[derive(Clone)]
pub struct GrpcConnection {
    shared: Arc<Shared>,
}

impl GrpcConnection {
    /// Dials every endpoint (`http://host:port`, as [`super::connect::endpoint_uri`]
    /// gives). With several endpoints the unreachable ones are dialed again in the
    /// background; it is an error only if none can be reached.
    pub async fn open(uris: &[String], dial_timeout: Duration) -> Result<Self, BenchError> {
        assert!(!uris.is_empty(), "at least one endpoint");
        let mut links = Vec::with_capacity(uris.len());
        let mut failures = Vec::new();
        let clients = Arc::new(AtomicUsize::new(0));
        for uri in uris {
            let parsed: Uri = uri.parse().map_err(|_| BenchError::Connect {
                endpoint: uri.clone(),
                reason: "not a URI".to_string(),
            })?;
            let authority = parsed.authority().cloned().ok_or(BenchError::Connect {
                endpoint: uri.clone(),
                reason: "no host:port".to_string(),
            })?;
            let link = Arc::new(Link {
                uri: uri.clone(),
                authority,
                dial_timeout,
                up: AtomicBool::new(false),
                generation: AtomicU64::new(0),
                sender: Mutex::new(None),
                last_error: Mutex::new(String::new()),
            });
            let connection = match dial(&link.authority, dial_timeout).await {
                Ok((sender, connection)) => {
                    link.mark_up(sender);
                    Some(connection)
                }
                Err(reason) => {
                    failures.push(BenchError::Connect {
                        endpoint: uri.clone(),
                        reason: reason.clone(),
                    });
                    link.mark_down(reason);
                    None
                }
            };
            tokio::spawn(keep_connected(
                Arc::downgrade(&link),
                Arc::clone(&clients),
                connection,
            ));
            links.push(link);
        }
        if failures.len() == uris.len() {
            return Err(failures.swap_remove(0));
        }
        Ok(GrpcConnection {
            shared: Arc::new(Shared {
                links,
                clients,
                next: AtomicUsize::new(0),
            }),
        })
    }

    /// A client for one task; clients of a connection share its HTTP/2 connections.
    pub fn client(&self) -> GrpcClient {
        self.shared.clients.fetch_add(1, Ordering::Relaxed);
        GrpcClient {
            shared: Arc::clone(&self.shared),
            senders: vec![None; self.shared.links.len()],
        }
    }
}

/// Sends unary calls over a [`GrpcConnection`], one at a time.
pub struct GrpcClient {
    shared: Arc<Shared>,
    /// This client's handle on each link's connection, with the link generation it is of.
    senders: Vec<Option<(u64, SendRequest<Bytes>)>>,
}

impl Drop for GrpcClient {
    fn drop(&mut self) {
        self.shared.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl GrpcClient {
    /// Calls `path` (e.g. [`KV_PUT`]) with `request` and decodes the answer.
    pub async fn unary<Q: Message, R: Message + Default>(
        &mut self,
        path: &'static str,
        request: &Q,
    ) -> Result<R, Status> {
        let message = self.call(path, request).await?;
        R::decode(message)
            .map_err(|error| Status::internal(format!("cannot decode the answer: {error}")))
    }

    /// Calls `path` with `request`; the answer's message, undecoded.
    pub async fn call<Q: Message>(
        &mut self,
        path: &'static str,
        request: &Q,
    ) -> Result<Bytes, Status> {
        let index = self.pick()?;
        let authority = self.shared.links[index].authority.clone();
        let Some((_, sender)) = self.senders[index].as_mut() else {
            unreachable!("pick leaves a handle for the link it picks");
        };
        std::future::poll_fn(|cx| sender.poll_ready(cx))
            .await
            .map_err(|error| h2_status(&error))?;
        let uri = Uri::from_parts({
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTP);
            parts.authority = Some(authority);
            parts.path_and_query = Some(PathAndQuery::from_static(path));
            parts
        })
        .map_err(|error| Status::internal(format!("bad request URI: {error}")))?;
        let mut http_request = Request::new(());
        *http_request.method_mut() = Method::POST;
        *http_request.uri_mut() = uri;
        let headers = http_request.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));

        let (response, mut stream) = sender
            .send_request(http_request, false)
            .map_err(|error| h2_status(&error))?;
        // An error here means the stream is already closed: the server answered (say, an
        // unknown method, before the message reached it) or reset the stream, or the
        // connection broke. Either way the response tells which.
        let _ = stream.send_data(encode(request), true);
        let response = response.await.map_err(|error| h2_status(&error))?;
        let (parts, mut body) = response.into_parts();
        if let Some(status) = grpc_status(&parts.headers) {
            // Trailers-only: no message follows.
            return Err(match status {
                Ok(()) => Status::internal("the answer has no message"),
                Err(status) => status,
            });
        }
        if parts.status != StatusCode::OK {
            return Err(http_status(parts.status));
        }
        let mut message = Received::default();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|error| h2_status(&error))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            message.push(chunk)?;
        }
        let trailers = body.trailers().await.map_err(|error| h2_status(&error))?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(Ok(())) => message.finish(),
            Some(Err(status)) => Err(status),
            None => Err(Status::unknown(
                "protocol error: missing grpc-status trailer",
            )),
        }
    }

    /// The next live endpoint round-robin; leaves this client's handle on its connection
    /// in `senders`.
    fn pick(&mut self) -> Result<usize, Status> {
        let count = self.shared.links.len();
        let start = if count == 1 {
            0
        } else {
            self.shared.next.fetch_add(1, Ordering::Relaxed) % count
        };
        for step in 0..count {
            let index = (start + step) % count;
            let link = &self.shared.links[index];
            if !link.up.load(Ordering::Acquire) {
                continue;
            }
            let generation = link.generation.load(Ordering::Acquire);
            if matches!(&self.senders[index], Some((cached, _)) if *cached == generation) {
                return Ok(index);
            }
            let current = link.sender.lock().ok().and_then(|slot| slot.clone());
            if let Some(sender) = current {
                self.senders[index] = Some((generation, sender));
                return Ok(index);
            }
        }
        Err(self.shared.links[start].down_error())
    }
}

/// One gRPC message: uncompressed flag, big-endian length, the protobuf bytes.
fn encode<Q: Message>(request: &Q) -> Bytes {
    let length = request.encoded_len();
    let mut buffer = BytesMut::with_capacity(MESSAGE_PREFIX + length);
    buffer.put_u8(0);
    buffer.put_u32(length as u32);
    request
        .encode(&mut buffer)
        .expect("the buffer has room for the message");
    buffer.freeze()
}

/// The DATA of an answer, gathered until it holds the one message.
#[derive(Default)]
struct Received {
    chunks: Vec<Bytes>,
    length: usize,
}

impl Received {
    fn push(&mut self, chunk: Bytes) -> Result<(), Status> {
        self.length += chunk.len();
        if self.length > MESSAGE_PREFIX + MAX_RESPONSE_MESSAGE {
            return Err(too_large(self.length - MESSAGE_PREFIX));
        }
        if !chunk.is_empty() {
            self.chunks.push(chunk);
        }
        Ok(())
    }

    fn finish(self) -> Result<Bytes, Status> {
        let whole = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => {
                let mut joined = BytesMut::with_capacity(self.length);
                for chunk in &self.chunks {
                    joined.extend_from_slice(chunk);
                }
                joined.freeze()
            }
        };
        if whole.len() < MESSAGE_PREFIX {
            return Err(Status::internal("the answer has no message"));
        }
        match whole[0] {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "the answer is compressed, which was not asked for",
                ))
            }
            flag => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {flag}"
                )))
            }
        }
        let length = u32::from_be_bytes([whole[1], whole[2], whole[3], whole[4]]) as usize;
        if length > MAX_RESPONSE_MESSAGE {
            return Err(too_large(length));
        }
        if whole.len() != MESSAGE_PREFIX + length {
            return Err(Status::internal(format!(
                "the answer holds {} bytes after a message of {length}",
                whole.len() as i64 - (MESSAGE_PREFIX + length) as i64
            )));
        }
        Ok(whole.slice(MESSAGE_PREFIX..))
    }
}

fn too_large(length: usize) -> Status {
    Status::out_of_range(format!(
        "Error, decoded message length too large: found {length} bytes, the limit is: {MAX_RESPONSE_MESSAGE} bytes"
    ))
}

/// `grpc-status` and `grpc-message` from `headers`: `None` without a `grpc-status`.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), Status>> {
    let value = headers.get("grpc-status")?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .map(Code::from_i32)
        .unwrap_or(Code::Unknown);
    if code == Code::Ok {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|value| percent_decode(value.as_bytes()))
        .unwrap_or_default();
    Some(Err(Status::new(code, message)))
}

/// gRPC's `grpc-message` encoding: `%XX` for bytes outside printable ASCII (and `%`).
fn percent_decode(encoded: &[u8]) -> String {
    fn hex(digit: u8) -> Option<u8> {
        (digit as char).to_digit(16).map(|value| value as u8)
    }
    let mut decoded = Vec::with_capacity(encoded.len());
    let mut position = 0;
    while position < encoded.len() {
        let byte = encoded[position];
        if byte == b'%' && position + 2 < encoded.len() {
            if let (Some(high), Some(low)) =
                (hex(encoded[position + 1]), hex(encoded[position + 2]))
            {
                decoded.push(high << 4 | low);
                position += 3;
                continue;
            }
        }
        decoded.push(byte);
        position += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// gRPC's mapping of an HTTP status without `grpc-status` to a code.
fn http_status(status: StatusCode) -> Status {
    let code = match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(
        code,
        format!(
            "grpc-status header missing, mapped from HTTP status code {}",
            status.as_u16()
        ),
    )
}

/// An HTTP/2 error as a status: a reset stream by gRPC's mapping of its reason, a broken
/// or closing connection as `Unavailable`.
fn h2_status(error: &h2::Error) -> Status {
    let code = if error.is_io() || error.is_go_away() {
        Code::Unavailable
    } else {
        match error.reason() {
            Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
            Some(h2::Reason::CANCEL) => Code::Cancelled,
            Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
            Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
            Some(_) => Code::Internal,
            None => Code::Unavailable,
        }
    };
    Status::new(code, format!("h2 protocol error: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_etcd_proto::etcdserverpb::ResponseHeader;
    use skiff_etcd_proto::etcdserverpb::{PutRequest, PutResponse, RangeRequest, RangeResponse};
    use std::net::{SocketAddr, TcpListener as StdListener};
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, watch};

    const PATIENCE: Duration = Duration::from_secs(10);

    // ----- batching the requests of clients that share a connection -----

    /// Counts the wake-ups of the task polling it.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A connection that counts its polls and is never done.
    struct Polls(usize);

    impl Future for Polls {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            self.0 += 1;
            Poll::Pending
        }
    }

    /// Polls a connection shared by `clients` clients `polls` times; after each poll, how
    /// many times the connection itself was polled and the task was woken.
    fn poll_batched(clients: usize, polls: usize) -> Vec<(usize, usize)> {
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let clients = AtomicUsize::new(clients);
        let mut batched = Batched {
            connection: Polls(0),
            clients: &clients,
            yielded: false,
        };
        (0..polls)
            .map(|_| {
                assert!(Pin::new(&mut batched).poll(&mut cx).is_pending());
                (batched.connection.0, wakes.0.load(Ordering::SeqCst))
            })
            .collect()
    }

    #[test]
    fn a_shared_connection_lets_the_other_tasks_run_before_each_poll() {
        // Woken (by a client or the socket), it first yields, asking to run again; when it
        // does, the connection is polled, with no wake-up of its own.
        assert_eq!(
            poll_batched(2, 6),
            vec![(0, 1), (1, 1), (1, 2), (2, 2), (2, 3), (3, 3)]
        );
    }

    #[test]
    fn a_connection_of_one_client_is_polled_at_once() {
        assert_eq!(poll_batched(1, 3), vec![(1, 0), (2, 0), (3, 0)]);
    }

    #[tokio::test]
    async fn clients_are_counted_while_they_live() {
        let member = Member::start().await;
        let connection = member.connect().await;
        let first = connection.client();
        let second = connection.client();
        assert_eq!(connection.shared.clients.load(Ordering::Relaxed), 2);
        drop(first);
        assert_eq!(connection.shared.clients.load(Ordering::Relaxed), 1);
        drop(second);
        assert_eq!(connection.shared.clients.load(Ordering::Relaxed), 0);
        member.stop().await;
    }

    // ----- against an in-process Skiff member -----

    struct Member {
        uri: String,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
        directory: std::path::PathBuf,
    }

    impl Member {
        async fn start() -> Member {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .subsec_nanos();
            let directory = std::env::temp_dir()
                .join(format!("skiff-grpc-test-{}-{nanos}", std::process::id()));
            // Both ports held at once, so they differ.
            let client = StdListener::bind("127.0.0.1:0").expect("bind a port");
            let peer = StdListener::bind("127.0.0.1:0").expect("bind a port");
            let client_address = client.local_addr().expect("an address");
            let peer_address = peer.local_addr().expect("an address");
            drop((client, peer));
            let peer_url = format!("http://{peer_address}");
            let mut config = skiff_server::ServerConfig::with_defaults("grpc-test");
            config.data_dir = directory.clone();
            config.listen_client = vec![client_address];
            config.advertise_client_urls = vec![format!("http://{client_address}")];
            config.listen_peer = vec![peer_address];
            config.initial_advertise_peer_urls = vec![peer_url.clone()];
            config.initial_cluster = vec![skiff_server::InitialMember {
                name: "grpc-test".to_string(),
                peer_urls: vec![peer_url],
            }];
            config.heartbeat_interval = Duration::from_millis(10);
            config.election_timeout = Duration::from_millis(100);
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(error) = skiff_server::run(config, shutdown).await {
                    panic!("the test member failed: {error}");
                }
            });
            Member {
                uri: format!("http://{client_address}"),
                stop: Some(stop),
                task,
                directory,
            }
        }

        /// A connection once the member answers a linearizable read.
        async fn connect(&self) -> GrpcConnection {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            loop {
                if let Ok(connection) =
                    GrpcConnection::open(std::slice::from_ref(&self.uri), Duration::from_secs(1))
                        .await
                {
                    let probe = RangeRequest {
                        key: Bytes::from_static(b"health"),
                        ..RangeRequest::default()
                    };
                    let read = connection
                        .client()
                        .unary::<_, RangeResponse>(KV_RANGE, &probe)
                        .await;
                    if read.is_ok() {
                        return connection;
                    }
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the member is not up"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }

        async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
            task.await.expect("the member stops cleanly");
        }
    }

    impl Drop for Member {
        fn drop(&mut self) {
            self.task.abort();
            let _ = std::fs::remove_dir_all(&self.directory);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn skiff_answers_calls_and_errors_come_back_with_code_and_message() {
        let member = Member::start().await;
        let connection = member.connect().await;
        let mut client = connection.client();

        let put: PutResponse = client
            .unary(
                KV_PUT,
                &PutRequest {
                    key: Bytes::from_static(b"greeting"),
                    value: Bytes::from_static(b"hello"),
                    ..PutRequest::default()
                },
            )
            .await
            .expect("put");
        let revision = put.header.expect("a header").revision;
        assert!(revision >= 2, "revision {revision}");

        let greeting = || RangeRequest {
            key: Bytes::from_static(b"greeting"),
            ..RangeRequest::default()
        };
        let range: RangeResponse = client.unary(KV_RANGE, &greeting()).await.expect("range");
        assert_eq!(range.kvs.len(), 1);
        assert_eq!(&range.kvs[0].value[..], b"hello");
        assert_eq!(range.kvs[0].mod_revision, revision);

        // An error in the trailers, after the response headers.
        let future = client
            .unary::<_, RangeResponse>(
                KV_RANGE,
                &RangeRequest {
                    revision: revision + 1000,
                    ..greeting()
                },
            )
            .await
            .expect_err("a future revision is refused");
        assert_eq!(future.code(), Code::OutOfRange, "{future:?}");
        assert_eq!(
            future.message(),
            "etcdserver: mvcc: required revision is a future revision"
        );

        // A trailers-only answer: a service the server does not have.
        let unknown = client
            .unary::<_, RangeResponse>("/etcdserverpb.Nope/Range", &RangeRequest::default())
            .await
            .expect_err("no such service");
        assert_eq!(unknown.code(), Code::Unimplemented, "{unknown:?}");
        assert_eq!(unknown.message(), "unknown service etcdserverpb.Nope");

        // The connection still serves calls after the errors.
        let again: RangeResponse = client
            .unary(KV_RANGE, &greeting())
            .await
            .expect("range after errors");
        assert_eq!(again.header.expect("a header").revision, revision);

        drop((client, connection));
        member.stop().await;
    }

    // ----- against a scripted HTTP/2 server -----

    /// What the scripted server does with a request.
    #[derive(Clone)]
    enum Answer {
        /// 200, the DATA frames given, then `grpc-status: 0`.
        Message(Vec<Bytes>),
        /// 200, no DATA, then trailers with this status and (encoded) message.
        Status(i32, &'static str),
        /// One HEADERS frame with END_STREAM carrying the status.
        TrailersOnly(i32, &'static str),
        /// An HTTP status without any gRPC status.
        Http(u16),
        /// Close the connection without answering.
        Hangup,
    }

    struct Scripted {
        uri: String,
        requests: Arc<AtomicUsize>,
        stop: watch::Sender<bool>,
    }

    type Script = Arc<dyn Fn(usize) -> Answer + Send + Sync>;

    /// A server whose answer to its request number `n` (from 0) is `script(n)`.
    async fn scripted(script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Scripted {
        let script: Script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri = format!("http://{}", listener.local_addr().expect("an address"));
        let requests = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = watch::channel(false);
        let counter = Arc::clone(&requests);
        tokio::spawn(async move {
            let mut stopping = stopped.clone();
            loop {
                let tcp = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => return,
                    },
                    _ = stopping.changed() => return,
                };
                tokio::spawn(serve_connection(
                    tcp,
                    Arc::clone(&script),
                    Arc::clone(&counter),
                    stopped.clone(),
                ));
            }
        });
        Scripted {
            uri,
            requests,
            stop,
        }
    }

    async fn serve_connection(
        tcp: TcpStream,
        script: Script,
        requests: Arc<AtomicUsize>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let Ok(mut connection) = h2::server::handshake(tcp).await else {
            return;
        };
        let (hangup, mut hangups) = mpsc::channel::<()>(1);
        loop {
            let accepted = tokio::select! {
                accepted = connection.accept() => accepted,
                _ = hangups.recv() => return,
                _ = stopping.changed() => return,
            };
            let Some(Ok((request, mut respond))) = accepted else {
                return;
            };
            let answer = script(requests.fetch_add(1, Ordering::SeqCst));
            let hangup = hangup.clone();
            tokio::spawn(async move {
                let mut body = request.into_body();
                while let Some(Ok(chunk)) = body.data().await {
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                let grpc = |status: Option<(i32, &str)>| {
                    let mut builder = http::Response::builder()
                        .status(200)
                        .header("content-type", "application/grpc");
                    if let Some((code, message)) = status {
                        builder = builder
                            .header("grpc-status", code.to_string())
                            .header("grpc-message", message);
                    }
                    builder.body(()).expect("a valid response")
                };
                let trailers = |code: i32, message: &str| {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", code.to_string().parse().expect("digits"));
                    trailers.insert("grpc-message", message.parse().expect("visible ASCII"));
                    trailers
                };
                match answer {
                    Answer::Message(chunks) => {
                        let mut stream = respond.send_response(grpc(None), false).expect("send");
                        for chunk in chunks {
                            stream.send_data(chunk, false).expect("send");
                        }
                        stream.send_trailers(trailers(0, "")).expect("send");
                    }
                    Answer::Status(code, message) => {
                        let mut stream = respond.send_response(grpc(None), false).expect("send");
                        stream.send_trailers(trailers(code, message)).expect("send");
                    }
                    Answer::TrailersOnly(code, message) => {
                        respond
                            .send_response(grpc(Some((code, message))), true)
                            .expect("send");
                    }
                    Answer::Http(status) => {
                        let response = http::Response::builder()
                            .status(status)
                            .body(())
                            .expect("a valid response");
                        respond.send_response(response, true).expect("send");
                    }
                    Answer::Hangup => {
                        // Holds the stream until the connection is gone, so that it is not
                        // reset on its own first.
                        let _ = hangup.send(()).await;
                        hangup.closed().await;
                        drop(respond);
                    }
                }
            });
        }
    }

    fn put_response(revision: i64) -> Bytes {
        encode(&PutResponse {
            header: Some(ResponseHeader {
                revision,
                ..ResponseHeader::default()
            }),
            prev_kv: None,
        })
    }

    async fn put(client: &mut GrpcClient) -> Result<PutResponse, Status> {
        let request = PutRequest::default();
        let call = client.unary(KV_PUT, &request);
        tokio::time::timeout(PATIENCE, call)
            .await
            .expect("the call ends in time")
    }

    async fn wait_down(connection: &GrpcConnection, link: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while connection.shared.links[link].up.load(Ordering::Acquire) {
            assert!(tokio::time::Instant::now() < deadline, "link stays up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn closed_port_uri() -> String {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        let address: SocketAddr = listener.local_addr().expect("an address");
        drop(listener);
        format!("http://{address}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_split_over_frames_and_every_kind_of_status() {
        let message = put_response(7);
        let answers = vec![
            Answer::Message(vec![
                message.slice(..2),
                message.slice(2..3),
                message.slice(3..),
            ]),
            Answer::Status(9, "caf%C3%A9 at 100%25 %zz"),
            Answer::TrailersOnly(5, "not%20here"),
            Answer::Http(404),
            Answer::Message(vec![message.clone(), Bytes::from_static(b"extra")]),
            Answer::Message(vec![]),
            Answer::TrailersOnly(0, ""),
        ];
        let script = answers.clone();
        let server = scripted(move |number| script[number % script.len()].clone()).await;
        let connection = GrpcConnection::open(std::slice::from_ref(&server.uri), PATIENCE)
            .await
            .expect("connect");
        let mut client = connection.client();

        let answer = put(&mut client).await.expect("a split message");
        assert_eq!(answer.header.expect("a header").revision, 7);

        let error = put(&mut client).await.expect_err("status 9");
        assert_eq!(error.code(), Code::FailedPrecondition);
        assert_eq!(error.message(), "café at 100% %zz");

        let error = put(&mut client).await.expect_err("trailers-only");
        assert_eq!(error.code(), Code::NotFound);
        assert_eq!(error.message(), "not here");

        let error = put(&mut client).await.expect_err("HTTP 404");
        assert_eq!(error.code(), Code::Unimplemented);
        assert!(error.message().contains("404"), "{error:?}");

        for case in ["trailing bytes", "no message", "trailers-only OK"] {
            let error = put(&mut client).await.expect_err(case);
            assert_eq!(error.code(), Code::Internal, "{case}: {error:?}");
        }
        assert_eq!(server.requests.load(Ordering::SeqCst), answers.len());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broken_connection_fails_its_request_and_is_dialed_again() {
        let message = put_response(3);
        let server = scripted(move |number| {
            if number == 0 {
                Answer::Hangup
            } else {
                Answer::Message(vec![message.clone()])
            }
        })
        .await;
        let connection = GrpcConnection::open(std::slice::from_ref(&server.uri), PATIENCE)
            .await
            .expect("connect");
        let mut client = connection.client();
        let error = put(&mut client).await.expect_err("the server hung up");
        assert_eq!(error.code(), Code::Unavailable, "{error:?}");

        // Later requests go over a new connection once it is up; until then they fail
        // at once.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            match put(&mut client).await {
                Ok(answer) => {
                    assert_eq!(answer.header.expect("a header").revision, 3);
                    break;
                }
                Err(error) => assert_eq!(error.code(), Code::Unavailable, "{error:?}"),
            }
            assert!(tokio::time::Instant::now() < deadline, "never reconnected");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_spread_over_endpoints_and_skip_the_down_ones() {
        let message = put_response(1);
        let answer = move |_| Answer::Message(vec![message.clone()]);
        let first = scripted(answer.clone()).await;
        let second = scripted(answer).await;
        let connection = GrpcConnection::open(&[first.uri.clone(), second.uri.clone()], PATIENCE)
            .await
            .expect("connect");
        let mut clients = [connection.client(), connection.client()];
        for round in 0..10 {
            put(&mut clients[round % 2]).await.expect("put");
        }
        assert_eq!(first.requests.load(Ordering::SeqCst), 5);
        assert_eq!(second.requests.load(Ordering::SeqCst), 5);

        let _ = second.stop.send(true);
        wait_down(&connection, 1).await;
        for round in 0..10 {
            put(&mut clients[round % 2])
                .await
                .expect("put to the live endpoint");
        }
        assert_eq!(first.requests.load(Ordering::SeqCst), 15);
        assert_eq!(second.requests.load(Ordering::SeqCst), 5);

        let _ = first.stop.send(true);
        wait_down(&connection, 0).await;
        let error = put(&mut clients[0]).await.expect_err("no endpoint is up");
        assert_eq!(error.code(), Code::Unavailable);
        assert!(error.message().contains("is down"), "{error:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opening_needs_one_reachable_endpoint() {
        let closed = closed_port_uri();
        match GrpcConnection::open(std::slice::from_ref(&closed), PATIENCE).await {
            Err(BenchError::Connect { endpoint, .. }) => assert_eq!(endpoint, closed),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("connected to a closed port"),
        }

        let message = put_response(1);
        let live = scripted(move |_| Answer::Message(vec![message.clone()])).await;
        let connection = GrpcConnection::open(&[closed, live.uri.clone()], PATIENCE)
            .await
            .expect("one endpoint is enough");
        let mut client = connection.client();
        for _ in 0..4 {
            put(&mut client).await.expect("put to the live endpoint");
        }
        assert_eq!(live.requests.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode(b"plain text"), "plain text");
        assert_eq!(percent_decode(b"100%25 caf%C3%A9"), "100% café");
        assert_eq!(percent_decode(b"%zz %4 %"), "%zz %4 %");
        assert_eq!(percent_decode(b"%ff"), "\u{fffd}");
    }

    #[test]
    fn a_response_is_exactly_one_bounded_message() {
        let received = |chunks: &[&'static [u8]]| {
            let mut received = Received::default();
            for chunk in chunks {
                received.push(Bytes::from_static(chunk))?;
            }
            received.finish()
        };
        assert_eq!(&received(&[b"\0\0\0", b"\0\x02ab"]).expect("ok")[..], b"ab");
        assert_eq!(received(&[b"\0\0\0\0\0"]).expect("empty message").len(), 0);
        assert!(received(&[b"\0\0\0\0\x02a"]).is_err(), "short");
        assert!(received(&[b"\0\0\0\0\x01ab"]).is_err(), "long");
        assert!(received(&[b"\x01\0\0\0\x01a"]).is_err(), "compressed");
        let too_large = received(&[b"\0\x7f\0\0\0"]).expect_err("too large");
        assert_eq!(too_large.code(), Code::OutOfRange);

        let mut received = Received::default();
        let big = Bytes::from(vec![0u8; MESSAGE_PREFIX + MAX_RESPONSE_MESSAGE + 1]);
        assert!(received.push(big).is_err(), "more than a message's worth");
    }
}

//! The calling side: one stream task per peer, and the forwarding connection.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use skiff_etcd_proto::skiffpb::peer_client::PeerClient;
use skiff_etcd_proto::skiffpb::{peer_frame, ForwardRequest, Hello, PeerFrame};
use skiff_raft::NodeId;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use super::{
    wire, EventSink, ForwardError, PeerIdentity, PeerQueue, Queued, TransportEvent,
    TransportLimits, Work, PROTOCOL_VERSION,
};

/// Protobuf overhead of a frame around its batch, upper bound.
pub(super) const FRAME_OVERHEAD: usize = 32;

/// An endpoint for `url` with the transport's connection settings.
fn endpoint(url: &str, limits: &TransportLimits) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_string())?
        .connect_timeout(limits.connect_timeout)
        .tcp_nodelay(true)
        .initial_stream_window_size(limits.stream_window_bytes)
        .initial_connection_window_size(limits.connection_window_bytes)
        .http2_keep_alive_interval(limits.keepalive_interval)
        .keep_alive_timeout(limits.keepalive_timeout)
        .keep_alive_while_idle(true))
}

/// Connects to `url`, bounded by the connect timeout even if the endpoint's own timeout does
/// not cover the HTTP/2 handshake.
pub(super) async fn connect(url: &str, limits: &TransportLimits) -> Result<Channel, String> {
    let endpoint = endpoint(url, limits).map_err(|e| format!("bad peer URL {url:?}: {e}"))?;
    match tokio::time::timeout(limits.connect_timeout, endpoint.connect()).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(format!("connect to {url} failed: {}", error_chain(&e))),
        Err(_) => Err(format!("connect to {url} timed out")),
    }
}

/// An error and its sources, for logs.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A small xorshift generator for backoff jitter, seeded per task.
struct Jitter(u64);

impl Jitter {
    fn new(id: NodeId) -> Jitter {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(id);
        Jitter(hasher.finish() | 1)
    }

    /// `delay` scaled by a random factor in [0.5, 1.0).
    fn apply(&mut self, delay: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let fraction = (self.0 >> 11) as f64 / (1u64 << 53) as f64;
        delay.mul_f64(0.5 + fraction / 2.0)
    }
}

/// Why a stream ended.
enum StreamEnd {
    /// The transport closed the peer's queue: stop.
    Closed,
    /// The connection or stream failed.
    Broken(String),
}

/// Everything one peer's stream task needs.
pub(super) struct PeerLink {
    pub(super) id: NodeId,
    pub(super) urls: Vec<String>,
    pub(super) queue: Arc<PeerQueue>,
    pub(super) identity: Arc<PeerIdentity>,
    pub(super) sink: EventSink,
    pub(super) limits: Arc<TransportLimits>,
}

impl PeerLink {
    /// Connects, streams, and reconnects with backoff until the queue is closed.
    pub(super) async fn run(self) {
        let peer = format!("{:x}", self.id);
        let mut jitter = Jitter::new(self.id ^ self.identity.member_id);
        let mut backoff = self.limits.backoff_min;
        let mut attempt: usize = 0;
        loop {
            if self.queue.is_closed() {
                break;
            }
            let started = Instant::now();
            let failure = match self.urls.get(attempt % self.urls.len().max(1)) {
                None => "peer has no URLs".to_string(),
                Some(url) => match connect_message_stream(url, &self.limits).await {
                    Err(e) => {
                        attempt = attempt.wrapping_add(1);
                        e
                    }
                    Ok(stream) => {
                        tracing::debug!(peer = %peer, url = %url, "connected to peer");
                        match self.stream(stream).await {
                            StreamEnd::Closed => break,
                            StreamEnd::Broken(e) => e,
                        }
                    }
                },
            };
            let dropped = self.queue.clear();
            tracing::warn!(peer = %peer, dropped, error = %failure, "peer unreachable");
            (self.sink)(TransportEvent::Unreachable(self.id));
            // A stream that stayed up for a while was healthy: start the backoff over.
            if started.elapsed() >= self.limits.backoff_max * 2 {
                backoff = self.limits.backoff_min;
            }
            tokio::time::sleep(jitter.apply(backoff)).await;
            backoff = (backoff * 2).min(self.limits.backoff_max);
        }
        tracing::debug!(peer = %peer, "peer stream task stopped");
    }

    fn hello(&self) -> PeerFrame {
        PeerFrame {
            frame: Some(peer_frame::Frame::Hello(Hello {
                cluster_id: self.identity.cluster_id,
                from: self.identity.member_id,
                to: self.id,
                name: self.identity.name.clone(),
                client_urls: self.identity.client_urls.clone(),
                protocol_version: PROTOCOL_VERSION,
            })),
        }
    }

    /// One message stream (see [`wire`]): the magic and the hello, then frames, until it
    /// breaks. While it is up, [`PeerQueue::push`] writes to it directly when it can; this
    /// task writes what could not be written that way. The receiver sends nothing unless it
    /// refuses the stream, so anything read (or the connection closing) ends it.
    async fn stream(&self, stream: TcpStream) -> StreamEnd {
        let (read, write) = stream.into_split();
        let write = Arc::new(write);
        let mut buf = BytesMut::with_capacity(64 << 10);
        buf.extend_from_slice(wire::MAGIC);
        wire::put_frame(&mut buf, &self.hello());
        if let Err(e) = write_all(&write, &buf).await {
            return StreamEnd::Broken(format!("sending the hello failed: {e}"));
        }
        self.queue.attach(Arc::clone(&write));
        let mut answers = wire::FrameReader::new(read, BytesMut::new(), MAX_REFUSAL_BYTES);
        let ended = async {
            match answers.next().await {
                Ok(reason) => StreamEnd::Broken(format!(
                    "peer refused the stream: {}",
                    String::from_utf8_lossy(&reason)
                )),
                Err(e) => StreamEnd::Broken(format!("peer closed the stream: {e}")),
            }
        };
        tokio::pin!(ended);
        let budget = frame_budget(&self.limits);
        loop {
            let work = tokio::select! {
                end = &mut ended => return end,
                work = self.queue.next_work(budget) => work,
            };
            let bytes = match work {
                None => return StreamEnd::Closed,
                Some(Work::Unsent(bytes)) => bytes,
                Some(Work::Batch(batch)) => {
                    buf.clear();
                    if buf.capacity() > MAX_KEPT_BUFFER {
                        buf = BytesMut::with_capacity(64 << 10);
                    }
                    if !self.put_batch(batch, budget, &mut buf) {
                        self.queue.written();
                        continue;
                    }
                    buf.split().freeze()
                }
            };
            tokio::select! {
                end = &mut ended => return end,
                written = write_all(&write, &bytes) => {
                    if let Err(e) = written {
                        return StreamEnd::Broken(format!("write failed: {e}"));
                    }
                }
            }
            self.queue.written();
        }
    }

    /// Encodes a batch as one frame into `buf` (each message straight into place, no
    /// intermediate copies); drops (and logs) a message that alone exceeds the frame limit.
    /// False when nothing is left to send.
    fn put_batch(&self, batch: Vec<Queued>, budget: usize, buf: &mut BytesMut) -> bool {
        let mut messages = Vec::with_capacity(batch.len());
        for Queued { message, size } in batch {
            if size > budget {
                tracing::error!(
                    peer = %format_args!("{:x}", self.id),
                    kind = message.body.name(),
                    size,
                    limit = self.limits.max_frame_bytes,
                    "message larger than the frame limit dropped"
                );
                continue;
            }
            messages.push(message);
        }
        if messages.is_empty() {
            return false;
        }
        tracing::trace!(peer = %format_args!("{:x}", self.id), count = messages.len(), "sending frame");
        wire::put_batch(buf, messages.iter());
        true
    }
}

/// Writes all of `bytes` to a stream that other threads may also write to when idle (see
/// [`PeerQueue::push`]).
async fn write_all(stream: &OwnedWriteHalf, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Most bytes of messages in one frame.
pub(super) fn frame_budget(limits: &TransportLimits) -> usize {
    limits.max_frame_bytes.saturating_sub(FRAME_OVERHEAD).max(1)
}

/// Largest refusal a receiver sends back.
const MAX_REFUSAL_BYTES: usize = 64 << 10;
/// A write buffer grown past this by a large batch is not kept for the next one.
const MAX_KEPT_BUFFER: usize = 4 << 20;

/// Opens a TCP connection to the peer port in `url` for a message stream: no delay, and
/// kept alive so that a peer gone silent breaks the stream (as HTTP/2 pings do for gRPC).
async fn connect_message_stream(url: &str, limits: &TransportLimits) -> Result<TcpStream, String> {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .map_err(|e| format!("bad peer URL {url:?}: {e}"))?;
    let (Some(host), Some(port)) = (uri.host(), uri.port_u16()) else {
        return Err(format!("bad peer URL {url:?}: no host and port"));
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let stream = match tokio::time::timeout(
        limits.connect_timeout,
        TcpStream::connect((host, port)),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("connect to {url} failed: {e}")),
        Err(_) => return Err(format!("connect to {url} timed out")),
    };
    let socket = socket2::SockRef::from(&stream);
    let configured = stream
        .set_nodelay(true)
        .and_then(|()| {
            socket.set_tcp_keepalive(
                &socket2::TcpKeepalive::new()
                    .with_time(limits.keepalive_interval)
                    .with_interval(limits.keepalive_interval)
                    .with_retries(1),
            )
        })
        .and_then(|()| {
            socket.set_tcp_user_timeout(Some(limits.keepalive_interval + limits.keepalive_timeout))
        });
    if let Err(e) = configured {
        return Err(format!("setting up the connection to {url} failed: {e}"));
    }
    // Once a partition heals, data sent into it waits for the next retransmission, and
    // TCP's exponential backoff would make that seconds: an election would wait for it.
    // Retransmit thin streams at a steady pace, and cap the backoff where the kernel can.
    if let Err(e) = socket.set_tcp_thin_linear_timeouts(true) {
        tracing::debug!(error = %e, "TCP_THIN_LINEAR_TIMEOUTS not set");
    }
    if let Err(e) = cap_retransmission_timeout(&stream, limits.retransmit_max) {
        tracing::debug!(error = %e, "TCP_RTO_MAX_MS not set (Linux 6.15 or later)");
    }
    Ok(stream)
}

/// Sets the connection's largest retransmission timeout (Linux's `TCP_RTO_MAX_MS`).
#[cfg(target_os = "linux")]
fn cap_retransmission_timeout(stream: &TcpStream, max: Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    /// From linux/tcp.h (not yet in the libc crate).
    const TCP_RTO_MAX_MS: libc::c_int = 44;
    let millis = libc::c_int::try_from(max.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: a valid socket descriptor, and a pointer to a c_int of the size passed.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            TCP_RTO_MAX_MS,
            (&millis as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn cap_retransmission_timeout(_stream: &TcpStream, _max: Duration) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

/// The forwarding connection to one peer, made on first use and remade after a failure.
pub(super) struct ForwardLink {
    urls: Vec<String>,
    limits: Arc<TransportLimits>,
    client: tokio::sync::Mutex<Option<PeerClient<Channel>>>,
}

impl ForwardLink {
    pub(super) fn new(urls: Vec<String>, limits: Arc<TransportLimits>) -> ForwardLink {
        ForwardLink {
            urls,
            limits,
            client: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached client, or a new connection (trying each URL once).
    async fn client(&self) -> Result<PeerClient<Channel>, String> {
        let mut cached = self.client.lock().await;
        if let Some(client) = cached.as_ref() {
            return Ok(client.clone());
        }
        let mut last_error = "peer has no URLs".to_string();
        for url in &self.urls {
            match connect(url, &self.limits).await {
                Ok(channel) => {
                    let client = PeerClient::new(channel)
                        .max_encoding_message_size(self.limits.max_frame_bytes)
                        .max_decoding_message_size(self.limits.max_frame_bytes);
                    *cached = Some(client.clone());
                    return Ok(client);
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    async fn invalidate(&self) {
        *self.client.lock().await = None;
    }

    pub(super) async fn forward(
        &self,
        identity: &PeerIdentity,
        to: NodeId,
        request: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, ForwardError> {
        let deadline = Instant::now() + timeout;
        let mut client = match tokio::time::timeout_at(deadline, self.client()).await {
            Err(_) => return Err(ForwardError::NotDelivered("connect timed out".into())),
            Ok(Err(e)) => return Err(ForwardError::NotDelivered(e)),
            Ok(Ok(client)) => client,
        };
        let request = ForwardRequest {
            cluster_id: identity.cluster_id,
            from: identity.member_id,
            to,
            request,
        };
        match tokio::time::timeout_at(deadline, client.forward(request)).await {
            Ok(Ok(response)) => Ok(response.into_inner().response),
            Err(_) => Err(ForwardError::MaybeDelivered(format!(
                "no answer within {timeout:?}"
            ))),
            Ok(Err(status)) => match status.source() {
                // A status the peer sent: its answer.
                None => Err(ForwardError::Rejected(status)),
                // A status made from a local transport error.
                Some(source) => {
                    let text = error_chain(source);
                    let not_delivered = refused(source);
                    self.invalidate().await;
                    if not_delivered {
                        Err(ForwardError::NotDelivered(text))
                    } else {
                        Err(ForwardError::MaybeDelivered(text))
                    }
                }
            },
        }
    }
}

/// True if the error comes from a refused (re)connection, which means the request never left.
fn refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        current = e.source();
    }
    false
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Reads TCP_RTO_MAX_MS back.
    fn retransmission_timeout_cap(stream: &TcpStream) -> std::io::Result<libc::c_int> {
        use std::os::fd::AsRawFd;
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a valid socket descriptor, and a c_int with its size.
        let result = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::IPPROTO_TCP,
                44,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if result == 0 {
            Ok(value)
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[tokio::test]
    async fn message_streams_retransmit_at_a_steady_pace() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let limits = TransportLimits {
            retransmit_max: Duration::from_millis(1500),
            ..TransportLimits::default()
        };
        let stream = connect_message_stream(&url, &limits).await.unwrap();
        assert!(socket2::SockRef::from(&stream)
            .tcp_thin_linear_timeouts()
            .unwrap());
        match retransmission_timeout_cap(&stream) {
            Ok(millis) => assert_eq!(millis, 1500),
            // Kernels before 6.15 have no such option; the linear timeouts above remain.
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOPROTOOPT), "{e}"),
        }
    }
}

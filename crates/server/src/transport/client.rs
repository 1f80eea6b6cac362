//! The calling side: one stream task per peer, and the forwarding connection.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use skiff_etcd_proto::skiffpb::peer_client::PeerClient;
use skiff_etcd_proto::skiffpb::{peer_frame, ForwardRequest, Hello, MessageBatch, PeerFrame};
use skiff_raft::NodeId;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::{
    codec, EventSink, ForwardError, PeerIdentity, PeerQueue, Queued, TransportEvent,
    TransportLimits, PROTOCOL_VERSION,
};

/// Protobuf overhead of a frame around its batch, upper bound.
const FRAME_OVERHEAD: usize = 32;

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
                Some(url) => match connect(url, &self.limits).await {
                    Err(e) => {
                        attempt = attempt.wrapping_add(1);
                        e
                    }
                    Ok(channel) => {
                        tracing::debug!(peer = %peer, url = %url, "connected to peer");
                        match self.stream(channel).await {
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

    /// One stream on `channel`: the hello, then a frame per batch, until it breaks.
    async fn stream(&self, channel: Channel) -> StreamEnd {
        let mut client = PeerClient::new(channel)
            .max_encoding_message_size(self.limits.max_frame_bytes)
            .max_decoding_message_size(self.limits.max_frame_bytes);
        // Room for the hello plus one frame: more would only hide backpressure from the queue.
        let (tx, rx) = mpsc::channel::<PeerFrame>(2);
        if tx.try_send(self.hello()).is_err() {
            return StreamEnd::Broken("stream channel refused the hello".into());
        }
        let call = client.stream(ReceiverStream::new(rx));
        tokio::pin!(call);
        let budget = self
            .limits
            .max_frame_bytes
            .saturating_sub(FRAME_OVERHEAD)
            .max(1);
        loop {
            let batch = tokio::select! {
                result = &mut call => return ended(result),
                batch = self.queue.next_batch(budget) => batch,
            };
            let Some(batch) = batch else {
                return StreamEnd::Closed;
            };
            let Some(frame) = self.frame(batch, budget) else {
                continue;
            };
            tokio::select! {
                result = &mut call => return ended(result),
                sent = tx.send(frame) => {
                    if sent.is_err() {
                        return StreamEnd::Broken("stream closed".into());
                    }
                }
            }
        }
    }

    /// Encodes a batch into one frame; drops (and logs) a message that alone exceeds the frame
    /// limit. `None` when nothing is left to send.
    fn frame(&self, batch: Vec<Queued>, budget: usize) -> Option<PeerFrame> {
        let mut total = 0;
        let mut buf = BytesMut::new();
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
            total += size;
            codec::encode_into(&message, &mut buf);
            messages.push(buf.split().freeze());
        }
        if messages.is_empty() {
            return None;
        }
        tracing::trace!(peer = %format_args!("{:x}", self.id), count = messages.len(), bytes = total, "sending frame");
        Some(PeerFrame {
            frame: Some(peer_frame::Frame::Batch(MessageBatch { messages })),
        })
    }
}

/// Describes how a stream call ended (it only ends early on failure or refusal).
fn ended(
    result: Result<tonic::Response<skiff_etcd_proto::skiffpb::StreamEnd>, tonic::Status>,
) -> StreamEnd {
    match result {
        Ok(_) => StreamEnd::Broken("peer ended the stream".into()),
        Err(status) => StreamEnd::Broken(format!(
            "stream failed: {:?} {}{}",
            status.code(),
            status.message(),
            status
                .source()
                .map(|source| format!(": {}", error_chain(source)))
                .unwrap_or_default()
        )),
    }
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

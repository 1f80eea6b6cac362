//! The receiving side: the `skiffpb.Peer` service implementation.

use std::sync::Arc;

use bytes::BytesMut;
use skiff_etcd_proto::prost::Message as _;
use skiff_etcd_proto::skiffpb::peer_server::Peer;
use skiff_etcd_proto::skiffpb::{
    peer_frame, ClusterRequest, ClusterResponse, ForwardRequest, ForwardResponse, Hello,
    MessageBatch, PeerFrame, SnapshotAck, SnapshotChunk, SnapshotHeader, StreamEnd,
};
use skiff_raft::NodeId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::{Request, Response, Status, Streaming};

use super::wire::{self, FrameReader, ReadError, MAGIC};

use super::PROTOCOL_VERSION;
use super::{
    codec, EventSink, ForwardHandler, PeerIdentity, SnapshotInbox, TransportEvent, TransportLimits,
};

/// Receives peer streams and forwarded requests for one member. Built by
/// [`peer_service`](super::peer_service), served by [`serve`](super::serve).
#[derive(Clone)]
pub struct PeerService {
    identity: Arc<PeerIdentity>,
    sink: EventSink,
    forward: Arc<dyn ForwardHandler>,
    limits: TransportLimits,
    inbox: Option<Arc<SnapshotInbox>>,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService")
            .field("identity", &self.identity)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl PeerService {
    pub(super) fn new(
        identity: PeerIdentity,
        sink: EventSink,
        forward: Arc<dyn ForwardHandler>,
        limits: TransportLimits,
        inbox: Option<Arc<SnapshotInbox>>,
    ) -> PeerService {
        PeerService {
            identity: Arc::new(identity),
            sink,
            forward,
            limits,
            inbox,
        }
    }

    pub(super) fn limits(&self) -> &TransportLimits {
        &self.limits
    }

    pub(super) fn max_frame_bytes(&self) -> usize {
        self.limits.max_frame_bytes
    }

    fn inbox(&self) -> Result<&Arc<SnapshotInbox>, Status> {
        self.inbox
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this member does not accept snapshots"))
    }

    /// Checks a hello; the error is logged and returned to the caller.
    fn check_hello(&self, hello: &Hello, remote: &str) -> Result<(), Status> {
        let problem = if hello.cluster_id != self.identity.cluster_id {
            Some(format!(
                "cluster ID mismatch: peer is in {:x}, this member in {:x}",
                hello.cluster_id, self.identity.cluster_id
            ))
        } else if hello.to != self.identity.member_id {
            Some(format!(
                "stream meant for member {:x} reached member {:x}",
                hello.to, self.identity.member_id
            ))
        } else if hello.protocol_version != PROTOCOL_VERSION {
            Some(format!(
                "unsupported peer protocol version {} (this member speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            ))
        } else if hello.from == 0 || hello.from == self.identity.member_id {
            Some(format!("invalid sender member ID {:x}", hello.from))
        } else {
            None
        };
        match problem {
            None => Ok(()),
            Some(problem) => {
                tracing::error!(remote = %remote, from = %format_args!("{:x}", hello.from), "refusing peer stream: {problem}");
                Err(Status::failed_precondition(problem))
            }
        }
    }
    /// Checks a stream's hello and announces the peer: its member ID.
    fn accept_hello(&self, hello: Hello, remote: &str) -> Result<NodeId, Status> {
        self.check_hello(&hello, remote)?;
        let peer = hello.from;
        tracing::debug!(remote = %remote, peer = %format_args!("{peer:x}"), name = %hello.name, "peer stream accepted");
        (self.sink)(TransportEvent::PeerInfo {
            id: peer,
            name: hello.name,
            client_urls: hello.client_urls,
        });
        Ok(peer)
    }

    /// Decodes one batch from `peer` and hands its messages to the sink (dropping those that
    /// claim another sender or another recipient). An undecodable message is an error: the
    /// stream is closed.
    fn deliver(&self, peer: NodeId, batch: &MessageBatch) -> Result<(), Status> {
        let mut messages = Vec::with_capacity(batch.messages.len());
        for raw in &batch.messages {
            let message = match codec::decode(raw) {
                Ok(message) => message,
                Err(e) => {
                    tracing::error!(peer = %format_args!("{peer:x}"), error = %e, "undecodable message, closing peer stream");
                    return Err(Status::invalid_argument(format!(
                        "undecodable message: {e}"
                    )));
                }
            };
            if message.from != peer {
                tracing::warn!(peer = %format_args!("{peer:x}"), claimed = %format_args!("{:x}", message.from), "dropping message with a forged sender");
            } else if message.to != self.identity.member_id {
                tracing::warn!(peer = %format_args!("{peer:x}"), to = %format_args!("{:x}", message.to), "dropping message meant for another member");
            } else {
                messages.push(message);
            }
        }
        if !messages.is_empty() {
            (self.sink)(TransportEvent::Messages(messages));
        }
        Ok(())
    }

    /// Receives one message stream on plain TCP (see [`wire`]), its [`MAGIC`] already seen
    /// but not read, until it ends. A refused hello or a bad frame is answered with the
    /// reason, and the connection closed.
    pub(super) async fn serve_message_stream(&self, stream: TcpStream, remote: String) {
        let (mut read, mut write) = stream.into_split();
        let mut magic = [0u8; MAGIC.len()];
        if read.read_exact(&mut magic).await.is_err() {
            return;
        }
        let mut frames = FrameReader::new(read, BytesMut::new(), self.limits.max_frame_bytes);
        let mut peer = None;
        let refusal = loop {
            let frame = match frames.next().await {
                Ok(frame) => frame,
                Err(ReadError::Closed) => {
                    tracing::debug!(remote = %remote, "peer message stream ended");
                    return;
                }
                Err(error @ (ReadError::Io(_) | ReadError::Truncated { .. })) => {
                    tracing::debug!(remote = %remote, %error, "peer message stream broke");
                    return;
                }
                Err(error @ ReadError::TooLarge { .. }) => {
                    tracing::error!(remote = %remote, %error, "closing peer message stream");
                    break error.to_string();
                }
            };
            let frame = match PeerFrame::decode(frame.freeze()) {
                Ok(PeerFrame { frame: Some(frame) }) => frame,
                Ok(PeerFrame { frame: None }) | Err(_) => {
                    tracing::error!(remote = %remote, "undecodable frame, closing peer message stream");
                    break "undecodable frame".to_string();
                }
            };
            let accepted = match (peer, frame) {
                (None, peer_frame::Frame::Hello(hello)) => {
                    self.accept_hello(hello, &remote).map(|id| peer = Some(id))
                }
                (None, peer_frame::Frame::Batch(_)) => {
                    tracing::error!(remote = %remote, "peer message stream did not start with a hello");
                    Err(Status::invalid_argument("the first frame must be a hello"))
                }
                (Some(from), peer_frame::Frame::Batch(batch)) => self.deliver(from, &batch),
                (Some(from), peer_frame::Frame::Hello(_)) => {
                    tracing::error!(peer = %format_args!("{from:x}"), "second hello on peer message stream, closing it");
                    Err(Status::invalid_argument("expected a message batch"))
                }
            };
            if let Err(status) = accepted {
                break status.message().to_string();
            }
        };
        let mut answer = BytesMut::new();
        wire::put_refusal(&mut answer, &refusal);
        let _ = write.write_all(&answer).await;
        let _ = write.shutdown().await;
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn stream(
        &self,
        request: Request<Streaming<PeerFrame>>,
    ) -> Result<Response<StreamEnd>, Status> {
        let remote = request
            .remote_addr()
            .map_or_else(|| "unknown".to_string(), |addr| addr.to_string());
        let mut frames = request.into_inner();
        let hello = match frames.message().await {
            Ok(Some(PeerFrame {
                frame: Some(peer_frame::Frame::Hello(hello)),
            })) => hello,
            Ok(Some(_)) => {
                tracing::error!(remote = %remote, "peer stream did not start with a hello");
                return Err(Status::invalid_argument("the first frame must be a hello"));
            }
            Ok(None) => {
                tracing::debug!(remote = %remote, "peer stream ended before its hello");
                return Ok(Response::new(StreamEnd {}));
            }
            Err(status) => {
                tracing::debug!(remote = %remote, error = %status, "peer stream failed before its hello");
                return Err(status);
            }
        };
        let peer = self.accept_hello(hello, &remote)?;
        loop {
            let batch = match frames.message().await {
                Ok(None) => {
                    tracing::debug!(peer = %format_args!("{peer:x}"), "peer stream ended");
                    return Ok(Response::new(StreamEnd {}));
                }
                Ok(Some(PeerFrame {
                    frame: Some(peer_frame::Frame::Batch(batch)),
                })) => batch,
                Ok(Some(_)) => {
                    tracing::error!(peer = %format_args!("{peer:x}"), "unexpected frame on peer stream, closing it");
                    return Err(Status::invalid_argument("expected a message batch"));
                }
                Err(status) => {
                    tracing::debug!(peer = %format_args!("{peer:x}"), error = %status, "peer stream broke");
                    return Err(status);
                }
            };
            self.deliver(peer, &batch)?;
        }
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let request = request.into_inner();
        if request.cluster_id != self.identity.cluster_id {
            tracing::error!(from = %format_args!("{:x}", request.from), "refusing forwarded request from cluster {:x}", request.cluster_id);
            return Err(Status::failed_precondition("cluster ID mismatch"));
        }
        if request.to != self.identity.member_id {
            tracing::error!(from = %format_args!("{:x}", request.from), "refusing forwarded request meant for member {:x}", request.to);
            return Err(Status::failed_precondition(
                "request meant for another member",
            ));
        }
        let response = self.forward.forward(request.request).await?;
        Ok(Response::new(ForwardResponse { response }))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let inbox = self.inbox()?;
        let ack = inbox
            .receive(&self.identity, &self.sink, request.into_inner())
            .await?;
        Ok(Response::new(ack))
    }

    async fn snapshot_status(
        &self,
        request: Request<SnapshotHeader>,
    ) -> Result<Response<SnapshotAck>, Status> {
        let inbox = self.inbox()?;
        let ack = inbox
            .answer_status(&self.identity, &request.into_inner())
            .await?;
        Ok(Response::new(ack))
    }

    async fn cluster(
        &self,
        _request: Request<ClusterRequest>,
    ) -> Result<Response<ClusterResponse>, Status> {
        let Some((initial_members, members)) = self.forward.cluster_members() else {
            return Err(Status::unavailable("this member is not started yet"));
        };
        Ok(Response::new(ClusterResponse {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            initial_members,
            members,
            protocol_version: PROTOCOL_VERSION,
        }))
    }
}

//! The fast path for unary KV calls (`Range`, `Put`, `DeleteRange`, `Txn`, `Compact`).
//!
//! Why: these five calls are nearly all of an etcd workload, and on the leader the generic
//! stack they used to cross (tonic's transport layers, axum's router, tonic's codec with its
//! streaming decoder and encoder) cost several times the service's own work. Here a request's
//! body is read and split into gRPC messages by hand, the message is decoded with prost, the
//! call goes straight to [`KvService`]'s `Kv` implementation (so every etcd rule and error
//! string stays in one place), and the answer is one buffer: the 5-byte prefix and the encoded
//! message, then a `grpc-status: 0` trailer.
//!
//! It answers byte for byte as tonic 0.14 did (`tests/api_grpc_wire.rs` pins each case):
//!
//! * a message announced larger than the receive limit: grpc-go's `ResourceExhausted`
//!   (`grpc: received message larger than max (N vs. M)`, see [`super::limit`]) as soon as its
//!   prefix arrives, without reading it;
//! * a compressed flag of 1 (no encoding is accepted) or any other flag but 0: tonic's
//!   `Internal` protocol errors; a message prost cannot decode: `Internal` with prost's text;
//! * a body ending inside a prefix or a message: `Internal` "Unexpected EOF decoding stream.";
//!   a body without a message: `Internal` "Missing request message.";
//! * several messages in one body: each is checked and decoded in order (the first failure
//!   answers), and the call is served with the first, once the body has ended;
//! * request trailers, or the client cancelling its stream, end the body without the
//!   truncation check (tonic stops reading there too).
//!
//! Refusals are "trailers-only" (the status in the response headers), built by
//! [`Status::into_http`] so the percent-encoding of `grpc-message` is tonic's. Which requests
//! come here, and the `grpc-timeout` deadline around all of this, are `client_server.rs`'s.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use skiff_etcd_proto::etcdserverpb::kv_server::Kv;
use skiff_etcd_proto::prost::Message;
use tonic::{Code, Status};

use super::limit::{go_refusal, message_too_large};
use super::{ApiLimits, KvService};
use crate::backend::Backend;

/// The gRPC message prefix: a compressed flag and a big-endian `u32` length.
const PREFIX_BYTES: usize = 5;

const GRPC: HeaderValue = HeaderValue::from_static("application/grpc");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_ENCODING: HeaderName = HeaderName::from_static("grpc-encoding");
/// Metadata names a service may not set as response headers (tonic drops them too).
const RESERVED: [&str; 6] = [
    "te",
    "user-agent",
    "content-type",
    "grpc-message",
    "grpc-message-type",
    "grpc-status",
];

/// A unary KV call the fast path serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvMethod {
    /// `/etcdserverpb.KV/Range`
    Range,
    /// `/etcdserverpb.KV/Put`
    Put,
    /// `/etcdserverpb.KV/DeleteRange`
    DeleteRange,
    /// `/etcdserverpb.KV/Txn`
    Txn,
    /// `/etcdserverpb.KV/Compact`
    Compact,
}

impl KvMethod {
    /// The method `request` calls, if the fast path serves it: a `POST` to one of the five paths,
    /// with a gRPC content type and no `grpc-encoding` but `identity`. Anything else (other
    /// paths, compressed requests, ...) is left to the general router.
    pub fn of<T>(request: &Request<T>) -> Option<KvMethod> {
        let method = match request.uri().path().strip_prefix("/etcdserverpb.KV/")? {
            "Range" => KvMethod::Range,
            "Put" => KvMethod::Put,
            "DeleteRange" => KvMethod::DeleteRange,
            "Txn" => KvMethod::Txn,
            "Compact" => KvMethod::Compact,
            _ => return None,
        };
        if request.method() != Method::POST {
            return None;
        }
        let headers = request.headers();
        let grpc = headers
            .get(CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let identity = headers
            .get(GRPC_ENCODING)
            .is_none_or(|value| value.as_bytes() == b"identity");
        (grpc && identity).then_some(method)
    }

    fn path(self) -> &'static str {
        match self {
            KvMethod::Range => "/etcdserverpb.KV/Range",
            KvMethod::Put => "/etcdserverpb.KV/Put",
            KvMethod::DeleteRange => "/etcdserverpb.KV/DeleteRange",
            KvMethod::Txn => "/etcdserverpb.KV/Txn",
            KvMethod::Compact => "/etcdserverpb.KV/Compact",
        }
    }
}

/// The KV service and the receive limit, for the fast path.
#[derive(Clone, Debug)]
pub struct FastKv<B> {
    service: KvService<B>,
    max_message_bytes: usize,
}

impl<B: Backend> FastKv<B> {
    /// The fast path over `backend`, with the same limits as the tonic service.
    pub fn new(backend: B, limits: ApiLimits) -> Self {
        FastKv {
            max_message_bytes: limits.grpc_max_decoding_bytes(),
            service: KvService::new(backend, limits),
        }
    }

    /// Serves one call of `method`, whose request body is `body`.
    pub async fn call<T>(&self, method: KvMethod, body: T) -> Response<UnaryBody>
    where
        T: Body<Data = Bytes> + Unpin,
        T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limit = self.max_message_bytes;
        let service = &self.service;
        let answer = match method {
            KvMethod::Range => unary(body, limit, |r| Kv::range(service, r)).await,
            KvMethod::Put => unary(body, limit, |r| Kv::put(service, r)).await,
            KvMethod::DeleteRange => unary(body, limit, |r| Kv::delete_range(service, r)).await,
            KvMethod::Txn => unary(body, limit, |r| Kv::txn(service, r)).await,
            KvMethod::Compact => unary(body, limit, |r| Kv::compact(service, r)).await,
        };
        answer.unwrap_or_else(|status| go_refusal(status, method.path()).into_http())
    }
}

/// One unary call: its request read from `body`, served by `call`, the answer encoded.
async fn unary<M, R, T, F>(
    body: T,
    max_message_bytes: usize,
    call: F,
) -> Result<Response<UnaryBody>, Status>
where
    M: Message + Default,
    R: Message,
    T: Body<Data = Bytes> + Unpin,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    F: AsyncFnOnce(tonic::Request<M>) -> Result<tonic::Response<R>, Status>,
{
    let request = read_request(body, max_message_bytes).await?;
    encode(call(tonic::Request::new(request)).await)
}

/// Reads a unary request body: its first message, once every message in it was checked.
async fn read_request<M, T>(mut body: T, max_message_bytes: usize) -> Result<M, Status>
where
    M: Message + Default,
    T: Body<Data = Bytes> + Unpin,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut reader = MessageReader::<M>::new(max_message_bytes);
    loop {
        match body.frame().await {
            None => return reader.finish(true),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => reader.push(data)?,
                // Request trailers end the body (tonic hands them to the service as metadata,
                // which the KV service does not read).
                Err(_) => return reader.finish(false),
            },
            Some(Err(error)) => {
                let status = Status::from_error(error.into());
                if status.code() == Code::Cancelled {
                    return reader.finish(false);
                }
                return Err(status);
            }
        }
    }
}

/// Splits a body into gRPC messages as its chunks arrive. The first message is kept; later
/// ones are decoded and dropped.
struct MessageReader<M> {
    max_message_bytes: usize,
    /// The length of the message being read, once its prefix is in.
    message_bytes: Option<usize>,
    /// Bytes of an unfinished prefix or message.
    pending: BytesMut,
    first: Option<M>,
}

impl<M: Message + Default> MessageReader<M> {
    fn new(max_message_bytes: usize) -> Self {
        MessageReader {
            max_message_bytes,
            message_bytes: None,
            pending: BytesMut::new(),
            first: None,
        }
    }

    /// Takes the next chunk of the body.
    fn push(&mut self, mut data: Bytes) -> Result<(), Status> {
        loop {
            match self.message_bytes {
                None => {
                    let missing = PREFIX_BYTES - self.pending.len();
                    if data.len() < missing {
                        self.pending.extend_from_slice(&data);
                        return Ok(());
                    }
                    let (flag, length) = if self.pending.is_empty() {
                        (data.get_u8(), data.get_u32() as usize)
                    } else {
                        self.pending.extend_from_slice(&data.split_to(missing));
                        let mut prefix = self.pending.split();
                        (prefix.get_u8(), prefix.get_u32() as usize)
                    };
                    self.check_prefix(flag, length)?;
                    self.message_bytes = Some(length);
                }
                Some(length) => {
                    let message = if self.pending.is_empty() && data.len() >= length {
                        data.split_to(length)
                    } else {
                        let missing = length - self.pending.len();
                        if data.len() < missing {
                            self.pending.reserve(length - self.pending.len());
                            self.pending.extend_from_slice(&data);
                            return Ok(());
                        }
                        self.pending.extend_from_slice(&data.split_to(missing));
                        self.pending.split().freeze()
                    };
                    self.message_bytes = None;
                    self.decode(message)?;
                    if data.is_empty() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// tonic's checks of a message prefix, in its order: the flag, then the length.
    fn check_prefix(&self, flag: u8, length: usize) -> Result<(), Status> {
        match flag {
            0 => {}
            1 => {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no \
                     grpc-encoding was specified",
                ))
            }
            other => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {other} \
                     (valid flags are 0 and 1), while sending request"
                )))
            }
        }
        if length > self.max_message_bytes {
            return Err(message_too_large(length, self.max_message_bytes));
        }
        Ok(())
    }

    fn decode(&mut self, message: Bytes) -> Result<(), Status> {
        // tonic-prost's mapping of a decode error.
        let decoded = M::decode(message).map_err(|error| Status::internal(error.to_string()))?;
        if self.first.is_none() {
            self.first = Some(decoded);
        }
        Ok(())
    }

    /// The request once the body is over; `at_end_of_stream`: it ended normally, so bytes of
    /// an unfinished message are an error.
    fn finish(self, at_end_of_stream: bool) -> Result<M, Status> {
        // (A zero-length message is decoded as soon as its prefix is in.)
        if at_end_of_stream && (self.message_bytes.is_some() || !self.pending.is_empty()) {
            return Err(Status::internal("Unexpected EOF decoding stream."));
        }
        self.first
            .ok_or_else(|| Status::internal("Missing request message."))
    }
}

/// The successful answer to a call: headers, the message, `grpc-status: 0`.
fn encode<M: Message>(
    result: Result<tonic::Response<M>, Status>,
) -> Result<Response<UnaryBody>, Status> {
    let (metadata, message, extensions) = result?.into_parts();
    let mut headers = metadata.into_headers();
    if !headers.is_empty() {
        for name in RESERVED {
            headers.remove(name);
        }
    }
    headers.insert(CONTENT_TYPE, GRPC);
    let length = message.encoded_len();
    let body = if length > u32::MAX as usize {
        // tonic's answer, in the trailers since the headers are out by then.
        let status = Status::resource_exhausted(format!(
            "Cannot return body with more than 4GB of data but got {length} bytes"
        ));
        let mut trailers = HeaderMap::new();
        status
            .add_header(&mut trailers)
            .map_err(|_| Status::internal("skiff: unencodable status"))?;
        UnaryBody {
            message: None,
            trailers: Some(trailers),
        }
    } else {
        let mut buffer = BytesMut::with_capacity(PREFIX_BYTES + length);
        buffer.put_u8(0);
        buffer.put_u32(length as u32);
        message.encode_raw(&mut buffer);
        assert_eq!(
            buffer.len(),
            PREFIX_BYTES + length,
            "prost's encoded length"
        );
        let mut trailers = HeaderMap::with_capacity(1);
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        UnaryBody {
            message: Some(buffer.freeze()),
            trailers: Some(trailers),
        }
    };
    let mut response = Response::new(body);
    *response.version_mut() = Version::HTTP_2;
    *response.headers_mut() = headers;
    *response.extensions_mut() = extensions;
    Ok(response)
}

/// A unary gRPC answer's body: one message, then trailers. Empty (the default) for a
/// trailers-only refusal.
#[derive(Debug, Default)]
pub struct UnaryBody {
    message: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl UnaryBody {
    /// The message and the trailers, for a connection that sends them itself.
    pub(crate) fn into_parts(self) -> (Option<Bytes>, Option<HeaderMap>) {
        (self.message, self.trailers)
    }
}

impl Body for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(message) = this.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        Poll::Ready(
            this.trailers
                .take()
                .map(|trailers| Ok(Frame::trailers(trailers))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        // Like tonic's bodies: exactly 0 when empty, unknown otherwise (so an HTTP/1.1 answer
        // is chunked, as before).
        if self.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_etcd_proto::etcdserverpb::PutRequest;

    fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
        let mut out = vec![flag];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn read(chunks: &[&[u8]], limit: usize) -> Result<PutRequest, Status> {
        let mut reader = MessageReader::<PutRequest>::new(limit);
        for chunk in chunks {
            reader.push(Bytes::copy_from_slice(chunk))?;
        }
        reader.finish(true)
    }

    #[test]
    fn messages_in_any_split() {
        let put = PutRequest {
            key: Bytes::from_static(b"key"),
            value: Bytes::from_static(b"value"),
            ..Default::default()
        };
        let mut body = framed(0, &put.encode_to_vec());
        body.extend(framed(0, &[]));
        body.extend(framed(0, &put.encode_to_vec()));
        for first in 0..=body.len() {
            for second in first..=body.len() {
                let chunks = [&body[..first], &body[first..second], &body[second..]];
                assert_eq!(read(&chunks, 100).unwrap(), put, "{first} {second}");
            }
        }
    }

    #[test]
    fn refusals() {
        let code = |result: Result<PutRequest, Status>| {
            let status = result.unwrap_err();
            (status.code(), status.message().to_string())
        };
        assert_eq!(
            code(read(&[&framed(0, &[0; 11])], 10)),
            (
                Code::ResourceExhausted,
                "grpc: received message larger than max (11 vs. 10)".into()
            )
        );
        assert_eq!(
            code(read(&[&[0, 0]], 10)),
            (Code::Internal, "Unexpected EOF decoding stream.".into())
        );
        assert_eq!(
            code(read(&[&framed(0, &[]), &[0, 0, 0, 0, 9, 1]], 10)),
            (Code::Internal, "Unexpected EOF decoding stream.".into())
        );
        assert_eq!(
            code(read(&[], 10)),
            (Code::Internal, "Missing request message.".into())
        );
        assert_eq!(code(read(&[&[7, 0, 0, 0, 0]], 10)).0, Code::Internal);
        // An empty message is a message.
        assert_eq!(
            read(&[&[0, 0, 0, 0, 0]], 10).unwrap(),
            PutRequest::default()
        );
        // Cut short by trailers: no truncation check.
        let mut reader = MessageReader::<PutRequest>::new(10);
        reader.push(Bytes::from(framed(0, &[]))).unwrap();
        reader.push(Bytes::from_static(&[0, 0])).unwrap();
        assert!(reader.finish(false).is_ok());
    }

    #[test]
    fn routing() {
        let request = |method: &str, path: &str, headers: &[(&str, &str)]| {
            let mut builder = Request::builder().method(method).uri(path);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            KvMethod::of(&builder.body(()).unwrap())
        };
        let grpc = [("content-type", "application/grpc")];
        assert_eq!(
            request("POST", "/etcdserverpb.KV/Put", &grpc),
            Some(KvMethod::Put)
        );
        assert_eq!(
            request(
                "POST",
                "/etcdserverpb.KV/Range",
                &[("content-type", "application/grpc+proto")]
            ),
            Some(KvMethod::Range)
        );
        assert_eq!(
            request(
                "POST",
                "/etcdserverpb.KV/Txn",
                &[
                    ("content-type", "application/grpc"),
                    ("grpc-encoding", "identity")
                ]
            ),
            Some(KvMethod::Txn)
        );
        assert_eq!(request("POST", "/etcdserverpb.KV/Nope", &grpc), None);
        assert_eq!(request("GET", "/etcdserverpb.KV/Put", &grpc), None);
        assert_eq!(request("POST", "/etcdserverpb.KV/Put", &[]), None);
        assert_eq!(
            request(
                "POST",
                "/etcdserverpb.KV/Put",
                &[
                    ("content-type", "application/grpc"),
                    ("grpc-encoding", "gzip")
                ]
            ),
            None
        );
        assert_eq!(
            request("POST", "/etcdserverpb.Lease/LeaseGrant", &grpc),
            None
        );
    }
}

//! gRPC-Go's answer to an oversize message.
//!
//! etcd's gRPC server (grpc-go) refuses a request larger than its receive limit with
//! `ResourceExhausted` and `grpc: received message larger than max (N vs. M)`; tonic answers
//! `OutOfRange` with its own text. tonic also answers an unknown method of a known service with
//! an `Unimplemented` without a message, where grpc-go names the method. [`go_refusal`] turns
//! tonic's statuses into grpc-go's; [`GoLimitStatus`] applies it to a tonic service's refusals,
//! and the KV fast path (`fast.rs`) to its own, so clients see what etcd would send.

use std::convert::Infallible;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Code, Status};

const TONIC_TOO_LARGE: &str = "Error, decoded message length too large: found ";

/// grpc-go's status for tonic's "message too large" status; any other status is returned as is.
pub fn go_status(status: Status) -> Status {
    if status.code() != Code::OutOfRange {
        return status;
    }
    let Some(rest) = status.message().strip_prefix(TONIC_TOO_LARGE) else {
        return status;
    };
    // rest: "{found} bytes, the limit is: {limit} bytes"
    let numbers: Vec<&str> = rest
        .split(|c: char| !c.is_ascii_digit())
        .filter(|part| !part.is_empty())
        .collect();
    match numbers.as_slice() {
        [found, limit] => message_too_large(found, limit),
        _ => Status::resource_exhausted("grpc: received message larger than max"),
    }
}

/// grpc-go's refusal of a received message of `found` bytes over its `limit`.
pub fn message_too_large(found: impl std::fmt::Display, limit: impl std::fmt::Display) -> Status {
    Status::resource_exhausted(format!(
        "grpc: received message larger than max ({found} vs. {limit})"
    ))
}

/// grpc-go's form of a refusal tonic gives to a call of `path`: [`go_status`] for an oversize
/// message, and the method named for tonic's message-less `Unimplemented` (an unknown method of a
/// known service); any other status as is.
pub fn go_refusal(status: Status, path: &str) -> Status {
    if status.code() == Code::Unimplemented && status.message().is_empty() {
        return Status::unimplemented(unknown_method_message(path));
    }
    go_status(status)
}

/// grpc-go's message for a gRPC path no service handles: `/service/method`.
pub fn unknown_method_message(path: &str) -> String {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some(service), Some(method)) if !service.is_empty() => {
            format!("unknown method {method} for service {service}")
        }
        _ => format!("malformed method name: {path:?}"),
    }
}

/// A tonic service whose trailers-only refusals are rewritten by [`go_refusal`].
#[derive(Clone, Debug)]
pub struct GoLimitStatus<S> {
    inner: S,
}

impl<S> GoLimitStatus<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        GoLimitStatus { inner }
    }
}

impl<S: NamedService> NamedService for GoLimitStatus<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for GoLimitStatus<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path().to_string();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            // A refused request is answered trailers-only: the status is in the headers.
            if let Some(status) = Status::from_header_map(response.headers()) {
                let (code, message) = (status.code(), status.message().to_string());
                let rewritten = go_refusal(status, &path);
                if rewritten.code() != code || rewritten.message() != message {
                    let headers = response.headers_mut();
                    headers.remove("grpc-message");
                    headers.remove("grpc-status-details-bin");
                    let _ = rewritten.add_header(headers);
                }
            }
            Ok(response)
        })
    }
}

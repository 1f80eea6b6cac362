//! The client port: etcd's gRPC API and the HTTP endpoints on one listener, served by hyper.
//!
//! Every request first gets the deadline its `grpc-timeout` header asks for (as tonic's server
//! did: past it, `Cancelled` "Timeout expired"). Then the unary KV calls (`Range`, `Put`,
//! `DeleteRange`, `Txn`, `Compact` over gRPC, uncompressed) take the fast path of
//! [`api::fast`](crate::api::fast), which skips tonic's and axum's generic layers — on a busy
//! leader those cost several times the calls' own work. Everything else (Watch, Lease,
//! Cluster, Maintenance, compressed calls, unknown methods, `/health`, `/version`, `/metrics`,
//! unknown paths) goes to [`client_routes`], the tonic services and axum routes that served the
//! whole port before, unchanged.
//!
//! Connections are HTTP/1.1 or HTTP/2 (told apart by the HTTP/2 preface), with the settings
//! tonic 0.14's server gave them. HTTP/1.1 is served by hyper; HTTP/2 by `direct_h2`, which
//! drives the connection and runs its unary KV calls in one task. [`serve`] stops as tonic's `serve_with_incoming_shutdown`
//! did: stop accepting, let open connections finish their requests, return once all closed.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::Service as _;

use crate::api::fast::{FastKv, KvMethod, UnaryBody};
use crate::api::{self, ApiLimits};
use crate::backend::Backend;
use crate::http::{http_routes, HttpState};

/// How long a new connection may take to send its first bytes (HTTP/2's preface, or enough of
/// an HTTP/1.1 request to tell it apart) before it is closed: grpc-go's default connection
/// timeout. A connection that never sends anything would otherwise hold one of the port's
/// connection permits for good.
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(120);

mod direct_h2;

/// What [`on_connection_end`] registered.
static CONNECTION_END: OnceLock<fn()> = OnceLock::new();

/// Registers `hook` to run on the thread that served a client connection, right after the
/// connection ended and its buffers were freed. The first registration stays; a later one
/// returns false.
///
/// An allocator that caches freed memory per thread (mimalloc does) keeps a thread's emptied
/// pages until that thread allocates or collects again. A tokio worker that served the last
/// of many connections and then sleeps would hold their buffers, megabytes after a burst of a
/// thousand clients, for as long as it sleeps. The `skiff` binary registers mimalloc's
/// collection of the calling thread's heap.
pub fn on_connection_end(hook: fn()) -> bool {
    CONNECTION_END.set(hook).is_ok()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A path no route serves: gRPC's "unknown service" (with grpc-go's message) for gRPC
/// requests, a plain 404 for HTTP ones — as etcd answers on its client port.
async fn unknown_path(request: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let grpc = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    if !grpc {
        return (axum::http::StatusCode::NOT_FOUND, "404 page not found\n").into_response();
    }
    let path = request.uri().path();
    let message = match path.trim_start_matches('/').split_once('/') {
        Some((service, _)) if !service.is_empty() => format!("unknown service {service}"),
        _ => format!("malformed method name: {path:?}"),
    };
    tonic::Status::unimplemented(message)
        .into_http::<axum::body::Body>()
        .into_response()
}

/// Everything the client port serves through tonic and axum: etcd's five services
/// ([`api::client_router`]), the HTTP endpoints ([`http_routes`]) and the answers to unknown
/// paths. The KV fast path serves the same KV calls the same way; this router answers them when
/// the fast path does not take them (compressed requests, for example).
pub fn client_routes<B: Backend>(backend: B, limits: ApiLimits, http: HttpState) -> axum::Router {
    api::client_router(backend, limits)
        .into_axum_router()
        .merge(http_routes(http))
        .fallback(unknown_path)
        // What tonic's server did before serving (axum builds its routing tables once).
        .with_state(())
}

/// The client port's request handler: the deadline, then the KV fast path or the router.
pub struct ClientService<B> {
    shared: Arc<Shared<B>>,
}

struct Shared<B> {
    kv: FastKv<B>,
    routes: axum::Router,
}

impl<B> Clone for ClientService<B> {
    fn clone(&self) -> Self {
        ClientService {
            shared: self.shared.clone(),
        }
    }
}

impl<B: Backend> ClientService<B> {
    /// The handler over `backend`, with `http` behind `/health` and `/metrics`.
    pub fn new(backend: B, limits: ApiLimits, http: HttpState) -> Self {
        let routes = client_routes(backend.clone(), limits.clone(), http);
        ClientService {
            shared: Arc::new(Shared {
                kv: FastKv::new(backend, limits),
                routes,
            }),
        }
    }

    /// Answers one request.
    pub async fn answer<T>(&self, request: Request<T>) -> Response<ClientBody>
    where
        T: Body<Data = Bytes> + Send + Unpin + 'static,
        T::Error: Into<BoxError>,
    {
        match grpc_timeout(request.headers()) {
            None => self.dispatch(request).await,
            Some(timeout) => match tokio::time::timeout(timeout, self.dispatch(request)).await {
                Ok(response) => response,
                Err(_) => tonic::Status::cancelled("Timeout expired").into_http(),
            },
        }
    }

    async fn dispatch<T>(&self, request: Request<T>) -> Response<ClientBody>
    where
        T: Body<Data = Bytes> + Send + Unpin + 'static,
        T::Error: Into<BoxError>,
    {
        match KvMethod::of(&request) {
            Some(method) => self
                .shared
                .kv
                .call(method, request.into_body())
                .await
                .map(ClientBody::Unary),
            None => {
                let mut routes = self.shared.routes.clone();
                let answer = routes.call(request).await;
                let Ok(response) = answer;
                response.map(ClientBody::Routed)
            }
        }
    }
}

impl<B: Backend> hyper::service::Service<Request<Incoming>> for ClientService<B> {
    type Response = Response<ClientBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ClientBody>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let service = self.clone();
        Box::pin(async move { Ok(service.answer(request).await) })
    }
}

/// The deadline a `grpc-timeout` header asks for: up to 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`). A value that does not parse is ignored, as tonic and grpc-go ignore it.
pub fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let unit_at = value.len().checked_sub(1)?;
    let (amount, unit) = value.split_at(unit_at);
    if amount.len() > 8 {
        return None;
    }
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A response body of the client port: the fast path's, or the router's.
#[derive(Debug)]
pub enum ClientBody {
    /// A unary KV answer (or a refusal, empty).
    Unary(UnaryBody),
    /// Whatever the router answered.
    Routed(axum::body::Body),
}

impl Default for ClientBody {
    fn default() -> Self {
        ClientBody::Unary(UnaryBody::default())
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Unary(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(|never| match never {}))),
            ClientBody::Routed(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|frame| frame.map(|result| result.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Unary(body) => body.is_end_stream(),
            ClientBody::Routed(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Unary(body) => body.size_hint(),
            ClientBody::Routed(body) => body.size_hint(),
        }
    }
}

/// hyper's connection settings. hyper is only handed connections that did not begin with
/// HTTP/2's preface (those go to `direct_h2`, with the HTTP/2 settings hyper used), so only
/// HTTP/1.1 is configured: the timer makes hyper enforce its header read timeout (30 s).
fn connection_builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder
}

/// Serves `service` on each connection `incoming` yields until `shutdown` resolves, then stops
/// accepting (`incoming` is dropped at once, which for [`limited_incoming`] closes the
/// listener), asks every open connection to finish (HTTP/2: GOAWAY, then the streams already
/// open are served; HTTP/1.1: closed after the answer in progress) and returns when all have
/// closed. Also returns if `incoming` ends.
///
/// A connection whose first bytes are HTTP/2's preface is served by `direct_h2`; any other by
/// hyper (HTTP/1.1), which is handed the bytes already read; one that sends nothing for
/// [`FIRST_BYTES_TIMEOUT`] is closed.
///
/// [`limited_incoming`]: crate::limits::limited_incoming
pub async fn serve<B, I, C>(
    incoming: I,
    service: ClientService<B>,
    shutdown: impl Future<Output = ()>,
) where
    B: Backend,
    I: Stream<Item = io::Result<C>>,
    C: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = Arc::new(connection_builder());
    // hyper's connections are watched by `graceful`, the HTTP/2 ones (and those still being
    // told apart) by `stop`: each holds a receiver until it has closed.
    let graceful = GracefulShutdown::new();
    let (stop, _) = tokio::sync::watch::channel(false);
    {
        let mut incoming = pin!(incoming);
        let mut shutdown = pin!(shutdown);
        loop {
            let connection = tokio::select! {
                () = &mut shutdown => break,
                next = incoming.next() => match next {
                    Some(Ok(connection)) => connection,
                    Some(Err(error)) => {
                        tracing::debug!(%error, "accepting a client connection failed");
                        continue;
                    }
                    None => break,
                },
            };
            let builder = builder.clone();
            let service = service.clone();
            let watcher = graceful.watcher();
            let mut stopped = stop.subscribe();
            tokio::spawn(async move {
                let mut connection = connection;
                let sniffed = tokio::select! {
                    sniffed = tokio::time::timeout(FIRST_BYTES_TIMEOUT, sniff(&mut connection)) => sniffed,
                    _ = stopped.wait_for(|stop| *stop) => return,
                };
                let (http2, read) = match sniffed {
                    Ok(Ok(sniffed)) => sniffed,
                    Ok(Err(error)) => {
                        tracing::debug!(%error, "reading from a client connection failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("a client connection sent nothing in time; closed");
                        return;
                    }
                };
                let connection = Rewind {
                    read,
                    inner: connection,
                };
                if http2 {
                    drop(watcher);
                    direct_h2::serve_connection(connection, service, stopped).await;
                } else {
                    drop(stopped);
                    let connection = builder.serve_connection(TokioIo::new(connection), service);
                    if let Err(error) = watcher.watch(connection).await {
                        tracing::debug!(%error, "client connection ended with an error");
                    }
                }
                // No await since the connection was dropped: still the thread that freed it.
                if let Some(hook) = CONNECTION_END.get() {
                    hook();
                }
            });
        }
    }
    // Both at once: a connection of either kind may take a while to finish.
    let _ = stop.send(true);
    tokio::join!(graceful.shutdown(), stop.closed());
}

/// Reads a connection's first bytes, up to HTTP/2's preface: whether they are the preface, and
/// the bytes read (to be replayed). Stops at the first byte that differs, or at the end.
async fn sniff<C: AsyncRead + Unpin>(connection: &mut C) -> io::Result<(bool, Bytes)> {
    use tokio::io::AsyncReadExt;
    let preface = direct_h2::PREFACE;
    let mut read = [0u8; 24];
    let mut length = 0;
    while length < preface.len() {
        let more = connection.read(&mut read[length..]).await?;
        if more == 0 {
            break;
        }
        length += more;
        if read[..length] != preface[..length] {
            break;
        }
    }
    let http2 = length == preface.len() && read == *preface;
    Ok((http2, Bytes::copy_from_slice(&read[..length])))
}

/// A connection whose first bytes were read already: they are read again first.
struct Rewind<C> {
    read: Bytes,
    inner: C,
}

impl<C: AsyncRead + Unpin> AsyncRead for Rewind<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.read.is_empty() {
            let length = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read.split_to(length));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Rewind<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeout(value: &str) -> Option<Duration> {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", value.parse().unwrap());
        grpc_timeout(&headers)
    }

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout("7n"), Some(Duration::from_nanos(7)));
        assert_eq!(timeout("123456789S"), None, "more than 8 digits");
        assert_eq!(timeout("S"), None);
        assert_eq!(timeout(""), None);
        assert_eq!(timeout("5s"), None);
        assert_eq!(timeout("-5S"), None);
        assert_eq!(grpc_timeout(&HeaderMap::new()), None);
    }
}

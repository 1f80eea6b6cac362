//! The client port: etcd's gRPC API and the HTTP endpoints on one listener.
//!
//! [`client_routes`] is everything the port serves (the tonic services, `/health`, `/version`,
//! `/metrics`, the answers to unknown paths); [`serve`] serves it on a stream of connections
//! with tonic's server (HTTP/1.1 and HTTP/2) until a shutdown signal. The member and the API
//! tests both serve through it.

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::api::{self, ApiLimits};
use crate::backend::Backend;
use crate::http::{http_routes, HttpState};

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

/// What the client port serves, ready for [`serve`].
pub struct ClientService<B> {
    routes: axum::Router,
    _backend: std::marker::PhantomData<fn() -> B>,
}

impl<B: Backend> ClientService<B> {
    /// The port's services over `backend`, with `http` behind `/health` and `/metrics`.
    pub fn new(backend: B, limits: ApiLimits, http: HttpState) -> Self {
        ClientService {
            routes: client_routes(backend, limits, http),
            _backend: std::marker::PhantomData,
        }
    }
}

/// Serves `service` on each connection `incoming` yields until `shutdown` resolves, then stops
/// accepting, lets open connections finish and returns when all have closed.
pub async fn serve<B, I, C>(
    incoming: I,
    service: ClientService<B>,
    shutdown: impl Future<Output = ()>,
) where
    B: Backend,
    I: Stream<Item = io::Result<C>>,
    C: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let result = tonic::transport::Server::builder()
        .accept_http1(true)
        .tcp_nodelay(true)
        .add_routes(tonic::service::Routes::from(service.routes))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    if let Err(error) = result {
        tracing::warn!(%error, "client server failed");
    }
}

//! etcd's plain-HTTP endpoints: `/health`, `/version` and `/metrics`.
//!
//! etcd serves these on every client URL next to gRPC (and, with `--listen-metrics-urls`, on
//! extra listeners that carry only `/metrics` and `/health`). [`http_routes`] returns an
//! [`axum::Router`]; the client port mounts it beside the gRPC services
//! ([`crate::client_server::client_routes`]), which are routed by path
//! (`/etcdserverpb.KV/Range`, ...), so the two sets never collide. A metrics-only listener
//! serves [`metrics_routes`] through tonic's server, accepting HTTP/1.1 as well as HTTP/2.
//!
//! Answers, as etcd 3.4.23 gives them (`etcdserver/api/etcdhttp`):
//!
//! * `GET /health`: `{"health":"true"}` with 200 when the health check passes, otherwise
//!   `{"health":"false"}` followed by a newline with 503 (etcd writes the failure through
//!   `http.Error`). 3.4 has no `reason` field (3.5 added it). Other methods: 405 with
//!   `Allow: GET`. Each answer counts in `etcd_server_health_success` / `_failures`.
//! * `GET /version`: `{"etcdserver":"3.4.23","etcdcluster":"3.4.0"}`; Skiff reports the etcd
//!   release whose API it reproduces, since clients use these values to choose features. Go's
//!   JSON decoding ignores unknown fields, so Skiff's own version is added as `"skiff"`.
//! * `GET /metrics`: [`Metrics::render`], `text/plain; version=0.0.4`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;

use crate::metrics::{Metrics, ETCD_CLUSTER_VERSION, ETCD_SERVER_VERSION};

/// A boxed future, as returned by an asynchronous health check.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Decides whether the member is healthy: in etcd 3.4, "has a leader, no alarm, and a quorum
/// read finishes within one second".
pub type HealthCheck = Arc<dyn Fn() -> BoxFuture<bool> + Send + Sync>;

/// What the HTTP handlers need from the member.
#[derive(Clone)]
pub struct HttpState {
    /// The member's metrics, rendered on `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Called on every `GET /health`.
    pub health: HealthCheck,
}

impl HttpState {
    /// A state whose health check is a cheap synchronous test (for example "a leader is known").
    pub fn new(
        metrics: Arc<Metrics>,
        healthy: impl Fn() -> bool + Send + Sync + 'static,
    ) -> HttpState {
        let healthy = Arc::new(healthy);
        HttpState {
            metrics,
            health: Arc::new(move || {
                let answer = healthy();
                Box::pin(async move { answer })
            }),
        }
    }

    /// A state whose health check is asynchronous (for example a linearizable read with a
    /// timeout, as etcd does).
    pub fn with_async_health<F, Fut>(metrics: Arc<Metrics>, check: F) -> HttpState
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        HttpState {
            metrics,
            health: Arc::new(move || Box::pin(check())),
        }
    }
}

/// `/health`, `/version` and `/metrics`, for the client listeners.
pub fn http_routes(state: HttpState) -> Router {
    Router::new()
        .route("/version", any(version))
        .merge(metrics_routes(state))
}

/// `/health` and `/metrics` only, for `--listen-metrics-urls` listeners.
pub fn metrics_routes(state: HttpState) -> Router {
    Router::new()
        .route("/health", any(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

const JSON: &str = "application/json";

fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [
            (header::ALLOW, HeaderValue::from_static("GET")),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            ),
        ],
        "Method Not Allowed\n",
    )
        .into_response()
}

async fn health(method: Method, State(state): State<HttpState>) -> Response {
    if method != Method::GET {
        return method_not_allowed();
    }
    let healthy = (state.health)().await;
    if healthy {
        state.metrics.health_success.inc();
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, JSON)],
            r#"{"health":"true"}"#,
        )
            .into_response()
    } else {
        state.metrics.health_failures.inc();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, JSON)],
            "{\"health\":\"false\"}\n",
        )
            .into_response()
    }
}

/// The `/version` body.
pub fn version_json() -> String {
    format!(
        r#"{{"etcdserver":"{ETCD_SERVER_VERSION}","etcdcluster":"{ETCD_CLUSTER_VERSION}","skiff":"{}"}}"#,
        env!("CARGO_PKG_VERSION")
    )
}

async fn version(method: Method) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, JSON)],
        version_json(),
    )
        .into_response()
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Serves `router` the way the member will: through tonic, accepting HTTP/1.1.
    async fn serve(router: Router) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .accept_http1(true)
                .add_routes(tonic::service::Routes::from(router))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        (addr, stop)
    }

    /// One HTTP/1.1 request on a fresh connection; returns status, lower-cased headers, body.
    async fn request(
        addr: std::net::SocketAddr,
        method: &str,
        path: &str,
    ) -> (u16, Vec<(String, String)>, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("no header end");
        let mut lines = head.lines();
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (k, v) = line.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, headers, body)
    }

    fn dechunk(mut body: &str) -> String {
        let mut out = String::new();
        loop {
            let (size, rest) = body.split_once("\r\n").unwrap();
            let size = usize::from_str_radix(size.trim(), 16).unwrap();
            if size == 0 {
                return out;
            }
            out.push_str(&rest[..size]);
            body = &rest[size + 2..];
        }
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[tokio::test]
    async fn health_follows_the_check_and_counts() {
        let metrics = Arc::new(Metrics::new());
        let healthy = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&healthy);
        let state = HttpState::new(Arc::clone(&metrics), move || flag.load(Ordering::SeqCst));
        let (addr, _stop) = serve(http_routes(state)).await;

        let (status, headers, body) = request(addr, "GET", "/health").await;
        assert_eq!(status, 503);
        assert_eq!(body, "{\"health\":\"false\"}\n");
        assert_eq!(header(&headers, "content-type"), Some(JSON));

        healthy.store(true, Ordering::SeqCst);
        let (status, _, body) = request(addr, "GET", "/health").await;
        assert_eq!(status, 200);
        assert_eq!(body, r#"{"health":"true"}"#);

        let (status, headers, _) = request(addr, "POST", "/health").await;
        assert_eq!(status, 405);
        assert_eq!(header(&headers, "allow"), Some("GET"));

        assert_eq!(metrics.health_success.get(), 1);
        assert_eq!(metrics.health_failures.get(), 1);
    }

    #[tokio::test]
    async fn async_health_check() {
        let state = HttpState::with_async_health(Arc::new(Metrics::new()), || async { true });
        let (addr, _stop) = serve(http_routes(state)).await;
        let (status, _, body) = request(addr, "GET", "/health").await;
        assert_eq!((status, body.as_str()), (200, r#"{"health":"true"}"#));
    }

    #[tokio::test]
    async fn version_and_metrics() {
        let metrics = Arc::new(Metrics::new());
        metrics.has_leader.set(1);
        let (addr, _stop) = serve(http_routes(HttpState::new(metrics, || true))).await;

        let (status, headers, body) = request(addr, "GET", "/version").await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "content-type"), Some(JSON));
        assert!(
            body.starts_with(r#"{"etcdserver":"3.4.23","etcdcluster":"3.4.0","skiff":""#),
            "{body}"
        );

        let (status, headers, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(header(&headers, "content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4"));
        assert!(body.contains("\netcd_server_has_leader 1\n"), "{body}");

        let (status, _, _) = request(addr, "GET", "/nope").await;
        assert_eq!(status, 404);
    }

    #[tokio::test]
    async fn metrics_listener_has_no_version() {
        let state = HttpState::new(Arc::new(Metrics::new()), || true);
        let (addr, _stop) = serve(metrics_routes(state)).await;
        assert_eq!(request(addr, "GET", "/health").await.0, 200);
        assert_eq!(request(addr, "GET", "/metrics").await.0, 200);
        assert_eq!(request(addr, "GET", "/version").await.0, 404);
    }
}

//! HTTP/2 connections of the client port, driven with the `h2` crate directly.
//!
//! Why: under hyper, every HTTP/2 request is a spawned task, and every answer has to wake the
//! connection's task from that other task; on a busy leader the two cost several times the KV
//! service's own work. Here one task per connection does all of it: it drives the connection
//! (`poll_accept` reads and writes the socket), and the unary KV calls of the fast path run as
//! futures inside it, in a [`FuturesUnordered`]. Their answers are written from that same task.
//!
//! Everything that is not a fast-path call (the streaming services, the other services, the
//! HTTP endpoints, unknown paths) is bridged to the router in a task of its own, as hyper did:
//! the request body is the stream's DATA frames and trailers, and the response body is sent
//! as the client's flow-control window allows, so a long watch or a snapshot download never
//! piles up in memory. A client resetting such a stream drops its response body.
//!
//! The answers are the ones hyper gave: the same settings (hyper 1.x's defaults as tonic left
//! them), a `date` header on every response, `content-length` when a routed body knows its
//! exact length, connection-specific headers removed, body errors turned into
//! `RST_STREAM(INTERNAL_ERROR)`, a client reset cancelling a call that has not answered yet.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll, Wake, Waker};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use futures_util::task::AtomicWaker;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::header::{CONTENT_LENGTH, DATE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::{grpc_timeout, ClientBody, ClientService, Shared};
use crate::api::fast::{KvMethod, UnaryBody};
use crate::backend::Backend;

/// What an HTTP/2 client sends first ("prior knowledge": gRPC clients do not upgrade).
pub(super) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The connection settings hyper 1.x applied, with tonic 0.14's changes: 1 MiB stream and
/// connection windows, 16 KiB frames and header lists, 400 KiB of send buffer per stream, no
/// limit on concurrent streams (h2's default when none is set) nor on streams reset for local
/// errors; h2's default for streams reset before they are accepted. No keepalive pings (tonic
/// turned them off) and fixed windows (tonic turned the adaptive window off).
fn settings() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(1024 * 1024)
        .initial_connection_window_size(1024 * 1024)
        .max_frame_size(16 * 1024)
        .max_header_list_size(16 * 1024)
        .max_local_error_reset_streams(None)
        .max_send_buffer_size(400 * 1024);
    builder
}

/// Serves one HTTP/2 connection (whose first bytes are the preface) until it closes. Once
/// `stop` turns true: GOAWAY, the streams already open are served, then the connection closes.
pub(super) async fn serve_connection<B, C>(
    io: C,
    service: ClientService<B>,
    mut stop: watch::Receiver<bool>,
) where
    B: Backend,
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut stop_requested = pin!(async move {
        // A dropped sender means `serve` is gone: stop as well.
        let _ = stop.wait_for(|stop| *stop).await;
    });
    let mut connection = tokio::select! {
        handshake = settings().handshake::<_, Bytes>(io) => match handshake {
            Ok(connection) => connection,
            Err(error) => {
                tracing::debug!(%error, "HTTP/2 handshake with a client failed");
                return;
            }
        },
        () = &mut stop_requested => return,
    };

    let shared: &Shared<B> = &service.shared;
    let mut unary = FuturesUnordered::new();
    let mut stopping = false;
    let own = OwnWaker::new();
    let ended = poll_fn(|cx| {
        if !stopping && stop_requested.as_mut().poll(cx).is_ready() {
            stopping = true;
            connection.graceful_shutdown();
        }
        own.poll(cx, |cx| {
            // New streams (this also reads the socket, and writes what is queued).
            loop {
                match connection.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, respond)))) => match KvMethod::of(&request) {
                        Some(method) => unary.push(unary_call(shared, method, request, respond)),
                        None => {
                            tokio::spawn(bridge(service.clone(), request, respond));
                        }
                    },
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            // The unary calls; one that finishes has queued its answer, which the next
            // round's `poll_accept` writes (h2 wakes the connection for it; asking here too
            // does not depend on that).
            let mut answered = false;
            while let Poll::Ready(Some(())) = unary.poll_next_unpin(cx) {
                answered = true;
            }
            if answered {
                cx.waker().wake_by_ref();
            }
            Poll::Pending
        })
    })
    .await;
    if let Err(error) = ended {
        tracing::debug!(%error, "client connection ended with an error");
    }
}

/// Most rounds of a connection's task in one poll (each round: read and write the socket,
/// poll the unary calls) that wake-ups from within the poll can ask for before it yields.
const MAX_ROUNDS: usize = 32;

/// The waker a connection's task gives to h2 and its unary calls. A wake-up while the task is
/// polling them (h2 wakes the connection whenever an answer is queued on a stream; a call's
/// answer can arrive while it runs) makes the task go round once more before it returns,
/// instead of reaching the runtime: tokio runs a task woken during its own poll again as if
/// it had yielded, and wakes another worker thread to take it over, which on a small machine
/// costs more than the request. Wake-ups at any other time wake the task.
struct OwnWaker {
    state: Arc<OwnWake>,
    /// A waker for `state`, made once (h2 keeps a clone only when it does not `will_wake`).
    waker: Waker,
}

#[derive(Default)]
struct OwnWake {
    /// The task's own waker, from its latest poll.
    task: AtomicWaker,
    /// True while the task runs a round.
    polling: AtomicBool,
    /// A wake-up came while `polling`.
    woken: AtomicBool,
}

impl OwnWaker {
    fn new() -> OwnWaker {
        let state = Arc::new(OwnWake::default());
        OwnWaker {
            waker: Waker::from(state.clone()),
            state,
        }
    }

    /// Runs `round` with this waker until it is ready, or until a round passes without a
    /// wake-up from within. After `MAX_ROUNDS` rounds, or once the runtime's budget for this
    /// poll is spent (resources then say Pending and wake at once until the task yields), it
    /// wakes the task and returns Pending: the task yields.
    fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        mut round: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        let state = &self.state;
        state.task.register(cx.waker());
        let own = &mut Context::from_waker(&self.waker);
        for _ in 0..MAX_ROUNDS {
            state.polling.store(true, Ordering::SeqCst);
            // A wake-up from before this point is for something this round sees.
            state.woken.store(false, Ordering::SeqCst);
            let polled = round(own);
            state.polling.store(false, Ordering::SeqCst);
            if polled.is_ready() || !state.woken.swap(false, Ordering::SeqCst) {
                return polled;
            }
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Wake for OwnWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Paired with the task's `polling` store and `woken` swap (both SeqCst): either the
        // task sees `woken` before it returns, or this sees `polling` false and wakes it.
        self.woken.store(true, Ordering::SeqCst);
        if !self.polling.load(Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// One unary KV call of the fast path, from its request to its answer, inside the connection's
/// task: the `grpc-timeout` deadline around reading and serving it, as `ClientService::answer`.
async fn unary_call<B: Backend>(
    shared: &Shared<B>,
    method: KvMethod,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let deadline = grpc_timeout(request.headers());
    let call = async {
        let call = shared
            .kv
            .call(method, RequestBody::new(request.into_body()));
        match deadline {
            None => call.await,
            Some(deadline) => tokio::time::timeout(deadline, call)
                .await
                .unwrap_or_else(|_| timed_out()),
        }
    };
    let Some(response) = unless_reset(&mut respond, call).await else {
        return;
    };
    let (mut head, body) = response.into_parts();
    head.headers.insert(DATE, date());
    let (message, trailers) = body.into_parts();
    let empty = message.is_none() && trailers.is_none();
    let Ok(mut stream) = respond.send_response(Response::from_parts(head, ()), empty) else {
        return;
    };
    if let Some(message) = message {
        // Sent whole: h2 queues what the window does not take yet (one message per call).
        if stream.send_data(message, trailers.is_none()).is_err() {
            return;
        }
    }
    if let Some(trailers) = trailers {
        let _ = stream.send_trailers(trailers);
    }
}

fn timed_out() -> Response<UnaryBody> {
    tonic::Status::cancelled("Timeout expired").into_http()
}

/// Runs `call` until it finishes, or returns `None` if the client resets the stream first
/// (which drops the call, as hyper did).
async fn unless_reset<T>(
    respond: &mut SendResponse<Bytes>,
    call: impl Future<Output = T>,
) -> Option<T> {
    let mut call = pin!(call);
    poll_fn(|cx| {
        if let Poll::Ready(answer) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(answer));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}

/// Any other request: served by the router (through `ClientService::answer`, so with its
/// deadline), its answer streamed back under flow control. Runs in a task of its own.
async fn bridge<B: Backend>(
    service: ClientService<B>,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let request = request.map(RequestBody::new);
    let Some(response) = unless_reset(&mut respond, service.answer(request)).await else {
        return;
    };
    let (mut head, mut body) = response.into_parts();
    strip_connection_headers(&mut head.headers);
    head.headers.entry(DATE).or_insert_with(date);
    if body.is_end_stream() {
        let _ = respond.send_response(Response::from_parts(head, ()), true);
        return;
    }
    if let Some(length) = body.size_hint().exact() {
        head.headers
            .entry(CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(length));
    }
    let Ok(mut stream) = respond.send_response(Response::from_parts(head, ()), false) else {
        return;
    };
    if let Err(reason) = send_body(&mut stream, &mut body).await {
        stream.send_reset(reason);
    }
}

/// What happened while waiting for a response body's next frame.
enum Next {
    Frame(Option<Result<Frame<Bytes>, super::BoxError>>),
    Reset,
}

/// Sends `body` on `stream`: each data frame as the window and h2's send buffer take it (so at
/// most about one body frame waits here), then the trailers or an empty end-of-stream frame.
/// Returns early (dropping the body) when the client resets the stream; an error of the body
/// is the reason to reset it with.
async fn send_body(stream: &mut SendStream<Bytes>, body: &mut ClientBody) -> Result<(), Reason> {
    loop {
        let next = poll_fn(|cx| {
            if stream.poll_reset(cx).is_ready() {
                return Poll::Ready(Next::Reset);
            }
            Pin::new(&mut *body).poll_frame(cx).map(Next::Frame)
        })
        .await;
        let frame = match next {
            Next::Reset => return Ok(()),
            Next::Frame(None) => {
                let _ = stream.send_data(Bytes::new(), true);
                return Ok(());
            }
            Next::Frame(Some(Err(error))) => {
                tracing::debug!(%error, "a response body failed");
                return Err(Reason::INTERNAL_ERROR);
            }
            Next::Frame(Some(Ok(frame))) => frame,
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                    return Ok(());
                }
                continue;
            }
        };
        let last = body.is_end_stream();
        if data.is_empty() {
            if last {
                let _ = stream.send_data(data, true);
                return Ok(());
            }
            continue;
        }
        while !data.is_empty() {
            // Ask for room for the rest of the frame, and send what is granted.
            stream.reserve_capacity(data.len());
            let mut room = stream.capacity();
            if room == 0 {
                match poll_fn(|cx| stream.poll_capacity(cx)).await {
                    Some(Ok(granted)) => room = granted,
                    // The stream was reset or closed: nobody reads the rest.
                    Some(Err(_)) | None => return Ok(()),
                }
            }
            if room == 0 {
                continue;
            }
            let chunk = data.split_to(room.min(data.len()));
            if stream.send_data(chunk, last && data.is_empty()).is_err() {
                return Ok(());
            }
        }
        if last {
            return Ok(());
        }
    }
}

/// A request body over an h2 stream: its DATA frames (their flow-control capacity handed back
/// as soon as each is taken, so the client may send more), then its trailers if any.
pub(super) struct RequestBody {
    stream: RecvStream,
    data_done: bool,
    done: bool,
}

impl RequestBody {
    fn new(stream: RecvStream) -> Self {
        RequestBody {
            stream,
            data_done: false,
            done: false,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.data_done = true,
            }
        }
        let trailers = ready!(this.stream.poll_trailers(cx));
        this.done = true;
        Poll::Ready(match trailers {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(error) => Some(Err(error)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.stream.is_end_stream()
    }
}

/// Headers HTTP/2 forbids in a response (hyper removed them too).
fn strip_connection_headers(headers: &mut HeaderMap) {
    const NAMES: [&str; 5] = [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
    ];
    for name in NAMES {
        headers.remove(name);
    }
    if let Some(connection) = headers.remove(http::header::CONNECTION) {
        // It may name more headers that concern this connection only.
        let named = connection.to_str().unwrap_or_default().to_owned();
        for name in named.split(',') {
            if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                headers.remove(name);
            }
        }
    }
}

/// The `date` header's value, now: formatted once a second per thread.
fn date() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        match &cached.1 {
            Some(value) if cached.0 == second => value.clone(),
            _ => {
                let value = HeaderValue::try_from(httpdate::fmt_http_date(now))
                    .expect("an HTTP date is a valid header value");
                *cached = (second, Some(value.clone()));
                value
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A task's waker that counts its wake-ups.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// One poll of `round` (given its number, from 1) through `own`, as a task whose waker
    /// counts: what it returned, how many rounds ran, how often the task was woken.
    fn poll_once<T>(
        own: &OwnWaker,
        mut round: impl FnMut(usize, &mut Context<'_>) -> Poll<T>,
    ) -> (Poll<T>, usize, Arc<Counting>) {
        let counting = Arc::new(Counting::default());
        let waker = Waker::from(counting.clone());
        let mut rounds = 0;
        let polled = own.poll(&mut Context::from_waker(&waker), |cx| {
            rounds += 1;
            round(rounds, cx)
        });
        (polled, rounds, counting)
    }

    fn woken(task: &Counting) -> usize {
        task.0.load(Ordering::SeqCst)
    }

    #[test]
    fn a_wake_up_during_a_round_runs_another_round_instead_of_waking_the_task() {
        let (polled, rounds, task) = poll_once(&OwnWaker::new(), |round, cx| {
            if round == 1 {
                // As h2 does when an answer is queued on a stream.
                cx.waker().wake_by_ref();
            }
            Poll::<()>::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(rounds, 2, "the wake-up asked for one more round");
        assert_eq!(woken(&task), 0, "the task was not woken");
    }

    #[test]
    fn a_wake_up_between_polls_wakes_the_task() {
        let mut kept = None;
        let (polled, _, task) = poll_once(&OwnWaker::new(), |_, cx| {
            kept = Some(cx.waker().clone());
            Poll::<()>::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(woken(&task), 0);
        // E.g. a call's answer from the event loop, or bytes from the client.
        kept.expect("registered").wake();
        assert_eq!(woken(&task), 1);
    }

    #[test]
    fn a_round_that_always_wakes_yields_after_the_limit() {
        let (polled, rounds, task) = poll_once(&OwnWaker::new(), |_, cx| {
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        assert!(polled.is_pending());
        assert_eq!(rounds, MAX_ROUNDS);
        assert_eq!(woken(&task), 1, "woken once, so the runtime polls it again");
    }

    #[test]
    fn a_ready_round_ends_the_poll() {
        let (polled, rounds, task) = poll_once(&OwnWaker::new(), |round, cx| {
            cx.waker().wake_by_ref();
            if round == 3 {
                Poll::Ready(round)
            } else {
                Poll::Pending
            }
        });
        assert_eq!((polled, rounds), (Poll::Ready(3), 3));
        assert_eq!(woken(&task), 0);
    }
}

//! Bad input against a real 3-member cluster: every bad request gets etcd 3.4's gRPC code and
//! message, garbage on the client and peer ports is closed (or refused) within a few seconds,
//! and after every case the cluster still serves: a put and a linearizable get through each
//! member succeed and every member process still runs.
//!
//! * `skiff_*` run on `skiff serve`; `etcd_*` (ignored, run with `--ignored`) run the same
//!   cases on Debian's etcd 3.4.23 to show that the expectations are etcd's.
//! * Needs `etcdctl` (the cluster helper uses it for health checks): without it the tests fail
//!   under `CI=true` and otherwise print `SKIPPED: ...`.

mod support;

use std::future::Future;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use skiff_etcd_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use skiff_etcd_proto::etcdserverpb::kv_client::KvClient;
use skiff_etcd_proto::etcdserverpb::lease_client::LeaseClient;
use skiff_etcd_proto::etcdserverpb::request_op::Request as Op;
use skiff_etcd_proto::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use skiff_etcd_proto::prost::bytes::{Buf, BufMut};
use skiff_etcd_proto::prost::Message;
use support::{Cluster, Kind, Options};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

/// Every gRPC call and every wait on a socket is bounded by this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the server has to close (or refuse) a connection carrying garbage.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// `--max-request-bytes` for the gRPC cases.
const MAX_REQUEST_BYTES: u64 = 8192;
/// `--max-txn-ops` for the gRPC cases.
const MAX_TXN_OPS: usize = 8;
/// etcd's `grpcOverheadBytes`: the gRPC receive limit is `--max-request-bytes` plus this.
const GRPC_OVERHEAD_BYTES: u64 = 512 * 1024;
/// etcd's `lease.MaxLeaseTTL` (seconds).
const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// A cluster with a gRPC channel to each member, and the failures found so far.
struct Harness {
    cluster: Cluster,
    runtime: tokio::runtime::Runtime,
    channels: Vec<Channel>,
    failures: Vec<String>,
    /// Makes the keys of successive serving checks distinct.
    checks: usize,
}

impl Harness {
    fn start(kind: Kind, options: Options) -> Harness {
        let cluster = Cluster::start(kind, 3, options);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let channels = {
            let _guard = runtime.enter();
            (0..cluster.len())
                .map(|member| {
                    Endpoint::from_shared(cluster.client_url(member).to_string())
                        .expect("a valid URL")
                        .connect_timeout(Duration::from_secs(2))
                        .timeout(CALL_TIMEOUT)
                        .connect_lazy()
                })
                .collect()
        };
        let harness = Harness {
            cluster,
            runtime,
            channels,
            failures: Vec::new(),
            checks: 0,
        };
        harness.cluster.wait_leader(Duration::from_secs(20));
        harness
    }

    fn kv(&self, member: usize) -> KvClient<Channel> {
        KvClient::new(self.channels[member].clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    fn lease(&self, member: usize) -> LeaseClient<Channel> {
        LeaseClient::new(self.channels[member].clone())
    }

    /// Runs a gRPC call to completion, bounded by [`CALL_TIMEOUT`].
    fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        self.runtime.block_on(async {
            match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(result) => result.map(tonic::Response::into_inner),
                Err(_) => Err(Status::deadline_exceeded(
                    "test: no answer within the call timeout",
                )),
            }
        })
    }

    fn fail(&mut self, failure: String) {
        eprintln!("FAILED: {failure}");
        self.failures.push(failure);
    }

    /// Checks that a call failed with exactly this code and message.
    fn expect_error<T: std::fmt::Debug>(
        &mut self,
        label: &str,
        result: Result<T, Status>,
        code: Code,
        message: &str,
    ) {
        match result {
            Err(status) if status.code() == code && status.message() == message => {}
            Err(status) => self.fail(format!(
                "{label}: expected {code:?} {message:?}, got {:?} {:?}",
                status.code(),
                status.message()
            )),
            Ok(answer) => self.fail(format!(
                "{label}: expected {code:?} {message:?}, got success {answer:?}"
            )),
        }
    }

    /// After a case: every member process still runs, and a put and a linearizable get
    /// through each member work.
    fn check_serving(&mut self, after: &str) {
        self.checks += 1;
        for member in 0..self.cluster.len() {
            if let Some(status) = self.cluster.exit_status(member) {
                let log = self.cluster.log_tail(member, 20);
                self.fail(format!(
                    "after {after}: member {member} exited with {status}; log tail:\n{log}"
                ));
                continue;
            }
            let key = format!("serving/{}/{member}", self.checks).into_bytes();
            let value = format!("after {after}").into_bytes();
            let put = self.call(self.kv(member).put(PutRequest {
                key: key.clone().into(),
                value: value.clone().into(),
                ..Default::default()
            }));
            if let Err(status) = put {
                self.fail(format!(
                    "after {after}: put through member {member}: {status:?}"
                ));
                continue;
            }
            let got = self.call(self.kv(member).range(RangeRequest {
                key: key.into(),
                ..Default::default()
            }));
            match got {
                Ok(answer) if answer.kvs.len() == 1 && answer.kvs[0].value[..] == value[..] => {}
                other => self.fail(format!(
                    "after {after}: linearizable get through member {member}: {other:?}"
                )),
            }
        }
    }

    /// The store's current revision (from a linearizable range header).
    fn revision(&self) -> i64 {
        let answer = self
            .call(self.kv(0).range(RangeRequest {
                key: b"revision-probe".to_vec().into(),
                ..Default::default()
            }))
            .expect("range for the revision");
        answer.header.expect("a response header").revision
    }

    fn finish(self, test: &str) {
        assert!(
            self.failures.is_empty(),
            "{test}: {} failure(s):\n{}\n\ncluster:\n{}",
            self.failures.len(),
            self.failures.join("\n"),
            self.cluster.describe()
        );
    }
}

fn put(key: &str, value: Vec<u8>) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.into(),
        ..Default::default()
    }
}

fn put_op(key: &str) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(put(key, b"v".to_vec()))),
    }
}

/// The request-validation cases over gRPC, each sent through every member.
fn grpc_errors(kind: Kind, test: &str) {
    if !support::prerequisites(test, kind) {
        return;
    }
    let mut h = Harness::start(
        kind,
        Options {
            max_request_bytes: Some(MAX_REQUEST_BYTES),
            max_txn_ops: Some(MAX_TXN_OPS as u32),
            ..Options::default()
        },
    );
    h.check_serving("start");
    let members = h.cluster.len();

    // A value a little above --max-request-bytes reaches etcd's own check.
    for m in 0..members {
        let request = put("big", vec![b'x'; MAX_REQUEST_BYTES as usize + 100]);
        let result = h.call(h.kv(m).put(request));
        h.expect_error(
            &format!("put above --max-request-bytes via m{m}"),
            result,
            Code::InvalidArgument,
            "etcdserver: request is too large",
        );
    }
    h.check_serving("put above --max-request-bytes");

    // Far above it, grpc-go refuses the message before etcd sees it.
    let limit = MAX_REQUEST_BYTES + GRPC_OVERHEAD_BYTES;
    let request = put("huge", vec![b'x'; limit as usize + 64 * 1024]);
    let expected = format!(
        "grpc: received message larger than max ({} vs. {limit})",
        request.encoded_len()
    );
    for m in 0..members {
        let result = h.call(h.kv(m).put(request.clone()));
        h.expect_error(
            &format!("put far above --max-request-bytes via m{m}"),
            result,
            Code::ResourceExhausted,
            &expected,
        );
    }
    h.check_serving("put far above --max-request-bytes");

    // Empty keys.
    const NO_KEY: &str = "etcdserver: key is not provided";
    for m in 0..members {
        let result = h.call(h.kv(m).put(put("", b"v".to_vec())));
        h.expect_error(
            &format!("put empty key via m{m}"),
            result,
            Code::InvalidArgument,
            NO_KEY,
        );
        let result = h.call(h.kv(m).range(RangeRequest::default()));
        h.expect_error(
            &format!("range empty key via m{m}"),
            result,
            Code::InvalidArgument,
            NO_KEY,
        );
        let result = h.call(h.kv(m).delete_range(DeleteRangeRequest::default()));
        h.expect_error(
            &format!("delete empty key via m{m}"),
            result,
            Code::InvalidArgument,
            NO_KEY,
        );
    }
    h.check_serving("empty keys");

    // Put with ignore_value on a missing key, and with a value as well as ignore_value.
    for m in 0..members {
        let request = PutRequest {
            ignore_value: true,
            ..put("never-written", Vec::new())
        };
        let result = h.call(h.kv(m).put(request));
        h.expect_error(
            &format!("put ignore_value of a missing key via m{m}"),
            result,
            Code::InvalidArgument,
            "etcdserver: key not found",
        );
        let request = PutRequest {
            ignore_value: true,
            ..put("never-written", b"v".to_vec())
        };
        let result = h.call(h.kv(m).put(request));
        h.expect_error(
            &format!("put ignore_value with a value via m{m}"),
            result,
            Code::InvalidArgument,
            "etcdserver: value is provided",
        );
    }
    h.check_serving("put ignore_value");

    // Revisions in the future.
    const FUTURE: &str = "etcdserver: mvcc: required revision is a future revision";
    const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    for m in 0..members {
        let future = h.revision() + 1000;
        let request = RangeRequest {
            key: b"k".to_vec().into(),
            revision: future,
            ..Default::default()
        };
        let result = h.call(h.kv(m).range(request));
        h.expect_error(
            &format!("range at a future revision via m{m}"),
            result,
            Code::OutOfRange,
            FUTURE,
        );
        let result = h.call(h.kv(m).compact(CompactionRequest {
            revision: future,
            physical: false,
        }));
        h.expect_error(
            &format!("compact to a future revision via m{m}"),
            result,
            Code::OutOfRange,
            FUTURE,
        );
    }
    h.check_serving("future revisions");

    // Compacted revisions.
    for i in 0..3 {
        let result = h.call(h.kv(0).put(put("compact-me", format!("{i}").into_bytes())));
        result.expect("put before the compaction");
    }
    let compacted_to = h.revision();
    let result = h.call(h.kv(1).compact(CompactionRequest {
        revision: compacted_to,
        physical: true,
    }));
    if let Err(status) = result {
        h.fail(format!("compact to {compacted_to}: {status:?}"));
    }
    for m in 0..members {
        let request = RangeRequest {
            key: b"compact-me".to_vec().into(),
            revision: compacted_to - 1,
            ..Default::default()
        };
        let result = h.call(h.kv(m).range(request));
        h.expect_error(
            &format!("range at a compacted revision via m{m}"),
            result,
            Code::OutOfRange,
            COMPACTED,
        );
        let result = h.call(h.kv(m).compact(CompactionRequest {
            revision: compacted_to - 1,
            physical: false,
        }));
        h.expect_error(
            &format!("compact to a compacted revision via m{m}"),
            result,
            Code::OutOfRange,
            COMPACTED,
        );
        let request = RangeRequest {
            key: b"compact-me".to_vec().into(),
            revision: compacted_to,
            ..Default::default()
        };
        match h.call(h.kv(m).range(request)) {
            Ok(answer) if answer.kvs.len() == 1 && &answer.kvs[0].value[..] == b"2" => {}
            other => h.fail(format!(
                "range at the compaction revision {compacted_to} via m{m}: {other:?}"
            )),
        }
    }
    h.check_serving("compacted revisions");

    // Unknown leases.
    const NO_LEASE: &str = "etcdserver: requested lease not found";
    let unknown_lease = 0x5eed_0bad_1dea_i64;
    for m in 0..members {
        let request = PutRequest {
            lease: unknown_lease,
            ..put("leased", b"v".to_vec())
        };
        let result = h.call(h.kv(m).put(request));
        h.expect_error(
            &format!("put with an unknown lease via m{m}"),
            result,
            Code::NotFound,
            NO_LEASE,
        );
        let result = h.call(
            h.lease(m)
                .lease_revoke(LeaseRevokeRequest { id: unknown_lease }),
        );
        h.expect_error(
            &format!("revoke an unknown lease via m{m}"),
            result,
            Code::NotFound,
            NO_LEASE,
        );
        // etcd answers TimeToLive of an unknown lease with success and TTL -1.
        let result = h.call(h.lease(m).lease_time_to_live(LeaseTimeToLiveRequest {
            id: unknown_lease,
            keys: true,
        }));
        match result {
            Ok(answer) if answer.id == unknown_lease && answer.ttl == -1 => {}
            other => h.fail(format!(
                "time-to-live of an unknown lease via m{m}: expected success with TTL -1, got {other:?}"
            )),
        }
    }
    h.check_serving("unknown leases");

    // Lease TTL above the maximum; the maximum itself is accepted.
    for m in 0..members {
        let result = h.call(h.lease(m).lease_grant(LeaseGrantRequest {
            ttl: MAX_LEASE_TTL + 1,
            id: 0,
        }));
        h.expect_error(
            &format!("lease grant above the maximum TTL via m{m}"),
            result,
            Code::OutOfRange,
            "etcdserver: too large lease TTL",
        );
    }
    h.check_serving("too large lease TTL");

    // Transactions: too many operations, exactly the limit, a key written twice.
    for m in 0..members {
        let too_many = TxnRequest {
            success: (0..=MAX_TXN_OPS)
                .map(|i| put_op(&format!("txn/{i}")))
                .collect(),
            ..Default::default()
        };
        let result = h.call(h.kv(m).txn(too_many));
        h.expect_error(
            &format!("txn with {} ops via m{m}", MAX_TXN_OPS + 1),
            result,
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        );
        let compare = Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: b"txn/compare".to_vec().into(),
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        };
        let too_many_compares = TxnRequest {
            compare: vec![compare; MAX_TXN_OPS + 1],
            ..Default::default()
        };
        let result = h.call(h.kv(m).txn(too_many_compares));
        h.expect_error(
            &format!("txn with {} compares via m{m}", MAX_TXN_OPS + 1),
            result,
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request",
        );
        let at_limit = TxnRequest {
            success: (0..MAX_TXN_OPS)
                .map(|i| put_op(&format!("txn/{i}")))
                .collect(),
            ..Default::default()
        };
        if let Err(status) = h.call(h.kv(m).txn(at_limit)) {
            h.fail(format!(
                "txn with exactly {MAX_TXN_OPS} ops via m{m}: {status:?}"
            ));
        }
        let duplicate = TxnRequest {
            success: vec![put_op("txn/twice"), put_op("txn/twice")],
            ..Default::default()
        };
        let result = h.call(h.kv(m).txn(duplicate));
        h.expect_error(
            &format!("txn writing one key twice via m{m}"),
            result,
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request",
        );
    }
    h.check_serving("txn limits");

    h.finish(test);
}

#[test]
fn skiff_grpc_errors_are_etcds() {
    grpc_errors(Kind::Skiff, "skiff_grpc_errors_are_etcds");
}

#[test]
fn etcd_grpc_errors() {
    grpc_errors(Kind::Etcd, "etcd_grpc_errors");
}

/// A deterministic pseudo-random byte sequence (xorshift64).
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A HTTP/2 frame header plus payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// What the server did with a connection carrying garbage.
#[derive(Debug)]
enum Outcome {
    /// It closed (or reset) the connection after sending these bytes.
    Closed(Vec<u8>),
    /// It answered with an error (an HTTP 4xx/5xx or an HTTP/2 GOAWAY) but kept the
    /// connection open.
    Refused(Vec<u8>),
    /// Neither, within the time allowed.
    Open(Vec<u8>),
}

/// True if `bytes` start with an HTTP/1.x 4xx/5xx status line, or hold an HTTP/2 GOAWAY frame.
fn is_error_answer(bytes: &[u8]) -> bool {
    if bytes.starts_with(b"HTTP/1.") {
        return matches!(bytes.get(9), Some(b'4') | Some(b'5'));
    }
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = (usize::from(bytes[at]) << 16)
            | (usize::from(bytes[at + 1]) << 8)
            | usize::from(bytes[at + 2]);
        if bytes[at + 3] == 0x7 {
            return true;
        }
        at += 9 + len;
    }
    false
}

/// Sends `payload` on a fresh connection to `address` and waits up to `within` for the server
/// to close it. `close_after_send` closes our side first (the open-and-close case).
fn send_garbage(
    address: SocketAddr,
    payload: &[u8],
    close_after_send: bool,
    within: Duration,
) -> Result<Outcome, String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))
        .map_err(|error| format!("connect {address}: {error}"))?;
    if !payload.is_empty() {
        // The server may close before it has read everything; that is fine.
        let _ = stream.write_all(payload);
    }
    if close_after_send {
        drop(stream);
        return Ok(Outcome::Closed(Vec::new()));
    }
    let deadline = Instant::now() + within;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(if is_error_answer(&received) {
                Outcome::Refused(received)
            } else {
                Outcome::Open(received)
            });
        }
        let _ = stream.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match stream.read(&mut buffer) {
            Ok(0) => return Ok(Outcome::Closed(received)),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error)
                if matches!(
                    error.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => return Ok(Outcome::Closed(received)),
        }
    }
}

fn socket(url: &str) -> SocketAddr {
    url.strip_prefix("http://")
        .unwrap_or(url)
        .parse()
        .expect("a member URL is http://IP:PORT")
}

/// A raw-bytes gRPC codec, to call methods that no generated client has.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        Ok(Some(bytes.to_vec()))
    }
}

/// Which checks a run of [`wire`] makes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Garbage (a)-(d) on the client and peer ports of every member, `GET /health` over
    /// HTTP/1.1, and the code of gRPC calls to unknown services and methods.
    Garbage,
    /// `GET /nope` over HTTP/1.1 on the client port answers 404.
    UnknownPath,
    /// The messages of gRPC calls to unknown services and methods are grpc-go's.
    UnimplementedMessages,
}

/// Garbage on the wire, plain HTTP and unknown gRPC methods; see [`Part`].
fn wire(kind: Kind, test: &str, part: Part) {
    if !support::prerequisites(test, kind) {
        return;
    }
    let mut h = Harness::start(kind, Options::default());
    h.check_serving("start");

    let junk_frames = [
        // SETTINGS with a length that is not a multiple of 6.
        h2_frame(0x4, 0, 0, &[1, 2, 3, 4, 5]),
        // A frame of an unknown type on stream 0, then HEADERS with garbage HPACK.
        h2_frame(0xee, 0xff, 0, &noise(7, 40)),
        h2_frame(0x1, 0x5, 1, &noise(8, 64)),
        // DATA on stream 0.
        h2_frame(0x0, 0, 0, b"junk"),
    ]
    .concat();
    let mut cases: Vec<(&str, Vec<u8>, bool, Duration)> = Vec::new();
    if part == Part::Garbage {
        cases.push(("random bytes", noise(42, 4096), false, CLOSE_WITHIN));
        cases.push((
            "HTTP/1.1 request line with junk",
            b"GET /\x01\x02junk\xff HTTP/1.1 garbage\r\n\x00\x01: \x7f\r\n\r\n".to_vec(),
            false,
            CLOSE_WITHIN,
        ));
        cases.push((
            "HTTP/2 preface then junk frames",
            [H2_PREFACE, &junk_frames[..]].concat(),
            false,
            CLOSE_WITHIN,
        ));
        cases.push(("open and close at once", Vec::new(), true, CLOSE_WITHIN));
    }
    for member in 0..h.cluster.len() {
        for (port, url) in [
            ("client", h.cluster.client_url(member).to_string()),
            ("peer", h.cluster.peer_url(member).to_string()),
        ] {
            for (label, payload, close, within) in &cases {
                let label = format!("{label} to m{member}'s {port} port");
                let started = Instant::now();
                match send_garbage(socket(&url), payload, *close, *within) {
                    Ok(Outcome::Closed(received)) => println!(
                        "{label}: closed after {:?}, {} byte(s) received",
                        started.elapsed(),
                        received.len()
                    ),
                    Ok(Outcome::Refused(received)) => println!(
                        "{label}: refused (left open) after {:?}: {:?}",
                        started.elapsed(),
                        String::from_utf8_lossy(&received)
                    ),
                    Ok(Outcome::Open(received)) => h.fail(format!(
                        "{label}: still open after {:?} (received {:?})",
                        started.elapsed(),
                        String::from_utf8_lossy(&received)
                    )),
                    Err(error) => h.fail(format!("{label}: {error}")),
                }
                h.check_serving(&label);
            }
        }
    }

    // Plain HTTP/1.1 on the client port.
    for member in 0..h.cluster.len() {
        let url = h.cluster.client_url(member).to_string();
        if part == Part::Garbage {
            match support::http_get(&url, "/health", CALL_TIMEOUT) {
                Ok(answer)
                    if answer.status == 200 && answer.body.trim_end() == r#"{"health":"true"}"# => {
                }
                other => h.fail(format!("GET /health on m{member}: {other:?}")),
            }
        }
        if part == Part::UnknownPath {
            match support::http_get(&url, "/nope", CALL_TIMEOUT) {
                Ok(answer) if answer.status == 404 => {}
                other => h.fail(format!(
                    "GET /nope on m{member}: expected 404, got {other:?}"
                )),
            }
        }
        h.check_serving(&format!("HTTP/1.1 GETs on m{member}"));
    }

    // gRPC calls to unknown services and methods: grpc-go's code and message.
    let unknown = [
        (
            "/etcdserverpb.Nope/Range",
            "unknown service etcdserverpb.Nope",
        ),
        (
            "/etcdserverpb.KV/Nope",
            "unknown method Nope for service etcdserverpb.KV",
        ),
    ];
    for member in 0..h.cluster.len() {
        if !matches!(part, Part::Garbage | Part::UnimplementedMessages) {
            break;
        }
        for (path, message) in unknown {
            let channel = h.channels[member].clone();
            let result: Result<Vec<u8>, Status> = h.runtime.block_on(async move {
                let call = async move {
                    let mut grpc = tonic::client::Grpc::new(channel);
                    grpc.ready()
                        .await
                        .map_err(|error| Status::unavailable(error.to_string()))?;
                    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
                    grpc.unary(tonic::Request::new(Vec::new()), path, RawCodec)
                        .await
                        .map(tonic::Response::into_inner)
                };
                tokio::time::timeout(CALL_TIMEOUT, call)
                    .await
                    .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer")))
            });
            match result {
                Err(status) if status.code() == Code::Unimplemented => {
                    if part == Part::UnimplementedMessages && status.message() != message {
                        h.fail(format!(
                            "{path} on m{member}: expected Unimplemented {message:?}, got {:?}",
                            status.message()
                        ));
                    }
                }
                other => h.fail(format!(
                    "{path} on m{member}: expected Unimplemented, got {other:?}"
                )),
            }
        }
        h.check_serving(&format!("unknown gRPC methods on m{member}"));
    }

    h.finish(test);
}

#[test]
fn skiff_survives_garbage() {
    wire(Kind::Skiff, "skiff_survives_garbage", Part::Garbage);
}

#[test]
fn skiff_unknown_http_path_is_404() {
    wire(
        Kind::Skiff,
        "skiff_unknown_http_path_is_404",
        Part::UnknownPath,
    );
}

#[test]
fn skiff_unimplemented_messages_are_grpc_gos() {
    wire(
        Kind::Skiff,
        "skiff_unimplemented_messages_are_grpc_gos",
        Part::UnimplementedMessages,
    );
}

#[test]
fn etcd_survives_garbage() {
    wire(Kind::Etcd, "etcd_survives_garbage", Part::Garbage);
}

#[test]
fn etcd_unknown_http_path_and_unimplemented_messages() {
    wire(Kind::Etcd, "etcd_unknown_http_path", Part::UnknownPath);
    wire(
        Kind::Etcd,
        "etcd_unimplemented_messages",
        Part::UnimplementedMessages,
    );
}

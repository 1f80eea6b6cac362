//! The workloads. Request-response workloads share one driver ([`drive`]): a shared
//! counter hands out request numbers, so exactly `total` requests start however many
//! clients there are, and `--rate` delays request `i` until `i / rate` seconds after the
//! start (a limiter with a burst of one, like etcd's).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use skiff_etcd_proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, request_op, watch_client::WatchClient,
    watch_request, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse,
    WatchCreateRequest, WatchRequest,
};
use skiff_etcd_proto::prost::bytes::Bytes;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use super::connect;
use super::grpc::{GrpcClient, KV_PUT, KV_RANGE, KV_TXN};
use super::random::Random;
use super::report::Stats;
use super::{
    BenchConfig, BenchError, Consistency, LeaseKeepaliveConfig, PutConfig, RangeConfig,
    TxnPutConfig, WatchLatencyConfig, Workload, REQUEST_TIMEOUT,
};

/// TTL of the leases that `lease-keepalive` renews, as etcd's benchmark uses.
const KEEPALIVE_LEASE_TTL_SECS: i64 = 100;

pub(super) async fn run(config: &BenchConfig, uris: &[String]) -> Result<Stats, BenchError> {
    let clients = config.connection.clients;
    match &config.workload {
        Workload::Put(_) | Workload::Range(_) | Workload::TxnPut(_) => {
            let conns = connect::grpc_connections(uris, &config.connection).await?;
            assert!(!conns.is_empty(), "at least one connection is opened");
            // Client i uses connection i % conns, as etcd's benchmark assigns them.
            let client_of = |client: usize| conns[client % conns.len()].client();
            Ok(request_response(config, clients, client_of).await)
        }
        Workload::LeaseKeepalive(lease) => {
            let conns = connect::channels(uris, &config.connection).await?;
            assert!(!conns.is_empty(), "at least one connection is opened");
            let conn_of = |client: usize| conns[client % conns.len()].clone();
            lease_keepalive(lease, clients, conn_of, config.show_progress).await
        }
        Workload::WatchLatency(watch) => {
            let conns = connect::channels(uris, &config.connection).await?;
            assert!(!conns.is_empty(), "at least one connection is opened");
            watch_latency(watch, clients, &conns, config.show_progress).await
        }
    }
}

/// `put`, `range` and `txn-put`, over the benchmark's own gRPC client.
async fn request_response(
    config: &BenchConfig,
    clients: usize,
    client_of: impl Fn(usize) -> GrpcClient,
) -> Stats {
    match &config.workload {
        Workload::Put(put) => {
            let operations = put_operations(put, clients, client_of);
            drive(
                operations,
                put.total,
                put.rate,
                progress_bar(put.total, config.show_progress),
            )
            .await
        }
        Workload::Range(range) => {
            let operations = (0..clients)
                .map(|client| RangeOperation {
                    client: client_of(client),
                    request: range_request(range),
                })
                .collect();
            drive(
                operations,
                range.total,
                range.rate,
                progress_bar(range.total, config.show_progress),
            )
            .await
        }
        Workload::TxnPut(txn) => {
            let operations = txn_put_operations(txn, clients, client_of);
            drive(
                operations,
                txn.total,
                txn.rate,
                progress_bar(txn.total, config.show_progress),
            )
            .await
        }
        Workload::WatchLatency(_) | Workload::LeaseKeepalive(_) => {
            unreachable!("streaming workloads run over tonic")
        }
    }
}

fn progress_bar(total: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    // Draws on standard error, and only when it is a terminal.
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{pos} / {len} B{bar:40}m ! {percent:>3}% {elapsed}")
    {
        bar.set_style(style.progress_chars("oo "));
    }
    bar
}

/// Go's `binary.PutVarint(key, number)` into a zeroed buffer of `key_size` bytes: the
/// binary keys etcd's benchmark writes. The caller checked that the varint fits.
pub(super) fn benchmark_key(key_size: usize, number: u64) -> Bytes {
    let mut key = vec![0u8; key_size];
    let mut zigzag = number << 1;
    let mut position = 0;
    while zigzag >= 0x80 {
        key[position] = (zigzag as u8) | 0x80;
        zigzag >>= 7;
        position += 1;
    }
    key[position] = zigzag as u8;
    Bytes::from(key)
}

fn status_text(status: &tonic::Status) -> String {
    format!(
        "rpc error: code = {:?} desc = {}",
        status.code(),
        status.message()
    )
}

trait Operation: Send + 'static {
    /// Sends request number `index` and waits for its answer.
    fn call(&mut self, index: u64) -> impl Future<Output = Result<(), tonic::Status>> + Send;
}

#[derive(Default)]
struct Collected {
    latencies_secs: Vec<f64>,
    errors: BTreeMap<String, u64>,
}

async fn drive<O: Operation>(
    operations: Vec<O>,
    total: u64,
    rate: u64,
    progress: ProgressBar,
) -> Stats {
    let next_index = Arc::new(AtomicU64::new(0));
    let per_client = (total / operations.len().max(1) as u64 + 1) as usize;
    let started = Instant::now();
    let tasks: Vec<_> = operations
        .into_iter()
        .map(|mut operation| {
            let next_index = Arc::clone(&next_index);
            let progress = progress.clone();
            tokio::spawn(async move {
                let mut collected = Collected {
                    latencies_secs: Vec::with_capacity(per_client),
                    errors: BTreeMap::new(),
                };
                loop {
                    let index = next_index.fetch_add(1, Ordering::Relaxed);
                    if index >= total {
                        break;
                    }
                    if rate > 0 {
                        let due = started + Duration::from_secs_f64(index as f64 / rate as f64);
                        tokio::time::sleep_until(due.into()).await;
                    }
                    let request_started = Instant::now();
                    match tokio::time::timeout(REQUEST_TIMEOUT, operation.call(index)).await {
                        Ok(Ok(())) => collected
                            .latencies_secs
                            .push(request_started.elapsed().as_secs_f64()),
                        Ok(Err(status)) => {
                            *collected.errors.entry(status_text(&status)).or_default() += 1
                        }
                        Err(_) => {
                            *collected
                                .errors
                                .entry("request timed out".to_string())
                                .or_default() += 1
                        }
                    }
                    progress.inc(1);
                }
                collected
            })
        })
        .collect();
    let mut latencies_secs = Vec::with_capacity(total as usize);
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        let collected = task.await.expect("a benchmark client panicked");
        latencies_secs.extend(collected.latencies_secs);
        for (error, count) in collected.errors {
            *errors.entry(error).or_default() += count;
        }
    }
    let elapsed = started.elapsed();
    progress.finish();
    Stats::new(latencies_secs, errors, elapsed)
}

struct PutOperation {
    client: GrpcClient,
    random: Random,
    value: Bytes,
    config: PutConfig,
}

impl Operation for PutOperation {
    fn call(&mut self, index: u64) -> impl Future<Output = Result<(), tonic::Status>> + Send {
        let number = if self.config.sequential_keys {
            index % self.config.key_space_size
        } else {
            self.random.below(self.config.key_space_size)
        };
        let request = PutRequest {
            key: benchmark_key(self.config.key_size, number),
            value: self.value.clone(),
            ..PutRequest::default()
        };
        async move {
            self.client
                .unary::<_, PutResponse>(KV_PUT, &request)
                .await
                .map(drop)
        }
    }
}

fn put_operations(
    put: &PutConfig,
    clients: usize,
    client_of: impl Fn(usize) -> GrpcClient,
) -> Vec<PutOperation> {
    // One random value for the whole run, as etcd's benchmark does.
    let value = Bytes::from(Random::new(Random::seed_from_clock(u64::MAX)).bytes(put.value_size));
    (0..clients)
        .map(|client| PutOperation {
            client: client_of(client),
            random: Random::new(Random::seed_from_clock(client as u64)),
            value: value.clone(),
            config: put.clone(),
        })
        .collect()
}

struct RangeOperation {
    client: GrpcClient,
    request: RangeRequest,
}

impl Operation for RangeOperation {
    async fn call(&mut self, _index: u64) -> Result<(), tonic::Status> {
        self.client
            .unary::<_, RangeResponse>(KV_RANGE, &self.request)
            .await
            .map(drop)
    }
}

fn range_request(range: &RangeConfig) -> RangeRequest {
    RangeRequest {
        key: Bytes::from(range.key.clone()),
        range_end: range.range_end.clone().map(Bytes::from).unwrap_or_default(),
        serializable: range.consistency == Consistency::Serializable,
        ..RangeRequest::default()
    }
}

struct TxnPutOperation {
    client: GrpcClient,
    value: Bytes,
    config: TxnPutConfig,
}

impl Operation for TxnPutOperation {
    /// Transaction `i` writes keys `(i * txn_ops + j) % key_space_size`, as etcd's
    /// benchmark does, so the keys of one transaction never repeat.
    fn call(&mut self, index: u64) -> impl Future<Output = Result<(), tonic::Status>> + Send {
        let txn_ops = self.config.txn_ops as u64;
        let success = (0..txn_ops)
            .map(|op| RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: benchmark_key(
                        self.config.key_size,
                        (index.wrapping_mul(txn_ops) + op) % self.config.key_space_size,
                    ),
                    value: self.value.clone(),
                    ..PutRequest::default()
                })),
            })
            .collect();
        let request = TxnRequest {
            compare: Vec::new(),
            success,
            failure: Vec::new(),
        };
        async move {
            self.client
                .unary::<_, TxnResponse>(KV_TXN, &request)
                .await
                .map(drop)
        }
    }
}

fn txn_put_operations(
    txn: &TxnPutConfig,
    clients: usize,
    client_of: impl Fn(usize) -> GrpcClient,
) -> Vec<TxnPutOperation> {
    let value = Bytes::from(Random::new(Random::seed_from_clock(u64::MAX)).bytes(txn.value_size));
    (0..clients)
        .map(|client| TxnPutOperation {
            client: client_of(client),
            value: value.clone(),
            config: txn.clone(),
        })
        .collect()
}

struct LeaseKeepaliveOperation {
    client: LeaseClient<Channel>,
    lease_id: i64,
}

impl Operation for LeaseKeepaliveOperation {
    /// One keep-alive on a fresh stream, as clientv3's `KeepAliveOnce` (which etcd's
    /// benchmark uses) does: open, send, half-close, read one answer.
    fn call(&mut self, _index: u64) -> impl Future<Output = Result<(), tonic::Status>> + Send {
        let request = LeaseKeepAliveRequest { id: self.lease_id };
        let mut client = self.client.clone();
        async move {
            let mut responses = client
                .lease_keep_alive(tokio_stream::once(request))
                .await?
                .into_inner();
            match responses.message().await? {
                Some(response) if response.ttl > 0 => Ok(()),
                Some(_) => Err(tonic::Status::not_found("lease expired or revoked")),
                None => Err(tonic::Status::unknown(
                    "keep-alive stream ended without an answer",
                )),
            }
        }
    }
}

async fn lease_keepalive(
    lease: &LeaseKeepaliveConfig,
    clients: usize,
    conn_of: impl Fn(usize) -> Channel,
    show_progress: bool,
) -> Result<Stats, BenchError> {
    let mut operations = Vec::with_capacity(clients);
    for client in 0..clients {
        let mut lease_client = LeaseClient::new(conn_of(client));
        let granted = lease_client
            .lease_grant(LeaseGrantRequest {
                ttl: KEEPALIVE_LEASE_TTL_SECS,
                id: 0,
            })
            .await
            .map_err(|status| BenchError::Setup {
                context: "LeaseGrant".to_string(),
                status: Box::new(status),
            })?
            .into_inner();
        operations.push(LeaseKeepaliveOperation {
            client: lease_client,
            lease_id: granted.id,
        });
    }
    let lease_ids: Vec<(LeaseClient<Channel>, i64)> = operations
        .iter()
        .map(|operation| (operation.client.clone(), operation.lease_id))
        .collect();
    let stats = drive(
        operations,
        lease.total,
        0,
        progress_bar(lease.total, show_progress),
    )
    .await;
    // Leave the cluster as found; a failure here only leaves leases to expire.
    for (mut client, id) in lease_ids {
        let _ = client.lease_revoke(LeaseRevokeRequest { id }).await;
    }
    Ok(stats)
}

fn setup_error(context: &str, status: tonic::Status) -> BenchError {
    BenchError::Setup {
        context: context.to_string(),
        status: Box::new(status),
    }
}

/// Every client opens a watch on one random key over its connection; then puts to the
/// key, `put_rate` a second over the first connection, each wait until every watcher has
/// the event. A sample is the time from the start of the put to a watcher's event.
async fn watch_latency(
    watch: &WatchLatencyConfig,
    clients: usize,
    conns: &[Channel],
    show_progress: bool,
) -> Result<Stats, BenchError> {
    let mut random = Random::new(Random::seed_from_clock(u64::MAX));
    let key = Bytes::from(random.bytes(watch.key_size));
    let value = Bytes::from(random.bytes(watch.value_size));
    let (arrival_sender, mut arrivals) = mpsc::channel::<Instant>(clients + 16);
    let mut watchers = Vec::with_capacity(clients);
    for client in 0..clients {
        let (request_sender, request_receiver) = mpsc::channel::<WatchRequest>(1);
        let create = WatchRequest {
            request_union: Some(watch_request::RequestUnion::CreateRequest(
                WatchCreateRequest {
                    key: key.clone(),
                    ..WatchCreateRequest::default()
                },
            )),
        };
        request_sender
            .send(create)
            .await
            .expect("the receiver is alive");
        let mut responses = WatchClient::new(conns[client % conns.len()].clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(
                request_receiver,
            ))
            .await
            .map_err(|status| setup_error("Watch", status))?
            .into_inner();
        loop {
            match responses.message().await {
                Ok(Some(response)) if response.created => break,
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(setup_error(
                        "Watch",
                        tonic::Status::unknown("stream ended before created"),
                    ))
                }
                Err(status) => return Err(setup_error("Watch", status)),
            }
        }
        let arrival_sender = arrival_sender.clone();
        watchers.push(tokio::spawn(async move {
            let _keep_request_stream_open = request_sender;
            while let Ok(Some(response)) = responses.message().await {
                for _ in &response.events {
                    if arrival_sender.send(Instant::now()).await.is_err() {
                        return;
                    }
                }
            }
        }));
    }
    drop(arrival_sender);

    let progress = progress_bar(watch.total, show_progress);
    let mut put_client = KvClient::new(conns[0].clone());
    let mut latencies_secs = Vec::with_capacity(watch.total as usize * clients);
    let started = Instant::now();
    let outcome = async {
        for index in 0..watch.total {
            let due = started + Duration::from_secs_f64(index as f64 / watch.put_rate as f64);
            tokio::time::sleep_until(due.into()).await;
            let put_started = Instant::now();
            let request = PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..PutRequest::default()
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, put_client.put(request)).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => return Err(setup_error("Put for watch-latency", status)),
                Err(_) => {
                    return Err(setup_error(
                        "Put for watch-latency",
                        tonic::Status::deadline_exceeded("timed out"),
                    ))
                }
            }
            for _ in 0..clients {
                match tokio::time::timeout(REQUEST_TIMEOUT, arrivals.recv()).await {
                    Ok(Some(arrival)) => latencies_secs
                        .push(arrival.saturating_duration_since(put_started).as_secs_f64()),
                    Ok(None) => {
                        return Err(setup_error(
                            "Watch",
                            tonic::Status::unavailable("a watch stream ended"),
                        ))
                    }
                    Err(_) => {
                        return Err(setup_error(
                            "Watch",
                            tonic::Status::deadline_exceeded("no event in time"),
                        ))
                    }
                }
            }
            progress.inc(1);
        }
        Ok(())
    }
    .await;
    let elapsed = started.elapsed();
    progress.finish();
    for watcher in &watchers {
        watcher.abort();
    }
    outcome?;
    Ok(Stats::new(latencies_secs, BTreeMap::new(), elapsed))
}

#[cfg(test)]
mod tests {
    use super::benchmark_key;

    #[test]
    fn keys_are_go_varints_in_a_zeroed_buffer() {
        assert_eq!(&benchmark_key(8, 0)[..], &[0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&benchmark_key(8, 1)[..], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&benchmark_key(4, 64)[..], &[0x80, 0x01, 0, 0]);
        assert_eq!(&benchmark_key(3, 300)[..], &[0xd8, 0x04, 0]);
    }
}

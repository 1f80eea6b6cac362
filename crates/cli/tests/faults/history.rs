//! The test's clients and the history they record for the linearizability checker.
//!
//! Each client is a tokio task that loops until told to stop: pick a random member (by its client
//! URL), a random key and one of put / linearizable get / compare-and-set (a Txn comparing the
//! value, then putting), run it with a timeout, and record it as a [`skiff_check::Operation`]
//! with invoke and return times in nanoseconds since the test started. Every written value is
//! unique (`<client>.<sequence>`), which is what gives the checker its power.
//!
//! Outcomes: a reply is a known output. A timeout, or an error that does not prove the request
//! was never applied, is an unknown outcome (the write may take effect later, or never). Errors
//! that prove the request had no effect (the server rejected it as invalid, or the TCP connection
//! could not even be made) drop the operation from the history.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_check::{KvInput, KvOutput, Operation};
use skiff_etcd_proto::etcdserverpb::{
    compare, kv_client::KvClient, request_op, Compare, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use tonic::transport::Channel;

use super::cluster::channel;
use super::rng::Rng;

pub type Op = Operation<KvInput, KvOutput>;

/// Shared, append-only record of every operation, plus counters for the summary.
pub struct Recorder {
    start: Instant,
    inner: Mutex<RecorderInner>,
}

#[derive(Default)]
struct RecorderInner {
    operations: Vec<Op>,
    /// (kind, outcome) -> count.
    counts: BTreeMap<(&'static str, &'static str), u64>,
    /// Error text (shortened) -> count.
    errors: BTreeMap<String, u64>,
}

/// How one request ended.
pub enum Outcome {
    Known(KvOutput),
    Unknown(String),
    /// The request certainly had no effect.
    NotApplied(String),
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            inner: Mutex::new(RecorderInner::default()),
        }
    }

    /// Nanoseconds since the test started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    pub fn record(&self, client: u64, input: KvInput, invoke: u64, outcome: Outcome) {
        let kind = match input {
            KvInput::Get { .. } => "get",
            KvInput::Put { .. } => "put",
            KvInput::Cas { .. } => "cas",
            KvInput::Append { .. } => "append",
        };
        let ret = self.now();
        let mut inner = self.inner.lock().unwrap_or_else(|error| error.into_inner());
        let (label, output, error) = match outcome {
            Outcome::Known(output) => (
                match output {
                    KvOutput::CasResult(false) => "not applied (compare failed)",
                    _ => "ok",
                },
                Some(output),
                None,
            ),
            Outcome::Unknown(error) => ("unknown", None, Some(error)),
            Outcome::NotApplied(error) => ("failed", None, Some(error)),
        };
        *inner.counts.entry((kind, label)).or_default() += 1;
        if let Some(error) = error {
            let short: String = error.chars().take(90).collect();
            *inner.errors.entry(short).or_default() += 1;
        }
        if label == "failed" {
            return;
        }
        inner.operations.push(Operation {
            client,
            input,
            output,
            invoke,
            ret: Some(ret),
        });
    }

    pub fn operations(&self) -> Vec<Op> {
        let inner = self.inner.lock().unwrap_or_else(|error| error.into_inner());
        inner.operations.clone()
    }

    /// A few lines: counts per kind and outcome, and the most frequent errors.
    pub fn summary(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(|error| error.into_inner());
        let mut text = String::new();
        for ((kind, label), count) in &inner.counts {
            text += &format!("  {kind:>4} {label}: {count}\n");
        }
        let mut errors: Vec<_> = inner.errors.iter().collect();
        errors.sort_by_key(|(_, count)| std::cmp::Reverse(**count));
        for (error, count) in errors.into_iter().take(6) {
            text += &format!("  error x{count}: {error}\n");
        }
        text
    }
}

/// Sorts a failed request into "unknown outcome" or "certainly not applied".
pub fn classify(status: &tonic::Status) -> Outcome {
    use tonic::Code;
    let text = format!("{:?}: {}", status.code(), status.message());
    let rejected = matches!(
        status.code(),
        Code::InvalidArgument
            | Code::Unimplemented
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::OutOfRange
    );
    // The connection was never made, so the request never left this process.
    let not_sent = status.code() == Code::Unavailable
        && (status.message().contains("tcp connect error")
            || status.message().contains("Connection refused"));
    if rejected || not_sent {
        Outcome::NotApplied(text)
    } else {
        Outcome::Unknown(text)
    }
}

/// Settings shared by all clients.
#[derive(Clone)]
pub struct Workload {
    pub urls: Vec<String>,
    pub keys: Vec<String>,
    pub timeout: Duration,
}

/// One client's loop; returns when `stop` is set (after finishing its current request).
pub async fn client(
    id: u64,
    seed: u64,
    workload: Workload,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng::new(seed ^ id.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let clients: Vec<KvClient<Channel>> = workload
        .urls
        .iter()
        .map(|url| KvClient::new(channel(url, workload.timeout).connect_lazy()))
        .collect();
    // The last value this client saw for each key: what its next compare-and-set expects.
    let mut last_seen: BTreeMap<usize, Option<String>> = BTreeMap::new();
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut kv = clients[rng.below(clients.len() as u64) as usize].clone();
        let key_index = rng.below(workload.keys.len() as u64) as usize;
        let key = workload.keys[key_index].clone();
        sequence += 1;
        let value = format!("{id}.{sequence}");
        let choice = rng.below(10);
        let input = if choice < 4 {
            KvInput::Get { key: key.clone() }
        } else if choice < 7 {
            KvInput::Put {
                key: key.clone(),
                value: value.clone(),
            }
        } else {
            KvInput::Cas {
                key: key.clone(),
                from: last_seen.get(&key_index).cloned().flatten(),
                to: value.clone(),
            }
        };
        let invoke = recorder.now();
        let result = tokio::time::timeout(workload.timeout, execute(&mut kv, &input)).await;
        let outcome = match result {
            Err(_) => Outcome::Unknown("client timeout".to_string()),
            Ok(Err(status)) => classify(&status),
            Ok(Ok(output)) => Outcome::Known(output),
        };
        match (&input, &outcome) {
            (_, Outcome::Known(KvOutput::Value(read))) => {
                last_seen.insert(key_index, read.clone());
            }
            (_, Outcome::Known(KvOutput::Ok | KvOutput::CasResult(true))) => {
                last_seen.insert(key_index, Some(value));
            }
            _ => {}
        }
        let failed = !matches!(outcome, Outcome::Known(_));
        recorder.record(id, input, invoke, outcome);
        if failed {
            // Do not spin on a dead member.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends one request.
pub async fn execute(
    kv: &mut KvClient<Channel>,
    input: &KvInput,
) -> Result<KvOutput, tonic::Status> {
    match input {
        KvInput::Get { key } => {
            let value = get(kv, key, false).await?;
            Ok(KvOutput::Value(value.map(|(value, _)| value)))
        }
        KvInput::Put { key, value } => {
            kv.put(PutRequest {
                key: key.clone().into_bytes().into(),
                value: value.clone().into_bytes().into(),
                ..PutRequest::default()
            })
            .await?;
            Ok(KvOutput::Ok)
        }
        KvInput::Cas { key, from, to } => {
            let compare = match from {
                Some(from) => Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Value as i32,
                    key: key.clone().into_bytes().into(),
                    target_union: Some(compare::TargetUnion::Value(
                        from.clone().into_bytes().into(),
                    )),
                    ..Compare::default()
                },
                // An absent key has version 0.
                None => Compare {
                    result: compare::CompareResult::Equal as i32,
                    target: compare::CompareTarget::Version as i32,
                    key: key.clone().into_bytes().into(),
                    target_union: Some(compare::TargetUnion::Version(0)),
                    ..Compare::default()
                },
            };
            let put = RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.clone().into_bytes().into(),
                    value: to.clone().into_bytes().into(),
                    ..PutRequest::default()
                })),
            };
            let response = kv
                .txn(TxnRequest {
                    compare: vec![compare],
                    success: vec![put],
                    failure: Vec::new(),
                })
                .await?
                .into_inner();
            Ok(KvOutput::CasResult(response.succeeded))
        }
        KvInput::Append { .. } => unreachable!("the test does not append"),
    }
}

/// Reads a key: its value and mod revision, or `None` if absent.
pub async fn get(
    kv: &mut KvClient<Channel>,
    key: &str,
    serializable: bool,
) -> Result<Option<(String, i64)>, tonic::Status> {
    let response = kv
        .range(RangeRequest {
            key: key.to_string().into_bytes().into(),
            serializable,
            ..RangeRequest::default()
        })
        .await?
        .into_inner();
    Ok(response.kvs.first().map(|kv| {
        (
            String::from_utf8_lossy(&kv.value).into_owned(),
            kv.mod_revision,
        )
    }))
}

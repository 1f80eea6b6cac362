//! Durability of a real 3-member cluster:
//!
//! * every acknowledged sequential put was made durable by an fsync of its own, on the leader
//!   and on each follower (`etcd_disk_wal_fsync_duration_seconds_count` from `/metrics`);
//! * acknowledged puts survive `kill -9` of every member at once: after restarting them with
//!   their original command lines (`--initial-cluster-state new` included) the members resume
//!   from their data directories, the membership is unchanged, every acknowledged put is there
//!   with its value, and the revision accounts for exactly the puts that were made.
//!
//! `skiff_*` run on `skiff serve`; `etcd_*` (ignored, run with `--ignored`) run the same checks
//! on Debian's etcd 3.4.23. Needs `etcdctl`: without it the tests fail under `CI=true` and
//! otherwise print `SKIPPED: ...`.

mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use skiff_etcd_proto::etcdserverpb::kv_client::KvClient;
use skiff_etcd_proto::etcdserverpb::{PutRequest, RangeRequest};
use support::{Cluster, Kind, Options};
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
const FSYNC_COUNT: &str = "etcd_disk_wal_fsync_duration_seconds_count";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// A KV client for a member (connects lazily; must be called inside the runtime).
fn kv(cluster: &Cluster, member: usize) -> KvClient<Channel> {
    let channel = Endpoint::from_shared(cluster.client_url(member).to_string())
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(2))
        .timeout(CALL_TIMEOUT)
        .connect_lazy();
    KvClient::new(channel).max_decoding_message_size(64 << 20)
}

async fn bounded<T>(
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(
            "test: no answer within the call timeout",
        )),
    }
}

fn put_request(key: &str, value: &str) -> PutRequest {
    PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

/// A member's `etcd_disk_wal_fsync_duration_seconds_count`.
fn fsync_count(cluster: &Cluster, member: usize) -> u64 {
    metric(cluster, member, FSYNC_COUNT)
}

/// The first sample of metric `name` in a member's `/metrics`.
fn metric(cluster: &Cluster, member: usize, name: &str) -> u64 {
    let answer = support::http_get(cluster.client_url(member), "/metrics", CALL_TIMEOUT)
        .unwrap_or_else(|error| panic!("GET /metrics on m{member}: {error}"));
    assert_eq!(answer.status, 200, "GET /metrics on m{member}: {answer:?}");
    answer
        .body
        .lines()
        .find_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = rest.rsplit(' ').next()?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            value.parse::<f64>().ok().map(|count| count as u64)
        })
        .unwrap_or_else(|| panic!("no {name} in m{member}'s /metrics"))
}

/// What sequential puts guarantee: put k+1 is proposed only after put k committed, and a
/// commit needs a quorum, so the leader fsyncs once per put and the followers' fsyncs, taken
/// together, number at least one per put (one follower sync can cover several entries only
/// if they were all in flight at once, which sequential puts never are). A single follower
/// may sync less often: one that lags behind can get two entries in one append (seen with
/// etcd) or merge two appends into one group commit.
fn sequential_puts_are_fsynced(kind: Kind, test: &str) {
    if !support::prerequisites(test, kind) {
        return;
    }
    const N: u64 = 200;
    let cluster = Cluster::start(kind, 3, Options::default());
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let runtime = runtime();
    let before: Vec<u64> = (0..cluster.len())
        .map(|member| fsync_count(&cluster, member))
        .collect();
    let client = {
        let _guard = runtime.enter();
        kv(&cluster, leader)
    };
    let started = Instant::now();
    runtime.block_on(async {
        for i in 0..N {
            let request = put_request(&format!("fsync/{i}"), &format!("value {i}"));
            if let Err(status) = bounded(client.clone().put(request)).await {
                panic!("{test}: put {i} to the leader m{leader}: {status:?}");
            }
        }
    });
    let elapsed = started.elapsed();
    assert_eq!(
        cluster.leader(),
        Some(leader),
        "{test}: the leader changed during the puts; the counts would not mean anything"
    );
    // The leader fsynced before answering; a follower may still be writing the last entry.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut increases = vec![0; cluster.len()];
    loop {
        for (member, increase) in increases.iter_mut().enumerate() {
            *increase = fsync_count(&cluster, member).saturating_sub(before[member]);
        }
        if increases.iter().all(|&increase| increase >= N) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "{test}: {N} sequential puts to the leader m{leader} in {elapsed:?}; fsync count \
         increases per member: {increases:?}"
    );
    let followers: u64 = (0..cluster.len())
        .filter(|&member| member != leader)
        .map(|member| increases[member])
        .sum();
    assert!(
        increases[leader] >= N,
        "{test}: {N} sequential acknowledged puts but only {} fsyncs on the leader m{leader}; \
         counts before {before:?}, increases {increases:?}",
        increases[leader]
    );
    assert!(
        followers >= N,
        "{test}: {N} sequential acknowledged puts but only {followers} fsyncs on the followers \
         together; counts before {before:?}, increases {increases:?}"
    );
    if kind == Kind::Skiff {
        // Every member keeps the values in its value log (the leader has applied them all; the
        // followers had synced them, and apply follows at once).
        let value_bytes: u64 = (0..N).map(|i| format!("value {i}").len() as u64).sum();
        for member in 0..cluster.len() {
            let deadline = Instant::now() + Duration::from_secs(5);
            let live = loop {
                let live = metric(&cluster, member, "skiff_value_log_live_bytes");
                if live >= value_bytes || Instant::now() >= deadline {
                    break live;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            assert!(
                live >= value_bytes,
                "{test}: m{member}'s value log holds {live} live bytes, fewer than the {value_bytes} of the values put"
            );
            assert!(metric(&cluster, member, "skiff_value_log_bytes") >= live);
        }
    }
}

#[test]
fn skiff_every_sequential_put_is_fsynced() {
    sequential_puts_are_fsynced(Kind::Skiff, "skiff_every_sequential_put_is_fsynced");
}

#[test]
fn etcd_every_sequential_put_is_fsynced() {
    sequential_puts_are_fsynced(Kind::Etcd, "etcd_every_sequential_put_is_fsynced");
}

/// What a batch of puts left behind.
#[derive(Default)]
struct Writes {
    /// Acknowledged puts: key -> value.
    acknowledged: BTreeMap<String, String>,
    /// Puts that failed or got no answer (they may or may not have happened): key -> value.
    unknown: BTreeMap<String, String>,
}

/// The end of the range of keys starting with `prefix` (its last byte plus one).
fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    *end.last_mut().expect("a non-empty prefix") += 1;
    end
}

/// `etcdctl member list` lines, sorted.
fn member_list(cluster: &Cluster) -> Vec<String> {
    let output = cluster.etcdctl(&["member", "list"]);
    assert!(output.success(), "member list: {output:?}");
    let mut lines: Vec<String> = output.stdout.lines().map(str::to_string).collect();
    lines.sort();
    lines
}

/// Kills every member at once with SIGKILL, starts them all again with their original command
/// lines, and checks that the membership is unchanged and that every acknowledged write is
/// there (linearizable reads through each member) with the revision in bounds.
fn kill_all_and_check(
    cluster: &mut Cluster,
    members_before: &[String],
    prefix: &str,
    writes: &Writes,
    base_revision: i64,
    test: &str,
) {
    cluster.kill_all();
    for member in 0..cluster.len() {
        assert!(!cluster.is_running(member));
    }
    let started = Instant::now();
    cluster.start_stopped();
    let leader = cluster.wait_leader(Duration::from_secs(30));
    println!(
        "{test}: all members back, m{leader} leads, {:?} after the restart",
        started.elapsed()
    );
    let mut cluster_state = Vec::new();
    for member in 0..cluster.len() {
        if let Some(status) = cluster.exit_status(member) {
            cluster_state.push(format!("m{member} exited with {status}"));
        }
    }
    assert!(cluster_state.is_empty(), "{test}: {cluster_state:?}");
    assert_eq!(
        member_list(cluster),
        members_before.to_vec(),
        "{test}: the membership changed across the restart"
    );

    let runtime = runtime();
    let acked = writes.acknowledged.len() as i64;
    let unknown = writes.unknown.len() as i64;
    for member in 0..cluster.len() {
        let client = {
            let _guard = runtime.enter();
            kv(cluster, member)
        };
        let request = RangeRequest {
            key: prefix.as_bytes().to_vec().into(),
            range_end: range_end(prefix).into(),
            ..Default::default()
        };
        let answer = runtime
            .block_on(bounded(client.clone().range(request)))
            .unwrap_or_else(|status| {
                panic!("{test}: linearizable range via m{member}: {status:?}")
            });
        let stored: BTreeMap<String, String> = answer
            .kvs
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect();
        let lost: Vec<(&String, &String, Option<&String>)> = writes
            .acknowledged
            .iter()
            .filter(|(key, value)| stored.get(*key) != Some(*value))
            .map(|(key, value)| (key, value, stored.get(key)))
            .collect();
        assert!(
            lost.is_empty(),
            "{test}: {} of {acked} acknowledged puts lost or changed after kill -9 of every \
             member (read via m{member}); (key, acknowledged value, stored value): {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
        let strangers: Vec<&String> = stored
            .keys()
            .filter(|key| {
                !writes.acknowledged.contains_key(*key)
                    && writes.unknown.get(*key) != stored.get(*key)
            })
            .collect();
        assert!(
            strangers.is_empty(),
            "{test}: keys no put wrote (or with a value no put wrote): {strangers:?}"
        );
        let revision = answer.header.expect("a response header").revision;
        let lowest = base_revision + acked;
        let highest = lowest + unknown;
        assert!(
            (lowest..=highest).contains(&revision),
            "{test}: revision {revision} via m{member} after {acked} acknowledged and {unknown} \
             unknown puts on top of revision {base_revision}: expected {lowest}..={highest}"
        );
        if member == 0 {
            println!(
                "{test}: {acked} acknowledged and {unknown} unknown puts; revision {revision} \
                 (base {base_revision}), {} keys stored",
                stored.len()
            );
        }
    }
}

fn acknowledged_writes_survive_kill_9(kind: Kind, test: &str) {
    if !support::prerequisites(test, kind) {
        return;
    }
    let mut cluster = Cluster::start(kind, 3, Options::default());
    cluster.wait_leader(Duration::from_secs(20));
    let members_before = member_list(&cluster);
    let runtime = runtime();
    let nonce = std::process::id();

    // Phase 1: 300 sequential puts, spread over the members, all answered before the kill.
    let clients: Vec<KvClient<Channel>> = {
        let _guard = runtime.enter();
        (0..cluster.len()).map(|m| kv(&cluster, m)).collect()
    };
    let mut writes = Writes::default();
    runtime.block_on(async {
        for i in 0..300 {
            let key = format!("dur/a/{i:04}");
            let value = format!("a-{i}-{nonce}");
            let client = clients[i % clients.len()].clone();
            let request = put_request(&key, &value);
            match bounded({ client }.put(request)).await {
                Ok(_) => writes.acknowledged.insert(key, value),
                Err(status) => {
                    eprintln!("{test}: put {key}: {status:?}");
                    writes.unknown.insert(key, value)
                }
            };
        }
    });
    if !writes.unknown.is_empty() {
        println!(
            "{test}: phase 1: {} of 300 puts failed before the kill (unknown outcome)",
            writes.unknown.len()
        );
    }
    drop(clients);
    // A fresh cluster starts at revision 1; each put adds one.
    kill_all_and_check(
        &mut cluster,
        &members_before,
        "dur/a/",
        &writes,
        1,
        &format!("{test} (phase 1)"),
    );
    if writes.unknown.is_empty() {
        println!("{test}: phase 1: revision is exactly 1 + 300");
    }

    // Phase 2: four concurrent writers, all members killed while puts are in flight.
    let base_revision = 1 + writes.acknowledged.len() as i64;
    let base_revision = {
        // The unknown puts of phase 1 may have happened: read the actual revision.
        let _guard = runtime.enter();
        let client = kv(&cluster, 0);
        let request = RangeRequest {
            key: b"dur/".to_vec().into(),
            range_end: b"dur0".to_vec().into(),
            count_only: true,
            ..Default::default()
        };
        let revision = runtime
            .block_on(bounded(client.clone().range(request)))
            .expect("range for the revision")
            .header
            .expect("a header")
            .revision;
        assert!(revision >= base_revision, "{test}: revision went back");
        revision
    };
    let phase2 = Arc::new(Mutex::new(Writes::default()));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let client = {
            let _guard = runtime.enter();
            kv(&cluster, worker % cluster.len())
        };
        let phase2 = phase2.clone();
        let answered = answered.clone();
        workers.push(runtime.spawn(async move {
            for i in 0..100 {
                let key = format!("dur/b/{worker}/{i:03}");
                let value = format!("b-{worker}-{i}-{nonce}");
                let result = bounded(client.clone().put(put_request(&key, &value))).await;
                let mut writes = phase2.lock().expect("writes lock");
                match result {
                    Ok(_) => {
                        writes.acknowledged.insert(key, value);
                        answered.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {
                        writes.unknown.insert(key, value);
                        return;
                    }
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.load(Ordering::SeqCst) < 200 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    cluster.kill_all();
    runtime.block_on(async {
        for worker in workers {
            tokio::time::timeout(CALL_TIMEOUT * 2, worker)
                .await
                .expect("a writer stops once the members are gone")
                .expect("a writer does not panic");
        }
    });
    let writes = std::mem::take(&mut *phase2.lock().expect("writes lock"));
    println!(
        "{test}: phase 2: killed every member with {} puts acknowledged, {} in flight",
        writes.acknowledged.len(),
        writes.unknown.len()
    );
    // The check kills nothing more (all are down) and starts them all again.
    kill_all_and_check(
        &mut cluster,
        &members_before,
        "dur/b/",
        &writes,
        base_revision,
        &format!("{test} (phase 2)"),
    );
}

#[test]
fn skiff_acknowledged_writes_survive_kill_9_of_every_member() {
    acknowledged_writes_survive_kill_9(
        Kind::Skiff,
        "skiff_acknowledged_writes_survive_kill_9_of_every_member",
    );
}

#[test]
fn etcd_acknowledged_writes_survive_kill_9_of_every_member() {
    acknowledged_writes_survive_kill_9(
        Kind::Etcd,
        "etcd_acknowledged_writes_survive_kill_9_of_every_member",
    );
}

//! A member that was down while the others compacted their logs comes back and catches up
//! through a streamed snapshot — real `skiff serve` processes, `--snapshot-count` small so
//! compaction happens many times while it is away.

mod support;

use std::time::{Duration, Instant};

use skiff_etcd_proto::etcdserverpb::kv_client::KvClient;
use skiff_etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_etcd_proto::etcdserverpb::{HashKvRequest, PutRequest, RangeRequest, StatusRequest};
use support::{Cluster, Kind, Options};
use tonic::transport::{Channel, Endpoint};

const KEYS: usize = 600;
const VALUE_BYTES: usize = 4096;

fn channel(cluster: &Cluster, member: usize) -> Channel {
    Endpoint::from_shared(cluster.client_url(member).to_string())
        .expect("a valid URL")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy()
}

#[test]
fn a_member_back_after_compaction_catches_up_by_snapshot() {
    let test = "a_member_back_after_compaction_catches_up_by_snapshot";
    if !support::prerequisites(test, Kind::Skiff) {
        return;
    }
    let options = Options {
        extra_args: vec![
            "--snapshot-count".into(),
            "100".into(),
            "--snapshot-catchup-entries".into(),
            "50".into(),
        ],
        ..Options::default()
    };
    let mut cluster = Cluster::start(Kind::Skiff, 3, options);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let away = (leader + 1) % 3;
    cluster.kill(away);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let value = "v".repeat(VALUE_BYTES);
    runtime.block_on(async {
        let mut kv = KvClient::new(channel(&cluster, leader));
        for i in 0..KEYS {
            kv.put(PutRequest {
                key: format!("key{i:04}").into_bytes().into(),
                value: format!("{i}:{value}").into_bytes().into(),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|status| panic!("put {i}: {status}"));
        }
    });
    // 600 entries with --snapshot-count 100: the others compacted their logs well past where
    // the absent member stopped, so only a snapshot can bring it back.
    let started = Instant::now();
    cluster.restart(away);
    let (leader_hash, leader_revision) = runtime.block_on(async {
        let mut maintenance = MaintenanceClient::new(channel(&cluster, leader));
        let hash = maintenance
            .hash_kv(HashKvRequest { revision: 0 })
            .await
            .expect("hash on the leader")
            .into_inner();
        (hash.hash, hash.header.expect("header").revision)
    });
    assert_eq!(leader_revision, 1 + KEYS as i64);
    let deadline = Instant::now() + Duration::from_secs(30);
    runtime.block_on(async {
        let mut maintenance = MaintenanceClient::new(channel(&cluster, away));
        loop {
            let status = maintenance.status(StatusRequest {}).await;
            let caught_up = match &status {
                Ok(status) => {
                    let status = status.get_ref();
                    status.header.as_ref().map_or(0, |header| header.revision) >= leader_revision
                }
                Err(_) => false,
            };
            if caught_up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "m{away} did not catch up in 30 s: {status:?}\n{}",
                cluster.log_tail(away, 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let hash = maintenance
            .hash_kv(HashKvRequest {
                revision: leader_revision,
            })
            .await
            .expect("hash on the returning member")
            .into_inner();
        assert_eq!(
            hash.hash, leader_hash,
            "the returning member's key space differs"
        );
        // Its own data, read locally (serializable): the first and the last key.
        let mut kv = KvClient::new(channel(&cluster, away));
        for i in [0, KEYS - 1] {
            let answer = kv
                .range(RangeRequest {
                    key: format!("key{i:04}").into_bytes().into(),
                    serializable: true,
                    ..Default::default()
                })
                .await
                .expect("local read")
                .into_inner();
            let stored = String::from_utf8_lossy(&answer.kvs[0].value).into_owned();
            assert!(
                stored.starts_with(&format!("{i}:")),
                "key{i:04} holds {stored:.20}"
            );
        }
    });
    println!(
        "{test}: m{away} caught up with {KEYS} puts of {VALUE_BYTES} B in {:?}",
        started.elapsed()
    );
    // The snapshot, not the log, brought it back.
    let log = cluster.log_tail(away, 100_000);
    assert!(
        log.contains("snapshot received"),
        "m{away} caught up without receiving a snapshot:\n{}",
        cluster.log_tail(away, 30)
    );
}

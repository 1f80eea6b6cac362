//! Runs `skiff bench` workloads in-process against Debian's etcd 3.4 on loopback.
//!
//! Needs `etcd` on PATH. Without it the test fails under `CI=true` and otherwise prints
//! `SKIPPED: etcd not found` and passes.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skiff_cli::bench::{
    self, BenchConfig, ConnectionConfig, Consistency, LeaseKeepaliveConfig, PutConfig, RangeConfig,
    TxnPutConfig, WatchLatencyConfig, Workload,
};
use skiff_etcd_proto::etcdserverpb::{kv_client::KvClient, RangeRequest};

fn find_on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|directory| directory.join(program))
            .find(|candidate| candidate.is_file())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// A single-member etcd in its own temporary directory; killed and removed on drop.
struct Etcd {
    child: Child,
    directory: PathBuf,
    client_address: String,
}

impl Etcd {
    fn start(program: &Path) -> Etcd {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let directory =
            std::env::temp_dir().join(format!("skiff-bench-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&directory).expect("create the data directory");
        let client_url = format!("http://127.0.0.1:{}", free_port());
        let peer_url = format!("http://127.0.0.1:{}", free_port());
        let log = std::fs::File::create(directory.join("etcd.log")).expect("create the log");
        let child = Command::new(program)
            .args(["--name", "bench-test", "--data-dir"])
            .arg(directory.join("data"))
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .arg("--initial-cluster")
            .arg(format!("bench-test={peer_url}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        Etcd {
            child,
            directory,
            client_address: client_url.trim_start_matches("http://").to_string(),
        }
    }

    /// Waits until a linearizable read succeeds, i.e. the member has elected itself.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut client) =
                KvClient::connect(format!("http://{}", self.client_address)).await
            {
                let probe = RangeRequest {
                    key: "health".into(),
                    ..RangeRequest::default()
                };
                if client.range(probe).await.is_ok() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become ready; see {}",
                self.directory.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

fn config(address: &str, workload: Workload) -> BenchConfig {
    BenchConfig {
        connection: ConnectionConfig {
            endpoints: vec![address.to_string()],
            conns: 2,
            clients: 4,
            target_leader: true,
            dial_timeout: Duration::from_secs(2),
        },
        workload,
        show_progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_and_range_against_etcd() {
    let Some(program) = find_on_path("etcd") else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "etcd not found on PATH under CI=true"
        );
        println!("SKIPPED: etcd not found");
        return;
    };
    let etcd = Etcd::start(&program);
    tokio::time::timeout(Duration::from_secs(50), async {
        etcd.wait_ready().await;

        let put = config(
            &etcd.client_address,
            Workload::Put(PutConfig {
                total: 300,
                key_space_size: 10,
                sequential_keys: true,
                value_size: 64,
                ..PutConfig::default()
            }),
        );
        let report = bench::run(&put).await.expect("put benchmark runs");
        assert_eq!(report.stats.failed(), 0, "{:?}", report.stats.errors);
        assert_eq!(report.stats.succeeded(), 300);
        assert_eq!(
            report.endpoints,
            vec![format!("http://{}", etcd.client_address)]
        );
        assert!(report.text().contains("Requests/sec:"));

        // The sequential keys 0..10 are all there, each written 30 times.
        let mut client = KvClient::connect(format!("http://{}", etcd.client_address))
            .await
            .expect("connect");
        let all_keys = client
            .range(RangeRequest {
                key: vec![0u8].into(),
                range_end: vec![0u8].into(),
                ..RangeRequest::default()
            })
            .await
            .expect("range all keys")
            .into_inner();
        assert_eq!(all_keys.count, 10);
        assert!(all_keys
            .kvs
            .iter()
            .all(|kv| kv.version == 30 && kv.value.len() == 64 && kv.key.len() == 8));

        for consistency in [Consistency::Linearizable, Consistency::Serializable] {
            let range = config(
                &etcd.client_address,
                Workload::Range(RangeConfig {
                    key: vec![0u8],
                    range_end: Some(vec![0xff]),
                    consistency,
                    total: 200,
                    rate: 0,
                }),
            );
            let report = bench::run(&range).await.expect("range benchmark runs");
            assert_eq!(report.stats.failed(), 0, "{:?}", report.stats.errors);
            assert_eq!(report.stats.succeeded(), 200);
        }

        // The other workloads, briefly: every request must succeed.
        let others = [
            (
                Workload::TxnPut(TxnPutConfig {
                    total: 100,
                    txn_ops: 3,
                    key_space_size: 50,
                    ..TxnPutConfig::default()
                }),
                100,
            ),
            (
                Workload::LeaseKeepalive(LeaseKeepaliveConfig { total: 100 }),
                100,
            ),
            // Each of the 4 clients sees each of the 20 puts.
            (
                Workload::WatchLatency(WatchLatencyConfig {
                    total: 20,
                    put_rate: 200,
                    ..WatchLatencyConfig::default()
                }),
                80,
            ),
        ];
        for (workload, expected) in others {
            let name = workload.name();
            let report = bench::run(&config(&etcd.client_address, workload))
                .await
                .unwrap_or_else(|error| panic!("{name} runs: {error}"));
            assert_eq!(
                report.stats.failed(),
                0,
                "{name}: {:?}",
                report.stats.errors
            );
            assert_eq!(report.stats.succeeded(), expected, "{name}");
        }
    })
    .await
    .expect("the benchmarks finish within 50 seconds");
    drop(etcd);
}

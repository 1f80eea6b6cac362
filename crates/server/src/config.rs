//! What a member is started with: etcd's flags, parsed (the `skiff` binary fills this in).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `--initial-cluster-state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrap a new cluster with `initial_cluster` as its voters.
    New,
    /// Join a running cluster (the member was added with MemberAdd).
    Existing,
}

/// One entry of `--initial-cluster` (`name=peer-url[,name=peer-url...]`; a name may repeat
/// to give a member several peer URLs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitialMember {
    /// The member's `--name`.
    pub name: String,
    /// Its peer URLs, as written (e.g. `http://127.0.0.1:2380`).
    pub peer_urls: Vec<String>,
}

/// A member's configuration, with etcd's meanings and defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// `--name` (default `default`).
    pub name: String,
    /// `--data-dir` (default `<name>.skiff`).
    pub data_dir: PathBuf,
    /// `--listen-client-urls`, resolved to socket addresses.
    pub listen_client: Vec<SocketAddr>,
    /// `--advertise-client-urls`, as written.
    pub advertise_client_urls: Vec<String>,
    /// `--listen-peer-urls`, resolved to socket addresses.
    pub listen_peer: Vec<SocketAddr>,
    /// `--initial-advertise-peer-urls`, as written.
    pub initial_advertise_peer_urls: Vec<String>,
    /// `--initial-cluster`.
    pub initial_cluster: Vec<InitialMember>,
    /// `--initial-cluster-state`.
    pub initial_cluster_state: ClusterState,
    /// `--initial-cluster-token` (default `etcd-cluster`).
    pub initial_cluster_token: String,
    /// `--heartbeat-interval` (default 100 ms): the Raft tick.
    pub heartbeat_interval: Duration,
    /// `--election-timeout` (default 1000 ms).
    pub election_timeout: Duration,
    /// `--snapshot-count` (default 100,000 applied entries between snapshots).
    pub snapshot_count: u64,
    /// `--snapshot-catchup-entries` (default 5,000): entries kept in the log after a
    /// snapshot, so followers slightly behind catch up from the log.
    pub snapshot_catchup_entries: u64,
    /// `--max-request-bytes` (default 1.5 MiB).
    pub max_request_bytes: usize,
    /// `--max-txn-ops` (default 128).
    pub max_txn_ops: usize,
    /// `--listen-metrics-urls`, resolved to socket addresses (default none): extra plain-HTTP
    /// listeners serving only `/metrics` and `/health` (`http::metrics_routes`).
    pub listen_metrics: Vec<SocketAddr>,
    /// `--max-client-connections` (Skiff's own, default 10,000): client connections served at
    /// once per client listener; beyond it new connections are closed at once.
    pub max_client_connections: usize,
}

impl ServerConfig {
    /// etcd's defaults for a member called `name`: a one-member cluster on
    /// 127.0.0.1:2379 (clients) and 127.0.0.1:2380 (peers).
    pub fn with_defaults(name: &str) -> ServerConfig {
        let client = "http://localhost:2379".to_string();
        let peer = "http://localhost:2380".to_string();
        ServerConfig {
            name: name.to_string(),
            data_dir: PathBuf::from(format!("{name}.skiff")),
            listen_client: vec![SocketAddr::from(([127, 0, 0, 1], 2379))],
            advertise_client_urls: vec![client],
            listen_peer: vec![SocketAddr::from(([127, 0, 0, 1], 2380))],
            initial_advertise_peer_urls: vec![peer.clone()],
            initial_cluster: vec![InitialMember {
                name: name.to_string(),
                peer_urls: vec![peer],
            }],
            initial_cluster_state: ClusterState::New,
            initial_cluster_token: "etcd-cluster".to_string(),
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100_000,
            snapshot_catchup_entries: 5_000,
            max_request_bytes: 1536 * 1024,
            max_txn_ops: 128,
            listen_metrics: Vec::new(),
            max_client_connections: 10_000,
        }
    }
}

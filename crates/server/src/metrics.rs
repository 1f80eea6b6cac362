//! A member's Prometheus metrics, under etcd's names where the meaning is the same.
//!
//! [`Metrics`] is a bag of atomics: share it as `Arc<Metrics>`, update it from any thread without
//! locks (per-peer counters are looked up once through [`Metrics::peer`] and then cached by the
//! caller), and serve [`Metrics::render`] on `/metrics`.
//!
//! Types follow etcd 3.4, including its quirks: `etcd_server_proposals_committed_total` and
//! `etcd_server_proposals_applied_total` are gauges there (they are set to the commit and apply
//! indexes), so they are gauges here too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The server version `etcd_server_version` and `/version` report (the etcd release whose API
/// and behaviour Skiff reproduces).
pub const ETCD_SERVER_VERSION: &str = "3.4.23";

/// The cluster version `/version` reports (etcd reports `major.minor.0`).
pub const ETCD_CLUSTER_VERSION: &str = "3.4.0";

/// Upper bounds of etcd's disk latency histograms: 0.001 s · 2^n for n = 0..13
/// (`prometheus.ExponentialBuckets(0.001, 2, 14)`).
pub const DISK_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096,
    8.192,
];

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (never negative here).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// Sets the value to 1 for `true`, 0 for `false`.
    pub fn set_bool(&self, value: bool) {
        self.set(u64::from(value));
    }

    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one, stopping at zero.
    pub fn dec(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1))
            });
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A latency histogram with [`DISK_BUCKETS`] as its bucket bounds (in seconds).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket, not cumulative; the last slot is above the largest bound.
    buckets: [AtomicU64; DISK_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let slot = DISK_BUCKETS
            .iter()
            .position(|&bound| seconds <= bound)
            .unwrap_or(DISK_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        header(out, name, help, "histogram");
        let mut cumulative = 0;
        for (bound, bucket) in DISK_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.buckets[DISK_BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}");
        // Readers may see the buckets and the count a moment apart; report the bucket total so
        // that `+Inf` and `_count` always agree.
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// Bytes exchanged with one peer (cache the `Arc` from [`Metrics::peer`]).
#[derive(Debug, Default)]
pub struct PeerTraffic {
    /// `etcd_network_peer_sent_bytes_total{To="<peer id>"}`.
    pub sent_bytes: Counter,
    /// `etcd_network_peer_received_bytes_total{From="<peer id>"}`.
    pub received_bytes: Counter,
}

/// Everything `/metrics` shows. Fields are public: the node runtime, the WAL writer and the
/// transport update them directly.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `etcd_server_has_leader`: 1 while this member knows a leader.
    pub has_leader: Gauge,
    /// `etcd_server_is_leader`: 1 while this member is the leader.
    pub is_leader: Gauge,
    /// `etcd_server_leader_changes_seen_total`.
    pub leader_changes_seen: Counter,
    /// `etcd_server_proposals_committed_total` (a gauge in etcd: the commit index).
    pub proposals_committed: Gauge,
    /// `etcd_server_proposals_applied_total` (a gauge in etcd: the applied index).
    pub proposals_applied: Gauge,
    /// `etcd_server_proposals_pending`.
    pub proposals_pending: Gauge,
    /// `etcd_server_proposals_failed_total`.
    pub proposals_failed: Counter,
    /// `etcd_server_health_success`: `/health` answers that said healthy.
    pub health_success: Counter,
    /// `etcd_server_health_failures`: `/health` answers that said unhealthy.
    pub health_failures: Counter,
    /// `etcd_disk_wal_fsync_duration_seconds`: one observation per log fsync.
    pub wal_fsync_duration: Histogram,
    /// `etcd_disk_backend_commit_duration_seconds`: one observation per batch applied to the
    /// key-value state (Skiff has no separate backend commit; leave it empty if there is nothing
    /// that corresponds).
    pub backend_commit_duration: Histogram,
    /// `etcd_mvcc_db_total_size_in_bytes`: size of the key-value state on disk.
    pub db_total_size_bytes: Gauge,
    /// `skiff_raft_term`: the member's current Raft term.
    pub raft_term: Gauge,
    /// `skiff_value_log_bytes`: bytes in the store's value log file (an unlinked scratch
    /// file, which `du` does not see).
    pub value_log_bytes: Gauge,
    /// `skiff_value_log_live_bytes`: bytes of that file that stored versions still use.
    pub value_log_live_bytes: Gauge,
    peers: RwLock<BTreeMap<u64, Arc<PeerTraffic>>>,
}

impl Metrics {
    /// All metrics at zero.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// The traffic counters for peer `id` (created on first use). Look it up once per
    /// connection and keep the `Arc`; updating it takes no lock.
    pub fn peer(&self, id: u64) -> Arc<PeerTraffic> {
        if let Some(found) = self
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
        {
            return Arc::clone(found);
        }
        let mut peers = self.peers.write().unwrap_or_else(|e| e.into_inner());
        Arc::clone(peers.entry(id).or_default())
    }

    /// Records a leader observation: sets the leader gauges and counts a change when `leader`
    /// differs from the previously recorded one (0 means no leader). Call it on every Raft
    /// state change.
    pub fn observe_leader(&self, leader: u64, is_self: bool, previous: u64) {
        self.has_leader.set_bool(leader != 0);
        self.is_leader.set_bool(leader != 0 && is_self);
        if leader != 0 && leader != previous {
            self.leader_changes_seen.inc();
        }
    }

    /// The whole registry in Prometheus' text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        gauge(
            &mut out,
            "etcd_server_has_leader",
            "Whether or not a leader exists. 1 is existence, 0 is not.",
            self.has_leader.get(),
        );
        gauge(
            &mut out,
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            self.is_leader.get(),
        );
        counter(
            &mut out,
            "etcd_server_leader_changes_seen_total",
            "The number of leader changes seen.",
            self.leader_changes_seen.get(),
        );
        gauge(
            &mut out,
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            self.proposals_committed.get(),
        );
        gauge(
            &mut out,
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            self.proposals_applied.get(),
        );
        gauge(
            &mut out,
            "etcd_server_proposals_pending",
            "The current number of pending proposals to commit.",
            self.proposals_pending.get(),
        );
        counter(
            &mut out,
            "etcd_server_proposals_failed_total",
            "The total number of failed proposals seen.",
            self.proposals_failed.get(),
        );
        counter(
            &mut out,
            "etcd_server_health_success",
            "The total number of successful health checks",
            self.health_success.get(),
        );
        counter(
            &mut out,
            "etcd_server_health_failures",
            "The total number of failed health checks",
            self.health_failures.get(),
        );
        header(
            &mut out,
            "etcd_server_version",
            "Which version is running. 1 for 'server_version' label with current version.",
            "gauge",
        );
        let _ = writeln!(
            out,
            "etcd_server_version{{server_version=\"{ETCD_SERVER_VERSION}\"}} 1"
        );
        self.wal_fsync_duration.render(
            &mut out,
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
        );
        self.backend_commit_duration.render(
            &mut out,
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
        );
        gauge(
            &mut out,
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            self.db_total_size_bytes.get(),
        );
        {
            let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
            header(
                &mut out,
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                "counter",
            );
            for (id, traffic) in peers.iter() {
                let _ = writeln!(
                    out,
                    "etcd_network_peer_sent_bytes_total{{To=\"{id:x}\"}} {}",
                    traffic.sent_bytes.get()
                );
            }
            header(
                &mut out,
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                "counter",
            );
            for (id, traffic) in peers.iter() {
                let _ = writeln!(
                    out,
                    "etcd_network_peer_received_bytes_total{{From=\"{id:x}\"}} {}",
                    traffic.received_bytes.get()
                );
            }
        }
        gauge(
            &mut out,
            "skiff_raft_term",
            "The member's current Raft term.",
            self.raft_term.get(),
        );
        gauge(
            &mut out,
            "skiff_value_log_bytes",
            "Bytes in the key-value store's value log file (unlinked scratch space).",
            self.value_log_bytes.get(),
        );
        gauge(
            &mut out,
            "skiff_value_log_live_bytes",
            "Bytes of the value log that stored versions still use.",
            self.value_log_live_bytes.get(),
        );
        if let Some(rss) = resident_memory_bytes() {
            gauge(
                &mut out,
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss,
            );
        }
        if let Some(fds) = open_fds() {
            gauge(
                &mut out,
                "process_open_fds",
                "Number of open file descriptors.",
                fds,
            );
        }
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name} {value}");
}

/// Resident set size from `/proc/self/status` (`VmRSS`, the same figure as the second field
/// of `/proc/self/statm` but already in kB, so no page-size lookup is needed). `None` off Linux.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Number of entries in `/proc/self/fd`. `None` off Linux.
fn open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?;
    Some(entries.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// One parsed sample line: metric name, labels, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// A strict-enough parser for the text format: every sample must belong to a family that
    /// was declared with HELP and TYPE before it, every value must be a number.
    fn parse(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
        let mut types = HashMap::new();
        let mut helps = HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP without text");
                assert!(!help.is_empty());
                assert!(
                    helps.insert(name.to_string(), ()).is_none(),
                    "HELP twice: {name}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE without kind");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "bad type {kind}"
                );
                assert!(helps.contains_key(name), "TYPE before HELP for {name}");
                assert!(
                    types.insert(name.to_string(), kind.to_string()).is_none(),
                    "TYPE twice: {name}"
                );
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let (series, value) = line.rsplit_once(' ').expect("sample without value");
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), Vec::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("unclosed labels");
                    let labels = body
                        .split(',')
                        .map(|pair| {
                            let (k, v) = pair.split_once('=').expect("label without =");
                            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"'));
                            (k.to_string(), v.expect("unquoted label").to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(&name)
                .to_string();
            assert!(types.contains_key(&family), "sample before TYPE: {name}");
            samples.push((name, labels, value));
        }
        (types, samples)
    }

    fn value(samples: &[Sample], name: &str) -> f64 {
        samples
            .iter()
            .find(|(n, labels, _)| n == name && labels.is_empty())
            .unwrap_or_else(|| panic!("no sample {name}"))
            .2
    }

    #[test]
    fn fresh_registry_renders_every_family() {
        let (types, samples) = parse(&Metrics::new().render());
        for (name, kind) in [
            ("etcd_server_has_leader", "gauge"),
            ("etcd_server_is_leader", "gauge"),
            ("etcd_server_leader_changes_seen_total", "counter"),
            ("etcd_server_proposals_committed_total", "gauge"),
            ("etcd_server_proposals_applied_total", "gauge"),
            ("etcd_server_proposals_pending", "gauge"),
            ("etcd_server_proposals_failed_total", "counter"),
            ("etcd_disk_wal_fsync_duration_seconds", "histogram"),
            ("etcd_disk_backend_commit_duration_seconds", "histogram"),
            ("etcd_network_peer_sent_bytes_total", "counter"),
            ("etcd_network_peer_received_bytes_total", "counter"),
            ("etcd_mvcc_db_total_size_in_bytes", "gauge"),
            ("etcd_server_version", "gauge"),
            ("skiff_value_log_bytes", "gauge"),
            ("skiff_value_log_live_bytes", "gauge"),
        ] {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{name}");
        }
        assert_eq!(value(&samples, "etcd_server_has_leader"), 0.0);
        if cfg!(target_os = "linux") {
            assert!(value(&samples, "process_resident_memory_bytes") > 0.0);
            assert!(value(&samples, "process_open_fds") > 0.0);
        }
    }

    #[test]
    fn values_and_histogram_buckets() {
        let metrics = Metrics::new();
        metrics.observe_leader(7, true, 0);
        metrics.observe_leader(7, true, 7);
        metrics.observe_leader(9, false, 7);
        metrics.proposals_committed.set(42);
        metrics.proposals_pending.inc();
        metrics.proposals_pending.inc();
        metrics.proposals_pending.dec();
        metrics.proposals_failed.add(3);
        for micros in [500, 1_000, 1_500, 3_000, 20_000_000] {
            metrics
                .wal_fsync_duration
                .observe(Duration::from_micros(micros));
        }
        metrics.peer(0x8e9e05c52164694d).sent_bytes.add(100);
        metrics.peer(0x8e9e05c52164694d).received_bytes.add(5);
        metrics.peer(2).sent_bytes.add(1);

        let (_, samples) = parse(&metrics.render());
        assert_eq!(value(&samples, "etcd_server_has_leader"), 1.0);
        assert_eq!(value(&samples, "etcd_server_is_leader"), 0.0);
        assert_eq!(
            value(&samples, "etcd_server_leader_changes_seen_total"),
            2.0
        );
        assert_eq!(
            value(&samples, "etcd_server_proposals_committed_total"),
            42.0
        );
        assert_eq!(value(&samples, "etcd_server_proposals_pending"), 1.0);
        assert_eq!(value(&samples, "etcd_server_proposals_failed_total"), 3.0);

        let name = "etcd_disk_wal_fsync_duration_seconds";
        let buckets: Vec<(String, f64)> = samples
            .iter()
            .filter(|(n, _, _)| n == &format!("{name}_bucket"))
            .map(|(_, labels, v)| {
                assert_eq!(labels.len(), 1);
                assert_eq!(labels[0].0, "le");
                (labels[0].1.clone(), *v)
            })
            .collect();
        let bounds: Vec<&str> = buckets.iter().map(|(le, _)| le.as_str()).collect();
        assert_eq!(
            bounds,
            [
                "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256",
                "0.512", "1.024", "2.048", "4.096", "8.192", "+Inf"
            ]
        );
        // 0.5 ms and 1 ms fall in le=0.001 (bounds are inclusive), 1.5 ms in 0.002, 3 ms in
        // 0.004, 20 s only in +Inf.
        let counts: Vec<f64> = buckets.iter().map(|(_, v)| *v).collect();
        assert_eq!(&counts[..4], &[2.0, 3.0, 4.0, 4.0]);
        assert!(counts.windows(2).all(|w| w[0] <= w[1]), "not cumulative");
        assert_eq!(counts[13], 4.0);
        assert_eq!(counts[14], 5.0);
        assert_eq!(value(&samples, &format!("{name}_count")), 5.0);
        let sum = value(&samples, &format!("{name}_sum"));
        assert!((sum - 20.006).abs() < 1e-9, "sum {sum}");

        let peer_sample = |metric: &str, label: &str, peer: &str| {
            samples
                .iter()
                .find(|(n, labels, _)| {
                    n == metric && labels == &[(label.to_string(), peer.to_string())]
                })
                .map(|s| s.2)
        };
        assert_eq!(
            peer_sample(
                "etcd_network_peer_sent_bytes_total",
                "To",
                "8e9e05c52164694d"
            ),
            Some(100.0)
        );
        assert_eq!(
            peer_sample(
                "etcd_network_peer_received_bytes_total",
                "From",
                "8e9e05c52164694d"
            ),
            Some(5.0)
        );
        assert_eq!(
            peer_sample("etcd_network_peer_sent_bytes_total", "To", "2"),
            Some(1.0)
        );
    }

    #[test]
    fn gauge_dec_stops_at_zero() {
        let gauge = Gauge::default();
        gauge.dec();
        assert_eq!(gauge.get(), 0);
    }
}

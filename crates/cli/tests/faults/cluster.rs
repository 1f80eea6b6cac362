//! A cluster of real member processes (etcd or Skiff) and the faults the test injects into it.
//!
//! [`Cluster::start`] lays out the network (one namespace per member, see [`super::net`], or
//! plain loopback ports when namespaces are unavailable), starts every member with etcd's flags,
//! and offers the faults: [`Cluster::kill`] / [`Cluster::restart`] (SIGKILL, then the same
//! command line on the same data directory), [`Cluster::pause`] / [`Cluster::resume`]
//! (SIGSTOP / SIGCONT), [`Cluster::partition`] and [`Cluster::set_link`]. Dropping the cluster
//! kills every process and removes the network and the data directories, also on panic.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::future::join_all;
use skiff_etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_etcd_proto::etcdserverpb::{HashKvRequest, StatusRequest};
use tonic::transport::{Channel, Endpoint};

use super::net::Netns;

/// Which server the members run.
#[derive(Clone, Debug)]
pub enum Kind {
    /// etcd at this path.
    Etcd(PathBuf),
    /// The `skiff` binary at this path, run as `skiff serve`.
    Skiff(PathBuf),
}

impl Kind {
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Etcd(_) => "etcd",
            Kind::Skiff(_) => "skiff",
        }
    }

    fn program_and_leading_args(&self) -> (&Path, &'static [&'static str]) {
        match self {
            Kind::Etcd(path) => (path, &[]),
            Kind::Skiff(path) => (path, &["serve"]),
        }
    }
}

/// Raft timings passed to every member, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    pub heartbeat_ms: u64,
    pub election_ms: u64,
}

/// Where a member listens.
#[derive(Clone, Debug)]
struct Addresses {
    /// `None` on loopback.
    namespace: Option<String>,
    client_url: String,
    peer_url: String,
}

struct Member {
    name: String,
    addresses: Addresses,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// What a member's Status call reported.
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    pub member_id: u64,
    pub leader: u64,
    pub term: u64,
}

pub struct Cluster {
    kind: Kind,
    timings: Timings,
    directory: PathBuf,
    members: Vec<Member>,
    initial_cluster: String,
    netns: Option<Netns>,
    /// Member ids learned from Status, by index.
    ids: BTreeMap<u64, usize>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

impl Cluster {
    /// Starts `size` members. With `namespaces` set each member gets its own network namespace
    /// (partition faults possible); otherwise they share loopback on ephemeral ports.
    pub fn start(
        kind: Kind,
        size: usize,
        timings: Timings,
        namespaces: bool,
    ) -> Result<Cluster, String> {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let counter = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let directory = std::env::temp_dir().join(format!(
            "skiff-faults-{}-{}-{counter}",
            kind.name(),
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&directory);
        std::fs::create_dir_all(&directory).map_err(|error| error.to_string())?;
        let netns = if namespaces {
            Some(Netns::create(size)?)
        } else {
            None
        };
        let addresses: Vec<Addresses> = (0..size)
            .map(|index| match &netns {
                Some(netns) => Addresses {
                    namespace: Some(netns.namespace(index)),
                    client_url: format!("http://{}:2379", netns.client_ip(index)),
                    peer_url: format!("http://{}:2380", netns.peer_ip(index)),
                },
                None => Addresses {
                    namespace: None,
                    client_url: format!("http://127.0.0.1:{}", free_port()),
                    peer_url: format!("http://127.0.0.1:{}", free_port()),
                },
            })
            .collect();
        let initial_cluster = addresses
            .iter()
            .enumerate()
            .map(|(index, address)| format!("m{index}={}", address.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let members = addresses
            .into_iter()
            .enumerate()
            .map(|(index, addresses)| Member {
                name: format!("m{index}"),
                addresses,
                data_dir: directory.join(format!("m{index}.data")),
                log: directory.join(format!("m{index}.log")),
                child: None,
                paused: false,
            })
            .collect();
        let mut cluster = Cluster {
            kind,
            timings,
            directory,
            members,
            initial_cluster,
            netns,
            ids: BTreeMap::new(),
        };
        for index in 0..size {
            cluster.spawn(index)?;
        }
        Ok(cluster)
    }

    pub fn size(&self) -> usize {
        self.members.len()
    }

    pub fn has_network_faults(&self) -> bool {
        self.netns.is_some()
    }

    pub fn describe_network(&self) -> String {
        match &self.netns {
            Some(netns) => netns.describe(),
            None => "loopback (no partition faults)".to_string(),
        }
    }

    /// The client URL of every member, by index.
    pub fn client_urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| member.addresses.client_url.clone())
            .collect()
    }

    /// The full command line of member `index` (the same on every restart).
    fn command(&self, index: usize) -> Command {
        let member = &self.members[index];
        let (program, leading) = self.kind.program_and_leading_args();
        let mut command = match &member.addresses.namespace {
            Some(ns) => {
                // `ip netns exec` execs the program, so the child's pid is the member's pid.
                let mut command = Command::new("ip");
                command.args(["netns", "exec", ns]).arg(program);
                command
            }
            None => Command::new(program),
        };
        let client = &member.addresses.client_url;
        let peer = &member.addresses.peer_url;
        command
            .args(leading)
            .args(["--name", &member.name, "--data-dir"])
            .arg(&member.data_dir)
            .args(["--listen-client-urls", client])
            .args(["--advertise-client-urls", client])
            .args(["--listen-peer-urls", peer])
            .args(["--initial-advertise-peer-urls", peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "skiff-faults"])
            .args([
                "--heartbeat-interval",
                &self.timings.heartbeat_ms.to_string(),
            ])
            .args(["--election-timeout", &self.timings.election_ms.to_string()]);
        command
    }

    fn spawn(&mut self, index: usize) -> Result<(), String> {
        let mut command = self.command(index);
        let member = &mut self.members[index];
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&member.log)
            .map_err(|error| error.to_string())?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|error| error.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|error| format!("start member {index}: {error}"))?;
        member.child = Some(child);
        member.paused = false;
        Ok(())
    }

    fn pid(&self, index: usize) -> Option<i32> {
        self.members[index]
            .child
            .as_ref()
            .map(|child| child.id() as i32)
    }

    pub fn is_running(&self, index: usize) -> bool {
        self.members[index].child.is_some()
    }

    /// Whether the member process has exited by itself (a crash), with its status.
    pub fn exited(&mut self, index: usize) -> Option<String> {
        let child = self.members[index].child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[index].paused = false;
    }

    /// Starts a killed member again with the same command line and data directory.
    pub fn restart(&mut self, index: usize) -> Result<(), String> {
        assert!(!self.is_running(index), "member {index} is still running");
        self.spawn(index)
    }

    /// SIGSTOP.
    pub fn pause(&mut self, index: usize) {
        if let Some(pid) = self.pid(index) {
            // SAFETY: kill(2) on a child we own; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            self.members[index].paused = true;
        }
    }

    /// SIGCONT.
    pub fn resume(&mut self, index: usize) {
        if let Some(pid) = self.pid(index) {
            // SAFETY: as in `pause`.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        self.members[index].paused = false;
    }

    /// Separates the members in `cut` from the others (needs namespaces).
    pub fn partition(&self, cut: &[usize]) -> Result<(), String> {
        self.netns
            .as_ref()
            .ok_or("partitions need network namespaces")?
            .partition(cut)
    }

    /// Sets a member's peer link down or up (needs namespaces).
    pub fn set_link(&self, index: usize, up: bool) -> Result<(), String> {
        self.netns
            .as_ref()
            .ok_or("link faults need network namespaces")?
            .set_link(index, up)
    }

    /// Resumes paused members, restarts killed ones and heals the network.
    pub fn heal_all(&mut self) -> Result<(), String> {
        for index in 0..self.size() {
            if self.members[index].paused {
                self.resume(index);
            }
            if !self.is_running(index) {
                self.restart(index)?;
            }
        }
        match &self.netns {
            Some(netns) => netns.heal(),
            None => Ok(()),
        }
    }

    /// The index of the member that most recently (highest term) claims leadership and that
    /// leads in its own view, if any.
    pub async fn leader(&mut self, timeout: Duration) -> Option<usize> {
        let urls = self.client_urls();
        let seen = join_all(urls.iter().map(|url| status(url, timeout))).await;
        let mut best: Option<(u64, usize)> = None;
        for (index, seen) in seen.into_iter().enumerate() {
            let Some(seen) = seen else { continue };
            self.ids.insert(seen.member_id, index);
            if seen.leader == seen.member_id
                && self.is_running(index)
                && !self.members[index].paused
                && !matches!(best, Some((term, _)) if term >= seen.term)
            {
                best = Some((seen.term, index));
            }
        }
        best.map(|(_, index)| index)
    }

    /// Waits until every member answers Status and one member leads. Returns the leader.
    pub async fn wait_healthy(&mut self, within: Duration) -> Result<usize, String> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let urls = self.client_urls();
            let seen = join_all(
                urls.iter()
                    .map(|url| status(url, Duration::from_millis(500))),
            )
            .await;
            let all_up = seen.iter().all(Option::is_some);
            if all_up {
                if let Some(leader) = self.leader(Duration::from_millis(500)).await {
                    let term = seen.iter().flatten().map(|seen| seen.term).max();
                    let agree = seen.iter().flatten().all(|seen| {
                        Some(seen.term) == term && self.ids.get(&seen.leader) == Some(&leader)
                    });
                    if agree {
                        return Ok(leader);
                    }
                }
            }
            for index in 0..self.size() {
                if let Some(status) = self.exited(index) {
                    return Err(format!(
                        "member {index} exited ({status}); see {}",
                        self.members[index].log.display()
                    ));
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "the cluster did not become healthy within {within:?} (status: {seen:?}); logs in {}",
                    self.directory.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// HashKV at the member's current revision: `Ok(None)` if the kind does not implement it.
    pub async fn hash_kv(&self, index: usize) -> Result<Option<(i64, u32)>, String> {
        let channel = channel(
            &self.members[index].addresses.client_url,
            Duration::from_secs(2),
        )
        .connect()
        .await
        .map_err(|error| error.to_string())?;
        match MaintenanceClient::new(channel)
            .hash_kv(HashKvRequest { revision: 0 })
            .await
        {
            Ok(response) => {
                let response = response.into_inner();
                let revision = response.header.map_or(0, |header| header.revision);
                Ok(Some((revision, response.hash)))
            }
            Err(status) if status.code() == tonic::Code::Unimplemented => Ok(None),
            Err(status) => Err(status.to_string()),
        }
    }

    /// The last lines of member `index`'s log, for failure messages.
    pub fn log_tail(&self, index: usize) -> String {
        let text = std::fs::read_to_string(&self.members[index].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
        // The namespaces go (Netns::drop) once no process is left inside them.
        self.netns = None;
        if std::thread::panicking() {
            eprintln!(
                "cluster failed; member logs were in {} (removed)",
                self.directory.display()
            );
            for index in 0..self.members.len() {
                eprintln!("--- m{index} log tail ---\n{}", self.log_tail(index));
            }
        }
        let _ = std::fs::remove_dir_all(&self.directory);
    }
}

/// An endpoint with short connect and request timeouts.
pub fn channel(url: &str, timeout: Duration) -> Endpoint {
    Endpoint::from_shared(url.to_string())
        .expect("a valid URL")
        .connect_timeout(timeout)
        .timeout(timeout)
}

async fn status(url: &str, timeout: Duration) -> Option<Seen> {
    let channel: Channel = tokio::time::timeout(timeout, channel(url, timeout).connect())
        .await
        .ok()?
        .ok()?;
    let response = tokio::time::timeout(
        timeout,
        MaintenanceClient::new(channel).status(StatusRequest {}),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    let header = response.header.unwrap_or_default();
    Some(Seen {
        member_id: header.member_id,
        leader: response.leader,
        term: response.raft_term,
    })
}

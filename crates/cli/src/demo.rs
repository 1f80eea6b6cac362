//! `skiff demo`: a live three-member cluster on this machine, and a narrated failover.
//!
//! The members are real `skiff serve` processes (this same binary) on free loopback ports,
//! with their data in a temporary directory. The scenario writes keys, kills the leader with
//! SIGKILL, times the election of a new one, keeps writing, restarts the old leader and
//! watches it catch up. Then the cluster keeps serving until Ctrl-C, for etcdctl to play with.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use skiff_etcd_proto::etcdserverpb::cluster_client::ClusterClient;
use skiff_etcd_proto::etcdserverpb::kv_client::KvClient;
use skiff_etcd_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use skiff_etcd_proto::etcdserverpb::{
    MemberAddRequest, MemberPromoteRequest, PutRequest, RangeRequest, StatusRequest,
};
use tonic::transport::Channel;

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Members to start (3 or more, odd).
    pub members: usize,
    /// Stop after the scenario instead of serving until Ctrl-C (for tests and CI).
    pub exit_after_scenario: bool,
    /// Election timeout of the members, milliseconds.
    pub election_timeout_ms: u64,
    /// Heartbeat interval of the members, milliseconds.
    pub heartbeat_interval_ms: u64,
}

impl Default for DemoOptions {
    fn default() -> DemoOptions {
        DemoOptions {
            members: 3,
            exit_after_scenario: false,
            election_timeout_ms: 1000,
            heartbeat_interval_ms: 100,
        }
    }
}

struct Member {
    name: String,
    client_url: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// A member on loopback ports `(client, peer)` with its data and log in `dir`. An
    /// `initial_cluster` that names members already running means joining them
    /// (`--initial-cluster-state existing`).
    fn new(
        name: &str,
        (client, peer): (u16, u16),
        dir: &Path,
        initial_cluster: &str,
        options: &DemoOptions,
    ) -> Member {
        Member::with_state(name, (client, peer), dir, initial_cluster, "new", options)
    }

    fn with_state(
        name: &str,
        (client, peer): (u16, u16),
        dir: &Path,
        initial_cluster: &str,
        state: &str,
        options: &DemoOptions,
    ) -> Member {
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let args = [
            "serve",
            "--name",
            name,
            "--data-dir",
            &dir.join(format!("{name}.skiff")).display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            initial_cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            "skiff-demo",
            "--heartbeat-interval",
            &options.heartbeat_interval_ms.to_string(),
            "--election-timeout",
            &options.election_timeout_ms.to_string(),
        ]
        .map(str::to_string)
        .to_vec();
        Member {
            log: dir.join(format!("{name}.log")),
            name: name.to_string(),
            client_url,
            args,
            child: None,
        }
    }

    fn start(&mut self, binary: &Path) -> Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new(binary)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.name))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The running cluster; members are killed and the directory removed on drop.
struct DemoCluster {
    dir: PathBuf,
    binary: PathBuf,
    members: Vec<Member>,
}

impl Drop for DemoCluster {
    fn drop(&mut self) {
        for member in &mut self.members {
            member.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `count` distinct free loopback ports: all are bound before any is released, so none is
/// handed out twice.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    Ok(listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect::<std::io::Result<Vec<_>>>()?)
}

#[derive(Clone, Debug)]
struct Seen {
    member_id: u64,
    leader: u64,
    term: u64,
    applied: u64,
}

async fn status(url: &str) -> Option<Seen> {
    let channel = Channel::from_shared(url.to_string())
        .ok()?
        .connect_timeout(Duration::from_millis(300))
        .timeout(Duration::from_millis(500))
        .connect()
        .await
        .ok()?;
    let status = MaintenanceClient::new(channel)
        .status(StatusRequest {})
        .await
        .ok()?
        .into_inner();
    let header = status.header.unwrap_or_default();
    Some(Seen {
        member_id: header.member_id,
        leader: status.leader,
        term: status.raft_term,
        applied: status.raft_applied_index as u64,
    })
}

impl DemoCluster {
    fn start(options: &DemoOptions) -> Result<DemoCluster> {
        if options.members < 1 {
            bail!("--members must be at least 1");
        }
        let binary = std::env::current_exe().context("finding the skiff binary")?;
        let dir = std::env::temp_dir().join(format!(
            "skiff-demo-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_millis())
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ports: Vec<(u16, u16)> = free_ports(2 * options.members)?
            .chunks(2)
            .map(|pair| (pair[0], pair[1]))
            .collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{}=http://127.0.0.1:{peer}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, ports)| {
                Member::new(
                    &format!("m{}", i + 1),
                    *ports,
                    &dir,
                    &initial_cluster,
                    options,
                )
            })
            .collect();
        let mut cluster = DemoCluster {
            dir,
            binary,
            members,
        };
        for i in 0..cluster.members.len() {
            let binary = cluster.binary.clone();
            cluster.members[i].start(&binary)?;
        }
        Ok(cluster)
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|member| member.client_url.trim_start_matches("http://").to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until a running member reports a leader that is itself running; returns the
    /// leader's position in `members`.
    async fn wait_leader(&self, timeout: Duration) -> Result<(usize, Seen)> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut ids = Vec::new();
            for member in &self.members {
                let seen = match member.child {
                    Some(_) => status(&member.client_url).await,
                    None => None,
                };
                ids.push(seen);
            }
            for (i, seen) in ids.iter().enumerate() {
                if let Some(seen) = seen {
                    if seen.leader != 0 && seen.leader == seen.member_id {
                        return Ok((i, seen.clone()));
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no leader after {timeout:?}; member logs are in {}",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn kv(&self, member: usize) -> Result<KvClient<Channel>> {
        let channel = Channel::from_shared(self.members[member].client_url.clone())?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .connect()
            .await
            .with_context(|| format!("connecting to {}", self.members[member].name))?;
        Ok(KvClient::new(channel))
    }

    async fn put(&self, member: usize, key: &str, value: &str) -> Result<i64> {
        let response = self
            .kv(member)
            .await?
            .put(PutRequest {
                key: key.as_bytes().to_vec().into(),
                value: value.as_bytes().to_vec().into(),
                ..Default::default()
            })
            .await
            .map_err(|status| anyhow!("put {key}: {}", status.message()))?
            .into_inner();
        Ok(response.header.map_or(0, |header| header.revision))
    }

    async fn get_prefix(&self, member: usize, prefix: &str, serializable: bool) -> Result<usize> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("non-empty prefix") += 1;
        let response = self
            .kv(member)
            .await?
            .range(RangeRequest {
                key: prefix.as_bytes().to_vec().into(),
                range_end: end.into(),
                serializable,
                count_only: true,
                ..Default::default()
            })
            .await
            .map_err(|status| anyhow!("get {prefix}: {}", status.message()))?
            .into_inner();
        Ok(response.count as usize)
    }
}

fn say(line: &str) {
    println!("{line}");
}

/// Runs the demo; returns when the scenario is over (with `exit_after_scenario`) or on Ctrl-C.
pub async fn run(options: DemoOptions) -> Result<()> {
    let mut cluster = DemoCluster::start(&options)?;
    say(&format!(
        "Started {} skiff members (data and logs in {}):",
        cluster.members.len(),
        cluster.dir.display()
    ));
    for member in &cluster.members {
        say(&format!("  {}  {}", member.name, member.client_url));
    }
    say(&format!(
        "Try:  ETCDCTL_API=3 etcdctl --endpoints={} endpoint status -w table",
        cluster.endpoints()
    ));
    say("");

    let started = Instant::now();
    let (leader, seen) = cluster.wait_leader(Duration::from_secs(15)).await?;
    say(&format!(
        "1. {} was elected leader in term {} ({} ms after start).",
        cluster.members[leader].name,
        seen.term,
        started.elapsed().as_millis()
    ));
    let writer = (leader + 1) % cluster.members.len();
    for i in 1..=5 {
        let revision = cluster
            .put(writer, &format!("demo/{i}"), &format!("value {i}"))
            .await?;
        say(&format!(
            "   put demo/{i} through {} (forwarded to the leader) -> revision {revision}",
            cluster.members[writer].name
        ));
    }

    if cluster.members.len() < 3 {
        say("A cluster of fewer than 3 members cannot survive a failure: the demo ends here.");
        return finish(cluster, &options).await;
    }
    let old_leader = leader;
    let old_name = cluster.members[old_leader].name.clone();
    say(&format!("2. Killing the leader {old_name} with SIGKILL."));
    cluster.members[old_leader].kill();
    let killed = Instant::now();
    let (leader, seen) = cluster
        .wait_leader(Duration::from_millis(options.election_timeout_ms * 10))
        .await?;
    say(&format!(
        "3. {} took over in term {} after {} ms (election timeout {} ms).",
        cluster.members[leader].name,
        seen.term,
        killed.elapsed().as_millis(),
        options.election_timeout_ms
    ));
    for i in 6..=10 {
        let revision = cluster
            .put(leader, &format!("demo/{i}"), &format!("value {i}"))
            .await?;
        say(&format!("   put demo/{i} -> revision {revision}"));
    }
    let count = cluster.get_prefix(leader, "demo/", false).await?;
    say(&format!(
        "   a linearizable read of demo/ finds {count} keys on the new leader."
    ));
    if count != 10 {
        bail!("expected 10 keys after the failover, found {count}");
    }

    say(&format!(
        "4. Restarting {old_name}: it rejoins as a follower and catches up."
    ));
    let binary = cluster.binary.clone();
    cluster.members[old_leader].start(&binary)?;
    let restarted = Instant::now();
    let target = status(&cluster.members[leader].client_url)
        .await
        .map_or(0, |seen| seen.applied);
    loop {
        if let Some(seen) = status(&cluster.members[old_leader].client_url).await {
            if seen.applied >= target && seen.leader != 0 {
                break;
            }
        }
        if restarted.elapsed() > Duration::from_secs(20) {
            bail!("{old_name} did not catch up within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let count = cluster.get_prefix(old_leader, "demo/", true).await?;
    say(&format!(
        "   {old_name} caught up in {} ms; a local (serializable) read there finds {count} keys.",
        restarted.elapsed().as_millis()
    ));
    if count != 10 {
        bail!("expected 10 keys on the restarted member, found {count}");
    }
    add_a_member(&mut cluster, leader, &options).await?;
    finish(cluster, &options).await
}

/// Scene 5: a new member is added as a learner (MemberAdd), started with
/// `--initial-cluster-state existing`, catches up, and is promoted to a voter.
async fn add_a_member(
    cluster: &mut DemoCluster,
    leader: usize,
    options: &DemoOptions,
) -> Result<()> {
    let name = format!("m{}", cluster.members.len() + 1);
    let ports = free_ports(2)?;
    let peer_url = format!("http://127.0.0.1:{}", ports[1]);
    let channel = Channel::from_shared(cluster.members[leader].client_url.clone())?
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .context("connecting to the leader")?;
    let mut members = ClusterClient::new(channel);
    let added = members
        .member_add(MemberAddRequest {
            peer_ur_ls: vec![peer_url.clone()],
            is_learner: true,
        })
        .await
        .map_err(|status| anyhow!("member add: {}", status.message()))?
        .into_inner();
    let id = added.member.map_or(0, |member| member.id);
    // What `etcdctl member add` prints as ETCD_INITIAL_CLUSTER.
    let initial_cluster = added
        .members
        .iter()
        .flat_map(|member| {
            let name = if member.id == id {
                name.clone()
            } else {
                member.name.clone()
            };
            member
                .peer_ur_ls
                .iter()
                .map(move |url| format!("{name}={url}"))
        })
        .collect::<Vec<_>>()
        .join(",");
    say(&format!(
        "5. Adding {name} ({id:x}) as a learner with MemberAdd, then starting it with \
         --initial-cluster-state existing."
    ));
    let mut member = Member::with_state(
        &name,
        (ports[0], ports[1]),
        &cluster.dir,
        &initial_cluster,
        "existing",
        options,
    );
    member.start(&cluster.binary)?;
    cluster.members.push(member);
    let new = cluster.members.len() - 1;
    let joined = Instant::now();
    let target = status(&cluster.members[leader].client_url)
        .await
        .map_or(0, |seen| seen.applied);
    loop {
        if status(&cluster.members[new].client_url)
            .await
            .is_some_and(|seen| seen.applied >= target)
        {
            break;
        }
        if joined.elapsed() > Duration::from_secs(20) {
            bail!("{name} did not catch up within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    say(&format!(
        "   {name} received the log and caught up in {} ms; as a learner it does not vote.",
        joined.elapsed().as_millis()
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    let promoted = loop {
        match members.member_promote(MemberPromoteRequest { id }).await {
            Ok(answer) => break answer.into_inner(),
            // The leader promotes only a learner whose log is close to its own.
            Err(status) if status.message().contains("in sync") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(status) => bail!("member promote: {}", status.message()),
        }
    };
    let voters = promoted.members.iter().filter(|m| !m.is_learner).count();
    say(&format!(
        "   promoted {name} with MemberPromote: the cluster now has {voters} voting members."
    ));
    Ok(())
}

async fn finish(cluster: DemoCluster, options: &DemoOptions) -> Result<()> {
    if options.exit_after_scenario {
        say("Scenario complete; stopping the cluster.");
        return Ok(());
    }
    say("");
    say(&format!(
        "The cluster keeps serving. Try:  ETCDCTL_API=3 etcdctl --endpoints={} get --prefix demo/",
        cluster.endpoints()
    ));
    say("Press Ctrl-C to stop it.");
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    say("Stopping the cluster.");
    drop(cluster);
    Ok(())
}

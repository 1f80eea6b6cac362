//! Members running the real event loop, log writer and applier on real files, connected by
//! an in-process network that can cut members off: elections, writes through any member,
//! linearizable reads, failover, restart from disk.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use skiff_kv::{KvConfig, Operation, PutRequest, RangeRequest, ResponseBody};
use skiff_raft::{Message, MessageBody, NodeId};
use skiff_server::members::{MemberRecord, MemberRequest, Registry};
use skiff_server::node::{FixedPeers, ForwardFailure, Forwarder, Outbound, KEPT_ENTRIES};
use skiff_server::transport::SnapshotInbox;
use skiff_server::{Backend, Node, NodeHandle, NodeOptions, ServerError};
use skiff_storage::StorageConfig;

/// The in-process network: handles of running members, and members cut off. Snapshots are
/// streamed file to file into the recipient's inbox, through the inbox's own checks.
#[derive(Clone, Default)]
struct Net {
    handles: Arc<Mutex<BTreeMap<NodeId, NodeHandle>>>,
    inboxes: Arc<Mutex<BTreeMap<NodeId, Arc<SnapshotInbox>>>>,
    isolated: Arc<Mutex<BTreeSet<NodeId>>>,
    /// Messages to these members arrive this much later.
    delayed: Arc<Mutex<BTreeMap<NodeId, Duration>>>,
}

impl Net {
    fn reachable(&self, from: NodeId, to: NodeId) -> Option<NodeHandle> {
        let isolated = self.isolated.lock().unwrap();
        if isolated.contains(&from) || isolated.contains(&to) {
            return None;
        }
        self.handles.lock().unwrap().get(&to).cloned()
    }

    /// Streams the snapshot `message` names into its recipient's inbox, then delivers it.
    fn send_snapshot(&self, from: NodeId, message: Message) {
        let net = self.clone();
        let to = message.to;
        let Some(inbox) = self.inboxes.lock().unwrap().get(&to).cloned() else {
            return;
        };
        tokio::spawn(async move {
            let result = inbox.receive_local(&message, 64 << 10).await;
            let success = match (result, net.reachable(from, to)) {
                (Ok(received), Some(target)) => {
                    target.deliver(vec![received]);
                    true
                }
                _ => false,
            };
            if let Some(sender) = net.handles.lock().unwrap().get(&from) {
                sender.report_snapshot(to, success);
            }
        });
    }

    fn outbound(&self, from: NodeId) -> Outbound {
        let net = self.clone();
        let runtime = tokio::runtime::Handle::current();
        Arc::new(move |messages: Vec<Message>| {
            let _guard = runtime.enter();
            let mut by_peer: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
            for message in messages {
                if matches!(message.body, MessageBody::InstallSnapshot { .. }) {
                    net.send_snapshot(from, message);
                    continue;
                }
                by_peer.entry(message.to).or_default().push(message);
            }
            for (to, batch) in by_peer {
                if let Some(delay) = net.delayed.lock().unwrap().get(&to).copied() {
                    let net = net.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        if let Some(handle) = net.reachable(from, to) {
                            handle.deliver(batch);
                        }
                    });
                    continue;
                }
                match net.reachable(from, to) {
                    Some(handle) => handle.deliver(batch),
                    None => {
                        if let Some(sender) = net.handles.lock().unwrap().get(&from) {
                            sender.report_unreachable(to);
                        }
                    }
                }
            }
        })
    }
}

struct NetForwarder {
    net: Net,
    from: NodeId,
}

impl Forwarder for NetForwarder {
    fn forward(
        &self,
        to: NodeId,
        request: Bytes,
        timeout: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Bytes, ForwardFailure>> + Send>> {
        let target = self.net.reachable(self.from, to);
        Box::pin(async move {
            let Some(target) = target else {
                return Err(ForwardFailure::NotDelivered);
            };
            tokio::time::timeout(timeout, target.handle_forward(request))
                .await
                .map_err(|_| ForwardFailure::Unknown)
        })
    }
}

struct TestCluster {
    net: Net,
    dir: PathBuf,
    ids: Vec<NodeId>,
    nodes: BTreeMap<NodeId, Node>,
    snapshot_count: u64,
    snapshot_log_bytes: u64,
    kept_entries: u64,
}

impl TestCluster {
    fn new(size: u64, name: &str) -> TestCluster {
        TestCluster::with_snapshots(size, name, 50, 256 << 20)
    }

    /// A cluster whose members snapshot every `count` entries or `log_bytes` of payloads.
    fn with_snapshots(size: u64, name: &str, count: u64, log_bytes: u64) -> TestCluster {
        TestCluster::build(size, name, count, log_bytes, KEPT_ENTRIES)
    }

    /// A cluster whose members never snapshot and keep only `kept` applied entries in
    /// memory.
    fn keeping(size: u64, name: &str, kept: u64) -> TestCluster {
        TestCluster::build(size, name, 0, u64::MAX, kept)
    }

    fn build(size: u64, name: &str, count: u64, log_bytes: u64, kept: u64) -> TestCluster {
        let dir = std::env::temp_dir().join(format!(
            "skiff-node-cluster-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cluster = TestCluster {
            net: Net::default(),
            dir,
            ids: (1..=size).collect(),
            nodes: BTreeMap::new(),
            snapshot_count: count,
            snapshot_log_bytes: log_bytes,
            kept_entries: kept,
        };
        for id in cluster.ids.clone() {
            cluster.start(id);
        }
        cluster
    }

    fn start(&mut self, id: NodeId) {
        let initial = Registry {
            members: self
                .ids
                .iter()
                .map(|&id| {
                    let record = MemberRecord {
                        name: format!("m{id}"),
                        peer_urls: vec![format!("http://m{id}:2380")],
                    };
                    (id, record)
                })
                .collect(),
        };
        let options = NodeOptions {
            id,
            cluster_id: 7,
            initial,
            name: format!("m{id}"),
            client_urls: vec![],
            peers: Arc::new(FixedPeers),
            wal_dir: self.dir.join(format!("m{id}")),
            snapshot_dir: self.dir.join(format!("m{id}-snap")),
            tick: Duration::from_millis(10),
            election_ticks: 10,
            snapshot_count: self.snapshot_count,
            snapshot_log_bytes: self.snapshot_log_bytes,
            snapshot_catchup_entries: 10,
            kept_entries: self.kept_entries,
            kv_config: KvConfig::default(),
            value_dir: Some(self.dir.join(format!("m{id}-values"))),
            storage_config: StorageConfig::small_for_tests(),
            request_timeout: Duration::from_secs(3),
            metrics: Arc::new(skiff_server::metrics::Metrics::new()),
        };
        let inbox = SnapshotInbox::new(&options.snapshot_dir).expect("snapshot inbox");
        self.net.inboxes.lock().unwrap().insert(id, inbox);
        let node = Node::start(options, self.net.outbound(id)).expect("start");
        let handle = node.handle();
        handle.set_forwarder(Arc::new(NetForwarder {
            net: self.net.clone(),
            from: id,
        }));
        self.net.handles.lock().unwrap().insert(id, handle);
        self.nodes.insert(id, node);
    }

    async fn stop(&mut self, id: NodeId) {
        self.net.handles.lock().unwrap().remove(&id);
        let node = self.nodes.remove(&id).expect("running");
        node.handle().shutdown();
        node.stopped().await.expect("clean stop");
    }

    /// Snapshots member `id` has received from a leader.
    fn snapshots_received(&self, id: NodeId) -> u64 {
        let inbox = self.net.inboxes.lock().unwrap()[&id].clone();
        let received = inbox
            .stats()
            .received
            .load(std::sync::atomic::Ordering::Relaxed);
        received
    }

    fn handle(&self, id: NodeId) -> NodeHandle {
        self.nodes[&id].handle()
    }

    async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for (id, node) in &self.nodes {
                if self.net.isolated.lock().unwrap().contains(id) {
                    continue;
                }
                if node.handle().status().leader == *id {
                    return *id;
                }
            }
            assert!(Instant::now() < deadline, "no leader within 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in self.nodes.values() {
            node.handle().shutdown();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn put(handle: &NodeHandle, key: &str, value: &str) -> Result<i64, ServerError> {
    let response = handle
        .propose(Operation::Put(PutRequest {
            key: key.as_bytes().to_vec().into(),
            value: value.as_bytes().to_vec().into(),
            ..Default::default()
        }))
        .await?;
    match response.result? {
        ResponseBody::Put(_) => Ok(response.revision),
        other => panic!("unexpected answer {other:?}"),
    }
}

async fn get_linearizable(handle: &NodeHandle, key: &str) -> Result<Option<String>, ServerError> {
    handle.read_barrier().await?;
    let response = handle.read(|store| {
        store.range(&RangeRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })
    })?;
    Ok(response
        .kvs
        .first()
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_any_member_are_read_back_everywhere() {
    let cluster = TestCluster::new(3, "any");
    let leader = cluster.leader().await;
    let mut expected_revision = 1;
    for id in cluster.ids.clone() {
        expected_revision += 1;
        let revision = put(&cluster.handle(id), &format!("k{id}"), &format!("v{id}"))
            .await
            .unwrap_or_else(|error| panic!("put through m{id} (leader m{leader}): {error}"));
        assert_eq!(revision, expected_revision, "one revision per put");
    }
    for reader in cluster.ids.clone() {
        for id in cluster.ids.clone() {
            let value = get_linearizable(&cluster.handle(reader), &format!("k{id}"))
                .await
                .unwrap();
            assert_eq!(value.as_deref(), Some(format!("v{id}").as_str()));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_an_isolated_leader_cannot_serve() {
    let cluster = TestCluster::new(3, "failover");
    let old = cluster.leader().await;
    put(&cluster.handle(old), "a", "1").await.unwrap();
    cluster.net.isolated.lock().unwrap().insert(old);
    let started = Instant::now();
    let new = cluster.leader().await;
    assert_ne!(new, old);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    put(&cluster.handle(new), "a", "2").await.unwrap();
    // The cut-off member must not answer a linearizable read with the stale value.
    match get_linearizable(&cluster.handle(old), "a").await {
        Err(ServerError::Timeout) | Err(ServerError::NoLeader) => {}
        other => panic!("isolated member answered {other:?}"),
    }
    cluster.net.isolated.lock().unwrap().clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match get_linearizable(&cluster.handle(old), "a").await {
            Ok(value) => {
                assert_eq!(value.as_deref(), Some("2"));
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "never recovered: {error}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_member_recovers_its_state_from_disk_and_snapshots() {
    let mut cluster = TestCluster::new(3, "restart");
    let leader = cluster.leader().await;
    // More writes than snapshot_count (50), so snapshots and log compaction happen.
    for i in 0..120 {
        put(
            &cluster.handle(leader),
            &format!("key{}", i % 10),
            &format!("{i}"),
        )
        .await
        .unwrap();
    }
    let victim = *cluster.ids.iter().find(|&&id| id != leader).unwrap();
    cluster.stop(victim).await;
    for i in 120..200 {
        put(
            &cluster.handle(leader),
            &format!("key{}", i % 10),
            &format!("{i}"),
        )
        .await
        .unwrap();
    }
    cluster.start(victim);
    let handle = cluster.handle(victim);
    let value = get_linearizable(&handle, "key9").await.unwrap();
    assert_eq!(value.as_deref(), Some("199"));
    // The entries it missed were compacted: it caught up through a streamed snapshot.
    assert!(
        cluster.snapshots_received(victim) >= 1,
        "no snapshot was received"
    );
    let revision = handle.read(|store| store.current_revision());
    assert_eq!(revision, 201, "200 puts after revision 1");
    // Stop everyone, restart everyone: the state comes back from the logs and snapshots.
    for id in cluster.ids.clone() {
        cluster.stop(id).await;
    }
    for id in cluster.ids.clone() {
        cluster.start(id);
    }
    let leader = cluster.leader().await;
    let value = get_linearizable(&cluster.handle(leader), "key3")
        .await
        .unwrap();
    assert_eq!(value.as_deref(), Some("193"));
    // Every member converges to the same key space.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let hashes: Vec<Option<u32>> = cluster
            .ids
            .iter()
            .map(|&id| {
                cluster
                    .handle(id)
                    .read(|store| store.hash_kv(0).ok().map(|h| h.hash))
            })
            .collect();
        if hashes.windows(2).all(|pair| pair[0] == pair[1]) && hashes[0].is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "members disagree: {hashes:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_fell_behind_gets_released_entries_from_the_leaders_log() {
    // No snapshots, so everything the stopped member missed is in the others' logs; the
    // others keep no applied entry in memory, so it can only come from there.
    let mut cluster = TestCluster::keeping(3, "released", 0);
    let leader = cluster.leader().await;
    put(&cluster.handle(leader), "k", "before").await.unwrap();
    let victim = *cluster.ids.iter().find(|&&id| id != leader).unwrap();
    cluster.stop(victim).await;
    for i in 0..300 {
        put(
            &cluster.handle(leader),
            &format!("k{}", i % 7),
            &format!("{i}"),
        )
        .await
        .unwrap();
    }
    cluster.start(victim);
    let deadline = Instant::now() + Duration::from_secs(10);
    let handle = cluster.handle(victim);
    while handle.read(|store| store.current_revision()) < 302 {
        assert!(Instant::now() < deadline, "the member never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        cluster.snapshots_received(victim),
        0,
        "caught up from entries, not a snapshot"
    );
    let hashes: Vec<u32> = cluster
        .ids
        .iter()
        .map(|&id| {
            cluster
                .handle(id)
                .read(|store| store.hash_kv(0).unwrap().hash)
        })
        .collect();
    assert!(
        hashes.windows(2).all(|pair| pair[0] == pair[1]),
        "members disagree: {hashes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_revoked_by_the_leader_at_the_same_revision_everywhere() {
    let cluster = TestCluster::new(3, "lease");
    let leader = cluster.leader().await;
    let follower = *cluster.ids.iter().find(|&&id| id != leader).unwrap();
    // Granted through a follower: the ID is picked there, the clock is the leader's.
    let granted = cluster
        .handle(follower)
        .propose(Operation::LeaseGrant {
            id: 0,
            ttl_seconds: 2,
            now_ms: 0,
        })
        .await
        .unwrap();
    let lease = match granted.result.unwrap() {
        ResponseBody::LeaseGrant(grant) => grant.id,
        other => panic!("unexpected {other:?}"),
    };
    assert!(lease > 0);
    cluster
        .handle(leader)
        .propose(Operation::Put(PutRequest {
            key: Bytes::from_static(b"ephemeral"),
            value: Bytes::from_static(b"x"),
            lease,
            ..Default::default()
        }))
        .await
        .unwrap()
        .result
        .unwrap();
    let granted_at = Instant::now();
    assert_eq!(
        get_linearizable(&cluster.handle(leader), "ephemeral")
            .await
            .unwrap()
            .as_deref(),
        Some("x")
    );
    // Gone after the TTL (plus the leader's check interval), on every member at one revision.
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let values: Vec<Option<String>> = read_everywhere(&cluster, "ephemeral").await;
        if values.iter().all(Option::is_none) {
            break;
        }
        assert!(Instant::now() < deadline, "lease never expired: {values:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        granted_at.elapsed() >= Duration::from_millis(1900),
        "expired early: {:?}",
        granted_at.elapsed()
    );
    let revisions: Vec<i64> = cluster
        .ids
        .iter()
        .map(|&id| cluster.handle(id).read(|store| store.current_revision()))
        .collect();
    assert!(
        revisions.windows(2).all(|pair| pair[0] == pair[1]),
        "{revisions:?}"
    );
    assert_eq!(
        revisions[0], 3,
        "one revision for the put, one for the expiry"
    );
}

/// Linearizable reads of `key` through every member, one after the other.
async fn read_everywhere(cluster: &TestCluster, key: &str) -> Vec<Option<String>> {
    let mut values = Vec::new();
    for id in cluster.ids.clone() {
        values.push(get_linearizable(&cluster.handle(id), key).await.unwrap());
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_are_checked_like_etcds_and_forwarded_to_the_leader() {
    let cluster = TestCluster::new(3, "membership");
    let leader = cluster.leader().await;
    let follower = cluster
        .ids
        .iter()
        .copied()
        .find(|id| *id != leader)
        .unwrap();
    let via = cluster.handle(follower);
    let url = |port: u16| vec![format!("http://m9:{port}")];

    // Through a follower: forwarded to the leader, answered once applied here.
    let (learner, members) = via
        .change_members(MemberRequest::Add {
            peer_urls: url(1),
            learner: true,
        })
        .await
        .expect("add a learner");
    let listed = members.iter().find(|m| m.id == learner).expect("listed");
    assert!(listed.is_learner && listed.name.is_empty(), "{listed:?}");
    assert_eq!(cluster.handle(leader).members().len(), 4);

    let refused = |request| {
        let via = via.clone();
        async move { via.change_members(request).await.unwrap_err() }
    };
    assert_eq!(
        refused(MemberRequest::Add {
            peer_urls: url(2),
            learner: true
        })
        .await,
        ServerError::TooManyLearners
    );
    assert_eq!(
        refused(MemberRequest::Add {
            peer_urls: vec!["m9:2".into()],
            learner: false
        })
        .await,
        ServerError::MemberBadUrls
    );
    // It never started, so its log is far behind.
    assert_eq!(
        refused(MemberRequest::Promote { id: learner }).await,
        ServerError::LearnerNotReady
    );
    assert_eq!(
        refused(MemberRequest::Promote { id: leader }).await,
        ServerError::MemberNotLearner
    );
    assert_eq!(
        refused(MemberRequest::Remove { id: 12345 }).await,
        ServerError::MemberNotFound
    );
    assert_eq!(
        refused(MemberRequest::Update {
            id: follower,
            peer_urls: url(1)
        })
        .await,
        ServerError::PeerUrlExists
    );
    let (_, members) = via
        .change_members(MemberRequest::Update {
            id: learner,
            peer_urls: url(3),
        })
        .await
        .expect("update the learner's URLs");
    let listed = members.iter().find(|m| m.id == learner).expect("listed");
    assert_eq!(listed.peer_urls, url(3));
    via.change_members(MemberRequest::Remove { id: learner })
        .await
        .expect("remove the learner");
    assert_eq!(via.members().len(), 3);

    // A voter cut off: adding a voter now could cost the quorum.
    let down = cluster
        .ids
        .iter()
        .copied()
        .find(|id| *id != leader && *id != follower)
        .unwrap();
    cluster.net.isolated.lock().unwrap().insert(down);
    // Unheard-from for two check-quorum rounds (an election timeout each, 100 ms here).
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        refused(MemberRequest::Add {
            peer_urls: url(4),
            learner: false
        })
        .await,
        ServerError::UnhealthyCluster
    );
    // Removing the member that is down is safe, and the two left go on.
    via.change_members(MemberRequest::Remove { id: down })
        .await
        .expect("remove the member that is down");
    let ids: Vec<NodeId> = via.members().iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), 2);
    assert!(!ids.contains(&down));
    put(&via, "after", "removal")
        .await
        .expect("a put with two members");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_entries_bring_the_snapshot_forward() {
    // Far fewer entries than the snapshot count, but more payload bytes than the log may hold.
    let cluster = TestCluster::with_snapshots(3, "logbytes", 1_000_000, 32 << 10);
    let leader = cluster.leader().await;
    let value = "v".repeat(2048);
    for i in 0..40 {
        put(&cluster.handle(leader), &format!("k{i}"), &value)
            .await
            .expect("put");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for id in cluster.ids.clone() {
        let wal = cluster.dir.join(format!("m{id}"));
        loop {
            let snapshots = std::fs::read_dir(&wal)
                .expect("wal dir")
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().ends_with(".snap"))
                .count();
            if snapshots > 0 {
                break;
            }
            assert!(Instant::now() < deadline, "m{id} took no snapshot");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Linearizable reads asked together share one read index: none of them may miss a write
/// that finished before it was asked, on a follower or on the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_asked_together_each_see_every_write_finished_before_them() {
    use std::sync::atomic::{AtomicU64, Ordering};
    let cluster = TestCluster::new(3, "reads");
    let leader = cluster.leader().await;
    let follower = *cluster.ids.iter().find(|id| **id != leader).unwrap();
    put(&cluster.handle(leader), "n", "0").await.unwrap();
    // The follower hears everything late, so its state lags the leader's: a read answered
    // from it without waiting for the read index would show old values.
    cluster
        .net
        .delayed
        .lock()
        .unwrap()
        .insert(follower, Duration::from_millis(5));
    let finished = Arc::new(AtomicU64::new(0));
    let writer = {
        let handle = cluster.handle(leader);
        let finished = finished.clone();
        tokio::spawn(async move {
            for n in 1..=150u64 {
                put(&handle, "n", &n.to_string()).await.unwrap();
                finished.store(n, Ordering::SeqCst);
            }
        })
    };
    let mut readers = Vec::new();
    for reader in 0..24 {
        let handle = cluster.handle(if reader % 3 == 0 { leader } else { follower });
        let finished = finished.clone();
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            while finished.load(Ordering::SeqCst) < 150 {
                let before = finished.load(Ordering::SeqCst);
                let value = get_linearizable(&handle, "n").await.unwrap();
                let seen: u64 = value.as_deref().unwrap().parse().unwrap();
                assert!(
                    seen >= before,
                    "a read saw {seen} after write {before} finished"
                );
                reads += 1;
            }
            reads
        }));
    }
    writer.await.unwrap();
    let mut total = 0;
    for reader in readers {
        total += reader.await.unwrap();
    }
    assert!(
        total >= 24,
        "every reader read at least once ({total} reads)"
    );
}

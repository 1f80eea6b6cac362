//! Membership changes with real processes and etcdctl, typed as an etcd operator would:
//! a 3-member cluster holding many keys adds a learner (which catches up by snapshot
//! streaming), promotes it, removes an original member (the leader), then replaces a dead
//! member (remove, add, start with `--initial-cluster-state existing`). The refusals on the
//! way carry etcd's messages. The same scenario runs against Debian's etcd to keep the
//! expectations honest (with fewer keys).

mod support;

use std::time::{Duration, Instant};

use skiff_etcd_proto::etcdserverpb::kv_client::KvClient;
use skiff_etcd_proto::etcdserverpb::PutRequest;
use support::{json, Cluster, Kind, Options, Output};
use tonic::transport::Endpoint;

const VALUE_BYTES: usize = 256;

/// Puts `keys` keys of [`VALUE_BYTES`] through `member`, 64 at a time.
fn load(cluster: &Cluster, member: usize, keys: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let endpoint = Endpoint::from_shared(cluster.client_url(member).to_string())
        .expect("a valid URL")
        .timeout(Duration::from_secs(20));
    runtime.block_on(async {
        let channel = endpoint.connect_lazy();
        let clients = 64;
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..clients {
            let mut kv = KvClient::new(channel.clone());
            tasks.spawn(async move {
                for i in (client..keys).step_by(clients) {
                    let value = format!("{i:08}").repeat(VALUE_BYTES / 8);
                    kv.put(PutRequest {
                        key: format!("key{i:06}").into_bytes().into(),
                        value: value.into_bytes().into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|status| panic!("put {i}: {status}"));
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a load task");
        }
    });
}

/// Runs etcdctl against `members` until it succeeds or fails with something other than a
/// retryable refusal (etcd asks operators to retry while the cluster settles).
fn etcdctl_retrying(cluster: &Cluster, members: &[usize], args: &[&str]) -> Output {
    const RETRYABLE: [&str; 5] = [
        "unhealthy cluster",
        "not enough started members",
        "in sync with leader",
        "leader changed",
        "timed out",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let output = cluster.etcdctl_at(members, args);
        // etcd's raft silently drops a configuration change proposed while a new leader has
        // not yet applied its predecessor's entries, and the request then times out on the
        // client; Skiff retries such a change itself until its deadline.
        let etcd_dropped =
            cluster.kind() == Kind::Etcd && output.stderr.contains("context deadline exceeded");
        let retry = !output.success()
            && (etcd_dropped
                || RETRYABLE
                    .iter()
                    .any(|message| output.stderr.contains(message)));
        if !retry || Instant::now() >= deadline {
            return output;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// `etcdctl member list -w json` through `members`: (id, name, peer URLs, learner) each.
fn member_list(cluster: &Cluster, members: &[usize]) -> Vec<(u64, String, Vec<String>, bool)> {
    let output = cluster.etcdctl_at(members, &["member", "list", "-w", "json"]);
    assert!(output.success(), "member list: {}", output.stderr);
    let value = json::parse(&output.stdout).expect("member list json");
    value
        .get("members")
        .and_then(json::Value::as_array)
        .into_iter()
        .flatten()
        .map(|member| {
            let text = |field| {
                member
                    .get(field)
                    .and_then(json::Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let urls = member
                .get("peerURLs")
                .and_then(json::Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|url| url.as_str().map(str::to_string))
                .collect();
            let learner = member.get("isLearner") == Some(&json::Value::Bool(true));
            let id = member.get("ID").and_then(json::Value::as_u64).expect("ID");
            (id, text("name"), urls, learner)
        })
        .collect()
}

/// A member's (applied index, raft index) from `endpoint status -w json`.
fn applied_index(cluster: &Cluster, member: usize) -> Option<(u64, u64)> {
    let output = cluster.etcdctl_at(&[member], &["endpoint", "status", "-w", "json"]);
    if !output.success() {
        return None;
    }
    let value = json::parse(&output.stdout).ok()?;
    let status = value.as_array()?.first()?.get("Status")?;
    let applied = status.get("raftAppliedIndex")?.as_u64()?;
    let index = status.get("raftIndex")?.as_u64()?;
    Some((applied, index))
}

/// Adds a member with `etcdctl member add NAME --peer-urls=URL [--learner]` and returns its
/// ID (hex, as printed) and the `ETCD_INITIAL_CLUSTER` value printed for starting it.
fn member_add(cluster: &Cluster, via: &[usize], member: usize, learner: bool) -> (String, String) {
    let peer = format!("--peer-urls={}", cluster.peer_url(member));
    let mut args = vec!["member", "add", cluster.name(member), &peer];
    if learner {
        args.push("--learner");
    }
    let output = etcdctl_retrying(cluster, via, &args);
    assert!(
        output.success(),
        "member add: {}{}",
        output.stdout,
        output.stderr
    );
    // "Member <id> added to cluster <id>" (etcdctl pads IDs to 16 columns with spaces).
    let words: Vec<&str> = output.stdout.split_whitespace().collect();
    assert!(
        words.len() > 5 && words[0] == "Member" && words[2..5] == ["added", "to", "cluster"],
        "{}",
        output.stdout
    );
    let id = words[1].to_string();
    let initial_cluster = output
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in:\n{}", output.stdout))
        .to_string();
    assert!(
        output
            .stdout
            .contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{}",
        output.stdout
    );
    (id, initial_cluster)
}

fn expect_refusal(cluster: &Cluster, via: &[usize], args: &[&str], message: &str) {
    let output = cluster.etcdctl_at(via, args);
    assert!(
        !output.success() && output.stderr.contains(message),
        "etcdctl {args:?}: expected {message:?}, got stdout {:?} stderr {:?}",
        output.stdout,
        output.stderr
    );
}

/// Waits until `member` has applied what the leader had committed when the wait began.
fn wait_caught_up(cluster: &Cluster, leader: usize, member: usize, timeout: Duration) {
    let (_, target) = applied_index(cluster, leader).expect("leader status");
    let deadline = Instant::now() + timeout;
    loop {
        if applied_index(cluster, member).is_some_and(|(applied, _)| applied >= target) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not catch up to index {target} in {timeout:?}:\n{}",
            cluster.name(member),
            cluster.log_tail(member, 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

fn scenario(kind: Kind, keys: usize) {
    let options = Options {
        extra_args: vec!["--snapshot-count".into(), "10000".into()],
        start_timeout: Duration::from_secs(60),
        ..Options::default()
    };
    let mut cluster = Cluster::start(kind, 3, options);
    cluster.command_timeout = Duration::from_secs(15);
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let loaded = Instant::now();
    load(&cluster, leader, keys);
    println!(
        "{}: loaded {keys} keys of {VALUE_BYTES} B in {:?}",
        kind.name(),
        loaded.elapsed()
    );
    if kind == Kind::Skiff {
        // How long applying paused for each snapshot (the copy) and how long writing took.
        let log = std::fs::read_to_string(cluster.log_path(leader)).unwrap_or_default();
        if let Some(line) = log.lines().rfind(|line| line.contains("took a snapshot")) {
            println!("skiff: leader's last snapshot: {line}");
        }
    }
    let originals = [0, 1, 2];
    let ids = cluster.member_ids();

    // 1. A learner joins and catches up.
    let learner = cluster.new_member("m3");
    let (learner_hex, initial_cluster) = member_add(&cluster, &originals, learner, true);
    let listed = member_list(&cluster, &originals);
    let added = listed
        .iter()
        .find(|member| hex(member.0) == learner_hex)
        .unwrap_or_else(|| panic!("{learner_hex} not listed: {listed:?}"));
    assert!(added.1.is_empty(), "an unstarted member has no name yet");
    assert!(added.3, "added as a learner");
    let table = cluster.etcdctl_at(&originals, &["member", "list"]);
    assert!(
        table
            .stdout
            .lines()
            .any(|line| line.starts_with(&learner_hex) && line.contains("unstarted")),
        "{}",
        table.stdout
    );
    let joining = Instant::now();
    cluster.start_joining(learner, &initial_cluster);
    wait_caught_up(&cluster, leader, learner, Duration::from_secs(180));
    let catch_up = joining.elapsed();
    if kind == Kind::Skiff {
        let log = std::fs::read_to_string(cluster.log_path(learner)).unwrap_or_default();
        let line = log
            .lines()
            .find(|line| line.contains("snapshot received"))
            .unwrap_or_else(|| {
                panic!(
                    "the learner caught up without a snapshot:\n{}",
                    cluster.log_tail(learner, 30)
                )
            });
        let bytes: f64 = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("bytes="))
            .and_then(|bytes| bytes.parse().ok())
            .expect("snapshot size in the log");
        println!(
            "skiff: the learner caught up by a {:.1} MB snapshot in {catch_up:?} \
             (start to applied, {:.1} MB/s)",
            bytes / 1e6,
            bytes / 1e6 / catch_up.as_secs_f64()
        );
    } else {
        println!("{}: the learner caught up in {catch_up:?}", kind.name());
    }
    // A learner serves no linearizable requests.
    expect_refusal(
        &cluster,
        &[learner],
        &["put", "on-learner", "x"],
        "etcdserver: rpc not supported for learner",
    );

    // Refusals, with etcd's messages. (A new member's ID comes from its URLs and the
    // second, so the same URLs within the same second collide on the ID first.)
    std::thread::sleep(Duration::from_millis(1100));
    let taken = format!("--peer-urls={}", cluster.peer_url(learner));
    expect_refusal(
        &cluster,
        &originals,
        &["member", "add", "m9", &taken],
        "etcdserver: Peer URLs already exists",
    );
    expect_refusal(
        &cluster,
        &originals,
        &[
            "member",
            "add",
            "m9",
            "--peer-urls=http://127.0.0.1:1",
            "--learner",
        ],
        "etcdserver: too many learner members in cluster",
    );
    expect_refusal(
        &cluster,
        &originals,
        &["member", "promote", &hex(ids[1])],
        "etcdserver: can only promote a learner member",
    );
    expect_refusal(
        &cluster,
        &originals,
        &["member", "remove", "abcdef12345"],
        "etcdserver: member not found",
    );

    // 2. Promote it.
    let promoted = etcdctl_retrying(&cluster, &originals, &["member", "promote", &learner_hex]);
    // etcdctl pads IDs to 16 columns with spaces.
    let words: Vec<&str> = promoted.stdout.split_whitespace().collect();
    assert!(
        promoted.success() && words.starts_with(&["Member", &learner_hex, "promoted"]),
        "member promote: {}{}",
        promoted.stdout,
        promoted.stderr
    );
    cluster.wait_member_healthy(learner);
    let listed = member_list(&cluster, &originals);
    let voter = listed
        .iter()
        .find(|member| hex(member.0) == learner_hex)
        .expect("still listed");
    assert!(!voter.3, "promoted: {listed:?}");
    assert_eq!(voter.1, "m3", "started members have their names");

    // 3. Remove an original member: the leader itself.
    let leader = cluster.wait_leader(Duration::from_secs(20));
    let removed = etcdctl_retrying(
        &cluster,
        &[learner],
        &["member", "remove", &hex(ids[leader])],
    );
    assert!(
        removed.success(),
        "member remove: {}{}",
        removed.stdout,
        removed.stderr
    );
    let status = cluster.wait_exit(leader, Duration::from_secs(30));
    assert!(
        status.is_some(),
        "the removed member {} still runs:\n{}",
        cluster.name(leader),
        cluster.log_tail(leader, 20)
    );
    if kind == Kind::Skiff {
        assert!(status.is_some_and(|status| status.success()), "{status:?}");
    }
    let live: Vec<usize> = [0, 1, 2, learner]
        .into_iter()
        .filter(|member| *member != leader)
        .collect();
    let put = etcdctl_retrying(&cluster, &live, &["put", "after-removal", "1"]);
    assert!(put.success(), "put after removal: {}", put.stderr);
    let names: Vec<String> = member_list(&cluster, &live)
        .into_iter()
        .map(|member| member.1)
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        !names.contains(&cluster.name(leader).to_string()),
        "{names:?}"
    );

    // 4. Replace a dead member: kill it, remove it, add a new one, start it with `existing`.
    let dead = live[0];
    cluster.kill(dead);
    let survivors: Vec<usize> = live[1..].to_vec();
    cluster.wait_leader(Duration::from_secs(20));
    let removed = etcdctl_retrying(
        &cluster,
        &survivors,
        &[
            "member",
            "remove",
            &hex(ids.get(dead).copied().unwrap_or(0)),
        ],
    );
    assert!(
        removed.success(),
        "remove the dead member: {}{}\n{}",
        removed.stdout,
        removed.stderr,
        survivors
            .iter()
            .map(|m| format!("{}:\n{}", cluster.name(*m), cluster.log_tail(*m, 15)))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let replacement = cluster.new_member("m4");
    let (_, initial_cluster) = member_add(&cluster, &survivors, replacement, false);
    cluster.start_joining(replacement, &initial_cluster);
    cluster.wait_member_healthy(replacement);
    let mut live = survivors.clone();
    live.push(replacement);

    // Every member serves the same data, through itself.
    let put = etcdctl_retrying(&cluster, &live, &["put", "final", "done"]);
    assert!(put.success(), "final put: {}", put.stderr);
    for &member in &live {
        let get = cluster.etcdctl_at(&[member], &["get", "final", "--print-value-only"]);
        assert_eq!(
            get.stdout.trim(),
            "done",
            "{}: {}",
            cluster.name(member),
            get.stderr
        );
        let first = cluster.etcdctl_at(&[member], &["get", "key000000", "--print-value-only"]);
        assert!(
            first.stdout.starts_with("00000000"),
            "{}: {}",
            cluster.name(member),
            first.stderr
        );
    }
    let hashes = cluster.etcdctl_at(&live, &["endpoint", "hashkv", "-w", "json"]);
    let value = json::parse(&hashes.stdout).expect("hashkv json");
    let hashes: Vec<u64> = value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.get("HashKV")?.get("hash")?.as_u64())
        .collect();
    assert_eq!(hashes.len(), live.len(), "{hashes:?}");
    assert!(
        hashes.windows(2).all(|pair| pair[0] == pair[1]),
        "{hashes:?}"
    );
    let mut names: Vec<String> = member_list(&cluster, &live)
        .into_iter()
        .map(|member| member.1)
        .collect();
    names.sort();
    let mut expected: Vec<String> = live.iter().map(|m| cluster.name(*m).to_string()).collect();
    expected.sort();
    assert_eq!(names, expected);
}

#[test]
fn skiff_members_are_added_promoted_removed_and_replaced() {
    let test = "skiff_members_are_added_promoted_removed_and_replaced";
    if support::prerequisites(test, Kind::Skiff) {
        scenario(Kind::Skiff, 100_000);
    }
}

#[test]
fn etcd_members_are_added_promoted_removed_and_replaced() {
    let test = "etcd_members_are_added_promoted_removed_and_replaced";
    if support::prerequisites(test, Kind::Etcd) {
        scenario(Kind::Etcd, 5_000);
    }
}

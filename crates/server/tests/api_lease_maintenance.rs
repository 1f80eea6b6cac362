//! The Lease, Cluster and Maintenance services.

mod common;

use std::time::Duration;

use common::{b, TestServer, CLUSTER_ID, MEMBER_ID, TERM};
use sha2::{Digest, Sha256};
use skiff_etcd_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, DefragmentRequest, HashKvRequest, HashRequest,
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest,
    LeaseTimeToLiveRequest, MemberAddRequest, MemberListRequest, MoveLeaderRequest, PutRequest,
    RangeRequest, SnapshotRequest, StatusRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

async fn grant(server: &TestServer, id: i64, ttl: i64) -> i64 {
    server
        .lease()
        .lease_grant(LeaseGrantRequest { ttl, id })
        .await
        .unwrap()
        .into_inner()
        .id
}

#[tokio::test]
async fn grant_ttl_and_leases() {
    let server = TestServer::start().await;
    let mut lease = server.lease();
    let granted = lease
        .lease_grant(LeaseGrantRequest { ttl: 1, id: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(granted.id, 0, "the backend picks an ID");
    assert_eq!(granted.ttl, 2, "raised to the minimum TTL");
    assert_eq!(granted.header.unwrap().cluster_id, CLUSTER_ID);
    let explicit = grant(&server, 0x1234, 60).await;
    assert_eq!(explicit, 0x1234);

    let exists = lease
        .lease_grant(LeaseGrantRequest {
            ttl: 60,
            id: 0x1234,
        })
        .await
        .unwrap_err();
    assert_eq!(exists.code(), Code::FailedPrecondition);
    assert_eq!(exists.message(), "etcdserver: lease already exists");
    let too_long = lease
        .lease_grant(LeaseGrantRequest {
            ttl: 9_000_000_001,
            id: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(too_long.code(), Code::OutOfRange);
    assert_eq!(too_long.message(), "etcdserver: too large lease TTL");

    let mut ids: Vec<i64> = lease
        .lease_leases(LeaseLeasesRequest {})
        .await
        .unwrap()
        .into_inner()
        .leases
        .into_iter()
        .map(|status| status.id)
        .collect();
    ids.sort();
    let mut expected = vec![granted.id, 0x1234];
    expected.sort();
    assert_eq!(ids, expected);

    server
        .kv()
        .put(PutRequest {
            key: b("leased"),
            value: b("v"),
            lease: 0x1234,
            ..Default::default()
        })
        .await
        .unwrap();
    server.backend.advance_ms(10_500);
    let ttl = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 0x1234,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.granted_ttl, 60);
    assert_eq!(ttl.ttl, 49);
    assert_eq!(ttl.keys, vec![b("leased")]);

    let unknown = lease
        .lease_time_to_live(LeaseTimeToLiveRequest {
            id: 999,
            keys: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((unknown.ttl, unknown.granted_ttl), (-1, 0), "not an error");
}

#[tokio::test]
async fn keep_alive_stream_renews_and_answers_unknown_with_ttl_zero() {
    let server = TestServer::start().await;
    let id = grant(&server, 0, 30).await;
    server.backend.advance_ms(20_000);
    let (requests, receiver) = mpsc::channel(4);
    let mut responses = server
        .lease()
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await
        .unwrap()
        .into_inner();
    requests.send(LeaseKeepAliveRequest { id }).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((answer.id, answer.ttl), (id, 30));
    let ttl = server
        .lease()
        .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ttl.ttl, 30, "renewed as of the keep-alive");

    requests
        .send(LeaseKeepAliveRequest { id: 4242 })
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((answer.id, answer.ttl), (4242, 0), "unknown lease: TTL 0");

    // The stream stays usable.
    requests.send(LeaseKeepAliveRequest { id }).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answer.ttl, 30);
    drop(requests);
}

#[tokio::test]
async fn revoke_deletes_attached_keys() {
    let server = TestServer::start().await;
    let id = grant(&server, 0, 60).await;
    let mut kv = server.kv();
    for key in ["l1", "l2"] {
        kv.put(PutRequest {
            key: b(key),
            value: b("v"),
            lease: id,
            ..Default::default()
        })
        .await
        .unwrap(); // 2, 3
    }
    kv.put(PutRequest {
        key: b("free"),
        value: b("v"),
        ..Default::default()
    })
    .await
    .unwrap(); // 4
    let revoked = server
        .lease()
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        revoked.header.unwrap().revision,
        5,
        "all deletes at one revision"
    );
    let left = kv
        .range(RangeRequest {
            key: b("\0"),
            range_end: b("\0"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(left.kvs.len(), 1);
    assert_eq!(left.kvs[0].key, b("free"));

    let again = server
        .lease()
        .lease_revoke(LeaseRevokeRequest { id })
        .await
        .unwrap_err();
    assert_eq!(again.code(), Code::NotFound);
    assert_eq!(again.message(), "etcdserver: requested lease not found");
}

#[tokio::test]
async fn status_members_alarms_and_unimplemented() {
    let server = TestServer::start().await;
    server
        .kv()
        .put(PutRequest {
            key: b("k"),
            value: b("v"),
            ..Default::default()
        })
        .await
        .unwrap();
    let status = server
        .maintenance()
        .status(StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    let header = status.header.unwrap();
    assert_eq!(header.member_id, MEMBER_ID);
    assert_eq!(header.revision, 2);
    assert_eq!(status.leader, header.member_id, "etcdctl: is leader");
    assert_eq!(status.version, skiff_server::api::ETCD_VERSION);
    assert!(status.version.starts_with("3.4."));
    assert_eq!(status.raft_term, TERM);
    assert_eq!(status.raft_applied_index, 1);
    assert!(status.db_size > 0);
    assert!(!status.is_learner);

    let members = server
        .cluster()
        .member_list(MemberListRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(members.members.len(), 2);
    assert_eq!(members.members[0].id, MEMBER_ID);
    assert_eq!(members.members[0].client_ur_ls, ["http://127.0.0.1:2"]);
    assert!(members.members[1].is_learner);
    assert!(members.members[1].name.is_empty());

    let add = server
        .cluster()
        .member_add(MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:9".into()],
            is_learner: false,
        })
        .await
        .unwrap_err();
    // The single-store test backend has no cluster to change.
    assert_eq!(add.code(), Code::Internal);
    assert!(add.message().contains("not supported"), "{add:?}");

    let alarms = server
        .maintenance()
        .alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            member_id: 0,
            alarm: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(alarms.alarms.is_empty());
    server
        .maintenance()
        .defragment(DefragmentRequest {})
        .await
        .unwrap();
    let hash = server.maintenance().hash(HashRequest {}).await.unwrap_err();
    assert_eq!(hash.code(), Code::Unimplemented);

    server
        .maintenance()
        .move_leader(MoveLeaderRequest {
            target_id: MEMBER_ID,
        })
        .await
        .unwrap();
    let bad = server
        .maintenance()
        .move_leader(MoveLeaderRequest { target_id: 77 })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::FailedPrecondition);
    assert_eq!(bad.message(), "etcdserver: bad leader transferee");
    assert_eq!(server.backend.moved_to(), [MEMBER_ID, 77]);
}

#[tokio::test]
async fn hash_kv_follows_the_history() {
    let one = TestServer::start().await;
    let two = TestServer::start().await;
    for server in [&one, &two] {
        for value in ["a", "b"] {
            server
                .kv()
                .put(PutRequest {
                    key: b("h"),
                    value: b(value),
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    let hash = |server: &TestServer, revision: i64| {
        let mut maintenance = server.maintenance();
        async move {
            maintenance
                .hash_kv(HashKvRequest { revision })
                .await
                .map(|response| response.into_inner())
        }
    };
    let first = hash(&one, 0).await.unwrap();
    assert_eq!(first.hash, hash(&two, 0).await.unwrap().hash);
    assert_eq!(first.header.unwrap().revision, 3);
    assert_eq!(first.compact_revision, -1);
    let at_two = hash(&one, 2).await.unwrap();
    assert_ne!(at_two.hash, first.hash);
    // etcd 3.4 answers with its current revision in the header, whatever revision was hashed
    // (seen with `etcdctl endpoint hashkv --rev` against Debian's etcd).
    assert_eq!(at_two.header.unwrap().revision, 3);

    two.kv()
        .put(PutRequest {
            key: b("h"),
            value: b("c"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_ne!(hash(&two, 0).await.unwrap().hash, first.hash);
    assert_eq!(hash(&two, 3).await.unwrap().hash, first.hash);
    let future = hash(&one, 10).await.unwrap_err();
    assert_eq!(future.code(), Code::OutOfRange);
}

#[tokio::test]
async fn snapshot_is_padded_and_hashed_as_etcdctl_expects() {
    let limits = skiff_server::ApiLimits {
        snapshot_chunk_bytes: 1000,
        ..Default::default()
    };
    let server = TestServer::start_with(Default::default(), limits).await;
    for i in 0..50 {
        server
            .kv()
            .put(PutRequest {
                key: b(&format!("snap/{i}")),
                value: vec![b'x'; 100].into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let mut stream = server
        .maintenance()
        .snapshot(SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        messages.push(message);
    }
    assert!(messages.len() > 3, "streamed in chunks");
    let mut all = Vec::new();
    for message in &messages {
        assert!(message.blob.len() <= 1000);
        all.extend_from_slice(&message.blob);
    }
    assert_eq!(all.len() % 512, 32, "etcdctl's hasChecksum");
    let (data, digest) = all.split_at(all.len() - 32);
    assert_eq!(Sha256::digest(data).as_slice(), digest);
    // remaining_bytes counts the data still to come; the hash message says 0.
    let mut sent = 0;
    for message in &messages[..messages.len() - 1] {
        sent += message.blob.len();
        assert_eq!(message.remaining_bytes as usize, data.len() - sent);
    }
    assert_eq!(messages.last().unwrap().remaining_bytes, 0);

    // The data is the store's snapshot, zero-padded.
    let mut expected = Vec::new();
    server
        .backend
        .read_store(|store| store.snapshot(&mut expected).unwrap());
    assert_eq!(&data[..expected.len()], &expected[..]);
    assert!(data[expected.len()..].iter().all(|byte| *byte == 0));
}

//! The etcd v3 client API (as of etcd 3.4) as Rust types, with tonic clients and
//! servers for the `KV`, `Watch`, `Lease`, `Cluster`, `Maintenance` and `Auth`
//! (`Authenticate` only) services, plus Skiff's own member-to-member `Peer` service
//! ([`skiffpb`]).
//!
//! Why a crate of its own: the server and the load generator must agree on the wire
//! format, and both must agree with etcd, so that etcd's own clients work against Skiff
//! and Skiff's tools can measure etcd. The `.proto` files in `proto/` are Skiff's own
//! description of that wire format (same packages, names, field numbers and types as
//! etcd's). The Rust code is generated from them by `codegen/` and committed, which keeps
//! `protoc` and the code generator out of every build. Byte fields are
//! [`prost::bytes::Bytes`], so payloads can be shared without copying.
//!
//! [`skiffpb`] (`proto/skiffpb/peer.proto`) is not etcd's: it is the protocol Skiff members
//! speak to each other on their peer URLs. `Peer.Stream` is a one-way client stream of
//! Raft messages whose first frame is a `Hello` (cluster ID, sender and intended receiver,
//! the sender's name and client URLs, protocol version) and whose later frames each carry a
//! batch of messages encoded by skiff-server's message codec; `Peer.Forward` is a unary call
//! that carries a client request to the leader and its answer back.

#![deny(missing_docs)]

/// The etcd API messages and services (`package etcdserverpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod etcdserverpb {
    include!("generated/etcdserverpb.rs");
}

/// Key-values and watch events as stored and delivered (`package mvccpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod mvccpb {
    include!("generated/mvccpb.rs");
}

/// Users, roles and permissions (`package authpb`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod authpb {
    include!("generated/authpb.rs");
}

/// Skiff's member-to-member protocol (`package skiffpb`): the `Peer` service with its
/// message stream and request forwarding. Not part of etcd's API.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod skiffpb {
    include!("generated/skiffpb.rs");
}

pub use prost;
pub use tonic;

#[cfg(test)]
mod tests {
    use super::etcdserverpb::{PutRequest, RangeRequest, StatusResponse};
    use super::mvccpb::{event::EventType, Event, KeyValue};
    use prost::Message;

    /// Bytes written by etcd's own (gogoproto) encoder for
    /// `PutRequest{key: "foo", value: "bar", lease: 7, prev_kv: true}`.
    /// The committed generated code must come from the current .proto files: after
    /// editing one, run `cargo run --manifest-path crates/etcd-proto/codegen/Cargo.toml`.
    #[test]
    fn generated_code_is_newer_than_the_protos() {
        let sources: [(&str, &str); 4] = [
            (
                "etcdserverpb/rpc.proto",
                include_str!("../proto/etcdserverpb/rpc.proto"),
            ),
            ("mvccpb/kv.proto", include_str!("../proto/mvccpb/kv.proto")),
            (
                "authpb/auth.proto",
                include_str!("../proto/authpb/auth.proto"),
            ),
            (
                "skiffpb/peer.proto",
                include_str!("../proto/skiffpb/peer.proto"),
            ),
        ];
        let fnv1a = |mut hash: u64, bytes: &[u8]| {
            for byte in bytes {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
            hash
        };
        let mut fingerprint: u64 = 0xcbf2_9ce4_8422_2325;
        for (name, text) in sources {
            fingerprint = fnv1a(fingerprint, name.as_bytes());
            fingerprint = fnv1a(fingerprint, text.as_bytes());
        }
        assert_eq!(
            format!("{fingerprint:016x}"),
            include_str!("generated/proto-fingerprint.txt").trim(),
            "src/generated/ is stale: regenerate it with the codegen tool"
        );
    }

    #[test]
    fn put_request_matches_etcd_encoding() {
        let request = PutRequest {
            key: "foo".into(),
            value: "bar".into(),
            lease: 7,
            prev_kv: true,
            ..Default::default()
        };
        let expected = [
            0x0a, 3, b'f', b'o', b'o', // field 1, bytes
            0x12, 3, b'b', b'a', b'r', // field 2, bytes
            0x18, 7, // field 3, varint
            0x20, 1, // field 4, varint
        ];
        assert_eq!(request.encode_to_vec(), expected);
    }

    #[test]
    fn field_numbers_past_ten_round_trip() {
        let range = RangeRequest {
            key: "a".into(),
            max_create_revision: 9,
            ..Default::default()
        };
        let bytes = range.encode_to_vec();
        // Field 13, varint: tag (13 << 3) | 0 = 104.
        assert_eq!(&bytes[bytes.len() - 2..], &[104, 9]);
        assert_eq!(RangeRequest::decode(bytes.as_slice()).unwrap(), range);

        let status = StatusResponse {
            is_learner: true,
            db_size_in_use: 5,
            ..Default::default()
        };
        assert_eq!(status.encode_to_vec(), [72, 5, 80, 1]);
    }

    #[test]
    fn event_round_trips() {
        let event = Event {
            r#type: EventType::Delete as i32,
            kv: Some(KeyValue {
                key: "k".into(),
                mod_revision: 3,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let decoded = Event::decode(event.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, event);
    }
}

//! Member and cluster IDs, derived the way etcd derives them (a hash of what identifies the
//! member), so every member computes the same IDs from the same `--initial-cluster`.
//! The hash is our own (FNV-1a 64); etcd's exact values (SHA-1 based) are not reproduced.

use crate::config::InitialMember;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

const SEED: u64 = 0xcbf2_9ce4_8422_2325;

/// The ID of a member with these peer URLs in the cluster named by `token`: never 0.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    let mut hash = SEED;
    for url in urls {
        hash = fnv1a(hash, url.as_bytes());
        hash = fnv1a(hash, b"\n");
    }
    hash = fnv1a(hash, token.as_bytes());
    hash.max(1)
}

/// The cluster ID: a hash of the sorted member IDs of the initial cluster.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hash = SEED;
    for id in ids {
        hash = fnv1a(hash, &id.to_be_bytes());
    }
    hash.max(1)
}

/// The IDs of the members of `--initial-cluster`, in the order given.
pub fn initial_member_ids(cluster: &[InitialMember], token: &str) -> Vec<u64> {
    cluster
        .iter()
        .map(|member| member_id(&member.peer_urls, token))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_id_ignores_url_order_and_depends_on_token() {
        let a = vec!["http://a:1".to_string(), "http://b:2".to_string()];
        let b = vec!["http://b:2".to_string(), "http://a:1".to_string()];
        assert_eq!(member_id(&a, "t"), member_id(&b, "t"));
        assert_ne!(member_id(&a, "t"), member_id(&a, "u"));
        assert_ne!(member_id(&a, "t"), member_id(&a[..1], "t"));
    }

    #[test]
    fn cluster_id_ignores_member_order() {
        assert_eq!(cluster_id(&[3, 1, 2]), cluster_id(&[1, 2, 3]));
        assert_ne!(cluster_id(&[1, 2]), cluster_id(&[1, 2, 3]));
    }
}

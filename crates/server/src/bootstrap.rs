//! Who is in the cluster, decided once: on the first start from `--initial-cluster`, later
//! from the member's own data directory (etcd's rule: once a member has state, the
//! `--initial-cluster*` flags are ignored, so restarting with the original command line is
//! always safe).
//!
//! A member started with `--initial-cluster-state existing` and no state joins a running
//! cluster instead ([`join`]): it asks the members listed in `--initial-cluster` to describe
//! their cluster (the peer `Cluster` call), finds itself there by its peer URLs (it must have
//! been added with MemberAdd first), and starts from the cluster's bootstrap configuration,
//! which the log it receives from the leader then carries forward.
//!
//! `<data-dir>/member/cluster` is a small text file written atomically before the log; its
//! member lines are the bootstrap members (the configuration at index 0) in the member
//! registry's text form (see [`crate::members`]):
//! ```text
//! skiff-cluster 1
//! cluster <hex id>
//! self <hex id>
//! member <hex id> <name> <peer-url>[,<peer-url>...]
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::{ClusterState, ServerConfig};
use crate::ids;
use crate::members::{MemberRecord, Registry};
use crate::transport::ClusterView;

/// The cluster as this member knows it at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The cluster ID.
    pub cluster_id: u64,
    /// This member's ID.
    pub member_id: u64,
    /// The members the cluster was bootstrapped with (its configuration at index 0).
    pub initial: Registry,
    /// For a member that is joining now: the members as the peer it asked knew them (whom
    /// to talk to until its log says otherwise).
    pub joined: Option<Registry>,
    /// True if the member had state already (a restart).
    pub restarted: bool,
}

/// Why a member cannot start with this configuration and data directory.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The data directory cannot be read or written.
    #[error("data directory {path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The cluster file is damaged.
    #[error("{path}: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The flags do not describe a cluster this member can start.
    #[error("{0}")]
    Config(String),
}

fn cluster_file(data_dir: &Path) -> PathBuf {
    data_dir.join("member").join("cluster")
}

/// True when the member must join a running cluster: `--initial-cluster-state existing`
/// and no state in the data directory yet.
pub fn must_join(config: &ServerConfig) -> bool {
    config.initial_cluster_state == ClusterState::Existing
        && !cluster_file(&config.data_dir).exists()
}

/// The peer URLs to ask about the cluster when joining: every other member's in
/// `--initial-cluster`.
pub fn join_urls(config: &ServerConfig) -> Vec<String> {
    config
        .initial_cluster
        .iter()
        .filter(|member| member.name != config.name)
        .flat_map(|member| member.peer_urls.iter().cloned())
        .collect()
}

/// Reads the cluster from the data directory, or creates it from the flags on first start
/// (for a member that joins, see [`join`]).
pub fn load_or_create(config: &ServerConfig) -> Result<ClusterInfo, BootstrapError> {
    let path = cluster_file(&config.data_dir);
    if path.exists() {
        let mut info = read(&path)?;
        info.restarted = true;
        return Ok(info);
    }
    let info = from_flags(config)?;
    write(&path, &info)?;
    Ok(info)
}

/// Joins the cluster a member described (`--initial-cluster-state existing`, no state yet):
/// this member must be among its members with `--initial-advertise-peer-urls` (added with
/// MemberAdd), and `--initial-cluster` must list exactly its members' peer URLs.
pub fn join(config: &ServerConfig, view: &ClusterView) -> Result<ClusterInfo, BootstrapError> {
    if config.name.contains(char::is_whitespace) {
        return Err(BootstrapError::Config(format!(
            "--name {:?}: a member name must not contain spaces",
            config.name
        )));
    }
    let corrupt = |what: &str, error: String| {
        BootstrapError::Config(format!(
            "--initial-cluster-state existing: member {:x} described its {what} wrongly: {error}",
            view.member_id
        ))
    };
    let initial = Registry::decode(&view.initial_members)
        .map_err(|error| corrupt("bootstrap members", error))?;
    let members = Registry::decode(&view.members).map_err(|error| corrupt("members", error))?;
    let advertised = &config.initial_advertise_peer_urls;
    let Some(member_id) = members.find_by_peer_urls(advertised) else {
        return Err(BootstrapError::Config(format!(
            "--initial-cluster-state existing: cluster {:x} has no member with peer URLs {} \
             (--initial-advertise-peer-urls); add it first, e.g. `etcdctl member add {} \
             --peer-urls={}`",
            view.cluster_id,
            advertised.join(","),
            config.name,
            advertised.join(",")
        )));
    };
    for entry in &config.initial_cluster {
        if members.find_by_peer_urls(&entry.peer_urls).is_none() {
            return Err(BootstrapError::Config(format!(
                "--initial-cluster: {}={} is not a member of cluster {:x}",
                entry.name,
                entry.peer_urls.join(","),
                view.cluster_id
            )));
        }
    }
    if config.initial_cluster.len() != members.members.len() {
        return Err(BootstrapError::Config(format!(
            "--initial-cluster lists {} members but cluster {:x} has {}: list every current \
             member and this one",
            config.initial_cluster.len(),
            view.cluster_id,
            members.members.len()
        )));
    }
    let info = ClusterInfo {
        cluster_id: view.cluster_id,
        member_id,
        initial,
        joined: Some(members),
        restarted: false,
    };
    write(&cluster_file(&config.data_dir), &info)?;
    Ok(info)
}

/// The cluster `--initial-cluster` describes, with this member identified by `--name`.
pub fn from_flags(config: &ServerConfig) -> Result<ClusterInfo, BootstrapError> {
    let token = &config.initial_cluster_token;
    let mut members: Vec<(u64, String, Vec<String>)> = Vec::new();
    for entry in &config.initial_cluster {
        if entry.name.is_empty() || entry.name.contains(char::is_whitespace) {
            return Err(BootstrapError::Config(format!(
                "--initial-cluster: member name {:?} must be non-empty and without spaces",
                entry.name
            )));
        }
        let id = ids::member_id(&entry.peer_urls, token);
        if members.iter().any(|(other, _, _)| *other == id) {
            return Err(BootstrapError::Config(format!(
                "--initial-cluster: member {} has the same peer URLs as another member",
                entry.name
            )));
        }
        members.push((id, entry.name.clone(), entry.peer_urls.clone()));
    }
    let Some((member_id, _, listed)) = members.iter().find(|(_, name, _)| *name == config.name)
    else {
        return Err(BootstrapError::Config(format!(
            "--initial-cluster has no member named {:?} (--name)",
            config.name
        )));
    };
    let member_id = *member_id;
    let mut advertised = config.initial_advertise_peer_urls.clone();
    let mut listed = listed.clone();
    advertised.sort();
    listed.sort();
    if advertised != listed {
        return Err(BootstrapError::Config(format!(
            "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}",
            config.name,
            listed.join(","),
            advertised.join(",")
        )));
    }
    let all: Vec<u64> = members.iter().map(|(id, _, _)| *id).collect();
    let initial = Registry {
        members: members
            .into_iter()
            .map(|(id, name, peer_urls)| (id, MemberRecord { name, peer_urls }))
            .collect(),
    };
    Ok(ClusterInfo {
        cluster_id: ids::cluster_id(&all),
        member_id,
        initial,
        joined: None,
        restarted: false,
    })
}

fn write(path: &Path, info: &ClusterInfo) -> Result<(), BootstrapError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |error| BootstrapError::Io { path, error }
    };
    let dir = path.parent().expect("member directory");
    fs::create_dir_all(dir).map_err(io(dir))?;
    let mut text = format!(
        "skiff-cluster 1\ncluster {:x}\nself {:x}\n",
        info.cluster_id, info.member_id
    );
    text.push_str(&info.initial.encode());
    let temporary = path.with_extension("tmp");
    let mut file = fs::File::create(&temporary).map_err(io(&temporary))?;
    file.write_all(text.as_bytes()).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    fs::rename(&temporary, path).map_err(io(path))?;
    fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

fn read(path: &Path) -> Result<ClusterInfo, BootstrapError> {
    let text = fs::read_to_string(path).map_err(|error| BootstrapError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    let corrupt = |line: usize, reason: &str| BootstrapError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("line {}: {reason}", line + 1),
    };
    let hex = |line: usize, value: Option<&str>| {
        value
            .and_then(|value| u64::from_str_radix(value, 16).ok())
            .ok_or_else(|| corrupt(line, "expected a hexadecimal id"))
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, "skiff-cluster 1")) => {}
        _ => return Err(corrupt(0, "not a skiff cluster file (version 1)")),
    }
    let (mut cluster_id, mut member_id, mut initial) = (None, None, Registry::default());
    for (number, line) in lines {
        let mut fields = line.split(' ');
        match fields.next() {
            Some("cluster") => cluster_id = Some(hex(number, fields.next())?),
            Some("self") => member_id = Some(hex(number, fields.next())?),
            Some("member") => initial
                .decode_line(line)
                .map_err(|reason| corrupt(number, &reason))?,
            _ => return Err(corrupt(number, "unknown line")),
        }
    }
    let cluster_id = cluster_id.ok_or_else(|| corrupt(1, "no cluster line"))?;
    let member_id = member_id.ok_or_else(|| corrupt(2, "no self line"))?;
    if initial.members.is_empty() {
        return Err(corrupt(3, "no members"));
    }
    Ok(ClusterInfo {
        cluster_id,
        member_id,
        initial,
        joined: None,
        restarted: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InitialMember;

    fn config(dir: &Path, name: &str) -> ServerConfig {
        let mut config = ServerConfig::with_defaults(name);
        config.data_dir = dir.to_path_buf();
        config.initial_cluster = (1..=3)
            .map(|i| InitialMember {
                name: format!("m{i}"),
                peer_urls: vec![format!("http://127.0.0.1:{}", 2380 + i)],
            })
            .collect();
        let index: u16 = name[1..].parse().unwrap();
        config.initial_advertise_peer_urls = vec![format!("http://127.0.0.1:{}", 2380 + index)];
        config
    }

    #[test]
    fn first_start_writes_the_cluster_and_restarts_ignore_the_flags() {
        let dir = std::env::temp_dir().join(format!("skiff-bootstrap-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let first = load_or_create(&config(&dir, "m2")).unwrap();
        assert!(!first.restarted);
        assert_eq!(first.initial.members.len(), 3);
        let mut changed = config(&dir, "m2");
        changed.initial_cluster.truncate(2);
        changed.initial_cluster_token = "other".into();
        let again = load_or_create(&changed).unwrap();
        assert!(again.restarted);
        assert_eq!(again.cluster_id, first.cluster_id);
        assert_eq!(again.member_id, first.member_id);
        assert_eq!(again.initial, first.initial);
        fs::write(cluster_file(&dir), "skiff-cluster 1\ncluster zz\n").unwrap();
        let error = load_or_create(&changed).unwrap_err().to_string();
        assert!(
            error.contains("cluster") && error.contains("line 2"),
            "{error}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_flags_must_name_this_member_with_its_advertised_urls() {
        let dir = Path::new("/nonexistent");
        let mut bad = config(dir, "m1");
        bad.name = "m9".into();
        assert!(from_flags(&bad)
            .unwrap_err()
            .to_string()
            .contains("no member named"));
        let mut bad = config(dir, "m1");
        bad.initial_advertise_peer_urls = vec!["http://127.0.0.1:9".into()];
        let error = from_flags(&bad).unwrap_err().to_string();
        assert!(error.contains("--initial-advertise-peer-urls"), "{error}");
    }

    #[test]
    fn a_joining_member_must_have_been_added_and_list_every_member() {
        let dir = std::env::temp_dir().join(format!("skiff-join-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let founder = from_flags(&config(&dir, "m1")).unwrap();
        let mut members = founder.initial.clone();
        let view = |members: &Registry| ClusterView {
            cluster_id: founder.cluster_id,
            member_id: founder.member_id,
            initial_members: founder.initial.encode(),
            members: members.encode(),
        };
        let mut joiner = config(&dir, "m1");
        joiner.name = "m4".into();
        joiner.initial_cluster_state = ClusterState::Existing;
        joiner.initial_advertise_peer_urls = vec!["http://127.0.0.1:2384".into()];
        joiner.initial_cluster.push(InitialMember {
            name: "m4".into(),
            peer_urls: joiner.initial_advertise_peer_urls.clone(),
        });
        assert!(must_join(&joiner));
        assert_eq!(join_urls(&joiner).len(), 3);
        let error = join(&joiner, &view(&members)).unwrap_err().to_string();
        assert!(error.contains("member add"), "{error}");

        members.members.insert(
            0x44,
            MemberRecord {
                name: String::new(),
                peer_urls: joiner.initial_advertise_peer_urls.clone(),
            },
        );
        let mut short = joiner.clone();
        short.initial_cluster.remove(0);
        let error = join(&short, &view(&members)).unwrap_err().to_string();
        assert!(error.contains("--initial-cluster lists 3"), "{error}");

        let mut spaced = joiner.clone();
        spaced.name = "m 4".into();
        let error = join(&spaced, &view(&members)).unwrap_err().to_string();
        assert!(error.contains("--name"), "{error}");

        let info = join(&joiner, &view(&members)).unwrap();
        assert_eq!(info.member_id, 0x44);
        assert_eq!(info.cluster_id, founder.cluster_id);
        assert_eq!(info.initial, founder.initial);
        assert_eq!(info.joined, Some(members));
        assert!(!must_join(&joiner), "the cluster file now exists");
        let again = load_or_create(&joiner).unwrap();
        assert!(again.restarted);
        assert_eq!(again.member_id, 0x44);
        let _ = fs::remove_dir_all(&dir);
    }
}

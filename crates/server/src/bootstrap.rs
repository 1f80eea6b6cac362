//! Who is in the cluster, decided once: on the first start from `--initial-cluster`, later
//! from the member's own data directory (etcd's rule: once a member has state, the
//! `--initial-cluster*` flags are ignored, so restarting with the original command line is
//! always safe).
//!
//! `<data-dir>/member/cluster` is a small text file written atomically before the log:
//! ```text
//! skiff-cluster 1
//! cluster <hex id>
//! self <hex id>
//! member <hex id> <name> <peer-url>[,<peer-url>...]
//! ```

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::backend::MemberInfo;
use crate::config::{ClusterState, ServerConfig};
use crate::ids;

/// The cluster as this member knows it at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The cluster ID.
    pub cluster_id: u64,
    /// This member's ID.
    pub member_id: u64,
    /// Every member, this one included (client URLs filled for this member only).
    pub members: Vec<MemberInfo>,
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

/// Reads the cluster from the data directory, or creates it from the flags on first start.
pub fn load_or_create(config: &ServerConfig) -> Result<ClusterInfo, BootstrapError> {
    let path = cluster_file(&config.data_dir);
    if path.exists() {
        let mut info = read(&path)?;
        info.restarted = true;
        for member in &mut info.members {
            if member.id == info.member_id {
                member.name = config.name.clone();
                member.client_urls = config.advertise_client_urls.clone();
            }
        }
        return Ok(info);
    }
    if config.initial_cluster_state == ClusterState::Existing {
        return Err(BootstrapError::Config(
            "--initial-cluster-state existing: joining a running cluster needs membership \
             changes (MemberAdd), which this version of skiff does not support yet"
                .into(),
        ));
    }
    let info = from_flags(config)?;
    write(&path, &info)?;
    Ok(info)
}

/// The cluster `--initial-cluster` describes, with this member identified by `--name`.
pub fn from_flags(config: &ServerConfig) -> Result<ClusterInfo, BootstrapError> {
    let token = &config.initial_cluster_token;
    let mut members: Vec<MemberInfo> = Vec::new();
    for entry in &config.initial_cluster {
        if entry.name.is_empty() || entry.name.contains(char::is_whitespace) {
            return Err(BootstrapError::Config(format!(
                "--initial-cluster: member name {:?} must be non-empty and without spaces",
                entry.name
            )));
        }
        let id = ids::member_id(&entry.peer_urls, token);
        if members.iter().any(|member| member.id == id) {
            return Err(BootstrapError::Config(format!(
                "--initial-cluster: member {} has the same peer URLs as another member",
                entry.name
            )));
        }
        members.push(MemberInfo {
            id,
            name: entry.name.clone(),
            peer_urls: entry.peer_urls.clone(),
            client_urls: Vec::new(),
            is_learner: false,
        });
    }
    let Some(me) = members.iter_mut().find(|member| member.name == config.name) else {
        return Err(BootstrapError::Config(format!(
            "--initial-cluster has no member named {:?} (--name)",
            config.name
        )));
    };
    let mut advertised = config.initial_advertise_peer_urls.clone();
    let mut listed = me.peer_urls.clone();
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
    me.client_urls = config.advertise_client_urls.clone();
    let member_id = me.id;
    let all: Vec<u64> = members.iter().map(|member| member.id).collect();
    Ok(ClusterInfo {
        cluster_id: ids::cluster_id(&all),
        member_id,
        members,
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
    for member in &info.members {
        text.push_str(&format!(
            "member {:x} {} {}\n",
            member.id,
            member.name,
            member.peer_urls.join(",")
        ));
    }
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
    let (mut cluster_id, mut member_id, mut members) = (None, None, Vec::new());
    for (number, line) in lines {
        let mut fields = line.split(' ');
        match fields.next() {
            Some("cluster") => cluster_id = Some(hex(number, fields.next())?),
            Some("self") => member_id = Some(hex(number, fields.next())?),
            Some("member") => {
                let id = hex(number, fields.next())?;
                let name = fields.next().ok_or_else(|| corrupt(number, "no name"))?;
                let urls = fields
                    .next()
                    .ok_or_else(|| corrupt(number, "no peer URLs"))?;
                members.push(MemberInfo {
                    id,
                    name: name.to_string(),
                    peer_urls: urls.split(',').map(str::to_string).collect(),
                    client_urls: Vec::new(),
                    is_learner: false,
                });
            }
            _ => return Err(corrupt(number, "unknown line")),
        }
    }
    let cluster_id = cluster_id.ok_or_else(|| corrupt(1, "no cluster line"))?;
    let member_id = member_id.ok_or_else(|| corrupt(2, "no self line"))?;
    if !members.iter().any(|member| member.id == member_id) {
        return Err(corrupt(2, "this member is not among the members"));
    }
    Ok(ClusterInfo {
        cluster_id,
        member_id,
        members,
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
        assert_eq!(first.members.len(), 3);
        let mut changed = config(&dir, "m2");
        changed.initial_cluster.truncate(2);
        changed.initial_cluster_token = "other".into();
        let again = load_or_create(&changed).unwrap();
        assert!(again.restarted);
        assert_eq!(again.cluster_id, first.cluster_id);
        assert_eq!(again.member_id, first.member_id);
        let ids = |info: &ClusterInfo| info.members.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(&again), ids(&first));
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
        let mut existing = config(dir, "m1");
        existing.initial_cluster_state = ClusterState::Existing;
        existing.data_dir = std::env::temp_dir().join("skiff-bootstrap-never-created");
        assert!(load_or_create(&existing).is_err());
    }
}

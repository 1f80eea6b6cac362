//! The member registry: who the members are (ID, name, peer URLs), replicated with the
//! configuration changes that add, remove or update them.
//!
//! Raft's configuration entries say who votes; the registry says how to reach each member.
//! Every configuration entry the server proposes carries the whole registry as its context
//! (skiff-raft's `MembershipChange::context`), so the registry in force at any index is the
//! context of the last configuration entry up to it. Snapshots start with the registry in
//! force at their index ([`write_snapshot_prefix`]), before the store's own data.
//!
//! Text form, one member per line (also used by the cluster file, see `bootstrap`):
//! ```text
//! member <hex id> <name> <peer-url>[,<peer-url>...]
//! ```
//! The name is empty for a member that was added but has not been heard from.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};

use skiff_raft::{Entry, EntryKind, NodeId};

/// One member as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    /// `--name`, empty until the member has started (as far as the proposer knew).
    pub name: String,
    /// Its peer URLs.
    pub peer_urls: Vec<String>,
}

/// Every member of the cluster by ID.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registry {
    /// The members.
    pub members: BTreeMap<NodeId, MemberRecord>,
}

/// Magic that opens a snapshot written by this server (registry first, then the store).
const SNAPSHOT_MAGIC: &[u8; 8] = b"skiffmb1";
/// Largest registry accepted in a snapshot prefix.
const MAX_REGISTRY_BYTES: u32 = 16 << 20;

impl Registry {
    /// The member whose peer URLs are exactly `urls` (in any order).
    pub fn find_by_peer_urls(&self, urls: &[String]) -> Option<NodeId> {
        let wanted = sorted(urls);
        self.members
            .iter()
            .find(|(_, record)| sorted(&record.peer_urls) == wanted)
            .map(|(id, _)| *id)
    }

    /// A member other than `except` that uses one of `urls`.
    pub fn url_in_use(&self, urls: &[String], except: Option<NodeId>) -> bool {
        self.members.iter().any(|(id, record)| {
            Some(*id) != except && record.peer_urls.iter().any(|url| urls.contains(url))
        })
    }

    /// The text form (see the module documentation).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        for (id, record) in &self.members {
            text.push_str(&format!(
                "member {id:x} {} {}\n",
                record.name,
                record.peer_urls.join(",")
            ));
        }
        text
    }

    /// Parses the text form; `Err` names the line and what is wrong.
    pub fn decode(text: &str) -> Result<Registry, String> {
        let mut registry = Registry::default();
        for (number, line) in text.lines().enumerate() {
            registry
                .decode_line(line)
                .map_err(|reason| format!("line {}: {reason}", number + 1))?;
        }
        Ok(registry)
    }

    /// Adds the member a `member ...` line describes.
    pub fn decode_line(&mut self, line: &str) -> Result<(), String> {
        let mut fields = line.split(' ');
        if fields.next() != Some("member") {
            return Err("expected a member line".into());
        }
        let id = fields
            .next()
            .and_then(|id| u64::from_str_radix(id, 16).ok())
            .filter(|id| *id != 0)
            .ok_or("expected a non-zero hexadecimal id")?;
        let name = fields.next().ok_or("no name")?;
        let urls = fields.next().filter(|urls| !urls.is_empty());
        let urls = urls.ok_or("no peer URLs")?;
        if fields.next().is_some() {
            return Err("unexpected fields after the peer URLs".into());
        }
        let record = MemberRecord {
            name: name.to_string(),
            peer_urls: urls.split(',').map(str::to_string).collect(),
        };
        if self.members.insert(id, record).is_some() {
            return Err(format!("member {id:x} listed twice"));
        }
        Ok(())
    }

    /// The registry a configuration entry carries, if it is one with a registry context.
    pub fn from_entry(entry: &Entry) -> Option<Registry> {
        if entry.kind != EntryKind::ConfigChange {
            return None;
        }
        let (_, context) = skiff_raft::decode_membership_context(&entry.data).ok()?;
        if context.is_empty() {
            return None;
        }
        match std::str::from_utf8(context)
            .map_err(|error| error.to_string())
            .and_then(Registry::decode)
        {
            Ok(registry) => Some(registry),
            Err(error) => {
                tracing::error!(index = entry.index, %error, "undecodable member registry");
                None
            }
        }
    }
}

fn sorted(urls: &[String]) -> Vec<&str> {
    let mut urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    urls.sort_unstable();
    urls
}

/// Writes the start of a member snapshot: magic, registry length, registry text, CRC32C.
pub fn write_snapshot_prefix(registry: &Registry, mut writer: impl Write) -> io::Result<()> {
    let text = registry.encode();
    writer.write_all(SNAPSHOT_MAGIC)?;
    writer.write_all(&(text.len() as u32).to_le_bytes())?;
    writer.write_all(text.as_bytes())?;
    writer.write_all(&crc32c::crc32c(text.as_bytes()).to_le_bytes())
}

/// Reads the registry at the start of a member snapshot, leaving `reader` at the store's
/// data. A snapshot without the prefix (written before registries existed) yields `None`.
pub fn read_snapshot_prefix(reader: &mut impl BufRead) -> io::Result<Option<Registry>> {
    let invalid = |reason: String| io::Error::new(io::ErrorKind::InvalidData, reason);
    if !reader.fill_buf()?.starts_with(SNAPSHOT_MAGIC) {
        return Ok(None);
    }
    let mut header = [0u8; 12];
    reader.read_exact(&mut header)?;
    let length = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    if length > MAX_REGISTRY_BYTES {
        return Err(invalid(format!("member registry of {length} bytes")));
    }
    let mut text = vec![0u8; length as usize];
    reader.read_exact(&mut text)?;
    let mut crc = [0u8; 4];
    reader.read_exact(&mut crc)?;
    if crc32c::crc32c(&text) != u32::from_le_bytes(crc) {
        return Err(invalid("member registry checksum mismatch".into()));
    }
    let text = String::from_utf8(text).map_err(|error| invalid(error.to_string()))?;
    Registry::decode(&text)
        .map(Some)
        .map_err(|error| invalid(format!("member registry: {error}")))
}

/// The registries of the configuration entries a member's log holds past its applied
/// index, over the registry in force at the applied index: the registry in force is the
/// last one, exactly as Raft's configuration in force is its last configuration entry.
#[derive(Clone, Debug, Default)]
pub struct RegistryLog {
    applied: Registry,
    pending: BTreeMap<u64, Registry>,
}

impl RegistryLog {
    /// A log whose registry at the applied index is `applied`.
    pub fn new(applied: Registry) -> RegistryLog {
        RegistryLog {
            applied,
            pending: BTreeMap::new(),
        }
    }

    /// Entries appended to the log (they replace any from their first index on). Returns
    /// the registries they carry.
    pub fn append(&mut self, entries: &[Entry]) -> Vec<&Registry> {
        let Some(first) = entries.first() else {
            return Vec::new();
        };
        self.pending.split_off(&first.index);
        let mut added = Vec::new();
        for entry in entries {
            if let Some(registry) = Registry::from_entry(entry) {
                self.pending.insert(entry.index, registry);
                added.push(entry.index);
            }
        }
        added.iter().map(|index| &self.pending[index]).collect()
    }

    /// Entries up to `index` were applied.
    pub fn applied(&mut self, index: u64) {
        let later = self.pending.split_off(&(index + 1));
        if let Some((_, registry)) = std::mem::replace(&mut self.pending, later).pop_last() {
            self.applied = registry;
        }
    }

    /// A snapshot at `index` carrying `registry` replaced the log.
    pub fn install(&mut self, registry: Registry) {
        self.pending.clear();
        self.applied = registry;
    }

    /// The registry in force: the last one in the log.
    pub fn current(&self) -> &Registry {
        self.pending
            .last_key_value()
            .map_or(&self.applied, |(_, registry)| registry)
    }
}

/// A membership change a client asked for (etcd's Cluster API), as forwarded to the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberRequest {
    /// MemberAdd.
    Add {
        /// The new member's peer URLs.
        peer_urls: Vec<String>,
        /// Add it as a learner.
        learner: bool,
    },
    /// MemberRemove.
    Remove {
        /// The member.
        id: NodeId,
    },
    /// MemberUpdate (new peer URLs).
    Update {
        /// The member.
        id: NodeId,
        /// Its new peer URLs.
        peer_urls: Vec<String>,
    },
    /// MemberPromote (learner to voter).
    Promote {
        /// The learner.
        id: NodeId,
    },
}

/// First byte of a forwarded membership request; forwarded writes start with the store's
/// command format version, which is never this.
pub const MEMBER_REQUEST_TAG: u8 = b'M';

impl MemberRequest {
    /// The forwarded form: tag, kind, member ID (big-endian), learner flag, then the peer
    /// URLs separated by newlines.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, id, learner, urls): (u8, u64, bool, &[String]) = match self {
            MemberRequest::Add { peer_urls, learner } => (0, 0, *learner, peer_urls),
            MemberRequest::Remove { id } => (1, *id, false, &[]),
            MemberRequest::Update { id, peer_urls } => (2, *id, false, peer_urls),
            MemberRequest::Promote { id } => (3, *id, false, &[]),
        };
        let mut out = vec![MEMBER_REQUEST_TAG, kind];
        out.extend_from_slice(&id.to_be_bytes());
        out.push(learner as u8);
        out.extend_from_slice(urls.join("\n").as_bytes());
        out
    }

    /// Decodes [`MemberRequest::encode`]'s output; `None` for anything else.
    pub fn decode(bytes: &[u8]) -> Option<MemberRequest> {
        if bytes.len() < 11 || bytes[0] != MEMBER_REQUEST_TAG {
            return None;
        }
        let id = u64::from_be_bytes(bytes[2..10].try_into().ok()?);
        let learner = match bytes[10] {
            0 => false,
            1 => true,
            _ => return None,
        };
        let text = std::str::from_utf8(&bytes[11..]).ok()?;
        let urls: Vec<String> = if text.is_empty() {
            Vec::new()
        } else {
            text.split('\n').map(str::to_string).collect()
        };
        Some(match bytes[1] {
            0 => MemberRequest::Add {
                peer_urls: urls,
                learner,
            },
            1 => MemberRequest::Remove { id },
            2 => MemberRequest::Update {
                id,
                peer_urls: urls,
            },
            3 => MemberRequest::Promote { id },
            _ => return None,
        })
    }
}

/// Checks peer URLs as etcd does before a MemberAdd or MemberUpdate: at least one, each
/// `http://` or `https://` with a host and a port, no path.
pub fn valid_peer_urls(urls: &[String]) -> bool {
    !urls.is_empty()
        && urls.iter().all(|url| {
            let Some(rest) = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
            else {
                return false;
            };
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let Some((host, port)) = rest.rsplit_once(':') else {
                return false;
            };
            !host.is_empty()
                && !host.contains(['/', ' ', ','])
                && port.parse::<u16>().is_ok_and(|port| port != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use skiff_raft::{encode_membership_with_context, Membership};
    use std::io::Read;

    fn registry() -> Registry {
        let mut registry = Registry::default();
        registry.members.insert(
            0xabc,
            MemberRecord {
                name: "m1".into(),
                peer_urls: vec!["http://a:1".into(), "http://b:2".into()],
            },
        );
        registry.members.insert(
            7,
            MemberRecord {
                name: String::new(),
                peer_urls: vec!["http://c:3".into()],
            },
        );
        registry
    }

    #[test]
    fn text_round_trips_and_bad_lines_name_their_number() {
        let registry = registry();
        assert_eq!(Registry::decode(&registry.encode()), Ok(registry.clone()));
        let error = Registry::decode("member 1 a http://x\nmember zz a http://y\n").unwrap_err();
        assert!(error.starts_with("line 2"), "{error}");
        assert!(Registry::decode("member 1 a http://x\nmember 1 b http://y\n").is_err());
        assert!(Registry::decode("member 0 a http://x\n").is_err());
        assert!(Registry::decode("member 1 a\n").is_err());
        assert_eq!(
            registry.find_by_peer_urls(&["http://b:2".into(), "http://a:1".into()]),
            Some(0xabc)
        );
        assert_eq!(registry.find_by_peer_urls(&["http://a:1".into()]), None);
        assert!(registry.url_in_use(&["http://c:3".into()], None));
        assert!(!registry.url_in_use(&["http://c:3".into()], Some(7)));
    }

    #[test]
    fn configuration_entries_carry_the_registry() {
        let registry = registry();
        let entry = Entry {
            term: 2,
            index: 9,
            kind: EntryKind::ConfigChange,
            data: encode_membership_with_context(
                &Membership::new([7, 0xabc]),
                registry.encode().as_bytes(),
            ),
        };
        assert_eq!(Registry::from_entry(&entry), Some(registry));
        let plain = Entry {
            data: skiff_raft::encode_membership(&Membership::new([7])),
            ..entry.clone()
        };
        assert_eq!(Registry::from_entry(&plain), None);
        let normal = Entry {
            kind: EntryKind::Normal,
            data: Bytes::from_static(b"x"),
            ..entry
        };
        assert_eq!(Registry::from_entry(&normal), None);
    }

    fn config_entry(index: u64, registry: &Registry) -> Entry {
        Entry {
            term: 1,
            index,
            kind: EntryKind::ConfigChange,
            data: encode_membership_with_context(
                &Membership::new(registry.members.keys().copied()),
                registry.encode().as_bytes(),
            ),
        }
    }

    #[test]
    fn the_registry_in_force_follows_appends_truncations_and_applies() {
        let base = registry();
        let mut grown = base.clone();
        grown.members.insert(
            9,
            MemberRecord {
                name: String::new(),
                peer_urls: vec!["http://d:4".into()],
            },
        );
        let mut log = RegistryLog::new(base.clone());
        let normal = |index| Entry {
            term: 1,
            index,
            kind: EntryKind::Normal,
            data: Bytes::new(),
        };
        assert_eq!(log.append(&[normal(1), config_entry(2, &grown)]).len(), 1);
        assert_eq!(log.current(), &grown);
        // A new leader's entries replace the uncommitted configuration entry.
        assert!(log.append(&[normal(2)]).is_empty());
        assert_eq!(log.current(), &base);
        log.append(&[config_entry(3, &grown)]);
        log.applied(2);
        assert_eq!(log.current(), &grown, "entry 3 is still in force");
        log.applied(3);
        log.append(&[normal(4)]);
        assert_eq!(log.current(), &grown, "applied registries stay");
        log.install(base.clone());
        assert_eq!(log.current(), &base);
    }

    #[test]
    fn member_requests_round_trip_and_garbage_is_refused() {
        let urls = vec!["http://a:1".to_string(), "https://b:2".to_string()];
        for request in [
            MemberRequest::Add {
                peer_urls: urls.clone(),
                learner: true,
            },
            MemberRequest::Remove { id: u64::MAX },
            MemberRequest::Update {
                id: 5,
                peer_urls: urls.clone(),
            },
            MemberRequest::Promote { id: 6 },
        ] {
            let bytes = request.encode();
            assert_eq!(MemberRequest::decode(&bytes), Some(request));
            for cut in 0..11 {
                assert_eq!(MemberRequest::decode(&bytes[..cut]), None);
            }
        }
        assert_eq!(
            MemberRequest::decode(&[b'M', 9, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            None
        );
        assert_eq!(
            MemberRequest::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
            None
        );
    }

    #[test]
    fn peer_urls_must_be_http_with_host_and_port() {
        let ok = |url: &str| valid_peer_urls(&[url.to_string()]);
        assert!(ok("http://127.0.0.1:2380"));
        assert!(ok("https://node-4.example:12380"));
        assert!(!ok("127.0.0.1:2380"));
        assert!(!ok("http://127.0.0.1"));
        assert!(!ok("http://127.0.0.1:0"));
        assert!(!ok("http://:2380"));
        assert!(!ok("unix://x:1"));
        assert!(!valid_peer_urls(&[]));
    }

    #[test]
    fn snapshot_prefix_round_trips_and_old_snapshots_have_none() {
        let registry = registry();
        let mut data = Vec::new();
        write_snapshot_prefix(&registry, &mut data).unwrap();
        data.extend_from_slice(b"STORE");
        let mut reader = io::BufReader::new(&data[..]);
        assert_eq!(read_snapshot_prefix(&mut reader).unwrap(), Some(registry));
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"STORE");

        let mut old = io::BufReader::new(&b"skiffkv1...."[..]);
        assert_eq!(read_snapshot_prefix(&mut old).unwrap(), None);

        let mut corrupt = data.clone();
        corrupt[14] ^= 1;
        let error = read_snapshot_prefix(&mut io::BufReader::new(&corrupt[..])).unwrap_err();
        assert!(error.to_string().contains("checksum"), "{error}");
    }
}

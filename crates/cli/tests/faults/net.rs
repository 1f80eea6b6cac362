//! One network namespace per member, wired so the test can cut peer traffic without ever cutting
//! its own clients off.
//!
//! Layout for a cluster whose prefix is `P` (derived from the test's pid and a counter) and whose
//! private /24 is `10.A.B.0/24` (chosen free at setup):
//!
//! ```text
//!  root namespace                                   namespace Pn<i> (member i)
//!  Pc<i>  10.A.B.(4i+2)/30  <== veth (clients) ==>  cli   10.A.B.(4i+1)/30   client URL :2379
//!  Pp<i>  (no address)      <== veth (peers)   ==>  peer  10.A.B.(129+i)/25  peer URL   :2380
//!    `-- enslaved to bridge Pba (the "majority" side) or Pbb (the "minority" side)
//! ```
//!
//! The client links are point-to-point and never touched, and the root namespace does not forward
//! (each namespace only has a route to its own /30 and to the peer /25), so members can reach each
//! other only through the bridges. A partition moves the root ends of some peer links to the
//! other bridge; a link fault sets a root end down. Ports can be fixed because every namespace has
//! its own network stack that no other run can see.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Runs `ip` with `args`; an error carries the command line and its stderr.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|error| format!("ip {}: {error}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn ip_output(args: &[&str]) -> String {
    Command::new("ip")
        .args(args)
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default()
}

/// Names start with this, then the owning pid in hex, then `x`, then a per-process counter.
const NAME_PREFIX: &str = "sf";

/// The namespaces, veths and bridges of one cluster. Dropping it removes them all.
pub struct Netns {
    prefix: String,
    subnet: [u8; 2],
    members: usize,
}

impl Netns {
    /// Creates the namespaces and links for `members` members. On error, whatever was created is
    /// removed again.
    pub fn create(members: usize) -> Result<Netns, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        remove_stale();
        let counter = COUNTER.fetch_add(1, Ordering::Relaxed) % 10;
        let pid = std::process::id();
        let prefix = format!("{NAME_PREFIX}{pid:x}x{counter}");
        let subnet = free_subnet(pid, counter)?;
        let netns = Netns {
            prefix,
            subnet,
            members,
        };
        netns.build()?;
        Ok(netns)
    }

    fn build(&self) -> Result<(), String> {
        for bridge in [self.bridge(false), self.bridge(true)] {
            ip(&["link", "add", &bridge, "type", "bridge"])?;
            ip(&["link", "set", &bridge, "up"])?;
        }
        for member in 0..self.members {
            let ns = self.namespace(member);
            ip(&["netns", "add", &ns])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;

            let client_root = format!("{}c{member}", self.prefix);
            ip(&[
                "link",
                "add",
                &client_root,
                "type",
                "veth",
                "peer",
                "name",
                "cli",
                "netns",
                &ns,
            ])?;
            let root_address = format!("{}/30", self.address(4 * member as u8 + 2));
            ip(&["addr", "add", &root_address, "dev", &client_root])?;
            ip(&["link", "set", &client_root, "up"])?;
            let ns_address = format!("{}/30", self.client_ip(member));
            ip(&["-n", &ns, "addr", "add", &ns_address, "dev", "cli"])?;
            ip(&["-n", &ns, "link", "set", "cli", "up"])?;

            let peer_root = self.peer_link(member);
            ip(&[
                "link", "add", &peer_root, "type", "veth", "peer", "name", "peer", "netns", &ns,
            ])?;
            ip(&["link", "set", &peer_root, "master", &self.bridge(false)])?;
            ip(&["link", "set", &peer_root, "up"])?;
            let peer_address = format!("{}/25", self.peer_ip(member));
            ip(&["-n", &ns, "addr", "add", &peer_address, "dev", "peer"])?;
            ip(&["-n", &ns, "link", "set", "peer", "up"])?;
        }
        Ok(())
    }

    /// The namespace member `member` runs in.
    pub fn namespace(&self, member: usize) -> String {
        format!("{}n{member}", self.prefix)
    }

    /// The address member `member` serves clients on (reachable from the root namespace).
    pub fn client_ip(&self, member: usize) -> String {
        self.address(4 * member as u8 + 1)
    }

    /// The address member `member` talks to its peers on.
    pub fn peer_ip(&self, member: usize) -> String {
        self.address(129 + member as u8)
    }

    /// The /24 this cluster uses, for the report.
    pub fn describe(&self) -> String {
        format!(
            "namespaces {}n0..{}n{}, 10.{}.{}.0/24",
            self.prefix,
            self.prefix,
            self.members - 1,
            self.subnet[0],
            self.subnet[1]
        )
    }

    fn address(&self, last: u8) -> String {
        format!("10.{}.{}.{last}", self.subnet[0], self.subnet[1])
    }

    fn bridge(&self, minority: bool) -> String {
        format!("{}b{}", self.prefix, if minority { "b" } else { "a" })
    }

    fn peer_link(&self, member: usize) -> String {
        format!("{}p{member}", self.prefix)
    }

    /// Puts the members in `cut` on one bridge and everyone else on the other: the two groups can
    /// no longer reach each other. An empty `cut` heals every partition.
    pub fn partition(&self, cut: &[usize]) -> Result<(), String> {
        for member in 0..self.members {
            let bridge = self.bridge(cut.contains(&member));
            ip(&["link", "set", &self.peer_link(member), "master", &bridge])?;
        }
        Ok(())
    }

    /// Sets member `member`'s peer link down (`up = false`) or up again.
    pub fn set_link(&self, member: usize, up: bool) -> Result<(), String> {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.peer_link(member), state])
    }

    /// Undoes every partition and link fault.
    pub fn heal(&self) -> Result<(), String> {
        self.partition(&[])?;
        for member in 0..self.members {
            self.set_link(member, true)?;
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_with_prefix(&self.prefix);
    }
}

/// Deletes every namespace and link whose name starts with `prefix`. Deleting a namespace
/// destroys the veth ends inside it and so the pairs; the root ends and bridges go explicitly.
fn remove_with_prefix(prefix: &str) {
    for ns in ip_output(&["netns", "list"]).lines() {
        let name = ns.split_whitespace().next().unwrap_or_default();
        if name.starts_with(prefix) {
            let _ = ip(&["netns", "del", name]);
        }
    }
    for line in ip_output(&["-o", "link", "show"]).lines() {
        // "12: name@if11: <...>" or "12: name: <...>"
        let Some(name) = line.split(": ").nth(1) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or_default();
        if name.starts_with(prefix) {
            let _ = ip(&["link", "del", name]);
        }
    }
}

/// Removes what earlier runs that died without cleaning up (SIGKILL, abort) left behind: names of
/// this scheme whose pid no longer exists.
fn remove_stale() {
    let mut stale = std::collections::BTreeSet::new();
    let names = ip_output(&["netns", "list"]) + &ip_output(&["-o", "link", "show"]);
    for word in names.split(|c: char| c.is_whitespace() || c == ':' || c == '@') {
        let Some(rest) = word.strip_prefix(NAME_PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('x') else {
            continue;
        };
        if let Ok(pid) = u32::from_str_radix(pid, 16) {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                stale.insert(format!("{NAME_PREFIX}{pid:x}x"));
            }
        }
    }
    for prefix in stale {
        remove_with_prefix(&prefix);
    }
}

/// A 10.A.B.0/24 derived from the pid and counter that no interface on the host uses yet.
fn free_subnet(pid: u32, counter: u32) -> Result<[u8; 2], String> {
    let used = ip_output(&["-o", "addr", "show"]) + &ip_output(&["route", "show"]);
    let mut hash = u64::from(pid) << 8 | u64::from(counter);
    for _ in 0..64 {
        hash = hash.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5bd1_e995;
        let a = 16 + (hash % 224) as u8;
        let b = ((hash >> 16) % 256) as u8;
        if !used.contains(&format!("10.{a}.{b}.")) {
            return Ok([a, b]);
        }
    }
    Err("no free 10.x.y.0/24 subnet".to_string())
}

/// Whether this process can create namespaces: `ip` exists and we are allowed to use it.
pub fn available() -> Result<(), String> {
    let probe = format!("{NAME_PREFIX}{:x}xprobe", std::process::id());
    ip(&["netns", "add", &probe])?;
    ip(&["netns", "del", &probe])
}

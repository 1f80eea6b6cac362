//! Shared helpers for process-based tests: start a cluster of N etcd or Skiff members on free
//! loopback ports, run `etcdctl` against it with bounded waits, and mask its output.
//!
//! Include with `mod support;`. Every process started here is killed (SIGKILL, then waited for)
//! when its [`Cluster`] is dropped, and the cluster's temporary directory is removed.

#![allow(dead_code)]

pub mod json;
pub mod mask;

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Debian's reference server and client.
pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";

/// Which server binary a [`Cluster`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/usr/bin/etcd` (Debian's etcd 3.4.23).
    Etcd,
    /// `skiff serve`, built by Cargo for this test crate.
    Skiff,
}

impl Kind {
    pub fn program(self) -> PathBuf {
        match self {
            Kind::Etcd => PathBuf::from(ETCD),
            Kind::Skiff => PathBuf::from(env!("CARGO_BIN_EXE_skiff")),
        }
    }

    /// Arguments placed before the etcd flags.
    fn leading_args(self) -> &'static [&'static str] {
        match self {
            Kind::Etcd => &[],
            Kind::Skiff => &["serve"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Etcd => "etcd",
            Kind::Skiff => "skiff",
        }
    }
}

/// True when the tests must not skip anything (`CI=true`).
pub fn under_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// Whether the test can run: `etcdctl` (and etcd for an etcd run) must be installed, and the
/// skiff binary must have `serve`.
pub fn prerequisites(test: &str, kind: Kind) -> bool {
    match kind {
        Kind::Etcd => etcd_available(test),
        Kind::Skiff => {
            if !Path::new(ETCDCTL).is_file() {
                assert!(
                    !under_ci(),
                    "{test}: {} not found under CI=true (install etcd-client)",
                    ETCDCTL
                );
                println!(
                    "SKIPPED: {test}: {} not found (install Debian's etcd-client)",
                    ETCDCTL
                );
                return false;
            }
            if let Some(reason) = skiff_serve_missing() {
                panic!("{test}: skiff serve is not available: {reason}");
            }
            true
        }
    }
}

/// Checks that Debian's etcd and etcdctl are installed. Without them, this fails under
/// `CI=true`, and elsewhere prints `SKIPPED: <test>: ...` and returns false.
pub fn etcd_available(test: &str) -> bool {
    let missing: Vec<&str> = [ETCD, ETCDCTL]
        .into_iter()
        .filter(|path| !Path::new(path).is_file())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !under_ci(),
        "{test}: {} not found under CI=true (install etcd-server and etcd-client)",
        missing.join(", ")
    );
    println!(
        "SKIPPED: {test}: {} not found (install Debian's etcd-server and etcd-client)",
        missing.join(", ")
    );
    false
}

/// Checks that the skiff binary has a `serve` subcommand; returns the reason if not.
pub fn skiff_serve_missing() -> Option<String> {
    let output = run(
        Command::new(Kind::Skiff.program()).args(["serve", "--help"]),
        None,
        Duration::from_secs(20),
    );
    if output.code == Some(0) {
        None
    } else {
        Some(format!(
            "`skiff serve --help` exited with {:?}: {}",
            output.code,
            output.stderr.lines().next().unwrap_or("")
        ))
    }
}

/// A loopback port that was free a moment ago (bound to port 0, read back, released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// `count` distinct loopback ports that were free a moment ago. All are bound at once before
/// any is released, so (unlike calling [`free_port`] repeatedly) none is handed out twice.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral loopback port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("bound address").port())
        .collect()
}

/// What a finished (or timed-out) child process printed.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
    /// The exit code; `None` if killed by a signal, including on timeout.
    pub code: Option<i32>,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

fn reader(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Runs a command to completion, feeding `stdin`, and kills it after `timeout`.
pub fn run(command: &mut Command, stdin: Option<&str>, timeout: Duration) -> Output {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .unwrap_or_else(|error| panic!("start {command:?}: {error}"));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        // A child that exits early closes the pipe; its output says why.
        let _ = pipe.write_all(input.as_bytes());
    }
    let stdout = reader(child.stdout.take());
    let stderr = reader(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for the killed child");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        code: status.code(),
        timed_out,
    }
}

/// A long-running child (e.g. `etcdctl watch`) whose output is collected in the background.
/// Killed on drop.
pub struct Background {
    child: Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stdout_thread: Option<std::thread::JoinHandle<()>>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Background {
    pub fn spawn(command: &mut Command) -> Background {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("start {command:?}: {error}"));
        let stdout = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut pipe = child.stdout.take().expect("stdout is piped");
        let sink = stdout.clone();
        let stdout_thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                match pipe.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .expect("stdout lock")
                        .push_str(&String::from_utf8_lossy(&buffer[..n])),
                }
            }
        });
        let stderr = reader(child.stderr.take());
        Background {
            child,
            stdout,
            stdout_thread: Some(stdout_thread),
            stderr: Some(stderr),
        }
    }

    /// What the child printed so far.
    pub fn stdout_so_far(&self) -> String {
        self.stdout.lock().expect("stdout lock").clone()
    }

    /// Waits until `done(stdout)` holds or the child exits or `timeout` passes; true if it held.
    pub fn wait_for(&mut self, timeout: Duration, done: impl Fn(&str) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.stdout_so_far()) {
                return true;
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() >= deadline {
                // One last look: the child may have printed right before exiting.
                if exited {
                    if let Some(thread) = self.stdout_thread.take() {
                        let _ = thread.join();
                    }
                }
                return done(&self.stdout_so_far());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child (if still running) and returns everything it printed. `code` is the exit
    /// code if it exited by itself, `None` if it had to be killed.
    pub fn finish(mut self) -> Output {
        let code = match self.child.try_wait() {
            Ok(Some(status)) => status.code(),
            _ => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                None
            }
        };
        if let Some(thread) = self.stdout_thread.take() {
            let _ = thread.join();
        }
        let stderr = self
            .stderr
            .take()
            .map(|thread| thread.join().unwrap_or_default())
            .unwrap_or_default();
        Output {
            stdout: self.stdout_so_far(),
            stderr,
            code,
            timed_out: false,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// Start-up options shared by every member of a cluster.
#[derive(Clone, Debug)]
pub struct Options {
    /// `--heartbeat-interval` in ms.
    pub heartbeat_ms: u64,
    /// `--election-timeout` in ms.
    pub election_ms: u64,
    /// `--max-txn-ops`, if set.
    pub max_txn_ops: Option<u32>,
    /// `--max-request-bytes`, if set.
    pub max_request_bytes: Option<u64>,
    /// More flags, appended to every member's command line.
    pub extra_args: Vec<String>,
    /// How long every member has to answer `etcdctl endpoint health`.
    pub start_timeout: Duration,
    /// `--initial-cluster-token`.
    pub cluster_token: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            heartbeat_ms: 100,
            election_ms: 1000,
            max_txn_ops: None,
            max_request_bytes: None,
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(30),
            cluster_token: "skiff-test-cluster".to_string(),
        }
    }
}

struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// For a member added to a running cluster: the `--initial-cluster` it joins with
    /// (`--initial-cluster-state existing`).
    join: Option<String>,
}

/// N members of one kind on loopback, each in its own data directory under one temporary
/// directory. Dropping it kills every member and removes the directory.
pub struct Cluster {
    kind: Kind,
    options: Options,
    directory: PathBuf,
    members: Vec<Member>,
    /// `etcdctl --command-timeout`; every etcdctl run is also killed after this plus 10 s.
    pub command_timeout: Duration,
}

static NEXT_CLUSTER: AtomicUsize = AtomicUsize::new(0);

fn fresh_directory(kind: Kind) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    let directory = std::env::temp_dir().join(format!(
        "skiff-{}-test-{}-{}-{nanos}",
        kind.name(),
        std::process::id(),
        NEXT_CLUSTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&directory).expect("create the cluster directory");
    directory
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Cluster {
    /// Starts `n` members and waits until each answers `etcdctl endpoint health`. Panics with
    /// the tail of a member's log if it exits or does not become healthy within
    /// `options.start_timeout`. A start that lost a port race is retried with fresh ports.
    pub fn start(kind: Kind, n: usize, options: Options) -> Cluster {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Cluster::try_start(kind, n, options.clone()) {
                Ok(cluster) => return cluster,
                Err(error) if attempt < 3 && error.contains("address already in use") => {
                    eprintln!("retrying the start of the {} cluster: {error}", kind.name());
                }
                Err(error) => panic!("{error}"),
            }
        }
    }

    fn try_start(kind: Kind, n: usize, options: Options) -> Result<Cluster, String> {
        assert!(n > 0, "a cluster needs at least one member");
        let directory = fresh_directory(kind);
        let ports = free_ports(2 * n);
        let members = (0..n)
            .map(|index| {
                let name = format!("m{index}");
                Member {
                    client_url: format!("http://127.0.0.1:{}", ports[2 * index]),
                    peer_url: format!("http://127.0.0.1:{}", ports[2 * index + 1]),
                    data_dir: directory.join(format!("{name}.data")),
                    log: directory.join(format!("{name}.log")),
                    name,
                    child: None,
                    paused: false,
                    join: None,
                }
            })
            .collect();
        let mut cluster = Cluster {
            kind,
            options,
            directory,
            members,
            command_timeout: Duration::from_secs(5),
        };
        for member in 0..n {
            cluster.spawn(member);
        }
        let deadline = Instant::now() + cluster.options.start_timeout;
        for member in 0..n {
            cluster.wait_healthy(member, deadline)?;
        }
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|member| format!("{}={}", member.name, member.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The full command line of a member (without the program).
    pub fn member_args(&self, member: usize) -> Vec<String> {
        let m = &self.members[member];
        let mut args: Vec<String> = self
            .kind
            .leading_args()
            .iter()
            .map(|arg| arg.to_string())
            .collect();
        let mut flag = |name: &str, value: String| {
            args.push(format!("--{name}"));
            args.push(value);
        };
        flag("name", m.name.clone());
        flag("data-dir", m.data_dir.display().to_string());
        flag("listen-client-urls", m.client_url.clone());
        flag("advertise-client-urls", m.client_url.clone());
        flag("listen-peer-urls", m.peer_url.clone());
        flag("initial-advertise-peer-urls", m.peer_url.clone());
        match &m.join {
            Some(initial_cluster) => {
                flag("initial-cluster", initial_cluster.clone());
                flag("initial-cluster-state", "existing".to_string());
            }
            None => {
                flag("initial-cluster", self.initial_cluster());
                flag("initial-cluster-state", "new".to_string());
            }
        }
        flag("initial-cluster-token", self.options.cluster_token.clone());
        flag("heartbeat-interval", self.options.heartbeat_ms.to_string());
        flag("election-timeout", self.options.election_ms.to_string());
        if let Some(ops) = self.options.max_txn_ops {
            flag("max-txn-ops", ops.to_string());
        }
        if let Some(bytes) = self.options.max_request_bytes {
            flag("max-request-bytes", bytes.to_string());
        }
        args.extend(self.options.extra_args.iter().cloned());
        args
    }

    fn spawn(&mut self, member: usize) {
        let args = self.member_args(member);
        let m = &mut self.members[member];
        assert!(m.child.is_none(), "{} is already running", m.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .expect("open the member log");
        let child = Command::new(self.kind.program())
            .args(&args)
            // etcd refuses flags shadowed by ETCD_* variables; keep the environment clean.
            .env_remove("ETCD_NAME")
            .env_remove("ETCD_DATA_DIR")
            .env_remove("ETCDCTL_ENDPOINTS")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", self.kind.program().display()));
        m.child = Some(child);
        m.paused = false;
    }

    fn wait_healthy(&mut self, member: usize, deadline: Instant) -> Result<(), String> {
        loop {
            let name = self.members[member].name.clone();
            if let Some(child) = self.members[member].child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let log = tail(&self.members[member].log, 30);
                    return Err(format!(
                        "{} member {name} exited with {status} before becoming healthy; log tail:\n{log}",
                        self.kind.name()
                    ));
                }
            }
            let health = self.etcdctl_at(&[member], &["endpoint", "health"]);
            if health.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = tail(&self.members[member].log, 30);
                return Err(format!(
                    "{} member {name} did not answer `etcdctl endpoint health` within {:?}: {}\nlog tail:\n{log}",
                    self.kind.name(),
                    self.options.start_timeout,
                    health.stderr.trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A new member slot named `name` on fresh ports (not started): its index.
    pub fn new_member(&mut self, name: &str) -> usize {
        let ports = free_ports(2);
        self.members.push(Member {
            name: name.to_string(),
            client_url: format!("http://127.0.0.1:{}", ports[0]),
            peer_url: format!("http://127.0.0.1:{}", ports[1]),
            data_dir: self.directory.join(format!("{name}.data")),
            log: self.directory.join(format!("{name}.log")),
            child: None,
            paused: false,
            join: None,
        });
        self.members.len() - 1
    }

    /// Starts a member added with `member add`, joining with `--initial-cluster-state
    /// existing` and `initial_cluster` (as `member add` printed it). Does not wait: a learner
    /// never answers `endpoint health`.
    pub fn start_joining(&mut self, member: usize, initial_cluster: &str) {
        self.members[member].join = Some(initial_cluster.to_string());
        self.spawn(member);
    }

    /// Waits until a member answers `endpoint health` (panics with its log tail if not).
    pub fn wait_member_healthy(&mut self, member: usize) {
        let deadline = Instant::now() + self.options.start_timeout;
        if let Err(error) = self.wait_healthy(member, deadline) {
            panic!("{error}");
        }
    }

    /// The member's log file.
    pub fn log_path(&self, member: usize) -> &Path {
        &self.members[member].log
    }

    /// Waits up to `timeout` for a member to exit by itself; its status then.
    pub fn wait_exit(
        &mut self,
        member: usize,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status(member) {
                self.members[member].child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn name(&self, member: usize) -> &str {
        &self.members[member].name
    }

    /// `http://127.0.0.1:PORT` of a member.
    pub fn client_url(&self, member: usize) -> &str {
        &self.members[member].client_url
    }

    pub fn peer_url(&self, member: usize) -> &str {
        &self.members[member].peer_url
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// The temporary directory holding the data directories and logs.
    pub fn directory(&self) -> &Path {
        &self.directory
    }

    /// The last `lines` lines of a member's log (stdout and stderr).
    pub fn log_tail(&self, member: usize, lines: usize) -> String {
        tail(&self.members[member].log, lines)
    }

    pub fn pid(&self, member: usize) -> Option<u32> {
        self.members[member].child.as_ref().map(Child::id)
    }

    pub fn is_running(&self, member: usize) -> bool {
        self.members[member].child.is_some()
    }

    /// SIGKILLs a member and waits for it; its data directory stays.
    pub fn kill(&mut self, member: usize) {
        if let Some(mut child) = self.members[member].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.members[member].paused = false;
    }

    /// Kills the member if it runs, starts it again with the same command line and data
    /// directory, and waits until it is healthy.
    pub fn restart(&mut self, member: usize) {
        self.kill(member);
        self.spawn(member);
        let deadline = Instant::now() + self.options.start_timeout;
        if let Err(error) = self.wait_healthy(member, deadline) {
            panic!("restart: {error}");
        }
    }

    /// The exit status of a member that was started and has since exited by itself (crashed),
    /// or None while it runs (or was never started or was killed through this helper).
    pub fn exit_status(&mut self, member: usize) -> Option<std::process::ExitStatus> {
        self.members[member]
            .child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// SIGKILLs every running member at once (all signals sent before any is waited for);
    /// their data directories stay.
    pub fn kill_all(&mut self) {
        for member in &mut self.members {
            if let Some(child) = member.child.as_mut() {
                let _ = child.kill();
            }
        }
        for member in 0..self.members.len() {
            self.kill(member);
        }
    }

    /// Starts every member that is not running, with its original command line and data
    /// directory, then waits until each is healthy (a cluster that lost all members needs a
    /// quorum back before any one of them answers a health check).
    pub fn start_stopped(&mut self) {
        let stopped: Vec<usize> = (0..self.len())
            .filter(|&member| self.members[member].child.is_none())
            .collect();
        for &member in &stopped {
            self.spawn(member);
        }
        let deadline = Instant::now() + self.options.start_timeout;
        for &member in &stopped {
            if let Err(error) = self.wait_healthy(member, deadline) {
                panic!("start: {error}");
            }
        }
    }

    fn signal(&self, member: usize, signal: &str) {
        let pid = self
            .pid(member)
            .unwrap_or_else(|| panic!("{} is not running", self.name(member)));
        let output = run(
            Command::new("kill").args([signal, &pid.to_string()]),
            None,
            Duration::from_secs(5),
        );
        assert!(
            output.success(),
            "kill {signal} {pid}: {}",
            output.stderr.trim()
        );
    }

    /// SIGSTOPs a member.
    pub fn pause(&mut self, member: usize) {
        self.signal(member, "-STOP");
        self.members[member].paused = true;
    }

    /// SIGCONTs a paused member.
    pub fn resume(&mut self, member: usize) {
        self.signal(member, "-CONT");
        self.members[member].paused = false;
    }

    /// The etcdctl command for the given members' endpoints, with the cluster's timeouts.
    pub fn etcdctl_command(&self, members: &[usize]) -> Command {
        let endpoints: Vec<&str> = members
            .iter()
            .map(|&member| self.members[member].client_url.as_str())
            .collect();
        let mut command = Command::new(ETCDCTL);
        command
            .env("ETCDCTL_API", "3")
            .env_remove("ETCDCTL_ENDPOINTS")
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg("--dial-timeout=2s")
            .arg(format!(
                "--command-timeout={}ms",
                self.command_timeout.as_millis()
            ));
        command
    }

    /// Runs etcdctl against the running, unpaused members.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.etcdctl_stdin(args, None)
    }

    /// Runs etcdctl against the running, unpaused members, with `stdin`.
    pub fn etcdctl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let live: Vec<usize> = (0..self.len())
            .filter(|&m| self.members[m].child.is_some() && !self.members[m].paused)
            .collect();
        assert!(!live.is_empty(), "no member is running");
        run(
            self.etcdctl_command(&live).args(args),
            stdin,
            self.command_timeout + Duration::from_secs(10),
        )
    }

    /// Runs etcdctl against the given members only.
    pub fn etcdctl_at(&self, members: &[usize], args: &[&str]) -> Output {
        run(
            self.etcdctl_command(members).args(args),
            None,
            self.command_timeout + Duration::from_secs(10),
        )
    }

    /// Member ids (as reported by `etcdctl member list -w json`), in member order; 0 for a
    /// member that is not listed by name (not started yet, or removed).
    pub fn member_ids(&self) -> Vec<u64> {
        let output = self.etcdctl(&["member", "list", "-w", "json"]);
        assert!(output.success(), "member list: {}", output.stderr);
        let value = json::parse(&output.stdout)
            .unwrap_or_else(|error| panic!("member list json: {error}: {}", output.stdout));
        let members = value.get("members").and_then(json::Value::as_array);
        (0..self.len())
            .map(|member| {
                members
                    .into_iter()
                    .flatten()
                    .find(|m| {
                        m.get("name").and_then(json::Value::as_str) == Some(self.name(member))
                    })
                    .and_then(|m| m.get("ID"))
                    .and_then(json::Value::as_u64)
                    // 0: not a member (yet, or any more).
                    .unwrap_or(0)
            })
            .collect()
    }

    /// The member that the running members agree is the leader (via `etcdctl endpoint status
    /// -w json`), or None if they do not answer or disagree.
    pub fn leader(&self) -> Option<usize> {
        let ids = self.member_ids();
        let output = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        if !output.success() {
            return None;
        }
        let value = json::parse(&output.stdout).ok()?;
        let mut leader = None;
        for status in value.as_array()? {
            let id = status.get("Status")?.get("leader")?.as_u64()?;
            match leader {
                None => leader = Some(id),
                Some(seen) if seen != id => return None,
                Some(_) => {}
            }
        }
        ids.iter().position(|&id| Some(id) == leader)
    }

    /// Waits (bounded) until the members agree on a leader.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader() {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A description of every member (for failure messages).
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for (index, member) in self.members.iter().enumerate() {
            let _ = writeln!(
                text,
                "{} ({}): client {} peer {} pid {:?}{}",
                member.name,
                self.kind.name(),
                member.client_url,
                member.peer_url,
                self.pid(index),
                if member.paused { " paused" } else { "" }
            );
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for member in 0..self.members.len() {
            // SIGKILL also ends a stopped (paused) process.
            self.kill(member);
        }
        if std::env::var_os("SKIFF_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.directory);
        }
    }
}

/// An HTTP/1.1 answer read by [`http_get`].
#[derive(Clone, Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked if it came with `Transfer-Encoding: chunked`.
    pub body: String,
}

/// A plain HTTP/1.1 `GET path` (with `Connection: close`) to `url` (`http://HOST:PORT`), read
/// to the end within `timeout`.
pub fn http_get(url: &str, path: &str, timeout: Duration) -> Result<HttpAnswer, String> {
    let address = url.strip_prefix("http://").unwrap_or(url);
    let socket: std::net::SocketAddr = address
        .parse()
        .map_err(|error| format!("{address}: {error}"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, timeout)
        .map_err(|error| format!("connect {address}: {error}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|error| format!("write to {address}: {error}"))?;
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .map_err(|error| format!("read from {address}: {error}"))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked {
        let mut rest = body;
        let mut out = String::new();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16)
                .map_err(|error| format!("chunk size {size:?}: {error}"))?;
            match (after.get(..size), after.get(size..)) {
                (Some(chunk), Some(next)) if size > 0 => {
                    out.push_str(chunk);
                    rest = next.trim_start_matches("\r\n");
                }
                _ => break,
            }
        }
        out
    } else {
        body.to_string()
    };
    Ok(HttpAnswer {
        status,
        headers,
        body,
    })
}

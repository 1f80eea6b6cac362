//! `skiff serve`: a member's flags, with etcd 3.4's names, defaults, environment variables and
//! checks.
//!
//! Every flag `--some-flag` can also come from the variable `SKIFF_SOME_FLAG`. As in etcd 3.4,
//! setting both is an error (`conflicting environment variable ... is shadowed by corresponding
//! command-line flag`); an empty variable counts as unset. etcd's single-dash spelling
//! (`-name x`) is accepted for every member flag.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use skiff_server::{ClusterState, InitialMember, ServerConfig};

/// etcd's ceiling on `--election-timeout`, in milliseconds.
pub const MAX_ELECTION_TIMEOUT_MS: u64 = 50_000;

/// `--log-level`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogLevel {
    /// Everything, including per-request detail.
    Debug,
    /// Start-up, leadership and membership events (the default).
    Info,
    /// Only problems.
    Warn,
    /// Only failures.
    Error,
}

impl LogLevel {
    /// The `tracing` level with the same meaning.
    pub fn tracing_level(self) -> tracing::Level {
        match self {
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Error => tracing::Level::ERROR,
        }
    }

    /// The flag's spelling of this level.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// A member's flags as written; `None` means "not on the command line". Defaults, environment
/// variables and checks are applied by [`options_from_args`].
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// Human-readable name for this member [default: default] [env: SKIFF_NAME].
    #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
    pub name: Option<String>,
    /// Path to the data directory [default: <name>.skiff] [env: SKIFF_DATA_DIR].
    #[arg(long, value_name = "DIR", allow_hyphen_values = true)]
    pub data_dir: Option<String>,
    /// URLs to listen on for client traffic, comma-separated [default: http://localhost:2379].
    #[arg(long, value_name = "URLS", allow_hyphen_values = true)]
    pub listen_client_urls: Option<String>,
    /// This member's client URLs to advertise to the cluster and clients [default:
    /// http://localhost:2379]; required when --listen-client-urls is set.
    #[arg(long, value_name = "URLS", allow_hyphen_values = true)]
    pub advertise_client_urls: Option<String>,
    /// URLs to listen on for peer traffic [default: http://localhost:2380].
    #[arg(long, value_name = "URLS", allow_hyphen_values = true)]
    pub listen_peer_urls: Option<String>,
    /// This member's peer URLs to advertise to the rest of the cluster [default:
    /// http://localhost:2380].
    #[arg(long, value_name = "URLS", allow_hyphen_values = true)]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial cluster configuration for bootstrapping, name=peer-url,... [default:
    /// <name>=<initial-advertise-peer-urls>].
    #[arg(long, value_name = "NAME=URL,...", allow_hyphen_values = true)]
    pub initial_cluster: Option<String>,
    /// Initial cluster state: new or existing [default: new].
    #[arg(long, value_name = "STATE", allow_hyphen_values = true)]
    pub initial_cluster_state: Option<String>,
    /// Initial cluster token for the cluster during bootstrap [default: etcd-cluster].
    #[arg(long, value_name = "TOKEN", allow_hyphen_values = true)]
    pub initial_cluster_token: Option<String>,
    /// Time (in milliseconds) of a heartbeat interval [default: 100].
    #[arg(long, value_name = "MS", allow_hyphen_values = true)]
    pub heartbeat_interval: Option<String>,
    /// Time (in milliseconds) for an election to timeout [default: 1000].
    #[arg(long, value_name = "MS", allow_hyphen_values = true)]
    pub election_timeout: Option<String>,
    /// Number of committed transactions to trigger a snapshot to disk [default: 100000].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub snapshot_count: Option<String>,
    /// Entries kept in the log after a snapshot, so that slightly slow followers catch up
    /// from the log instead of a snapshot [default: 5000].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub snapshot_catchup_entries: Option<String>,
    /// Maximum client request size in bytes the server will accept [default: 1572864].
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true)]
    pub max_request_bytes: Option<String>,
    /// Maximum number of operations permitted in a transaction [default: 128].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_txn_ops: Option<String>,
    /// Most client connections served at once per client URL; more are closed at once
    /// (Skiff's own flag) [default: 10000].
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub max_client_connections: Option<String>,
    /// Log level: debug, info, warn or error [default: info].
    #[arg(long, value_name = "LEVEL", allow_hyphen_values = true)]
    pub log_level: Option<String>,
    /// Extra URLs to serve /metrics and /health on, comma-separated [default: none].
    #[arg(long, value_name = "URLS", allow_hyphen_values = true)]
    pub listen_metrics_urls: Option<String>,
    /// Print the parsed configuration (one `flag=value` line each) and exit.
    #[arg(long, hide = true)]
    pub print_config: bool,
}

/// The member flags, in the order [`ServeOptions::describe`] prints them.
pub const MEMBER_FLAGS: [&str; 18] = [
    "name",
    "data-dir",
    "listen-client-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "heartbeat-interval",
    "election-timeout",
    "snapshot-count",
    "snapshot-catchup-entries",
    "max-request-bytes",
    "max-txn-ops",
    "max-client-connections",
    "log-level",
    "listen-metrics-urls",
];

/// The environment variable that mirrors `flag` (`data-dir` → `SKIFF_DATA_DIR`).
pub fn env_var_for(flag: &str) -> String {
    format!("SKIFF_{}", flag.replace('-', "_").to_ascii_uppercase())
}

/// `SKIFF_*` variables among `vars` that mirror no flag (etcd warns about these).
pub fn unrecognized_env_vars(vars: impl IntoIterator<Item = String>) -> Vec<String> {
    let known: Vec<String> = MEMBER_FLAGS.iter().map(|f| env_var_for(f)).collect();
    vars.into_iter()
        .filter(|var| var.starts_with("SKIFF_") && !known.contains(var))
        .collect()
}

/// Everything `skiff serve` needs to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// The member's configuration, for `skiff_server::run`.
    pub config: ServerConfig,
    /// `--log-level`.
    pub log_level: LogLevel,
    /// The hidden `--print-config` debug flag: print [`ServeOptions::describe`] and exit.
    pub print_config: bool,
}

impl ServeOptions {
    /// One `flag=value` line per member flag, values as the member will use them (listen
    /// URLs as resolved socket addresses, durations in milliseconds).
    pub fn describe(&self) -> String {
        let c = &self.config;
        let addrs = |list: &[SocketAddr]| {
            list.iter()
                .map(SocketAddr::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let cluster = c
            .initial_cluster
            .iter()
            .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
            .collect::<Vec<_>>()
            .join(",");
        let mut out = String::new();
        let lines: [(&str, String); 18] = [
            ("name", c.name.clone()),
            ("data-dir", c.data_dir.display().to_string()),
            ("listen-client-urls", addrs(&c.listen_client)),
            ("advertise-client-urls", c.advertise_client_urls.join(",")),
            ("listen-peer-urls", addrs(&c.listen_peer)),
            (
                "initial-advertise-peer-urls",
                c.initial_advertise_peer_urls.join(","),
            ),
            ("initial-cluster", cluster),
            (
                "initial-cluster-state",
                match c.initial_cluster_state {
                    ClusterState::New => "new".to_string(),
                    ClusterState::Existing => "existing".to_string(),
                },
            ),
            ("initial-cluster-token", c.initial_cluster_token.clone()),
            (
                "heartbeat-interval",
                c.heartbeat_interval.as_millis().to_string(),
            ),
            (
                "election-timeout",
                c.election_timeout.as_millis().to_string(),
            ),
            ("snapshot-count", c.snapshot_count.to_string()),
            (
                "snapshot-catchup-entries",
                c.snapshot_catchup_entries.to_string(),
            ),
            ("max-request-bytes", c.max_request_bytes.to_string()),
            ("max-txn-ops", c.max_txn_ops.to_string()),
            (
                "max-client-connections",
                c.max_client_connections.to_string(),
            ),
            ("log-level", self.log_level.as_str().to_string()),
            ("listen-metrics-urls", addrs(&c.listen_metrics)),
        ];
        for (flag, value) in lines {
            let _ = writeln!(out, "{flag}={value}");
        }
        out
    }
}

/// Why the member flags were refused.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// clap refused the command line (unknown flag, missing value), or `--help` was asked for.
    #[error("{0}")]
    Usage(#[from] clap::Error),
    /// A flag or its environment variable has a bad value; the message names it.
    #[error("{message}")]
    Invalid {
        /// The flag (`--name`), or the variable when the value came from one.
        flag: String,
        /// What is wrong, starting with the flag or variable.
        message: String,
    },
}

impl FlagError {
    /// The process exit code: 0 for `--help`, 2 for every refusal.
    pub fn exit_code(&self) -> u8 {
        match self {
            FlagError::Usage(error) => u8::try_from(error.exit_code()).unwrap_or(2),
            FlagError::Invalid { .. } => 2,
        }
    }

    /// Prints the error (or help text) the way the command shows it.
    pub fn print(&self) {
        match self {
            FlagError::Usage(error) => {
                let _ = error.print();
            }
            FlagError::Invalid { message, .. } => eprintln!("error: {message}"),
        }
    }
}

#[derive(Parser)]
#[command(name = "skiff", about = "Run a Skiff member (etcd's flags)")]
struct ServeCommand {
    #[command(flatten)]
    args: ServeArgs,
}

/// Parses a member's flags (`args` without the program name and without the word `serve`),
/// taking unset flags from the `SKIFF_*` variables that `env` returns, and checks them.
pub fn parse_serve_args<I, T>(
    args: I,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ServeOptions, FlagError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let argv = std::iter::once(OsString::from("skiff")).chain(args.into_iter().map(|arg| {
        let arg: OsString = arg.into();
        single_dash_to_double(arg)
    }));
    let command = ServeCommand::try_parse_from(argv)?;
    options_from_args(command.args, env)
}

/// Rewrites etcd's single-dash spelling of a member flag (`-name`, `-name=x`) to `--name`.
fn single_dash_to_double(arg: OsString) -> OsString {
    if let Some(text) = arg.to_str() {
        if let Some(rest) = text.strip_prefix('-') {
            let flag = rest.split('=').next().unwrap_or(rest);
            if !rest.starts_with('-') && (MEMBER_FLAGS.contains(&flag) || flag == "print-config") {
                return OsString::from(format!("-{text}"));
            }
        }
    }
    arg
}

/// Where a value came from, for error messages.
struct Source {
    flag: &'static str,
    from_env: bool,
}

impl Source {
    fn name(&self) -> String {
        if self.from_env {
            format!("{} (--{})", env_var_for(self.flag), self.flag)
        } else {
            format!("--{}", self.flag)
        }
    }

    fn error(&self, message: impl std::fmt::Display) -> FlagError {
        FlagError::Invalid {
            flag: if self.from_env {
                env_var_for(self.flag)
            } else {
                format!("--{}", self.flag)
            },
            message: format!("{}: {message}", self.name()),
        }
    }
}

/// A flag's value from the command line or its variable, refusing both.
fn pick(
    flag: &'static str,
    given: Option<String>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(String, Source)>, FlagError> {
    let var = env_var_for(flag);
    let from_env = env(&var).filter(|value| !value.is_empty());
    match (given, from_env) {
        (Some(_), Some(_)) => Err(FlagError::Invalid {
            flag: format!("--{flag}"),
            message: format!(
                "conflicting environment variable \"{var}\" is shadowed by corresponding \
                 command-line flag (either unset environment variable or disable flag)"
            ),
        }),
        (Some(value), None) => Ok(Some((
            value,
            Source {
                flag,
                from_env: false,
            },
        ))),
        (None, Some(value)) => Ok(Some((
            value,
            Source {
                flag,
                from_env: true,
            },
        ))),
        (None, None) => Ok(None),
    }
}

/// A URL as the member flags accept it: `http://host:port`, no path.
#[derive(Clone, Debug)]
struct HttpUrl {
    text: String,
    host: String,
    port: u16,
}

fn parse_url(source: &Source, text: &str) -> Result<HttpUrl, FlagError> {
    let rest = match text.split_once("://") {
        Some(("http", rest)) => rest,
        Some(("https", _)) => {
            return Err(source.error(format!(
                "{text:?}: https is not supported yet (TLS is not implemented); use http://"
            )))
        }
        Some((scheme, _)) => {
            return Err(source.error(format!(
                "{text:?}: URL scheme must be http (got {scheme:?})"
            )))
        }
        None => {
            return Err(source.error(format!("{text:?}: not a URL (expected http://host:port)")))
        }
    };
    if rest.contains(['/', '?', '#']) {
        return Err(source.error(format!("{text:?}: URL must not contain a path")));
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let (host, after) = bracketed
            .split_once(']')
            .ok_or_else(|| source.error(format!("{text:?}: unclosed '[' in host")))?;
        (host, after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (host, Some(port)),
            _ => (rest, None),
        }
    };
    let port = port.ok_or_else(|| {
        source.error(format!(
            "{text:?}: URL address does not have the form \"host:port\""
        ))
    })?;
    if host.is_empty() {
        return Err(source.error(format!("{text:?}: URL has no host")));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| source.error(format!("{text:?}: bad port {port:?}")))?;
    Ok(HttpUrl {
        text: text.to_string(),
        host: host.to_string(),
        port,
    })
}

fn parse_url_list(source: &Source, text: &str) -> Result<Vec<HttpUrl>, FlagError> {
    let urls = text
        .split(',')
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .map(|part| parse_url(source, part))
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(source.error("no URL given"));
    }
    Ok(urls)
}

/// The socket address `url` names; `localhost` is 127.0.0.1.
fn resolve(url: &HttpUrl) -> Result<SocketAddr, String> {
    if url.host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), url.port));
    }
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, url.port));
    }
    let addrs: Vec<SocketAddr> = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host {:?}: {e}", url.host))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("host {:?} resolves to no address", url.host))
}

fn resolve_list(source: &Source, urls: &[HttpUrl]) -> Result<Vec<SocketAddr>, FlagError> {
    urls.iter()
        .map(|url| resolve(url).map_err(|e| source.error(format!("{:?}: {e}", url.text))))
        .collect()
}

fn parse_number<T: std::str::FromStr>(source: &Source, text: &str) -> Result<T, FlagError>
where
    T::Err: std::fmt::Display,
{
    text.trim()
        .parse()
        .map_err(|e| source.error(format!("invalid value {text:?}: {e}")))
}

fn parse_initial_cluster(source: &Source, text: &str) -> Result<Vec<InitialMember>, FlagError> {
    let mut members: Vec<InitialMember> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (name, url) = entry.split_once('=').ok_or_else(|| {
            source.error(format!(
                "entry {entry:?} has no '=' (expected name=peer-url,...)"
            ))
        })?;
        if name.is_empty() {
            return Err(source.error(format!("entry {entry:?} has an empty name")));
        }
        let url = parse_url(source, url)?;
        match members.iter_mut().find(|m| m.name == name) {
            Some(member) => member.peer_urls.push(url.text),
            None => members.push(InitialMember {
                name: name.to_string(),
                peer_urls: vec![url.text],
            }),
        }
    }
    if members.is_empty() {
        return Err(source.error("no member given"));
    }
    let mut seen: Vec<&str> = Vec::new();
    for url in members.iter().flat_map(|m| &m.peer_urls) {
        if seen.contains(&url.as_str()) {
            return Err(source.error(format!("initial cluster has duplicate url {url:?}")));
        }
        seen.push(url);
    }
    Ok(members)
}

/// The same set of endpoints, comparing URLs as written and, failing that, as resolved.
fn same_endpoints(a: &[String], b: &[String]) -> Result<bool, String> {
    let mut a_sorted = a.to_vec();
    let mut b_sorted = b.to_vec();
    a_sorted.sort();
    b_sorted.sort();
    if a_sorted == b_sorted {
        return Ok(true);
    }
    let any_source = Source {
        flag: "initial-cluster",
        from_env: false,
    };
    let resolved = |list: &[String]| -> Result<Vec<SocketAddr>, String> {
        let mut out = list
            .iter()
            .map(|text| {
                parse_url(&any_source, text)
                    .map_err(|e| e.to_string())
                    .and_then(|url| resolve(&url))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort();
        out.dedup();
        Ok(out)
    };
    Ok(resolved(a)? == resolved(b)?)
}

/// Applies defaults and `SKIFF_*` variables to flags parsed by clap, and checks the result.
pub fn options_from_args(
    args: ServeArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<ServeOptions, FlagError> {
    let name = match pick("name", args.name, env)? {
        Some((name, source)) => {
            if name.trim().is_empty() {
                return Err(source.error("must not be empty"));
            }
            name
        }
        None => "default".to_string(),
    };
    let mut config = ServerConfig::with_defaults(&name);

    if let Some((dir, source)) = pick("data-dir", args.data_dir, env)? {
        if dir.is_empty() {
            return Err(source.error("must not be empty"));
        }
        config.data_dir = PathBuf::from(dir);
    }

    let listen_client_set = match pick("listen-client-urls", args.listen_client_urls, env)? {
        Some((text, source)) => {
            config.listen_client = resolve_list(&source, &parse_url_list(&source, &text)?)?;
            true
        }
        None => false,
    };
    match pick("advertise-client-urls", args.advertise_client_urls, env)? {
        Some((text, source)) => {
            config.advertise_client_urls = parse_url_list(&source, &text)?
                .into_iter()
                .map(|u| u.text)
                .collect();
        }
        None if listen_client_set => {
            return Err(FlagError::Invalid {
                flag: "--advertise-client-urls".to_string(),
                message: "--advertise-client-urls is required when --listen-client-urls is set \
                          explicitly"
                    .to_string(),
            })
        }
        None => {}
    }
    if let Some((text, source)) = pick("listen-peer-urls", args.listen_peer_urls, env)? {
        config.listen_peer = resolve_list(&source, &parse_url_list(&source, &text)?)?;
    }
    if let Some((text, source)) = pick(
        "initial-advertise-peer-urls",
        args.initial_advertise_peer_urls,
        env,
    )? {
        config.initial_advertise_peer_urls = parse_url_list(&source, &text)?
            .into_iter()
            .map(|u| u.text)
            .collect();
    }
    config.initial_cluster = match pick("initial-cluster", args.initial_cluster, env)? {
        Some((text, source)) => parse_initial_cluster(&source, &text)?,
        None => vec![InitialMember {
            name: name.clone(),
            peer_urls: config.initial_advertise_peer_urls.clone(),
        }],
    };
    if let Some((text, source)) = pick("initial-cluster-state", args.initial_cluster_state, env)? {
        config.initial_cluster_state = match text.as_str() {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => {
                return Err(source.error(format!(
                    "invalid value {other:?} (valid values: new, existing)"
                )))
            }
        };
    }
    if let Some((token, source)) = pick("initial-cluster-token", args.initial_cluster_token, env)? {
        if token.is_empty() {
            return Err(source.error("must not be empty"));
        }
        config.initial_cluster_token = token;
    }

    let heartbeat_ms: u64 = match pick("heartbeat-interval", args.heartbeat_interval, env)? {
        Some((text, source)) => parse_number(&source, &text)?,
        None => 100,
    };
    let election_ms: u64 = match pick("election-timeout", args.election_timeout, env)? {
        Some((text, source)) => parse_number(&source, &text)?,
        None => 1000,
    };
    let timing_error = |flag: &str, message: String| FlagError::Invalid {
        flag: flag.to_string(),
        message,
    };
    if heartbeat_ms == 0 {
        return Err(timing_error(
            "--heartbeat-interval",
            format!("--heartbeat-interval must be >0 (set to {heartbeat_ms}ms)"),
        ));
    }
    if election_ms == 0 {
        return Err(timing_error(
            "--election-timeout",
            format!("--election-timeout must be >0 (set to {election_ms}ms)"),
        ));
    }
    if heartbeat_ms.saturating_mul(5) > election_ms {
        return Err(timing_error(
            "--election-timeout",
            format!(
                "--election-timeout[{election_ms}ms] should be at least as 5 times as \
                 --heartbeat-interval[{heartbeat_ms}ms]"
            ),
        ));
    }
    if election_ms > MAX_ELECTION_TIMEOUT_MS {
        return Err(timing_error(
            "--election-timeout",
            format!(
                "--election-timeout[{election_ms}ms] is too long, and should be set less than \
                 {MAX_ELECTION_TIMEOUT_MS}ms"
            ),
        ));
    }
    config.heartbeat_interval = Duration::from_millis(heartbeat_ms);
    config.election_timeout = Duration::from_millis(election_ms);

    if let Some((text, source)) = pick("snapshot-count", args.snapshot_count, env)? {
        config.snapshot_count = parse_number(&source, &text)?;
        if config.snapshot_count == 0 {
            return Err(source.error("must be at least 1"));
        }
    }
    if let Some((text, source)) = pick(
        "snapshot-catchup-entries",
        args.snapshot_catchup_entries,
        env,
    )? {
        config.snapshot_catchup_entries = parse_number(&source, &text)?;
    }
    if let Some((text, source)) = pick("max-request-bytes", args.max_request_bytes, env)? {
        config.max_request_bytes = parse_number(&source, &text)?;
        if config.max_request_bytes == 0 {
            return Err(source.error("must be at least 1"));
        }
    }
    if let Some((text, source)) = pick("max-txn-ops", args.max_txn_ops, env)? {
        config.max_txn_ops = parse_number(&source, &text)?;
        if config.max_txn_ops == 0 {
            return Err(source.error("must be at least 1"));
        }
    }
    if let Some((text, source)) = pick("max-client-connections", args.max_client_connections, env)?
    {
        config.max_client_connections = parse_number(&source, &text)?;
        if config.max_client_connections == 0 {
            return Err(source.error("must be at least 1"));
        }
    }
    let log_level = match pick("log-level", args.log_level, env)? {
        None => LogLevel::Info,
        Some((text, source)) => match text.as_str() {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "error" => LogLevel::Error,
            other => {
                return Err(source.error(format!(
                    "invalid value {other:?} (valid values: debug, info, warn, error)"
                )))
            }
        },
    };
    if let Some((text, source)) = pick("listen-metrics-urls", args.listen_metrics_urls, env)? {
        config.listen_metrics = resolve_list(&source, &parse_url_list(&source, &text)?)?;
    }

    check_own_entry(&config)?;
    Ok(ServeOptions {
        config,
        log_level,
        print_config: args.print_config,
    })
}

/// etcd's bootstrap checks: this member is in `--initial-cluster`, with exactly its
/// `--initial-advertise-peer-urls`.
fn check_own_entry(config: &ServerConfig) -> Result<(), FlagError> {
    let invalid = |message: String| FlagError::Invalid {
        flag: "--initial-cluster".to_string(),
        message,
    };
    let Some(own) = config
        .initial_cluster
        .iter()
        .find(|member| member.name == config.name)
    else {
        return Err(invalid(format!(
            "--initial-cluster: couldn't find local name {:?} in the initial cluster \
             configuration (--name {})",
            config.name, config.name
        )));
    };
    let advertised = &config.initial_advertise_peer_urls;
    match same_endpoints(&own.peer_urls, advertised) {
        Ok(true) => Ok(()),
        outcome => {
            let why = match outcome {
                Err(e) => format!(" ({e})"),
                _ => String::new(),
            };
            Err(invalid(format!(
                "--initial-cluster has {}={} but --initial-advertise-peer-urls is {}{why}",
                own.name,
                own.peer_urls.join(&format!(",{}=", own.name)),
                advertised.join(","),
            )))
        }
    }
}

/// Resolves when the process receives SIGTERM or SIGINT (Ctrl-C); pass it to the member as its
/// shutdown signal. The handlers are installed by this call, so call it from inside the Tokio
/// runtime before starting the member: a signal that arrives later is never lost.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        Ok(async move {
            let name = tokio::select! {
                _ = terminate.recv() => "SIGTERM",
                _ = interrupt.recv() => "SIGINT",
            };
            tracing::info!("received {name}, shutting down");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async move {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("received Ctrl-C, shutting down");
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn parse(args: &[&str], env: &[(&str, &str)]) -> Result<ServeOptions, FlagError> {
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_serve_args(args.iter().copied(), &|key| env.get(key).cloned())
    }

    fn message(result: Result<ServeOptions, FlagError>) -> String {
        match result {
            Ok(options) => panic!("accepted: {options:?}"),
            Err(error) => {
                assert_eq!(error.exit_code(), 2, "{error}");
                error.to_string()
            }
        }
    }

    #[test]
    fn no_flags_is_etcds_default_member() {
        let options = parse(&[], &[]).unwrap();
        assert_eq!(options.config, ServerConfig::with_defaults("default"));
        assert_eq!(options.log_level, LogLevel::Info);
        assert!(!options.print_config);
    }

    #[test]
    fn three_member_command_line() {
        let options = parse(
            &[
                "--name=b",
                "--listen-client-urls",
                "http://0.0.0.0:3379",
                "--advertise-client-urls",
                "http://10.0.0.2:3379",
                "-listen-peer-urls",
                "http://[::1]:3380",
                "--initial-advertise-peer-urls",
                "http://10.0.0.2:3380",
                "--initial-cluster",
                "a=http://10.0.0.1:3380,b=http://10.0.0.2:3380,c=http://10.0.0.3:3380",
                "--initial-cluster-state",
                "existing",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "250",
            ],
            &[("SKIFF_LOG_LEVEL", "debug"), ("SKIFF_MAX_TXN_OPS", "")],
        )
        .unwrap();
        let c = &options.config;
        assert_eq!(c.name, "b");
        assert_eq!(c.data_dir, PathBuf::from("b.skiff"));
        assert_eq!(c.listen_client, vec!["0.0.0.0:3379".parse().unwrap()]);
        assert_eq!(c.listen_peer, vec!["[::1]:3380".parse().unwrap()]);
        assert_eq!(c.initial_cluster.len(), 3);
        assert_eq!(c.initial_cluster_state, ClusterState::Existing);
        assert_eq!(c.heartbeat_interval, Duration::from_millis(50));
        assert_eq!(c.max_txn_ops, 128);
        assert_eq!(options.log_level, LogLevel::Debug);
    }

    #[test]
    fn name_alone_renames_the_default_cluster() {
        let c = parse(&["--name", "n1"], &[]).unwrap().config;
        assert_eq!(
            c.initial_cluster,
            vec![InitialMember {
                name: "n1".into(),
                peer_urls: vec!["http://localhost:2380".into()]
            }]
        );
    }

    #[test]
    fn localhost_and_127_0_0_1_match() {
        parse(
            &[
                "--initial-advertise-peer-urls",
                "http://127.0.0.1:2380",
                "--initial-cluster",
                "default=http://localhost:2380",
            ],
            &[],
        )
        .unwrap();
    }

    #[test]
    fn refusals_name_their_flag() {
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                &["--name", "x"],
                &[("SKIFF_NAME", "y")],
                "\"SKIFF_NAME\" is shadowed",
            ),
            (
                &[],
                &[("SKIFF_ELECTION_TIMEOUT", "ten")],
                "SKIFF_ELECTION_TIMEOUT",
            ),
            (
                &["--listen-peer-urls", "https://a:1"],
                &[],
                "--listen-peer-urls",
            ),
            (&["--listen-peer-urls", "http://a"], &[], "host:port"),
            (&["--advertise-client-urls", "http://a:1/x"], &[], "path"),
            (
                &["--heartbeat-interval", "300"],
                &[],
                "--heartbeat-interval[300ms]",
            ),
            (&["--election-timeout", "60000"], &[], "too long"),
            (&["--initial-cluster", "default"], &[], "no '='"),
            (
                &["--initial-cluster", "other=http://localhost:2380"],
                &[],
                "local name",
            ),
            (
                &["--initial-cluster", "default=http://localhost:9"],
                &[],
                "--initial-advertise-peer-urls",
            ),
            (
                &["--initial-cluster-state", "old"],
                &[],
                "--initial-cluster-state",
            ),
            (&["--log-level", "loud"], &[], "--log-level"),
            (
                &["--listen-client-urls", "http://localhost:1"],
                &[],
                "--advertise-client-urls is required",
            ),
            (&["--snapshot-count", "0"], &[], "--snapshot-count"),
        ];
        for (args, env, expected) in cases {
            let text = message(parse(args, env));
            assert!(text.contains(expected), "{args:?} {env:?}: {text}");
        }
        let unknown = message(parse(&["--nmae", "x"], &[]));
        assert!(unknown.contains("--nmae"), "{unknown}");
    }

    #[test]
    fn env_var_names() {
        assert_eq!(env_var_for("initial-cluster"), "SKIFF_INITIAL_CLUSTER");
        assert_eq!(
            unrecognized_env_vars(["SKIFF_NAME".into(), "SKIFF_NAEM".into(), "PATH".into()]),
            vec!["SKIFF_NAEM".to_string()]
        );
    }
}

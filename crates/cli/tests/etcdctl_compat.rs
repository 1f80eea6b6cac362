//! etcdctl 3.4 compatibility: one deterministic script of etcdctl commands, run against a fresh
//! 3-member cluster, recorded as a masked transcript (stdout, the meaningful stderr lines and
//! the exit code of every command).
//!
//! * `etcdctl_script_against_etcd` runs it on Debian's etcd 3.4.23, checks the values that
//!   matter (revisions, values, errors) and compares the transcript with the recorded one in
//!   `support/etcdctl_expected.txt` (`SKIFF_BLESS=1` rewrites that file).
//! * `etcdctl_script_skiff_matches_etcd` runs it on `skiff serve` and diffs the transcript
//!   against etcd's (run live when etcd is installed, else the recorded file).
//!
//! Without etcd/etcdctl the tests fail under `CI=true` and otherwise print `SKIPPED: ...`.
//! Not covered: auth/user/role, member add/remove/promote/update (membership changes belong
//! to the fault tests) and `check perf` (60 s of load whose verdict depends on the machine).

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::mask::{self, Masker};
use support::{json, Background, Cluster, Kind, Options, Output};

const EXPECTED: &str = include_str!("support/etcdctl_expected.txt");

/// How one command's output is masked and recorded.
#[derive(Clone, Copy, Default)]
struct Step<'a> {
    stdin: Option<&'a str>,
    /// Sort stdout and stderr lines (order not defined, e.g. concurrent health checks).
    sort: bool,
    /// JSON arrays whose order is not defined, by field name ("" = the top-level array).
    sort_json: &'a [&'a str],
    /// Comma-separated fields to mask in simple and table output.
    fields: &'a [usize],
    /// Mask `<member-N>` to `<member>` (which member it is varies from run to run).
    any_member: bool,
    /// Run against these members only (default: all).
    members: Option<&'a [usize]>,
}

struct Session<'c> {
    cluster: &'c Cluster,
    masker: Masker,
    transcript: String,
    failures: Vec<String>,
    /// The whole script must finish by then; later commands are not run.
    deadline: Instant,
}

impl<'c> Session<'c> {
    fn new(cluster: &'c Cluster) -> Session<'c> {
        let mut masker = Masker::new();
        masker.literal(cluster.directory().display().to_string(), "<dir>");
        for (index, id) in cluster.member_ids().into_iter().enumerate() {
            masker.member(
                index,
                id,
                cluster.client_url(index),
                cluster.peer_url(index),
            );
        }
        let list = cluster.etcdctl(&["member", "list", "-w", "json"]);
        let cluster_id = json::parse(&list.stdout)
            .ok()
            .and_then(|v| v.get("header")?.get("cluster_id")?.as_u64())
            .expect("cluster id in member list -w json");
        masker.cluster(cluster_id);
        Session {
            cluster,
            masker,
            transcript: String::new(),
            failures: Vec::new(),
            deadline: Instant::now() + Duration::from_secs(240),
        }
    }

    /// True (and a recorded failure) once the script's deadline has passed.
    fn out_of_time(&mut self, label: &str) -> bool {
        if Instant::now() < self.deadline {
            return false;
        }
        self.failures
            .push(format!("{label}: not run, the script ran out of time"));
        true
    }

    fn check(&mut self, condition: bool, what: impl Into<String>) {
        if !condition {
            self.failures.push(what.into());
        }
    }

    /// Checks that a command succeeded with exactly this stdout.
    fn expect_stdout(&mut self, output: &Output, label: &str, expected: &str) {
        let ok = output.success() && output.stdout == expected;
        self.check(
            ok,
            format!(
                "{label}: expected exit 0 and stdout {expected:?}, got {:?} {:?} {:?}",
                output.code, output.stdout, output.stderr
            ),
        );
    }

    /// Checks that a command failed with this error message on stderr.
    fn expect_error(&mut self, output: &Output, label: &str, message: &str) {
        let ok = !output.success() && output.stderr.contains(message);
        self.check(
            ok,
            format!(
                "{label}: expected failure with {message:?}, got {:?} {:?} {:?}",
                output.code, output.stdout, output.stderr
            ),
        );
    }

    fn run(&mut self, label: &str, args: &[&str]) -> Output {
        self.run_step(label, args, Step::default())
    }

    fn run_step(&mut self, label: &str, args: &[&str], step: Step) -> Output {
        if self.out_of_time(label) {
            return Output::default();
        }
        let all: Vec<usize> = (0..self.cluster.len()).collect();
        let members = step.members.unwrap_or(&all);
        let output = support::run(
            self.cluster.etcdctl_command(members).args(args),
            step.stdin,
            self.cluster.command_timeout + Duration::from_secs(10),
        );
        self.record(label, args, step, &output);
        output
    }

    fn record(&mut self, label: &str, args: &[&str], step: Step, output: &Output) {
        let shown: Vec<String> = args
            .iter()
            .map(|arg| {
                if arg.len() > 64 {
                    format!("<{} bytes>", arg.len())
                } else if arg.is_empty() || arg.contains(' ') {
                    format!("{arg:?}")
                } else {
                    arg.to_string()
                }
            })
            .collect();
        let mut entry = format!(
            "### {label}\n$ etcdctl {}\n",
            self.masker.text(&shown.join(" "))
        );
        if let Some(stdin) = step.stdin {
            for line in stdin.lines() {
                entry.push_str(&format!("< {line}\n"));
            }
        }
        let code = match (output.code, output.timed_out) {
            (_, true) => "timed out".to_string(),
            (Some(code), _) => code.to_string(),
            (None, _) => "killed".to_string(),
        };
        entry.push_str(&format!("exit {code}\n"));
        let trimmed = output.stdout.trim_start();
        let is_table = trimmed.starts_with('+');
        let mut stdout = if trimmed.starts_with('{') || trimmed.starts_with('[') {
            self.masker.json(&output.stdout, step.sort_json)
        } else if is_table {
            mask::table_rows(&output.stdout)
        } else {
            output.stdout.clone()
        };
        if !step.fields.is_empty() {
            stdout = if is_table {
                let (header, rows) = stdout.split_once('\n').unwrap_or((&stdout, ""));
                format!("{header}\n{}", mask::mask_fields(rows, step.fields))
            } else {
                mask::mask_fields(&stdout, step.fields)
            };
        }
        stdout = self.masker.text(&stdout);
        let mut stderr = self
            .masker
            .text(&mask::stderr_lines(&output.stderr).join("\n"));
        if step.sort {
            stdout = mask::sort_lines(&stdout, usize::from(is_table));
            stderr = mask::sort_lines(&stderr, 0);
        }
        for line in stdout.lines() {
            entry.push_str(&format!("| {line}\n"));
        }
        for line in stderr.lines() {
            entry.push_str(&format!("! {line}\n"));
        }
        if step.any_member {
            for index in 0..self.cluster.len() {
                entry = entry.replace(&format!("<member-{index}>"), "<member>");
            }
        }
        self.transcript.push_str(&entry);
    }

    /// `lease grant TTL`: registers the lease id for masking and returns it (hex).
    fn grant(&mut self, label: &str, ttl: &str) -> String {
        if self.out_of_time(label) {
            return String::new();
        }
        let output = support::run(
            self.cluster
                .etcdctl_command(&(0..self.cluster.len()).collect::<Vec<_>>())
                .args(["lease", "grant", ttl]),
            None,
            self.cluster.command_timeout + Duration::from_secs(10),
        );
        let hex = output
            .stdout
            .strip_prefix("lease ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or("")
            .to_string();
        match i64::from_str_radix(&hex, 16) {
            Ok(id) => {
                self.masker.lease(id);
            }
            Err(_) => self.check(false, format!("{label}: no lease id in {output:?}")),
        }
        self.record(label, &["lease", "grant", ttl], Step::default(), &output);
        hex
    }

    /// Runs `etcdctl watch ARGS` in the background, then `during`, then waits (at most 10 s)
    /// until its stdout contains `until` (if given) or it exits, kills it and records what it
    /// printed.
    fn watch(
        &mut self,
        label: &str,
        args: &[&str],
        until: Option<&str>,
        during: impl FnOnce(&mut Session<'c>),
    ) -> Output {
        if self.out_of_time(label) {
            return Output::default();
        }
        let all: Vec<usize> = (0..self.cluster.len()).collect();
        let mut command = self.cluster.etcdctl_command(&all);
        command.arg("watch").args(args);
        let mut watcher = Background::spawn(&mut command);
        during(self);
        let seen = watcher.wait_for(Duration::from_secs(10), |out| {
            until.is_some_and(|marker| out.contains(marker))
        });
        // Anything printed after the marker would be a bug too: give it a moment to show.
        std::thread::sleep(Duration::from_millis(100));
        let mut output = watcher.finish();
        if args.contains(&"json") {
            output.stdout = one_event_per_line(&output.stdout);
        }
        let mut full: Vec<&str> = vec!["watch"];
        full.extend_from_slice(args);
        self.record(label, &full, Step::default(), &output);
        if until.is_some() {
            self.check(
                seen,
                format!("{label}: watch output never contained {until:?}: {output:?}"),
            );
        }
        output
    }
}

/// How etcd groups watch events into responses is not deterministic (a watcher that is catching
/// up gets a batch, a synced one gets one response per revision), and the response header
/// revision follows the grouping. So `watch -w json` is compared one event per line, plus the
/// flags of responses that have any.
fn one_event_per_line(stdout: &str) -> String {
    let mut out = String::new();
    for line in stdout.lines().filter(|line| !line.trim().is_empty()) {
        let Ok(response) = json::parse(line) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        for event in response
            .get("Events")
            .and_then(json::Value::as_array)
            .into_iter()
            .flatten()
        {
            out.push_str(&event.to_text());
            out.push('\n');
        }
        let flags: Vec<(String, json::Value)> = ["CompactRevision", "Canceled", "Created"]
            .into_iter()
            .filter_map(|key| Some((key.to_string(), response.get(key)?.clone())))
            .filter(|(_, value)| {
                !matches!(value, json::Value::Bool(false))
                    && *value != json::Value::Number("0".to_string())
            })
            .collect();
        if !flags.is_empty() {
            out.push_str(&json::Value::Object(flags).to_text());
            out.push('\n');
        }
    }
    out
}

fn json_field(output: &Output, path: &[&str]) -> Option<json::Value> {
    let mut value = json::parse(&output.stdout).ok()?;
    for key in path {
        value = match key.parse::<usize>() {
            Ok(index) => value.as_array()?.get(index)?.clone(),
            Err(_) => value.get(key)?.clone(),
        };
    }
    Some(value)
}

fn json_u64(output: &Output, path: &[&str]) -> Option<u64> {
    json_field(output, path)?.as_u64()
}

fn options() -> Options {
    Options {
        max_txn_ops: Some(8),
        max_request_bytes: Some(4096),
        ..Options::default()
    }
}

/// The script. Returns the masked transcript and the failed checks.
fn script(cluster: &Cluster) -> (String, Vec<String>) {
    let mut s = Session::new(cluster);

    // --- local, membership and health ---------------------------------------------------
    let out = s.run("version", &["version"]);
    s.check(out.stdout.contains("API version: 3.4"), "version: API 3.4");
    s.run_step(
        "member list",
        &["member", "list"],
        Step {
            sort: true,
            ..Step::default()
        },
    );
    s.run_step(
        "member list table",
        &["member", "list", "-w", "table"],
        Step {
            sort: true,
            ..Step::default()
        },
    );
    let out = s.run_step(
        "member list json",
        &["member", "list", "-w", "json"],
        Step {
            sort_json: &["members"],
            ..Step::default()
        },
    );
    s.check(
        json_field(&out, &["members"])
            .and_then(|m| m.as_array().map(Vec::len))
            .unwrap_or(0)
            == 3,
        "member list: 3 members",
    );
    let sorted = Step {
        sort: true,
        ..Step::default()
    };
    let out = s.run_step("endpoint health", &["endpoint", "health"], sorted);
    s.check(
        out.success() && out.stderr.matches("is healthy").count() == 3,
        format!("endpoint health: 3 healthy: {out:?}"),
    );
    s.run_step(
        "endpoint health cluster",
        &["endpoint", "health", "--cluster"],
        sorted,
    );
    s.run_step(
        "endpoint health json",
        &["endpoint", "health", "-w", "json"],
        Step {
            sort_json: &[""],
            ..Step::default()
        },
    );
    let status_fields = &[2, 3, 4, 6, 7, 8];
    let out = s.run_step(
        "endpoint status",
        &["endpoint", "status"],
        Step {
            fields: status_fields,
            ..Step::default()
        },
    );
    s.check(
        out.stdout.lines().count() == 3
            && out
                .stdout
                .lines()
                .filter(|line| line.split(", ").nth(4) == Some("true"))
                .count()
                == 1,
        format!("endpoint status: exactly one leader: {out:?}"),
    );
    s.run_step(
        "endpoint status table cluster",
        &["endpoint", "status", "--cluster", "-w", "table"],
        Step {
            fields: status_fields,
            sort: true,
            ..Step::default()
        },
    );
    s.run(
        "endpoint status json",
        &["endpoint", "status", "-w", "json"],
    );

    // --- put / get ------------------------------------------------------------------------
    let out = s.run("put first", &["put", "a", "1"]);
    s.expect_stdout(&out, "put first", "OK\n");
    let out = s.run("put prev-kv", &["put", "a", "2", "--prev-kv"]);
    s.expect_stdout(&out, "put prev-kv", "OK\na\n1\n");
    for (key, value) in [
        ("b", "10"),
        ("c", "20"),
        ("foo/1", "x"),
        ("foo/2", "y"),
        ("foo/3", "z"),
    ] {
        s.run(&format!("put {key}"), &["put", key, value]);
    }
    let out = s.run("put json", &["put", "a", "3", "--prev-kv", "-w", "json"]);
    s.check(
        json_u64(&out, &["header", "revision"]) == Some(9),
        "put json: revision 9",
    );
    let out = s.run("get", &["get", "a"]);
    s.expect_stdout(&out, "get", "a\n3\n");
    let out = s.run("get json", &["get", "a", "-w", "json"]);
    s.check(
        json_u64(&out, &["kvs", "0", "create_revision"]) == Some(2)
            && json_u64(&out, &["kvs", "0", "mod_revision"]) == Some(9)
            && json_u64(&out, &["kvs", "0", "version"]) == Some(3)
            && json_u64(&out, &["header", "revision"]) == Some(9),
        format!("get json: revisions 2/9, version 3: {}", out.stdout),
    );
    let out = s.run("get rev 2", &["get", "a", "--rev", "2"]);
    s.expect_stdout(&out, "get rev 2", "a\n1\n");
    let out = s.run("get rev 3 json", &["get", "a", "--rev=3", "-w", "json"]);
    s.check(
        json_u64(&out, &["header", "revision"]) == Some(9),
        "get --rev: header has the current revision",
    );
    let out = s.run("get prefix", &["get", "foo", "--prefix"]);
    s.expect_stdout(&out, "get prefix", "foo/1\nx\nfoo/2\ny\nfoo/3\nz\n");
    let out = s.run(
        "get prefix limit json",
        &["get", "foo", "--prefix", "--limit", "2", "-w", "json"],
    );
    s.check(
        json_u64(&out, &["count"]) == Some(3)
            && json_field(&out, &["more"]) == Some(json::Value::Bool(true))
            && json_field(&out, &["kvs"]).and_then(|k| k.as_array().map(Vec::len)) == Some(2),
        format!("get --limit: count 3, more, 2 kvs: {}", out.stdout),
    );
    let out = s.run("get keys-only", &["get", "foo/", "--prefix", "--keys-only"]);
    s.expect_stdout(&out, "get keys-only", "foo/1\n\nfoo/2\n\nfoo/3\n\n");
    // etcdctl 3.4 has no --count-only (3.5 added it); the json count is the same field.
    let out = s.run(
        "get all keys json",
        &["get", "", "--prefix", "--keys-only", "-w", "json"],
    );
    s.check(json_u64(&out, &["count"]) == Some(6), "6 keys");
    let out = s.run(
        "get print-value-only",
        &["get", "foo/", "--prefix", "--print-value-only"],
    );
    s.expect_stdout(&out, "get print-value-only", "x\ny\nz\n");
    let out = s.run("get from-key", &["get", "c", "--from-key", "--keys-only"]);
    s.expect_stdout(&out, "get from-key", "c\n\nfoo/1\n\nfoo/2\n\nfoo/3\n\n");
    let out = s.run("get range", &["get", "a", "c"]);
    s.expect_stdout(&out, "get range", "a\n3\nb\n10\n");
    let out = s.run(
        "get sort modify descend",
        &[
            "get",
            "foo/",
            "--prefix",
            "--sort-by=MODIFY",
            "--order=DESCEND",
            "--keys-only",
        ],
    );
    s.expect_stdout(&out, "get sort", "foo/3\n\nfoo/2\n\nfoo/1\n\n");
    s.run(
        "get sort value ascend",
        &["get", "", "--prefix", "--sort-by=VALUE", "--order=ASCEND"],
    );
    s.run(
        "get sort create descend limit",
        &[
            "get",
            "",
            "--from-key",
            "--sort-by=CREATE",
            "--order=DESCEND",
            "--limit=2",
            "-w",
            "json",
        ],
    );
    s.run(
        "get sort version",
        &["get", "", "--prefix", "--sort-by=VERSION", "--keys-only"],
    );
    let out = s.run("get missing", &["get", "nope"]);
    s.expect_stdout(&out, "get missing", "");
    s.run("get missing json", &["get", "nope", "-w", "json"]);
    let out = s.run("get future rev", &["get", "a", "--rev", "100"]);
    s.expect_error(
        &out,
        "get future rev",
        "etcdserver: mvcc: required revision is a future revision",
    );

    // --- del ------------------------------------------------------------------------------
    let out = s.run("del", &["del", "c"]);
    s.expect_stdout(&out, "del", "1\n");
    let out = s.run("del missing", &["del", "nope"]);
    s.expect_stdout(&out, "del missing", "0\n");
    let out = s.run(
        "del prefix prev-kv",
        &["del", "foo/", "--prefix", "--prev-kv"],
    );
    s.expect_stdout(
        &out,
        "del prefix prev-kv",
        "3\nfoo/1\nx\nfoo/2\ny\nfoo/3\nz\n",
    );
    s.run("put d", &["put", "d", "1"]);
    s.run("put e", &["put", "e", "1"]);
    let out = s.run("del from-key", &["del", "d", "--from-key"]);
    s.expect_stdout(&out, "del from-key", "2\n");
    s.run("del range json", &["del", "x", "z", "-w", "json"]);
    let out = s.run("get all json", &["get", "", "--prefix", "-w", "json"]);
    s.check(
        json_u64(&out, &["header", "revision"]) == Some(14)
            && json_u64(&out, &["count"]) == Some(2),
        format!("after deletes: revision 14, 2 keys: {}", out.stdout),
    );

    // --- txn ------------------------------------------------------------------------------
    let out = s.run_step(
        "txn success",
        &["txn"],
        Step {
            stdin: Some("mod(\"a\") > \"0\"\nval(\"a\") = \"3\"\n\nput t1 v1\nget a\ndel b\n\nput t2 v2\n\n"),
            ..Step::default()
        },
    );
    s.expect_stdout(&out, "txn success", "SUCCESS\n\nOK\n\na\n3\n\n1\n");
    let out = s.run_step(
        "txn failure",
        &["txn"],
        Step {
            stdin: Some("val(\"a\") = \"nope\"\n\nput t1 x\n\nput t2 v2\nget t1\n\n"),
            ..Step::default()
        },
    );
    s.expect_stdout(&out, "txn failure", "FAILURE\n\nOK\n\nt1\nv1\n");
    let out = s.run_step(
        "txn json",
        &["txn", "-w", "json"],
        Step {
            stdin: Some(
                "create(\"missing\") = \"0\"\nver(\"t1\") = \"1\"\n\nput t3 v3\nget t3\n\n\n",
            ),
            ..Step::default()
        },
    );
    s.check(
        json_field(&out, &["succeeded"]) == Some(json::Value::Bool(true))
            && json_u64(&out, &["header", "revision"]) == Some(17),
        format!("txn json: succeeded at 17: {}", out.stdout),
    );
    s.run_step(
        "txn create and version compare, range delete",
        &["txn"],
        Step {
            // No lease("k") compare: etcdctl 3.4 panics parsing it ("bad value").
            stdin: Some("c(\"t2\") > \"0\"\nver(\"t2\") < \"2\"\n\ndel t1 t3\n\n\n"),
            ..Step::default()
        },
    );
    let out = s.run_step(
        "txn read-only",
        &["txn", "-w", "json"],
        Step {
            stdin: Some("\nget a\n\n\n"),
            ..Step::default()
        },
    );
    s.check(
        json_u64(&out, &["header", "revision"]) == Some(18),
        format!("read-only txn does not bump the revision: {}", out.stdout),
    );
    let too_many: String = (1..=9).map(|i| format!("put m{i} v\n")).collect();
    let stdin = format!("\n{too_many}\n\n");
    let out = s.run_step(
        "txn too many ops",
        &["txn"],
        Step {
            stdin: Some(&stdin),
            ..Step::default()
        },
    );
    s.expect_error(
        &out,
        "txn too many ops",
        "etcdserver: too many operations in txn request",
    );
    let out = s.run_step(
        "txn duplicate key",
        &["txn"],
        Step {
            stdin: Some("\nput dup 1\nput dup 2\n\n\n"),
            ..Step::default()
        },
    );
    s.expect_error(
        &out,
        "txn duplicate key",
        "etcdserver: duplicate key given in txn request",
    );

    // --- put errors -----------------------------------------------------------------------
    let out = s.run("put empty key", &["put", "", "v"]);
    s.expect_error(&out, "put empty key", "etcdserver: key is not provided");
    s.run("get empty key", &["get", ""]);
    let out = s.run(
        "put ignore-value missing",
        &["put", "nope", "--ignore-value"],
    );
    s.expect_error(
        &out,
        "put ignore-value missing",
        "etcdserver: key not found",
    );
    s.run(
        "put ignore-value with value",
        &["put", "a", "v", "--ignore-value"],
    );
    let big = "x".repeat(5000);
    let out = s.run("put too large", &["put", "big", &big]);
    s.expect_error(&out, "put too large", "etcdserver: request is too large");

    // --- leases ---------------------------------------------------------------------------
    let lease = s.grant("lease grant", "60");
    let out = s.run("lease grant too large", &["lease", "grant", "9000000001"]);
    s.expect_error(
        &out,
        "lease grant too large",
        "etcdserver: too large lease TTL",
    );
    let lease_flag = format!("--lease={lease}");
    let out = s.run("put with lease", &["put", "k1", "v1", &lease_flag]);
    s.expect_stdout(&out, "put with lease", "OK\n");
    s.run(
        "lease timetolive keys",
        &["lease", "timetolive", &lease, "--keys"],
    );
    s.run(
        "put second key with lease",
        &["put", "k2", "v2", &lease_flag],
    );
    s.run("lease timetolive", &["lease", "timetolive", &lease]);
    let out = s.run(
        "lease keep-alive once",
        &["lease", "keep-alive", "--once", &lease],
    );
    s.check(
        out.stdout.contains("keepalived with TTL(60)"),
        format!("keep-alive: TTL 60: {out:?}"),
    );
    s.run_step("lease list", &["lease", "list"], sorted);
    let out = s.run("put ignore-lease", &["put", "k1", "v1b", "--ignore-lease"]);
    s.expect_stdout(&out, "put ignore-lease", "OK\n");
    let out = s.run("get after ignore-lease json", &["get", "k1", "-w", "json"]);
    s.check(
        json_field(&out, &["kvs", "0", "lease"]).and_then(|l| l.as_i64())
            == i64::from_str_radix(&lease, 16).ok()
            && json_field(&out, &["kvs", "0", "value"]).and_then(|v| v.as_str().map(String::from))
                == Some("djFi".to_string()),
        format!("ignore-lease keeps the lease: {}", out.stdout),
    );
    let out = s.run(
        "put ignore-value",
        &["put", "k1", "--ignore-value", "--prev-kv"],
    );
    s.expect_stdout(&out, "put ignore-value", "OK\nk1\nv1b\n");
    // ignore_value keeps the value, but the lease is the request's: 0 detaches the key.
    let out = s.run("get after ignore-value json", &["get", "k1", "-w", "json"]);
    s.check(
        json_field(&out, &["kvs", "0", "lease"]).is_none()
            && json_field(&out, &["kvs", "0", "value"]).and_then(|v| v.as_str().map(String::from))
                == Some("djFi".to_string()),
        format!(
            "ignore-value keeps the value and detaches the lease: {}",
            out.stdout
        ),
    );
    let out = s.run(
        "put ignore-lease with lease",
        &["put", "k1", "v", "--ignore-lease", &lease_flag],
    );
    s.check(!out.success(), "put --ignore-lease with a lease fails");
    let out = s.run("lease revoke", &["lease", "revoke", &lease]);
    s.check(out.success(), format!("lease revoke: {out:?}"));
    let out = s.run("get after revoke", &["get", "k", "--prefix", "-w", "json"]);
    s.check(
        json_u64(&out, &["count"]) == Some(1)
            && json_u64(&out, &["header", "revision"]) == Some(23),
        format!(
            "revoke deletes the one attached key (k2) at revision 23: {}",
            out.stdout
        ),
    );
    let out = s.run("lease timetolive revoked", &["lease", "timetolive", &lease]);
    s.check(
        out.stdout.contains("already expired"),
        "timetolive of a revoked lease",
    );
    s.run(
        "lease keep-alive revoked",
        &["lease", "keep-alive", "--once", &lease],
    );
    let out = s.run("put unknown lease", &["put", "x", "v", "--lease=1234abcd"]);
    s.expect_error(
        &out,
        "put unknown lease",
        "etcdserver: requested lease not found",
    );
    let out = s.run("lease revoke unknown", &["lease", "revoke", "1234abcd"]);
    s.expect_error(
        &out,
        "lease revoke unknown",
        "etcdserver: requested lease not found",
    );
    s.run(
        "lease timetolive unknown",
        &["lease", "timetolive", "1234abcd"],
    );
    s.run(
        "lease keep-alive unknown",
        &["lease", "keep-alive", "--once", "1234abcd"],
    );
    // The minimum TTL is 1.5 election timeouts (1.5 s) rounded up. This lease has no keys,
    // so its expiry later on changes no revision; it is not listed again.
    let out = s.grant("lease grant short", "1");
    let _ = out;
    let granted = s.transcript.lines().last().unwrap_or("").to_string();
    s.check(
        granted.contains("TTL(2s)"),
        format!("lease grant 1: TTL(2s): {granted}"),
    );

    // --- watch ----------------------------------------------------------------------------
    // Every watch starts at an explicit revision, so no write can race the watch creation.
    let out = s.run("revision before watches", &["get", "a", "-w", "json"]);
    let now = json_u64(&out, &["header", "revision"]).unwrap_or(0);
    s.check(
        now == 23,
        format!("revision before watches is 23, not {now}"),
    );
    let next = (now + 1).to_string();
    let out = s.watch(
        "watch prefix prev-kv",
        &["--prefix", "w/", "--rev", &next, "--prev-kv"],
        Some("w/done\nyes\n"),
        |s| {
            s.run("watched put 1", &["put", "w/a", "1"]);
            s.run("watched put 2", &["put", "w/a", "2"]);
            s.run("watched del", &["del", "w/a"]);
            s.run_step(
                "watched txn",
                &["txn"],
                Step {
                    stdin: Some("\nput w/b 1\nput w/c 1\nput other 1\n\n\n"),
                    ..Step::default()
                },
            );
            s.run("watched put done", &["put", "w/done", "yes"]);
        },
    );
    s.check(
        out.stdout
            == "PUT\nw/a\n1\nPUT\nw/a\n1\nw/a\n2\nDELETE\nw/a\n2\nw/a\n\nPUT\nw/b\n1\nPUT\nw/c\n1\nPUT\nw/done\nyes\n",
        format!("watch --prefix --prev-kv events: {:?}", out.stdout),
    );
    let out = s.watch(
        "watch history from rev 2",
        &["a", "--rev", "2"],
        Some("a\nlast\n"),
        |s| {
            s.run("watched put a", &["put", "a", "last"]);
        },
    );
    s.check(
        out.stdout.starts_with("PUT\na\n1\nPUT\na\n2\nPUT\na\n3\n"),
        format!("watch --rev 2 replays history: {:?}", out.stdout),
    );
    let out = s.run("revision before json watch", &["get", "a", "-w", "json"]);
    let next = (json_u64(&out, &["header", "revision"]).unwrap_or(0) + 1).to_string();
    s.watch(
        "watch json",
        &["w/j", "--rev", &next, "-w", "json"],
        Some("\"type\":1"),
        |s| {
            s.run("watched put j", &["put", "w/j", "1"]);
            s.run("watched del j", &["del", "w/j"]);
        },
    );

    // --- compaction -----------------------------------------------------------------------
    let out = s.run("compaction", &["compaction", "5"]);
    s.expect_stdout(&out, "compaction", "compacted revision 5\n");
    let out = s.run("compaction again", &["compaction", "5"]);
    s.expect_error(
        &out,
        "compaction again",
        "etcdserver: mvcc: required revision has been compacted",
    );
    s.run("compaction older", &["compaction", "4"]);
    let out = s.run("compaction future", &["compaction", "100000"]);
    s.expect_error(
        &out,
        "compaction future",
        "etcdserver: mvcc: required revision is a future revision",
    );
    let out = s.run("get compacted rev", &["get", "a", "--rev", "4"]);
    s.expect_error(
        &out,
        "get compacted rev",
        "etcdserver: mvcc: required revision has been compacted",
    );
    let out = s.run("get at compact rev", &["get", "b", "--rev", "5"]);
    s.expect_stdout(&out, "get at compact rev", "b\n10\n");
    let out = s.watch("watch compacted", &["a", "--rev", "2"], None, |_| {});
    s.check(
        out.code == Some(5) && out.stderr.contains("required revision has been compacted"),
        format!("watch of a compacted revision is canceled: {out:?}"),
    );
    let out = s.run("compaction physical", &["compaction", "10", "--physical"]);
    s.expect_stdout(&out, "compaction physical", "compacted revision 10\n");
    let out = s.run_step(
        "endpoint hashkv",
        &["endpoint", "hashkv"],
        Step {
            fields: &[1],
            ..Step::default()
        },
    );
    let hashes: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|line| line.split(", ").nth(1))
        .collect();
    s.check(
        hashes.len() == 3 && hashes.iter().all(|hash| *hash == hashes[0]),
        format!("hashkv equal on every member: {}", out.stdout),
    );
    s.run(
        "endpoint hashkv rev json",
        &["endpoint", "hashkv", "--rev", "20", "-w", "json"],
    );

    // --- maintenance ----------------------------------------------------------------------
    let out = s.run("alarm list", &["alarm", "list"]);
    s.expect_stdout(&out, "alarm list", "");
    let out = s.run("defrag", &["defrag"]);
    s.check(
        out.success() && out.stdout.matches("Finished defragmenting").count() == 3,
        "defrag: 3 members",
    );
    let snapshot: PathBuf = cluster.directory().join("snap.db");
    let snapshot_arg = snapshot.display().to_string();
    let out = s.run_step(
        "snapshot save",
        &["snapshot", "save", &snapshot_arg],
        Step {
            members: Some(&[0]),
            ..Step::default()
        },
    );
    let size = std::fs::metadata(&snapshot).map(|m| m.len()).unwrap_or(0);
    s.check(
        out.success() && size > 0 && size % 512 == 32,
        format!("snapshot: size {size} % 512 == 32: {out:?}"),
    );
    let out = s.run(
        "snapshot save many endpoints",
        &["snapshot", "save", &snapshot_arg],
    );
    s.check(!out.success(), "snapshot save needs exactly one endpoint");

    let ids = cluster.member_ids();
    match cluster.leader() {
        Some(leader) => {
            let target = (leader + 1) % cluster.len();
            let target_hex = format!("{:x}", ids[target]);
            let out = s.run_step(
                "move-leader",
                &["move-leader", &target_hex],
                Step {
                    any_member: true,
                    ..Step::default()
                },
            );
            s.check(out.success(), format!("move-leader: {out:?}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while cluster.leader() != Some(target) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            s.check(
                cluster.leader() == Some(target),
                "move-leader: the target leads",
            );
        }
        None => s.check(false, "move-leader: no agreed leader"),
    }
    let out = s.run("move-leader unknown", &["move-leader", "1234"]);
    s.expect_error(
        &out,
        "move-leader unknown",
        "etcdserver: bad leader transferee",
    );
    s.run_step(
        "endpoint status after move-leader",
        &["endpoint", "status"],
        Step {
            fields: status_fields,
            ..Step::default()
        },
    );
    let out = s.run("final dump", &["get", "", "--prefix", "-w", "json"]);
    s.check(
        json_u64(&out, &["header", "revision"]) == Some(now + 8),
        format!("final revision {}: {}", now + 8, out.stdout),
    );

    (s.transcript, s.failures)
}

/// Starts a 3-member cluster of `kind`, runs the script, stops the cluster.
fn run_on(kind: Kind) -> (String, Vec<String>) {
    let started = Instant::now();
    let cluster = Cluster::start(kind, 3, options());
    let up = started.elapsed();
    let (transcript, failures) = script(&cluster);
    drop(cluster);
    println!(
        "{}: cluster up in {up:.1?}, script and shutdown in {:.1?}",
        kind.name(),
        started.elapsed() - up
    );
    (transcript, failures)
}

/// Writes a transcript next to the build output and returns its path.
fn save(name: &str, transcript: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, transcript).expect("write the transcript");
    path
}

#[test]
fn etcdctl_script_against_etcd() {
    if !support::etcd_available("etcdctl_script_against_etcd") {
        return;
    }
    let (transcript, failures) = run_on(Kind::Etcd);
    let path = save("etcdctl_compat.etcd.txt", &transcript);
    assert!(
        failures.is_empty(),
        "etcd failed {} checks (transcript in {}):\n{}",
        failures.len(),
        path.display(),
        failures.join("\n")
    );
    if std::env::var_os("SKIFF_BLESS").is_some() {
        let expected =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/etcdctl_expected.txt");
        std::fs::write(&expected, &transcript).expect("write the expected transcript");
        println!("wrote {}", expected.display());
        return;
    }
    let diff = mask::diff(EXPECTED, &transcript);
    assert!(
        diff.is_empty(),
        "etcd's masked transcript ({}) differs from support/etcdctl_expected.txt \
         (rerun with SKIFF_BLESS=1 if the change is intended):\n{diff}",
        path.display()
    );
}

#[test]
fn etcdctl_script_skiff_matches_etcd() {
    if !support::etcd_available("etcdctl_script_skiff_matches_etcd") {
        return;
    }
    if let Some(reason) = support::skiff_serve_missing() {
        panic!("skiff serve is not available: {reason}");
    }
    let (expected, etcd_failures) = run_on(Kind::Etcd);
    assert!(
        etcd_failures.is_empty(),
        "the reference run on etcd failed its checks:\n{}",
        etcd_failures.join("\n")
    );
    let (actual, failures) = run_on(Kind::Skiff);
    let etcd_path = save("etcdctl_compat.etcd.txt", &expected);
    let skiff_path = save("etcdctl_compat.skiff.txt", &actual);
    let diff = mask::diff(&expected, &actual);
    assert!(
        diff.is_empty() && failures.is_empty(),
        "skiff differs from etcd 3.4.23 (transcripts: {} and {}).\n\
         Failed checks on skiff:\n{}\n\nDiff (- etcd, + skiff):\n{diff}",
        etcd_path.display(),
        skiff_path.display(),
        failures.join("\n")
    );
}

/// The fault-test helpers on etcd: leader, pause/resume, kill/restart, and no leftovers.
#[test]
fn cluster_helpers_against_etcd() {
    if !support::etcd_available("cluster_helpers_against_etcd") {
        return;
    }
    let mut cluster = Cluster::start(Kind::Etcd, 3, Options::default());
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let follower = (leader + 1) % cluster.len();
    assert!(cluster.etcdctl(&["put", "k", "1"]).success());

    cluster.pause(follower);
    let out = cluster.etcdctl(&["put", "k", "2"]);
    assert!(
        out.success(),
        "a paused follower does not block writes: {out:?}"
    );
    cluster.resume(follower);

    cluster.kill(follower);
    assert!(!cluster.is_running(follower));
    assert!(cluster.etcdctl(&["put", "k", "3"]).success());
    cluster.restart(follower);
    let out = cluster.etcdctl_at(&[follower], &["get", "k", "--print-value-only"]);
    assert_eq!(out.stdout, "3\n", "the restarted member caught up: {out:?}");
    assert_eq!(cluster.endpoints().len(), 3);
    // Some member leads again (not necessarily the old leader: a restart may cause an election).
    cluster.wait_leader(Duration::from_secs(10));

    let pids: Vec<u32> = (0..cluster.len()).filter_map(|m| cluster.pid(m)).collect();
    let directory = cluster.directory().to_path_buf();
    drop(cluster);
    assert!(!directory.exists(), "the cluster directory is removed");
    for pid in pids {
        assert!(
            !PathBuf::from(format!("/proc/{pid}")).exists(),
            "member process {pid} is gone"
        );
    }
}

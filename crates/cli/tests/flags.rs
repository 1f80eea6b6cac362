//! The `skiff` binary's member flags, run as operators run them: defaults, `SKIFF_*`
//! variables, the flag/variable conflict, and refusals (exit code 2, naming the flag).

use std::collections::BTreeMap;
use std::process::{Command, Output};

fn skiff(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("cannot run skiff")
}

/// `--print-config` output as flag → value; fails the test unless the run succeeded.
fn config(args: &[&str], env: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut all = args.to_vec();
    all.push("--print-config");
    let out = skiff(&all, env);
    assert!(
        out.status.success(),
        "{args:?} {env:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (k, v) = line.split_once('=').expect("not flag=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Runs a command line that must be refused; returns stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut all = args.to_vec();
    all.push("--print-config");
    let out = skiff(&all, env);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} {env:?} was not refused with 2: stdout {} stderr {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "printed a configuration for {args:?}"
    );
    stderr
}

#[test]
fn defaults_are_etcds() {
    let c = config(&[], &[]);
    let expected = [
        ("name", "default"),
        ("data-dir", "default.skiff"),
        ("listen-client-urls", "127.0.0.1:2379"),
        ("advertise-client-urls", "http://localhost:2379"),
        ("listen-peer-urls", "127.0.0.1:2380"),
        ("initial-advertise-peer-urls", "http://localhost:2380"),
        ("initial-cluster", "default=http://localhost:2380"),
        ("initial-cluster-state", "new"),
        ("initial-cluster-token", "etcd-cluster"),
        ("heartbeat-interval", "100"),
        ("election-timeout", "1000"),
        ("snapshot-count", "100000"),
        ("snapshot-catchup-entries", "5000"),
        ("max-request-bytes", "1572864"),
        ("max-txn-ops", "128"),
        ("max-client-connections", "10000"),
        ("log-level", "info"),
        ("listen-metrics-urls", ""),
    ];
    assert_eq!(c.len(), expected.len(), "{c:?}");
    for (flag, value) in expected {
        assert_eq!(c.get(flag).map(String::as_str), Some(value), "{flag}");
    }
}

#[test]
fn serve_subcommand_and_bare_flags_are_the_same() {
    let args = [
        "--name",
        "n2",
        "--listen-peer-urls",
        "http://127.0.0.1:12380",
        "--initial-advertise-peer-urls",
        "http://127.0.0.1:12380",
        "--initial-cluster",
        "n1=http://127.0.0.1:2380,n2=http://127.0.0.1:12380",
        "--snapshot-count=5000",
        "--listen-metrics-urls",
        "http://localhost:9090,http://127.0.0.1:9091",
    ];
    let bare = config(&args, &[]);
    let mut with_serve = vec!["serve"];
    with_serve.extend(args);
    assert_eq!(config(&with_serve, &[]), bare);
    assert_eq!(bare["data-dir"], "n2.skiff");
    assert_eq!(bare["listen-peer-urls"], "127.0.0.1:12380");
    assert_eq!(bare["snapshot-count"], "5000");
    assert_eq!(bare["listen-metrics-urls"], "127.0.0.1:9090,127.0.0.1:9091");
    assert_eq!(
        bare["initial-cluster"],
        "n1=http://127.0.0.1:2380,n2=http://127.0.0.1:12380"
    );
}

#[test]
fn single_dash_spelling_works() {
    let c = config(&["-name", "x", "-data-dir=/tmp/x"], &[]);
    assert_eq!(c["name"], "x");
    assert_eq!(c["data-dir"], "/tmp/x");
}

#[test]
fn environment_variables_fill_unset_flags() {
    let c = config(
        &["--heartbeat-interval", "200"],
        &[
            ("SKIFF_NAME", "envname"),
            ("SKIFF_INITIAL_CLUSTER", "envname=http://localhost:2380"),
            ("SKIFF_ELECTION_TIMEOUT", "2000"),
            ("SKIFF_INITIAL_CLUSTER_STATE", "existing"),
            ("SKIFF_LOG_LEVEL", "warn"),
            ("SKIFF_DATA_DIR", ""),
        ],
    );
    assert_eq!(c["name"], "envname");
    assert_eq!(
        c["data-dir"], "envname.skiff",
        "an empty variable counts as unset"
    );
    assert_eq!(c["heartbeat-interval"], "200");
    assert_eq!(c["election-timeout"], "2000");
    assert_eq!(c["initial-cluster-state"], "existing");
    assert_eq!(c["log-level"], "warn");
}

#[test]
fn flag_and_variable_together_is_refused() {
    let err = refused(&["--name", "a"], &[("SKIFF_NAME", "a")]);
    assert!(
        err.contains(
            "conflicting environment variable \"SKIFF_NAME\" is shadowed by corresponding \
             command-line flag (either unset environment variable or disable flag)"
        ),
        "{err}"
    );
    let err = refused(
        &["--initial-cluster", "default=http://localhost:2380"],
        &[("SKIFF_INITIAL_CLUSTER", "default=http://localhost:2380")],
    );
    assert!(err.contains("\"SKIFF_INITIAL_CLUSTER\""), "{err}");
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a [&'a str]);
    let cases: &[Case] = &[
        (&["--bogus-flag", "1"], &[], &["--bogus-flag"]),
        (
            &["--listen-client-urls", "https://127.0.0.1:2379"],
            &[],
            &["--listen-client-urls", "https is not supported yet"],
        ),
        (
            &["--advertise-client-urls", "ftp://127.0.0.1:2379"],
            &[],
            &["--advertise-client-urls", "scheme must be http"],
        ),
        (
            &["--listen-peer-urls", "127.0.0.1:2380"],
            &[],
            &["--listen-peer-urls"],
        ),
        (
            &["--listen-peer-urls", "http://no-such-host.invalid:2380"],
            &[],
            &["--listen-peer-urls", "cannot resolve host"],
        ),
        (
            &["--heartbeat-interval", "500"],
            &[],
            &["--election-timeout[1000ms] should be at least as 5 times as --heartbeat-interval[500ms]"],
        ),
        (
            &["--heartbeat-interval", "1000", "--election-timeout", "1000"],
            &[],
            &["--heartbeat-interval[1000ms]"],
        ),
        (
            &["--election-timeout", "50001", "--heartbeat-interval", "1000"],
            &[],
            &["--election-timeout[50001ms] is too long, and should be set less than 50000ms"],
        ),
        (
            &["--heartbeat-interval", "fast"],
            &[],
            &["--heartbeat-interval", "\"fast\""],
        ),
        (
            &["--initial-cluster", "default"],
            &[],
            &["--initial-cluster", "no '='"],
        ),
        (
            &["--name", "n3", "--initial-cluster", "n1=http://localhost:2380"],
            &[],
            &["--initial-cluster", "couldn't find local name \"n3\""],
        ),
        (
            &["--initial-cluster", "default=http://localhost:2390"],
            &[],
            &["--initial-cluster", "--initial-advertise-peer-urls"],
        ),
        (
            &["--initial-cluster-state", "maybe"],
            &[],
            &["--initial-cluster-state", "\"maybe\""],
        ),
        (&["--log-level", "trace"], &[], &["--log-level"]),
        (&["--max-txn-ops", "-1"], &[], &["--max-txn-ops"]),
        (&[], &[("SKIFF_SNAPSHOT_COUNT", "lots")], &["SKIFF_SNAPSHOT_COUNT"]),
        (
            &["--listen-client-urls", "http://127.0.0.1:2379"],
            &[],
            &["--advertise-client-urls is required when --listen-client-urls is set explicitly"],
        ),
    ];
    for (args, env, expected) in cases {
        let err = refused(args, env);
        for needle in *expected {
            assert!(
                err.contains(needle),
                "{args:?} {env:?}: {err:?} lacks {needle:?}"
            );
        }
    }
}

#[test]
fn bench_still_parses() {
    let out = skiff(&["bench", "--dial-timeout", "0", "put"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dial-timeout"));
    let help = skiff(&["--help"], &[]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("serve") && text.contains("bench"), "{text}");
}

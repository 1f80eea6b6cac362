//! The file formats and the `check` command.

use std::path::PathBuf;

use skiff_check::parse::JEPSEN_KEY;
use skiff_check::{
    check_file, parse_jepsen, parse_kv, run_check_command_to, Budget, Format, KvInput, KvOutput,
    Operation, Verdict,
};

fn register() -> String {
    JEPSEN_KEY.to_owned()
}

#[test]
fn jepsen_log_becomes_operations() {
    let text = "\
INFO  jepsen.util - 0\t:invoke\t:read\tnil
INFO  jepsen.util - 1 :invoke :write 3
INFO  jepsen.util - :nemesis :info :start nil
INFO  jepsen.core - Worker 2 starting
INFO  jepsen.util - 0\t:ok\t:read\tnil
INFO  jepsen.util - 1\t:ok\t:write\t3
INFO  jepsen.util - 2\t:invoke\t:cas\t[3 4]
INFO  jepsen.util - 3\t:invoke\t:cas\t[1 2]
INFO  jepsen.util - 2\t:ok\t:cas\t[3 4]
INFO  jepsen.util - 3\t:fail\t:cas\t[1 2]
INFO  jepsen.util - 4\t:invoke\t:write\t1
INFO  jepsen.util - 4\t:info\t:write\t:timed-out
INFO  jepsen.util - 0\t:invoke\t:read\tnil
INFO  jepsen.util - 0\t:fail\t:read\t:timed-out
INFO  jepsen.util - 1\t:invoke\t:read\tnil
INFO  jepsen.util - 1\t:ok\t:read\t4
INFO  jepsen.util - 3\t:invoke\t:cas\t[nil 0]
";
    let operations = parse_jepsen(text).unwrap();
    let expected = vec![
        Operation {
            client: 0,
            input: KvInput::Get { key: register() },
            output: Some(KvOutput::Value(None)),
            invoke: 1,
            ret: Some(5),
        },
        Operation {
            client: 1,
            input: KvInput::Put {
                key: register(),
                value: "3".into(),
            },
            output: Some(KvOutput::Ok),
            invoke: 2,
            ret: Some(6),
        },
        Operation {
            client: 2,
            input: KvInput::Cas {
                key: register(),
                from: Some("3".into()),
                to: "4".into(),
            },
            output: Some(KvOutput::CasResult(true)),
            invoke: 7,
            ret: Some(9),
        },
        // Process 3's failed cas did not take effect: dropped.
        Operation {
            client: 4,
            input: KvInput::Put {
                key: register(),
                value: "1".into(),
            },
            output: None,
            invoke: 11,
            ret: None,
        },
        // Process 0's timed-out read tells nothing: dropped.
        Operation {
            client: 1,
            input: KvInput::Get { key: register() },
            output: Some(KvOutput::Value(Some("4".into()))),
            invoke: 15,
            ret: Some(16),
        },
        // Still outstanding at the end of the file: unknown outcome.
        Operation {
            client: 3,
            input: KvInput::Cas {
                key: register(),
                from: None,
                to: "0".into(),
            },
            output: None,
            invoke: 17,
            ret: None,
        },
    ];
    assert_eq!(operations, expected);
}

#[test]
fn jepsen_errors_name_the_line() {
    let cases = [
        ("INFO  jepsen.util - 0\t:ok\t:read\t1\n", 1, "never invoked"),
        (
            "INFO  jepsen.util - 0 :invoke :read nil\n\nINFO  jepsen.util - 0 :invoke :read nil\n",
            3,
            "outstanding",
        ),
        (
            "INFO  jepsen.util - 0 :invoke :read nil\nINFO  jepsen.util - 0 :ok :write 1\n",
            2,
            "outstanding operation is",
        ),
        ("INFO  jepsen.util - 0 :invoke :cas 1\n", 1, "[FROM TO]"),
        (
            "INFO  jepsen.util - 0 :invoke :delete 1\n",
            1,
            "unknown function",
        ),
        (
            "INFO  jepsen.util - 0 :started :read nil\n",
            1,
            "unknown event type",
        ),
        ("INFO  jepsen.util - 0 :invoke\n", 1, "expected"),
    ];
    for (text, line, fragment) in cases {
        let error = parse_jepsen(text).unwrap_err();
        assert_eq!(error.line, line, "{text:?}: {error}");
        assert!(error.message.contains(fragment), "{text:?}: {error}");
        assert!(error.to_string().starts_with(&format!("line {line}: ")));
    }
}

#[test]
fn kv_history_becomes_operations() {
    let text = r#"{:process 0, :type :invoke, :f :append, :key "0", :value "x 0 0 y"}
{:process 1, :type :invoke, :f :get, :key "7", :value nil}
{:process 0, :type :ok, :f :append, :key "0", :value "x 0 0 y"}

{:process 1, :type :ok, :f :get, :key "7", :value "say \"hi\""}
{:process 2, :type :invoke, :f :put, :key "3", :value "v", :time 12}
{:process 3, :type :invoke, :f :put, :key "3", :value "w"}
{:process 3, :type :fail, :f :put, :key "3", :value "w"}
"#;
    let operations = parse_kv(text).unwrap();
    let expected = vec![
        Operation {
            client: 0,
            input: KvInput::Append {
                key: "0".into(),
                value: "x 0 0 y".into(),
            },
            output: Some(KvOutput::Ok),
            invoke: 1,
            ret: Some(3),
        },
        Operation {
            client: 1,
            input: KvInput::Get { key: "7".into() },
            output: Some(KvOutput::Value(Some("say \"hi\"".into()))),
            invoke: 2,
            ret: Some(5),
        },
        Operation {
            client: 2,
            input: KvInput::Put {
                key: "3".into(),
                value: "v".into(),
            },
            output: None,
            invoke: 6,
            ret: None,
        },
    ];
    assert_eq!(operations, expected);
}

#[test]
fn kv_errors_name_the_line() {
    let invoke = r#"{:process 0, :type :invoke, :f :get, :key "k", :value nil}"#;
    let cases = [
        (
            r#"{:process 0, :type :invoke, :f :get, :key "k""#.to_owned(),
            1,
            "missing `}`",
        ),
        (
            r#"{:process 0, :type :invoke, :f :get, :value nil}"#.to_owned(),
            1,
            "missing :key",
        ),
        (
            r#"{:process 0, :type :invoke, :f :get, :key "k, :value nil}"#.to_owned(),
            1,
            "unterminated string",
        ),
        (
            r#"{:process 0, :type :invoke, :f :cas, :key "k", :value nil}"#.to_owned(),
            1,
            "unknown :f",
        ),
        (
            r#"{:process 0, :type :invoke, :f :put, :key "k", :value nil}"#.to_owned(),
            1,
            "needs a string",
        ),
        (
            format!(
                "{invoke}\n{}",
                r#"{:process 0, :type :ok, :f :get, :key "j", :value "1"}"#
            ),
            2,
            "completes key",
        ),
        (format!("\n\n{invoke}\n{invoke}"), 4, "outstanding"),
        ("process 0 ok".to_owned(), 1, "expected `{`"),
    ];
    for (text, line, fragment) in cases {
        let error = parse_kv(&text).unwrap_err();
        assert_eq!(error.line, line, "{text:?}: {error}");
        assert!(error.message.contains(fragment), "{text:?}: {error}");
    }
}

/// A file in the system temporary directory, removed when dropped.
struct TemporaryFile(PathBuf);

impl TemporaryFile {
    fn new(name: &str, contents: &str) -> TemporaryFile {
        let path = std::env::temp_dir().join(format!("skiff-check-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TemporaryFile(path)
    }
}

impl Drop for TemporaryFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const GOOD_KV: &str = r#"{:process 0, :type :invoke, :f :put, :key "k", :value "a"}
{:process 0, :type :ok, :f :put, :key "k", :value "a"}
{:process 1, :type :invoke, :f :get, :key "k", :value nil}
{:process 1, :type :ok, :f :get, :key "k", :value "a"}
"#;

const BAD_KV: &str = r#"{:process 0, :type :invoke, :f :put, :key "k", :value "a"}
{:process 0, :type :ok, :f :put, :key "k", :value "a"}
{:process 1, :type :invoke, :f :get, :key "k", :value nil}
{:process 1, :type :ok, :f :get, :key "k", :value ""}
"#;

fn run(format: &str, files: &[PathBuf]) -> (i32, String) {
    let mut out = Vec::new();
    let code = run_check_command_to(format, files, Budget::default(), &mut out);
    (code, String::from_utf8(out).unwrap())
}

#[test]
fn check_file_reads_and_checks() {
    let good = TemporaryFile::new("good.txt", GOOD_KV);
    let bad = TemporaryFile::new("bad.txt", BAD_KV);
    assert_eq!(
        check_file(Format::Kv, &good.0).unwrap(),
        Verdict::Linearizable
    );
    assert_eq!(
        check_file(Format::Kv, &bad.0).unwrap(),
        Verdict::NotLinearizable
    );
    // The same file as Jepsen has no operations at all.
    assert_eq!(
        check_file(Format::Jepsen, &bad.0).unwrap(),
        Verdict::Linearizable
    );
}

#[test]
fn command_prints_one_line_per_file_and_exits_zero_when_all_were_checked() {
    let good = TemporaryFile::new("cmd-good.txt", GOOD_KV);
    let bad = TemporaryFile::new("cmd-bad.txt", BAD_KV);
    let (code, output) = run("kv", &[good.0.clone(), bad.0.clone()]);
    assert_eq!(code, 0);
    assert_eq!(
        output,
        format!(
            "{}: linearizable\n{}: not linearizable\n",
            good.0.display(),
            bad.0.display()
        )
    );
}

#[test]
fn command_reports_unreadable_and_malformed_files() {
    let good = TemporaryFile::new("err-good.txt", GOOD_KV);
    let malformed = TemporaryFile::new("err-malformed.txt", "{:process 0\n");
    let missing = std::env::temp_dir().join("skiff-check-no-such-file.txt");
    let (code, output) = run(
        "kv",
        &[missing.clone(), malformed.0.clone(), good.0.clone()],
    );
    assert_eq!(code, 1);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines.len(), 3, "{output}");
    assert!(
        lines[0].starts_with(&format!("{}: error: cannot read", missing.display())),
        "{output}"
    );
    assert!(
        lines[1].starts_with(&format!("{}: error: line 1: ", malformed.0.display())),
        "{output}"
    );
    assert_eq!(lines[2], format!("{}: linearizable", good.0.display()));
}

#[test]
fn command_reports_exhausted_budget() {
    let good = TemporaryFile::new("budget.txt", GOOD_KV);
    let mut out = Vec::new();
    let code = run_check_command_to(
        "kv",
        std::slice::from_ref(&good.0),
        Budget::steps(0),
        &mut out,
    );
    assert_eq!(code, 1);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        format!("{}: unknown (budget exhausted)\n", good.0.display())
    );
}

#[test]
fn command_rejects_unknown_format() {
    let (code, output) = run("edn", &[]);
    assert_eq!(code, 2);
    assert!(output.contains("unknown format `edn`"), "{output}");
}

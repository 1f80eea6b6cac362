//! etcd's own client, `etcdctl` 3.4, against the API over a loopback port (skipped when
//! `/usr/bin/etcdctl` is not installed).

mod common;

use std::path::Path;
use std::process::Command;

use common::TestServer;

const ETCDCTL: &str = "/usr/bin/etcdctl";

/// Runs etcdctl against `server`; answers (success, stdout, stderr).
async fn etcdctl(server: &TestServer, args: &[&str]) -> (bool, String, String) {
    let endpoint = format!("--endpoints=127.0.0.1:{}", server.addr.port());
    let args: Vec<String> = std::iter::once(endpoint)
        .chain(args.iter().map(|arg| arg.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let output = Command::new("timeout")
            .arg("20")
            .arg(ETCDCTL)
            .args(&args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("etcdctl runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

async fn ok(server: &TestServer, args: &[&str]) -> String {
    let (success, stdout, stderr) = etcdctl(server, args).await;
    assert!(success, "etcdctl {args:?} failed: {stdout}{stderr}");
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_basics() {
    if !Path::new(ETCDCTL).exists() {
        eprintln!("skipped: {ETCDCTL} is not installed");
        return;
    }
    let server = TestServer::start().await;
    assert_eq!(ok(&server, &["put", "foo", "bar"]).await, "OK\n");
    assert_eq!(ok(&server, &["put", "foo/x", "1"]).await, "OK\n");
    assert_eq!(ok(&server, &["get", "foo"]).await, "foo\nbar\n");
    assert_eq!(
        ok(&server, &["get", "--prefix", "foo"]).await,
        "foo\nbar\nfoo/x\n1\n"
    );
    let json = ok(&server, &["get", "foo", "-w", "json"]).await;
    assert!(json.contains("\"count\":1"), "{json}");

    let txn = "mod(\"foo\") > \"0\"\n\nput foo baz\n\nput foo never\n\n";
    let (success, stdout, stderr) = {
        let endpoint = format!("--endpoints=127.0.0.1:{}", server.addr.port());
        let txn = txn.to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut child = Command::new("timeout")
                .args(["20", ETCDCTL, &endpoint, "txn"])
                .env("ETCDCTL_API", "3")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(txn.as_bytes())
                .unwrap();
            let output = child.wait_with_output().unwrap();
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                String::from_utf8_lossy(&output.stderr).into_owned(),
            )
        })
        .await
        .unwrap()
    };
    assert!(success, "{stdout}{stderr}");
    assert!(stdout.starts_with("SUCCESS"), "{stdout}");
    assert_eq!(
        ok(&server, &["get", "foo", "--print-value-only"]).await,
        "baz\n"
    );

    assert_eq!(ok(&server, &["del", "foo"]).await, "1\n");

    let (success, _, stderr) = etcdctl(&server, &["put", "", "v"]).await;
    assert!(!success);
    assert!(stderr.contains("key is not provided"), "{stderr}");

    let granted = ok(&server, &["lease", "grant", "60"]).await;
    let id = granted.split_whitespace().nth(1).unwrap().to_string();
    assert!(granted.contains("granted with TTL(60s)"), "{granted}");
    ok(&server, &["put", "--lease", &id, "leased", "v"]).await;
    let ttl = ok(&server, &["lease", "timetolive", &id, "--keys"]).await;
    assert!(ttl.contains("attached keys([leased])"), "{ttl}");
    let kept = ok(&server, &["lease", "keep-alive", "--once", &id]).await;
    assert!(kept.contains("keepalived with TTL(60)"), "{kept}");
    let list = ok(&server, &["lease", "list"]).await;
    assert!(list.contains(&id), "{list}");
    let revoked = ok(&server, &["lease", "revoke", &id]).await;
    assert!(revoked.contains("revoked"), "{revoked}");
    assert_eq!(ok(&server, &["get", "leased"]).await, "");

    // `watch` runs until killed: give it a moment to print the history, then stop it.
    let (_, watched, _) = {
        let endpoint = format!("--endpoints=127.0.0.1:{}", server.addr.port());
        tokio::task::spawn_blocking(move || {
            let output = Command::new("timeout")
                .args([
                    "2", ETCDCTL, &endpoint, "watch", "--rev", "1", "--prefix", "foo",
                ])
                .env("ETCDCTL_API", "3")
                .output()
                .unwrap();
            (
                output.status.success(),
                String::from_utf8_lossy(&output.stdout).into_owned(),
                (),
            )
        })
        .await
        .unwrap()
    };
    assert!(
        watched.starts_with("PUT\nfoo\nbar\nPUT\nfoo/x\n1\nPUT\nfoo\nbaz\nDELETE\nfoo\n"),
        "{watched}"
    );

    let status = ok(&server, &["endpoint", "status", "-w", "json"]).await;
    assert!(status.contains("\"version\":\"3.4.23\""), "{status}");
    let (healthy, out, err) = etcdctl(&server, &["endpoint", "health"]).await;
    assert!(
        healthy && format!("{out}{err}").contains("is healthy"),
        "{out}{err}"
    );
    let members = ok(&server, &["member", "list"]).await;
    assert!(
        members.contains("started, one, http://127.0.0.1:1"),
        "{members}"
    );
    assert!(members.contains("unstarted"), "{members}");
    ok(&server, &["endpoint", "hashkv"]).await;

    let dir = std::env::temp_dir().join(format!("skiff-api-etcdctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("snap.db");
    let saved = ok(&server, &["snapshot", "save", file.to_str().unwrap()]).await;
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(size % 512, 32);
    std::fs::remove_dir_all(&dir).unwrap();

    let compacted = ok(&server, &["compaction", "3"]).await;
    assert_eq!(compacted, "compacted revision 3\n");
    let (success, _, stderr) = etcdctl(&server, &["get", "foo", "--rev", "2"]).await;
    assert!(!success);
    assert!(
        stderr.contains("required revision has been compacted"),
        "{stderr}"
    );
}

//! `skiff demo` runs its whole scenario on real processes and stops by itself with
//! `--exit-after-scenario`: election, writes through a follower, the leader killed, a new
//! leader, the old one restarted and caught up.

use std::process::Command;
use std::time::{Duration, Instant};

#[test]
fn the_demo_scenario_runs_to_the_end() {
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_skiff"))
        .args([
            "demo",
            "--exit-after-scenario",
            "--election-timeout",
            "500",
            "--heartbeat-interval",
            "50",
        ])
        .output()
        .expect("run skiff demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    for expected in [
        "Started 3 skiff members",
        "etcdctl --endpoints=",
        "was elected leader",
        "(forwarded to the leader) -> revision 6",
        "with SIGKILL",
        "took over in term",
        "put demo/10 -> revision 11",
        "finds 10 keys on the new leader",
        "finds 10 keys.",
        "as a learner with MemberAdd",
        "received the log and caught up in",
        "now has 4 voting members",
        "Scenario complete",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(60));
}

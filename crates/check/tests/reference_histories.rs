//! Prove the checker on real histories with known verdicts: the Jepsen etcd logs and the
//! key-value histories in `shared/data` (outside the repository; see its README).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use skiff_check::{check_file_with_budget, Budget, Format, Verdict};

/// The most one reference file may take; the brief's bound, far above what any file needs.
const PER_FILE_LIMIT: Duration = Duration::from_secs(10);

/// `shared/data` next to the repository, or `None` (after saying so) when absent outside CI.
fn data_directory() -> Option<PathBuf> {
    // SKIFF_SHARED_DATA overrides; otherwise `shared/data` beside the repository, or the
    // workplace's copy when the repository was cloned elsewhere.
    let beside = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data");
    let directory = match std::env::var_os("SKIFF_SHARED_DATA") {
        Some(path) => PathBuf::from(path),
        None if beside.is_dir() => beside,
        None => PathBuf::from("/work/shared/data"),
    };
    if directory.is_dir() {
        return Some(directory);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "reference histories not found at {} (required when CI=true)",
            directory.display()
        );
    }
    println!(
        "SKIPPED: reference histories not found at {}",
        directory.display()
    );
    None
}

struct Outcome {
    file: String,
    verdict: Verdict,
    elapsed: Duration,
}

/// Check one file, with a step budget far above the need so `Unknown` shows up as a failure.
fn check(format: Format, path: &Path) -> Outcome {
    let started = Instant::now();
    let verdict = check_file_with_budget(format, path, Budget::default())
        .unwrap_or_else(|error| panic!("{error}"));
    Outcome {
        file: path.file_name().unwrap().to_string_lossy().into_owned(),
        verdict,
        elapsed: started.elapsed(),
    }
}

fn expected_verdict(word: &str) -> Verdict {
    match word {
        "linearizable" => Verdict::Linearizable,
        "not-linearizable" => Verdict::NotLinearizable,
        other => panic!("unknown verdict `{other}` in VERDICTS.tsv"),
    }
}

/// Assert every verdict and time, reporting all mismatches at once.
fn assert_outcomes(outcomes: &[(Outcome, Verdict)]) {
    let mut failures = Vec::new();
    for (outcome, expected) in outcomes {
        if outcome.verdict != *expected {
            failures.push(format!(
                "{}: got {}, expected {}",
                outcome.file, outcome.verdict, expected
            ));
        }
        if outcome.elapsed > PER_FILE_LIMIT {
            failures.push(format!("{}: took {:?}", outcome.file, outcome.elapsed));
        }
    }
    let slowest = outcomes
        .iter()
        .map(|(outcome, _)| outcome)
        .max_by_key(|outcome| outcome.elapsed);
    if let Some(slowest) = slowest {
        println!(
            "{} files checked, slowest {} in {:?}",
            outcomes.len(),
            slowest.file,
            slowest.elapsed
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn jepsen_etcd_histories_match_their_verdicts() {
    let Some(data) = data_directory() else {
        return;
    };
    let directory = data.join("jepsen-etcd-histories");
    let verdicts = std::fs::read_to_string(directory.join("VERDICTS.tsv")).unwrap();
    let mut outcomes = Vec::new();
    for line in verdicts.lines().filter(|line| !line.trim().is_empty()) {
        let (file, verdict) = line.split_once('\t').expect("`file<TAB>verdict`");
        let outcome = check(Format::Jepsen, &directory.join(file));
        outcomes.push((outcome, expected_verdict(verdict.trim())));
    }
    assert_eq!(outcomes.len(), 102, "VERDICTS.tsv lists 102 histories");
    let linearizable = outcomes
        .iter()
        .filter(|(_, expected)| *expected == Verdict::Linearizable)
        .count();
    assert_eq!(linearizable, 23);
    assert_outcomes(&outcomes);
}

#[test]
fn kv_histories_match_their_names() {
    let Some(data) = data_directory() else {
        return;
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("kv-histories"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let mut outcomes = Vec::new();
    for path in files {
        let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
        let expected = if stem.ends_with("-ok") {
            Verdict::Linearizable
        } else if stem.ends_with("-bad") {
            Verdict::NotLinearizable
        } else {
            panic!("{}: name ends neither -ok nor -bad", path.display());
        };
        outcomes.push((check(Format::Kv, &path), expected));
    }
    assert!(outcomes.len() >= 4, "expected the four kv histories");
    assert_outcomes(&outcomes);
}

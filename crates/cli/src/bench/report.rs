//! Statistics and the printed report, in the format of etcd's `pkg/report` so that
//! output from `skiff bench` and etcd's `benchmark` can be read side by side.
//!
//! The algorithms (percentile pick, histogram buckets) follow etcd's so that the same
//! latencies give the same figures; they are pure functions over sorted seconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The percentiles printed under "Latency distribution", as etcd prints them.
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Number of equal-width buckets in the response-time histogram (plus one for the slowest).
pub const HISTOGRAM_BUCKETS: usize = 10;

const BAR_WIDTH: usize = 40;

/// The outcome of a benchmark run: per-request latencies and errors.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// Wall-clock time of the whole run.
    pub total: Duration,
    /// Latencies of the successful requests in seconds, sorted ascending.
    pub latencies_secs: Vec<f64>,
    /// Mean latency in seconds (0 without successes).
    pub average_secs: f64,
    /// Population standard deviation of the latencies in seconds.
    pub stddev_secs: f64,
    /// Fastest successful request in seconds.
    pub fastest_secs: f64,
    /// Slowest successful request in seconds.
    pub slowest_secs: f64,
    /// Successful requests per second of wall-clock time.
    pub requests_per_sec: f64,
    /// Failed requests, counted by error text.
    pub errors: BTreeMap<String, u64>,
}

impl Stats {
    /// Computes the statistics from unsorted latencies, error counts and the run's duration.
    pub fn new(
        mut latencies_secs: Vec<f64>,
        errors: BTreeMap<String, u64>,
        total: Duration,
    ) -> Stats {
        latencies_secs.sort_by(f64::total_cmp);
        let count = latencies_secs.len();
        let (average_secs, stddev_secs) = if count == 0 {
            (0.0, 0.0)
        } else {
            let average = latencies_secs.iter().sum::<f64>() / count as f64;
            let variance = latencies_secs
                .iter()
                .map(|latency| (latency - average) * (latency - average))
                .sum::<f64>()
                / count as f64;
            (average, variance.sqrt())
        };
        let total_secs = total.as_secs_f64();
        Stats {
            total,
            average_secs,
            stddev_secs,
            fastest_secs: latencies_secs.first().copied().unwrap_or(0.0),
            slowest_secs: latencies_secs.last().copied().unwrap_or(0.0),
            requests_per_sec: if total_secs > 0.0 {
                count as f64 / total_secs
            } else {
                0.0
            },
            errors,
            latencies_secs,
        }
    }

    /// Number of successful requests.
    pub fn succeeded(&self) -> u64 {
        self.latencies_secs.len() as u64
    }

    /// Number of failed requests.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The latency at `percent` (0..100) by etcd's rule: the first sorted sample whose
    /// rank `i * 100 / n` reaches the percentile. 0 without samples.
    pub fn percentile_secs(&self, percent: f64) -> f64 {
        percentile(&self.latencies_secs, percent)
    }
}

/// etcd's percentile rule over sorted seconds (see [`Stats::percentile_secs`]).
pub fn percentile(sorted_secs: &[f64], percent: f64) -> f64 {
    let count = sorted_secs.len();
    (0..count)
        .find(|&index| index as f64 * 100.0 / count as f64 >= percent)
        .map(|index| sorted_secs[index])
        .unwrap_or(0.0)
}

/// One histogram row: samples `<= upper_bound_secs` and above the previous bound.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Inclusive upper bound of the bucket in seconds.
    pub upper_bound_secs: f64,
    /// Samples in the bucket.
    pub count: u64,
}

/// etcd's histogram: bounds `fastest + i * (slowest - fastest) / 10` for i in 0..10, then
/// `slowest`; each sorted sample goes to the first bucket whose bound is not below it.
pub fn histogram(sorted_secs: &[f64]) -> Vec<Bucket> {
    let (Some(&fastest), Some(&slowest)) = (sorted_secs.first(), sorted_secs.last()) else {
        return Vec::new();
    };
    let width = (slowest - fastest) / HISTOGRAM_BUCKETS as f64;
    let mut buckets: Vec<Bucket> = (0..=HISTOGRAM_BUCKETS)
        .map(|index| Bucket {
            upper_bound_secs: if index == HISTOGRAM_BUCKETS {
                slowest
            } else {
                fastest + width * index as f64
            },
            count: 0,
        })
        .collect();
    let mut bucket_index = 0;
    for &latency in sorted_secs {
        while latency > buckets[bucket_index].upper_bound_secs && bucket_index < HISTOGRAM_BUCKETS {
            bucket_index += 1;
        }
        buckets[bucket_index].count += 1;
    }
    buckets
}

/// The human-readable report in etcd's layout (`Summary:`, histogram, distribution,
/// errors). Empty sections are left out as etcd does.
pub fn render_text(stats: &Stats) -> String {
    let mut text = String::new();
    if !stats.latencies_secs.is_empty() {
        let _ = writeln!(text, "\nSummary:");
        let _ = writeln!(text, "  Total:\t{:4.4} secs.", stats.total.as_secs_f64());
        let _ = writeln!(text, "  Slowest:\t{:4.4} secs.", stats.slowest_secs);
        let _ = writeln!(text, "  Fastest:\t{:4.4} secs.", stats.fastest_secs);
        let _ = writeln!(text, "  Average:\t{:4.4} secs.", stats.average_secs);
        let _ = writeln!(text, "  Stddev:\t{:4.4} secs.", stats.stddev_secs);
        let _ = writeln!(text, "  Requests/sec:\t{:4.4}", stats.requests_per_sec);

        let buckets = histogram(&stats.latencies_secs);
        let most = buckets.iter().map(|bucket| bucket.count).max().unwrap_or(0);
        let _ = writeln!(text, "\nResponse time histogram:");
        for bucket in &buckets {
            let bar_length = if most > 0 {
                (bucket.count as usize * BAR_WIDTH) / most as usize
            } else {
                0
            };
            let _ = writeln!(
                text,
                "  {:4.4} [{}]\t|{}",
                bucket.upper_bound_secs,
                bucket.count,
                "∎".repeat(bar_length)
            );
        }

        let _ = writeln!(text, "\nLatency distribution:");
        for percent in PERCENTILES {
            let latency = stats.percentile_secs(percent);
            if latency > 0.0 {
                let _ = writeln!(text, "  {percent}% in {latency:4.4} secs.");
            }
        }
    }
    if !stats.errors.is_empty() {
        let _ = writeln!(text, "\nError distribution:");
        for (error, count) in &stats.errors {
            let _ = writeln!(text, "  [{count}]\t{error}");
        }
    }
    text
}

/// A JSON string literal (quotes, backslashes and control characters escaped).
fn json_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for character in text.chars() {
        match character {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            control if (control as u32) < 0x20 => {
                let _ = write!(quoted, "\\u{:04x}", control as u32);
            }
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

/// One line of JSON for scripts: workload, endpoints, counts, requests/s and latencies in ms.
pub fn render_json_line(workload: &str, endpoints: &[String], stats: &Stats) -> String {
    let milliseconds = |secs: f64| secs * 1000.0;
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|endpoint| json_string(endpoint))
        .collect();
    format!(
        concat!(
            "{{\"workload\":{},\"endpoints\":[{}],\"succeeded\":{},\"failed\":{},\"total_secs\":{:.6},",
            "\"requests_per_sec\":{:.3},\"average_ms\":{:.4},\"stddev_ms\":{:.4},",
            "\"fastest_ms\":{:.4},\"slowest_ms\":{:.4},\"p50_ms\":{:.4},\"p90_ms\":{:.4},",
            "\"p99_ms\":{:.4},\"p999_ms\":{:.4}}}"
        ),
        json_string(workload),
        endpoints.join(","),
        stats.succeeded(),
        stats.failed(),
        stats.total.as_secs_f64(),
        stats.requests_per_sec,
        milliseconds(stats.average_secs),
        milliseconds(stats.stddev_secs),
        milliseconds(stats.fastest_secs),
        milliseconds(stats.slowest_secs),
        milliseconds(stats.percentile_secs(50.0)),
        milliseconds(stats.percentile_secs(90.0)),
        milliseconds(stats.percentile_secs(99.0)),
        milliseconds(stats.percentile_secs(99.9)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(latencies: &[f64], total_secs: f64) -> Stats {
        Stats::new(
            latencies.to_vec(),
            BTreeMap::new(),
            Duration::from_secs_f64(total_secs),
        )
    }

    fn close(left: f64, right: f64) -> bool {
        (left - right).abs() < 1e-9
    }

    #[test]
    fn summary_statistics() {
        let stats = stats_of(&[0.004, 0.001, 0.003, 0.002], 2.0);
        assert_eq!(stats.latencies_secs, vec![0.001, 0.002, 0.003, 0.004]);
        assert!(close(stats.average_secs, 0.0025));
        // Population deviation: sqrt(((1.5² + 0.5²) * 2) / 4) ms.
        assert!(close(stats.stddev_secs, 0.001_118_033_988_749_895));
        assert!(close(stats.fastest_secs, 0.001));
        assert!(close(stats.slowest_secs, 0.004));
        assert!(close(stats.requests_per_sec, 2.0));
        assert_eq!(stats.succeeded(), 4);
        assert_eq!(stats.failed(), 0);
    }

    #[test]
    fn empty_run_has_zeroes_and_only_errors_printed() {
        let mut errors = BTreeMap::new();
        errors.insert("rpc error: code = Unavailable desc = down".to_string(), 3);
        let stats = Stats::new(Vec::new(), errors, Duration::from_secs(1));
        assert_eq!(stats.average_secs, 0.0);
        assert_eq!(stats.requests_per_sec, 0.0);
        assert_eq!(stats.failed(), 3);
        assert!(histogram(&stats.latencies_secs).is_empty());
        let text = render_text(&stats);
        assert!(!text.contains("Summary"));
        assert_eq!(
            text,
            "\nError distribution:\n  [3]\trpc error: code = Unavailable desc = down\n"
        );
    }

    #[test]
    fn percentiles_follow_etcds_rule() {
        let sorted: Vec<f64> = (1..=1000).map(|value| value as f64).collect();
        // Rank i * 100 / 1000 >= p first holds at i = 10 * p.
        assert_eq!(percentile(&sorted, 10.0), 101.0);
        assert_eq!(percentile(&sorted, 50.0), 501.0);
        assert_eq!(percentile(&sorted, 99.0), 991.0);
        assert_eq!(percentile(&sorted, 99.9), 1000.0);
        // Few samples: 99.9% is never reached by rank (n - 1) * 100 / n.
        assert_eq!(percentile(&[1.0, 2.0], 50.0), 2.0);
        assert_eq!(percentile(&[1.0, 2.0], 99.9), 0.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn histogram_buckets_and_counts() {
        let sorted: Vec<f64> = (0..=10).map(|value| value as f64).collect();
        let buckets = histogram(&sorted);
        assert_eq!(buckets.len(), HISTOGRAM_BUCKETS + 1);
        let bounds: Vec<f64> = buckets
            .iter()
            .map(|bucket| bucket.upper_bound_secs)
            .collect();
        assert_eq!(bounds, sorted);
        assert!(buckets.iter().all(|bucket| bucket.count == 1));

        let skewed = histogram(&[1.0, 1.0, 1.0, 1.05, 2.0]);
        let counts: Vec<u64> = skewed.iter().map(|bucket| bucket.count).collect();
        assert_eq!(counts, vec![3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(counts.iter().sum::<u64>(), 5);

        let single = histogram(&[0.5, 0.5]);
        assert_eq!(single.iter().map(|bucket| bucket.count).sum::<u64>(), 2);
        assert_eq!(single[0].count, 2);
    }

    #[test]
    fn text_report_layout() {
        let stats = stats_of(&[0.001, 0.002, 0.003, 0.004], 1.0);
        let text = render_text(&stats);
        let expected_start = "\nSummary:\n  Total:\t1.0000 secs.\n  Slowest:\t0.0040 secs.\n  \
                              Fastest:\t0.0010 secs.\n  Average:\t0.0025 secs.\n  Stddev:\t0.0011 secs.\n  \
                              Requests/sec:\t4.0000\n\nResponse time histogram:\n  0.0010 [1]\t|";
        assert!(text.starts_with(expected_start), "{text}");
        assert!(text.contains("  0.0040 [1]\t|∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎∎\n"));
        assert!(text
            .contains("\nLatency distribution:\n  10% in 0.0020 secs.\n  25% in 0.0020 secs.\n"));
        assert!(text.contains("  50% in 0.0030 secs.\n"));
        assert!(!text.contains("99.9%"));
        assert!(!text.contains("Error distribution"));
    }

    #[test]
    fn json_line_has_the_comparison_fields() {
        let stats = stats_of(&[0.001, 0.003], 0.5);
        let endpoints = ["http://127.0.0.1:2379".to_string(), "a\"b\\".to_string()];
        let line = render_json_line("put", &endpoints, &stats);
        let start = r#"{"workload":"put","endpoints":["http://127.0.0.1:2379","a\"b\\"],"succeeded":2,"failed":0,"#;
        assert!(line.starts_with(start), "{line}");
        assert!(line.contains("\"requests_per_sec\":4.000,"), "{line}");
        assert!(line.contains("\"average_ms\":2.0000,"), "{line}");
        assert!(line.contains("\"p50_ms\":3.0000,"), "{line}");
        // Two samples never reach the 99th rank; etcd prints nothing there either.
        assert!(line.contains("\"p99_ms\":0.0000,"), "{line}");
        assert!(line.ends_with('}') && !line.contains('\n'));
    }
}

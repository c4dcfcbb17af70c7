//! The result of one benchmark run and its two renderings: etcd benchmark's
//! human summary (`pkg/report` in etcd) and a one-line JSON record for
//! scripts. Latencies are held in an HDR histogram in microseconds, so the
//! report costs the same memory for 1 000 requests as for 10 000 000.
//!
//! Only successful requests count towards latency and Requests/sec, as in
//! etcd; failed ones are tallied by error text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::error::status_message;

/// The percentiles etcd's report prints under "Latency distribution".
const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Latencies above an hour are clamped; no request of a benchmark lasts that long.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// The latencies and errors one client task (or a whole run) collected.
#[derive(Debug, Clone)]
pub struct Stats {
    latencies: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

impl Stats {
    pub fn new() -> Self {
        // Bounds 1 us ..= 1 h with 3 significant digits are valid constants:
        // `new_with_bounds` only fails for low < 1, high < 2 * low or sigfig > 5.
        #[allow(clippy::unwrap_used)]
        let latencies = Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).unwrap();
        Self { latencies, errors: BTreeMap::new() }
    }

    pub fn record_ok(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.latencies.saturating_record(micros.max(1));
    }

    /// Tallies a failed request under the text etcdctl would show for it.
    pub fn record_err(&mut self, error: &etcd_client::Error) {
        let text = match error {
            etcd_client::Error::GRpcStatus(status) => status_message(status),
            other => other.to_string(),
        };
        *self.errors.entry(text).or_default() += 1;
    }

    /// Tallies `count` failures under `text`.
    pub fn record_errors(&mut self, text: &str, count: u64) {
        if count > 0 {
            *self.errors.entry(text.to_owned()).or_default() += count;
        }
    }

    /// Folds another task's stats into these.
    pub fn merge(&mut self, other: &Stats) {
        // Both histograms share the same bounds, so adding cannot go out of range.
        self.latencies.add(&other.latencies).ok();
        for (text, count) in &other.errors {
            *self.errors.entry(text.clone()).or_default() += count;
        }
    }
}

/// A finished run: what was measured, over how long.
#[derive(Debug)]
pub struct Report {
    pub workload: &'static str,
    pub stats: Stats,
    pub elapsed: Duration,
}

impl Report {
    pub fn requests(&self) -> u64 {
        self.stats.latencies.len()
    }

    pub fn errors(&self) -> u64 {
        self.stats.errors.values().sum()
    }

    /// Successful requests per second of wall time.
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.requests() as f64 / secs } else { 0.0 }
    }

    /// The latency at `percentile` (0..=100), in seconds.
    pub fn percentile_secs(&self, percentile: f64) -> f64 {
        micros_to_secs(self.stats.latencies.value_at_quantile(percentile / 100.0))
    }

    pub fn average_secs(&self) -> f64 {
        self.stats.latencies.mean() / 1e6
    }

    /// The summary etcd's `benchmark` prints, line for line.
    pub fn summary(&self) -> String {
        let h = &self.stats.latencies;
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = writeln!(s, "\nSummary:");
        let _ = writeln!(s, "  Total:\t{}.", sec2str(self.elapsed.as_secs_f64()));
        if !h.is_empty() {
            let _ = writeln!(s, "  Slowest:\t{}.", sec2str(micros_to_secs(h.max())));
            let _ = writeln!(s, "  Fastest:\t{}.", sec2str(micros_to_secs(h.min())));
            let _ = writeln!(s, "  Average:\t{}.", sec2str(self.average_secs()));
            let _ = writeln!(s, "  Stddev:\t{}.", sec2str(h.stdev() / 1e6));
        }
        let _ = writeln!(s, "  Requests/sec:\t{:.4}", self.rps());
        if !h.is_empty() {
            s.push_str(&self.histogram());
            s.push_str(&self.latency_distribution());
        }
        if !self.stats.errors.is_empty() {
            let _ = writeln!(s, "\nError distribution:");
            for (text, count) in &self.stats.errors {
                let _ = writeln!(s, "  [{count}]\t{text}");
            }
        }
        s
    }

    /// Ten equal-width buckets from the fastest to the slowest request, bars
    /// scaled so the fullest bucket is 40 wide (etcd's `histogram()`).
    fn histogram(&self) -> String {
        let h = &self.stats.latencies;
        let (fastest, slowest) = (micros_to_secs(h.min()), micros_to_secs(h.max()));
        let width = (slowest - fastest) / 10.0;
        let mut bounds: Vec<f64> = (0..10).map(|i| fastest + width * f64::from(i)).collect();
        bounds.push(slowest);
        let mut counts = vec![0u64; bounds.len()];
        for v in h.iter_recorded() {
            let secs = micros_to_secs(v.value_iterated_to());
            // The last bound is the slowest value, so a bucket is always found.
            let bucket = bounds.iter().position(|b| secs <= *b).unwrap_or(bounds.len() - 1);
            counts[bucket] += v.count_at_value();
        }
        let max = counts.iter().copied().max().unwrap_or(0);
        let mut s = String::from("\nResponse time histogram:\n");
        for (bound, count) in bounds.iter().zip(&counts) {
            let bar = (count * 40).checked_div(max).unwrap_or(0) as usize;
            let _ = writeln!(s, "  {bound:.4} [{count}]\t|{}", "∎".repeat(bar));
        }
        s
    }

    fn latency_distribution(&self) -> String {
        let mut s = String::from("\nLatency distribution:\n");
        for p in PERCENTILES {
            let secs = self.percentile_secs(p);
            if secs > 0.0 {
                let _ = writeln!(s, "  {p}% in {}.", sec2str(secs));
            }
        }
        s
    }

    /// One line for scripts; latencies in milliseconds, to the microsecond.
    pub fn json(&self) -> serde_json::Value {
        let ms = |secs: f64| (secs * 1e6).round() / 1e3;
        serde_json::json!({
            "workload": self.workload,
            "requests": self.requests(),
            "errors": self.errors(),
            "seconds": (self.elapsed.as_secs_f64() * 1e6).round() / 1e6,
            "rps": (self.rps() * 100.0).round() / 100.0,
            "p50_ms": ms(self.percentile_secs(50.0)),
            "p90_ms": ms(self.percentile_secs(90.0)),
            "p99_ms": ms(self.percentile_secs(99.0)),
            "avg_ms": ms(self.average_secs()),
        })
    }
}

fn micros_to_secs(micros: u64) -> f64 {
    micros as f64 / 1e6
}

fn sec2str(secs: f64) -> String {
    format!("{secs:.4} secs")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 1 ms, 2 ms, ..., 100 ms, one request each, over two seconds.
    fn one_to_hundred_ms() -> Report {
        let mut stats = Stats::new();
        for ms in 1..=100 {
            stats.record_ok(Duration::from_millis(ms));
        }
        Report { workload: "put", stats, elapsed: Duration::from_secs(2) }
    }

    /// HDR buckets hold 3 significant digits, so values come back within 0.1%.
    fn assert_close(actual: f64, expected: f64) {
        assert!((actual - expected).abs() <= expected * 1e-3, "{actual} != {expected}");
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let r = one_to_hundred_ms();
        assert_close(r.percentile_secs(10.0), 0.010);
        assert_close(r.percentile_secs(50.0), 0.050);
        assert_close(r.percentile_secs(90.0), 0.090);
        assert_close(r.percentile_secs(99.0), 0.099);
        assert_close(r.percentile_secs(99.9), 0.100);
        assert_close(r.average_secs(), 0.0505);
    }

    #[test]
    fn rate_counts_successes_only() {
        let mut r = one_to_hundred_ms();
        let mut failed = Stats::new();
        failed.record_err(&etcd_client::Error::InvalidArgs("boom".into()));
        r.stats.merge(&failed);
        assert_eq!(r.requests(), 100);
        assert_eq!(r.errors(), 1);
        assert_close(r.rps(), 50.0);
    }

    #[test]
    fn summary_has_etcds_sections_and_every_request_in_a_bucket() {
        let s = one_to_hundred_ms().summary();
        for section in ["Summary:", "Requests/sec:\t50.0000", "Response time histogram:", "Latency distribution:", "  99.9% in "] {
            assert!(s.contains(section), "{section:?} missing from\n{s}");
        }
        let bucketed: u64 = s
            .lines()
            .filter_map(|l| l.split_once('[')?.1.split_once(']')?.0.parse::<u64>().ok())
            .sum();
        assert_eq!(bucketed, 100);
    }

    #[test]
    fn json_is_one_line_in_milliseconds() {
        let j = one_to_hundred_ms().json();
        assert_eq!(j["workload"], "put");
        assert_eq!(j["requests"], 100);
        assert_close(j["p50_ms"].as_f64().unwrap_or_default(), 50.0);
        assert!(!j.to_string().contains('\n'));
    }
}

//! Samples, medians and the markdown tables.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::proxies::Kind;

/// One measured run of one proxy in one scenario.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Completed requests per second (load generator's figure).
    pub rps: f64,
    /// Proxy CPU time (utime + stime, whole process tree) per completed request, µs.
    pub cpu_us_per_req: f64,
    /// Latency percentiles (ms), from the load generator.
    pub p50_ms: Option<f64>,
    /// p99.
    pub p99_ms: Option<f64>,
    /// p99.9.
    pub p999_ms: Option<f64>,
    /// VmRSS after start, before any traffic (KiB).
    pub idle_rss_kib: u64,
    /// VmHWM at the end of the run (KiB).
    pub peak_rss_kib: u64,
    /// Proxy CPU seconds / wall seconds during the measured load (1.0 = one core busy).
    pub busy: f64,
    /// 2xx responses.
    pub ok: u64,
    /// (e) TLS handshakes at the inbound sidecar during the measured load.
    pub tls_handshakes: Option<u64>,
    /// (e) of those, resumed sessions (`ssl.session_reused`), if the proxy has that stat.
    pub tls_resumed: Option<u64>,
    /// The round (0-based) the run belonged to, to pair runs of one round.
    pub round: u32,
}

/// Median, min and max of some values.
#[derive(Clone, Copy, Debug)]
pub struct Spread {
    /// Median (mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// How many values.
    pub n: usize,
}

/// Median/min/max of `v`, `None` if empty.
pub fn spread(v: &[f64]) -> Option<Spread> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let median = if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 };
    Some(Spread { median, min: s[0], max: s[n - 1], n })
}

/// `median (min–max)` with `prec` decimals, or `—`.
pub fn fmt_spread(s: Option<Spread>, prec: usize) -> String {
    match s {
        None => "—".into(),
        Some(s) if s.n == 1 => format!("{:.prec$}", s.median),
        Some(s) => format!("{:.prec$} ({:.prec$}–{:.prec$})", s.median, s.min, s.max),
    }
}

/// All samples of a scenario, by proxy (`K`: [`Kind`], or in `ab` mode a binary and a
/// bootstrap variant), plus failures.
pub struct ScenarioResults<K = Kind> {
    /// Samples by proxy, in run order.
    pub samples: BTreeMap<K, Vec<Sample>>,
    /// Failed runs by proxy (message), refusals included.
    pub failures: BTreeMap<K, Vec<String>>,
    /// Proxies that exited during start on every attempt so far (they refused the
    /// bootstrap): the refusal, for reports.
    pub refused: BTreeMap<K, crate::proxies::Refused>,
    /// The same load straight at the backend, when measured.
    pub direct: Option<crate::loadgen::LoadResult>,
}

impl<K> Default for ScenarioResults<K> {
    fn default() -> Self {
        ScenarioResults { samples: BTreeMap::new(), failures: BTreeMap::new(), refused: BTreeMap::new(), direct: None }
    }
}

impl<K: Ord> ScenarioResults<K> {
    /// Spread of one figure for one proxy.
    pub fn spread_of(&self, k: K, f: impl Fn(&Sample) -> Option<f64>) -> Option<Spread> {
        let v: Vec<f64> = self.samples.get(&k).map(|s| s.iter().filter_map(&f).collect()).unwrap_or_default();
        spread(&v)
    }

    /// Median of one figure for one proxy.
    pub fn median_of(&self, k: K, f: impl Fn(&Sample) -> Option<f64>) -> Option<f64> {
        self.spread_of(k, f).map(|s| s.median)
    }
}

/// Header of the main table.
pub const MAIN_HEADER: &str = "| Scenario | Proxy | req/s | CPU µs/req | p50 ms | p99 ms | p99.9 ms | RSS idle MiB | RSS peak MiB | proxy busy % |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";

/// Rows of the main table for one scenario, one per proxy of `order` (key, name).
pub fn main_rows<K: Ord + Copy>(
    label: &str,
    show_latency: bool,
    r: &ScenarioResults<K>,
    order: &[(K, &str)],
) -> String {
    let mut out = String::new();
    for &(k, name) in order {
        if let Some(f) = r.failures.get(&k).filter(|f| !f.is_empty()) {
            if r.samples.get(&k).is_none_or(|s| s.is_empty()) {
                let first = f[0].lines().next().unwrap_or("").replace('|', "/");
                let _ = writeln!(out, "| {label} | {name} | failed: {first} | | | | | | | |");
                continue;
            }
        }
        if r.samples.get(&k).is_none_or(|s| s.is_empty()) {
            continue;
        }
        let mib = |kib: u64| Some(kib as f64 / 1024.0);
        let lat = |f: fn(&Sample) -> Option<f64>| {
            if show_latency {
                fmt_spread(r.spread_of(k, f), 3)
            } else {
                "—".into()
            }
        };
        let _ = writeln!(
            out,
            "| {label} | {name} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_spread(r.spread_of(k, |s| Some(s.rps)), 0),
            fmt_spread(r.spread_of(k, |s| Some(s.cpu_us_per_req)), 1),
            lat(|s| s.p50_ms),
            lat(|s| s.p99_ms),
            lat(|s| s.p999_ms),
            fmt_spread(r.spread_of(k, |s| mib(s.idle_rss_kib)), 1),
            fmt_spread(r.spread_of(k, |s| mib(s.peak_rss_kib)), 1),
            fmt_spread(r.spread_of(k, |s| Some(s.busy * 100.0)), 0),
        );
    }
    out
}

/// One row of the targets table.
pub struct TargetRow {
    /// What is compared.
    pub what: String,
    /// Pinion's median.
    pub pinion: Option<f64>,
    /// Envoy's median.
    pub envoy: Option<f64>,
    /// The ratio must be at most (`true`) or at least (`false`) `target`.
    pub at_most: bool,
    /// Target ratio.
    pub target: f64,
    /// Unit for the two values.
    pub unit: &'static str,
}

impl TargetRow {
    /// Pinion / Envoy.
    pub fn ratio(&self) -> Option<f64> {
        match (self.pinion, self.envoy) {
            (Some(p), Some(e)) if e > 0.0 => Some(p / e),
            _ => None,
        }
    }

    /// Whether the target is met.
    pub fn met(&self) -> Option<bool> {
        self.ratio().map(|r| if self.at_most { r <= self.target } else { r >= self.target })
    }
}

/// The targets table.
pub fn targets_table(rows: &[TargetRow]) -> String {
    let mut out = String::from(
        "| Target | Pinion | Envoy | Pinion/Envoy | target | met? | off by |\n|---|---:|---:|---:|---:|---|---:|\n",
    );
    for r in rows {
        let v = |x: Option<f64>| x.map(|x| format!("{x:.2} {}", r.unit)).unwrap_or_else(|| "—".into());
        let ratio = r.ratio().map(|x| format!("{x:.2}x")).unwrap_or_else(|| "—".into());
        let (met, off) = match (r.met(), r.ratio()) {
            (Some(true), _) => ("yes".to_string(), String::new()),
            (Some(false), Some(x)) => ("**no**".to_string(), format!("{:.2}x the target", x / r.target)),
            _ => ("n/a".to_string(), String::new()),
        };
        let cmp = if r.at_most { "≤" } else { "≥" };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio} | {cmp} {:.2}x | {met} | {off} |",
            r.what,
            v(r.pinion),
            v(r.envoy),
            r.target
        );
    }
    out
}

/// One line of `smoke`'s verdict: passed or not, and what was seen.
pub struct SmokeLine {
    /// Whether the check passed.
    pub ok: bool,
    /// `<scenario> <subject>: <what was seen>`.
    pub text: String,
}

impl std::fmt::Display for SmokeLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "smoke {} {}", if self.ok { "ok  " } else { "FAIL" }, self.text)
    }
}

/// How far B's median is from A's (B/A), within which two builds count as equal.
pub const AB_TOLERANCE_PCT: f64 = 3.0;

/// The verdict of an A/B comparison of CPU per request (lower is better): "within 3%" or
/// "B is X% slower" / "B is X% faster", with a note when the two min–max ranges overlap
/// (with two or more runs each), i.e. the difference is within run-to-run noise.
pub fn ab_verdict(a: Spread, b: Spread) -> String {
    if a.median <= 0.0 {
        return "—".into();
    }
    let pct = ((b.median / a.median - 1.0) * 1000.0).round() / 10.0;
    if pct.abs() <= AB_TOLERANCE_PCT {
        return format!("within {AB_TOLERANCE_PCT:.0}%");
    }
    let what = if pct > 0.0 { "slower" } else { "faster" };
    let overlap = a.n >= 2 && b.n >= 2 && a.min <= b.max && b.min <= a.max;
    format!("B is {:.1}% {what}{}", pct.abs(), if overlap { " (but the min–max ranges overlap)" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        let s = spread(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(spread(&[1.0, 2.0, 3.0, 10.0]).unwrap().median, 2.5);
        assert!(spread(&[]).is_none());
        assert_eq!(fmt_spread(spread(&[1.0, 2.0, 3.0]), 1), "2.0 (1.0–3.0)");
    }

    #[test]
    fn targets() {
        let r = TargetRow {
            what: "x".into(),
            pinion: Some(20.0),
            envoy: Some(40.0),
            at_most: true,
            target: 0.45,
            unit: "µs",
        };
        assert_eq!(r.met(), Some(false));
        assert!(targets_table(&[r]).contains("1.11x the target"));
    }

    #[test]
    fn verdicts() {
        let s = |v: &[f64]| spread(v).unwrap();
        assert_eq!(ab_verdict(s(&[20.0]), s(&[20.6])), "within 3%");
        assert_eq!(ab_verdict(s(&[20.0]), s(&[19.4])), "within 3%");
        assert_eq!(ab_verdict(s(&[20.0]), s(&[21.0])), "B is 5.0% slower");
        assert_eq!(ab_verdict(s(&[20.0]), s(&[18.0])), "B is 10.0% faster");
        assert_eq!(
            ab_verdict(s(&[19.0, 20.0, 23.0]), s(&[21.0, 22.0, 24.0])),
            "B is 10.0% slower (but the min–max ranges overlap)"
        );
        assert_eq!(ab_verdict(s(&[19.0, 20.0, 20.5]), s(&[22.0, 22.0, 23.0])), "B is 10.0% slower");
    }
}

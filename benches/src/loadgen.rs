//! Load generators, run as child processes pinned to the load core: `oha` (preferred: it has
//! a constant-rate mode with latency correction and reports p99.9) and `h2load` (nghttp2's,
//! from Debian; the smoke mode's default because CI already installs it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

/// Which tool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// `oha` (cargo install oha).
    Oha,
    /// `h2load` (Debian nghttp2-client).
    H2load,
}

impl Tool {
    /// Command name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::Oha => "oha",
            Tool::H2load => "h2load",
        }
    }
}

/// A located load generator.
#[derive(Clone, Debug)]
pub struct LoadGen {
    /// Which tool.
    pub tool: Tool,
    /// Its binary.
    pub bin: PathBuf,
    /// Its version line.
    pub version: String,
}

/// How much load to send.
#[derive(Clone, Copy, Debug)]
pub enum Amount {
    /// For this long.
    Duration(Duration),
    /// Exactly this many requests.
    Requests(u64),
}

/// One load run.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Target URL.
    pub url: String,
    /// h2c with prior knowledge instead of HTTP/1.1.
    pub h2: bool,
    /// Connections.
    pub conns: u32,
    /// Concurrent streams per connection (h2 only; 1 for HTTP/1.1: no pipelining).
    pub streams: u32,
    /// Duration or count.
    pub amount: Amount,
    /// Constant total request rate (requests/s over all connections); `None` = as fast as possible.
    pub rate: Option<u32>,
    /// POST this file as the body (gRPC), with these extra headers.
    pub body: Option<PathBuf>,
    /// Extra request headers.
    pub headers: Vec<(String, String)>,
    /// CPUs to pin the generator to (`taskset -c`); `None` = unpinned.
    pub cpus: Option<String>,
}

/// What came back.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// Responses with a 2xx status.
    pub ok: u64,
    /// Responses with any other status.
    pub non_2xx: u64,
    /// Requests that got no response (connect errors, resets, timeouts).
    pub errors: u64,
    /// Completed requests per second (the tool's figure).
    pub rps: f64,
    /// Latency percentiles in milliseconds (p50, p99, p99.9), when the tool reports them.
    pub p50_ms: Option<f64>,
    /// p99.
    pub p99_ms: Option<f64>,
    /// p99.9.
    pub p999_ms: Option<f64>,
    /// Wall time of the run.
    pub wall: Duration,
    /// A short description of errors, if any.
    pub error_detail: String,
}

impl LoadResult {
    /// Requests that got any response.
    pub fn completed(&self) -> u64 {
        self.ok + self.non_2xx
    }
}

impl LoadGen {
    /// Runs one load and parses the tool's report. Bounded: the child is killed after the
    /// requested duration plus 60 s.
    pub fn run(&self, spec: &LoadSpec, scratch: &Path) -> anyhow::Result<LoadResult> {
        let args = match self.tool {
            Tool::Oha => oha_args(spec),
            Tool::H2load => h2load_args(spec, scratch),
        };
        let mut cmd = match &spec.cpus {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(c).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        let out_path = scratch.join(format!("{}.out", self.tool.name()));
        let err_path = scratch.join(format!("{}.err", self.tool.name()));
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out_path)?)
            .stderr(std::fs::File::create(&err_path)?);
        let limit = match spec.amount {
            Amount::Duration(d) => d + Duration::from_secs(60),
            Amount::Requests(_) => Duration::from_secs(120),
        };
        let start = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("start {} {}", self.bin.display(), args.join(" ")))?;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                bail!("{} did not finish within {limit:?}: {}", self.tool.name(), args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let wall = start.elapsed();
        let out = std::fs::read_to_string(&out_path).unwrap_or_default();
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        if !status.success() {
            bail!("{} {} failed ({status}):\n{out}\n{err}", self.tool.name(), args.join(" "));
        }
        let mut r = match self.tool {
            Tool::Oha => parse_oha(&out).with_context(|| format!("parsing oha output:\n{out}\n{err}"))?,
            Tool::H2load => {
                parse_h2load(&out, spec, scratch).with_context(|| format!("parsing h2load output:\n{out}"))?
            }
        };
        r.wall = wall;
        Ok(r)
    }
}

fn oha_args(spec: &LoadSpec) -> Vec<String> {
    let mut a: Vec<String> = vec!["--no-tui".into(), "--output-format".into(), "json".into()];
    // One runtime thread: the generator has one core, more threads would only contend.
    a.extend(["--worker-threads".into(), "1".into()]);
    a.extend(["-c".into(), spec.conns.to_string()]);
    if spec.h2 {
        a.extend(["--http2".into(), "-p".into(), spec.streams.to_string()]);
    }
    match spec.amount {
        // -w: requests in flight at the deadline are awaited, not counted as aborted.
        Amount::Duration(d) => a.extend(["-z".into(), format!("{}ms", d.as_millis()), "-w".into()]),
        Amount::Requests(n) => a.extend(["-n".into(), n.to_string()]),
    }
    if let Some(q) = spec.rate {
        a.extend(["-q".into(), q.to_string(), "--latency-correction".into()]);
    }
    if let Some(b) = &spec.body {
        a.extend(["-m".into(), "POST".into(), "-D".into(), b.display().to_string()]);
    }
    for (k, v) in &spec.headers {
        a.extend(["-H".into(), format!("{k}: {v}")]);
    }
    a.push(spec.url.clone());
    a
}

fn parse_oha(out: &str) -> anyhow::Result<LoadResult> {
    let v: serde_json::Value = serde_json::from_str(out.trim()).context("oha JSON")?;
    let mut r = LoadResult::default();
    if let Some(m) = v.get("statusCodeDistribution").and_then(|m| m.as_object()) {
        for (code, n) in m {
            let n = n.as_u64().unwrap_or(0);
            if code.starts_with('2') {
                r.ok += n;
            } else {
                r.non_2xx += n;
            }
        }
    }
    if let Some(m) = v.get("errorDistribution").and_then(|m| m.as_object()) {
        for (what, n) in m {
            let n = n.as_u64().unwrap_or(0);
            r.errors += n;
            r.error_detail.push_str(&format!("{n} x {what}; "));
        }
    }
    r.rps = v.pointer("/summary/requestsPerSec").and_then(|x| x.as_f64()).unwrap_or(0.0);
    let pct = |k: &str| v.get("latencyPercentiles").and_then(|p| p.get(k)).and_then(|x| x.as_f64()).map(|s| s * 1e3);
    r.p50_ms = pct("p50");
    r.p99_ms = pct("p99");
    r.p999_ms = pct("p99.9");
    Ok(r)
}

fn h2load_args(spec: &LoadSpec, scratch: &Path) -> Vec<String> {
    let mut a: Vec<String> = vec!["-t".into(), "1".into(), "-c".into(), spec.conns.to_string()];
    a.extend(["-m".into(), if spec.h2 { spec.streams.max(1) } else { 1 }.to_string()]);
    if !spec.h2 {
        a.push("--h1".into());
    }
    match spec.amount {
        Amount::Duration(d) => a.extend(["-D".into(), format!("{}", d.as_secs().max(1))]),
        Amount::Requests(n) => a.extend(["-n".into(), n.max(u64::from(spec.conns)).to_string()]),
    }
    if let Some(q) = spec.rate {
        // h2load's --rps is per client (connection).
        let per = (f64::from(q) / f64::from(spec.conns.max(1))).ceil() as u64;
        a.push(format!("--rps={per}"));
        a.extend(["--log-file".into(), scratch.join("h2load.log").display().to_string()]);
    }
    if let Some(b) = &spec.body {
        a.extend(["-d".into(), b.display().to_string()]);
    }
    for (k, v) in &spec.headers {
        a.extend(["-H".into(), format!("{k}: {v}")]);
    }
    a.push(spec.url.clone());
    a
}

fn parse_h2load(out: &str, spec: &LoadSpec, scratch: &Path) -> anyhow::Result<LoadResult> {
    let mut r = LoadResult::default();
    let nums = |line: &str| -> Vec<u64> {
        line.split([',', ' ', ':']).filter_map(|t| t.trim().parse::<u64>().ok()).collect::<Vec<_>>()
    };
    let reqs = out.lines().find(|l| l.starts_with("requests:")).ok_or_else(|| anyhow!("no 'requests:' line"))?;
    // requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
    let n = nums(reqs);
    let (total, done) = (n.first().copied().unwrap_or(0), n.get(2).copied().unwrap_or(0));
    let codes =
        out.lines().find(|l| l.starts_with("status codes:")).ok_or_else(|| anyhow!("no 'status codes:' line"))?;
    let c = nums(codes);
    r.ok = c.first().copied().unwrap_or(0);
    r.non_2xx = c.iter().skip(1).sum();
    // h2load -D counts requests still in flight at the deadline in `total` but not `done`.
    let unanswered = done.saturating_sub(r.ok + r.non_2xx);
    r.errors = unanswered;
    if matches!(spec.amount, Amount::Requests(_)) {
        r.errors += total.saturating_sub(done);
    }
    if r.errors > 0 {
        r.error_detail = reqs.to_string();
    }
    if let Some(l) = out.lines().find(|l| l.starts_with("finished in")) {
        // finished in 5.00s, 51234.56 req/s, 12.34MB/s
        r.rps = l.split(',').nth(1).and_then(|s| s.trim().split(' ').next()?.parse::<f64>().ok()).unwrap_or(0.0);
    }
    if spec.rate.is_some() {
        // Log lines: start time (µs since epoch), status, duration (µs), stream id.
        let log = std::fs::read_to_string(scratch.join("h2load.log")).unwrap_or_default();
        let mut lat: Vec<f64> =
            log.lines().filter_map(|l| l.split('\t').nth(2)?.trim().parse::<f64>().ok()).map(|us| us / 1e3).collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| -> Option<f64> {
            if lat.is_empty() {
                return None;
            }
            let i = ((p / 100.0) * (lat.len() as f64 - 1.0)).round() as usize;
            lat.get(i.min(lat.len() - 1)).copied()
        };
        r.p50_ms = pct(50.0);
        r.p99_ms = pct(99.0);
        r.p999_ms = pct(99.9);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> LoadSpec {
        LoadSpec {
            url: "http://127.0.0.1:1/".into(),
            h2: false,
            conns: 10,
            streams: 1,
            amount: Amount::Requests(100),
            rate: None,
            body: None,
            headers: vec![],
            cpus: None,
        }
    }

    #[test]
    fn parses_h2load_summary() {
        let out = "finished in 1.00s, 51234.56 req/s, 12.34MB/s\n\
                   requests: 100 total, 100 started, 100 done, 98 succeeded, 2 failed, 0 errored, 0 timeout\n\
                   status codes: 98 2xx, 0 3xx, 2 4xx, 0 5xx\n";
        let r = parse_h2load(out, &spec(), Path::new("/nonexistent")).unwrap();
        assert_eq!((r.ok, r.non_2xx, r.errors), (98, 2, 0));
        assert!((r.rps - 51234.56).abs() < 1e-6);
    }

    #[test]
    fn parses_oha_json() {
        let out = r#"{"summary":{"requestsPerSec":1000.5},"latencyPercentiles":{"p50":0.001,"p99":0.002,"p99.9":0.003},
                     "statusCodeDistribution":{"200":10,"503":1},"errorDistribution":{"connection reset":2}}"#;
        let r = parse_oha(out).unwrap();
        assert_eq!((r.ok, r.non_2xx, r.errors), (10, 1, 2));
        assert_eq!(r.p999_ms, Some(3.0));
    }
}

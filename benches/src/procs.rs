//! Child processes (pinned with `taskset`, always reaped) and what `/proc` says about them:
//! CPU time (utime + stime) and memory (VmRSS, VmHWM), summed over the process tree so a
//! master/worker proxy (nginx) is measured whole.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context as _;

/// A child process; SIGTERM then SIGKILL and reaped when stopped or dropped.
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Runs `program args` through `taskset -c <cpus>` (so the pid is the program's own:
    /// taskset execs it), with stdout and stderr captured to `log`. `cpus` `None` = unpinned.
    pub fn spawn(name: &str, cpus: Option<&str>, program: &Path, args: &[String], log: &Path) -> anyhow::Result<Proc> {
        let out = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = match cpus {
            Some(c) => {
                let mut cmd = Command::new("taskset");
                cmd.arg("-c").arg(c).arg(program);
                cmd
            }
            None => Command::new(program),
        };
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().with_context(|| format!("start {name}: {} {}", program.display(), args.join(" ")))?;
        Ok(Proc { name: name.to_string(), child: Some(child), log: log.to_path_buf() })
    }

    /// OS pid (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last 4 KiB of the captured output, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4096);
        format!(
            "----- {} output ({}) -----\n{}",
            self.name,
            self.log.display(),
            String::from_utf8_lossy(&text[start..])
        )
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL; always reaps.
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            pinion_testkit::terminate(child);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `pid` and all its descendants (found through each process's parent pid in `/proc`).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            if let Some(ppid) = stat_fields(p).and_then(|f| f.get(1).and_then(|s| s.parse::<u32>().ok())) {
                children.entry(ppid).or_default().push(p);
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    // Breadth-first; bounded by the number of processes on the machine.
    while i < out.len() {
        if let Some(c) = children.get(&out[i]) {
            out.extend(c.iter().copied().filter(|p| !out.contains(p)).collect::<Vec<_>>());
        }
        i += 1;
    }
    out
}

/// Fields of `/proc/<pid>/stat` after the `(comm)` field: index 0 is the state (field 3),
/// 1 the ppid (field 4), 11 utime (field 14), 12 stime (field 15).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of one process (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    stat_fields(pid)
        .map(|f| {
            let n = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            n(11) + n(12)
        })
        .unwrap_or(0)
}

/// utime + stime summed over the process tree, in clock ticks.
pub fn tree_cpu_ticks(pid: u32) -> u64 {
    process_tree(pid).into_iter().map(cpu_ticks).sum()
}

/// A `kB` field (`VmRSS`, `VmHWM`) of `/proc/<pid>/status`, in KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    s.lines()
        .find_map(|l| {
            let v = l.strip_prefix(field)?.strip_prefix(':')?;
            v.split_whitespace().next()?.parse::<u64>().ok()
        })
        .unwrap_or(0)
}

/// A `/proc/<pid>/status` field summed over the process tree, in KiB.
pub fn tree_status_kib(pid: u32, field: &str) -> u64 {
    process_tree(pid).into_iter().map(|p| status_kib(p, field)).sum()
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux if that fails).
pub fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Pins every thread of this process to `cpus` (`taskset -a -p -c`); new threads inherit it.
pub fn pin_self(cpus: &str) -> anyhow::Result<()> {
    let st = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .context("run taskset")?;
    anyhow::ensure!(st.success(), "taskset -a -p -c {cpus} failed: {st}");
    Ok(())
}

/// The first line of `program args` output (stdout, else stderr), for version strings.
pub fn first_line(program: &Path, args: &[&str]) -> String {
    match Command::new(program).args(args).stdin(Stdio::null()).output() {
        Ok(o) => {
            let pick = |b: &[u8]| String::from_utf8_lossy(b).lines().find(|l| !l.trim().is_empty()).map(str::to_string);
            pick(&o.stdout).or_else(|| pick(&o.stderr)).unwrap_or_default().trim().to_string()
        }
        Err(e) => format!("unknown ({e})"),
    }
}

/// `program` on PATH, if any.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

//! Access logs (`envoy.access_loggers.file`, `stdout`, `stderr`). Workers format lines and
//! hand them to one writer thread per file over a channel, so no worker ever blocks on disk.
//! The writer flushes when idle or every `--file-flush-interval-msec`. gRPC access logs
//! (`http_grpc` / `tcp_grpc`) go to [`crate::access_log_grpc`] instead.

use std::collections::HashMap;
use std::io::Write;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pinion_xds::model::{AccessLog, AccessLogFormat, AccessLogSink, DEFAULT_ACCESS_LOG_FORMAT};

use crate::formatter::{Context, Format};

static FLUSH_INTERVAL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1000);

/// Set how often writer threads flush (Envoy's `--file-flush-interval-msec`).
pub fn set_flush_interval(d: Duration) {
    FLUSH_INTERVAL_MS.store(d.as_millis().max(1) as u64, std::sync::atomic::Ordering::Relaxed);
}

fn writers() -> &'static Mutex<HashMap<String, Sender<String>>> {
    static W: OnceLock<Mutex<HashMap<String, Sender<String>>>> = OnceLock::new();
    W.get_or_init(Default::default)
}

/// Get (or start) the writer for `path`.
fn writer_for(sink: &AccessLogSink) -> Result<Sender<String>, String> {
    let key = match sink {
        AccessLogSink::File(p) => p.clone(),
        AccessLogSink::Stdout => "/dev/stdout".into(),
        AccessLogSink::Stderr => "/dev/stderr".into(),
        AccessLogSink::Grpc(_) => return Err("a gRPC access log has no writer".into()),
    };
    let mut map = writers().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = map.get(&key) {
        return Ok(tx.clone());
    }
    let out: Box<dyn Write + Send> = match sink {
        AccessLogSink::Stdout => Box::new(std::io::stdout()),
        AccessLogSink::Stderr => Box::new(std::io::stderr()),
        AccessLogSink::File(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("cannot open access log '{p}': {e}"))?,
        ),
        AccessLogSink::Grpc(_) => return Err("a gRPC access log has no writer".into()),
    };
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::Builder::new()
        .name("pinion-access-log".into())
        .spawn(move || write_loop(rx, out))
        .map_err(|e| e.to_string())?;
    map.insert(key, tx.clone());
    Ok(tx)
}

fn write_loop(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut last_flush = Instant::now();
    loop {
        let interval = Duration::from_millis(FLUSH_INTERVAL_MS.load(std::sync::atomic::Ordering::Relaxed));
        match rx.recv_timeout(interval) {
            Ok(line) => {
                let _ = out.write_all(line.as_bytes());
                if last_flush.elapsed() >= interval {
                    let _ = out.flush();
                    last_flush = Instant::now();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = out.flush();
                last_flush = Instant::now();
            }
            Err(RecvTimeoutError::Disconnected) => {
                let _ = out.flush();
                return;
            }
        }
    }
}

/// Flush every access log now (shutdown).
pub fn flush_all() {
    // Dropping senders is not possible while listeners hold clones; writers flush on their
    // interval, so wait one interval for pending lines to land.
    let ms = FLUSH_INTERVAL_MS.load(std::sync::atomic::Ordering::Relaxed).min(2000);
    if !writers().lock().map(|m| m.is_empty()).unwrap_or(true) {
        std::thread::sleep(Duration::from_millis(ms + 20));
    }
}

enum LineFormat {
    Text(Format),
    Json(Vec<(String, Format)>),
}

/// One configured access log.
#[derive(Clone)]
pub struct AccessLogger {
    kind: LoggerKind,
}

#[derive(Clone)]
enum LoggerKind {
    /// Formatted lines to a writer thread.
    Line { format: Arc<LineFormat>, tx: Sender<String> },
    /// Entries to an access log service.
    Grpc(crate::access_log_grpc::GrpcLogger),
}

impl AccessLogger {
    /// Set up a logger (opens the file, or joins the gRPC sink).
    pub fn new(cfg: &AccessLog) -> Result<Self, String> {
        if let AccessLogSink::Grpc(g) = &cfg.sink {
            return Ok(AccessLogger { kind: LoggerKind::Grpc(crate::access_log_grpc::GrpcLogger::new(g)?) });
        }
        let format = match &cfg.format {
            AccessLogFormat::Default => LineFormat::Text(Format::parse(DEFAULT_ACCESS_LOG_FORMAT)?),
            AccessLogFormat::Text(s) => LineFormat::Text(Format::parse(s)?),
            AccessLogFormat::Json(fields) => LineFormat::Json(
                fields.iter().map(|(k, v)| Ok((k.clone(), Format::parse(v)?))).collect::<Result<_, String>>()?,
            ),
        };
        Ok(AccessLogger { kind: LoggerKind::Line { format: Arc::new(format), tx: writer_for(&cfg.sink)? } })
    }

    /// Format and queue one line (or entry).
    pub fn log(&self, ctx: &Context<'_>) {
        let (format, tx) = match &self.kind {
            LoggerKind::Line { format, tx } => (format, tx),
            LoggerKind::Grpc(g) => return g.log(ctx),
        };
        let line = match &**format {
            LineFormat::Text(f) => f.render(ctx, false),
            LineFormat::Json(fields) => {
                let mut obj = serde_json::Map::new();
                for (k, f) in fields {
                    let v = f.render(ctx, false);
                    let v = if v == "-" {
                        serde_json::Value::Null
                    } else if let Ok(n) = v.parse::<i64>() {
                        serde_json::Value::from(n)
                    } else {
                        serde_json::Value::String(v)
                    };
                    obj.insert(k.clone(), v);
                }
                let mut s = serde_json::Value::Object(obj).to_string();
                s.push('\n');
                s
            }
        };
        let _ = tx.send(line);
    }
}

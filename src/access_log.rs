//! Access logs (`envoy.access_loggers.file`, `stdout`, `stderr`). Workers format lines and
//! hand them to one writer thread per file over a channel, so no worker ever blocks on disk.
//! The writer flushes when idle or every `--file-flush-interval-msec`. gRPC access logs
//! (`http_grpc` / `tcp_grpc`) go to [`crate::access_log_grpc`] instead. The writers and sinks
//! belong to the server's [`AccessLogManager`], not to the process.

use std::collections::HashMap;
use std::io::Write;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pinion_xds::model::{AccessLog, AccessLogFormat, AccessLogSink, DEFAULT_ACCESS_LOG_FORMAT};

use crate::access_log_grpc::{GrpcLogger, GrpcSinks};
use crate::formatter::{Context, Format};

/// The access logs of one server, built once by the server and handed to every listener it
/// builds: the file writers (one thread per path, shared by every logger writing there), how
/// often they flush, and the gRPC access log sinks.
pub struct AccessLogManager {
    flush_interval: Duration,
    writers: Mutex<HashMap<String, Sender<String>>>,
    grpc: Option<GrpcSinks>,
}

impl AccessLogManager {
    /// Writers flush every `flush_interval` (Envoy's `--file-flush-interval-msec`) or when
    /// idle; gRPC access logs go to `grpc` (`None`: they are built but send nothing, as in
    /// `--mode validate`).
    pub fn new(flush_interval: Duration, grpc: Option<GrpcSinks>) -> Self {
        AccessLogManager {
            flush_interval: flush_interval.max(Duration::from_millis(1)),
            writers: Mutex::new(HashMap::new()),
            grpc,
        }
    }

    /// Get (or start) the writer for `sink`.
    fn writer_for(&self, sink: &AccessLogSink) -> Result<Sender<String>, String> {
        let key = match sink {
            AccessLogSink::File(p) => p.clone(),
            AccessLogSink::Stdout => "/dev/stdout".into(),
            AccessLogSink::Stderr => "/dev/stderr".into(),
            AccessLogSink::Grpc(_) => return Err("a gRPC access log has no writer".into()),
        };
        let mut map = self.writers.lock().unwrap_or_else(|e| e.into_inner());
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
        let interval = self.flush_interval;
        std::thread::Builder::new()
            .name("pinion-access-log".into())
            .spawn(move || write_loop(rx, out, interval))
            .map_err(|e| e.to_string())?;
        map.insert(key, tx.clone());
        Ok(tx)
    }

    /// The writer of file `path` (started on first use), for other line-oriented logs that
    /// Envoy writes through its access log manager (the outlier detection event log).
    pub fn file_writer(&self, path: &str) -> Result<Sender<String>, String> {
        self.writer_for(&AccessLogSink::File(path.to_string()))
    }

    /// Flush every access log now (shutdown).
    pub fn flush_all(&self) {
        // Dropping senders is not possible while listeners hold clones; writers flush on their
        // interval, so wait one interval for pending lines to land.
        let ms = (self.flush_interval.as_millis() as u64).min(2000);
        if !self.writers.lock().map(|m| m.is_empty()).unwrap_or(true) {
            std::thread::sleep(Duration::from_millis(ms + 20));
        }
    }
}

fn write_loop(rx: Receiver<String>, out: Box<dyn Write + Send>, interval: Duration) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    let mut last_flush = Instant::now();
    loop {
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
    Grpc(GrpcLogger),
}

impl AccessLogger {
    /// Set up a logger with `logs`' writers and sinks (opens the file, or joins the gRPC
    /// sink).
    pub fn new(cfg: &AccessLog, logs: &AccessLogManager) -> Result<Self, String> {
        if let AccessLogSink::Grpc(g) = &cfg.sink {
            return Ok(AccessLogger { kind: LoggerKind::Grpc(GrpcLogger::new(g, logs.grpc.as_ref())) });
        }
        let format = match &cfg.format {
            AccessLogFormat::Default => LineFormat::Text(Format::parse(DEFAULT_ACCESS_LOG_FORMAT)?),
            AccessLogFormat::Text(s) => LineFormat::Text(Format::parse(s)?),
            AccessLogFormat::Json(fields) => LineFormat::Json(
                fields.iter().map(|(k, v)| Ok((k.clone(), Format::parse(v)?))).collect::<Result<_, String>>()?,
            ),
        };
        Ok(AccessLogger { kind: LoggerKind::Line { format: Arc::new(format), tx: logs.writer_for(&cfg.sink)? } })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::stream_info::StreamInfo;

    fn file_log(path: &std::path::Path) -> AccessLog {
        AccessLog {
            sink: AccessLogSink::File(path.display().to_string()),
            format: AccessLogFormat::Text("%RESPONSE_CODE%\n".into()),
        }
    }

    #[test]
    fn loggers_of_one_manager_share_a_writer_per_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("access.log");
        let logs = AccessLogManager::new(Duration::from_millis(5), None);
        let a = AccessLogger::new(&file_log(&path), &logs).expect("logger");
        let b = AccessLogger::new(&file_log(&path), &logs).expect("logger");
        assert_eq!(logs.writers.lock().expect("writers").len(), 1);
        let addr = "127.0.0.1:1".parse().expect("addr");
        let mut info = StreamInfo::new(addr, addr, "HTTP/1.1");
        info.response_code = 200;
        let ctx = Context { info: &info, request_headers: None, response_headers: None, bytes_sent: 0 };
        a.log(&ctx);
        b.log(&ctx);
        // The writer flushes when idle; poll rather than trust one interval on a busy machine.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut text = String::new();
        while Instant::now() < deadline {
            text = std::fs::read_to_string(&path).expect("log file");
            if text.len() >= 8 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(text, "200\n200\n");
    }

    #[test]
    fn grpc_loggers_without_sinks_are_built() {
        let cfg = AccessLog {
            sink: AccessLogSink::Grpc(pinion_xds::model::GrpcAccessLog {
                log_name: "l".into(),
                cluster_name: "als".into(),
                authority: String::new(),
                kind: pinion_xds::model::GrpcAccessLogKind::Http,
                buffer_flush_interval: Duration::from_secs(1),
                buffer_size_bytes: 16384,
                additional_request_headers_to_log: Vec::new(),
                additional_response_headers_to_log: Vec::new(),
                additional_response_trailers_to_log: Vec::new(),
            }),
            format: AccessLogFormat::Default,
        };
        let logs = AccessLogManager::new(Duration::from_secs(1), None);
        assert!(AccessLogger::new(&cfg, &logs).is_ok());
        assert!(logs.writers.lock().expect("writers").is_empty());
    }
}

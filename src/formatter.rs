//! Envoy's substitution formatter (`%COMMAND(arg):max_len%`), shared by header values and
//! access logs. Parsed once at config load; rendering walks the tokens.

use std::fmt::Write as _;
use std::time::SystemTime;

use http::HeaderMap;

use crate::http::stream_info::StreamInfo;

/// One piece of a format string.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// Literal text.
    Literal(String),
    /// A `%COMMAND(arg)%` with optional `:max_len`.
    Command {
        /// Command name, e.g. `REQ`.
        name: String,
        /// Argument inside parentheses.
        arg: Option<String>,
        /// Truncation length.
        max_len: Option<usize>,
    },
}

/// A parsed format string.
#[derive(Debug, Clone, PartialEq)]
pub struct Format {
    tokens: Vec<Token>,
}

/// What a format is rendered against.
pub struct Context<'a> {
    /// The stream.
    pub info: &'a StreamInfo,
    /// Request headers, if available.
    pub request_headers: Option<&'a HeaderMap>,
    /// Response headers, if available.
    pub response_headers: Option<&'a HeaderMap>,
    /// Response body bytes sent.
    pub bytes_sent: u64,
}

impl Format {
    /// Parse `s`. `%%` is a literal percent. An unterminated `%` is an error.
    pub fn parse(s: &str) -> Result<Format, String> {
        let mut tokens = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(pos) = rest.find('%') {
            lit.push_str(&rest[..pos]);
            rest = &rest[pos + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                lit.push('%');
                rest = r;
                continue;
            }
            let end = rest.find('%').ok_or_else(|| format!("unterminated command in format '{s}'"))?;
            let cmd = &rest[..end];
            rest = &rest[end + 1..];
            if !lit.is_empty() {
                tokens.push(Token::Literal(std::mem::take(&mut lit)));
            }
            tokens.push(parse_command(cmd)?);
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            tokens.push(Token::Literal(lit));
        }
        Ok(Format { tokens })
    }

    /// Whether the format has no commands (a plain string).
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Render into `out`. `-` stands for unavailable values, as in Envoy's access logs;
    /// header values render them as empty (`empty_for_missing`).
    pub fn render_into(&self, ctx: &Context<'_>, out: &mut String, empty_for_missing: bool) {
        for t in &self.tokens {
            match t {
                Token::Literal(l) => out.push_str(l),
                Token::Command { name, arg, max_len } => {
                    let start = out.len();
                    if !render_command(name, arg.as_deref(), ctx, out) && !empty_for_missing {
                        out.push('-');
                    }
                    if let Some(max) = max_len {
                        if out.len() - start > *max {
                            let mut cut = start + *max;
                            while !out.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            out.truncate(cut);
                        }
                    }
                }
            }
        }
    }

    /// Render to a new string.
    pub fn render(&self, ctx: &Context<'_>, empty_for_missing: bool) -> String {
        let mut s = String::new();
        self.render_into(ctx, &mut s, empty_for_missing);
        s
    }
}

fn parse_command(cmd: &str) -> Result<Token, String> {
    let (head, max_len) = match cmd.rfind(')') {
        Some(close) => match cmd[close + 1..].strip_prefix(':') {
            Some(n) => {
                (&cmd[..=close], Some(n.parse::<usize>().map_err(|_| format!("invalid max length in %{cmd}%"))?))
            }
            None if cmd.len() == close + 1 => (cmd, None),
            None => return Err(format!("invalid command %{cmd}%")),
        },
        None => (cmd, None),
    };
    let (name, arg) = match head.find('(') {
        Some(open) => {
            let inner = head[open + 1..].strip_suffix(')').ok_or_else(|| format!("invalid command %{cmd}%"))?;
            (&head[..open], Some(inner.to_string()))
        }
        None => (head, None),
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') {
        return Err(format!("invalid command %{cmd}%"));
    }
    Ok(Token::Command { name: name.to_string(), arg, max_len })
}

/// Header lookup for `REQ(a?b)`: the first of the alternatives present.
fn header_value<'a>(headers: Option<&'a HeaderMap>, info_path: Option<&'a str>, arg: &str) -> Option<&'a str> {
    let headers = headers?;
    for name in arg.split('?') {
        let lname = name.trim().to_ascii_lowercase();
        let v = match lname.as_str() {
            ":path" => info_path.or_else(|| headers.get("x-pinion-original-path").and_then(|v| v.to_str().ok())),
            ":authority" => headers.get(http::header::HOST).and_then(|v| v.to_str().ok()),
            _ => headers.get(lname.as_str()).and_then(|v| v.to_str().ok()),
        };
        if v.is_some() {
            return v;
        }
    }
    None
}

fn render_command(name: &str, arg: Option<&str>, ctx: &Context<'_>, out: &mut String) -> bool {
    let info = ctx.info;
    match name {
        "REQ" => {
            let path = ctx.request_headers.and_then(|h| h.get(PSEUDO_PATH)).and_then(|v| v.to_str().ok());
            let method = ctx.request_headers.and_then(|h| h.get(PSEUDO_METHOD)).and_then(|v| v.to_str().ok());
            let Some(arg) = arg else { return false };
            if arg.eq_ignore_ascii_case(":method") {
                return method.map(|m| out.push_str(m)).is_some();
            }
            header_value(ctx.request_headers, path, arg).map(|v| out.push_str(v)).is_some()
        }
        "RESP" => {
            let Some(arg) = arg else { return false };
            header_value(ctx.response_headers, None, arg).map(|v| out.push_str(v)).is_some()
        }
        "START_TIME" => {
            out.push_str(&format_time(info.start_time));
            true
        }
        "PROTOCOL" => {
            out.push_str(info.protocol);
            true
        }
        "RESPONSE_CODE" => {
            let _ = write!(out, "{}", info.response_code);
            true
        }
        "RESPONSE_FLAGS" => {
            out.push_str(&info.flags.to_short_string());
            true
        }
        "RESPONSE_CODE_DETAILS" => {
            out.push_str(info.response_code_details);
            true
        }
        "BYTES_RECEIVED" => {
            let _ = write!(out, "{}", info.bytes_received);
            true
        }
        "BYTES_SENT" => {
            let _ = write!(out, "{}", ctx.bytes_sent);
            true
        }
        "DURATION" => {
            let _ = write!(out, "{}", info.start.elapsed().as_millis());
            true
        }
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => match info.upstream_host {
            Some(h) => {
                let _ = write!(out, "{h}");
                true
            }
            None => false,
        },
        "UPSTREAM_CLUSTER" => info.upstream_cluster.as_deref().map(|c| out.push_str(c)).is_some(),
        "ROUTE_NAME" => info.route_name.as_deref().map(|c| out.push_str(c)).is_some(),
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => {
            let _ = write!(out, "{}", info.downstream_remote);
            true
        }
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            let _ = write!(out, "{}", info.downstream_remote.ip());
            true
        }
        "DOWNSTREAM_LOCAL_ADDRESS" => {
            let _ = write!(out, "{}", info.downstream_local);
            true
        }
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => {
            let _ = write!(out, "{}", info.downstream_local.ip());
            true
        }
        "DOWNSTREAM_LOCAL_PORT" => {
            let _ = write!(out, "{}", info.downstream_local.port());
            true
        }
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => {
            if info.attempt_count == 0 {
                return false;
            }
            let _ = write!(out, "{}", info.attempt_count);
            true
        }
        "HOSTNAME" => {
            out.push_str(&hostname());
            true
        }
        "REQUEST_DURATION" | "RESPONSE_DURATION" => match info.upstream_service_time {
            Some(d) => {
                let _ = write!(out, "{}", d.as_millis());
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// Pseudo-header keys the HCM stores in the access-log copy of request headers.
pub const PSEUDO_PATH: &str = "x-pinion-log-path";
/// See [`PSEUDO_PATH`].
pub const PSEUDO_METHOD: &str = "x-pinion-log-method";

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "-".into())
}

/// Envoy's `%START_TIME%` default: `2024-01-01T00:00:00.000Z`.
pub fn format_time(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let millis = d.subsec_millis();
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, dd) = civil_from_days(days);
    format!("{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Howard Hinnant's days-to-civil conversion.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_literals_and_percent() {
        let f = Format::parse("a %REQ(X-Foo?Y):3% 100%% %PROTOCOL%").unwrap();
        assert_eq!(
            f.tokens,
            vec![
                Token::Literal("a ".into()),
                Token::Command { name: "REQ".into(), arg: Some("X-Foo?Y".into()), max_len: Some(3) },
                Token::Literal(" 100% ".into()),
                Token::Command { name: "PROTOCOL".into(), arg: None, max_len: None },
            ]
        );
        assert!(Format::parse("%BROKEN").is_err());
        assert!(Format::parse("plain").unwrap().is_literal());
    }

    #[test]
    fn renders_request_headers_with_fallback_and_truncation() {
        let info = StreamInfo::new("10.0.0.1:5".parse().unwrap(), "127.0.0.1:80".parse().unwrap(), "HTTP/1.1");
        let mut h = HeaderMap::new();
        h.insert("y", "hello".parse().unwrap());
        let ctx = Context { info: &info, request_headers: Some(&h), response_headers: None, bytes_sent: 7 };
        let f = Format::parse("%REQ(X-Foo?Y):3% %REQ(missing)% %BYTES_SENT% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%")
            .unwrap();
        assert_eq!(f.render(&ctx, false), "hel - 7 10.0.0.1");
        assert_eq!(
            format_time(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(86_400_123)),
            "1970-01-02T00:00:00.123Z"
        );
    }
}

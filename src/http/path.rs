//! Path normalization as the HCM applies it before routing: `normalize_path` (RFC 3986
//! dot-segment removal, `\` to `/`, percent-encoding of unreserved characters decoded),
//! `merge_slashes`, and `path_with_escaped_slashes_action`.

use std::borrow::Cow;

use pinion_xds::model::EscapedSlashesAction;

/// What to do with a request after path normalization.
#[derive(Debug, PartialEq, Eq)]
pub enum PathOutcome<'a> {
    /// Continue with this path (and query).
    Continue(Cow<'a, str>),
    /// Reject with 400.
    Reject,
    /// Redirect to this path.
    Redirect(String),
}

/// Apply the HCM's path options to `path` (without the query).
pub fn normalize<'a>(
    path: &'a str,
    normalize_path: bool,
    merge_slashes: bool,
    escaped_slashes: EscapedSlashesAction,
) -> PathOutcome<'a> {
    let mut p: Cow<'a, str> = Cow::Borrowed(path);
    let has_escaped_slash = contains_escaped_slash(&p);
    let mut redirect = false;
    if has_escaped_slash {
        match escaped_slashes {
            EscapedSlashesAction::KeepUnchanged => {}
            EscapedSlashesAction::RejectRequest => return PathOutcome::Reject,
            EscapedSlashesAction::UnescapeAndForward => p = Cow::Owned(unescape_slashes(&p)),
            EscapedSlashesAction::UnescapeAndRedirect => {
                p = Cow::Owned(unescape_slashes(&p));
                redirect = true;
            }
        }
    }
    if normalize_path {
        match normalize_rfc3986(&p) {
            Some(n) => {
                if n != p {
                    p = Cow::Owned(n);
                }
            }
            None => return PathOutcome::Reject,
        }
    }
    if merge_slashes && p.contains("//") {
        let mut out = String::with_capacity(p.len());
        let mut prev_slash = false;
        for c in p.chars() {
            if c == '/' && prev_slash {
                continue;
            }
            prev_slash = c == '/';
            out.push(c);
        }
        p = Cow::Owned(out);
    }
    if redirect {
        return PathOutcome::Redirect(p.into_owned());
    }
    PathOutcome::Continue(p)
}

fn contains_escaped_slash(p: &str) -> bool {
    let b = p.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && ((w[1] == b'2' && (w[2] | 0x20) == b'f') || (w[1] == b'5' && (w[2] | 0x20) == b'c')))
}

fn unescape_slashes(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let pair = (b[i + 1], b[i + 2] | 0x20);
            if pair == (b'2', b'f') {
                out.push('/');
                i += 3;
                continue;
            }
            if pair == (b'5', b'c') {
                out.push('\\');
                i += 3;
                continue;
            }
        }
        // Copy whole UTF-8 characters.
        let ch = p[i..].chars().next().unwrap_or('\u{fffd}');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// RFC 3986 section 5.2.4 plus Envoy's canonicalization: `\` -> `/`, `%xx` of unreserved
/// characters decoded, other escapes upper-cased. `None` if the path is malformed (not
/// starting with `/`).
pub fn normalize_rfc3986(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return None;
    }
    // Decode unreserved percent-escapes and fix backslashes first.
    let b = path.as_bytes();
    let mut canon = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => canon.push('/'),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') => {
                        canon.push(v as char)
                    }
                    Some(_) => {
                        canon.push('%');
                        canon.push((b[i + 1] as char).to_ascii_uppercase());
                        canon.push((b[i + 2] as char).to_ascii_uppercase());
                    }
                    None => {
                        // Not an escape: keep the '%' and go on character by character.
                        canon.push('%');
                        i += 1;
                        continue;
                    }
                }
                i += 3;
                continue;
            }
            _ => {
                // Push the whole UTF-8 character.
                let ch = path[i..].chars().next()?;
                canon.push(ch);
                i += ch.len_utf8();
                continue;
            }
        }
        i += 1;
    }
    // remove_dot_segments over the segments.
    let mut out: Vec<&str> = Vec::new();
    let trailing_slash = canon.ends_with('/') || canon.ends_with("/.") || canon.ends_with("/..");
    for seg in canon.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let mut result = String::with_capacity(canon.len());
    for s in &out {
        result.push('/');
        result.push_str(s);
    }
    if trailing_slash && !result.ends_with('/') || result.is_empty() {
        result.push('/');
    }
    // A path like `/a/` yields segments ["a", ""], which already ends with '/'.
    Some(result)
}

/// Replace the request's path (and query); an unparsable one leaves the request as it was.
pub fn set_path<B>(req: &mut http::Request<B>, path_and_query: &str) {
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_backslashes() {
        assert_eq!(normalize_rfc3986("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(normalize_rfc3986("/a/./b/").unwrap(), "/a/b/");
        assert_eq!(normalize_rfc3986("/../../x").unwrap(), "/x");
        assert_eq!(normalize_rfc3986("/a\\b").unwrap(), "/a/b");
        assert_eq!(normalize_rfc3986("/%61bc%2f").unwrap(), "/abc%2F");
        assert_eq!(normalize_rfc3986("/a/..").unwrap(), "/");
        assert_eq!(normalize_rfc3986("/").unwrap(), "/");
        assert!(normalize_rfc3986("abc").is_none());
        assert_eq!(normalize_rfc3986("/%a\u{e9}").unwrap(), "/%a\u{e9}");
    }

    #[test]
    fn merge_and_escaped_slashes() {
        use EscapedSlashesAction::*;
        assert_eq!(normalize("//a///b", false, true, KeepUnchanged), PathOutcome::Continue("/a/b".into()));
        assert_eq!(normalize("/a%2Fb", false, false, RejectRequest), PathOutcome::Reject);
        assert_eq!(normalize("/a%2fb", false, false, UnescapeAndForward), PathOutcome::Continue("/a/b".into()));
        assert_eq!(normalize("/a%5Cb", false, false, UnescapeAndRedirect), PathOutcome::Redirect("/a\\b".into()));
        assert_eq!(normalize("/a%2Fb", false, false, KeepUnchanged), PathOutcome::Continue("/a%2Fb".into()));
    }
}

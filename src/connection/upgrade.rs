//! The WebSocket upgrade decision as a pure function: request head in, HTTP response out.
//! Owns due's (gorilla's) check order, status codes and bodies, and Go ServeMux path matching.
//!
//! Checks, in order: path (404, or 301 to the subtree), GET (405), `Connection: upgrade` (400),
//! `Upgrade: websocket` (400), version 13 (400), origin (403), a 16-byte key (400).

/// Largest request head we read before answering 431; Go allows 1 MB, nobody legitimate needs it.
pub const MAX_HEAD: usize = 16 * 1024;

/// The path and origin rules of `[network.ws.server]`.
#[derive(Debug, Clone)]
pub struct UpgradeRules {
    pub path: String,
    pub origins: Vec<String>,
}

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send `response` (101) and speak WebSocket from here on.
    Accept { response: Vec<u8> },
    /// Send `response` and close.
    Reject { status: u16, response: Vec<u8> },
}

/// Length of the request head (through the blank line) if `buf` holds all of it.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Evaluates a complete request head.
pub fn decide(head: &[u8], rules: &UpgradeRules) -> Decision {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Err(httparse::Error::TooManyHeaders) => {
            return reject(431, "Request Header Fields Too Large", &[])
        }
        _ => return reject(400, "Bad Request", &[]),
    }
    let target = req.path.unwrap_or("/");
    let path = target.split('?').next().unwrap_or("/");
    match route(&rules.path, path) {
        Route::Match => {}
        Route::NotFound => return not_found(),
        Route::Redirect => return redirect(&format!("{path}/")),
    }
    const V13: &[(&str, &str)] = &[("Sec-Websocket-Version", "13")];
    if req.method != Some("GET") {
        return reject(405, "Method Not Allowed", V13);
    }
    let headers = req.headers;
    if !has_token(headers, "connection", "upgrade") || !has_token(headers, "upgrade", "websocket") {
        return reject(400, "Bad Request", V13);
    }
    if !has_token(headers, "sec-websocket-version", "13") {
        return reject(400, "Bad Request", V13);
    }
    let origin = header(headers, "origin").unwrap_or("");
    if !rules.origins.iter().any(|o| o == "*" || o == origin) {
        return reject(403, "Forbidden", V13);
    }
    let key = header(headers, "sec-websocket-key").unwrap_or("").trim();
    if !is_base64_of_16_bytes(key) {
        return reject(400, "Bad Request", V13);
    }
    let accept = accept_key(key);
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    Decision::Accept {
        response: response.into_bytes(),
    }
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2): base64 of SHA-1 of the key and the GUID.
fn accept_key(key: &str) -> String {
    use base64::Engine;
    const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

enum Route {
    Match,
    NotFound,
    Redirect,
}

/// Go (1.22+) ServeMux semantics for one registered pattern.
fn route(pattern: &str, path: &str) -> Route {
    if pattern == "/" {
        return Route::Match;
    }
    if let Some(prefix) = pattern.strip_suffix('/') {
        if path.starts_with(pattern) {
            return Route::Match;
        }
        if path == prefix {
            return Route::Redirect;
        }
        return Route::NotFound;
    }
    if path == pattern {
        Route::Match
    } else {
        Route::NotFound
    }
}

fn header<'h>(headers: &'h [httparse::Header<'_>], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// Whether any `name` header holds `token` in its comma-separated list (case-insensitive).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .filter_map(|h| std::str::from_utf8(h.value).ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Standard base64 with padding that decodes to exactly 16 bytes (24 characters, `==` last).
fn is_base64_of_16_bytes(key: &str) -> bool {
    let b = key.as_bytes();
    b.len() == 24
        && b[22..] == *b"=="
        && b[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

fn response(
    status: u16,
    reason: &str,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &str,
) -> Vec<u8> {
    let mut r = format!("HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n");
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str(&format!(
        "X-Content-Type-Options: nosniff\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    r.into_bytes()
}

fn reject(status: u16, reason: &str, extra: &[(&str, &str)]) -> Decision {
    Decision::Reject {
        status,
        response: response(
            status,
            reason,
            "text/plain; charset=utf-8",
            extra,
            &format!("{reason}\n"),
        ),
    }
}

/// The 431 answer for a head that does not fit [`MAX_HEAD`].
pub fn too_large() -> Decision {
    reject(431, "Request Header Fields Too Large", &[])
}

fn not_found() -> Decision {
    Decision::Reject {
        status: 404,
        response: response(
            404,
            "Not Found",
            "text/plain; charset=utf-8",
            &[],
            "404 page not found\n",
        ),
    }
}

fn redirect(to: &str) -> Decision {
    let body = format!("<a href=\"{to}\">Moved Permanently</a>.\n\n");
    Decision::Reject {
        status: 301,
        response: response(
            301,
            "Moved Permanently",
            "text/html; charset=utf-8",
            &[("Location", to)],
            &body,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn rules(path: &str, origins: &[&str]) -> UpgradeRules {
        UpgradeRules {
            path: path.into(),
            origins: origins.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn req(method: &str, path: &str, extra: &str) -> Vec<u8> {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        )
        .into_bytes()
    }

    fn status(d: &Decision) -> u16 {
        match d {
            Decision::Accept { .. } => 101,
            Decision::Reject { status, .. } => *status,
        }
    }

    #[test]
    fn accept_key_is_rfc6455() {
        let d = decide(&req("GET", "/", ""), &rules("/", &["*"]));
        let Decision::Accept { response } = d else {
            panic!()
        };
        let text = String::from_utf8(response).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!text.to_ascii_lowercase().contains("sec-websocket-protocol"));
        assert!(!text
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"));
    }

    #[test]
    fn paths_follow_servemux() {
        let any = rules("/", &["*"]);
        for p in ["/", "/ws", "/x/y", "/a?b=1"] {
            assert_eq!(status(&decide(&req("GET", p, ""), &any)), 101, "{p}");
        }
        let exact = rules("/ws", &["*"]);
        assert_eq!(status(&decide(&req("GET", "/ws", ""), &exact)), 101);
        assert_eq!(status(&decide(&req("GET", "/ws?x", ""), &exact)), 101);
        assert_eq!(status(&decide(&req("GET", "/", ""), &exact)), 404);
        let subtree = rules("/ws/", &["*"]);
        assert_eq!(status(&decide(&req("GET", "/ws/", ""), &subtree)), 101);
        assert_eq!(status(&decide(&req("GET", "/ws/a", ""), &subtree)), 101);
        let d = decide(&req("GET", "/ws", ""), &subtree);
        assert_eq!(status(&d), 301);
        let Decision::Reject { response, .. } = d else {
            panic!()
        };
        assert!(String::from_utf8(response)
            .unwrap()
            .contains("Location: /ws/\r\n"));
    }

    #[test]
    fn check_order_and_codes() {
        let r = rules("/", &["*"]);
        assert_eq!(status(&decide(&req("POST", "/", ""), &r)), 405);
        let no_upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Version: 13\r\n\r\n";
        assert_eq!(status(&decide(no_upgrade, &r)), 400);
        let v12 = req("GET", "/", "").replace_version("12");
        let d = decide(&v12, &r);
        assert_eq!(status(&d), 400);
        let Decision::Reject { response, .. } = d else {
            panic!()
        };
        let text = String::from_utf8(response).unwrap();
        assert!(text.contains("Sec-Websocket-Version: 13\r\n"));
        assert!(text.ends_with("\r\n\r\nBad Request\n"));
        let bad_key = String::from_utf8(req("GET", "/", ""))
            .unwrap()
            .replace(KEY, "AAAA");
        assert_eq!(status(&decide(bad_key.as_bytes(), &r)), 400);
    }

    trait Version {
        fn replace_version(&self, v: &str) -> Vec<u8>;
    }
    impl Version for Vec<u8> {
        fn replace_version(&self, v: &str) -> Vec<u8> {
            String::from_utf8(self.clone())
                .unwrap()
                .replace("Version: 13", &format!("Version: {v}"))
                .into_bytes()
        }
    }

    #[test]
    fn origins() {
        let a = "Origin: https://a.example\r\n";
        let b = "Origin: https://b.example\r\n";
        assert_eq!(
            status(&decide(&req("GET", "/", a), &rules("/", &["*"]))),
            101
        );
        assert_eq!(
            status(&decide(&req("GET", "/", ""), &rules("/", &["*"]))),
            101
        );
        assert_eq!(status(&decide(&req("GET", "/", a), &rules("/", &[]))), 403);
        let only_a = rules("/", &["https://a.example"]);
        assert_eq!(status(&decide(&req("GET", "/", a), &only_a)), 101);
        assert_eq!(status(&decide(&req("GET", "/", b), &only_a)), 403);
        assert_eq!(status(&decide(&req("GET", "/", ""), &only_a)), 403);
        assert_eq!(
            status(&decide(&req("GET", "/", ""), &rules("/", &[""]))),
            101
        );
    }

    #[test]
    fn head_detection() {
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n\r\nxx"), Some(18));
        assert_eq!(
            status(&decide(b"garbage\r\n\r\n", &rules("/", &["*"]))),
            400
        );
    }
}

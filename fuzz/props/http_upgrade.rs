//! The WebSocket upgrade: request head framing and the decision (`gatehouse::connection::upgrade`).
//!
//! Input: `rules(1) | bytes...`; the same bytes also drive a structure-aware request.
//!
//! Properties:
//! * `head_len` finds the first blank line and nothing else;
//! * `decide` over any head answers a well-formed HTTP/1.1 response: 101 with the RFC 6455
//!   accept key, or one of due's refusal statuses with a Content-Length that matches its body
//!   and `Connection: close`;
//! * structure-aware: a valid upgrade request (arbitrary key bytes, header case and order,
//!   extra headers, query string) is accepted with the accept key computed independently; the
//!   same request with one required part broken is refused with the status due answers.

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use gatehouse::connection::upgrade::{decide, head_len, too_large, Decision, UpgradeRules};

fn rules(b: u8) -> UpgradeRules {
    let path = ["/", "/ws", "/ws/", "/a/b"][b as usize & 3].to_string();
    let origins = match (b >> 2) & 3 {
        0 => vec!["*".to_string()],
        1 => vec!["http://a.example".to_string()],
        2 => vec![],
        _ => vec!["http://a.example".to_string(), "*".to_string()],
    };
    UpgradeRules { path, origins }
}

fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes())
}

/// Checks the shape of any answer and returns its status.
fn check(d: &Decision) -> u16 {
    match d {
        Decision::Accept { response } => {
            let text = std::str::from_utf8(response).expect("ASCII response");
            assert!(text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
            assert!(text.ends_with("\r\n\r\n"));
            assert!(text.contains("\r\nSec-WebSocket-Accept: "));
            101
        }
        Decision::Reject { status, response } => {
            assert!(
                [301, 400, 403, 404, 405, 431].contains(status),
                "status {status}"
            );
            let text = std::str::from_utf8(response).expect("UTF-8 response");
            assert!(text.starts_with(&format!("HTTP/1.1 {status} ")));
            let (head, body) = text.split_once("\r\n\r\n").expect("blank line");
            assert!(head.contains("\r\nConnection: close"));
            let len = head
                .split("\r\n")
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .expect("Content-Length");
            assert_eq!(len.parse::<usize>().unwrap(), body.len());
            *status
        }
    }
}

fn token(u: &mut Unstructured<'_>) -> arbitrary::Result<String> {
    let n = u.int_in_range(1..=8)?;
    (0..n)
        .map(|_| Ok(*u.choose(b"abcdefghijklmnopqrstuvwxyz0123456789-")? as char))
        .collect()
}

fn case(u: &mut Unstructured<'_>, s: &str) -> arbitrary::Result<String> {
    s.chars()
        .map(|c| {
            Ok(if bool::arbitrary(u)? {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            })
        })
        .collect()
}

fn structured(u: &mut Unstructured<'_>, r: &UpgradeRules) -> arbitrary::Result<()> {
    let key_bytes = <[u8; 16]>::arbitrary(u)?;
    let key = base64::engine::general_purpose::STANDARD.encode(key_bytes);
    let path = match r.path.as_str() {
        "/ws/" => format!("/ws/{}", token(u)?),
        p => p.to_string(),
    };
    let query = if bool::arbitrary(u)? {
        format!("?{}={}", token(u)?, token(u)?)
    } else {
        String::new()
    };
    let origin = if r.origins.iter().any(|o| o == "*") && bool::arbitrary(u)? {
        format!("http://{}", token(u)?)
    } else {
        "http://a.example".to_string()
    };
    let mut headers = vec![
        (case(u, "Host")?, "gate".to_string()),
        (
            case(u, "Connection")?,
            format!("keep-alive, {}", case(u, "Upgrade")?),
        ),
        (case(u, "Upgrade")?, case(u, "websocket")?),
        (case(u, "Sec-WebSocket-Version")?, "13".to_string()),
        (case(u, "Sec-WebSocket-Key")?, format!(" {key} ")),
        (case(u, "Origin")?, origin.clone()),
    ];
    for _ in 0..u.int_in_range(0..=3)? {
        headers.push((format!("X-{}", token(u)?), token(u)?));
    }
    // Shuffle the headers.
    for i in (1..headers.len()).rev() {
        let j = u.int_in_range(0..=i)?;
        headers.swap(i, j);
    }
    // Which part to break, if any.
    let broken: u8 = u.int_in_range(0..=6)?;
    let mut method = "GET";
    match broken {
        1 => method = "POST",
        2 => headers.retain(|(k, _)| !k.eq_ignore_ascii_case("connection")),
        3 => headers.retain(|(k, _)| !k.eq_ignore_ascii_case("upgrade")),
        4 => {
            for h in headers.iter_mut() {
                if h.0.eq_ignore_ascii_case("sec-websocket-version") {
                    h.1 = "8".into();
                }
            }
        }
        5 => {
            for h in headers.iter_mut() {
                if h.0.eq_ignore_ascii_case("sec-websocket-key") {
                    h.1 = key[..20].to_string();
                }
            }
        }
        6 => headers.retain(|(k, _)| !k.eq_ignore_ascii_case("origin")),
        _ => {}
    }
    let mut head = format!("{method} {path}{query} HTTP/1.1\r\n");
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let head = head.into_bytes();
    assert_eq!(head_len(&head), Some(head.len()));
    let d = decide(&head, r);
    let status = check(&d);
    let origin_ok = |o: &str| r.origins.iter().any(|x| x == "*" || x == o);
    let want = match broken {
        0 if origin_ok(&origin) => 101,
        0 => 403,
        1 => 405,
        2..=4 => 400,
        5 if origin_ok(&origin) => 400,
        5 => 403,
        _ if origin_ok("") => 101,
        _ => 403,
    };
    assert_eq!(status, want, "{}", String::from_utf8_lossy(&head));
    if let Decision::Accept { response } = d {
        let text = String::from_utf8(response).unwrap();
        assert!(text.contains(&format!(
            "\r\nSec-WebSocket-Accept: {}\r\n",
            accept_key(&key)
        )));
    }
    Ok(())
}

/// The target's properties over one input (the libFuzzer entry and `tests/fuzz_seeds.rs`).
pub fn check_input(data: &[u8]) {
    let [rule_byte, head @ ..] = data else {
        return;
    };
    let r = rules(*rule_byte);
    match head_len(head) {
        Some(n) => {
            assert!(n >= 4 && n <= head.len());
            assert_eq!(&head[n - 4..n], b"\r\n\r\n");
            assert!(!head[..n - 1].windows(4).any(|w| w == b"\r\n\r\n"));
            check(&decide(&head[..n], &r));
        }
        None => assert!(!head.windows(4).any(|w| w == b"\r\n\r\n")),
    }
    check(&decide(head, &r));
    assert_eq!(check(&too_large()), 431);
    let _ = structured(&mut Unstructured::new(head), &r);
}

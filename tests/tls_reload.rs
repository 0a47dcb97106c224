//! Certificate reload on SIGHUP against the real binary: new TLS handshakes (TCP and WSS
//! listeners) get the new certificate, compared by the DER the client received; a client
//! connected before keeps being served; a bad pair is refused with a logged error naming the
//! file and the previous certificate stays in use.

mod common;

use common::*;
use rustls::pki_types::CertificateDer;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// The gate process with its stdout and stderr lines collected.
struct Proc {
    child: Child,
    lines: flume::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(etc: &std::path::Path) -> Proc {
        let mut child = Command::new(BIN)
            .args(["--etc", etc.to_str().unwrap()])
            .env_remove("DUE_ETC")
            .env_remove("DUE_MODE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gatehouse");
        let (tx, rx) = flume::unbounded();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for l in BufReader::new(out).lines().map_while(Result::ok) {
                    let _ = tx.send(l);
                }
            });
        }
        Proc {
            child,
            lines: rx,
            seen: vec![],
        }
    }

    /// Waits (bounded) for a new line containing every one of `needles`; returns it.
    fn line(&mut self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.lines.recv_deadline(deadline) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if needles.iter().all(|n| l.contains(n)) {
                        return l;
                    }
                }
                Err(_) => panic!("no line with {needles:?}; saw:\n{}", self.seen.join("\n")),
            }
        }
    }

    fn hangup(&self) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety implications.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) },
            0
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed pair for `localhost`, not yet written anywhere.
struct Pair {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

impl Pair {
    fn new() -> Pair {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        Pair {
            der: ck.cert.der().clone(),
            cert_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
        }
    }

    fn sha256(&self) -> String {
        let d = ring::digest::digest(&ring::digest::SHA256, self.der.as_ref());
        d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A TLS client trusting every one of `roots`, connected and past its handshake.
fn tls_client(
    port: u16,
    roots: &[&Pair],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(ms(5000))).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock).expect("TLS handshake");
    }
    s
}

/// The certificate the server presented.
fn served(s: &rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> CertificateDer<'static> {
    s.conn.peer_certificates().expect("a certificate")[0].clone()
}

fn heartbeat_answered(s: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>) {
    let heartbeat = hex("0000000180");
    s.write_all(&heartbeat).unwrap();
    let mut reply = [0u8; 5];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply.to_vec(), heartbeat, "the TLS client is served");
}

#[test]
fn sighup_serves_the_new_certificate_and_refuses_a_bad_pair() {
    let dir = TempDir::new("tls-reload");
    let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    let write = |p: &Pair| {
        std::fs::write(&key, &p.key_pem).unwrap();
        std::fs::write(&cert, &p.cert_pem).unwrap();
    };
    let (one, two, three) = (Pair::new(), Pair::new(), Pair::new());
    write(&one);
    let (port, ws_port) = (free_port(), free_port());
    let files = format!(
        "certFile = {:?}\nkeyFile = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let etc = dir.0.join("etc.toml");
    std::fs::write(
        &etc,
        format!(
            "[network.tcp.server]\naddr = \"127.0.0.1:{port}\"\nheartbeatInterval = \"10s\"\n{files}\
             [network.ws.server]\naddr = \"127.0.0.1:{ws_port}\"\nheartbeatInterval = \"10s\"\n{files}\
             [log]\nlevel = \"info\"\nterminals = [\"console\"]\n[gatehouse]\nshards = 2\npin = false\n"
        ),
    )
    .unwrap();
    let mut gate = Proc::spawn(&etc);
    gate.line(&["gate started"]);
    let all = [&one, &two, &three];

    let mut first = tls_client(port, &all);
    assert_eq!(served(&first), one.der);
    heartbeat_answered(&mut first);

    // A good new pair: every TLS server (TCP and WSS) serves it to new handshakes.
    write(&two);
    gate.hangup();
    let sha = two.sha256();
    for _ in 0..2 {
        gate.line(&["certificate reloaded", &sha]);
    }
    let mut second = tls_client(port, &all);
    assert_eq!(
        served(&second),
        two.der,
        "new TCP handshakes get the new certificate"
    );
    assert_eq!(
        served(&tls_client(ws_port, &all)),
        two.der,
        "so do WSS ones"
    );
    heartbeat_answered(&mut second);
    heartbeat_answered(&mut first);

    // A bad pair (certificate three with key two): refused, logged, two stays.
    std::fs::write(&cert, &three.cert_pem).unwrap();
    gate.hangup();
    let cert_path = cert.display().to_string();
    for _ in 0..2 {
        gate.line(&["reload refused", &cert_path]);
    }
    let mut third = tls_client(port, &all);
    assert_eq!(
        served(&third),
        two.der,
        "the previous certificate stays in use"
    );
    heartbeat_answered(&mut third);
    heartbeat_answered(&mut first);

    // Unreadable files are refused the same way; the gate is still running.
    std::fs::remove_file(&key).unwrap();
    gate.hangup();
    gate.line(&["reload refused", &key.display().to_string()]);
    assert_eq!(served(&tls_client(port, &all)), two.der);
    assert!(
        gate.child.try_wait().unwrap().is_none(),
        "SIGHUP does not stop the gate"
    );
    heartbeat_answered(&mut first);
}

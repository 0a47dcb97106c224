//! The node commands as pure logic: each decoded request becomes a [`Plan`] (the session
//! operation to run and how to answer), and [`respond`] turns the operation's result into bytes.
//!
//! Nothing here touches a socket, a clock or an executor, so every command's rules are tested
//! directly: the seq-0 "no answer" rule, kind validation, handshake bookkeeping, getstate and
//! setstate, the v2.5.3 "disconnect after push" bit, and the v2.4.1 / v2.5.5 publish answers.
//!
//! Answer rules (as due's gate): a request with seq 0 gets no answer, except handshake and
//! getstate, which are always answered. An invalid kind byte is answered with code 2
//! (InternalError) rather than dropping the link. Trigger and deliver are node-bound: a gate
//! that receives one ignores it without an answer.

use bytes::{Bytes, BytesMut};
use std::net::IpAddr;

use crate::drpc::{self, Cmd, Request};
use crate::session::{Kind, SessionError};

/// The peer as its handshake described it (kind 1 gate, 2 node, 3 mesh; the instance ID).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub kind: u8,
    pub id: String,
}

/// Settings of the link server that change answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// Publish answers in the v2.5.5+ layout (`code [total]`) instead of v2.4.1's (`total`).
    pub publish_v25: bool,
}

/// The session operation a request asks for. Kinds are already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing to run: the answer is known now (handshake, a successful no-op).
    AnswerNow,
    /// Nothing to run: the request fails with this error (an invalid kind byte).
    Refuse(SessionError),
    Bind {
        cid: i64,
        uid: i64,
    },
    Unbind {
        uid: i64,
    },
    GetIp {
        kind: Kind,
        target: i64,
    },
    Stat {
        kind: Kind,
    },
    IsOnline {
        kind: Kind,
        target: i64,
    },
    /// Close a target and wait for the result (the request wants an answer).
    Disconnect {
        kind: Kind,
        target: i64,
        force: bool,
    },
    /// Close a target without waiting (seq 0): a graceful close waits for the client's queue
    /// to drain, and the link must keep reading meanwhile.
    DisconnectDetached {
        kind: Kind,
        target: i64,
        force: bool,
    },
    /// Fire-and-forget push (seq 0, no disconnect bit): posted without waiting, so a node
    /// streaming pushes is not slowed by round trips.
    PushNowait {
        kind: Kind,
        target: i64,
        message: Bytes,
    },
    /// Push and wait for the result; with `close_after` (v2.5.3 header bit), close the target
    /// gracefully once the push succeeded.
    Push {
        kind: Kind,
        target: i64,
        message: Bytes,
        close_after: bool,
    },
    /// Multicast; with `close_after`, close each target that got the message gracefully behind it.
    Multicast {
        kind: Kind,
        targets: Vec<i64>,
        message: Bytes,
        close_after: bool,
    },
    /// Broadcast; `close_after` as for multicast.
    Broadcast {
        kind: Kind,
        message: Bytes,
        close_after: bool,
    },
    /// Publish to a channel (its name as raw bytes; read as UTF-8, lossily, when run);
    /// `close_after` as for multicast.
    Publish {
        channel: Bytes,
        message: Bytes,
        close_after: bool,
    },
    Subscribe {
        kind: Kind,
        targets: Vec<i64>,
        channel: Bytes,
    },
    Unsubscribe {
        kind: Kind,
        targets: Vec<i64>,
        channel: Bytes,
    },
    /// Read the instance state.
    GetState,
    /// Store the instance state (0 shut, 1 work, 2 busy, 3 hang; not validated).
    SetState(u8),
    /// A node-bound command (trigger, deliver) sent to the gate: ignored.
    Ignore(Cmd),
}

/// How a request is answered once its effect has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// Write nothing (seq 0, or a command the gate never answers).
    Silent,
    /// The 16-byte code-only answer.
    Code { cmd: Cmd, seq: u64 },
    /// getip: code and, on success, the IPv4 address.
    Ip { seq: u64 },
    /// stat, multicast, broadcast: code and (when non-zero) the total.
    Total { cmd: Cmd, seq: u64 },
    /// isonline: code and online flag.
    Online { seq: u64 },
    /// publish, in the layout the configured nodes read.
    Publish { seq: u64, v25: bool },
    /// getstate: code 0 and the state.
    State { seq: u64 },
}

/// What to run for one request and how to answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub effect: Effect,
    pub reply: Reply,
}

/// The result of running an [`Effect`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Operations without a value (bind, push, disconnect, setstate, …) and refusals.
    Unit(Result<(), SessionError>),
    /// A count (stat, multicast, broadcast, publish, subscribe, unsubscribe).
    Count(Result<usize, SessionError>),
    Online(Result<bool, SessionError>),
    Ip(Result<IpAddr, SessionError>),
    /// The instance state read by getstate.
    State(u8),
}

impl Outcome {
    /// due's answer code: 0 OK, 1 NotFoundSession, 2 anything else.
    pub fn code(&self) -> u16 {
        let err = match self {
            Outcome::Unit(r) => r.as_ref().err(),
            Outcome::Count(r) => r.as_ref().err(),
            Outcome::Online(r) => r.as_ref().err(),
            Outcome::Ip(r) => r.as_ref().err(),
            Outcome::State(_) => None,
        };
        err.map_or(0, SessionError::code)
    }

    fn total(&self) -> u64 {
        match self {
            Outcome::Count(Ok(n)) => *n as u64,
            _ => 0,
        }
    }

    fn online(&self) -> bool {
        matches!(self, Outcome::Online(Ok(true)))
    }

    fn ip(&self) -> Option<IpAddr> {
        match self {
            Outcome::Ip(Ok(ip)) => Some(*ip),
            _ => None,
        }
    }
}

/// The effect of a request that names a session kind: `make`'s, or a refusal (code 2) for a
/// kind that is neither conn nor user.
fn with_kind(kind: u8, make: impl FnOnce(Kind) -> Effect) -> Effect {
    Kind::from_wire(kind).map_or_else(Effect::Refuse, make)
}

/// Plans one request. `header` is the frame's raw header byte (for the v2.5.3 disconnect bit),
/// `seq` its sequence number (0 = no answer wanted). A handshake records the peer.
pub fn plan(peer: &mut Peer, rules: Rules, header: u8, seq: u64, req: Request) -> Plan {
    let close_after = drpc::disconnect_after(header);
    // The answer to a request that wants one; nothing for seq 0.
    let answer = |reply: Reply| if seq != 0 { reply } else { Reply::Silent };
    let code = |cmd: Cmd| answer(Reply::Code { cmd, seq });
    let total = |cmd: Cmd| answer(Reply::Total { cmd, seq });
    let (effect, reply) = match req {
        Request::Handshake { kind, id } => {
            peer.kind = kind;
            peer.id = String::from_utf8_lossy(&id).into_owned();
            // Answered whatever its seq (due's dialler always sends 1).
            let reply = Reply::Code {
                cmd: Cmd::Handshake,
                seq,
            };
            (Effect::AnswerNow, reply)
        }
        Request::Bind { cid, uid } => (Effect::Bind { cid, uid }, code(Cmd::Bind)),
        Request::Unbind { uid } => (Effect::Unbind { uid }, code(Cmd::Unbind)),
        Request::GetIp { kind, target } => (
            with_kind(kind, |kind| Effect::GetIp { kind, target }),
            answer(Reply::Ip { seq }),
        ),
        Request::Stat { kind } => (
            with_kind(kind, |kind| Effect::Stat { kind }),
            total(Cmd::Stat),
        ),
        Request::IsOnline { kind, target } => (
            with_kind(kind, |kind| Effect::IsOnline { kind, target }),
            answer(Reply::Online { seq }),
        ),
        Request::Disconnect {
            kind,
            target,
            force,
        } => {
            let effect = with_kind(kind, |kind| {
                if seq == 0 {
                    Effect::DisconnectDetached {
                        kind,
                        target,
                        force,
                    }
                } else {
                    Effect::Disconnect {
                        kind,
                        target,
                        force,
                    }
                }
            });
            (effect, code(Cmd::Disconnect))
        }
        Request::Push {
            kind,
            target,
            message,
        } => {
            let effect = with_kind(kind, |kind| {
                if seq == 0 && !close_after {
                    Effect::PushNowait {
                        kind,
                        target,
                        message,
                    }
                } else {
                    Effect::Push {
                        kind,
                        target,
                        message,
                        close_after,
                    }
                }
            });
            (effect, code(Cmd::Push))
        }
        Request::Multicast {
            kind,
            targets,
            message,
        } => {
            let effect = with_kind(kind, |kind| Effect::Multicast {
                kind,
                targets,
                message,
                close_after,
            });
            (effect, total(Cmd::Multicast))
        }
        Request::Broadcast { kind, message } => {
            let effect = with_kind(kind, |kind| Effect::Broadcast {
                kind,
                message,
                close_after,
            });
            (effect, total(Cmd::Broadcast))
        }
        Request::Publish { channel, message } => {
            let reply = Reply::Publish {
                seq,
                v25: rules.publish_v25,
            };
            let effect = Effect::Publish {
                channel,
                message,
                close_after,
            };
            (effect, answer(reply))
        }
        Request::Subscribe {
            kind,
            targets,
            channel,
        } => {
            let effect = with_kind(kind, |kind| Effect::Subscribe {
                kind,
                targets,
                channel,
            });
            (effect, code(Cmd::Subscribe))
        }
        Request::Unsubscribe {
            kind,
            targets,
            channel,
        } => {
            let effect = with_kind(kind, |kind| Effect::Unsubscribe {
                kind,
                targets,
                channel,
            });
            (effect, code(Cmd::Unsubscribe))
        }
        // Answered whatever its seq.
        Request::GetState => (Effect::GetState, Reply::State { seq }),
        Request::SetState { state } => (Effect::SetState(state), code(Cmd::SetState)),
        Request::Trigger { .. } => (Effect::Ignore(Cmd::Trigger), Reply::Silent),
        Request::Deliver { .. } => (Effect::Ignore(Cmd::Deliver), Reply::Silent),
    };
    Plan { effect, reply }
}

/// Appends the answer `reply` asks for, given the effect's `outcome`, to `out`.
pub fn respond(reply: Reply, outcome: &Outcome, out: &mut BytesMut) {
    let code = outcome.code();
    match reply {
        Reply::Silent => {}
        Reply::Code { cmd, seq } => drpc::put_code(out, cmd, seq, code),
        Reply::Ip { seq } => drpc::put_getip_res(out, seq, code, outcome.ip()),
        Reply::Total { cmd, seq } => drpc::put_total_res(out, cmd, seq, code, outcome.total()),
        Reply::Online { seq } => drpc::put_isonline_res(out, seq, code, outcome.online()),
        Reply::Publish { seq, v25: true } => {
            drpc::put_publish_res_v25(out, seq, code, outcome.total())
        }
        Reply::Publish { seq, v25: false } => drpc::put_publish_res_v24(out, seq, outcome.total()),
        Reply::State { seq } => {
            let state = match outcome {
                Outcome::State(s) => *s,
                _ => 0,
            };
            drpc::put_getstate_res(out, seq, 0, state)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drpc::{Frame, Response};
    use std::net::Ipv4Addr;

    /// The client packet of cluster-protocol §10.2: route 1, seq 2, body "hello world".
    const P: &str = "00000010 00 0001 0002 68656c6c6f20776f726c64";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s
            .replace("<P>", P)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
            .collect()
    }

    fn pk() -> Bytes {
        Bytes::from(hex(P))
    }

    /// Encodes a request with the codec and decodes it back, as the server receives it.
    fn received(put: impl FnOnce(&mut BytesMut)) -> (u8, u64, Request) {
        let mut out = BytesMut::new();
        put(&mut out);
        match drpc::decode(out.freeze()) {
            Ok(Frame::Request { header, seq, req }) => (header, seq, req),
            other => panic!("not a request: {other:?}"),
        }
    }

    fn plan_with(rules: Rules, put: impl FnOnce(&mut BytesMut)) -> Plan {
        let (header, seq, req) = received(put);
        plan(&mut Peer::default(), rules, header, seq, req)
    }

    fn plan_of(put: impl FnOnce(&mut BytesMut)) -> Plan {
        plan_with(Rules::default(), put)
    }

    fn answer(reply: Reply, outcome: Outcome) -> Vec<u8> {
        let mut out = BytesMut::new();
        respond(reply, &outcome, &mut out);
        out.to_vec()
    }

    fn ok() -> Outcome {
        Outcome::Unit(Ok(()))
    }

    fn failed(e: SessionError) -> Outcome {
        Outcome::Unit(Err(e))
    }

    fn code_res(seq: u64, code: u16) -> Response {
        Response {
            seq,
            code: Some(code),
            ..Response::default()
        }
    }

    #[test]
    fn handshake_records_the_peer_and_is_always_answered() {
        let mut peer = Peer::default();
        for seq in [1, 0] {
            let (header, seq, req) = received(|o| drpc::put_handshake(o, seq, 2, b"node-x"));
            let p = plan(&mut peer, Rules::default(), header, seq, req);
            assert_eq!(
                peer,
                Peer {
                    kind: 2,
                    id: "node-x".into()
                }
            );
            assert_eq!(p.effect, Effect::AnswerNow);
            assert_eq!(
                p.reply,
                Reply::Code {
                    cmd: Cmd::Handshake,
                    seq
                }
            );
        }
        let p = plan_of(|o| drpc::put_handshake(o, 1, 2, b"node-x"));
        assert_eq!(
            answer(p.reply, ok()),
            hex("0000000c 00 01 0000000000000001 0000")
        );
        // A non-UTF-8 ID is kept lossily; an empty one is fine.
        let (header, seq, req) = received(|o| drpc::put_handshake(o, 1, 3, b"m\xffx"));
        plan(&mut peer, Rules::default(), header, seq, req);
        assert_eq!((peer.kind, peer.id.as_str()), (3, "m\u{fffd}x"));
        let (header, seq, req) = received(|o| drpc::put_handshake(o, 1, 1, b""));
        plan(&mut peer, Rules::default(), header, seq, req);
        assert_eq!(
            peer,
            Peer {
                kind: 1,
                id: "".into()
            }
        );
    }

    #[test]
    fn bind() {
        let p = plan_of(|o| drpc::put_bind(o, 5, 2, 3));
        assert_eq!(p.effect, Effect::Bind { cid: 2, uid: 3 });
        assert_eq!(
            p.reply,
            Reply::Code {
                cmd: Cmd::Bind,
                seq: 5
            }
        );
        assert_eq!(
            answer(p.reply, ok()),
            hex("0000000c 00 02 0000000000000005 0000")
        );
        assert_eq!(
            answer(p.reply, failed(SessionError::NotFoundSession)),
            hex("0000000c 00 02 0000000000000005 0001")
        );
        for e in [
            SessionError::InvalidArgument,
            SessionError::Locator(crate::control::ControlError::Stopped),
            SessionError::Locator(crate::control::ControlError::Locator(
                crate::locator::LocatorError::Timeout {
                    op: "SET due:locate:locate:user:3:gate".into(),
                },
            )),
            SessionError::Unavailable,
        ] {
            assert_eq!(
                answer(p.reply, failed(e)),
                hex("0000000c 00 02 0000000000000005 0002")
            );
        }
        let p = plan_of(|o| drpc::put_bind(o, 0, 2, 3));
        assert_eq!(p.effect, Effect::Bind { cid: 2, uid: 3 });
        assert_eq!(p.reply, Reply::Silent);
        assert!(answer(p.reply, failed(SessionError::NotFoundSession)).is_empty());
    }

    #[test]
    fn unbind() {
        let p = plan_of(|o| drpc::put_unbind(o, 2, 3));
        assert_eq!(p.effect, Effect::Unbind { uid: 3 });
        assert_eq!(
            answer(p.reply, ok()),
            hex("0000000c 00 03 0000000000000002 0000")
        );
        assert_eq!(
            drpc::decode_response(
                Cmd::Unbind,
                &answer(p.reply, failed(SessionError::NotFoundSession))
            ),
            Ok(code_res(2, 1))
        );
        assert_eq!(plan_of(|o| drpc::put_unbind(o, 0, 3)).reply, Reply::Silent);
    }

    #[test]
    fn getip() {
        let p = plan_of(|o| drpc::put_getip(o, 1, 2, 3));
        assert_eq!(
            p.effect,
            Effect::GetIp {
                kind: Kind::User,
                target: 3
            }
        );
        assert_eq!(p.reply, Reply::Ip { seq: 1 });
        assert_eq!(
            answer(p.reply, Outcome::Ip(Ok(IpAddr::V4(Ipv4Addr::LOCALHOST)))),
            hex("00000010 00 04 0000000000000001 0000 7f000001")
        );
        assert_eq!(
            answer(p.reply, Outcome::Ip(Err(SessionError::NotFoundSession))),
            hex("0000000c 00 04 0000000000000001 0001")
        );
        // An invalid kind is refused with code 2 and no address.
        let p = plan_of(|o| drpc::put_getip(o, 1, 7, 3));
        assert_eq!(p.effect, Effect::Refuse(SessionError::InvalidKind));
        assert_eq!(
            answer(p.reply, failed(SessionError::InvalidKind)),
            hex("0000000c 00 04 0000000000000001 0002")
        );
        assert_eq!(
            plan_of(|o| drpc::put_getip(o, 0, 1, 3)).reply,
            Reply::Silent
        );
    }

    #[test]
    fn stat() {
        let p = plan_of(|o| drpc::put_stat(o, 5, 1));
        assert_eq!(p.effect, Effect::Stat { kind: Kind::Conn });
        assert_eq!(
            p.reply,
            Reply::Total {
                cmd: Cmd::Stat,
                seq: 5
            }
        );
        assert_eq!(
            answer(p.reply, Outcome::Count(Ok(20))),
            hex("00000014 00 05 0000000000000005 0000 0000000000000014")
        );
        // due omits a zero total.
        assert_eq!(
            answer(p.reply, Outcome::Count(Ok(0))),
            hex("0000000c 00 05 0000000000000005 0000")
        );
        let p = plan_of(|o| drpc::put_stat(o, 9, 7));
        assert_eq!(p.effect, Effect::Refuse(SessionError::InvalidKind));
        assert_eq!(
            answer(p.reply, failed(SessionError::InvalidKind)),
            hex("0000000c 00 05 0000000000000009 0002")
        );
        assert_eq!(plan_of(|o| drpc::put_stat(o, 0, 2)).reply, Reply::Silent);
    }

    #[test]
    fn isonline() {
        let p = plan_of(|o| drpc::put_isonline(o, 1, 2, 1));
        assert_eq!(
            p.effect,
            Effect::IsOnline {
                kind: Kind::User,
                target: 1
            }
        );
        assert_eq!(
            answer(p.reply, Outcome::Online(Ok(true))),
            hex("0000000d 00 06 0000000000000001 0000 01")
        );
        assert_eq!(
            answer(p.reply, Outcome::Online(Ok(false))),
            hex("0000000d 00 06 0000000000000001 0000 00")
        );
        let p = plan_of(|o| drpc::put_isonline(o, 1, 0, 1));
        assert_eq!(p.effect, Effect::Refuse(SessionError::InvalidKind));
        assert_eq!(
            answer(p.reply, failed(SessionError::InvalidKind)),
            hex("0000000d 00 06 0000000000000001 0002 00")
        );
    }

    #[test]
    fn disconnect_with_seq_0_is_not_awaited() {
        let p = plan_of(|o| drpc::put_disconnect(o, 0, 2, 3, true));
        assert_eq!(
            p.effect,
            Effect::DisconnectDetached {
                kind: Kind::User,
                target: 3,
                force: true
            }
        );
        assert_eq!(p.reply, Reply::Silent);
        assert!(answer(p.reply, ok()).is_empty());

        let p = plan_of(|o| drpc::put_disconnect(o, 4, 1, 7, false));
        assert_eq!(
            p.effect,
            Effect::Disconnect {
                kind: Kind::Conn,
                target: 7,
                force: false
            }
        );
        assert_eq!(
            answer(p.reply, ok()),
            hex("0000000c 00 07 0000000000000004 0000")
        );
        assert_eq!(
            answer(p.reply, failed(SessionError::NotOpened)),
            hex("0000000c 00 07 0000000000000004 0002")
        );
        let p = plan_of(|o| drpc::put_disconnect(o, 0, 3, 7, false));
        assert_eq!(
            (p.effect, p.reply),
            (Effect::Refuse(SessionError::InvalidKind), Reply::Silent)
        );
    }

    #[test]
    fn push_seq_0_goes_without_waiting_unless_it_must_close() {
        let p = plan_of(|o| drpc::put_push(o, 0, 0, 2, 3, &pk()));
        assert_eq!(
            p.effect,
            Effect::PushNowait {
                kind: Kind::User,
                target: 3,
                message: pk()
            }
        );
        assert_eq!(p.reply, Reply::Silent);

        // v2.5.3 disconnect bit: awaited, so the close follows a successful push.
        let p = plan_of(|o| drpc::put_push(o, drpc::HEADER_DISCONNECT, 0, 1, 9, &pk()));
        assert_eq!(
            p.effect,
            Effect::Push {
                kind: Kind::Conn,
                target: 9,
                message: pk(),
                close_after: true
            }
        );
        assert_eq!(p.reply, Reply::Silent);

        let p = plan_of(|o| drpc::put_push(o, 0, 3, 1, 9, &pk()));
        assert_eq!(
            p.effect,
            Effect::Push {
                kind: Kind::Conn,
                target: 9,
                message: pk(),
                close_after: false
            }
        );
        assert_eq!(
            answer(p.reply, ok()),
            hex("0000000c 00 08 0000000000000003 0000")
        );
        assert_eq!(
            answer(p.reply, failed(SessionError::NotFoundSession)),
            hex("0000000c 00 08 0000000000000003 0001")
        );
        let p = plan_of(|o| drpc::put_push(o, 0, 0, 0, 9, &pk()));
        assert_eq!(p.effect, Effect::Refuse(SessionError::InvalidKind));
    }

    #[test]
    fn push_message_is_the_frame_slice() {
        let mut out = BytesMut::new();
        drpc::put_push(&mut out, 0, 0, 2, 3, &pk());
        let frame = out.freeze();
        let Ok(Frame::Request { header, seq, req }) = drpc::decode(frame.clone()) else {
            panic!("push")
        };
        let p = plan(&mut Peer::default(), Rules::default(), header, seq, req);
        let Effect::PushNowait { message, .. } = p.effect else {
            panic!("{:?}", p.effect)
        };
        assert_eq!(
            message.as_ptr() as usize,
            frame.as_ptr() as usize + frame.len() - message.len()
        );
    }

    #[test]
    fn multicast() {
        let p = plan_of(|o| {
            drpc::put_multicast(o, drpc::HEADER_DISCONNECT, 6, 2, &[1, 2], &pk()).unwrap()
        });
        assert_eq!(
            p.effect,
            Effect::Multicast {
                kind: Kind::User,
                targets: vec![1, 2],
                message: pk(),
                close_after: true
            }
        );
        assert_eq!(
            p.reply,
            Reply::Total {
                cmd: Cmd::Multicast,
                seq: 6
            }
        );
        assert_eq!(
            answer(p.reply, Outcome::Count(Ok(3))),
            hex("00000014 00 09 0000000000000006 0000 0000000000000003")
        );
        assert_eq!(
            answer(p.reply, Outcome::Count(Err(SessionError::NotFoundSession))),
            hex("0000000c 00 09 0000000000000006 0001")
        );
        let p = plan_of(|o| drpc::put_multicast(o, 0, 0, 1, &[5], &pk()).unwrap());
        assert_eq!(
            p.effect,
            Effect::Multicast {
                kind: Kind::Conn,
                targets: vec![5],
                message: pk(),
                close_after: false
            }
        );
        assert_eq!(p.reply, Reply::Silent);
    }

    #[test]
    fn broadcast_reports_an_ignored_disconnect_bit() {
        let p = plan_of(|o| drpc::put_broadcast(o, 0, 1, 1, &pk()));
        assert_eq!(
            p.effect,
            Effect::Broadcast {
                kind: Kind::Conn,
                message: pk(),
                close_after: false
            }
        );
        assert_eq!(
            answer(p.reply, Outcome::Count(Ok(20))),
            hex("00000014 00 0a 0000000000000001 0000 0000000000000014")
        );
        let p = plan_of(|o| drpc::put_broadcast(o, drpc::HEADER_DISCONNECT, 0, 2, &pk()));
        assert_eq!(
            p.effect,
            Effect::Broadcast {
                kind: Kind::User,
                message: pk(),
                close_after: true
            }
        );
        assert_eq!(p.reply, Reply::Silent);
    }

    #[test]
    fn publish_answers_in_the_configured_layout() {
        let v24 = plan_of(|o| drpc::put_publish(o, 0, 1, b"room", &pk()).unwrap());
        assert_eq!(
            v24.effect,
            Effect::Publish {
                channel: Bytes::from_static(b"room"),
                message: pk(),
                close_after: false
            }
        );
        assert_eq!(v24.reply, Reply::Publish { seq: 1, v25: false });
        // v2.4.1: `total` only, even 0 and even on failure.
        assert_eq!(
            answer(v24.reply, Outcome::Count(Ok(10))),
            hex("00000012 00 0b 0000000000000001 000000000000000a")
        );
        assert_eq!(
            answer(v24.reply, Outcome::Count(Err(SessionError::Unavailable))),
            hex("00000012 00 0b 0000000000000001 0000000000000000")
        );

        let rules = Rules { publish_v25: true };
        let v25 = plan_with(rules, |o| {
            drpc::put_publish(o, 0, 1, b"room", &pk()).unwrap()
        });
        assert_eq!(v25.reply, Reply::Publish { seq: 1, v25: true });
        assert_eq!(
            answer(v25.reply, Outcome::Count(Ok(10))),
            hex("00000014 00 0b 0000000000000001 0000 000000000000000a")
        );
        assert_eq!(
            answer(v25.reply, Outcome::Count(Ok(0))),
            hex("0000000c 00 0b 0000000000000001 0000")
        );
        assert_eq!(
            drpc::decode_response(
                Cmd::Publish,
                &answer(v25.reply, Outcome::Count(Err(SessionError::Unavailable)))
            ),
            Ok(code_res(1, 2))
        );

        // The disconnect bit closes each member behind the message; seq 0 is not answered.
        let flagged =
            plan_of(|o| drpc::put_publish(o, drpc::HEADER_DISCONNECT, 0, b"room", &pk()).unwrap());
        assert_eq!(
            flagged.effect,
            Effect::Publish {
                channel: Bytes::from_static(b"room"),
                message: pk(),
                close_after: true
            }
        );
        assert_eq!(flagged.reply, Reply::Silent);
    }

    #[test]
    fn subscribe_and_unsubscribe() {
        let p = plan_of(|o| drpc::put_subscribe(o, 9, 2, &[1], b"room").unwrap());
        assert_eq!(
            p.effect,
            Effect::Subscribe {
                kind: Kind::User,
                targets: vec![1],
                channel: Bytes::from_static(b"room")
            }
        );
        // Code only, whatever the count.
        assert_eq!(
            answer(p.reply, Outcome::Count(Ok(1))),
            hex("0000000c 00 0c 0000000000000009 0000")
        );
        let p = plan_of(|o| drpc::put_unsubscribe(o, 10, 1, &[5, 6], b"room").unwrap());
        assert_eq!(
            p.effect,
            Effect::Unsubscribe {
                kind: Kind::Conn,
                targets: vec![5, 6],
                channel: Bytes::from_static(b"room")
            }
        );
        assert_eq!(
            answer(p.reply, Outcome::Count(Err(SessionError::NotFoundSession))),
            hex("0000000c 00 0d 000000000000000a 0001")
        );
        let p = plan_of(|o| drpc::put_subscribe(o, 0, 4, &[1], b"room").unwrap());
        assert_eq!(
            (p.effect, p.reply),
            (Effect::Refuse(SessionError::InvalidKind), Reply::Silent)
        );
    }

    #[test]
    fn getstate_is_always_answered_and_setstate_stores() {
        for seq in [3, 0] {
            let p = plan_of(|o| drpc::put_getstate(o, seq));
            assert_eq!(
                (p.effect, p.reply),
                (Effect::GetState, Reply::State { seq })
            );
        }
        let p = plan_of(|o| drpc::put_getstate(o, 3));
        assert_eq!(
            answer(p.reply, Outcome::State(1)),
            hex("0000000d 00 10 0000000000000003 0000 01")
        );
        let p = plan_of(|o| drpc::put_setstate(o, 4, 2));
        assert_eq!(p.effect, Effect::SetState(2));
        assert_eq!(
            answer(p.reply, ok()),
            hex("0000000c 00 11 0000000000000004 0000")
        );
        // Not validated: any byte is stored.
        let p = plan_of(|o| drpc::put_setstate(o, 0, 9));
        assert_eq!((p.effect, p.reply), (Effect::SetState(9), Reply::Silent));
    }

    #[test]
    fn node_bound_commands_are_ignored_without_an_answer() {
        let p = plan_of(|o| drpc::put_trigger(o, 5, 1, 1, 0));
        assert_eq!(
            (p.effect, p.reply),
            (Effect::Ignore(Cmd::Trigger), Reply::Silent)
        );
        let p = plan_of(|o| drpc::put_deliver(o, 5, 2, 3, &pk()));
        assert_eq!(
            (p.effect, p.reply),
            (Effect::Ignore(Cmd::Deliver), Reply::Silent)
        );
        assert!(answer(p.reply, ok()).is_empty());
    }

    /// Writes one request frame.
    type Encoder = Box<dyn Fn(&mut BytesMut)>;

    /// Every request that carries a kind byte, encoded with `kind` and seq 1.
    fn kinded(kind: u8) -> Vec<Encoder> {
        vec![
            Box::new(move |o| drpc::put_getip(o, 1, kind, 3)),
            Box::new(move |o| drpc::put_stat(o, 1, kind)),
            Box::new(move |o| drpc::put_isonline(o, 1, kind, 3)),
            Box::new(move |o| drpc::put_disconnect(o, 1, kind, 3, false)),
            Box::new(move |o| drpc::put_push(o, 0, 1, kind, 3, b"m")),
            Box::new(move |o| drpc::put_multicast(o, 0, 1, kind, &[3], b"m").unwrap()),
            Box::new(move |o| drpc::put_broadcast(o, 0, 1, kind, b"m")),
            Box::new(move |o| drpc::put_subscribe(o, 1, kind, &[3], b"c").unwrap()),
            Box::new(move |o| drpc::put_unsubscribe(o, 1, kind, &[3], b"c").unwrap()),
        ]
    }

    #[test]
    fn kinds_are_validated_with_code_2() {
        for kind in [0u8, 3, 0x7f, 0xff] {
            for put in kinded(kind) {
                let p = plan_of(put);
                assert_eq!(
                    p.effect,
                    Effect::Refuse(SessionError::InvalidKind),
                    "{kind}"
                );
                let bytes = answer(p.reply, failed(SessionError::InvalidKind));
                assert_eq!(u16::from_be_bytes([bytes[14], bytes[15]]), 2, "{kind}");
            }
        }
        for (wire, want) in [(1u8, Kind::Conn), (2, Kind::User)] {
            for put in kinded(wire) {
                let p = plan_of(put);
                let got = match p.effect {
                    Effect::GetIp { kind, .. }
                    | Effect::Stat { kind }
                    | Effect::IsOnline { kind, .. }
                    | Effect::Disconnect { kind, .. }
                    | Effect::Push { kind, .. }
                    | Effect::Multicast { kind, .. }
                    | Effect::Broadcast { kind, .. }
                    | Effect::Subscribe { kind, .. }
                    | Effect::Unsubscribe { kind, .. } => kind,
                    other => panic!("{other:?}"),
                };
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn seq_0_gets_no_answer_except_handshake_and_getstate() {
        let requests: Vec<Encoder> = vec![
            Box::new(|o| drpc::put_bind(o, 0, 2, 3)),
            Box::new(|o| drpc::put_unbind(o, 0, 3)),
            Box::new(|o| drpc::put_getip(o, 0, 2, 3)),
            Box::new(|o| drpc::put_stat(o, 0, 1)),
            Box::new(|o| drpc::put_isonline(o, 0, 2, 1)),
            Box::new(|o| drpc::put_disconnect(o, 0, 2, 3, true)),
            Box::new(|o| drpc::put_push(o, 0, 0, 2, 3, b"m")),
            Box::new(|o| drpc::put_push(o, drpc::HEADER_DISCONNECT, 0, 2, 3, b"m")),
            Box::new(|o| drpc::put_multicast(o, 0, 0, 2, &[1], b"m").unwrap()),
            Box::new(|o| drpc::put_broadcast(o, 0, 0, 1, b"m")),
            Box::new(|o| drpc::put_publish(o, 0, 0, b"c", b"m").unwrap()),
            Box::new(|o| drpc::put_subscribe(o, 0, 2, &[1], b"c").unwrap()),
            Box::new(|o| drpc::put_unsubscribe(o, 0, 2, &[1], b"c").unwrap()),
            Box::new(|o| drpc::put_setstate(o, 0, 1)),
            Box::new(|o| drpc::put_getip(o, 0, 9, 3)),
        ];
        for rules in [Rules::default(), Rules { publish_v25: true }] {
            for put in &requests {
                let p = plan_with(rules, put);
                assert_eq!(p.reply, Reply::Silent, "{:?}", p.effect);
                for outcome in [
                    ok(),
                    failed(SessionError::NotFoundSession),
                    Outcome::Count(Ok(4)),
                ] {
                    assert!(answer(p.reply, outcome).is_empty());
                }
            }
        }
        let p = plan_of(|o| drpc::put_handshake(o, 0, 2, b"n"));
        assert_eq!(answer(p.reply, ok()).len(), 16);
        let p = plan_of(|o| drpc::put_getstate(o, 0));
        assert_eq!(answer(p.reply, Outcome::State(1)).len(), 17);
    }

    #[test]
    fn outcome_codes() {
        assert_eq!(ok().code(), 0);
        assert_eq!(Outcome::State(3).code(), 0);
        assert_eq!(Outcome::Count(Ok(0)).code(), 0);
        assert_eq!(failed(SessionError::NotFoundSession).code(), 1);
        assert_eq!(Outcome::Online(Err(SessionError::Hanged)).code(), 2);
        assert_eq!(Outcome::Ip(Err(SessionError::NotFoundSession)).code(), 1);
    }
}

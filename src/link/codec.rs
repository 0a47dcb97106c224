//! The drpc link protocol as a sans-IO codec: frame boundaries, request and response layouts.
//! Owns every byte the gate exchanges with nodes (both directions); sockets and clocks live elsewhere.
//!
//! Why sans-IO: the link server and client only move bytes; every protocol rule (sizes, optional
//! fields, the v2.4.1/v2.5 differences) sits here where a table of hex vectors can pin it down.
//!
//! Why zero-copy: a push/multicast/deliver frame carries a complete client packet. Decoding hands
//! that packet out as a [`Bytes`] slice of the received frame (a refcount bump, no memcpy), so the
//! session layer can queue the very same bytes to one or many client connections.
//!
//! Why encoders append to a [`BytesMut`]: a link writer drains a queue of outbound frames into
//! one buffer and issues one write; each encoder reserves its exact length once and never
//! allocates a buffer of its own.
//!
//! Frame layout (all integers big-endian):
//!
//! ```text
//! size(4) = total length - 4 | header(1) | cmd(1) | seq(8) | body...
//! ```
//!
//! A frame whose header has bit 0x80 set is a heartbeat and has nothing else of interest.

use bytes::{BufMut, Bytes, BytesMut};
use std::net::IpAddr;
use std::ops::Range;

/// The one heartbeat frame every due version writes: size 1, header 0x80.
pub const HEARTBEAT: [u8; 5] = [0, 0, 0, 1, 0x80];

/// Header bit that makes a frame a heartbeat. It is the *only* thing a reader looks at to
/// classify a frame, so a heartbeat with trailing bytes is still a heartbeat.
pub const HEADER_HEARTBEAT: u8 = 0x80;

/// Header bit "disconnect after push" (v2.5.3+), set by nodes on push, multicast, broadcast and
/// publish requests: the gate pushes, then gracefully closes every connection it pushed to.
/// A v2.4.1 node never sets it, so honouring it is harmless.
pub const HEADER_DISCONNECT: u8 = 0x40;

/// The smallest data frame: size(4) + header(1) + cmd(1) + seq(8). Go indexes these bytes
/// without checking (a shorter frame panics its reader); we refuse it as a protocol error.
pub const MIN_DATA_FRAME: usize = 14;

/// Length of the 14-byte prefix without the size field: what `size` counts before the body.
const HEAD_AFTER_SIZE: usize = MIN_DATA_FRAME - 4;

/// Whether a request header asks the gate to close each target after the push (v2.5.3+).
#[inline]
pub fn disconnect_after(header: u8) -> bool {
    header & HEADER_DISCONNECT != 0
}

/// Command byte (`route.go`). A response reuses the command byte of its request.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cmd {
    /// dialler → listener: who am I (kind, instance ID). Always seq 1.
    Handshake = 1,
    /// node → gate: bind uid to cid.
    Bind,
    /// node → gate: unbind uid.
    Unbind,
    /// node → gate: remote IP of a client.
    GetIp,
    /// node → gate: number of connections or bound users.
    Stat,
    /// node → gate: is a cid/uid connected here.
    IsOnline,
    /// node → gate: close a client connection.
    Disconnect,
    /// node → gate: write a client packet to one target.
    Push,
    /// node → gate: write a client packet to many targets.
    Multicast,
    /// node → gate: write a client packet to everyone.
    Broadcast,
    /// node → gate: write a client packet to a channel's subscribers.
    Publish,
    /// node → gate: subscribe connections to a channel.
    Subscribe,
    /// node → gate: unsubscribe connections from a channel.
    Unsubscribe,
    /// gate → node: connect / reconnect / disconnect event.
    Trigger,
    /// gate → node (or node → node): a client packet for the node.
    Deliver,
    /// anyone → gate or node: read the instance state.
    GetState,
    /// anyone → gate or node: set the instance state.
    SetState,
}

impl Cmd {
    /// Every command, in wire order (index + 1 = command byte).
    pub const ALL: [Cmd; 17] = [
        Cmd::Handshake,
        Cmd::Bind,
        Cmd::Unbind,
        Cmd::GetIp,
        Cmd::Stat,
        Cmd::IsOnline,
        Cmd::Disconnect,
        Cmd::Push,
        Cmd::Multicast,
        Cmd::Broadcast,
        Cmd::Publish,
        Cmd::Subscribe,
        Cmd::Unsubscribe,
        Cmd::Trigger,
        Cmd::Deliver,
        Cmd::GetState,
        Cmd::SetState,
    ];

    /// The command for a wire byte; `None` for bytes no due version defines (such frames are
    /// ignored without an answer, so a newer peer cannot break the connection).
    pub fn from_u8(b: u8) -> Option<Cmd> {
        match b {
            1..=17 => Some(Cmd::ALL[b as usize - 1]),
            _ => None,
        }
    }

    /// due's name of the command, for logs.
    pub fn name(self) -> &'static str {
        match self {
            Cmd::Handshake => "handshake",
            Cmd::Bind => "bind",
            Cmd::Unbind => "unbind",
            Cmd::GetIp => "getip",
            Cmd::Stat => "stat",
            Cmd::IsOnline => "isonline",
            Cmd::Disconnect => "disconnect",
            Cmd::Push => "push",
            Cmd::Multicast => "multicast",
            Cmd::Broadcast => "broadcast",
            Cmd::Publish => "publish",
            Cmd::Subscribe => "subscribe",
            Cmd::Unsubscribe => "unsubscribe",
            Cmd::Trigger => "trigger",
            Cmd::Deliver => "deliver",
            Cmd::GetState => "getstate",
            Cmd::SetState => "setstate",
        }
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes were refused. Every decode error means the peer does not speak the protocol as
/// due does (or the stream is desynchronised): the caller closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkError {
    /// A size field of 0: Go's reader closes the connection on it.
    ZeroSize,
    /// A size field above the configured cap, refused before buffering the frame.
    TooLarge { size: u32, max: u32 },
    /// The frame handed to a decoder is not `4 + size` bytes long.
    SizeMismatch { size: u32, len: usize },
    /// A frame too short for the 14-byte data prefix (`cmd` 0 when even the command byte is
    /// missing) or for the fields its command requires. `len` is the whole frame length.
    Short { cmd: u8, len: usize },
    /// A response whose length is not one due's decoder accepts for that command.
    BadLength { cmd: u8, len: usize },
    /// A response carrying another command byte than the request it was matched to.
    WrongCmd { expected: u8, got: u8 },
    /// A heartbeat handed to [`decode_response`].
    UnexpectedHeartbeat,
    /// Encoder: more targets than the 2-byte count can carry (65535).
    TooManyTargets { count: usize },
    /// Encoder: a publish channel longer than its 1-byte length prefix allows (255).
    ChannelTooLong { len: usize },
}

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            LinkError::ZeroSize => f.write_str("link frame with size 0"),
            LinkError::TooLarge { size, max } => {
                write!(f, "link frame size {size} exceeds cap {max}")
            }
            LinkError::SizeMismatch { size, len } => {
                write!(
                    f,
                    "link frame size field {size} does not match frame length {len}"
                )
            }
            LinkError::Short { cmd, len } => write!(
                f,
                "link frame of {len} bytes too short for {}",
                cmd_label(cmd)
            ),
            LinkError::BadLength { cmd, len } => {
                write!(f, "invalid {} response length {len}", cmd_label(cmd))
            }
            LinkError::WrongCmd { expected, got } => write!(
                f,
                "response to {} does not match the pending {} call",
                cmd_label(got),
                cmd_label(expected)
            ),
            LinkError::UnexpectedHeartbeat => {
                f.write_str("heartbeat where a response was expected")
            }
            LinkError::TooManyTargets { count } => {
                write!(f, "{count} targets exceed the 65535 a frame can carry")
            }
            LinkError::ChannelTooLong { len } => {
                write!(
                    f,
                    "channel of {len} bytes exceeds the 255 a frame can carry"
                )
            }
        }
    }
}

impl std::error::Error for LinkError {}

/// `"bind"` for a known command byte, `"command 42"` otherwise, `"data frame"` for 0.
fn cmd_label(cmd: u8) -> std::borrow::Cow<'static, str> {
    match Cmd::from_u8(cmd) {
        Some(c) => c.name().into(),
        None if cmd == 0 => "data frame".into(),
        None => format!("command {cmd}").into(),
    }
}

/// Length of the first complete frame at the start of a byte stream, size field included.
///
/// `Ok(None)` means "read more". The cap applies to the size field itself and is checked as soon
/// as the 4 size bytes are in, so a hostile or desynchronised peer announcing 4 GiB is refused
/// before a single byte of it is buffered (Go has no cap; ours is configuration). `size == 0` is
/// refused like Go does: a zero-length frame cannot even carry a header.
pub fn frame_len(buf: &[u8], max: u32) -> Result<Option<usize>, LinkError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let size = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if size == 0 {
        return Err(LinkError::ZeroSize);
    }
    if size > max {
        return Err(LinkError::TooLarge { size, max });
    }
    let total = (size as usize).saturating_add(4);
    Ok((buf.len() >= total).then_some(total))
}

/// One inbound frame as a link server or node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Header bit 0x80: refresh liveness (and, for a v2.4.1 server, echo [`HEARTBEAT`]).
    Heartbeat,
    /// A request. `header` is passed through raw so the caller can test
    /// [`HEADER_DISCONNECT`]; `seq == 0` means "no answer wanted".
    Request { header: u8, seq: u64, req: Request },
    /// A command byte no due version defines: ignore it, answer nothing, keep the connection.
    Unknown { cmd: u8, seq: u64 },
}

/// A decoded request of any command, in either direction.
///
/// `kind`, `event` and `state` bytes are passed through raw: validating them is the session
/// layer's job, because due answers an invalid kind with code 2 rather than dropping the link.
/// Every `Bytes` field is a slice of the decoded frame (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `kind(1) | id(rest)`: kind 1 = gate, 2 = node, 3 = mesh; the ID may be empty.
    Handshake { kind: u8, id: Bytes },
    /// `cid(8) | uid(8)`.
    Bind { cid: i64, uid: i64 },
    /// `uid(8)`.
    Unbind { uid: i64 },
    /// `kind(1) | target(8)`; kind 1 = conn (target is a cid), 2 = user (a uid).
    GetIp { kind: u8, target: i64 },
    /// `kind(1)`.
    Stat { kind: u8 },
    /// `kind(1) | target(8)`.
    IsOnline { kind: u8, target: i64 },
    /// `kind(1) | target(8) | force(1)`; force is true only for the byte 1, as in Go.
    Disconnect { kind: u8, target: i64, force: bool },
    /// `kind(1) | target(8) | message(rest)`; `message` is a complete client packet (its own
    /// size prefix included) to write to the client unchanged.
    Push {
        kind: u8,
        target: i64,
        message: Bytes,
    },
    /// `kind(1) | count(2) | count × target(8) | message(rest)`.
    Multicast {
        kind: u8,
        targets: Vec<i64>,
        message: Bytes,
    },
    /// `kind(1) | message(rest)`.
    Broadcast { kind: u8, message: Bytes },
    /// `chanLen(1) | channel(chanLen) | message(rest)`.
    Publish { channel: Bytes, message: Bytes },
    /// `kind(1) | count(2) | count × target(8) | channel(rest)`.
    Subscribe {
        kind: u8,
        targets: Vec<i64>,
        channel: Bytes,
    },
    /// Same layout as subscribe.
    Unsubscribe {
        kind: u8,
        targets: Vec<i64>,
        channel: Bytes,
    },
    /// `event(1) | cid(8) | [uid(8)]`; the uid is omitted on the wire when 0 and decodes as 0.
    Trigger { event: u8, cid: i64, uid: i64 },
    /// `cid(8) | uid(8) | message(rest)`; `message` is the client packet exactly as received
    /// (size prefix included); uid is 0 for an unbound client.
    Deliver { cid: i64, uid: i64, message: Bytes },
    /// No body.
    GetState,
    /// `state(1)`: 0 shut, 1 work, 2 busy, 3 hang (not validated).
    SetState { state: u8 },
}

impl Request {
    /// The command byte this request travels under.
    pub fn cmd(&self) -> Cmd {
        match self {
            Request::Handshake { .. } => Cmd::Handshake,
            Request::Bind { .. } => Cmd::Bind,
            Request::Unbind { .. } => Cmd::Unbind,
            Request::GetIp { .. } => Cmd::GetIp,
            Request::Stat { .. } => Cmd::Stat,
            Request::IsOnline { .. } => Cmd::IsOnline,
            Request::Disconnect { .. } => Cmd::Disconnect,
            Request::Push { .. } => Cmd::Push,
            Request::Multicast { .. } => Cmd::Multicast,
            Request::Broadcast { .. } => Cmd::Broadcast,
            Request::Publish { .. } => Cmd::Publish,
            Request::Subscribe { .. } => Cmd::Subscribe,
            Request::Unsubscribe { .. } => Cmd::Unsubscribe,
            Request::Trigger { .. } => Cmd::Trigger,
            Request::Deliver { .. } => Cmd::Deliver,
            Request::GetState => Cmd::GetState,
            Request::SetState { .. } => Cmd::SetState,
        }
    }
}

/// A bounds-checked cursor over one frame. Every read either succeeds or yields
/// `Short { cmd, len }`, so a truncated frame can never index out of bounds.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    cmd: u8,
}

impl<'a> Reader<'a> {
    /// A cursor positioned on the body (offset 14).
    fn body(buf: &'a [u8], cmd: u8) -> Self {
        Reader {
            buf,
            pos: MIN_DATA_FRAME,
            cmd,
        }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<Range<usize>, LinkError> {
        if self.remaining() < n {
            return Err(LinkError::Short {
                cmd: self.cmd,
                len: self.buf.len(),
            });
        }
        let r = self.pos..self.pos + n;
        self.pos += n;
        Ok(r)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], LinkError> {
        let r = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&self.buf[r]);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, LinkError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, LinkError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, LinkError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, LinkError> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// `count(2) | count × int64`, checking the whole list is present before allocating it.
    fn targets(&mut self) -> Result<Vec<i64>, LinkError> {
        let count = self.u16()? as usize;
        let r = self.take(count * 8)?;
        Ok(self.buf[r]
            .chunks_exact(8)
            .map(|c| i64::from_be_bytes(c.try_into().expect("chunks_exact(8)")))
            .collect())
    }

    /// Everything after the cursor ("rest of frame" fields).
    fn rest(&mut self) -> Range<usize> {
        let r = self.pos..self.buf.len();
        self.pos = self.buf.len();
        r
    }
}

/// Checks the size field against the frame length: a decoder is handed exactly what
/// [`frame_len`] measured, so a mismatch means the caller sliced the stream wrongly.
fn check_size(frame: &[u8]) -> Result<(), LinkError> {
    let Some(prefix) = frame.get(..4) else {
        return Err(LinkError::Short {
            cmd: 0,
            len: frame.len(),
        });
    };
    let size = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    if size == 0 {
        return Err(LinkError::ZeroSize);
    }
    if size as usize != frame.len() - 4 {
        return Err(LinkError::SizeMismatch {
            size,
            len: frame.len(),
        });
    }
    Ok(())
}

/// Decodes one complete frame (size prefix included), as delimited by [`frame_len`].
///
/// Fixed-layout bodies tolerate trailing bytes (they are ignored); a body missing any required
/// field is `Err(Short)`. The one optional field, trigger's uid, must be absent or whole.
/// Decoding a *response* frame with this function is an error or nonsense: responses are
/// matched by seq ([`peek`]) and decoded with [`decode_response`].
pub fn decode(frame: Bytes) -> Result<Frame, LinkError> {
    check_size(&frame)?;
    // check_size guarantees size >= 1, so the header byte exists.
    let header = frame[4];
    if header & HEADER_HEARTBEAT != 0 {
        return Ok(Frame::Heartbeat);
    }
    if frame.len() < MIN_DATA_FRAME {
        return Err(LinkError::Short {
            cmd: frame.get(5).copied().unwrap_or(0),
            len: frame.len(),
        });
    }
    let cmd_byte = frame[5];
    let seq = u64::from_be_bytes(frame[6..14].try_into().expect("8 bytes"));
    let Some(cmd) = Cmd::from_u8(cmd_byte) else {
        return Ok(Frame::Unknown { cmd: cmd_byte, seq });
    };
    let mut r = Reader::body(&frame, cmd_byte);
    let req = match cmd {
        Cmd::Handshake => Request::Handshake {
            kind: r.u8()?,
            id: frame.slice(r.rest()),
        },
        Cmd::Bind => Request::Bind {
            cid: r.i64()?,
            uid: r.i64()?,
        },
        Cmd::Unbind => Request::Unbind { uid: r.i64()? },
        Cmd::GetIp => Request::GetIp {
            kind: r.u8()?,
            target: r.i64()?,
        },
        Cmd::Stat => Request::Stat { kind: r.u8()? },
        Cmd::IsOnline => Request::IsOnline {
            kind: r.u8()?,
            target: r.i64()?,
        },
        Cmd::Disconnect => Request::Disconnect {
            kind: r.u8()?,
            target: r.i64()?,
            force: r.u8()? == 1,
        },
        Cmd::Push => Request::Push {
            kind: r.u8()?,
            target: r.i64()?,
            message: frame.slice(r.rest()),
        },
        Cmd::Multicast => Request::Multicast {
            kind: r.u8()?,
            targets: r.targets()?,
            message: frame.slice(r.rest()),
        },
        Cmd::Broadcast => Request::Broadcast {
            kind: r.u8()?,
            message: frame.slice(r.rest()),
        },
        Cmd::Publish => {
            let clen = r.u8()? as usize;
            let channel = frame.slice(r.take(clen)?);
            Request::Publish {
                channel,
                message: frame.slice(r.rest()),
            }
        }
        Cmd::Subscribe => Request::Subscribe {
            kind: r.u8()?,
            targets: r.targets()?,
            channel: frame.slice(r.rest()),
        },
        Cmd::Unsubscribe => Request::Unsubscribe {
            kind: r.u8()?,
            targets: r.targets()?,
            channel: frame.slice(r.rest()),
        },
        Cmd::Trigger => {
            let event = r.u8()?;
            let cid = r.i64()?;
            // Absent (23-byte frame) or whole: a partial uid is a torn frame, not "uid 0".
            let uid = if r.remaining() == 0 { 0 } else { r.i64()? };
            Request::Trigger { event, cid, uid }
        }
        Cmd::Deliver => Request::Deliver {
            cid: r.i64()?,
            uid: r.i64()?,
            message: frame.slice(r.rest()),
        },
        Cmd::GetState => Request::GetState,
        Cmd::SetState => Request::SetState { state: r.u8()? },
    };
    Ok(Frame::Request { header, seq, req })
}

/// The fixed part of a frame, read without decoding the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    Heartbeat,
    /// `cmd` is raw: the caller of a pending call matches by `seq` only, as Go does.
    Data {
        header: u8,
        cmd: u8,
        seq: u64,
    },
}

/// Classifies a complete frame and reads its seq, so a client can find the pending call a
/// response belongs to (and thus its [`Cmd`]) before calling [`decode_response`].
pub fn peek(frame: &[u8]) -> Result<Head, LinkError> {
    check_size(frame)?;
    let header = frame[4];
    if header & HEADER_HEARTBEAT != 0 {
        return Ok(Head::Heartbeat);
    }
    if frame.len() < MIN_DATA_FRAME {
        return Err(LinkError::Short {
            cmd: frame.get(5).copied().unwrap_or(0),
            len: frame.len(),
        });
    }
    Ok(Head::Data {
        header,
        cmd: frame[5],
        seq: u64::from_be_bytes(frame[6..14].try_into().expect("8 bytes")),
    })
}

/// A decoded response. Each `Option` says whether that field was **on the wire**: e.g. a
/// 16-byte stat response has `total: None` (due omits a zero total), and a v2.4.1 publish
/// response has `code: None` (it carries a total only).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Response {
    pub seq: u64,
    pub code: Option<u16>,
    pub total: Option<u64>,
    pub ip: Option<[u8; 4]>,
    pub online: Option<bool>,
    pub state: Option<u8>,
}

/// Decodes the response to a request of command `cmd` (one complete frame, size included).
///
/// Lengths are checked as strictly as due's decoders do (the lengths a Go node accepts):
/// code-only 16; getip 16/20; stat, multicast, broadcast 16/24; isonline and getstate 17.
/// Publish exists in two layouts that share no length: exactly 16 or 24 bytes is the v2.5.5+
/// `code [total]` form, any other length ≥ 22 is the v2.4.1 `total` form (Go reads the total at
/// offset 14 and ignores the rest). The Go v2.5.5–v2.5.8 gate's malformed 16-byte frame with
/// size 20 is refused as `SizeMismatch`: in a stream it desynchronises the reader anyway.
pub fn decode_response(cmd: Cmd, frame: &[u8]) -> Result<Response, LinkError> {
    let Head::Data { cmd: got, seq, .. } = peek(frame)? else {
        return Err(LinkError::UnexpectedHeartbeat);
    };
    if got != cmd as u8 {
        return Err(LinkError::WrongCmd {
            expected: cmd as u8,
            got,
        });
    }
    let len = frame.len();
    let bad = LinkError::BadLength { cmd: got, len };
    let mut r = Reader::body(frame, got);
    let mut res = Response {
        seq,
        ..Response::default()
    };
    match cmd {
        Cmd::Handshake
        | Cmd::Bind
        | Cmd::Unbind
        | Cmd::Disconnect
        | Cmd::Push
        | Cmd::Subscribe
        | Cmd::Unsubscribe
        | Cmd::Trigger
        | Cmd::Deliver
        | Cmd::SetState => {
            if len != 16 {
                return Err(bad);
            }
            res.code = Some(r.u16()?);
        }
        Cmd::GetIp => {
            if len != 16 && len != 20 {
                return Err(bad);
            }
            res.code = Some(r.u16()?);
            if len == 20 {
                res.ip = Some(r.array()?);
            }
        }
        Cmd::Stat | Cmd::Multicast | Cmd::Broadcast => {
            if len != 16 && len != 24 {
                return Err(bad);
            }
            res.code = Some(r.u16()?);
            if len == 24 {
                res.total = Some(r.u64()?);
            }
        }
        Cmd::IsOnline => {
            if len != 17 {
                return Err(bad);
            }
            res.code = Some(r.u16()?);
            res.online = Some(r.u8()? == 1);
        }
        Cmd::GetState => {
            if len != 17 {
                return Err(bad);
            }
            res.code = Some(r.u16()?);
            res.state = Some(r.u8()?);
        }
        Cmd::Publish => match len {
            16 => res.code = Some(r.u16()?),
            24 => {
                res.code = Some(r.u16()?);
                res.total = Some(r.u64()?);
            }
            _ if len >= 22 => res.total = Some(r.u64()?),
            _ => return Err(bad),
        },
    }
    Ok(res)
}

// ---------------------------------------------------------------------------------------------
// Encoders. Each reserves its exact length once, then appends. All write header 0 unless they
// take a `header` (push, multicast, broadcast, publish, where v2.5.3 uses HEADER_DISCONNECT).
// A header with bit 0x80 set would make the peer read the frame as a heartbeat.
// ---------------------------------------------------------------------------------------------

/// Writes `size | header | cmd | seq` for a body of `body` bytes and reserves room for the body.
///
/// Panics if the frame would exceed `u32::MAX` bytes (no caller can hold such a message).
fn put_head(out: &mut BytesMut, header: u8, cmd: Cmd, seq: u64, body: usize) {
    let size = u32::try_from(HEAD_AFTER_SIZE + body).expect("drpc frame larger than 4 GiB");
    out.reserve(4 + size as usize);
    out.put_u32(size);
    out.put_u8(header);
    out.put_u8(cmd as u8);
    out.put_u64(seq);
}

fn put_targets(out: &mut BytesMut, targets: &[i64]) {
    out.put_u16(targets.len() as u16);
    for &t in targets {
        out.put_i64(t);
    }
}

fn check_targets(targets: &[i64]) -> Result<(), LinkError> {
    if targets.len() > u16::MAX as usize {
        return Err(LinkError::TooManyTargets {
            count: targets.len(),
        });
    }
    Ok(())
}

/// `00 00 00 01 80`.
pub fn put_heartbeat(out: &mut BytesMut) {
    out.extend_from_slice(&HEARTBEAT);
}

/// Handshake request: `kind(1) | id`. A gate always sends seq 1 and kind 1 with its registered
/// instance ID: nodes use that ID as the gate ID when they answer clients.
pub fn put_handshake(out: &mut BytesMut, seq: u64, kind: u8, id: &[u8]) {
    put_head(out, 0, Cmd::Handshake, seq, 1 + id.len());
    out.put_u8(kind);
    out.put_slice(id);
}

/// The 16-byte code-only response (handshake, bind, unbind, disconnect, push, subscribe,
/// unsubscribe, trigger, deliver, setstate).
pub fn put_code(out: &mut BytesMut, cmd: Cmd, seq: u64, code: u16) {
    put_head(out, 0, cmd, seq, 2);
    out.put_u16(code);
}

/// Getip response: `code | [ipv4(4)]`. The IP is present (20 bytes) only for code 0 with an
/// address; IPv4 and IPv4-mapped IPv6 are written as the 4 address bytes, any other IPv6 as
/// `0.0.0.0` (Go's `To4()` fails, the field stays zero). Otherwise 16 bytes.
pub fn put_getip_res(out: &mut BytesMut, seq: u64, code: u16, ip: Option<IpAddr>) {
    match ip {
        Some(ip) if code == 0 => {
            let v4 = match ip {
                IpAddr::V4(v4) => v4.octets(),
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or([0; 4], |v4| v4.octets()),
            };
            put_head(out, 0, Cmd::GetIp, seq, 6);
            out.put_u16(code);
            out.put_slice(&v4);
        }
        _ => put_code(out, Cmd::GetIp, seq, code),
    }
}

/// Stat, multicast and broadcast response: `code | [total(8)]`, 24 bytes when code 0 and
/// total ≠ 0, else 16 (due omits a zero total; the node reads it as 0 either way).
pub fn put_total_res(out: &mut BytesMut, cmd: Cmd, seq: u64, code: u16, total: u64) {
    if code == 0 && total != 0 {
        put_head(out, 0, cmd, seq, 10);
        out.put_u16(code);
        out.put_u64(total);
    } else {
        put_code(out, cmd, seq, code);
    }
}

/// Isonline response: `code | online(1)`, always 17 bytes.
pub fn put_isonline_res(out: &mut BytesMut, seq: u64, code: u16, online: bool) {
    put_head(out, 0, Cmd::IsOnline, seq, 3);
    out.put_u16(code);
    out.put_u8(online as u8);
}

/// v2.4.1 publish response: `total(8)`, 22 bytes, **no code**. A v2.5.5+ node cannot decode it.
pub fn put_publish_res_v24(out: &mut BytesMut, seq: u64, total: u64) {
    put_head(out, 0, Cmd::Publish, seq, 8);
    out.put_u64(total);
}

/// v2.5.5+ publish response: `code | [total(8)]`, 24 bytes when code 0 and total ≠ 0, else the
/// well-formed 16 bytes (size 12, unlike the Go v2.5.5–v2.5.8 gate which says 20).
/// A v2.4.1 node cannot decode it.
pub fn put_publish_res_v25(out: &mut BytesMut, seq: u64, code: u16, total: u64) {
    put_total_res(out, Cmd::Publish, seq, code, total);
}

/// Getstate response: `code | state(1)`, always 17 bytes.
pub fn put_getstate_res(out: &mut BytesMut, seq: u64, code: u16, state: u8) {
    put_head(out, 0, Cmd::GetState, seq, 3);
    out.put_u16(code);
    out.put_u8(state);
}

/// Bind request: `cid | uid` (30 bytes).
pub fn put_bind(out: &mut BytesMut, seq: u64, cid: i64, uid: i64) {
    put_head(out, 0, Cmd::Bind, seq, 16);
    out.put_i64(cid);
    out.put_i64(uid);
}

/// Unbind request: `uid` (22 bytes).
pub fn put_unbind(out: &mut BytesMut, seq: u64, uid: i64) {
    put_head(out, 0, Cmd::Unbind, seq, 8);
    out.put_i64(uid);
}

/// Getip request: `kind | target` (23 bytes).
pub fn put_getip(out: &mut BytesMut, seq: u64, kind: u8, target: i64) {
    put_head(out, 0, Cmd::GetIp, seq, 9);
    out.put_u8(kind);
    out.put_i64(target);
}

/// Stat request: `kind` (15 bytes).
pub fn put_stat(out: &mut BytesMut, seq: u64, kind: u8) {
    put_head(out, 0, Cmd::Stat, seq, 1);
    out.put_u8(kind);
}

/// Isonline request: `kind | target` (23 bytes).
pub fn put_isonline(out: &mut BytesMut, seq: u64, kind: u8, target: i64) {
    put_head(out, 0, Cmd::IsOnline, seq, 9);
    out.put_u8(kind);
    out.put_i64(target);
}

/// Disconnect request: `kind | target | force` (24 bytes).
pub fn put_disconnect(out: &mut BytesMut, seq: u64, kind: u8, target: i64, force: bool) {
    put_head(out, 0, Cmd::Disconnect, seq, 10);
    out.put_u8(kind);
    out.put_i64(target);
    out.put_u8(force as u8);
}

/// Push request: `kind | target | message` (23 + m bytes).
pub fn put_push(out: &mut BytesMut, header: u8, seq: u64, kind: u8, target: i64, message: &[u8]) {
    put_head(out, header, Cmd::Push, seq, 9 + message.len());
    out.put_u8(kind);
    out.put_i64(target);
    out.put_slice(message);
}

/// Multicast request: `kind | count(2) | targets | message` (17 + 8n + m bytes).
/// More than 65535 targets is refused (`out` untouched): the count would wrap.
pub fn put_multicast(
    out: &mut BytesMut,
    header: u8,
    seq: u64,
    kind: u8,
    targets: &[i64],
    message: &[u8],
) -> Result<(), LinkError> {
    check_targets(targets)?;
    put_head(
        out,
        header,
        Cmd::Multicast,
        seq,
        3 + 8 * targets.len() + message.len(),
    );
    out.put_u8(kind);
    put_targets(out, targets);
    out.put_slice(message);
    Ok(())
}

/// Broadcast request: `kind | message` (15 + m bytes).
pub fn put_broadcast(out: &mut BytesMut, header: u8, seq: u64, kind: u8, message: &[u8]) {
    put_head(out, header, Cmd::Broadcast, seq, 1 + message.len());
    out.put_u8(kind);
    out.put_slice(message);
}

/// Publish request: `chanLen(1) | channel | message` (15 + c + m bytes).
/// A channel over 255 bytes is refused (`out` untouched), as due nodes refuse it.
pub fn put_publish(
    out: &mut BytesMut,
    header: u8,
    seq: u64,
    channel: &[u8],
    message: &[u8],
) -> Result<(), LinkError> {
    let clen = u8::try_from(channel.len())
        .map_err(|_| LinkError::ChannelTooLong { len: channel.len() })?;
    put_head(
        out,
        header,
        Cmd::Publish,
        seq,
        1 + channel.len() + message.len(),
    );
    out.put_u8(clen);
    out.put_slice(channel);
    out.put_slice(message);
    Ok(())
}

fn put_sub(
    out: &mut BytesMut,
    cmd: Cmd,
    seq: u64,
    kind: u8,
    targets: &[i64],
    channel: &[u8],
) -> Result<(), LinkError> {
    check_targets(targets)?;
    put_head(out, 0, cmd, seq, 3 + 8 * targets.len() + channel.len());
    out.put_u8(kind);
    put_targets(out, targets);
    out.put_slice(channel);
    Ok(())
}

/// Subscribe request: `kind | count(2) | targets | channel` (17 + 8n + c bytes).
pub fn put_subscribe(
    out: &mut BytesMut,
    seq: u64,
    kind: u8,
    targets: &[i64],
    channel: &[u8],
) -> Result<(), LinkError> {
    put_sub(out, Cmd::Subscribe, seq, kind, targets, channel)
}

/// Unsubscribe request: same layout as subscribe.
pub fn put_unsubscribe(
    out: &mut BytesMut,
    seq: u64,
    kind: u8,
    targets: &[i64],
    channel: &[u8],
) -> Result<(), LinkError> {
    put_sub(out, Cmd::Unsubscribe, seq, kind, targets, channel)
}

/// Trigger request: `event | cid | [uid]`; the uid is omitted when 0 (23 or 31 bytes), exactly
/// as the Go gate does. The gate sends it with seq 0.
pub fn put_trigger(out: &mut BytesMut, seq: u64, event: u8, cid: i64, uid: i64) {
    let body = if uid == 0 { 9 } else { 17 };
    put_head(out, 0, Cmd::Trigger, seq, body);
    out.put_u8(event);
    out.put_i64(cid);
    if uid != 0 {
        out.put_i64(uid);
    }
}

/// Deliver request: `cid | uid | message` (30 + m bytes). The gate sends it with seq 0.
pub fn put_deliver(out: &mut BytesMut, seq: u64, cid: i64, uid: i64, message: &[u8]) {
    put_deliver_head(out, seq, cid, uid, message.len());
    out.put_slice(message);
}

/// The first 30 bytes of a deliver frame whose `message_len`-byte message the caller writes
/// itself, e.g. as a separate [`Bytes`] in a vectored write, to skip copying large packets.
pub fn put_deliver_head(out: &mut BytesMut, seq: u64, cid: i64, uid: i64, message_len: usize) {
    put_head(out, 0, Cmd::Deliver, seq, 16 + message_len);
    out.put_i64(cid);
    out.put_i64(uid);
}

/// Getstate request: no body (14 bytes).
pub fn put_getstate(out: &mut BytesMut, seq: u64) {
    put_head(out, 0, Cmd::GetState, seq, 0);
}

/// Setstate request: `state` (15 bytes).
pub fn put_setstate(out: &mut BytesMut, seq: u64, state: u8) {
    put_head(out, 0, Cmd::SetState, seq, 1);
    out.put_u8(state);
}

/// Encodes any [`Request`] with an explicit header (the inverse of [`decode`]): convenient for
/// a node or test that holds requests as values. Fails only where the specific encoder does.
pub fn put_request(
    out: &mut BytesMut,
    header: u8,
    seq: u64,
    req: &Request,
) -> Result<(), LinkError> {
    // The specific encoders fix header 0 for commands that never carry a flag; write those
    // with the requested header by patching byte 4 of the frame just appended.
    let start = out.len();
    match req {
        Request::Handshake { kind, id } => put_handshake(out, seq, *kind, id),
        Request::Bind { cid, uid } => put_bind(out, seq, *cid, *uid),
        Request::Unbind { uid } => put_unbind(out, seq, *uid),
        Request::GetIp { kind, target } => put_getip(out, seq, *kind, *target),
        Request::Stat { kind } => put_stat(out, seq, *kind),
        Request::IsOnline { kind, target } => put_isonline(out, seq, *kind, *target),
        Request::Disconnect {
            kind,
            target,
            force,
        } => put_disconnect(out, seq, *kind, *target, *force),
        Request::Push {
            kind,
            target,
            message,
        } => put_push(out, header, seq, *kind, *target, message),
        Request::Multicast {
            kind,
            targets,
            message,
        } => put_multicast(out, header, seq, *kind, targets, message)?,
        Request::Broadcast { kind, message } => put_broadcast(out, header, seq, *kind, message),
        Request::Publish { channel, message } => put_publish(out, header, seq, channel, message)?,
        Request::Subscribe {
            kind,
            targets,
            channel,
        } => put_subscribe(out, seq, *kind, targets, channel)?,
        Request::Unsubscribe {
            kind,
            targets,
            channel,
        } => put_unsubscribe(out, seq, *kind, targets, channel)?,
        Request::Trigger { event, cid, uid } => put_trigger(out, seq, *event, *cid, *uid),
        Request::Deliver { cid, uid, message } => put_deliver(out, seq, *cid, *uid, message),
        Request::GetState => put_getstate(out, seq),
        Request::SetState { state } => put_setstate(out, seq, *state),
    }
    out[start + 4] = header;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// The client packet of §10.2: route 1, seq 2, body "hello world" (20 bytes).
    const P: &str = "00000010 00 0001 0002 68656c6c6f20776f726c64";

    /// Hex with spaces allowed and `<P>` standing for the client packet.
    fn hex(s: &str) -> Vec<u8> {
        let s: String = s
            .replace("<P>", P)
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        assert!(s.len() % 2 == 0, "odd hex: {s}");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit"))
            .collect()
    }

    fn p() -> Bytes {
        Bytes::from(hex(P))
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    /// `part` points into `frame`'s memory: the decoder sliced instead of copying.
    fn within(frame: &Bytes, part: &Bytes) -> bool {
        let f = frame.as_ptr() as usize;
        let p = part.as_ptr() as usize;
        part.is_empty() || (p >= f && p + part.len() <= f + frame.len())
    }

    fn encode(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut out = BytesMut::new();
        f(&mut out);
        out.to_vec()
    }

    /// One request vector of §10.2.
    struct ReqVec {
        name: &'static str,
        hex: &'static str,
        header: u8,
        seq: u64,
        req: Request,
        /// Smallest frame length that still holds every required field.
        min: usize,
    }

    fn request_vectors() -> Vec<ReqVec> {
        let v = |name, hex, header, seq, req, min| ReqVec {
            name,
            hex,
            header,
            seq,
            req,
            min,
        };
        vec![
            v(
                "handshake",
                "00000011 00 01 0000000000000001 01 676174652d31",
                0,
                1,
                Request::Handshake {
                    kind: 1,
                    id: b("gate-1"),
                },
                15,
            ),
            v(
                "bind",
                "0000001a 00 02 0000000000000001 0000000000000002 0000000000000003",
                0,
                1,
                Request::Bind { cid: 2, uid: 3 },
                30,
            ),
            v(
                "unbind",
                "00000012 00 03 0000000000000002 0000000000000003",
                0,
                2,
                Request::Unbind { uid: 3 },
                22,
            ),
            v(
                "getip",
                "00000013 00 04 0000000000000001 02 0000000000000003",
                0,
                1,
                Request::GetIp { kind: 2, target: 3 },
                23,
            ),
            v(
                "stat",
                "0000000b 00 05 0000000000000005 01",
                0,
                5,
                Request::Stat { kind: 1 },
                15,
            ),
            v(
                "isonline",
                "00000013 00 06 0000000000000001 02 0000000000000001",
                0,
                1,
                Request::IsOnline { kind: 2, target: 1 },
                23,
            ),
            v(
                "disconnect",
                "00000014 00 07 0000000000000000 02 0000000000000003 01",
                0,
                0,
                Request::Disconnect {
                    kind: 2,
                    target: 3,
                    force: true,
                },
                24,
            ),
            v(
                "push",
                "00000027 00 08 0000000000000000 02 0000000000000003 <P>",
                0,
                0,
                Request::Push {
                    kind: 2,
                    target: 3,
                    message: p(),
                },
                23,
            ),
            v(
                "multicast",
                "00000039 00 09 0000000000000000 02 0003 0000000000000001 0000000000000002 0000000000000003 <P>",
                0,
                0,
                Request::Multicast {
                    kind: 2,
                    targets: vec![1, 2, 3],
                    message: p(),
                },
                41,
            ),
            v(
                "broadcast",
                "0000001f 00 0a 0000000000000000 01 <P>",
                0,
                0,
                Request::Broadcast {
                    kind: 1,
                    message: p(),
                },
                15,
            ),
            v(
                "publish",
                "00000026 00 0b 0000000000000000 07 6368616e6e656c <P>",
                0,
                0,
                Request::Publish {
                    channel: b("channel"),
                    message: p(),
                },
                22,
            ),
            v(
                "subscribe",
                "00000019 00 0c 0000000000000009 02 0001 0000000000000001 726f6f6d",
                0,
                9,
                Request::Subscribe {
                    kind: 2,
                    targets: vec![1],
                    channel: b("room"),
                },
                25,
            ),
            v(
                "unsubscribe",
                "00000021 00 0d 000000000000000a 01 0002 0000000000000005 0000000000000006 726f6f6d",
                0,
                10,
                Request::Unsubscribe {
                    kind: 1,
                    targets: vec![5, 6],
                    channel: b("room"),
                },
                33,
            ),
            v(
                "trigger without uid",
                "00000013 00 0e 0000000000000000 01 0000000000000001",
                0,
                0,
                Request::Trigger {
                    event: 1,
                    cid: 1,
                    uid: 0,
                },
                23,
            ),
            v(
                "trigger with uid",
                "0000001b 00 0e 0000000000000000 03 0000000000000001 0000000000000003",
                0,
                0,
                Request::Trigger {
                    event: 3,
                    cid: 1,
                    uid: 3,
                },
                23,
            ),
            v(
                "deliver",
                "0000002e 00 0f 0000000000000000 0000000000000002 0000000000000003 <P>",
                0,
                0,
                Request::Deliver {
                    cid: 2,
                    uid: 3,
                    message: p(),
                },
                30,
            ),
            v(
                "deliver uid 0",
                "0000002e 00 0f 0000000000000000 0000000000000002 0000000000000000 <P>",
                0,
                0,
                Request::Deliver {
                    cid: 2,
                    uid: 0,
                    message: p(),
                },
                30,
            ),
            v(
                "getstate",
                "0000000a 00 10 0000000000000003",
                0,
                3,
                Request::GetState,
                14,
            ),
            v(
                "setstate",
                "0000000b 00 11 0000000000000004 02",
                0,
                4,
                Request::SetState { state: 2 },
                15,
            ),
            // v2.5.3+: header bit 0x40 "disconnect after push".
            v(
                "v2.5 push disconnect",
                "00000027 40 08 0000000000000000 01 0000000000000009 <P>",
                0x40,
                0,
                Request::Push {
                    kind: 1,
                    target: 9,
                    message: p(),
                },
                23,
            ),
            v(
                "v2.5 multicast disconnect ack",
                "00000031 40 09 0000000000000006 02 0002 0000000000000001 0000000000000002 <P>",
                0x40,
                6,
                Request::Multicast {
                    kind: 2,
                    targets: vec![1, 2],
                    message: p(),
                },
                33,
            ),
            v(
                "v2.5 broadcast disconnect",
                "0000001f 40 0a 0000000000000000 02 <P>",
                0x40,
                0,
                Request::Broadcast {
                    kind: 2,
                    message: p(),
                },
                15,
            ),
            v(
                "v2.5 publish disconnect",
                "00000023 40 0b 0000000000000000 04 726f6f6d <P>",
                0x40,
                0,
                Request::Publish {
                    channel: b("room"),
                    message: p(),
                },
                19,
            ),
        ]
    }

    /// Whether a size-consistent frame of `len` bytes cut from vector `v` must decode.
    fn request_len_ok(v: &ReqVec, len: usize) -> bool {
        match v.req {
            // The optional uid must be absent or whole.
            Request::Trigger { .. } => len == 23 || len >= 31,
            _ => len >= v.min,
        }
    }

    /// Copy of `frame[..len]` with its size field rewritten to `len - 4`.
    fn cut(frame: &[u8], len: usize) -> Vec<u8> {
        let mut c = frame[..len].to_vec();
        if len >= 4 {
            c[..4].copy_from_slice(&((len - 4) as u32).to_be_bytes());
        }
        c
    }

    /// Every `Bytes` field of a request.
    fn slices(req: &Request) -> Vec<&Bytes> {
        match req {
            Request::Handshake { id, .. } => vec![id],
            Request::Push { message, .. }
            | Request::Multicast { message, .. }
            | Request::Broadcast { message, .. }
            | Request::Deliver { message, .. } => vec![message],
            Request::Publish { channel, message } => vec![channel, message],
            Request::Subscribe { channel, .. } | Request::Unsubscribe { channel, .. } => {
                vec![channel]
            }
            _ => vec![],
        }
    }

    #[test]
    fn constants() {
        assert_eq!(HEARTBEAT, [0, 0, 0, 1, 0x80]);
        assert_eq!(HEARTBEAT.to_vec(), hex("00000001 80"));
        assert_eq!(HEADER_HEARTBEAT, 0x80);
        assert_eq!(HEADER_DISCONNECT, 0x40);
        assert_eq!(MIN_DATA_FRAME, 14);
        assert!(disconnect_after(0x40));
        assert!(!disconnect_after(0x00));
    }

    #[test]
    fn cmd_bytes_round_trip() {
        for b in 0..=255u8 {
            match Cmd::from_u8(b) {
                Some(c) => {
                    assert!((1..=17).contains(&b));
                    assert_eq!(c as u8, b);
                }
                None => assert!(b == 0 || b > 17, "{b}"),
            }
        }
        assert_eq!(Cmd::Handshake as u8, 1);
        assert_eq!(Cmd::Deliver as u8, 15);
        assert_eq!(Cmd::SetState as u8, 17);
        assert_eq!(Cmd::GetIp.to_string(), "getip");
        assert_eq!(Cmd::IsOnline.name(), "isonline");
    }

    #[test]
    fn request_vectors_decode_zero_copy() {
        for v in request_vectors() {
            let frame = Bytes::from(hex(v.hex));
            let got = decode(frame.clone()).unwrap_or_else(|e| panic!("{}: {e}", v.name));
            assert_eq!(
                got,
                Frame::Request {
                    header: v.header,
                    seq: v.seq,
                    req: v.req.clone(),
                },
                "{}",
                v.name
            );
            let Frame::Request { req, .. } = got else {
                unreachable!()
            };
            assert_eq!(req.cmd() as u8, frame[5], "{}", v.name);
            for s in slices(&req) {
                assert!(within(&frame, s), "{}: field copied", v.name);
            }
            assert_eq!(
                peek(&frame),
                Ok(Head::Data {
                    header: v.header,
                    cmd: frame[5],
                    seq: v.seq
                })
            );
        }
    }

    #[test]
    fn message_slices_equal_the_client_packet() {
        let want = hex(P);
        for v in request_vectors() {
            let frame = Bytes::from(hex(v.hex));
            if let Frame::Request {
                req:
                    Request::Push { message, .. }
                    | Request::Multicast { message, .. }
                    | Request::Broadcast { message, .. }
                    | Request::Publish { message, .. }
                    | Request::Deliver { message, .. },
                ..
            } = decode(frame.clone()).unwrap()
            {
                assert_eq!(&message[..], &want[..], "{}", v.name);
                // The message is the frame's tail: its address is frame end - 20.
                assert_eq!(
                    message.as_ptr() as usize,
                    frame.as_ptr() as usize + frame.len() - want.len(),
                    "{}",
                    v.name
                );
            }
        }
    }

    #[test]
    fn request_vectors_encode_via_put_request() {
        for v in request_vectors() {
            let mut out = BytesMut::new();
            put_request(&mut out, v.header, v.seq, &v.req).unwrap();
            assert_eq!(out.to_vec(), hex(v.hex), "{}", v.name);
        }
    }

    #[test]
    fn request_encoders_exact_hex() {
        let pk = hex(P);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "00000011 00 01 0000000000000001 01 676174652d31",
                encode(|o| put_handshake(o, 1, 1, b"gate-1")),
            ),
            (
                "0000001a 00 02 0000000000000001 0000000000000002 0000000000000003",
                encode(|o| put_bind(o, 1, 2, 3)),
            ),
            (
                "00000012 00 03 0000000000000002 0000000000000003",
                encode(|o| put_unbind(o, 2, 3)),
            ),
            (
                "00000013 00 04 0000000000000001 02 0000000000000003",
                encode(|o| put_getip(o, 1, 2, 3)),
            ),
            (
                "0000000b 00 05 0000000000000005 01",
                encode(|o| put_stat(o, 5, 1)),
            ),
            (
                "00000013 00 06 0000000000000001 02 0000000000000001",
                encode(|o| put_isonline(o, 1, 2, 1)),
            ),
            (
                "00000014 00 07 0000000000000000 02 0000000000000003 01",
                encode(|o| put_disconnect(o, 0, 2, 3, true)),
            ),
            (
                "00000027 00 08 0000000000000000 02 0000000000000003 <P>",
                encode(|o| put_push(o, 0, 0, 2, 3, &pk)),
            ),
            (
                "00000039 00 09 0000000000000000 02 0003 0000000000000001 0000000000000002 0000000000000003 <P>",
                encode(|o| put_multicast(o, 0, 0, 2, &[1, 2, 3], &pk).unwrap()),
            ),
            (
                "0000001f 00 0a 0000000000000000 01 <P>",
                encode(|o| put_broadcast(o, 0, 0, 1, &pk)),
            ),
            (
                "00000026 00 0b 0000000000000000 07 6368616e6e656c <P>",
                encode(|o| put_publish(o, 0, 0, b"channel", &pk).unwrap()),
            ),
            (
                "00000019 00 0c 0000000000000009 02 0001 0000000000000001 726f6f6d",
                encode(|o| put_subscribe(o, 9, 2, &[1], b"room").unwrap()),
            ),
            (
                "00000021 00 0d 000000000000000a 01 0002 0000000000000005 0000000000000006 726f6f6d",
                encode(|o| put_unsubscribe(o, 10, 1, &[5, 6], b"room").unwrap()),
            ),
            (
                "00000013 00 0e 0000000000000000 01 0000000000000001",
                encode(|o| put_trigger(o, 0, 1, 1, 0)),
            ),
            (
                "0000001b 00 0e 0000000000000000 03 0000000000000001 0000000000000003",
                encode(|o| put_trigger(o, 0, 3, 1, 3)),
            ),
            (
                "0000002e 00 0f 0000000000000000 0000000000000002 0000000000000003 <P>",
                encode(|o| put_deliver(o, 0, 2, 3, &pk)),
            ),
            (
                "0000002e 00 0f 0000000000000000 0000000000000002 0000000000000000 <P>",
                encode(|o| put_deliver(o, 0, 2, 0, &pk)),
            ),
            (
                "0000000a 00 10 0000000000000003",
                encode(|o| put_getstate(o, 3)),
            ),
            (
                "0000000b 00 11 0000000000000004 02",
                encode(|o| put_setstate(o, 4, 2)),
            ),
            // v2.5.3+ disconnect bit.
            (
                "00000027 40 08 0000000000000000 01 0000000000000009 <P>",
                encode(|o| put_push(o, HEADER_DISCONNECT, 0, 1, 9, &pk)),
            ),
            (
                "00000031 40 09 0000000000000006 02 0002 0000000000000001 0000000000000002 <P>",
                encode(|o| put_multicast(o, HEADER_DISCONNECT, 6, 2, &[1, 2], &pk).unwrap()),
            ),
            (
                "0000001f 40 0a 0000000000000000 02 <P>",
                encode(|o| put_broadcast(o, HEADER_DISCONNECT, 0, 2, &pk)),
            ),
            (
                "00000023 40 0b 0000000000000000 04 726f6f6d <P>",
                encode(|o| put_publish(o, HEADER_DISCONNECT, 0, b"room", &pk).unwrap()),
            ),
            ("00000001 80", encode(put_heartbeat)),
        ];
        for (want, got) in cases {
            assert_eq!(got, hex(want), "{want}");
            // Every size field = total length - 4.
            assert_eq!(
                u32::from_be_bytes(got[..4].try_into().unwrap()) as usize,
                got.len() - 4
            );
        }
    }

    /// One response vector of §10.2 with the encoder that must produce it.
    struct ResVec {
        hex: &'static str,
        cmd: Cmd,
        res: Response,
        put: fn(&mut BytesMut),
    }

    fn response_vectors() -> Vec<ResVec> {
        let code = |seq, code| Response {
            seq,
            code: Some(code),
            ..Response::default()
        };
        vec![
            ResVec {
                hex: "0000000c 00 01 0000000000000001 0000",
                cmd: Cmd::Handshake,
                res: code(1, 0),
                put: |o| put_code(o, Cmd::Handshake, 1, 0),
            },
            ResVec {
                hex: "0000000c 00 02 0000000000000001 0000",
                cmd: Cmd::Bind,
                res: code(1, 0),
                put: |o| put_code(o, Cmd::Bind, 1, 0),
            },
            ResVec {
                hex: "0000000c 00 02 0000000000000007 0001",
                cmd: Cmd::Bind,
                res: code(7, 1),
                put: |o| put_code(o, Cmd::Bind, 7, 1),
            },
            ResVec {
                hex: "00000010 00 04 0000000000000001 0000 7f000001",
                cmd: Cmd::GetIp,
                res: Response {
                    ip: Some([127, 0, 0, 1]),
                    ..code(1, 0)
                },
                put: |o| put_getip_res(o, 1, 0, Some(IpAddr::V4(Ipv4Addr::LOCALHOST))),
            },
            ResVec {
                hex: "0000000c 00 04 0000000000000001 0001",
                cmd: Cmd::GetIp,
                res: code(1, 1),
                put: |o| put_getip_res(o, 1, 1, None),
            },
            ResVec {
                hex: "00000010 00 04 0000000000000001 0000 00000000",
                cmd: Cmd::GetIp,
                res: Response {
                    ip: Some([0; 4]),
                    ..code(1, 0)
                },
                put: |o| put_getip_res(o, 1, 0, Some(IpAddr::V6(Ipv6Addr::LOCALHOST))),
            },
            ResVec {
                hex: "00000014 00 05 0000000000000005 0000 0000000000000014",
                cmd: Cmd::Stat,
                res: Response {
                    total: Some(20),
                    ..code(5, 0)
                },
                put: |o| put_total_res(o, Cmd::Stat, 5, 0, 20),
            },
            ResVec {
                hex: "0000000c 00 05 0000000000000005 0000",
                cmd: Cmd::Stat,
                res: code(5, 0),
                put: |o| put_total_res(o, Cmd::Stat, 5, 0, 0),
            },
            ResVec {
                hex: "0000000d 00 06 0000000000000001 0000 01",
                cmd: Cmd::IsOnline,
                res: Response {
                    online: Some(true),
                    ..code(1, 0)
                },
                put: |o| put_isonline_res(o, 1, 0, true),
            },
            ResVec {
                hex: "00000014 00 09 0000000000000004 0000 0000000000000003",
                cmd: Cmd::Multicast,
                res: Response {
                    total: Some(3),
                    ..code(4, 0)
                },
                put: |o| put_total_res(o, Cmd::Multicast, 4, 0, 3),
            },
            ResVec {
                hex: "00000014 00 0a 0000000000000001 0000 0000000000000014",
                cmd: Cmd::Broadcast,
                res: Response {
                    total: Some(20),
                    ..code(1, 0)
                },
                put: |o| put_total_res(o, Cmd::Broadcast, 1, 0, 20),
            },
            ResVec {
                hex: "00000012 00 0b 0000000000000001 000000000000000a",
                cmd: Cmd::Publish,
                res: Response {
                    seq: 1,
                    total: Some(10),
                    ..Response::default()
                },
                put: |o| put_publish_res_v24(o, 1, 10),
            },
            ResVec {
                hex: "0000000c 00 0c 0000000000000009 0000",
                cmd: Cmd::Subscribe,
                res: code(9, 0),
                put: |o| put_code(o, Cmd::Subscribe, 9, 0),
            },
            ResVec {
                hex: "0000000d 00 10 0000000000000003 0000 01",
                cmd: Cmd::GetState,
                res: Response {
                    state: Some(1),
                    ..code(3, 0)
                },
                put: |o| put_getstate_res(o, 3, 0, 1),
            },
            ResVec {
                hex: "0000000c 00 11 0000000000000004 0000",
                cmd: Cmd::SetState,
                res: code(4, 0),
                put: |o| put_code(o, Cmd::SetState, 4, 0),
            },
            // v2.5.5+ publish responses.
            ResVec {
                hex: "00000014 00 0b 0000000000000001 0000 000000000000000a",
                cmd: Cmd::Publish,
                res: Response {
                    total: Some(10),
                    ..code(1, 0)
                },
                put: |o| put_publish_res_v25(o, 1, 0, 10),
            },
            ResVec {
                hex: "0000000c 00 0b 0000000000000001 0000",
                cmd: Cmd::Publish,
                res: code(1, 0),
                put: |o| put_publish_res_v25(o, 1, 0, 0),
            },
        ]
    }

    /// The response lengths `decode_response` accepts for `cmd` (due's decoder rules).
    fn response_len_ok(cmd: Cmd, len: usize) -> bool {
        match cmd {
            Cmd::GetIp => len == 16 || len == 20,
            Cmd::Stat | Cmd::Multicast | Cmd::Broadcast => len == 16 || len == 24,
            Cmd::IsOnline | Cmd::GetState => len == 17,
            Cmd::Publish => len == 16 || len >= 22,
            _ => len == 16,
        }
    }

    #[test]
    fn response_vectors_encode_and_decode() {
        for v in response_vectors() {
            let want = hex(v.hex);
            assert_eq!(encode(v.put), want, "{}", v.hex);
            assert_eq!(decode_response(v.cmd, &want), Ok(v.res), "{}", v.hex);
        }
    }

    #[test]
    fn go_v25_publish_size_bug_is_refused() {
        let bug = hex("00000014 00 0b 0000000000000001 0000");
        assert_eq!(
            decode_response(Cmd::Publish, &bug),
            Err(LinkError::SizeMismatch { size: 20, len: 16 })
        );
        // In a stream the bogus size swallows 8 bytes of the next frame.
        let mut stream = bug.clone();
        stream.extend_from_slice(&HEARTBEAT);
        assert_eq!(frame_len(&stream, 1 << 20), Ok(None));
    }

    #[test]
    fn response_encoder_variants() {
        // getip: IPv4-mapped IPv6 is written as its IPv4 address.
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(
            encode(|o| put_getip_res(o, 1, 0, Some(mapped))),
            hex("00000010 00 04 0000000000000001 0000 0a000005")
        );
        // A non-zero code never carries the IP, nor a missing address.
        let v4 = Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)));
        assert_eq!(
            encode(|o| put_getip_res(o, 1, 2, v4)),
            hex("0000000c 00 04 0000000000000001 0002")
        );
        assert_eq!(
            encode(|o| put_getip_res(o, 1, 0, None)),
            hex("0000000c 00 04 0000000000000001 0000")
        );
        // Totals are omitted for non-zero codes.
        assert_eq!(
            encode(|o| put_total_res(o, Cmd::Multicast, 2, 2, 5)),
            hex("0000000c 00 09 0000000000000002 0002")
        );
        assert_eq!(
            encode(|o| put_publish_res_v25(o, 3, 1, 10)),
            hex("0000000c 00 0b 0000000000000003 0001")
        );
        // v2.4.1 always carries the total, even 0.
        assert_eq!(
            encode(|o| put_publish_res_v24(o, 3, 0)),
            hex("00000012 00 0b 0000000000000003 0000000000000000")
        );
        assert_eq!(
            encode(|o| put_isonline_res(o, 1, 2, false)),
            hex("0000000d 00 06 0000000000000001 0002 00")
        );
        assert_eq!(
            encode(|o| put_getstate_res(o, 1, 0, 3)),
            hex("0000000d 00 10 0000000000000001 0000 03")
        );
        // Code-only responses for every command that uses them.
        for cmd in [Cmd::Unbind, Cmd::Disconnect, Cmd::Push, Cmd::Unsubscribe]
            .into_iter()
            .chain([Cmd::Trigger, Cmd::Deliver])
        {
            let f = encode(|o| put_code(o, cmd, 8, 1));
            assert_eq!(f.len(), 16);
            assert_eq!(f[5], cmd as u8);
            assert_eq!(
                decode_response(cmd, &f),
                Ok(Response {
                    seq: 8,
                    code: Some(1),
                    ..Response::default()
                })
            );
        }
    }

    #[test]
    fn every_prefix_of_every_request_is_refused_or_valid() {
        let mut vectors: Vec<(String, Vec<u8>)> = request_vectors()
            .into_iter()
            .map(|v| (v.name.to_string(), hex(v.hex)))
            .collect();
        vectors.push(("heartbeat".into(), HEARTBEAT.to_vec()));
        for (name, full) in &vectors {
            for len in 0..full.len() {
                // Raw prefix: the size field promises more than is there.
                let raw = &full[..len];
                assert_eq!(frame_len(raw, u32::MAX), Ok(None), "{name} raw {len}");
                assert!(
                    decode(Bytes::copy_from_slice(raw)).is_err(),
                    "{name} raw {len}"
                );
                assert!(peek(raw).is_err(), "{name} raw {len}");
            }
            assert_eq!(frame_len(full, u32::MAX), Ok(Some(full.len())), "{name}");
        }
        // Size-consistent prefixes: a frame that ends early must fail cleanly unless every
        // required field is still there (then it is a valid frame with a shorter tail).
        for v in request_vectors() {
            let full = hex(v.hex);
            for len in 0..=full.len() {
                let c = cut(&full, len);
                let got = decode(Bytes::from(c.clone()));
                if request_len_ok(&v, len) {
                    let Ok(Frame::Request { header, seq, req }) = got else {
                        panic!("{} cut {len}: {got:?}", v.name)
                    };
                    assert_eq!((header, seq, req.cmd()), (v.header, v.seq, v.req.cmd()));
                } else {
                    let want_kind = match len {
                        0..=3 => LinkError::Short { cmd: 0, len },
                        4 => LinkError::ZeroSize,
                        5 => LinkError::Short { cmd: 0, len },
                        _ => LinkError::Short { cmd: full[5], len },
                    };
                    assert_eq!(got, Err(want_kind), "{} cut {len}", v.name);
                }
            }
        }
    }

    #[test]
    fn every_prefix_of_every_response_is_refused_or_valid() {
        for v in response_vectors() {
            let full = hex(v.hex);
            for len in 0..full.len() {
                assert!(
                    decode_response(v.cmd, &full[..len]).is_err(),
                    "{} raw {len}",
                    v.hex
                );
            }
            for len in 0..=full.len() {
                let c = cut(&full, len);
                let got = decode_response(v.cmd, &c);
                if len >= MIN_DATA_FRAME && response_len_ok(v.cmd, len) {
                    let res = got.unwrap_or_else(|e| panic!("{} cut {len}: {e}", v.hex));
                    assert_eq!(res.seq, v.res.seq);
                } else {
                    let want = match len {
                        0..=3 | 5 => LinkError::Short { cmd: 0, len },
                        4 => LinkError::ZeroSize,
                        6..=13 => LinkError::Short { cmd: full[5], len },
                        _ => LinkError::BadLength { cmd: full[5], len },
                    };
                    assert_eq!(got, Err(want), "{} cut {len}", v.hex);
                }
            }
        }
    }

    #[test]
    fn put_request_round_trips_with_any_header() {
        for v in request_vectors() {
            for header in [0x00, 0x40, 0x01] {
                let mut out = BytesMut::new();
                put_request(&mut out, header, 77, &v.req).unwrap();
                assert_eq!(out[4], header);
                assert_eq!(
                    decode(out.freeze()),
                    Ok(Frame::Request {
                        header,
                        seq: 77,
                        req: v.req.clone()
                    }),
                    "{}",
                    v.name
                );
            }
        }
    }

    #[test]
    fn unknown_commands_are_reported_not_refused() {
        for cmd in [0u8, 18, 0x7f, 0xff] {
            let mut f = hex("0000000a 00 00 0000000000000005");
            f[5] = cmd;
            assert_eq!(
                decode(Bytes::from(f.clone())),
                Ok(Frame::Unknown { cmd, seq: 5 })
            );
            // With a body and the 0x40 bit too.
            f.extend_from_slice(b"whatever");
            let size = (f.len() - 4) as u32;
            f[..4].copy_from_slice(&size.to_be_bytes());
            f[4] = 0x40;
            assert_eq!(decode(Bytes::from(f)), Ok(Frame::Unknown { cmd, seq: 5 }));
        }
    }

    #[test]
    fn heartbeat_is_decided_by_the_header_bit_alone() {
        for h in [
            "00000001 80",
            "00000003 80 0102",
            "00000001 c0",
            "00000001 ff",
            // A data-looking frame with the heartbeat bit is still a heartbeat.
            "0000001a 80 02 0000000000000001 0000000000000002 0000000000000003",
        ] {
            let f = hex(h);
            assert_eq!(decode(Bytes::from(f.clone())), Ok(Frame::Heartbeat), "{h}");
            assert_eq!(peek(&f), Ok(Head::Heartbeat), "{h}");
            assert_eq!(
                decode_response(Cmd::Bind, &f),
                Err(LinkError::UnexpectedHeartbeat)
            );
        }
    }

    #[test]
    fn short_data_frames_are_errors() {
        assert_eq!(
            decode(Bytes::from(hex("00000001 00"))),
            Err(LinkError::Short { cmd: 0, len: 5 })
        );
        assert_eq!(
            decode(Bytes::from(hex("00000002 40 02"))),
            Err(LinkError::Short { cmd: 2, len: 6 })
        );
        assert_eq!(
            decode(Bytes::from(hex("00000009 00 02 00000000000001"))),
            Err(LinkError::Short { cmd: 2, len: 13 })
        );
        // A response handed to the request decoder: bind needs 30 bytes.
        assert_eq!(
            decode(Bytes::from(hex("0000000c 00 02 0000000000000001 0000"))),
            Err(LinkError::Short { cmd: 2, len: 16 })
        );
        assert_eq!(
            decode(Bytes::from(hex("00000000"))),
            Err(LinkError::ZeroSize)
        );
        assert_eq!(
            decode(Bytes::from(hex("000000"))),
            Err(LinkError::Short { cmd: 0, len: 3 })
        );
        // Size field disagreeing with the slice handed in.
        assert_eq!(
            decode(Bytes::from(hex("0000000b 00 05 0000000000000005 01 ff"))),
            Err(LinkError::SizeMismatch { size: 11, len: 16 })
        );
    }

    #[test]
    fn body_edge_cases() {
        // Booleans: only 1 is true.
        for (byte, force) in [(0u8, false), (1, true), (2, false), (0xff, false)] {
            let mut f = hex("00000014 00 07 0000000000000000 02 0000000000000003 01");
            f[23] = byte;
            let Ok(Frame::Request {
                req: Request::Disconnect { force: got, .. },
                ..
            }) = decode(Bytes::from(f))
            else {
                panic!("disconnect")
            };
            assert_eq!(got, force, "force byte {byte}");
            let mut r = hex("0000000d 00 06 0000000000000001 0000 01");
            r[16] = byte;
            assert_eq!(
                decode_response(Cmd::IsOnline, &r).unwrap().online,
                Some(force)
            );
        }
        // Fixed layouts ignore trailing bytes.
        assert_eq!(
            decode(Bytes::from(hex(
                "0000001c 00 02 0000000000000001 0000000000000002 0000000000000003 abcd"
            ))),
            Ok(Frame::Request {
                header: 0,
                seq: 1,
                req: Request::Bind { cid: 2, uid: 3 }
            })
        );
        // A huge count with no targets behind it fails before allocating.
        assert_eq!(
            decode(Bytes::from(hex("0000000d 00 09 0000000000000000 02 ffff"))),
            Err(LinkError::Short { cmd: 9, len: 17 })
        );
        // A channel length running past the frame.
        assert_eq!(
            decode(Bytes::from(hex("0000000d 00 0b 0000000000000000 05 6162"))),
            Err(LinkError::Short { cmd: 11, len: 17 })
        );
        // Empty fields are fine: empty handshake ID, empty message, empty channel, 0 targets.
        assert_eq!(
            decode(Bytes::from(hex("0000000b 00 01 0000000000000001 02"))),
            Ok(Frame::Request {
                header: 0,
                seq: 1,
                req: Request::Handshake {
                    kind: 2,
                    id: Bytes::new()
                }
            })
        );
        assert_eq!(
            decode(Bytes::from(hex("0000000d 00 0c 0000000000000001 01 0000"))),
            Ok(Frame::Request {
                header: 0,
                seq: 1,
                req: Request::Subscribe {
                    kind: 1,
                    targets: vec![],
                    channel: Bytes::new()
                }
            })
        );
        // Kind bytes are passed through unvalidated; negative ids survive.
        let mut out = BytesMut::new();
        put_getip(&mut out, 1, 9, -1);
        assert_eq!(
            decode(out.freeze()),
            Ok(Frame::Request {
                header: 0,
                seq: 1,
                req: Request::GetIp {
                    kind: 9,
                    target: -1
                }
            })
        );
    }

    #[test]
    fn response_mismatches() {
        let bind_res = hex("0000000c 00 02 0000000000000001 0000");
        assert_eq!(
            decode_response(Cmd::Unbind, &bind_res),
            Err(LinkError::WrongCmd {
                expected: 3,
                got: 2
            })
        );
        // Longer than the Go decoder accepts.
        let long = hex("0000000d 00 02 0000000000000001 0000 00");
        assert_eq!(
            decode_response(Cmd::Bind, &long),
            Err(LinkError::BadLength { cmd: 2, len: 17 })
        );
        // v2.4.1 publish: any length >= 22 (other than 24) reads the total at offset 14.
        let v24_long = hex("00000013 00 0b 0000000000000001 000000000000000a ff");
        assert_eq!(
            decode_response(Cmd::Publish, &v24_long),
            Ok(Response {
                seq: 1,
                total: Some(10),
                ..Response::default()
            })
        );
    }

    #[test]
    fn frame_len_over_split_and_coalesced_buffers() {
        let mut stream = BytesMut::new();
        put_heartbeat(&mut stream);
        put_bind(&mut stream, 1, 2, 3);
        put_push(&mut stream, HEADER_DISCONNECT, 0, 1, 9, &hex(P));
        put_getstate(&mut stream, 3);
        put_heartbeat(&mut stream);
        let stream = stream.freeze();
        let want = vec![
            Frame::Heartbeat,
            Frame::Request {
                header: 0,
                seq: 1,
                req: Request::Bind { cid: 2, uid: 3 },
            },
            Frame::Request {
                header: 0x40,
                seq: 0,
                req: Request::Push {
                    kind: 1,
                    target: 9,
                    message: p(),
                },
            },
            Frame::Request {
                header: 0,
                seq: 3,
                req: Request::GetState,
            },
            Frame::Heartbeat,
        ];

        // Coalesced: everything arrives in one read.
        let mut buf = BytesMut::from(&stream[..]);
        let mut got = vec![];
        while let Some(n) = frame_len(&buf, 1024).unwrap() {
            got.push(decode(buf.split_to(n).freeze()).unwrap());
        }
        assert!(buf.is_empty());
        assert_eq!(got, want);

        // Split at every chunk size, down to one byte per read.
        for chunk in 1..=stream.len() {
            let mut buf = BytesMut::new();
            let mut got = vec![];
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(n) = frame_len(&buf, 1024).unwrap() {
                    got.push(decode(buf.split_to(n).freeze()).unwrap());
                }
            }
            assert!(buf.is_empty(), "chunk {chunk}");
            assert_eq!(got, want, "chunk {chunk}");
        }
    }

    #[test]
    fn frame_len_refusals() {
        assert_eq!(frame_len(&[], 10), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0], 10), Ok(None));
        assert_eq!(frame_len(&[0, 0, 0, 0], 10), Err(LinkError::ZeroSize));
        assert_eq!(frame_len(&[0, 0, 0, 0, 0x80], 10), Err(LinkError::ZeroSize));
        // Oversize is refused as soon as the size field is in, before the body.
        assert_eq!(
            frame_len(&hex("00001000"), 4095),
            Err(LinkError::TooLarge {
                size: 4096,
                max: 4095
            })
        );
        assert_eq!(
            frame_len(&hex("ffffffff"), u32::MAX - 1),
            Err(LinkError::TooLarge {
                size: u32::MAX,
                max: u32::MAX - 1
            })
        );
        // size == max is allowed.
        assert_eq!(frame_len(&hex("00001000"), 4096), Ok(None));
        let mut f = hex("0000000a 00 10 0000000000000003");
        assert_eq!(frame_len(&f, 10), Ok(Some(14)));
        assert_eq!(
            frame_len(&f, 9),
            Err(LinkError::TooLarge { size: 10, max: 9 })
        );
        f.extend_from_slice(&[0, 0]);
        assert_eq!(frame_len(&f, 10), Ok(Some(14)));
        assert_eq!(frame_len(&f[..13], 10), Ok(None));
    }

    #[test]
    fn encoders_append_for_batching() {
        let mut out = BytesMut::from(&b"xy"[..]);
        put_heartbeat(&mut out);
        put_code(&mut out, Cmd::Bind, 1, 0);
        put_trigger(&mut out, 0, 1, 1, 0);
        put_deliver(&mut out, 0, 2, 3, &hex(P));
        let mut want = b"xy".to_vec();
        want.extend(hex("00000001 80"));
        want.extend(hex("0000000c 00 02 0000000000000001 0000"));
        want.extend(hex("00000013 00 0e 0000000000000000 01 0000000000000001"));
        want.extend(hex(
            "0000002e 00 0f 0000000000000000 0000000000000002 0000000000000003 <P>",
        ));
        assert_eq!(out.to_vec(), want);

        // The deliver head plus the message written separately is the same frame.
        let mut head = BytesMut::new();
        put_deliver_head(&mut head, 0, 2, 3, 20);
        head.extend_from_slice(&hex(P));
        assert_eq!(head.to_vec(), encode(|o| put_deliver(o, 0, 2, 3, &hex(P))));
    }

    #[test]
    fn encoder_limits_leave_the_buffer_untouched() {
        let mut out = BytesMut::from(&b"keep"[..]);
        let many = vec![1i64; 65536];
        assert_eq!(
            put_multicast(&mut out, 0, 0, 1, &many, b"m"),
            Err(LinkError::TooManyTargets { count: 65536 })
        );
        assert_eq!(
            put_subscribe(&mut out, 1, 1, &many, b"c"),
            Err(LinkError::TooManyTargets { count: 65536 })
        );
        assert_eq!(
            put_unsubscribe(&mut out, 1, 1, &many, b"c"),
            Err(LinkError::TooManyTargets { count: 65536 })
        );
        assert_eq!(
            put_publish(&mut out, 0, 0, &[b'c'; 256], b"m"),
            Err(LinkError::ChannelTooLong { len: 256 })
        );
        assert_eq!(&out[..], b"keep");

        // The limits themselves are fine.
        let mut out = BytesMut::new();
        put_multicast(&mut out, 0, 0, 1, &many[..65535], b"m").unwrap();
        assert_eq!(out.len(), 17 + 8 * 65535 + 1);
        let Ok(Frame::Request {
            req: Request::Multicast {
                targets, message, ..
            },
            ..
        }) = decode(out.freeze())
        else {
            panic!("multicast")
        };
        assert_eq!((targets.len(), &message[..]), (65535, &b"m"[..]));
        let mut out = BytesMut::new();
        put_publish(&mut out, 0, 0, &[b'c'; 255], b"").unwrap();
        assert_eq!(out.len(), 15 + 255);
    }

    #[test]
    fn errors_display() {
        let cases = [
            (LinkError::ZeroSize, "link frame with size 0"),
            (
                LinkError::TooLarge { size: 9, max: 8 },
                "link frame size 9 exceeds cap 8",
            ),
            (
                LinkError::SizeMismatch { size: 20, len: 16 },
                "link frame size field 20 does not match frame length 16",
            ),
            (
                LinkError::Short { cmd: 2, len: 16 },
                "link frame of 16 bytes too short for bind",
            ),
            (
                LinkError::Short { cmd: 0, len: 5 },
                "link frame of 5 bytes too short for data frame",
            ),
            (
                LinkError::BadLength { cmd: 11, len: 18 },
                "invalid publish response length 18",
            ),
            (
                LinkError::WrongCmd {
                    expected: 3,
                    got: 42,
                },
                "response to command 42 does not match the pending unbind call",
            ),
            (
                LinkError::UnexpectedHeartbeat,
                "heartbeat where a response was expected",
            ),
            (
                LinkError::TooManyTargets { count: 70000 },
                "70000 targets exceed the 65535 a frame can carry",
            ),
            (
                LinkError::ChannelTooLong { len: 300 },
                "channel of 300 bytes exceeds the 255 a frame can carry",
            ),
        ];
        for (e, s) in cases {
            assert_eq!(e.to_string(), s);
        }
    }
}

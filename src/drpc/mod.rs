//! drpc, the gate↔node link protocol, as a sans-IO codec: framing, header bits, command bytes,
//! errors, the decode dispatch and shared helpers; each command's layout lives in its own module.
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
//!
//! One module per command (or closely related pair), each with its encoders, its body decoder
//! and its test vectors: [`handshake`], [`bind`], [`unbind`], [`getip`], [`stat`],
//! [`isonline`], [`disconnect`], [`push`], [`multicast`], [`broadcast`], [`publish`],
//! [`subscribe`] (and unsubscribe), [`state`] (getstate, setstate), [`trigger`], [`deliver`],
//! [`heartbeat`]. Their public functions are re-exported here.

pub mod bind;
pub mod broadcast;
pub mod deliver;
pub mod disconnect;
pub mod getip;
pub mod handshake;
pub mod heartbeat;
pub mod isonline;
pub mod multicast;
pub mod publish;
pub mod push;
pub mod stat;
pub mod state;
pub mod subscribe;
pub mod trigger;
pub mod unbind;

#[cfg(test)]
mod testing;

pub use bind::put_bind;
pub use broadcast::put_broadcast;
pub use deliver::{put_deliver, put_deliver_head};
pub use disconnect::put_disconnect;
pub use getip::{put_getip, put_getip_res};
pub use handshake::put_handshake;
pub use heartbeat::{put_heartbeat, HEARTBEAT};
pub use isonline::{put_isonline, put_isonline_res};
pub use multicast::put_multicast;
pub use publish::{put_publish, put_publish_res_v24, put_publish_res_v25};
pub use push::put_push;
pub use stat::put_stat;
pub use state::{put_getstate, put_getstate_res, put_setstate};
pub use subscribe::{put_subscribe, put_unsubscribe};
pub use trigger::put_trigger;
pub use unbind::put_unbind;

use bytes::{BufMut, Bytes, BytesMut};
use std::ops::Range;
use std::time::Duration;

/// due's link heartbeat period; a connection silent for two of them is cut.
pub const LINK_HEARTBEAT: Duration = Duration::from_secs(10);
/// Largest link frame accepted (a multicast to 65,535 targets plus a client packet fits).
pub const MAX_LINK_FRAME: u32 = 16 << 20;

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
        Cmd::Handshake => handshake::decode(&mut r, &frame)?,
        Cmd::Bind => bind::decode(&mut r)?,
        Cmd::Unbind => unbind::decode(&mut r)?,
        Cmd::GetIp => getip::decode(&mut r)?,
        Cmd::Stat => stat::decode(&mut r)?,
        Cmd::IsOnline => isonline::decode(&mut r)?,
        Cmd::Disconnect => disconnect::decode(&mut r)?,
        Cmd::Push => push::decode(&mut r, &frame)?,
        Cmd::Multicast => multicast::decode(&mut r, &frame)?,
        Cmd::Broadcast => broadcast::decode(&mut r, &frame)?,
        Cmd::Publish => publish::decode(&mut r, &frame)?,
        Cmd::Subscribe => subscribe::decode_subscribe(&mut r, &frame)?,
        Cmd::Unsubscribe => subscribe::decode_unsubscribe(&mut r, &frame)?,
        Cmd::Trigger => trigger::decode(&mut r)?,
        Cmd::Deliver => deliver::decode(&mut r, &frame)?,
        Cmd::GetState => Request::GetState,
        Cmd::SetState => state::decode_setstate(&mut r)?,
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
        | Cmd::SetState => read_code_res(&mut r, &mut res)?,
        Cmd::GetIp => getip::read_res(&mut r, &mut res)?,
        Cmd::Stat | Cmd::Multicast | Cmd::Broadcast => read_total_res(&mut r, &mut res)?,
        Cmd::IsOnline => isonline::read_res(&mut r, &mut res)?,
        Cmd::GetState => state::read_getstate_res(&mut r, &mut res)?,
        Cmd::Publish => publish::read_res(&mut r, &mut res)?,
    }
    Ok(res)
}

/// The length error a response decoder returns for a frame due's decoder would not accept.
fn bad_length(r: &Reader<'_>) -> LinkError {
    LinkError::BadLength {
        cmd: r.cmd,
        len: r.buf.len(),
    }
}

/// The code-only response body: exactly 16 bytes.
fn read_code_res(r: &mut Reader<'_>, res: &mut Response) -> Result<(), LinkError> {
    if r.buf.len() != 16 {
        return Err(bad_length(r));
    }
    res.code = Some(r.u16()?);
    Ok(())
}

/// The `code | [total(8)]` response body of stat, multicast and broadcast: 16 or 24 bytes.
fn read_total_res(r: &mut Reader<'_>, res: &mut Response) -> Result<(), LinkError> {
    let len = r.buf.len();
    if len != 16 && len != 24 {
        return Err(bad_length(r));
    }
    res.code = Some(r.u16()?);
    if len == 24 {
        res.total = Some(r.u64()?);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Shared encoder helpers. Each encoder reserves its exact length once, then appends. All write
// header 0 unless they take a `header` (push, multicast, broadcast, publish, where v2.5.3 uses
// HEADER_DISCONNECT). A header with bit 0x80 set would make the peer read the frame as a
// heartbeat.
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

/// The 16-byte code-only response (handshake, bind, unbind, disconnect, push, subscribe,
/// unsubscribe, trigger, deliver, setstate).
pub fn put_code(out: &mut BytesMut, cmd: Cmd, seq: u64, code: u16) {
    put_head(out, 0, cmd, seq, 2);
    out.put_u16(code);
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
    //! Properties every command shares, run over the vectors of all command modules.

    use super::testing::*;
    use super::*;

    /// Every command module's request vectors.
    fn request_vectors() -> Vec<ReqVec> {
        [
            handshake::tests::request_vectors(),
            bind::tests::request_vectors(),
            unbind::tests::request_vectors(),
            getip::tests::request_vectors(),
            stat::tests::request_vectors(),
            isonline::tests::request_vectors(),
            disconnect::tests::request_vectors(),
            push::tests::request_vectors(),
            multicast::tests::request_vectors(),
            broadcast::tests::request_vectors(),
            publish::tests::request_vectors(),
            subscribe::tests::request_vectors(),
            trigger::tests::request_vectors(),
            deliver::tests::request_vectors(),
            state::tests::request_vectors(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Every command module's response vectors.
    fn response_vectors() -> Vec<ResVec> {
        [
            handshake::tests::response_vectors(),
            bind::tests::response_vectors(),
            getip::tests::response_vectors(),
            stat::tests::response_vectors(),
            isonline::tests::response_vectors(),
            multicast::tests::response_vectors(),
            broadcast::tests::response_vectors(),
            publish::tests::response_vectors(),
            subscribe::tests::response_vectors(),
            state::tests::response_vectors(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// Whether a size-consistent frame of `len` bytes cut from vector `v` must decode.
    fn request_len_ok(v: &ReqVec, len: usize) -> bool {
        match v.req {
            // The optional uid must be absent or whole.
            Request::Trigger { .. } => len == 23 || len >= 31,
            _ => len >= v.min,
        }
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
    fn every_command_has_vectors() {
        let reqs: Vec<Cmd> = request_vectors().iter().map(|v| v.req.cmd()).collect();
        for cmd in Cmd::ALL {
            assert!(reqs.contains(&cmd), "no request vector for {cmd}");
        }
        assert_eq!(request_vectors().len(), 23);
        assert_eq!(response_vectors().len(), 17);
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
    fn response_vectors_encode_and_decode() {
        for v in response_vectors() {
            let want = hex(v.hex);
            assert_eq!(encode(v.put), want, "{}", v.hex);
            assert_eq!(decode_response(v.cmd, &want), Ok(v.res), "{}", v.hex);
        }
    }

    #[test]
    fn code_only_responses_for_every_command_that_uses_them() {
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

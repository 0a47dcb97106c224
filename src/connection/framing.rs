//! How client packets sit on the wire, per transport: [`TcpFraming`] (size-prefixed packets on a
//! byte stream) and [`WsFraming`] (one packet per RFC 6455 binary message), behind [`Framing`].
//!
//! A framing is sans-IO state: it splits input into client messages and turns outbound packets
//! into wire bytes. The connection machine (`machine`) owns everything else — liveness, queues,
//! close rules — so both transports share one machine and one driver.

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use super::ws_frame::{self, Decoded, Decoder, Event};
use super::CloseReason;
use crate::packet::{ByteOrder, FrameDecoder, FrameKind, PacketConfig};

/// What one complete client message is: a packet of some kind, or a message that carries no
/// packet (it still counts as liveness).
pub type Message = Result<FrameKind, crate::packet::FrameError>;

/// Transport-specific framing of client packets.
pub trait Framing {
    /// Packets go on the wire unchanged: a lone queued packet can be written without a copy.
    const RAW: bool;

    /// Frames `data` (the connection's undecoded tail followed by fresh bytes; it may be changed
    /// in place, e.g. unmasked). Every complete client message is handed to `on` with its bytes
    /// (size field included). Returns the bytes consumed, and `Err` when the connection must end
    /// at once without another byte written.
    fn decode(
        &mut self,
        data: &mut [u8],
        on: &mut dyn FnMut(Message, &[u8]),
    ) -> (usize, Result<(), CloseReason>);

    /// Control bytes (pongs, Close frames) to be written before any further packet; taken.
    fn take_control(&mut self, out: &mut BytesMut);

    /// Control bytes waiting to be written.
    fn control_len(&self) -> usize;

    /// A close handshake is under way: once the control bytes are out, the connection ends with
    /// this reason; nothing else is read or written meanwhile.
    fn closing(&self) -> Option<&CloseReason>;

    /// Appends one packet (or heartbeat) as it goes on the wire.
    fn encode(&self, packet: &[u8], out: &mut BytesMut);

    /// The wire length of a packet of `len` bytes.
    fn encoded_len(&self, len: usize) -> usize;

    /// A graceful close has flushed every packet. `true` = a goodbye (Close frame) was queued as
    /// control bytes and the close completes once it is written; `false` = close the socket now.
    fn start_graceful_close(&mut self) -> bool;

    /// Bytes to attempt once, without waiting, before a forced close (`None` = just close).
    fn farewell(&mut self) -> Option<Vec<u8>>;

    /// The framing's state as plain data, for a hand-off to another process.
    fn export(&self) -> FramingRecord;
}

/// The framing's share of a connection record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FramingRecord {
    /// Size-prefixed packets: no state beyond the connection's undecoded input.
    Tcp,
    Ws(WsFramingRecord),
}

/// A WebSocket framing's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WsFramingRecord {
    pub decoder: ws_frame::DecoderRecord,
    /// Control frames encoded and not yet written.
    pub control: Vec<u8>,
    /// The close handshake in progress, if any.
    pub closing: Option<CloseReason>,
}

/// due's TCP packets: a size field, then that many bytes.
pub struct TcpFraming {
    decoder: FrameDecoder,
    packet: PacketConfig,
}

impl TcpFraming {
    pub fn new(packet: PacketConfig, inbound_cap: u32) -> Self {
        TcpFraming {
            decoder: FrameDecoder::new(&packet, inbound_cap),
            packet,
        }
    }
}

impl Framing for TcpFraming {
    const RAW: bool = true;

    fn decode(
        &mut self,
        data: &mut [u8],
        on: &mut dyn FnMut(Message, &[u8]),
    ) -> (usize, Result<(), CloseReason>) {
        let mut off = 0;
        loop {
            match self.decoder.next_frame_len(&data[off..]) {
                Ok(Some(len)) => {
                    let frame = &data[off..off + len];
                    off += len;
                    on(Ok(self.packet.classify(frame)), frame);
                }
                Ok(None) => return (off, Ok(())),
                Err(e) => return (off, Err(CloseReason::Protocol(e.to_string()))),
            }
        }
    }

    fn take_control(&mut self, _out: &mut BytesMut) {}

    fn control_len(&self) -> usize {
        0
    }

    fn closing(&self) -> Option<&CloseReason> {
        None
    }

    fn encode(&self, packet: &[u8], out: &mut BytesMut) {
        out.extend_from_slice(packet);
    }

    fn encoded_len(&self, len: usize) -> usize {
        len
    }

    fn start_graceful_close(&mut self) -> bool {
        false
    }

    fn farewell(&mut self) -> Option<Vec<u8>> {
        None
    }

    fn export(&self) -> FramingRecord {
        FramingRecord::Tcp
    }
}

/// The heartbeat due-client-ts always sends, whatever the configured byte order.
const TS_HEARTBEAT: [u8; 5] = [0, 0, 0, 1, 0x80];

/// WS-only settings of a framing (from `[network.ws.server]` and `[gatehouse]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WsOptions {
    /// Send Close(1000) before a server-initiated close (due sends none).
    pub close_frame: bool,
    /// Little-endian deployments: accept due-client-ts's fixed `00 00 00 01 80` heartbeat.
    pub le_ts_heartbeat: bool,
}

/// due's WebSocket packets: exactly one packet per binary message; gorilla's control frames.
pub struct WsFraming {
    decoder: Decoder,
    packet: PacketConfig,
    control: Vec<u8>,
    closing: Option<CloseReason>,
    close_frame: bool,
    le_ts_heartbeat: bool,
}

impl WsFraming {
    pub fn new(packet: PacketConfig, inbound_cap: u32, options: WsOptions) -> Self {
        WsFraming {
            decoder: Decoder::new((inbound_cap as usize).saturating_add(4)),
            packet,
            control: Vec::new(),
            closing: None,
            close_frame: options.close_frame,
            le_ts_heartbeat: options.le_ts_heartbeat && packet.byte_order == ByteOrder::Little,
        }
    }

    /// Rebuilds the framing a record describes.
    pub fn import(
        packet: PacketConfig,
        inbound_cap: u32,
        options: WsOptions,
        record: WsFramingRecord,
    ) -> Self {
        let mut f = WsFraming::new(packet, inbound_cap, options);
        f.decoder = Decoder::import(f.decoder.max_message(), record.decoder);
        f.control = record.control;
        f.closing = record.closing;
        f
    }

    /// due's rule for a binary message: exactly one packet, size field included.
    fn classify(&self, msg: &[u8]) -> Result<FrameKind, crate::packet::FrameError> {
        match self.packet.check_message(msg) {
            Err(_) if self.le_ts_heartbeat && msg == TS_HEARTBEAT => Ok(FrameKind::Heartbeat),
            r => r,
        }
    }
}

impl Framing for WsFraming {
    const RAW: bool = false;

    fn decode(
        &mut self,
        data: &mut [u8],
        on: &mut dyn FnMut(Message, &[u8]),
    ) -> (usize, Result<(), CloseReason>) {
        let mut off = 0;
        while self.closing.is_none() {
            match self.decoder.decode(&mut data[off..]) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Consumed { used, event }) => {
                    off += used;
                    let Some(event) = event else { continue };
                    match event {
                        Event::Binary(msg) => on(self.classify(&msg), &msg),
                        // Answered, but not liveness.
                        Event::Ping(p) => ws_frame::encode_pong(p, &mut self.control),
                        Event::Close(code) => {
                            ws_frame::encode_close_reply(code, &mut self.control);
                            self.closing = Some(CloseReason::PeerClosed);
                        }
                    }
                }
                Err(e) => {
                    e.encode_close(&mut self.control);
                    self.closing = Some(CloseReason::Protocol(e.to_string()));
                }
            }
        }
        (off, Ok(()))
    }

    fn take_control(&mut self, out: &mut BytesMut) {
        out.put_slice(&self.control);
        self.control = Vec::new();
    }

    fn control_len(&self) -> usize {
        self.control.len()
    }

    fn closing(&self) -> Option<&CloseReason> {
        self.closing.as_ref()
    }

    fn encode(&self, packet: &[u8], out: &mut BytesMut) {
        ws_frame::encode_binary(packet, out);
    }

    fn encoded_len(&self, len: usize) -> usize {
        ws_frame::frame_len(len)
    }

    fn start_graceful_close(&mut self) -> bool {
        if !self.close_frame {
            return false;
        }
        ws_frame::encode_close(Some(ws_frame::CLOSE_NORMAL), "", &mut self.control);
        self.closing = Some(CloseReason::Graceful);
        true
    }

    fn farewell(&mut self) -> Option<Vec<u8>> {
        if !self.close_frame || self.closing.is_some() {
            return None;
        }
        let mut bye = std::mem::take(&mut self.control);
        ws_frame::encode_close(Some(ws_frame::CLOSE_NORMAL), "", &mut bye);
        Some(bye)
    }

    fn export(&self) -> FramingRecord {
        FramingRecord::Ws(WsFramingRecord {
            decoder: self.decoder.export(),
            control: self.control.clone(),
            closing: self.closing.clone(),
        })
    }
}

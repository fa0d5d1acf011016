//! Frames: the units packed, one after another, into a datagram.
//!
//! See `PROTOCOL.md` for the byte tables. Every frame starts with a one-byte type.

use crate::bytes::{put_u16, put_u32, put_u64, put_u8, Reader};
use crate::{DecodeError, EncodeError};

/// Frame type byte of [`DataFrame`].
pub const FRAME_DATA: u8 = 0x01;
/// Frame type byte of [`AckFrame`].
pub const FRAME_ACK: u8 = 0x02;
/// Frame type byte of [`UnreliableFrame`].
pub const FRAME_UNRELIABLE: u8 = 0x03;
/// Frame type byte of [`Frame::Ping`].
pub const FRAME_PING: u8 = 0x04;
/// Frame type byte of [`Frame::Pong`].
pub const FRAME_PONG: u8 = 0x05;
/// Frame type byte of [`CloseFrame`].
pub const FRAME_CLOSE: u8 = 0x06;
/// Frame type byte of [`Frame::Padding`].
pub const FRAME_PADDING: u8 = 0x07;

/// [`DataFrame`] flag: the message is delivered in order within its channel; `order` is present.
const DATA_ORDERED: u8 = 0b0000_0001;
/// [`DataFrame`] flag: the message is split; `fragment` is present.
const DATA_FRAGMENTED: u8 = 0b0000_0010;
const DATA_LAZY_ACK: u8 = 0b0000_0100;
const DATA_KNOWN_FLAGS: u8 = DATA_ORDERED | DATA_FRAGMENTED | DATA_LAZY_ACK;

/// The most selective-ack ranges one [`AckFrame`] may carry.
pub const MAX_ACK_RANGES: usize = 64;

/// Bytes of a [`DataFrame`] before its payload, without the optional fields.
const DATA_FIXED_LEN: usize = 1 + 1 + 1 + 4 + 4 + 2;

/// One frame, borrowed from the datagram it was decoded from (or from the caller, to encode).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame<'a> {
    /// A reliable piece of a message.
    Data(DataFrame<'a>),
    /// Acknowledgement of reliable sequence numbers.
    Ack(AckFrame<'a>),
    /// An unreliable message: delivered at most once, maybe not at all.
    Unreliable(UnreliableFrame<'a>),
    /// A liveness probe; the receiver answers with [`Frame::Pong`] carrying the same token.
    Ping {
        /// Opaque value echoed by the pong.
        token: u64,
    },
    /// The answer to a [`Frame::Ping`].
    Pong {
        /// The token of the ping being answered.
        token: u64,
    },
    /// The sender is closing its session with the receiver.
    Close(CloseFrame),
    /// Filler to the end of the datagram's frames: the type byte and `len - 1` zero bytes.
    /// Always the last frame. A path-MTU probe is a ping padded to the size being probed.
    Padding {
        /// Bytes of the frame, its type byte included (at least 1).
        len: usize,
    },
}

/// Where a fragment sits in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// 0-based position of this fragment.
    pub index: u32,
    /// Number of fragments in the message; at least 2 (a whole message is not fragmented).
    pub count: u32,
}

/// A reliable piece of a message (type `0x01`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFrame<'a> {
    /// Channel of the message. Ordered messages are ordered per channel.
    pub channel: u8,
    /// Reliable sequence number of this frame (per peer session, wrapping).
    pub seq: u32,
    /// Message id, shared by every fragment of one message (per peer session, wrapping).
    pub message: u32,
    /// Position of the message in its channel when ordered; `None` for unordered delivery.
    pub order: Option<u32>,
    /// Present when the message is split into several frames.
    pub fragment: Option<Fragment>,
    /// The sender waits on nobody's behalf for this frame's acknowledgement (an answer to a
    /// request: the requester's next message can carry it), so the receiver may hold the
    /// acknowledgement a little to send it with something else.
    pub lazy_ack: bool,
    /// The bytes of this piece.
    pub payload: &'a [u8],
}

/// A half-open range `[start, end)` of sequence numbers, in wrapping arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqRange {
    /// First sequence number in the range.
    pub start: u32,
    /// One past the last sequence number in the range.
    pub end: u32,
}

/// Selective-ack ranges: written from a slice, read back lazily from the datagram's bytes.
#[derive(Debug, Clone, Copy)]
pub enum AckRanges<'a> {
    /// Ranges given by the encoder.
    List(&'a [SeqRange]),
    /// Ranges as they are on the wire (`8 * count` bytes, already length-checked).
    Wire(&'a [u8]),
}

impl<'a> AckRanges<'a> {
    /// Number of ranges.
    pub fn len(&self) -> usize {
        match self {
            AckRanges::List(l) => l.len(),
            AckRanges::Wire(w) => w.len() / 8,
        }
    }

    /// Whether there are no ranges.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ranges, in the order they were written.
    pub fn iter(&self) -> impl Iterator<Item = SeqRange> + 'a {
        let (list, wire): (&'a [SeqRange], &'a [u8]) = match *self {
            AckRanges::List(l) => (l, &[]),
            AckRanges::Wire(w) => (&[], w),
        };
        list.iter()
            .copied()
            .chain(wire.chunks_exact(8).map(|c| SeqRange {
                start: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                end: u32::from_le_bytes([c[4], c[5], c[6], c[7]]),
            }))
    }
}

impl PartialEq for AckRanges<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for AckRanges<'_> {}

/// Acknowledgement (type `0x02`): cumulative point plus selective ranges above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckFrame<'a> {
    /// Every sequence number before this one (in wrapping order) has been received.
    pub cumulative: u32,
    /// How long the acknowledger held this ack before sending it, in microseconds (saturating).
    /// The sender subtracts it from its RTT sample.
    pub delay_micros: u32,
    /// Ranges received beyond `cumulative`, at most [`MAX_ACK_RANGES`].
    pub ranges: AckRanges<'a>,
}

/// An unreliable message (type `0x03`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreliableFrame<'a> {
    /// The message bytes.
    pub payload: &'a [u8],
}

/// Session close (type `0x06`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseFrame {
    /// Why the session ends; see the `CLOSE_*` constants. Unknown values are carried as they are.
    pub reason: u8,
}

/// [`CloseFrame::reason`]: orderly shutdown.
pub const CLOSE_NORMAL: u8 = 0;
/// [`CloseFrame::reason`]: the peer broke the protocol.
pub const CLOSE_PROTOCOL_ERROR: u8 = 1;
/// [`CloseFrame::reason`]: the sender has no room for this peer.
pub const CLOSE_NO_RESOURCES: u8 = 2;
/// [`CloseFrame::reason`]: the datagram answered named a session the sender does not have
/// (it restarted, or dropped its state for the receiver): start a new session.
pub const CLOSE_UNKNOWN_SESSION: u8 = 3;

fn payload_len(payload: &[u8]) -> Result<u16, EncodeError> {
    u16::try_from(payload.len()).map_err(|_| EncodeError::TooLarge("payload over 65535 bytes"))
}

impl<'a> Frame<'a> {
    /// Bytes this frame takes on the wire.
    pub fn encoded_len(&self) -> usize {
        match self {
            Frame::Data(d) => {
                DATA_FIXED_LEN
                    + if d.order.is_some() { 4 } else { 0 }
                    + if d.fragment.is_some() { 8 } else { 0 }
                    + d.payload.len()
            }
            Frame::Ack(a) => 1 + 4 + 4 + 1 + 8 * a.ranges.len(),
            Frame::Unreliable(u) => 1 + 2 + u.payload.len(),
            Frame::Ping { .. } | Frame::Pong { .. } => 1 + 8,
            Frame::Close(_) => 1 + 1,
            Frame::Padding { len } => *len,
        }
    }

    /// Checks the limits a frame must respect to be encodable.
    pub fn validate(&self) -> Result<(), EncodeError> {
        match self {
            Frame::Data(d) => {
                payload_len(d.payload)?;
                if let Some(f) = d.fragment {
                    if f.count < 2 || f.index >= f.count {
                        return Err(EncodeError::TooLarge("fragment index/count out of range"));
                    }
                }
            }
            Frame::Ack(a) => {
                if a.ranges.len() > MAX_ACK_RANGES {
                    return Err(EncodeError::TooLarge("too many ack ranges"));
                }
            }
            Frame::Unreliable(u) => {
                payload_len(u.payload)?;
            }
            Frame::Padding { len: 0 } => {
                return Err(EncodeError::TooLarge("padding shorter than its type byte"))
            }
            Frame::Ping { .. } | Frame::Pong { .. } | Frame::Close(_) | Frame::Padding { .. } => {}
        }
        Ok(())
    }

    /// Appends the frame to `out`. Writes exactly [`Frame::encoded_len`] bytes, or nothing
    /// when the frame breaks a limit.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.validate()?;
        match self {
            Frame::Data(d) => {
                d.encode_head(out);
                out.extend_from_slice(d.payload);
            }
            Frame::Ack(a) => {
                put_u8(out, FRAME_ACK);
                put_u32(out, a.cumulative);
                put_u32(out, a.delay_micros);
                put_u8(out, a.ranges.len() as u8);
                for r in a.ranges.iter() {
                    put_u32(out, r.start);
                    put_u32(out, r.end);
                }
            }
            Frame::Unreliable(u) => {
                put_u8(out, FRAME_UNRELIABLE);
                put_u16(out, u.payload.len() as u16);
                out.extend_from_slice(u.payload);
            }
            Frame::Ping { token } => {
                put_u8(out, FRAME_PING);
                put_u64(out, *token);
            }
            Frame::Pong { token } => {
                put_u8(out, FRAME_PONG);
                put_u64(out, *token);
            }
            Frame::Close(c) => {
                put_u8(out, FRAME_CLOSE);
                put_u8(out, c.reason);
            }
            Frame::Padding { len } => {
                put_u8(out, FRAME_PADDING);
                out.resize(out.len() + len - 1, 0);
            }
        }
        Ok(())
    }

    /// Decodes one frame from the start of `bytes`, returning it and the bytes it used.
    ///
    /// Never allocates; every length and count is checked against the input.
    pub fn decode(bytes: &'a [u8]) -> Result<(Frame<'a>, usize), DecodeError> {
        let mut r = Reader::new(bytes);
        let frame = Self::read(&mut r)?;
        Ok((frame, r.position()))
    }

    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Frame<'a>, DecodeError> {
        let ty = r.u8()?;
        Ok(match ty {
            FRAME_DATA => {
                let flags = r.u8()?;
                if flags & !DATA_KNOWN_FLAGS != 0 {
                    return Err(DecodeError::UnknownFrameFlags(flags));
                }
                let channel = r.u8()?;
                let seq = r.u32()?;
                let message = r.u32()?;
                let order = if flags & DATA_ORDERED != 0 {
                    Some(r.u32()?)
                } else {
                    None
                };
                let fragment = if flags & DATA_FRAGMENTED != 0 {
                    let index = r.u32()?;
                    let count = r.u32()?;
                    if count < 2 || index >= count {
                        return Err(DecodeError::Invalid("fragment index/count"));
                    }
                    Some(Fragment { index, count })
                } else {
                    None
                };
                let len = r.u16()? as usize;
                let payload = r.take(len)?;
                Frame::Data(DataFrame {
                    channel,
                    seq,
                    message,
                    order,
                    fragment,
                    lazy_ack: flags & DATA_LAZY_ACK != 0,
                    payload,
                })
            }
            FRAME_ACK => {
                let cumulative = r.u32()?;
                let delay_micros = r.u32()?;
                let count = r.u8()? as usize;
                if count > MAX_ACK_RANGES {
                    return Err(DecodeError::Invalid("ack range count"));
                }
                let ranges = r.take(count * 8)?;
                Frame::Ack(AckFrame {
                    cumulative,
                    delay_micros,
                    ranges: AckRanges::Wire(ranges),
                })
            }
            FRAME_UNRELIABLE => {
                let len = r.u16()? as usize;
                Frame::Unreliable(UnreliableFrame {
                    payload: r.take(len)?,
                })
            }
            FRAME_PING => Frame::Ping { token: r.u64()? },
            FRAME_PONG => Frame::Pong { token: r.u64()? },
            FRAME_CLOSE => Frame::Close(CloseFrame { reason: r.u8()? }),
            // Runs to the end, in zero bytes (so that a datagram has one encoding).
            FRAME_PADDING => {
                let rest = r.take(r.remaining())?;
                if rest.iter().any(|&b| b != 0) {
                    return Err(DecodeError::Invalid("padding not zero"));
                }
                Frame::Padding {
                    len: 1 + rest.len(),
                }
            }
            other => return Err(DecodeError::UnknownFrame(other)),
        })
    }
}

impl DataFrame<'_> {
    /// Bytes a data frame with these optional fields takes before its payload.
    pub const fn overhead(ordered: bool, fragmented: bool) -> usize {
        DATA_FIXED_LEN + if ordered { 4 } else { 0 } + if fragmented { 8 } else { 0 }
    }

    /// Appends everything of the frame but its payload (which follows it on the wire). The
    /// caller has validated the frame.
    pub(crate) fn encode_head(&self, out: &mut Vec<u8>) {
        let mut flags = 0;
        if self.order.is_some() {
            flags |= DATA_ORDERED;
        }
        if self.fragment.is_some() {
            flags |= DATA_FRAGMENTED;
        }
        if self.lazy_ack {
            flags |= DATA_LAZY_ACK;
        }
        put_u8(out, FRAME_DATA);
        put_u8(out, flags);
        put_u8(out, self.channel);
        put_u32(out, self.seq);
        put_u32(out, self.message);
        if let Some(order) = self.order {
            put_u32(out, order);
        }
        if let Some(f) = self.fragment {
            put_u32(out, f.index);
            put_u32(out, f.count);
        }
        put_u16(out, self.payload.len() as u16);
    }
}

impl UnreliableFrame<'_> {
    /// Bytes an unreliable frame takes before its payload.
    pub const OVERHEAD: usize = 3;
}

//! The byte format of every datagram mesh-link sends, and nothing else.
//!
//! This crate does **no I/O**: no sockets, no clocks, no randomness. It turns frames into bytes
//! and bytes back into frames, and it checks untrusted input on the way in. The layout is
//! documented byte by byte in `PROTOCOL.md` beside this crate, and pinned by golden vectors
//! in `tests/vectors/`.
//!
//! A datagram is a 24-byte header (magic `"ML"`, version, flags, the sender's and receiver's
//! session ids, a CRC-32) followed by one or more [`Frame`]s. Reliable data frames carry the
//! pieces of a message; a reassembled message starts with an [`Envelope`]; user payloads are
//! encoded by the `codec` module (feature `codec`, on by default: serde through bincode 2).
//!
//! ```
//! use mesh_wire::{Datagram, DatagramWriter, DataFrame, Frame, Header};
//!
//! let mut buf = Vec::new(); // caller-owned, reused from datagram to datagram
//! let mut w = DatagramWriter::new(&mut buf, Header::new(0xA1, 0xB2), 1200);
//! w.push(&Frame::Data(DataFrame {
//!     lazy_ack: false,
//!     channel: 0,
//!     seq: 1,
//!     message: 1,
//!     order: None,
//!     fragment: None,
//!     payload: b"hello",
//! }))
//! .unwrap();
//! w.push(&Frame::Ping { token: 9 }).unwrap();
//! let bytes = w.finish().to_vec();
//!
//! let d = Datagram::decode(&bytes).unwrap(); // checks magic, version, CRC and every frame
//! let frames: Vec<Frame<'_>> = d.frames().collect();
//! assert!(matches!(&frames[0], Frame::Data(f) if f.payload == b"hello"));
//!
//! // A flipped bit is caught by the checksum.
//! let mut bad = bytes.clone();
//! bad[30] ^= 0x10;
//! assert!(Datagram::decode(&bad).is_err());
//! ```
//!
//! # Guarantees on untrusted input
//! [`Datagram::decode`] (and [`Datagram::open`] with the frames it reads), [`Frame::decode`],
//! [`Envelope::decode`] and [`ErrorBody::decode`] never panic, never allocate, check every
//! length and count against the input, and return a typed [`DecodeError`]. The `fuzz/`
//! targets hold them to that.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod bytes;
#[cfg(feature = "codec")]
pub mod codec;
#[cfg(feature = "node-compat")]
pub mod compat;
mod datagram;
mod envelope;
mod error;
mod frame;
#[doc(hidden)]
pub mod fuzzing;

pub use auth::{ClusterKey, AUTH_TRAILER_LEN, TAG_LEN};
pub use datagram::{
    reseal, Datagram, DatagramWriter, FrameReader, Frames, Header, Opened, FLAG_AUTH,
    FLAG_NO_CHECKSUM, HEADER_LEN, MAGIC, MAX_DATAGRAM_LEN, VERSION,
};
pub use envelope::{
    fingerprint, is_system_handler, Envelope, EnvelopeKind, ErrorBody, ErrorCode, SYSTEM_HANDLERS,
    TYPED,
};
#[cfg(feature = "codec")]
pub use error::CodecError;
pub use error::{DecodeError, EncodeError};
pub use frame::{
    AckFrame, AckRanges, CloseFrame, DataFrame, Fragment, Frame, SeqRange, UnreliableFrame,
    CLOSE_NORMAL, CLOSE_NO_RESOURCES, CLOSE_PROTOCOL_ERROR, CLOSE_UNKNOWN_SESSION, FRAME_ACK,
    FRAME_CLOSE, FRAME_DATA, FRAME_PADDING, FRAME_PING, FRAME_PONG, FRAME_UNRELIABLE,
    MAX_ACK_RANGES,
};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

//! Errors of the wire layer.

use thiserror::Error;

/// Why a datagram, a frame or an envelope was rejected.
///
/// Every variant is permanent for the bytes that produced it: decoding the same bytes again
/// gives the same error. Rejecting costs little; nothing is allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before a field that must be there.
    #[error("truncated: needed {needed} more bytes at offset {offset}")]
    Truncated {
        /// Where the missing field starts.
        offset: usize,
        /// How many bytes were missing.
        needed: usize,
    },
    /// The datagram does not start with the mesh magic bytes.
    #[error("not a mesh datagram (bad magic)")]
    BadMagic,
    /// The protocol version is not one this build speaks.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// A flag bit that this version does not define is set.
    #[error("unknown header flags {0:#04x}")]
    UnknownFlags(u8),
    /// The CRC-32 over the datagram does not match the one it carries.
    #[error("checksum mismatch")]
    Checksum,
    /// A datagram without a checksum ([`FLAG_NO_CHECKSUM`](crate::FLAG_NO_CHECKSUM)) that did
    /// not come over the loopback interface.
    #[error("datagram without a checksum off the loopback interface")]
    Unchecked,
    /// A frame type byte that this version does not define.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrame(u8),
    /// A frame's own flag bits hold a value this version does not define.
    #[error("unknown frame flags {0:#04x}")]
    UnknownFrameFlags(u8),
    /// A datagram with a header but no frame.
    #[error("datagram carries no frame")]
    Empty,
    /// A field holds a value outside its documented range.
    #[error("invalid field: {0}")]
    Invalid(&'static str),
    /// An envelope kind byte that this version does not define.
    #[error("unknown envelope kind {0}")]
    UnknownKind(u8),
    /// The datagram's authentication does not match the receiver's: a keyed datagram to a
    /// receiver without a key, or an unkeyed one to a receiver with one.
    #[error("authentication expected and not given, or given and not expected")]
    Unauthenticated,
    /// The authentication tag is not valid under the receiver's cluster key.
    #[error("authentication tag mismatch")]
    BadTag,
}

/// Why a frame could not be added to a datagram being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The frame does not fit in the room left under the datagram's size limit.
    #[error("frame of {needed} bytes does not fit ({available} bytes left)")]
    Full {
        /// Bytes the frame needs.
        needed: usize,
        /// Bytes left under the limit.
        available: usize,
    },
    /// A field is too large for its wire width (a payload over 65 535 bytes, too many ranges).
    #[error("field too large: {0}")]
    TooLarge(&'static str),
}

/// Errors of the payload codec ([`crate::codec`]).
#[cfg(feature = "codec")]
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be encoded (for example, a map with non-string keys where the
    /// format cannot express it, or a `Serialize` impl that failed).
    #[error("payload encode failed: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The bytes are not a valid encoding of the expected type.
    #[error("payload decode failed: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The bytes decoded to a value but did not use all of the input.
    #[error("payload has {0} trailing bytes")]
    TrailingBytes(usize),
}

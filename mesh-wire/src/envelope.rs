//! The message envelope: what a reassembled message (reliable or not) carries.
//!
//! ```text
//! kind u8 | handler u16 | request_id u64 (absent for one-way)
//!         | fingerprint u64 (typed one-way and typed requests only) | payload ...
//! ```
//!
//! The kind byte's top bit ([`TYPED`]) says a fingerprint follows: the sender's claim of which
//! message type (name, schema version, answer type) the payload is, so that a receiver can
//! refuse a payload meant for another type instead of decoding it into wrong values.

use std::ops::RangeInclusive;

use crate::bytes::{put_u16, put_u64, put_u8, Reader};
use crate::DecodeError;

/// Handler ids reserved for mesh-link's own handlers (ping, echo, shared objects, ...).
/// Applications use `0..=65000`, as the original documented.
pub const SYSTEM_HANDLERS: RangeInclusive<u16> = 65_001..=65_535;

/// Whether `id` is in the [`SYSTEM_HANDLERS`] range.
pub const fn is_system_handler(id: u16) -> bool {
    id >= *SYSTEM_HANDLERS.start()
}

/// The fingerprint of a message type: FNV-1a (64-bit) over `name`, a zero byte, `version` as
/// four little-endian bytes, a zero byte, and `answer` (the answer type's name for a request,
/// empty for a one-way message). A `const fn`: a typed message's fingerprint is computed at
/// compile time. See `PROTOCOL.md` for test vectors.
///
/// ```
/// use mesh_wire::fingerprint;
/// assert_eq!(fingerprint("", 0, ""), 0xd7e4_fcfa_299d_713d);
/// assert_eq!(fingerprint("game.GetScore", 1, "Score"), 0x2fe0_d1ad_241a_3df0);
/// assert_ne!(fingerprint("game.GetScore", 1, "Score"), fingerprint("game.GetScore", 2, "Score"));
/// assert_ne!(fingerprint("ab", 1, "c"), fingerprint("a", 1, "bc"), "the parts are delimited");
/// ```
pub const fn fingerprint(name: &str, version: u32, answer: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    const fn mix(mut h: u64, bytes: &[u8]) -> u64 {
        let mut i = 0;
        while i < bytes.len() {
            h ^= bytes[i] as u64;
            h = h.wrapping_mul(PRIME);
            i += 1;
        }
        h
    }
    let mut h = mix(OFFSET, name.as_bytes());
    h = mix(h, &[0]);
    h = mix(h, &version.to_le_bytes());
    h = mix(h, &[0]);
    mix(h, answer.as_bytes())
}

/// Set on the kind byte of a one-way message or request that carries a type fingerprint.
pub const TYPED: u8 = 0x80;

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EnvelopeKind {
    /// A message that wants no answer.
    OneWay,
    /// A request; the handler's answer comes back as a [`EnvelopeKind::Response`] or
    /// [`EnvelopeKind::ErrorResponse`] with the same request id.
    Request,
    /// A successful answer; the payload is the handler's value.
    Response,
    /// A failed answer; the payload is an [`ErrorBody`].
    ErrorResponse,
}

impl EnvelopeKind {
    /// The wire byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            EnvelopeKind::OneWay => 0,
            EnvelopeKind::Request => 1,
            EnvelopeKind::Response => 2,
            EnvelopeKind::ErrorResponse => 3,
        }
    }

    /// Parses the wire byte.
    pub const fn from_byte(b: u8) -> Result<Self, DecodeError> {
        Ok(match b {
            0 => EnvelopeKind::OneWay,
            1 => EnvelopeKind::Request,
            2 => EnvelopeKind::Response,
            3 => EnvelopeKind::ErrorResponse,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }

    /// Whether the envelope carries a request id.
    pub const fn has_request_id(self) -> bool {
        !matches!(self, EnvelopeKind::OneWay)
    }

    /// Whether a message of this kind may carry a type fingerprint (one-way messages and
    /// requests; answers are typed by the request they answer).
    pub const fn may_be_typed(self) -> bool {
        matches!(self, EnvelopeKind::OneWay | EnvelopeKind::Request)
    }
}

/// A decoded (or to-be-encoded) envelope. The payload borrows from the message bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// What the message is.
    pub kind: EnvelopeKind,
    /// The handler it is addressed to (or, for answers, the handler that answered).
    pub handler: u16,
    /// Correlates a request with its answer. Not on the wire for one-way messages, where it
    /// decodes as 0 and is ignored when encoding.
    pub request_id: u64,
    /// The type fingerprint of a typed message (see [`TYPED`]); `None` for an untyped one and
    /// for answers (ignored when encoding those).
    pub fingerprint: Option<u64>,
    /// The payload: user bytes (usually [`crate::codec`]-encoded), or an [`ErrorBody`].
    pub payload: &'a [u8],
}

impl<'a> Envelope<'a> {
    /// Bytes of the envelope before its payload, for a kind, typed or not.
    pub const fn header_len(kind: EnvelopeKind, typed: bool) -> usize {
        let base = if kind.has_request_id() { 11 } else { 3 };
        if typed && kind.may_be_typed() {
            base + 8
        } else {
            base
        }
    }

    /// Bytes this envelope takes on the wire.
    pub fn encoded_len(&self) -> usize {
        Self::header_len(self.kind, self.fingerprint.is_some()) + self.payload.len()
    }

    /// Appends the envelope header to `out`; the payload is written by the caller (so a codec
    /// can serialise straight into the same buffer). A fingerprint is written only for a kind
    /// that may carry one.
    pub fn encode_header(
        kind: EnvelopeKind,
        handler: u16,
        request_id: u64,
        fingerprint: Option<u64>,
        out: &mut Vec<u8>,
    ) {
        let fingerprint = fingerprint.filter(|_| kind.may_be_typed());
        let typed = if fingerprint.is_some() { TYPED } else { 0 };
        put_u8(out, kind.to_byte() | typed);
        put_u16(out, handler);
        if kind.has_request_id() {
            put_u64(out, request_id);
        }
        if let Some(f) = fingerprint {
            put_u64(out, f);
        }
    }

    /// Appends the whole envelope to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        Self::encode_header(
            self.kind,
            self.handler,
            self.request_id,
            self.fingerprint,
            out,
        );
        out.extend_from_slice(self.payload);
    }

    /// Decodes an envelope; the payload is the rest of `bytes`. A typed answer is refused
    /// (`Invalid`): answers carry no fingerprint.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let b = r.u8()?;
        let kind = EnvelopeKind::from_byte(b & !TYPED)?;
        let typed = b & TYPED != 0;
        if typed && !kind.may_be_typed() {
            return Err(DecodeError::Invalid("typed answer"));
        }
        let handler = r.u16()?;
        let request_id = if kind.has_request_id() { r.u64()? } else { 0 };
        let fingerprint = if typed { Some(r.u64()?) } else { None };
        Ok(Self {
            kind,
            handler,
            request_id,
            fingerprint,
            payload: r.rest(),
        })
    }
}

/// Why a request failed, as carried by an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    /// The receiver has no handler for the id.
    pub const NO_HANDLER: ErrorCode = ErrorCode(1);
    /// The handler returned an error or panicked.
    pub const HANDLER_FAILED: ErrorCode = ErrorCode(2);
    /// The request payload could not be decoded as the handler's type.
    pub const BAD_REQUEST: ErrorCode = ErrorCode(3);
    /// The receiver refused the work: a queue or concurrency cap was full.
    pub const OVERLOADED: ErrorCode = ErrorCode(4);
    /// The receiver is shutting down.
    pub const SHUTTING_DOWN: ErrorCode = ErrorCode(5);
    /// The message's type fingerprint is not one the handler serves (or one side is typed and
    /// the other is not); the message names what the handler serves.
    pub const TYPE_MISMATCH: ErrorCode = ErrorCode(6);
}

/// Payload of an [`EnvelopeKind::ErrorResponse`]: `code u16 | UTF-8 message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorBody<'a> {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable text (never a stack trace).
    pub message: &'a str,
}

impl<'a> ErrorBody<'a> {
    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u16(out, self.code.0);
        out.extend_from_slice(self.message.as_bytes());
    }

    /// Decodes a body; fails on a short input or a message that is not UTF-8.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let code = ErrorCode(r.u16()?);
        let message =
            std::str::from_utf8(r.rest()).map_err(|_| DecodeError::Invalid("error text"))?;
        Ok(Self { code, message })
    }
}

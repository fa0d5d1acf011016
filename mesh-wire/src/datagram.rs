//! The datagram: a fixed header, a CRC-32, and one or more frames.

use crate::auth::AUTH_TRAILER_LEN;
use crate::bytes::{put_u32, put_u64, put_u8, Reader};
use crate::frame::{DataFrame, Frame};
use crate::{ClusterKey, DecodeError, EncodeError};

/// The two bytes every mesh datagram starts with: `"ML"`.
pub const MAGIC: [u8; 2] = *b"ML";
/// The protocol version this build writes and accepts.
pub const VERSION: u8 = 1;
/// Bytes of the datagram header, checksum included.
pub const HEADER_LEN: usize = 24;
/// Offset of the CRC-32 field in the header.
pub(crate) const CRC_OFFSET: usize = 20;
/// Header flag: the datagram ends with an authentication trailer (packet number and tag; see
/// [`ClusterKey`]).
pub const FLAG_AUTH: u8 = 0x01;
/// Header flag: the checksum field is zero and not checked. For datagrams over the loopback
/// interface only, where the kernel moves them within memory and nothing on the way can
/// corrupt them (Linux skips UDP's and TCP's own checksums there for the same reason);
/// receivers accept it only from a loopback address (see
/// [`Datagram::decode_from`]). The checksum guards against corruption, not forgery: a sender
/// that can reach the receiver can compute one anyway.
pub const FLAG_NO_CHECKSUM: u8 = 0x02;
/// Header flags defined by this version; the other bits are reserved and must be zero.
const KNOWN_FLAGS: u8 = FLAG_AUTH | FLAG_NO_CHECKSUM;
/// Offset of the flags byte in the header.
const FLAGS_OFFSET: usize = 3;
/// The largest datagram that fits in one UDP/IPv4 packet.
pub const MAX_DATAGRAM_LEN: usize = 65_507;

/// The datagram header minus the fixed fields (magic, version, checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Reserved flag bits; zero in version 1.
    pub flags: u8,
    /// Random non-zero id the sender chose for its session with the receiver. A sender that
    /// restarts, or drops and re-creates its state for the receiver, picks a new one, so the
    /// receiver can tell a new session from a stale one.
    pub src_session: u64,
    /// The receiver's id for this session as the sender knows it, or 0 when it does not know
    /// it yet. A receiver drops datagrams addressed to a session other than its current one.
    pub dst_session: u64,
}

impl Header {
    /// A header with no flags.
    pub fn new(src_session: u64, dst_session: u64) -> Self {
        Self {
            flags: 0,
            src_session,
            dst_session,
        }
    }
}

/// A fresh CRC-32 state: copied from one made once (making one looks up the CPU's features
/// each time).
fn hasher() -> crc32fast::Hasher {
    static FRESH: std::sync::LazyLock<crc32fast::Hasher> =
        std::sync::LazyLock::new(crc32fast::Hasher::new);
    FRESH.clone()
}

fn checksum(datagram: &[u8]) -> u32 {
    let mut h = hasher();
    h.update(&datagram[..CRC_OFFSET]);
    h.update(&datagram[HEADER_LEN..]);
    h.finalize()
}

/// Rewrites the CRC-32 of a datagram edited after it was written (frames appended, bytes
/// flipped), so that only what the edit meant to test stands between it and a decoder. For
/// tests, simulators and fuzzers; a datagram shorter than a header is left alone.
///
/// ```
/// use mesh_wire::{Datagram, DatagramWriter, Frame, Header};
/// let mut buf = Vec::new();
/// let mut w = DatagramWriter::new(&mut buf, Header::new(1, 2), 1200);
/// w.push(&Frame::Ping { token: 7 }).unwrap();
/// let mut bytes = w.finish().to_vec();
/// bytes.extend_from_slice(&[4, 0, 0, 0, 0, 0, 0, 0, 9]); // a second ping, appended by hand
/// assert!(Datagram::decode(&bytes).is_err());
/// mesh_wire::reseal(&mut bytes);
/// assert_eq!(Datagram::decode(&bytes).unwrap().frames().count(), 2);
/// ```
pub fn reseal(datagram: &mut [u8]) {
    if datagram.len() < HEADER_LEN {
        return;
    }
    let crc = checksum(datagram);
    datagram[CRC_OFFSET..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

/// Writes frames into a caller-owned buffer, up to a size limit, then seals the datagram.
///
/// ```
/// use mesh_wire::{DatagramWriter, Datagram, Frame, Header};
///
/// let mut buf = Vec::new();
/// let mut w = DatagramWriter::new(&mut buf, Header::new(7, 0), 1200);
/// w.push(&Frame::Ping { token: 42 }).unwrap();
/// let bytes = w.finish();
///
/// let d = Datagram::decode(bytes).unwrap();
/// assert_eq!(d.header().src_session, 7);
/// assert_eq!(d.frames().next(), Some(Frame::Ping { token: 42 }));
/// ```
#[derive(Debug)]
pub struct DatagramWriter<'b> {
    out: &'b mut Vec<u8>,
    /// Where this datagram starts in `out`.
    start: usize,
    max_len: usize,
    frames: usize,
    /// Length of a data frame's payload left out of `out` by
    /// [`push_detached`](Self::push_detached); 0 when none.
    detached: usize,
    /// A padding frame ends the datagram: nothing can follow it.
    padded: bool,
    /// Bytes [`finish_authenticated`](Self::finish_authenticated) will add after the frames.
    trailer: usize,
}

impl<'b> DatagramWriter<'b> {
    /// Clears `out` and writes the header. `max_len` caps the whole datagram (header included)
    /// and is itself capped at [`MAX_DATAGRAM_LEN`].
    pub fn new(out: &'b mut Vec<u8>, header: Header, max_len: usize) -> Self {
        out.clear();
        Self::append(out, header, max_len)
    }

    /// Like [`new`](Self::new), but starts the datagram after what `out` already holds, so a
    /// batch of datagrams can be written back to back into one buffer and handed to the socket
    /// without copying. [`finish`](Self::finish) returns only this datagram.
    pub fn append(out: &'b mut Vec<u8>, header: Header, max_len: usize) -> Self {
        let start = out.len();
        out.extend_from_slice(&MAGIC);
        put_u8(out, VERSION);
        put_u8(out, header.flags);
        put_u64(out, header.src_session);
        put_u64(out, header.dst_session);
        put_u32(out, 0); // checksum, filled in by finish()
        Self {
            out,
            start,
            max_len: max_len.clamp(HEADER_LEN, MAX_DATAGRAM_LEN),
            frames: 0,
            detached: 0,
            padded: false,
            trailer: 0,
        }
    }

    /// Bytes still free under the size limit (none after a detached payload, which must be
    /// last).
    pub fn remaining(&self) -> usize {
        if self.detached > 0 || self.padded {
            return 0;
        }
        self.max_len - (self.out.len() - self.start)
    }

    /// Frames written so far.
    pub fn frame_count(&self) -> usize {
        self.frames
    }

    /// Whether no frame has been written yet.
    pub fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Appends a frame if it fits; otherwise leaves the datagram unchanged.
    pub fn push(&mut self, frame: &Frame<'_>) -> Result<(), EncodeError> {
        let needed = frame.encoded_len();
        if needed > self.remaining() {
            return Err(EncodeError::Full {
                needed,
                available: self.remaining(),
            });
        }
        frame.encode(self.out)?;
        self.frames += 1;
        self.padded = matches!(frame, Frame::Padding { .. });
        Ok(())
    }

    /// Fills the datagram to `len` bytes (header and any authentication trailer included,
    /// capped at its size limit) with a [`Frame::Padding`], after which nothing can be pushed.
    /// Does nothing when the datagram is already that long or longer.
    ///
    /// ```
    /// use mesh_wire::{Datagram, DatagramWriter, Frame, Header};
    /// let mut buf = Vec::new();
    /// let mut w = DatagramWriter::new(&mut buf, Header::new(1, 2), 1500);
    /// w.push(&Frame::Ping { token: 7 }).unwrap();
    /// w.pad_to(1400);
    /// assert_eq!(w.remaining(), 0);
    /// let bytes = w.finish();
    /// assert_eq!(bytes.len(), 1400);
    /// let d = Datagram::decode(bytes).unwrap();
    /// assert_eq!(d.frames().nth(1), Some(Frame::Padding { len: 1400 - 24 - 9 }));
    /// ```
    pub fn pad_to(&mut self, len: usize) {
        let written = self.out.len() - self.start;
        let trailer = self.trailer;
        let target = len.saturating_sub(trailer).min(self.max_len);
        if target > written && self.remaining() > 0 {
            // Fits by construction: `target - written` is at most `remaining()`.
            let _ = self.push(&Frame::Padding {
                len: target - written,
            });
        }
    }

    /// Appends a data frame as the datagram's last frame, but leaves its payload out of the
    /// buffer: the datagram is what [`finish_detached`](Self::finish_detached) returns followed
    /// by the payload, for a scatter-gather send that never copies the payload. Nothing can
    /// be pushed after it. Not for authenticated datagrams, whose trailer follows the frames.
    pub fn push_detached(&mut self, frame: &DataFrame<'_>) -> Result<(), EncodeError> {
        let needed = DataFrame::overhead(frame.order.is_some(), frame.fragment.is_some())
            + frame.payload.len();
        if needed > self.remaining() || frame.payload.is_empty() {
            return Err(EncodeError::Full {
                needed,
                available: self.remaining(),
            });
        }
        let whole = Frame::Data(frame.clone());
        whole.validate()?;
        frame.encode_head(self.out);
        self.detached = frame.payload.len();
        self.frames += 1;
        Ok(())
    }

    /// Length of the payload [`push_detached`](Self::push_detached) left out (0: none).
    pub fn detached_len(&self) -> usize {
        self.detached
    }

    /// Writes the checksum and returns the finished datagram. A datagram with a detached
    /// payload is finished with [`finish_detached`](Self::finish_detached) instead.
    pub fn finish(self) -> &'b [u8] {
        debug_assert_eq!(self.detached, 0, "a detached payload needs finish_detached");
        let datagram = &mut self.out[self.start..];
        if datagram[FLAGS_OFFSET] & FLAG_NO_CHECKSUM == 0 {
            let crc = checksum(datagram);
            datagram[CRC_OFFSET..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        }
        datagram
    }

    /// Writes the checksum of the datagram that ends with `payload` (the one
    /// [`push_detached`](Self::push_detached) left out) and returns what precedes it: send
    /// the two back to back.
    pub fn finish_detached(self, payload: &[u8]) -> &'b [u8] {
        debug_assert_eq!(self.detached, payload.len(), "not the detached payload");
        let head = &mut self.out[self.start..];
        if head[FLAGS_OFFSET] & FLAG_NO_CHECKSUM == 0 {
            let mut h = hasher();
            h.update(&head[..CRC_OFFSET]);
            h.update(&head[HEADER_LEN..]);
            h.update(payload);
            let crc = h.finalize();
            head[CRC_OFFSET..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
        }
        head
    }

    /// Like [`new`](Self::new) for a datagram [`finish_authenticated`](Self::finish_authenticated)
    /// will seal: sets [`FLAG_AUTH`] and keeps room for the trailer under `max_len`.
    pub fn new_authenticated(out: &'b mut Vec<u8>, header: Header, max_len: usize) -> Self {
        out.clear();
        Self::append_authenticated(out, header, max_len)
    }

    /// [`append`](Self::append) for a datagram [`finish_authenticated`](Self::finish_authenticated)
    /// will seal.
    pub fn append_authenticated(out: &'b mut Vec<u8>, mut header: Header, max_len: usize) -> Self {
        header.flags |= FLAG_AUTH;
        let max_len = max_len.clamp(HEADER_LEN + AUTH_TRAILER_LEN, MAX_DATAGRAM_LEN);
        let mut w = Self::append(out, header, max_len);
        w.max_len = max_len - AUTH_TRAILER_LEN;
        w.trailer = AUTH_TRAILER_LEN;
        w
    }

    /// Appends the packet number and the tag under `key`, then the checksum.
    pub fn finish_authenticated(self, packet_number: u64, key: &ClusterKey) -> &'b [u8] {
        put_u64(self.out, packet_number);
        let tag = key.tag_of(&self.out[self.start..]);
        self.out.extend_from_slice(&tag);
        self.finish()
    }
}

/// A datagram whose header, checksum and frames have all been checked.
///
/// Decoding borrows from the input: payloads are slices of it, nothing is copied.
#[derive(Debug, Clone)]
pub struct Datagram<'a> {
    header: Header,
    frames: &'a [u8],
    count: usize,
    packet_number: Option<u64>,
}

impl<'a> Datagram<'a> {
    /// Checks and decodes a datagram. Every frame is validated before this returns, so
    /// [`Datagram::frames`] cannot fail. Consumes the whole input (trailing bytes would be a
    /// malformed frame).
    ///
    /// Cost of a rejection: at most one CRC-32 over the input plus a bounds-checked walk.
    ///
    /// A datagram with [`FLAG_AUTH`] is refused ([`DecodeError::Unauthenticated`]): it can only
    /// be checked with its key, by [`decode_with`](Self::decode_with).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        Self::decode_with(bytes, None)
    }

    /// Checks and decodes a datagram for a receiver with or without a cluster key. With a
    /// key, only datagrams with a valid tag under it pass; without one, only datagrams without
    /// [`FLAG_AUTH`]. The checksum is checked first, so noise costs no hashing. Replay
    /// protection is the receiver's: see [`packet_number`](Self::packet_number).
    pub fn decode_with(bytes: &'a [u8], key: Option<&ClusterKey>) -> Result<Self, DecodeError> {
        Self::decode_from(bytes, key, false)
    }

    /// [`decode_with`](Self::decode_with) for a datagram that came over the loopback interface
    /// when `loopback` is true: one flagged [`FLAG_NO_CHECKSUM`] is then taken without a
    /// checksum. Off loopback such a datagram is refused ([`DecodeError::Unchecked`]).
    pub fn decode_from(
        bytes: &'a [u8],
        key: Option<&ClusterKey>,
        loopback: bool,
    ) -> Result<Self, DecodeError> {
        Self::open(bytes, key, loopback)?.check()
    }

    /// Checks everything [`decode_from`](Self::decode_from) checks but the frames: the header,
    /// the checksum (or its absence, on loopback), the authentication, and that there is at
    /// least one frame. The frames are then read once, by [`Opened::frames`], as the receiver
    /// acts on them, instead of once to check them and again to use them; the first malformed
    /// one ends the reading with its error, after the frames before it were read. A receiver
    /// that must not act on any part of a malformed datagram calls [`Opened::check`] first.
    pub fn open(
        bytes: &'a [u8],
        key: Option<&ClusterKey>,
        loopback: bool,
    ) -> Result<Opened<'a>, DecodeError> {
        let header = Self::decode_header(bytes)?;
        let stored = u32::from_le_bytes([
            bytes[CRC_OFFSET],
            bytes[CRC_OFFSET + 1],
            bytes[CRC_OFFSET + 2],
            bytes[CRC_OFFSET + 3],
        ]);
        if header.flags & FLAG_NO_CHECKSUM != 0 {
            if !loopback {
                return Err(DecodeError::Unchecked);
            }
            // The field is zero in such a datagram: one encoding per datagram.
            if stored != 0 {
                return Err(DecodeError::Checksum);
            }
        } else if checksum(bytes) != stored {
            return Err(DecodeError::Checksum);
        }
        let authenticated = header.flags & FLAG_AUTH != 0;
        let (body, packet_number) = match (key, authenticated) {
            (None, false) => (&bytes[HEADER_LEN..], None),
            (Some(key), true) => {
                if bytes.len() < HEADER_LEN + AUTH_TRAILER_LEN {
                    return Err(DecodeError::Truncated {
                        offset: bytes.len(),
                        needed: HEADER_LEN + AUTH_TRAILER_LEN - bytes.len(),
                    });
                }
                if !key.verify(bytes) {
                    return Err(DecodeError::BadTag);
                }
                let end = bytes.len() - AUTH_TRAILER_LEN;
                let mut pn = [0u8; 8];
                pn.copy_from_slice(&bytes[end..end + 8]);
                (&bytes[HEADER_LEN..end], Some(u64::from_le_bytes(pn)))
            }
            _ => return Err(DecodeError::Unauthenticated),
        };
        if body.is_empty() {
            return Err(DecodeError::Empty);
        }
        Ok(Opened {
            header,
            frames: body,
            packet_number,
        })
    }

    /// Reads only the header fields (magic, version, flags, sessions) without checking the
    /// checksum or the frames: the cheap first look a receiver takes to route or reject.
    pub fn decode_header(bytes: &[u8]) -> Result<Header, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.take(2)? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let flags = r.u8()?;
        if flags & !KNOWN_FLAGS != 0 {
            return Err(DecodeError::UnknownFlags(flags));
        }
        let src_session = r.u64()?;
        let dst_session = r.u64()?;
        r.u32()?;
        Ok(Header {
            flags,
            src_session,
            dst_session,
        })
    }

    /// The packet number of an authenticated datagram (its sender counts up per datagram;
    /// receivers drop numbers they have seen).
    pub fn packet_number(&self) -> Option<u64> {
        self.packet_number
    }

    /// The header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// Number of frames.
    pub fn frame_count(&self) -> usize {
        self.count
    }

    /// Bytes of the header and the frames: the whole datagram, but for an authenticated one
    /// its trailer ([`AUTH_TRAILER_LEN`] bytes), which is not counted.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.frames.len()
    }

    /// Always false: a valid datagram holds at least one frame.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The frames, in order.
    pub fn frames(&self) -> Frames<'a> {
        Frames {
            reader: Reader::new(self.frames),
        }
    }
}

/// Iterator over the frames of a checked [`Datagram`].
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    reader: Reader<'a>,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Frame<'a>;

    fn next(&mut self) -> Option<Frame<'a>> {
        if self.reader.is_empty() {
            return None;
        }
        // Validated in Datagram::decode; an error here cannot happen, and would end iteration.
        Frame::read(&mut self.reader).ok()
    }
}

/// A datagram whose header, checksum and authentication have been checked and whose frames
/// have not been read yet: what [`Datagram::open`] returns. Its frames are read once, as they
/// are used ([`frames`](Self::frames)), or all checked at once ([`check`](Self::check)).
#[derive(Debug, Clone, Copy)]
pub struct Opened<'a> {
    header: Header,
    frames: &'a [u8],
    packet_number: Option<u64>,
}

impl<'a> Opened<'a> {
    /// The header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// The packet number of an authenticated datagram (see [`Datagram::packet_number`]).
    pub fn packet_number(&self) -> Option<u64> {
        self.packet_number
    }

    /// Bytes of the header and the frames, as [`Datagram::len`] counts them (an authenticated
    /// datagram's trailer is not counted).
    pub fn len(&self) -> usize {
        HEADER_LEN + self.frames.len()
    }

    /// Always false: an opened datagram holds at least one byte of frames.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Reads the frames in order, each once: `Ok` for each well-formed frame, then, if one is
    /// malformed, its error, and nothing after it.
    pub fn frames(&self) -> FrameReader<'a> {
        FrameReader {
            reader: Reader::new(self.frames),
        }
    }

    /// Reads every frame: the checked [`Datagram`] if all are well-formed (what
    /// [`Datagram::decode_from`] returns), else the first one's error.
    pub fn check(&self) -> Result<Datagram<'a>, DecodeError> {
        let mut count = 0;
        for frame in self.frames() {
            frame?;
            count += 1;
        }
        Ok(Datagram {
            header: self.header,
            frames: self.frames,
            count,
            packet_number: self.packet_number,
        })
    }
}

/// Iterator over the frames of an [`Opened`] datagram, read as it goes: ends after the first
/// malformed frame's error.
#[derive(Debug, Clone)]
pub struct FrameReader<'a> {
    reader: Reader<'a>,
}

impl<'a> Iterator for FrameReader<'a> {
    type Item = Result<Frame<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.reader.is_empty() {
            return None;
        }
        let frame = Frame::read(&mut self.reader);
        if frame.is_err() {
            // Nothing after a malformed frame can be found: it ends the reading.
            self.reader = Reader::new(&[]);
        }
        Some(frame)
    }
}

impl std::iter::FusedIterator for FrameReader<'_> {}

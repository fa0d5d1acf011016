//! The wire of the original Node.js mesh-link 0.13.6, for a node that must talk to one
//! (feature `node-compat`). Byte for byte what the original sends (its golden vectors are this
//! module's tests), with none of its failure modes on the way in: every decoder checks lengths
//! and returns a typed [`CompatError`], and [`Reassembly`] keeps partial messages under byte
//! and count caps, keyed by sender.
//!
//! The layers, outermost first:
//! - a [`Datagram`]: `0x00` unreliable (`usend`), `0x01` reliable (a 16-byte reliable id and a
//!   [`Chunk`]), `0x02` acknowledgement (a fresh id and the acknowledged one);
//! - a [`Chunk`]: a 16-byte message id, the whole packet's length (u32, big-endian), the
//!   chunk's index (u16), a slice of at most the split size (1300 bytes by default);
//! - a [`Packet`], once its chunks are reassembled: request (`0x0a`) or response (`0x14`), a
//!   16-byte correlation id (zero: no answer wanted), the handler id, a payload;
//! - the payload, [`pack`]ed: nothing for a falsy value, raw bytes for a buffer, else JSON with
//!   buffers and errors tagged (`{"_dt":254,"_d":base64}`, `{"_dt":253,"_d":message}`). A
//!   request's payload is an [`Envelope`]: the user's data, the handler id and the rest of its
//!   relay list. An unreliable message is a [`Usend`] JSON object.
//!
//! ```
//! use mesh_wire::compat::{Chunk, Datagram, Envelope, Packet, PacketKind, Reassembly};
//!
//! // A request as the original sends it: envelope, packet, one chunk, a reliable datagram.
//! let envelope = Envelope::new(serde_json::json!({"message": "hello"}), 1);
//! let payload = serde_json::to_vec(&envelope).unwrap();
//! let packet = Packet { kind: PacketKind::Request, rid: [0xab; 16], handler: 1, payload: &payload };
//! let chunks = mesh_wire::compat::split([0x11; 16], &packet.encode(), 1300).unwrap();
//! let datagram = Datagram::Send { id: [0x22; 16], chunk: &chunks[0] }.encode();
//!
//! // And back, bounded.
//! let Ok(Datagram::Send { chunk, .. }) = Datagram::decode(&datagram) else { panic!() };
//! let mut parts = Reassembly::new(Default::default());
//! let whole = parts.push("10.0.0.1:5600", Chunk::decode(chunk).unwrap(), std::time::Instant::now())
//!     .unwrap()
//!     .expect("one chunk: complete");
//! let p = Packet::decode(&whole).unwrap();
//! assert_eq!((p.kind, p.handler), (PacketKind::Request, 1));
//! assert_eq!(serde_json::from_slice::<Envelope>(p.payload).unwrap(), envelope);
//! ```

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Instant;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The original's 16-byte ids: reliable ids, message ids, correlation ids.
pub type Id = [u8; 16];

/// The correlation id of a request that wants no answer.
pub const NO_RESPONSE: Id = [0; 16];

/// The raw liveness probe every original node answers with [`RAW_PONG`].
pub const RAW_PING: &[u8] = b"ping";
/// The answer to [`RAW_PING`].
pub const RAW_PONG: &[u8] = b"PONG\n";

/// The original's default split size: the most bytes of a packet in one chunk.
pub const SPLIT_SIZE: usize = 1300;

/// The header of a chunk: message id, total length, index.
pub const CHUNK_HEADER: usize = 22;

/// The header of a packet: kind, correlation id, handler id.
pub const PACKET_HEADER: usize = 19;

/// Why bytes in the original's format were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CompatError {
    /// Fewer bytes than the layout needs.
    #[error("{what}: {len} bytes, at least {need} needed")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes there were.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A datagram flag or packet kind the original does not send.
    #[error("unknown {what} {value:#04x}")]
    UnknownKind {
        /// Datagram flag or packet kind.
        what: &'static str,
        /// The byte.
        value: u8,
    },
    /// An acknowledgement of another length than 33 bytes.
    #[error("an acknowledgement is 33 bytes, not {0}")]
    BadAck(usize),
    /// A message larger than the receiver accepts.
    #[error("a message of {len} bytes; at most {max} accepted")]
    TooLarge {
        /// Declared length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A chunk that contradicts the others of its message (another total, a slot already
    /// different, more bytes than declared) or leaves a hole at completion.
    #[error("inconsistent chunk: {0}")]
    Inconsistent(&'static str),
    /// No room for another partial message or its bytes: dropped, the sender retries.
    #[error("no room for partial messages ({0})")]
    NoRoom(&'static str),
    /// A packet of more chunks than a u16 index can number.
    #[error("{len} bytes need more than 65 536 chunks of {split}")]
    TooManyChunks {
        /// The packet's length.
        len: usize,
        /// The split size.
        split: usize,
    },
    /// JSON that does not have the shape the original sends.
    #[error("not the original's JSON: {0}")]
    Json(String),
}

fn need(what: &'static str, b: &[u8], need: usize) -> Result<(), CompatError> {
    if b.len() < need {
        return Err(CompatError::Truncated {
            what,
            len: b.len(),
            need,
        });
    }
    Ok(())
}

fn id_at(b: &[u8], at: usize) -> Id {
    let mut id = [0u8; 16];
    id.copy_from_slice(&b[at..at + 16]);
    id
}

/// A datagram of the original's reliable-UDP layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// `0x00`: unreliable; the rest is the payload (a [`Usend`] JSON object).
    Usend(&'a [u8]),
    /// `0x01`: reliable; acknowledged by its `id`.
    Send {
        /// The reliable id (fresh per transmission of a chunk, kept across its retries).
        id: Id,
        /// The chunk.
        chunk: &'a [u8],
    },
    /// `0x02`: acknowledges the `Send` whose id is `acked`.
    Ack {
        /// A fresh random id, never used by anyone.
        ack_id: Id,
        /// The id acknowledged.
        acked: Id,
    },
}

impl<'a> Datagram<'a> {
    /// Reads a datagram. Flags the original does not send, empty datagrams and short ones are
    /// errors (the original crashed on an empty one).
    pub fn decode(b: &'a [u8]) -> Result<Self, CompatError> {
        need("datagram", b, 1)?;
        match b[0] {
            0x00 => Ok(Self::Usend(&b[1..])),
            0x01 => {
                need("reliable datagram", b, 17)?;
                Ok(Self::Send {
                    id: id_at(b, 1),
                    chunk: &b[17..],
                })
            }
            0x02 if b.len() == 33 => Ok(Self::Ack {
                ack_id: id_at(b, 1),
                acked: id_at(b, 17),
            }),
            0x02 => Err(CompatError::BadAck(b.len())),
            value => Err(CompatError::UnknownKind {
                what: "datagram flag",
                value,
            }),
        }
    }

    /// The datagram's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Usend(p) => [&[0x00][..], p].concat(),
            Self::Send { id, chunk } => [&[0x01][..], id, chunk].concat(),
            Self::Ack { ack_id, acked } => [&[0x02][..], ack_id, acked].concat(),
        }
    }
}

/// One piece of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// Shared by every chunk of one packet.
    pub message: Id,
    /// The whole packet's length.
    pub total: u32,
    /// 0-based.
    pub index: u16,
    /// The slice.
    pub data: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// Reads a chunk (the original crashed on one under 22 bytes).
    pub fn decode(b: &'a [u8]) -> Result<Self, CompatError> {
        need("chunk", b, CHUNK_HEADER)?;
        Ok(Self {
            message: id_at(b, 0),
            total: u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
            index: u16::from_be_bytes([b[20], b[21]]),
            data: &b[CHUNK_HEADER..],
        })
    }

    /// The chunk's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(CHUNK_HEADER + self.data.len());
        v.extend_from_slice(&self.message);
        v.extend_from_slice(&self.total.to_be_bytes());
        v.extend_from_slice(&self.index.to_be_bytes());
        v.extend_from_slice(self.data);
        v
    }
}

/// Cuts `packet` into chunks of at most `split` bytes under one message id, as the original
/// does (a packet of at most `split` bytes, an empty one too, is one chunk).
pub fn split(message: Id, packet: &[u8], split: usize) -> Result<Vec<Vec<u8>>, CompatError> {
    let split = split.max(1);
    let total = u32::try_from(packet.len()).map_err(|_| CompatError::TooLarge {
        len: packet.len() as u64,
        max: u32::MAX as usize,
    })?;
    let count = packet.len().div_ceil(split).max(1);
    if count > usize::from(u16::MAX) + 1 {
        return Err(CompatError::TooManyChunks {
            len: packet.len(),
            split,
        });
    }
    Ok((0..count)
        .map(|i| {
            let data = &packet[(i * split).min(packet.len())..((i + 1) * split).min(packet.len())];
            Chunk {
                message,
                total,
                index: i as u16,
                data,
            }
            .encode()
        })
        .collect())
}

/// Caps of a [`Reassembly`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// The largest packet accepted (the original accepted 4 GiB).
    pub max_message: usize,
    /// Partial packets held at once, all senders together.
    pub max_partial: usize,
    /// Partial packets held per sender.
    pub max_partial_per_sender: usize,
    /// Bytes of partial packets held, all senders together.
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message: 16 << 20,
            max_partial: 1024,
            max_partial_per_sender: 64,
            max_bytes: 64 << 20,
        }
    }
}

#[derive(Debug)]
struct Partial {
    total: u32,
    slots: BTreeMap<u16, Vec<u8>>,
    filled: usize,
    created: Instant,
}

/// Reassembles chunks into packets, keyed by sender and message id (the original keyed by
/// message id alone, so one sender could complete another's message), under [`Limits`].
#[derive(Debug)]
pub struct Reassembly<K> {
    limits: Limits,
    partial: HashMap<(K, Id), Partial>,
    per_sender: HashMap<K, usize>,
    bytes: usize,
}

impl<K: Hash + Eq + Clone> Reassembly<K> {
    /// An empty reassembly under `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            partial: HashMap::new(),
            per_sender: HashMap::new(),
            bytes: 0,
        }
    }

    /// Bytes of partial packets held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Partial packets held.
    pub fn len(&self) -> usize {
        self.partial.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.partial.is_empty()
    }

    /// Adds a chunk from `from`: the whole packet once its last byte arrived, `None` while
    /// pieces are missing. A duplicate of a slot already held is ignored; a chunk that
    /// contradicts its message drops the message.
    pub fn push(
        &mut self,
        from: K,
        chunk: Chunk<'_>,
        now: Instant,
    ) -> Result<Option<Vec<u8>>, CompatError> {
        let total = chunk.total as usize;
        if total > self.limits.max_message {
            return Err(CompatError::TooLarge {
                len: u64::from(chunk.total),
                max: self.limits.max_message,
            });
        }
        // A lone chunk that is the whole packet needs no state.
        if chunk.index == 0 && chunk.data.len() == total {
            let key = (from, chunk.message);
            if self.partial.contains_key(&key) {
                self.remove(&key);
                return Err(CompatError::Inconsistent(
                    "a whole packet under a partial one's id",
                ));
            }
            return Ok(Some(chunk.data.to_vec()));
        }
        if self.bytes + chunk.data.len() > self.limits.max_bytes {
            return Err(CompatError::NoRoom("bytes of partial packets"));
        }
        let key = (from.clone(), chunk.message);
        if !self.partial.contains_key(&key) {
            if self.partial.len() >= self.limits.max_partial {
                return Err(CompatError::NoRoom("partial packets"));
            }
            let n = self.per_sender.entry(from.clone()).or_insert(0);
            if *n >= self.limits.max_partial_per_sender {
                return Err(CompatError::NoRoom("partial packets of this sender"));
            }
            *n += 1;
            self.partial.insert(
                key.clone(),
                Partial {
                    total: chunk.total,
                    slots: BTreeMap::new(),
                    filled: 0,
                    created: now,
                },
            );
        }
        let p = self.partial.get_mut(&key).expect("inserted above");
        let problem = if p.total != chunk.total {
            Some("another total length")
        } else if let Some(held) = p.slots.get(&chunk.index) {
            if held.as_slice() == chunk.data {
                return Ok(None); // a retransmission
            }
            Some("a slot held with other bytes")
        } else if p.filled + chunk.data.len() > total {
            Some("more bytes than the total")
        } else if chunk.data.is_empty() {
            Some("an empty chunk of a longer packet")
        } else {
            None
        };
        if let Some(why) = problem {
            self.remove(&key);
            return Err(CompatError::Inconsistent(why));
        }
        p.filled += chunk.data.len();
        p.slots.insert(chunk.index, chunk.data.to_vec());
        self.bytes += chunk.data.len();
        if p.filled < total {
            return Ok(None);
        }
        let p = self.remove(&key).expect("present");
        // Complete by bytes: the slots must be 0, 1, 2, … with no hole (the original crashed).
        if p.slots
            .keys()
            .enumerate()
            .any(|(i, &k)| usize::from(k) != i)
        {
            return Err(CompatError::Inconsistent("a hole in the chunk indexes"));
        }
        let mut whole = Vec::with_capacity(total);
        for s in p.slots.into_values() {
            whole.extend_from_slice(&s);
        }
        Ok(Some(whole))
    }

    /// Drops partial packets begun before `before`; returns how many.
    pub fn expire(&mut self, before: Instant) -> usize {
        let old: Vec<(K, Id)> = self
            .partial
            .iter()
            .filter(|(_, p)| p.created < before)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            self.remove(k);
        }
        old.len()
    }

    /// Drops every partial packet of `from` (its session ended).
    pub fn forget(&mut self, from: &K) {
        let keys: Vec<(K, Id)> = self
            .partial
            .keys()
            .filter(|(k, _)| k == from)
            .cloned()
            .collect();
        for k in &keys {
            self.remove(k);
        }
    }

    fn remove(&mut self, key: &(K, Id)) -> Option<Partial> {
        let p = self.partial.remove(key)?;
        self.bytes -= p.filled;
        if let Some(n) = self.per_sender.get_mut(&key.0) {
            *n -= 1;
            if *n == 0 {
                self.per_sender.remove(&key.0);
            }
        }
        Some(p)
    }
}

/// A packet's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    /// `0x0a`: a request (`send`), answered when its correlation id is not [`NO_RESPONSE`].
    Request,
    /// `0x14`: a response to the request with the same correlation id.
    Response,
}

/// A reassembled packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Request or response.
    pub kind: PacketKind,
    /// The correlation id.
    pub rid: Id,
    /// The handler id.
    pub handler: u16,
    /// The [`pack`]ed payload (for a request, an [`Envelope`]).
    pub payload: &'a [u8],
}

impl<'a> Packet<'a> {
    /// Reads a packet (the original crashed on one under 19 bytes).
    pub fn decode(b: &'a [u8]) -> Result<Self, CompatError> {
        need("packet", b, PACKET_HEADER)?;
        let kind = match b[0] {
            0x0a => PacketKind::Request,
            0x14 => PacketKind::Response,
            value => {
                return Err(CompatError::UnknownKind {
                    what: "packet kind",
                    value,
                })
            }
        };
        Ok(Self {
            kind,
            rid: id_at(b, 1),
            handler: u16::from_be_bytes([b[17], b[18]]),
            payload: &b[PACKET_HEADER..],
        })
    }

    /// The packet's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let kind = match self.kind {
            PacketKind::Request => 0x0a,
            PacketKind::Response => 0x14,
        };
        let mut v = Vec::with_capacity(PACKET_HEADER + self.payload.len());
        v.push(kind);
        v.extend_from_slice(&self.rid);
        v.extend_from_slice(&self.handler.to_be_bytes());
        v.extend_from_slice(self.payload);
        v
    }
}

/// A node of a relay list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its address, as text.
    pub address: String,
    /// Its port.
    pub port: u16,
}

/// What a request carries: the user's data, the handler id again, and the rest of the relay
/// list its receiver forwards to. Keys in the original's order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The user's data (absent in the original's JSON when it was `undefined`: `null` here).
    #[serde(default)]
    pub data: Value,
    /// The handler id.
    #[serde(rename = "handlerId")]
    pub handler_id: u16,
    /// The nodes the receiver relays to.
    #[serde(default)]
    pub nodes: Vec<Endpoint>,
}

impl Envelope {
    /// An envelope with no relay list.
    pub fn new(data: Value, handler_id: u16) -> Self {
        Self {
            data,
            handler_id,
            nodes: Vec::new(),
        }
    }
}

/// An unreliable message (`usend`): a correlation id as 32 hex characters (all zeros: no
/// answer wanted; an answer comes back as a reliable response packet), the handler id, and an
/// [`Envelope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usend {
    /// The correlation id, 32 lowercase hex characters.
    pub id: String,
    /// The handler id.
    #[serde(rename = "handlerId")]
    pub handler_id: u16,
    /// The envelope.
    pub data: Envelope,
}

impl Usend {
    /// A usend of `envelope`, answered under `rid` unless it is [`NO_RESPONSE`].
    pub fn new(rid: Id, envelope: Envelope) -> Self {
        Self {
            id: hex::encode(rid),
            handler_id: envelope.handler_id,
            data: envelope,
        }
    }

    /// Reads a usend's JSON (the payload of a [`Datagram::Usend`]).
    pub fn decode(b: &[u8]) -> Result<Self, CompatError> {
        let u: Self = serde_json::from_slice(b).map_err(|e| CompatError::Json(e.to_string()))?;
        u.rid()?;
        Ok(u)
    }

    /// The correlation id.
    pub fn rid(&self) -> Result<Id, CompatError> {
        let mut id = [0u8; 16];
        if self.id.len() != 32 {
            return Err(CompatError::Json("a usend id is 32 hex characters".into()));
        }
        hex::decode_to_slice(&self.id, &mut id)
            .map_err(|e| CompatError::Json(format!("usend id: {e}")))?;
        Ok(id)
    }

    /// The datagram's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        Datagram::Usend(&json).encode()
    }
}

/// The tag of a buffer inside packed JSON.
const BUFFER_TAG: u64 = 254;
/// The tag of an error.
const ERROR_TAG: u64 = 253;

/// A packed payload, read.
#[derive(Debug, Clone, PartialEq)]
pub enum Unpacked {
    /// No bytes: what the original sends for `undefined`, `null`, `0`, `false` and `""`.
    Empty,
    /// Bytes that are not JSON (a buffer sent as it is), or a buffer tag at the top.
    Bytes(Vec<u8>),
    /// An error sent as an answer, with its message.
    Error(String),
    /// JSON; buffers inside it stay tagged (read them with [`buffer_of`]).
    Json(Value),
}

/// Packs a JSON value as the original does: a falsy one (`null`, `false`, `0`, `""`) as no
/// bytes at all, anything else as JSON.
pub fn pack(v: &Value) -> Vec<u8> {
    let falsy = match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        _ => false,
    };
    if falsy {
        Vec::new()
    } else {
        serde_json::to_vec(v).unwrap_or_default()
    }
}

/// A tagged value with the original's key order (`_dt` first).
#[derive(Serialize)]
struct Tagged<'a> {
    #[serde(rename = "_dt")]
    tag: u64,
    #[serde(rename = "_d")]
    data: &'a str,
}

/// Packs an error answer: `{"_dt":253,"_d":message}`, byte for byte as the original.
pub fn pack_error(message: &str) -> Vec<u8> {
    serde_json::to_vec(&Tagged {
        tag: ERROR_TAG,
        data: message,
    })
    .unwrap_or_default()
}

/// A buffer as the original tags it inside JSON: `{"_dt":254,"_d":"<base64>"}` (inside a
/// `Value` the keys are sorted; JSON readers, the original's too, do not mind).
pub fn buffer_value(bytes: &[u8]) -> Value {
    serde_json::json!({"_dt": BUFFER_TAG, "_d": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

/// The bytes of a tagged buffer (see [`buffer_value`]); `None` for anything else.
pub fn buffer_of(v: &Value) -> Option<Vec<u8>> {
    let o = v.as_object()?;
    if o.get("_dt")?.as_u64()? != BUFFER_TAG {
        return None;
    }
    base64::engine::general_purpose::STANDARD
        .decode(o.get("_d")?.as_str()?)
        .ok()
}

/// Reads a packed payload as the original does: no bytes are [`Unpacked::Empty`], JSON is
/// JSON (an error tag at the top is an [`Unpacked::Error`], a buffer tag its bytes), anything
/// else the bytes themselves.
pub fn unpack(b: &[u8]) -> Unpacked {
    if b.is_empty() {
        return Unpacked::Empty;
    }
    let Ok(v) = serde_json::from_slice::<Value>(b) else {
        return Unpacked::Bytes(b.to_vec());
    };
    if let Some(bytes) = buffer_of(&v) {
        return Unpacked::Bytes(bytes);
    }
    let error = v
        .as_object()
        .filter(|o| o.get("_dt").and_then(Value::as_u64) == Some(ERROR_TAG))
        .map(|o| match o.get("_d") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        });
    match error {
        Some(message) => Unpacked::Error(message),
        None => Unpacked::Json(v),
    }
}

//! Events, errors, ids and statistics of the protocol core.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

/// Identifies one reliable message sent by an endpoint (unique for the endpoint's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub u64);

/// The bytes of one reliable message: an optional short `head` followed by a `body`, sent as
/// one message. A layer above that frames messages (the mesh's envelope) passes its header as
/// the head, so a large body goes out without first being copied behind it: fragments are
/// slices of the body, and only a fragment that straddles the two is copied.
///
/// ```
/// use bytes::Bytes;
/// use mesh_rudp::Payload;
///
/// let p = Payload::with_head(Bytes::from_static(b"hdr:"), Bytes::from_static(b"body"));
/// assert_eq!(p.len(), 8);
/// assert_eq!(p.to_bytes(), Bytes::from_static(b"hdr:body"));
/// let whole: Payload = Bytes::from_static(b"just a body").into();
/// assert_eq!(whole.len(), 11);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Payload {
    head: Bytes,
    body: Bytes,
}

impl Payload {
    /// `head` then `body`, as one message.
    pub fn with_head(head: Bytes, body: Bytes) -> Self {
        Self { head, body }
    }

    /// Length of the whole message.
    pub fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes `start..end` of the whole message: a slice when the range lies in one part, a copy
    /// when it straddles both.
    pub(crate) fn range(&self, start: usize, end: usize) -> Bytes {
        let h = self.head.len();
        if start >= h {
            self.body.slice(start - h..end - h)
        } else if end <= h {
            self.head.slice(start..end)
        } else {
            let mut v = Vec::with_capacity(end - start);
            v.extend_from_slice(&self.head[start..]);
            v.extend_from_slice(&self.body[..end - h]);
            Bytes::from(v)
        }
    }

    /// The whole message in one buffer (a copy only when it has a head).
    pub fn to_bytes(&self) -> Bytes {
        self.range(0, self.len())
    }

    /// [`to_bytes`](Self::to_bytes), by value: without a head, the body itself.
    pub(crate) fn into_bytes(self) -> Bytes {
        if self.head.is_empty() {
            self.body
        } else {
            self.to_bytes()
        }
    }
}

impl From<Bytes> for Payload {
    fn from(body: Bytes) -> Self {
        Self {
            head: Bytes::new(),
            body,
        }
    }
}

impl From<Vec<u8>> for Payload {
    fn from(body: Vec<u8>) -> Self {
        Bytes::from(body).into()
    }
}

impl From<&'static [u8]> for Payload {
    fn from(body: &'static [u8]) -> Self {
        Bytes::from_static(body).into()
    }
}

impl From<String> for Payload {
    fn from(body: String) -> Self {
        Bytes::from(body).into()
    }
}

/// How a reliable message is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Delivery {
    /// Delivered as soon as it is complete, whatever arrived before it: no head-of-line
    /// blocking. What the original offers, and the default.
    #[default]
    Unordered,
    /// Delivered in send order among the ordered messages to the same peer on the same
    /// channel. Channels do not block each other.
    Ordered {
        /// The channel, 0..=255.
        channel: u8,
    },
}

/// Something the application must learn, drained with [`crate::Endpoint::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A whole message arrived. Reliable messages arrive exactly once.
    Message {
        /// Who sent it.
        from: SocketAddr,
        /// The message bytes.
        data: Bytes,
        /// Whether it came reliably (or as an unreliable datagram).
        reliable: bool,
    },
    /// Every fragment of a reliable message was acknowledged by the peer.
    Delivered {
        /// The destination.
        peer: SocketAddr,
        /// The message.
        id: MessageId,
    },
    /// A reliable message will not be acknowledged; it may or may not have reached the peer's
    /// transport, and it was not delivered by this session if the peer restarted.
    Failed {
        /// The destination.
        peer: SocketAddr,
        /// The message.
        id: MessageId,
        /// Why.
        error: SendError,
    },
    /// A peer stopped answering, closed, or restarted; its state is gone and every message in
    /// flight to it has been reported [`Event::Failed`] just before.
    PeerDown {
        /// The peer.
        peer: SocketAddr,
        /// Why.
        reason: DownReason,
    },
}

/// Why a peer's state ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DownReason {
    /// Nothing acknowledged or answered for the configured peer timeout.
    Timeout,
    /// The peer closed its session with us.
    Closed,
    /// The peer started a new session (it restarted, or reset its state for us).
    Reset,
    /// The peer broke the protocol (for example, a message larger than our maximum).
    ProtocolError,
    /// We closed the session ourselves.
    LocalClose,
    /// Datagrams as large as some in flight stopped reaching the peer while small ones still
    /// did (a path-MTU black hole: the path shrank). What was sent at the larger size cannot
    /// be sent again smaller, so the session ended; the next one starts at the base size.
    PathMtu,
}

/// Why a send was refused or a message failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Error)]
#[non_exhaustive]
pub enum SendError {
    /// The message is larger than the configured maximum (reliable) or than one datagram
    /// (unreliable). Permanent for this message.
    #[error("message of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The message size.
        size: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// The peer's send queue is full. Transient: retry after some messages are delivered.
    #[error("send queue to this peer is full")]
    QueueFull,
    /// The endpoint has state for as many peers as it may. Transient.
    #[error("too many peers")]
    TooManyPeers,
    /// The peer stopped acknowledging for the configured timeout.
    #[error("peer did not acknowledge within the timeout")]
    Timeout,
    /// The peer closed, restarted or broke the protocol before acknowledging.
    #[error("peer session ended ({0:?}) before acknowledging")]
    PeerGone(DownReason),
    /// The endpoint is closing or closed.
    #[error("endpoint closed")]
    Closed,
}

/// Invalid configuration.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is out of range or inconsistent with another.
    #[error("invalid configuration: {0}")]
    Invalid(&'static str),
    /// Two values that must keep a ratio do not, named with their values.
    #[error("invalid configuration: {0}")]
    Conflict(String),
}

/// Counters of one endpoint, over all peers. Pull them with [`crate::Endpoint::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Datagrams handed to the network.
    pub datagrams_sent: u64,
    /// Bytes handed to the network.
    pub bytes_sent: u64,
    /// Datagrams received (valid or not).
    pub datagrams_received: u64,
    /// Bytes received (valid or not).
    pub bytes_received: u64,
    /// Datagrams rejected by the wire decoder (bad magic, checksum, framing).
    pub dropped_invalid: u64,
    /// Datagrams dropped because their authentication did not match this endpoint's cluster
    /// key (a bad tag, or a keyed/unkeyed mismatch).
    pub dropped_unauthenticated: u64,
    /// Authenticated datagrams dropped as replays: seen before, too old for the window, or a
    /// new session older than the clock-skew allowance.
    pub dropped_replay: u64,
    /// Datagrams addressed to an earlier session of ours, or from a retired peer session.
    pub dropped_stale_session: u64,
    /// Datagrams from unknown senders refused by the peer cap or the new-peer rate limit.
    pub dropped_peer_limit: u64,
    /// Data frames refused because reassembly caps or the incoming queue were full.
    pub dropped_no_room: u64,
    /// Data frames outside the receive window, or acks of data never sent.
    pub dropped_out_of_window: u64,
    /// Unreliable messages dropped because a queue was full.
    pub dropped_unreliable: u64,
    /// Current number of peers with state.
    pub peers: usize,
    /// Bytes of partial messages held, over all peers.
    pub reassembly_bytes: usize,
    /// Reliable messages delivered to this application.
    pub messages_received: u64,
    /// Reliable messages acknowledged by their peers.
    pub messages_delivered: u64,
    /// Reliable messages failed.
    pub messages_failed: u64,
    /// Data frames retransmitted.
    pub retransmitted: u64,
    /// Duplicate data frames received (and suppressed).
    pub duplicates: u64,
    /// Large messages reassembled in a spare buffer (see
    /// [`EndpointConfig::recycle_bytes`](crate::EndpointConfig::recycle_bytes)) rather than in
    /// fresh memory.
    pub recycled_buffers: u64,
    /// Sends the socket refused for lack of room (a full send buffer: a slow link's queue
    /// holds what was sent). The transport holds such output and sends it as room comes;
    /// always 0 for a bare [`Endpoint`](crate::Endpoint), which does no I/O.
    pub sends_held: u64,
}

/// Counters and estimates of one peer. Pull them with [`crate::Endpoint::peer_stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Data frames sent for the first time.
    pub frames_sent: u64,
    /// Data frames retransmitted.
    pub retransmitted: u64,
    /// Data frames received, duplicates included.
    pub frames_received: u64,
    /// Duplicate data frames received.
    pub duplicates: u64,
    /// Frames dropped (no room, out of window).
    pub dropped: u64,
    /// Bytes sent to this peer.
    pub bytes_sent: u64,
    /// Bytes received from this peer.
    pub bytes_received: u64,
    /// Smoothed round-trip time (the initial RTO until [`rtt_measured`](Self::rtt_measured)).
    pub srtt: Duration,
    /// Whether a round trip has been measured yet (a peer that has only sent to us has none).
    pub rtt_measured: bool,
    /// Round-trip time variation.
    pub rttvar: Duration,
    /// Current retransmission timeout.
    pub rto: Duration,
    /// Congestion window, bytes.
    pub cwnd: usize,
    /// Bytes of data in flight (sent, not acknowledged, not known lost).
    pub in_flight_bytes: usize,
    /// Data frames in flight.
    pub in_flight_frames: usize,
    /// Messages queued or in flight (not yet acknowledged).
    pub pending_messages: usize,
    /// The largest datagram sent to this peer now, header included: the base size
    /// ([`crate::EndpointConfig::mtu`]) until probes find the path carries more.
    pub mtu: usize,
}

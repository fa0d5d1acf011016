//! Endpoint configuration: `Default` plus chainable setters, each default stated.

use std::time::Duration;

use crate::ConfigError;

/// How an [`crate::Endpoint`] behaves. Every field has a default suited to a private data-centre
/// network; each setter documents it.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub(crate) mtu: usize,
    /// `None`: [`DEFAULT_MAX_MTU`], or `mtu` when larger (see [`EndpointConfig::max_mtu`]).
    pub(crate) max_mtu: Option<usize>,
    pub(crate) loopback_mtu: Option<usize>,
    pub(crate) loopback_checksum: bool,
    pub(crate) max_message_size: usize,
    pub(crate) max_peers: usize,
    pub(crate) new_peers_per_second: u32,
    pub(crate) reassembly_per_peer: usize,
    pub(crate) reassembly_total: usize,
    pub(crate) recycle_bytes: usize,
    pub(crate) send_queue_per_peer: usize,
    pub(crate) max_incoming_messages: usize,
    pub(crate) initial_rto: Duration,
    pub(crate) min_rto: Duration,
    pub(crate) max_rto: Duration,
    pub(crate) fixed_rto: Option<Duration>,
    pub(crate) max_ack_delay: Duration,
    /// `None`: derived from `peer_timeout` (see [`EndpointConfig::keepalive`]).
    pub(crate) keepalive_interval: Option<Duration>,
    pub(crate) peer_timeout: Duration,
    pub(crate) flush_interval: Option<Duration>,
    pub(crate) initial_cwnd_datagrams: usize,
    pub(crate) max_cwnd_bytes: usize,
    pub(crate) unreliable_queue: usize,
    pub(crate) seed: Option<u64>,
    pub(crate) cluster_key: Option<mesh_wire::ClusterKey>,
    pub(crate) max_clock_skew: Duration,
}

/// The default [`EndpointConfig::max_mtu`]: a 9000-byte jumbo frame less the IPv4 and UDP
/// headers (28 bytes). Paths with a smaller MTU are found by probing; a local interface's is
/// known at once (the socket refuses larger datagrams).
pub const DEFAULT_MAX_MTU: usize = 8972;

/// The default [`EndpointConfig::loopback_mtu`]. Linux's loopback interface carries datagrams
/// up to 64 KiB; elsewhere (macOS caps UDP datagrams at 9 KiB by default) loopback peers get the
/// ordinary MTU.
pub const DEFAULT_LOOPBACK_MTU: Option<usize> = if cfg!(target_os = "linux") {
    Some(32_000)
} else {
    None
};

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            mtu: 1200,
            max_mtu: None,
            loopback_mtu: DEFAULT_LOOPBACK_MTU,
            loopback_checksum: true,
            max_message_size: 16 << 20,
            max_peers: 4096,
            new_peers_per_second: 1024,
            reassembly_per_peer: 32 << 20,
            reassembly_total: 256 << 20,
            recycle_bytes: 64 << 20,
            send_queue_per_peer: 64 << 20,
            max_incoming_messages: 65_536,
            initial_rto: Duration::from_millis(100),
            min_rto: Duration::from_millis(10),
            max_rto: Duration::from_secs(2),
            fixed_rto: None,
            max_ack_delay: Duration::ZERO,
            keepalive_interval: None,
            peer_timeout: Duration::from_secs(5),
            flush_interval: None,
            initial_cwnd_datagrams: 32,
            max_cwnd_bytes: 16 << 20,
            unreliable_queue: 1024,
            seed: None,
            cluster_key: None,
            max_clock_skew: Duration::from_secs(120),
        }
    }
}

/// Generates a chainable setter with its documentation.
macro_rules! setter {
    ($(#[$doc:meta])* $name:ident: $ty:ty) => {
        $(#[$doc])*
        pub fn $name(&mut self, value: $ty) -> &mut Self {
            self.$name = value;
            self
        }
    };
}

impl EndpointConfig {
    setter!(
        /// The base datagram size: the largest UDP payload (header included) assumed to pass
        /// every path. Every session starts at it, probes upward from it (see
        /// [`max_mtu`](Self::max_mtu)), and a session that finds larger datagrams stopped
        /// passing is followed by one that starts here again; unreliable messages must fit it. Default 1200 bytes: safe on common
        /// networks (IPv6's minimum MTU less headers). Range 256..=65507.
        mtu: usize
    );
    /// The largest datagram probed for (path-MTU discovery, RFC 8899's DPLPMTUD): each
    /// session sends pings padded to candidate sizes between [`mtu`](Self::mtu) and this,
    /// and uses the largest answered, so bulk data goes in fewer, larger datagrams where the
    /// network allows. Probes are sent alone, answered by a small pong, not counted as
    /// congestion when lost, and given up after three tries per size; a search ends within 16
    /// bytes of the path's MTU and is repeated every 10 minutes while below this. Default
    /// [`DEFAULT_MAX_MTU`] (8972: a jumbo frame), or `mtu` when that is set larger. Equal to
    /// `mtu`: no probing. Range `mtu..=65507` (below `mtu` is refused, naming both).
    pub fn max_mtu(&mut self, value: usize) -> &mut Self {
        self.max_mtu = Some(value);
        self
    }

    /// [`max_mtu`](Self::max_mtu) as it applies: the value set, else the default or `mtu`,
    /// whichever is larger.
    pub fn effective_max_mtu(&self) -> usize {
        self.max_mtu.unwrap_or(DEFAULT_MAX_MTU.max(self.mtu))
    }
    setter!(
        /// [`max_mtu`](Self::max_mtu) for a peer on a loopback address (another process on
        /// this host); `None` treats loopback peers like any other. Loopback never fragments
        /// below 64 KiB on Linux, and fewer, larger datagrams move bulk data between
        /// co-located processes at several times the speed. Probed like any path (the first
        /// probe, of this size, passes). Default `Some(32_000)` on Linux (measured best between
        /// 24 and 48 KB), `None` elsewhere. At most 65507; below `mtu` it is `mtu`.
        loopback_mtu: Option<usize>
    );
    setter!(
        /// Whether datagrams to a peer on a loopback address carry a CRC-32. Default true, as
        /// to any other peer. Loopback moves datagrams within memory, where nothing corrupts
        /// them, so `false` is safe there; but measured between two processes (1 MiB
        /// messages, 32 KB datagrams, `mesh-bench`), leaving it out bought nothing measurable
        /// (4.0-5.4 GB/s without, 4.3-5.0 GB/s with, same run): CRC-32 runs at many GB/s on
        /// a CPU with carry-less multiply. For a CPU without, `false` skips it. A receiver
        /// takes a datagram without one only from a loopback address.
        loopback_checksum: bool
    );
    setter!(
        /// Largest reliable message, in bytes. Default 16 MiB. Larger sends are refused, and
        /// fragments claiming more are dropped.
        max_message_size: usize
    );
    setter!(
        /// Most peers with state at once. Default 4096. Datagrams from further unknown senders
        /// are dropped (counted); sends to further new peers fail with `TooManyPeers`.
        max_peers: usize
    );
    setter!(
        /// Most peer states created per second from unsolicited datagrams. Default 1024.
        new_peers_per_second: u32
    );
    setter!(
        /// Bytes of partial messages held per peer. Default 32 MiB (two maximum messages).
        /// A fragment past it is dropped unacknowledged, so the sender retries later.
        reassembly_per_peer: usize
    );
    setter!(
        /// Bytes of partial messages held over all peers. Default 256 MiB.
        reassembly_total: usize
    );
    setter!(
        /// Bytes of spare message buffers kept for reuse. Default 64 MiB (in at most 8
        /// buffers); 0 keeps none. A message reassembled from many datagrams (256 KiB or more)
        /// hands its buffer back when the application drops it, and the next large message is
        /// written into it instead of into fresh memory, which the kernel maps page by page:
        /// those page faults cost more than the copy. Spare buffers stay allocated while idle.
        recycle_bytes: usize
    );
    setter!(
        /// Bytes queued to send to one peer (not yet acknowledged). Default 64 MiB. Past it,
        /// `send_reliable` refuses with `QueueFull`: back-pressure. The queue also holds at
        /// most one message per 192 bytes of it (about 350 000 by default), so that tiny
        /// messages, whose bookkeeping outweighs their bytes, stay bounded too.
        send_queue_per_peer: usize
    );
    setter!(
        /// Received messages not yet taken with `poll_event`. Default 65 536. Past it, new data
        /// is dropped unacknowledged, so a slow application slows its senders down.
        max_incoming_messages: usize
    );
    setter!(
        /// Retransmission timeout before any RTT sample. Default 100 ms.
        initial_rto: Duration
    );
    setter!(
        /// Lower bound of the retransmission timeout. Default 10 ms.
        min_rto: Duration
    );
    setter!(
        /// Upper bound of the retransmission timeout after backoff. Default 2 s, and never
        /// more than a quarter of [`peer_timeout`](Self::peer_timeout) (nor less than
        /// `min_rto`): a lost datagram gets at least three retransmissions before its peer is
        /// reported down.
        max_rto: Duration
    );
    setter!(
        /// Replace the adaptive RTO with the original mesh-link's schedule: a fixed base
        /// interval with linear backoff and no RTT estimate. Default `None` (adaptive). Exists
        /// so benches can show what the adaptive RTO buys.
        fixed_rto: Option<Duration>
    );
    setter!(
        /// Longest an acknowledgement is held to be coalesced. Default 0: acknowledge at once,
        /// which still coalesces the acks of every datagram handled before the next
        /// `poll_transmit` (the driver reads a batch, then flushes). Since `send` resolves on
        /// acknowledgement, a delay here is added to every send's latency. Out-of-order data
        /// and every second data frame are acknowledged at once whatever this says.
        max_ack_delay: Duration
    );
    /// A peer not heard from for this long is probed with a ping. Default: half of
    /// [`peer_timeout`](Self::peer_timeout). Set explicitly, it must be at most half of
    /// `peer_timeout` ([`validate`](Self::validate) refuses the pair otherwise): the end of a
    /// quiet pair that waits longer (below) then probes by three quarters of the timeout,
    /// which leaves it a quarter, the longest retransmission timeout, to repeat its probe.
    ///
    /// A probe that goes unanswered is repeated a retransmission timeout later, then after
    /// twice that, and so on (at most this interval apart, and at most half the time left
    /// before `peer_timeout`): a lost probe or answer costs about a round trip, not an
    /// interval, a path that comes back before the timeout is asked again in time, so a quiet
    /// peer is not taken for dead on a few losses or a short outage, and a dead one is probed
    /// a bounded number of times before it is reported.
    ///
    /// Probes go out on a grid of half this interval, anchored on wall-clock time, so that an
    /// endpoint probes all its quiet peers in a few wake-ups per interval (and peers with
    /// agreeing clocks probe it together): a probe leaves up to half an interval early. Of
    /// the two ends of a session, one waits half an interval longer, and hears the other's
    /// probe first: one probe and one answer per quiet pair per interval.
    pub fn keepalive_interval(&mut self, value: Duration) -> &mut Self {
        self.keepalive_interval = Some(value);
        self
    }

    setter!(
        /// A peer that acknowledges nothing for this long while data is in flight, or answers no
        /// probe for this long, is reported down and its messages fail. Default 5 s. The
        /// keepalive and the longest retransmission timeout follow it (see
        /// [`keepalive_interval`](Self::keepalive_interval) and [`max_rto`](Self::max_rto)).
        peer_timeout: Duration
    );
    setter!(
        /// Hold new small frames up to this long to pack more per datagram (the original's
        /// `sendInterval`). Default `None`: send at once; frames queued together are still packed.
        flush_interval: Option<Duration>
    );
    setter!(
        /// Initial congestion window, in full datagrams. Default 32.
        initial_cwnd_datagrams: usize
    );
    setter!(
        /// Upper bound of the congestion window, in bytes. Default 16 MiB. A `Transport`
        /// lowers it to the receive window its socket's buffer allows (see
        /// `TransportConfig::socket_buffer`).
        max_cwnd_bytes: usize
    );
    setter!(
        /// Unreliable messages queued per peer before the oldest is dropped. Default 1024.
        unreliable_queue: usize
    );
    setter!(
        /// Seed of the endpoint's random choices (session ids, ping tokens). Give each endpoint
        /// its own; tests fix it to replay a run. Default `None`: a [`Transport`] draws one
        /// from the OS, and a bare [`Endpoint`](crate::Endpoint) derives one from the
        /// wall-clock time it is given at [`new`](crate::Endpoint::new) (the core itself asks
        /// the OS for nothing).
        ///
        /// [`Transport`]: crate::Transport
        seed: Option<u64>
    );

    setter!(
        /// A cluster's shared secret: every datagram is then authenticated (keyed BLAKE3 tag)
        /// and numbered, and datagrams without a valid tag, or seen before, are dropped before
        /// any state exists (counted in `dropped_unauthenticated` and `dropped_replay`). Nodes
        /// with and without a key cannot talk. Default `None`.
        cluster_key: Option<mesh_wire::ClusterKey>
    );
    setter!(
        /// With a cluster key: how far a new session's first packet number (the sender's clock
        /// in microseconds) may be from this endpoint's clock. Older datagrams are taken for
        /// replays. Default 120 s.
        max_clock_skew: Duration
    );

    /// How often a quiet peer is probed: the configured interval, or half of
    /// `peer_timeout`.
    pub fn keepalive(&self) -> Duration {
        self.keepalive_interval.unwrap_or(self.peer_timeout / 2)
    }

    /// The longest retransmission timeout: `max_rto`, at most a quarter of `peer_timeout`, at
    /// least `min_rto`.
    pub fn effective_max_rto(&self) -> Duration {
        self.max_rto.min(self.peer_timeout / 4).max(self.min_rto)
    }

    /// The largest datagram probed for toward `peer`: `loopback_mtu` for a loopback address,
    /// else `max_mtu`; never below the base size.
    pub(crate) fn ceiling_for(&self, peer: std::net::SocketAddr) -> usize {
        match self.loopback_mtu {
            Some(m) if is_loopback(peer) => m.max(self.mtu),
            _ => self.effective_max_mtu(),
        }
    }

    /// The largest datagram this endpoint may send to any peer.
    pub(crate) fn largest_mtu(&self) -> usize {
        self.mtu
            .max(self.effective_max_mtu())
            .max(self.loopback_mtu.unwrap_or(0))
    }
}

/// Whether `addr` is a loopback address, an IPv4 one seen through a dual-stack IPv6 socket
/// (`::ffff:127.0.0.1`) included.
pub(crate) fn is_loopback(addr: std::net::SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

impl EndpointConfig {
    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(256..=mesh_wire::MAX_DATAGRAM_LEN).contains(&self.mtu)
            || self.effective_max_mtu() > mesh_wire::MAX_DATAGRAM_LEN
            || self
                .loopback_mtu
                .is_some_and(|m| m > mesh_wire::MAX_DATAGRAM_LEN)
        {
            return Err(ConfigError::Invalid("mtu must be within 256..=65507"));
        }
        if let Some(m) = self.max_mtu.filter(|&m| m < self.mtu) {
            return Err(ConfigError::Conflict(format!(
                "max_mtu ({m}) must be at least mtu ({}), the base size probed up from",
                self.mtu
            )));
        }
        if self.max_message_size == 0 {
            return Err(ConfigError::Invalid("max_message_size must be positive"));
        }
        if self.reassembly_per_peer < self.max_message_size
            || self.reassembly_total < self.reassembly_per_peer
        {
            return Err(ConfigError::Invalid(
                "reassembly caps must hold at least one maximum message",
            ));
        }
        if self.send_queue_per_peer < self.max_message_size {
            return Err(ConfigError::Invalid(
                "send_queue_per_peer must hold at least one maximum message",
            ));
        }
        if self.min_rto.is_zero() || self.min_rto > self.max_rto {
            return Err(ConfigError::Invalid("need 0 < min_rto <= max_rto"));
        }
        if self.peer_timeout <= self.min_rto {
            return Err(ConfigError::Conflict(format!(
                "peer_timeout ({:?}) must exceed min_rto ({:?})",
                self.peer_timeout, self.min_rto
            )));
        }
        if let Some(k) = self.keepalive_interval {
            if k.is_zero() || k.saturating_mul(2) > self.peer_timeout {
                return Err(ConfigError::Conflict(format!(
                    "keepalive_interval ({k:?}) must be positive and at most half of \
                     peer_timeout ({:?}), so a quiet peer is probed before it times out",
                    self.peer_timeout
                )));
            }
        }
        if self.max_peers == 0 || self.max_incoming_messages == 0 || self.unreliable_queue == 0 {
            return Err(ConfigError::Invalid("caps must be positive"));
        }
        let largest = self.largest_mtu();
        if self.initial_cwnd_datagrams < 2 || self.max_cwnd_bytes < 2 * largest {
            return Err(ConfigError::Invalid("congestion window too small"));
        }
        Ok(())
    }
}

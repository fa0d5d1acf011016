//! What the transport's API takes and gives: its settings, received messages, how a message
//! is queued, and its errors.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;
use tokio::sync::oneshot;

use crate::{ConfigError, Delivery, EndpointConfig, MessageId, SendError};
#[cfg(doc)]
use crate::{Endpoint, Transport};

/// Settings of a [`Transport`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TransportConfig {
    /// The protocol settings.
    pub endpoint: EndpointConfig,
    /// Requested socket send and receive buffer size, bytes. Default 8 MiB (the kernel may
    /// grant less): with the default ~208 KiB, bursts lose ~2 % here.
    ///
    /// What the kernel grants also bounds how much a sender keeps in flight toward one peer
    /// (three quarters of it, and never more than [`EndpointConfig::max_cwnd_bytes`]), so a
    /// fast sender does not overflow a slower receiver's socket: the receive window, taken
    /// from our own socket since the peers of a mesh run alike. On Linux the grant is capped
    /// by `net.core.rmem_max` (often 4 MiB, which the kernel doubles: a 6 MiB window).
    pub socket_buffer: usize,
    /// How long [`Transport::close`] waits for queued messages to be acknowledged. Default 2 s.
    pub close_timeout: Duration,
    /// Answer a raw 4-byte `ping` datagram with `PONG\n`, as the original did (so `nc -u`
    /// works). Default false.
    pub answer_raw_ping: bool,
    /// Sends closer together than this are corked: the first goes out at once from the
    /// sender's task; the ones that follow are left to the driver, which runs once the sender
    /// yields and packs them into full datagrams. When nothing was received since the last send
    /// that went out at once, sends up to ten times this apart are corked too (a sender
    /// preempted by its receiver on a shared CPU comes back that much later, mid-burst). A lone
    /// send, a request, or a send after anything arrived (an answer, an acknowledgement) is
    /// never held. Default 5 µs (so 50 µs for the quiet case); zero turns corking off.
    pub cork: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            endpoint: EndpointConfig::default(),
            socket_buffer: 8 << 20,
            close_timeout: Duration::from_secs(2),
            answer_raw_ping: false,
            cork: Duration::from_micros(5),
        }
    }
}

/// A message received by a [`Transport`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Received {
    /// The sender's address.
    pub from: SocketAddr,
    /// The message.
    pub data: Bytes,
    /// Whether it came reliably.
    pub reliable: bool,
}

/// What [`Transport::close`] could not deliver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloseReport {
    /// Reliable messages still unacknowledged when the close timeout ran out; each also failed
    /// its `send` future with [`SendError::Closed`].
    pub undelivered: Vec<(SocketAddr, MessageId)>,
}

/// Errors of the tokio driver.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The socket could not be created or bound.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The message was refused or not acknowledged.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Where a queued message's outcome arrives: `Ok` once the peer acknowledged all of it.
pub type Outcome = oneshot::Receiver<Result<(), SendError>>;

/// How [`Transport::queue`] sends one message. `Default` (and [`new`](Self::new)): unordered,
/// acknowledged at once, outcome tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueOptions {
    /// Ordered on a channel, or not.
    pub delivery: Delivery,
    /// Ask the receiver to hold the acknowledgement a few milliseconds for something else to
    /// carry (an answer nobody waits on soon): see [`Endpoint::send_reliable_lazy`].
    pub lazy_ack: bool,
    /// Return a receiver of the outcome. Untracked messages register no waiter.
    pub track: bool,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Delivery> for QueueOptions {
    fn from(delivery: Delivery) -> Self {
        Self::new().delivery(delivery)
    }
}

impl QueueOptions {
    /// Unordered, acknowledged at once, tracked.
    pub const fn new() -> Self {
        Self {
            delivery: Delivery::Unordered,
            lazy_ack: false,
            track: true,
        }
    }

    /// Sets [`delivery`](Self::delivery).
    #[must_use]
    pub const fn delivery(mut self, delivery: Delivery) -> Self {
        self.delivery = delivery;
        self
    }

    /// Sets [`lazy_ack`](Self::lazy_ack).
    #[must_use]
    pub const fn lazy_ack(mut self, lazy: bool) -> Self {
        self.lazy_ack = lazy;
        self
    }

    /// Sets [`track`](Self::track).
    #[must_use]
    pub const fn track(mut self, track: bool) -> Self {
        self.track = track;
        self
    }
}

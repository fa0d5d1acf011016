//! Reliable UDP for mesh-link: a sans-IO protocol core and a thin tokio driver.
//!
//! # What this crate does not do
//! The protocol core, [`Endpoint`], does no I/O at all: no sockets, no clock, no OS
//! randomness. It takes datagrams and the current time as arguments and hands back datagrams to
//! send, the next instant it needs to be woken, and events. [`Transport`] (feature `tokio`, on by
//! default) is the thin driver that owns a `tokio::net::UdpSocket` and one timer. With the
//! `testing` feature, [`sim`] runs many endpoints over a simulated lossy network on a virtual
//! clock.
//!
//! # The protocol
//! - **Per-peer reliability**: every data frame has a sequence number; the receiver answers
//!   with cumulative + selective acknowledgements (up to 16 ranges), delayed up to
//!   `max_ack_delay` to be coalesced, at once when data arrives out of order. A message sent
//!   with [`Endpoint::send_reliable_lazy`] (an answer, whose requester's next message can carry
//!   the acknowledgement) may have its acknowledgement held up to 5 ms.
//! - **One retransmission timer per peer**, from measured RTT (RFC 6298: SRTT, RTTVAR, Karn's
//!   rule, exponential backoff between `min_rto` and `max_rto`), and **fast retransmit** when
//!   three later frames are acknowledged.
//! - **Congestion control**, NewReno-style in bytes: slow start from 32 datagrams, additive
//!   increase of one datagram per window, halving on loss once per recovery epoch, two
//!   datagrams after a timeout. At most 4096 frames in flight; a bounded per-peer send queue
//!   refuses with [`SendError::QueueFull`] when full (back-pressure). A [`Transport`] also keeps
//!   no more in flight than three quarters of its socket's granted receive buffer (a receive
//!   window: a fast sender does not overflow a slower receiver's socket), and acknowledges every
//!   2 MiB it reads under load.
//! - **Fragmentation** of messages up to `max_message_size` (16 MiB by default), reassembly in
//!   any order under per-peer and global byte caps; a fragment that does not fit is dropped
//!   unacknowledged, so the sender retries rather than losing it.
//! - **Exactly-once delivery** of reliable messages, [`Delivery::Unordered`] (no head-of-line
//!   blocking) or [`Delivery::Ordered`] per channel. Small messages never wait behind the
//!   fragments of a large one.
//! - **Packing**: frames for one peer share datagrams up to the path's MTU, optionally held
//!   for `flush_interval` to pack more. [`Transport`] also corks sends that follow one another
//!   within a few microseconds and lets its driver pack them ([`TransportConfig::cork`]); a
//!   lone send goes out at once from the sender's task.
//! - **Path-MTU discovery** (DPLPMTUD, RFC 8899): a session starts at the base size (`mtu`,
//!   1200 bytes) and probes upward to `max_mtu` (8972) or, to a peer on this host,
//!   `loopback_mtu` (32 000 on Linux) with pings padded to each candidate size, each sent alone
//!   and never counted as congestion; messages are cut to the largest size answered
//!   ([`PeerStats::mtu`]). When a path shrinks under a session (large datagrams lost for
//!   three retransmission timeouts in a row, a base-size ping answered before each of the last
//!   two), frames
//!   already cut larger cannot be resent smaller, so the session ends with
//!   [`DownReason::PathMtu`], what was in flight fails with it, and the next session starts at
//!   the base size and finds the new path. Silence alone is never taken for a smaller path.
//! - **Liveness**: idle peers are pinged every `keepalive_interval` (by default half of
//!   `peer_timeout`: the keepalive follows the timeout it must serve), an unanswered ping
//!   repeated after a retransmission timeout, doubling, and closer again as the timeout
//!   nears (at most half the time left); a peer that
//!   answers nothing, or acknowledges nothing while data is in flight, for `peer_timeout` is reported
//!   [`Event::PeerDown`], and every message pending to it [`Event::Failed`]. Nothing is lost
//!   silently.
//! - **Sessions**: each side names its session with a random id; a restarted peer is a new
//!   session, so no stale duplicate is ever delivered across a restart.
//!
//! # Example: two endpoints over tokio
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use mesh_rudp::{Transport, TransportConfig};
//!
//! let a = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
//! let b = Transport::bind("127.0.0.1:0".parse()?, TransportConfig::default()).await?;
//! a.send(b.local_addr(), &b"hello"[..]).await?;      // resolves once b acknowledged it
//! let msg = b.recv().await.expect("open");
//! assert_eq!((msg.from, &msg.data[..]), (a.local_addr(), &b"hello"[..]));
//! a.close().await;
//! b.close().await;
//! # Ok(()) }
//! ```
//!
//! The same exchange without any I/O is on [`Endpoint`].
//!
//! # Crate features
//! - `tokio` (default): [`Transport`], the tokio driver.
//! - `testing`: [`sim`], the deterministic network simulator, for this and other crates' tests.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod endpoint;
#[doc(hidden)]
pub mod fuzzing;
mod peer;
mod pool;
mod ranges;
mod rtt;
#[cfg(feature = "testing")]
pub mod sim;
mod time;
#[cfg(feature = "tokio")]
mod transport;
mod types;

pub use config::{EndpointConfig, DEFAULT_LOOPBACK_MTU, DEFAULT_MAX_MTU};
pub use endpoint::{Endpoint, StartTime, Transmit};
#[cfg(feature = "tokio")]
pub use transport::{
    CloseReport, Driver, Foreign, Intercept, InterceptFilter, Outcome, QueueOptions, Received,
    Tally, TallyFailure, TallyReport, Transport, TransportConfig, TransportError, TALLY_DETAILS,
};
pub use types::{
    ConfigError, Delivery, DownReason, EndpointStats, Event, MessageId, Payload, PeerStats,
    SendError,
};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

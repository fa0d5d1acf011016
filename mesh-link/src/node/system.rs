//! Handler ids reserved for mesh-link itself (65001..=65535), and what each does with a
//! message: a dispatch table the receive loop consults before the user's handlers.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use mesh_wire::ErrorCode;
use tracing::debug;

use super::serve::{Incoming, Job};
use super::{relay, MeshNode};
use crate::handler::Failure;

/// Answers with nothing: `mesh-link ping` and [`MeshNode::ping`](crate::MeshNode::ping).
pub const PING: u16 = 65_001;
/// Answers with the request's bytes, for tools that measure a node.
pub const ECHO: u16 = 65_002;
/// A relayed message (a relay tree's branch).
pub const RELAY: u16 = 65_003;
/// A relayed typed message: as [`RELAY`], its header also carrying the type fingerprint.
pub const RELAY_TYPED: u16 = 65_004;
/// Answers with the node's [`NodeReport`](crate::report::NodeReport) as JSON: `mesh-link
/// stats` and [`MeshNode::report_of`](crate::MeshNode::report_of). With a cluster key only
/// members can ask (every datagram is authenticated).
pub const STATS: u16 = 65_005;
/// Shared objects: requests to an owner, and its changes to watchers.
pub const SHARED: u16 = 65_010;

/// What a system handler made of a message.
pub(crate) enum Handled {
    /// Answer the request at once with this (not counted as a handler run).
    Answer(Result<Option<Bytes>, Failure>),
    /// Run this job, admitted like a handler run (it counts against the concurrency limit).
    Job(Job),
    /// Nothing more to do.
    Done,
}

type SystemFn = fn(&MeshNode, Incoming) -> Handled;

/// The system handlers.
const TABLE: [(u16, SystemFn); 6] = [
    (PING, ping),
    (ECHO, echo),
    (STATS, stats),
    (RELAY, relay),
    (RELAY_TYPED, relay),
    (SHARED, service),
];

/// The system handler for `id`, if it is one.
pub(crate) fn lookup(id: u16) -> Option<SystemFn> {
    TABLE.iter().find(|(i, _)| *i == id).map(|(_, f)| *f)
}

fn ping(_: &MeshNode, m: Incoming) -> Handled {
    match m.reply {
        Some(_) => Handled::Answer(Ok(None)),
        None => Handled::Done,
    }
}

fn echo(_: &MeshNode, m: Incoming) -> Handled {
    match m.reply {
        Some(_) => Handled::Answer(Ok(Some(m.payload))),
        None => Handled::Done,
    }
}

fn stats(node: &MeshNode, m: Incoming) -> Handled {
    if m.reply.is_none() {
        return Handled::Done;
    }
    match serde_json::to_vec(&node.report()) {
        Ok(json) => Handled::Answer(Ok(Some(Bytes::from(json)))),
        Err(e) => Handled::Answer(Err(Failure::new(
            ErrorCode::HANDLER_FAILED,
            format!("report not encoded: {e}"),
        ))),
    }
}

fn bad_request(message: &str) -> Handled {
    Handled::Answer(Err(Failure::new(ErrorCode::BAD_REQUEST, message)))
}

fn relay(node: &MeshNode, m: Incoming) -> Handled {
    let inner = &node.inner;
    let Some(to) = m.reply else {
        inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return Handled::Done;
    };
    if !inner.membership.node_exists(m.sender) {
        // Relays spread only among members: a stranger cannot make the mesh amplify its
        // message.
        return bad_request("relay from a node that is not a member");
    }
    let Some((header, fingerprint, data)) = relay::decode(m.handler, &m.payload) else {
        inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
        return bad_request("unreadable relay");
    };
    Handled::Job(relay::relay_job(
        node.clone(),
        to,
        m.sender,
        header,
        fingerprint,
        data,
    ))
}

/// A message for one of the node's services (shared objects).
fn service(node: &MeshNode, m: Incoming) -> Handled {
    let inner = &node.inner;
    let Some(s) = inner
        .services()
        .into_iter()
        .find(|(id, _)| *id == m.handler)
        .map(|(_, s)| s)
    else {
        return Handled::Done;
    };
    match (m.reply, s.on_message(m.sender, &m.payload)) {
        (Some(_), Some(Ok(bytes))) => Handled::Answer(Ok(Some(bytes))),
        (Some(_), Some(Err(e))) => {
            inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
            bad_request(&e)
        }
        (Some(_), None) => bad_request("a one-way message sent as a request"),
        (None, Some(Err(e))) => {
            inner.counters.malformed.fetch_add(1, Ordering::Relaxed);
            debug!(from = %m.sender, handler = m.handler, error = %e, "system message dropped");
            Handled::Done
        }
        (None, _) => Handled::Done,
    }
}

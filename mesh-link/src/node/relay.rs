//! Relay trees: how a message to many nodes is spread by the nodes themselves.
//!
//! The sender deals the targets round-robin into `limit` buckets; the head of each bucket gets
//! the message with the rest of its bucket, delivers it to its own handler, and spreads it to
//! the rest the same way. Each head answers with a [`RelayReport`] covering its whole
//! subtree, so the sender's report covers every node. A head that fails (not acknowledged,
//! down, timed out) has its share re-dealt by its parent, and every node drops a copy it
//! already had (by origin and fan-out id), so re-routing never runs a handler twice.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::future::{join_all, BoxFuture};
use futures_util::FutureExt;
use mesh_discovery::NodeKey;
use mesh_wire::ErrorCode;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::serve::{send_answer, Job, ReplyTo};
use super::{system, MeshNode};
use crate::handler::Failure;
use crate::{DeliveryError, RequestError};

/// Relayed copies remembered per node to drop duplicates.
pub(crate) const SEEN_CAPACITY: usize = 16_384;

/// What a relay carries besides the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RelayHeader {
    /// Names this fan-out, with `origin`.
    pub(crate) fanout: u64,
    /// The node that sent the message.
    pub(crate) origin: NodeKey,
    /// The handler to run.
    pub(crate) handler: u16,
    /// Branching factor.
    pub(crate) limit: u16,
    /// How long the receiver may take to report, in milliseconds.
    pub(crate) budget_ms: u32,
    /// The nodes the receiver spreads the message to.
    pub(crate) nodes: Vec<NodeKey>,
}

/// What a relay head reports for itself and its subtree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RelayReport {
    pub(crate) delivered: Vec<NodeKey>,
    pub(crate) failed: Vec<(NodeKey, DeliveryError)>,
}

/// A message spread through a relay tree: the handler it is for, a typed message's
/// fingerprint, and its bytes.
#[derive(Debug, Clone)]
pub(crate) struct Relayed {
    pub(crate) handler: u16,
    pub(crate) fingerprint: Option<u64>,
    pub(crate) data: Bytes,
}

/// The system handler a relay goes to: [`system::RELAY`] for an untyped message (as nodes of
/// every version read it), [`system::RELAY_TYPED`] for a typed one, whose header also carries
/// the fingerprint.
pub(crate) fn relay_handler(fingerprint: Option<u64>) -> u16 {
    if fingerprint.is_some() {
        system::RELAY_TYPED
    } else {
        system::RELAY
    }
}

/// `header length (u32 BE) ‖ header ‖ message`; the header is `(RelayHeader, fingerprint)`
/// for a typed message.
pub(crate) fn encode(
    header: &RelayHeader,
    fingerprint: Option<u64>,
    data: &[u8],
) -> Result<Bytes, mesh_wire::CodecError> {
    let h = match fingerprint {
        None => mesh_wire::codec::encode(header)?,
        Some(f) => mesh_wire::codec::encode(&(header, f))?,
    };
    let mut out = BytesMut::with_capacity(4 + h.len() + data.len());
    out.put_u32(h.len() as u32);
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    Ok(out.freeze())
}

/// The inverse of [`encode`] for a relay to `system_handler`; the message is a slice of
/// `payload`, not a copy.
pub(crate) fn decode(
    system_handler: u16,
    payload: &Bytes,
) -> Option<(RelayHeader, Option<u64>, Bytes)> {
    let len = u32::from_be_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let end = 4usize.checked_add(len)?;
    let bytes = payload.get(4..end)?;
    let (header, fingerprint) = if system_handler == system::RELAY_TYPED {
        let (h, f): (RelayHeader, u64) = mesh_wire::codec::decode(bytes).ok()?;
        (h, Some(f))
    } else {
        (mesh_wire::codec::decode(bytes).ok()?, None)
    };
    Some((header, fingerprint, payload.slice(end..)))
}

/// Deals `nodes` round-robin into at most `limit` non-empty buckets (order kept within each).
pub(crate) fn branch(nodes: &[NodeKey], limit: usize) -> Vec<Vec<NodeKey>> {
    let n = limit.clamp(1, nodes.len().max(1));
    let mut buckets: Vec<Vec<NodeKey>> = vec![Vec::new(); n.min(nodes.len())];
    for (i, k) in nodes.iter().enumerate() {
        buckets[i % n].push(*k);
    }
    buckets
}

/// The relayed copies a node has seen, oldest forgotten first.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    set: HashSet<(NodeKey, u64)>,
    order: VecDeque<(NodeKey, u64)>,
}

impl Seen {
    /// Records a copy; false if it was seen already.
    pub(crate) fn insert(&mut self, origin: NodeKey, fanout: u64) -> bool {
        if !self.set.insert((origin, fanout)) {
            return false;
        }
        self.order.push_back((origin, fanout));
        if self.order.len() > SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

impl MeshNode {
    /// Spreads a message to `targets` (none of them this node) through a relay tree.
    #[allow(
        clippy::too_many_arguments,
        reason = "an internal step with its whole context"
    )]
    pub(crate) fn fan_out(
        &self,
        message: Relayed,
        targets: Vec<NodeKey>,
        limit: usize,
        origin: NodeKey,
        fanout: u64,
        deadline: Instant,
    ) -> BoxFuture<'_, RelayReport> {
        async move {
            let mut report = RelayReport::default();
            let mut work = Vec::with_capacity(targets.len());
            for t in targets {
                if t == self.inner.local() || work.contains(&t) {
                    continue;
                }
                if self.inner.membership.node_exists(t) {
                    work.push(t);
                } else {
                    report.failed.push((t, DeliveryError::NotMember));
                }
            }
            // Each round loses at least one node (a failed head), so this ends.
            let rounds = work.len() + 1;
            for _ in 0..rounds {
                if work.is_empty() {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    report
                        .failed
                        .extend(work.drain(..).map(|k| (k, DeliveryError::Timeout)));
                    break;
                }
                let remaining = deadline - now;
                let child_budget =
                    (remaining.as_millis() as u64 * 4 / 5).min(u64::from(u32::MAX)) as u32;
                let buckets = branch(&work, limit);
                work.clear();
                let asks = buckets.into_iter().map(|bucket| {
                    let message = &message;
                    async move {
                        let head = bucket[0];
                        let rest = bucket[1..].to_vec();
                        let header = RelayHeader {
                            fanout,
                            origin,
                            handler: message.handler,
                            limit: limit as u16,
                            budget_ms: child_budget,
                            nodes: rest.clone(),
                        };
                        let system = relay_handler(message.fingerprint);
                        let r = match encode(&header, message.fingerprint, &message.data) {
                            Ok(body) => {
                                self.request_bytes(system, head, body, remaining, true)
                                    .await
                            }
                            Err(e) => Err(RequestError::Encode(e.to_string())),
                        };
                        (head, rest, r)
                    }
                });
                for (head, rest, r) in join_all(asks).await {
                    match r.map(|b| mesh_wire::codec::decode::<RelayReport>(&b)) {
                        Ok(Ok(sub)) => {
                            report.delivered.extend(sub.delivered);
                            report.failed.extend(sub.failed);
                        }
                        Ok(Err(e)) => {
                            warn!(%head, error = %e, "unreadable relay report; re-routing its share");
                            report.failed.push((
                                head,
                                DeliveryError::Unreachable(format!("bad relay report: {e}")),
                            ));
                            work.extend(rest);
                        }
                        Err(e) => {
                            debug!(%head, error = %e, "relay head failed; re-routing its share");
                            report.failed.push((head, delivery_error(e)));
                            work.extend(rest);
                        }
                    }
                }
            }
            report
        }
        .boxed()
    }
}

fn delivery_error(e: RequestError) -> DeliveryError {
    match e {
        RequestError::NotDelivered { error, .. } => error,
        RequestError::Timeout { .. } => DeliveryError::Timeout,
        RequestError::Stopped => DeliveryError::Stopped,
        other => DeliveryError::Unreachable(other.to_string()),
    }
}

/// A relay head's work: run the handler here (once per fan-out), spread to the rest, report.
pub(crate) fn relay_job(
    node: MeshNode,
    to: ReplyTo,
    from: NodeKey,
    header: RelayHeader,
    fingerprint: Option<u64>,
    data: Bytes,
) -> Job {
    async move {
        let inner = &node.inner;
        let local = inner.local();
        let fresh = inner.seen.lock().insert(header.origin, header.fanout);
        let here = if fresh {
            node.deliver_local(
                header.handler,
                fingerprint,
                data.clone(),
                true,
                Some(from),
                header.origin,
            )
        } else {
            Ok(())
        };
        let mut report = RelayReport::default();
        match here {
            Ok(()) => report.delivered.push(local),
            Err(e) => report.failed.push((local, e)),
        }
        if !header.nodes.is_empty() {
            if !inner.config.relay_delay.is_zero() {
                tokio::time::sleep(inner.config.relay_delay).await;
            }
            let deadline = Instant::now() + Duration::from_millis(u64::from(header.budget_ms));
            let message = Relayed {
                handler: header.handler,
                fingerprint,
                data,
            };
            let sub = node
                .fan_out(
                    message,
                    header.nodes,
                    usize::from(header.limit.max(1)),
                    header.origin,
                    header.fanout,
                    deadline,
                )
                .await;
            report.delivered.extend(sub.delivered);
            report.failed.extend(sub.failed);
        }
        let r = mesh_wire::codec::encode(&report)
            .map(|v| Some(Bytes::from(v)))
            .map_err(|e| Failure::new(ErrorCode::HANDLER_FAILED, e.to_string()));
        send_answer(&node, to, r).await;
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(n: u16) -> Vec<NodeKey> {
        (0..n)
            .map(|i| NodeKey::new("127.0.0.1".parse().unwrap(), 9000 + i))
            .collect()
    }

    #[test]
    fn branches_round_robin_without_empty_buckets() {
        let k = keys(5);
        let b = branch(&k, 2);
        assert_eq!(b, vec![vec![k[0], k[2], k[4]], vec![k[1], k[3]]]);
        assert_eq!(branch(&k[..2], 1), vec![vec![k[0], k[1]]]);
        assert_eq!(branch(&k[..2], 5).len(), 2);
        assert!(branch(&[], 3).is_empty());
        for n in 0..40u16 {
            for limit in 1..8 {
                let k = keys(n);
                let b = branch(&k, limit);
                assert!(b.iter().all(|x| !x.is_empty()));
                assert_eq!(b.iter().map(Vec::len).sum::<usize>(), k.len());
                assert!(b.len() <= limit);
            }
        }
    }

    #[test]
    fn header_round_trips_and_garbage_is_refused() {
        let h = RelayHeader {
            fanout: 7,
            origin: keys(1)[0],
            handler: 12,
            limit: 3,
            budget_ms: 900,
            nodes: keys(4),
        };
        for (system, fingerprint) in [(system::RELAY, None), (system::RELAY_TYPED, Some(7))] {
            let b = encode(&h, fingerprint, b"data").unwrap();
            let (h2, f2, d) = decode(system, &b).unwrap();
            assert_eq!((h2, f2), (h.clone(), fingerprint));
            assert_eq!(&d[..], b"data");
            for cut in 0..b.len() - 4 {
                assert!(decode(system, &b.slice(..cut)).is_none(), "cut at {cut}");
            }
        }
        let bad = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 1]);
        assert!(decode(system::RELAY, &bad).is_none());
    }

    #[test]
    fn seen_is_bounded_and_drops_duplicates() {
        let mut s = Seen::default();
        let o = keys(1)[0];
        assert!(s.insert(o, 1));
        assert!(!s.insert(o, 1));
        for i in 2..(SEEN_CAPACITY as u64 + 10) {
            s.insert(o, i);
        }
        assert!(s.set.len() <= SEEN_CAPACITY);
        assert!(s.insert(o, 1), "the oldest is forgotten");
    }

    /// The fuzz target `mesh_message` starts from these seeds; they must stay readable.
    /// Rewrite them with `MESH_LINK_WRITE_SEEDS=1 cargo test -p mesh-link --lib seeds`.
    #[test]
    fn fuzz_seeds_are_readable() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/mesh_message");
        let header = RelayHeader {
            fanout: 0x1234_5678,
            origin: keys(1)[0],
            handler: 7,
            limit: 2,
            budget_ms: 8000,
            nodes: keys(3),
        };
        let relay = encode(&header, None, b"hello").unwrap();
        let report = mesh_wire::codec::encode(&RelayReport {
            delivered: keys(2),
            failed: vec![
                (keys(3)[2], DeliveryError::NotMember),
                (keys(1)[0], DeliveryError::Unreachable("x".into())),
            ],
        })
        .unwrap();
        let props = mesh_shared::Properties::new()
            .number("counter", 1.0, 0.0..=10.0)
            .map("m")
            .value("v", "x");
        let shared = [
            (
                "shared_create",
                mesh_shared::Message::Create {
                    id: 7,
                    props,
                    ttl_ms: 1000,
                },
            ),
            (
                "shared_apply",
                mesh_shared::Message::Apply {
                    id: 7,
                    op: mesh_shared::Op::Inc {
                        prop: "counter".into(),
                        delta: 2.0,
                    },
                },
            ),
            (
                "shared_delta",
                mesh_shared::Message::Delta {
                    id: 7,
                    version: 3,
                    change: mesh_shared::Change::Put {
                        prop: "m".into(),
                        key: "k".into(),
                        value: serde_json::json!({"a": [1, 2]}).into(),
                    },
                },
            ),
        ];
        if std::env::var_os("MESH_LINK_WRITE_SEEDS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("relay"), &relay).unwrap();
            std::fs::write(dir.join("report"), &report).unwrap();
            for (name, m) in &shared {
                std::fs::write(dir.join(name), mesh_wire::codec::encode(m).unwrap()).unwrap();
            }
        }
        for (name, m) in &shared {
            let seed = std::fs::read(dir.join(name)).unwrap();
            let back: mesh_shared::Message = mesh_wire::codec::decode(&seed).unwrap();
            assert_eq!(&back, m);
        }
        let relay_seed = Bytes::from(std::fs::read(dir.join("relay")).unwrap());
        assert_eq!(decode(system::RELAY, &relay_seed).unwrap().0, header);
        let report_seed = std::fs::read(dir.join("report")).unwrap();
        assert!(mesh_wire::codec::decode::<RelayReport>(&report_seed).is_ok());
    }
}

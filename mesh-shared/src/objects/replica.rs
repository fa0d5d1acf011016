//! The replica's side: following an owner's changes in version order, resyncing when some
//! went missing, and letting go when the owner does.

use std::net::SocketAddr;
use std::time::Instant;

use serde_json::Value;
use tracing::debug;

use super::*;
use crate::model::{apply_change, Change, Properties, Rejected};
use crate::wire::{Message, Mid, RemoveReason, Reply};

impl Objects {
    /// The owner's reply to a request this node sent about `mid`. Returns the outcome for the
    /// caller: the version a change became, or why it was refused.
    pub fn reply(
        &mut self,
        now: Instant,
        mid: Mid,
        asked: &Message,
        reply: Reply,
    ) -> Result<u64, Rejected> {
        match (asked, reply) {
            (_, Reply::Rejected(Rejected::NotFound)) => {
                // The owner does not have it (removed, expired, restarted): neither do we.
                if self.replicas.remove(&mid).is_some() {
                    self.event(mid, Event::Removed(RemoveReason::Removed));
                }
                Err(Rejected::NotFound)
            }
            (_, Reply::Rejected(r)) => Err(r),
            (Message::Create { props, ttl_ms, .. }, Reply::Created) => {
                self.room()?;
                self.replicas
                    .insert(mid, new_replica(props.clone(), 0, *ttl_ms));
                Ok(0)
            }
            (
                Message::Get { .. },
                Reply::Snapshot {
                    props,
                    version,
                    ttl_ms,
                },
            ) => {
                self.snapshot(now, mid, props, version, ttl_ms)?;
                Ok(version)
            }
            (Message::Apply { .. }, Reply::Applied { version, change }) => {
                self.receive_change(now, mid, version, change);
                Ok(version)
            }
            (Message::Remove { .. }, Reply::Removed) => {
                if self.replicas.remove(&mid).is_some() {
                    self.event(mid, Event::Removed(RemoveReason::Removed));
                }
                Ok(0)
            }
            (asked, other) => {
                debug!(?asked, ?other, "reply does not match the request");
                Err(Rejected::Invalid("reply does not match the request".into()))
            }
        }
    }

    /// A snapshot from the owner: a new replica, or a resync of one that missed changes (then
    /// each property that differs is reported once).
    pub fn snapshot(
        &mut self,
        now: Instant,
        mid: Mid,
        props: Properties,
        version: u64,
        ttl_ms: u64,
    ) -> Result<(), Rejected> {
        props.validate()?;
        let Some(r) = self.replicas.get_mut(&mid) else {
            self.room()?;
            self.replicas
                .insert(mid, new_replica(props, version, ttl_ms));
            return Ok(());
        };
        r.resyncing = false;
        if version <= r.version {
            return Ok(());
        }
        let changed: Vec<(String, Value)> = props
            .iter()
            .filter(|(k, p)| r.props.get(k) != Some(*p))
            .map(|(k, p)| (k.to_owned(), p.to_value()))
            .collect();
        r.props = props;
        r.version = version;
        r.pending = r.pending.split_off(&(version + 1));
        r.gap_since = None;
        for (prop, value) in changed {
            self.event(
                mid,
                Event::Update {
                    prop,
                    value,
                    version,
                },
            );
        }
        self.drain_pending(now, mid);
        Ok(())
    }

    /// A change for a replica, from a delta or from the reply to this node's own request:
    /// applied in version order, once.
    pub(super) fn receive_change(&mut self, now: Instant, mid: Mid, version: u64, change: Change) {
        let max_pending = self.config.max_pending;
        let Some(r) = self.replicas.get_mut(&mid) else {
            return;
        };
        if version <= r.version || r.pending.contains_key(&version) {
            return; // a duplicate
        }
        r.pending.insert(version, change);
        if r.pending.len() > max_pending {
            // Too far behind to catch up change by change.
            r.pending.clear();
            r.gap_since = None;
            if !r.resyncing {
                r.resyncing = true;
                self.out.push_back(Output::Resync { mid });
            }
            return;
        }
        self.drain_pending(now, mid);
    }

    /// Applies the changes that follow the replica's version, in order.
    pub(super) fn drain_pending(&mut self, now: Instant, mid: Mid) {
        let Some(r) = self.replicas.get_mut(&mid) else {
            return;
        };
        let mut events = Vec::new();
        while let Some(entry) = r.pending.first_entry() {
            if *entry.key() != r.version + 1 {
                break;
            }
            let (version, change) = entry.remove_entry();
            if let Err(e) = apply_change(&mut r.props, &change) {
                // The owner validated it; a change that does not fit means our copy is wrong.
                debug!(%mid, error = %e, "change does not fit the replica; resyncing");
                r.pending.clear();
                if !r.resyncing {
                    r.resyncing = true;
                    self.out.push_back(Output::Resync { mid });
                }
                break;
            }
            r.version = version;
            let value = r
                .props
                .get(change.prop())
                .map(crate::Property::to_value)
                .unwrap_or_default();
            events.push(Event::Update {
                prop: change.prop().to_owned(),
                value,
                version,
            });
        }
        r.gap_since = if r.pending.is_empty() {
            None
        } else {
            r.gap_since.or(Some(now))
        };
        if let Some(t) = r.gap_since {
            self.note_deadline(t + self.config.gap_timeout);
        }
        for e in events {
            self.event(mid, e);
        }
    }

    /// A node left the mesh: it watches nothing of ours any more, and what it owned is gone.
    pub fn node_left(&mut self, node: SocketAddr) {
        for o in self.owned.values_mut() {
            o.watchers.remove(&node);
        }
        let lost: Vec<Mid> = self
            .replicas
            .keys()
            .filter(|m| m.owner == node)
            .copied()
            .collect();
        for mid in lost {
            self.replicas.remove(&mid);
            self.event(mid, Event::Removed(RemoveReason::OwnerLost));
        }
    }

    /// The transport's session with `node` ended (it timed out, closed or restarted): messages
    /// between us may have been lost. Every replica it owns resyncs; a request that fails
    /// because the owner is gone ends with [`node_left`](Self::node_left).
    pub fn peer_reset(&mut self, node: SocketAddr) {
        let mut resync = Vec::new();
        for (mid, r) in &mut self.replicas {
            if mid.owner == node && !r.resyncing {
                r.resyncing = true;
                resync.push(*mid);
            }
        }
        for mid in resync {
            self.out.push_back(Output::Resync { mid });
        }
    }

    /// A resync request failed (the owner did not answer): it may be asked again.
    pub fn resync_failed(&mut self, now: Instant, mid: Mid) {
        if let Some(r) = self.replicas.get_mut(&mid) {
            r.resyncing = false;
            let t = *r.gap_since.get_or_insert(now);
            self.note_deadline(t + self.config.gap_timeout);
        }
    }
}

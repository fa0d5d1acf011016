//! The owner's side: requests about objects this node owns, and the changes it orders.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::model::{apply_op, Change, Op, Properties, Rejected};
use crate::wire::{Message, Mid, RemoveReason, Reply};

impl Objects {
    /// A request from `from` (another node) about an object this node owns. Returns the
    /// reply to send back, or `None` for a message that wants none.
    pub fn handle(&mut self, now: Instant, from: SocketAddr, message: Message) -> Option<Reply> {
        let reply = match message {
            Message::Create { id, props, ttl_ms } => {
                let ttl = Duration::from_millis(ttl_ms);
                match props
                    .validate()
                    .and_then(|()| self.insert_owned(now, id, props, ttl, BTreeSet::from([from])))
                {
                    Ok(()) => Reply::Created,
                    Err(r) => Reply::Rejected(r),
                }
            }
            Message::Get { id } => match self.owned.get_mut(&id) {
                None => Reply::Rejected(Rejected::NotFound),
                Some(o)
                    if o.watchers.len() >= self.config.max_watchers
                        && !o.watchers.contains(&from) =>
                {
                    Reply::Rejected(Rejected::TooMany)
                }
                Some(o) => {
                    o.watchers.insert(from);
                    Reply::Snapshot {
                        props: o.props.clone(),
                        version: o.version,
                        ttl_ms: o.ttl.as_millis().min(u64::MAX as u128) as u64,
                    }
                }
            },
            Message::Apply { id, op } => match self.apply_owned(now, id, from, &op) {
                Ok((version, change)) => Reply::Applied { version, change },
                Err(r) => Reply::Rejected(r),
            },
            Message::Remove { id } => {
                match self.remove_owned(id, RemoveReason::Removed, Some(from)) {
                    Ok(()) => Reply::Removed,
                    Err(r) => Reply::Rejected(r),
                }
            }
            Message::Unwatch { id } => {
                if let Some(o) = self.owned.get_mut(&id) {
                    o.watchers.remove(&from);
                }
                return None;
            }
            Message::Delta {
                id,
                version,
                change,
            } => {
                let mid = Mid { id, owner: from };
                if self.replicas.contains_key(&mid) {
                    self.receive_change(now, mid, version, change);
                } else {
                    // Not ours (any more): tell the owner to stop.
                    self.out.push_back(Output::Send {
                        to: from,
                        message: Message::Unwatch { id },
                    });
                }
                return None;
            }
            Message::Gone { id, reason } => {
                let mid = Mid { id, owner: from };
                if self.replicas.remove(&mid).is_some() {
                    self.event(mid, Event::Removed(reason));
                }
                return None;
            }
        };
        Some(reply)
    }

    /// Holds a new object this node owns.
    pub(super) fn insert_owned(
        &mut self,
        now: Instant,
        id: u128,
        props: Properties,
        ttl: Duration,
        watchers: BTreeSet<SocketAddr>,
    ) -> Result<(), Rejected> {
        self.room()?;
        if self.owned.contains_key(&id) {
            return Err(Rejected::Exists);
        }
        self.owned.insert(
            id,
            Owned {
                props,
                version: 0,
                ttl,
                expires: now + ttl,
                watchers,
            },
        );
        self.note_deadline(now + ttl);
        Ok(())
    }

    /// Applies a change to an owned object: a new version, reported here, sent to every
    /// watcher but the one who asked (it gets the reply instead).
    pub(super) fn apply_owned(
        &mut self,
        now: Instant,
        id: u128,
        from: SocketAddr,
        op: &Op,
    ) -> Result<(u64, Change), Rejected> {
        let o = self.owned.get_mut(&id).ok_or(Rejected::NotFound)?;
        let change = apply_op(&mut o.props, op)?;
        o.version += 1;
        o.expires = now + o.ttl;
        let version = o.version;
        let value = o
            .props
            .get(change.prop())
            .map(crate::Property::to_value)
            .unwrap_or_default();
        for &w in &o.watchers {
            if w != from {
                self.out.push_back(Output::Send {
                    to: w,
                    message: Message::Delta {
                        id,
                        version,
                        change: change.clone(),
                    },
                });
            }
        }
        let mid = Mid {
            id,
            owner: self.local,
        };
        self.event(
            mid,
            Event::Update {
                prop: change.prop().to_owned(),
                value,
                version,
            },
        );
        Ok((version, change))
    }

    /// Removes an owned object, telling every watcher but `except` (who asked).
    pub(super) fn remove_owned(
        &mut self,
        id: u128,
        reason: RemoveReason,
        except: Option<SocketAddr>,
    ) -> Result<(), Rejected> {
        let o = self.owned.remove(&id).ok_or(Rejected::NotFound)?;
        for w in o.watchers {
            if Some(w) != except {
                self.out.push_back(Output::Send {
                    to: w,
                    message: Message::Gone { id, reason },
                });
            }
        }
        let mid = Mid {
            id,
            owner: self.local,
        };
        self.event(mid, Event::Removed(reason));
        Ok(())
    }
}

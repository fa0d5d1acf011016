//! The state machine: the objects this node owns, the replicas it holds, and what it must
//! send and report. Here the state, the creator's side and the timers; [`owner`] is what an
//! owner does with requests, [`replica`] how a replica follows its owner.

mod owner;
mod replica;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::model::{precheck, Change, Op, Properties, Rejected};
#[cfg(doc)]
use crate::wire::Reply;
use crate::wire::{Message, Mid, RemoveReason};

/// Limits and timings of [`Objects`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Objects owned plus replicas held. Default 100 000.
    pub max_objects: usize,
    /// Watchers per owned object. Default 4096.
    pub max_watchers: usize,
    /// Out-of-order changes a replica holds while it waits for a missing one. Default 1024;
    /// past it, the replica resyncs.
    pub max_pending: usize,
    /// How long a replica waits for a missing change before it resyncs. Default 1 s.
    pub gap_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_objects: 100_000,
            max_watchers: 4096,
            max_pending: 1024,
            gap_timeout: Duration::from_secs(1),
        }
    }
}

/// Something that happened to an object, reported once per node.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A property changed: its new value, and the object's version after the change.
    Update {
        /// The property.
        prop: String,
        /// Its value now.
        value: Value,
        /// The object's version.
        version: u64,
    },
    /// The object is gone from this node; no event follows.
    Removed(RemoveReason),
}

/// What the node must do.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Output {
    /// Send `message` to `to` reliably (no answer expected).
    Send {
        /// The node.
        to: SocketAddr,
        /// The message.
        message: Message,
    },
    /// Report an event on an object to this node's users.
    Event {
        /// The object.
        mid: Mid,
        /// What happened.
        event: Event,
    },
    /// A replica missed changes: ask the owner for a [`Message::Get`] snapshot and pass the
    /// answer to [`Objects::snapshot`].
    Resync {
        /// The object.
        mid: Mid,
    },
}

/// What [`Objects::prepare`] decided.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Prepared {
    /// This node owns the object: the change is applied (and already reported).
    Applied {
        /// The version after the change.
        version: u64,
    },
    /// Send this request to the owner, and pass its [`Reply`] to [`Objects::reply`].
    Ask(Message),
}

#[derive(Debug)]
struct Owned {
    props: Properties,
    version: u64,
    ttl: Duration,
    expires: Instant,
    watchers: BTreeSet<SocketAddr>,
}

#[derive(Debug)]
struct Replica {
    props: Properties,
    version: u64,
    ttl_ms: u64,
    /// Changes that arrived ahead of a missing one.
    pending: BTreeMap<u64, Change>,
    /// Since when a change is missing.
    gap_since: Option<Instant>,
    resyncing: bool,
}

/// Every shared object one node knows: those it owns (it orders their changes) and the
/// replicas it watches. Sans-IO: it is told what arrives and what time it is, and says what
/// to send and report through [`poll_output`](Self::poll_output).
///
/// ```
/// use std::time::{Duration, Instant};
/// use mesh_shared::{Event, Objects, Op, Output, Prepared, Properties};
///
/// let owner_addr = "127.0.0.1:8100".parse().unwrap();
/// let mut owner = Objects::new(owner_addr, Default::default());
/// let now = Instant::now();
/// let props = Properties::new().number("counter", 0.0, 0.0..=100.0);
/// let (mid, ask) = owner.create(now, 7, props, Duration::from_secs(60), owner_addr).unwrap();
/// assert!(ask.is_none()); // created here, nothing to send
/// let op = Op::Inc { prop: "counter".into(), delta: 10.0 };
/// assert_eq!(owner.prepare(now, mid, op).unwrap(), Prepared::Applied { version: 1 });
/// assert_eq!(owner.value(mid, "counter"), Some(serde_json::json!(10.0)));
/// assert!(matches!(owner.poll_output(), Some(Output::Event { event: Event::Update { version: 1, .. }, .. })));
/// ```
#[derive(Debug)]
pub struct Objects {
    local: SocketAddr,
    config: Config,
    owned: HashMap<u128, Owned>,
    replicas: HashMap<Mid, Replica>,
    out: VecDeque<Output>,
    /// The earliest timer set since [`take_new_deadline`](Self::take_new_deadline) was last
    /// called.
    new_deadline: Option<Instant>,
}

impl Objects {
    /// A node at `local` with no objects.
    pub fn new(local: SocketAddr, config: Config) -> Self {
        Self {
            local,
            config,
            owned: HashMap::new(),
            replicas: HashMap::new(),
            out: VecDeque::new(),
            new_deadline: None,
        }
    }

    /// Objects owned plus replicas held.
    pub fn len(&self) -> usize {
        self.owned.len() + self.replicas.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this node holds the object (owned or as a replica).
    pub fn contains(&self, mid: Mid) -> bool {
        self.props(mid).is_some()
    }

    /// The object's properties as this node sees them.
    pub fn props(&self, mid: Mid) -> Option<&Properties> {
        if mid.owner == self.local {
            self.owned.get(&mid.id).map(|o| &o.props)
        } else {
            self.replicas.get(&mid).map(|r| &r.props)
        }
    }

    /// The object's version as this node sees it.
    pub fn version(&self, mid: Mid) -> Option<u64> {
        if mid.owner == self.local {
            self.owned.get(&mid.id).map(|o| o.version)
        } else {
            self.replicas.get(&mid).map(|r| r.version)
        }
    }

    /// One property's value as this node sees it.
    pub fn value(&self, mid: Mid, prop: &str) -> Option<Value> {
        self.props(mid)?.get(prop).map(crate::Property::to_value)
    }

    /// Watchers of an object this node owns.
    pub fn watchers(&self, id: u128) -> Vec<SocketAddr> {
        self.owned
            .get(&id)
            .map(|o| o.watchers.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn event(&mut self, mid: Mid, event: Event) {
        self.out.push_back(Output::Event { mid, event });
    }

    fn room(&self) -> Result<(), Rejected> {
        if self.len() >= self.config.max_objects {
            Err(Rejected::TooMany)
        } else {
            Ok(())
        }
    }

    // ----- the creator's side -----------------------------------------------------------

    /// Creates an object owned by `owner` with id `id` (random, from the caller). If this
    /// node is the owner it is created at once; otherwise send the returned request to the
    /// owner and pass its reply to [`reply`](Self::reply).
    pub fn create(
        &mut self,
        now: Instant,
        id: u128,
        props: Properties,
        ttl: Duration,
        owner: SocketAddr,
    ) -> Result<(Mid, Option<Message>), Rejected> {
        props.validate()?;
        let mid = Mid { id, owner };
        if owner == self.local {
            self.insert_owned(now, id, props, ttl, BTreeSet::new())?;
            return Ok((mid, None));
        }
        let ttl_ms = ttl.as_millis().min(u64::MAX as u128) as u64;
        Ok((mid, Some(Message::Create { id, props, ttl_ms })))
    }

    /// Asks for a replica of an object owned elsewhere: send the returned request to the
    /// owner and pass its reply to [`reply`](Self::reply). `None` if this node already holds
    /// the object.
    pub fn get(&self, mid: Mid) -> Option<Message> {
        (!self.contains(mid)).then_some(Message::Get { id: mid.id })
    }

    /// Prepares a change: applied at once on the owner, or a request for it.
    pub fn prepare(&mut self, now: Instant, mid: Mid, op: Op) -> Result<Prepared, Rejected> {
        if mid.owner == self.local {
            let (version, _) = self.apply_owned(now, mid.id, self.local, &op)?;
            return Ok(Prepared::Applied { version });
        }
        let r = self.replicas.get(&mid).ok_or(Rejected::NotFound)?;
        precheck(&r.props, &op)?;
        Ok(Prepared::Ask(Message::Apply { id: mid.id, op }))
    }

    /// Removes an object everywhere: at once if this node owns it; otherwise send the
    /// returned request to the owner and pass its reply to [`reply`](Self::reply).
    pub fn remove(&mut self, mid: Mid) -> Result<Option<Message>, Rejected> {
        if mid.owner == self.local {
            self.remove_owned(mid.id, RemoveReason::Removed, None)?;
            return Ok(None);
        }
        Ok(Some(Message::Remove { id: mid.id }))
    }

    /// Stops watching a replica (its last user let go). Returns the notice for the owner.
    pub fn release(&mut self, mid: Mid) -> Option<Message> {
        if mid.owner == self.local {
            return None;
        }
        self.replicas
            .remove(&mid)
            .map(|_| Message::Unwatch { id: mid.id })
    }

    // ----- the owner's side -------------------------------------------------------------
}

impl Objects {
    /// This node is leaving: every object it owns is removed everywhere (owner lost, reported
    /// here too), and every replica it holds is released without an event.
    pub fn shutdown(&mut self) {
        let owned: Vec<u128> = self.owned.keys().copied().collect();
        for id in owned {
            let _ = self.remove_owned(id, RemoveReason::OwnerLost, None);
        }
        let replicas: Vec<Mid> = self.replicas.keys().copied().collect();
        for mid in replicas {
            if let Some(m) = self.release(mid) {
                self.out.push_back(Output::Send {
                    to: mid.owner,
                    message: m,
                });
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let expiry = self.owned.values().map(|o| o.expires).min();
        let gap = self
            .replicas
            .values()
            .filter_map(|r| r.gap_since.map(|t| t + self.config.gap_timeout))
            .min();
        [expiry, gap].into_iter().flatten().min()
    }

    /// The earliest timer set since the last call (an object created, a replica that started
    /// waiting for a missing change), if any: a caller that sleeps until
    /// [`poll_timeout`](Self::poll_timeout) must wake sooner when this is earlier. Other
    /// changes only move timers later, so a sleeper that wakes early merely finds nothing due.
    pub fn take_new_deadline(&mut self) -> Option<Instant> {
        self.new_deadline.take()
    }

    fn note_deadline(&mut self, at: Instant) {
        self.new_deadline = Some(self.new_deadline.map_or(at, |d| d.min(at)));
    }

    /// Expires owned objects unchanged for their TTL (everywhere), and resyncs replicas whose
    /// missing change did not come.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<u128> = self
            .owned
            .iter()
            .filter(|(_, o)| o.expires <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let _ = self.remove_owned(id, RemoveReason::Expired, None);
        }
        let gap_timeout = self.config.gap_timeout;
        let mut resync = Vec::new();
        for (mid, r) in &mut self.replicas {
            if r.gap_since.is_some_and(|t| t + gap_timeout <= now) {
                r.gap_since = Some(now);
                resync.push(*mid);
            }
        }
        for mid in resync {
            self.out.push_back(Output::Resync { mid });
        }
    }

    /// The TTL, in milliseconds, of an object as this node knows it.
    pub fn ttl_ms(&self, mid: Mid) -> Option<u64> {
        if mid.owner == self.local {
            self.owned
                .get(&mid.id)
                .map(|o| o.ttl.as_millis().min(u64::MAX as u128) as u64)
        } else {
            self.replicas.get(&mid).map(|r| r.ttl_ms)
        }
    }
}

fn new_replica(props: Properties, version: u64, ttl_ms: u64) -> Replica {
    Replica {
        props,
        version,
        ttl_ms,
        pending: BTreeMap::new(),
        gap_since: None,
        resyncing: false,
    }
}

//! What a shared object holds, the changes that can be asked of it, and the rules that decide.

use std::collections::BTreeMap;
use std::ops::{Bound, RangeBounds};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use crate::wire::Json;

/// One property of a shared object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Property {
    /// A number kept within `[min, max]` (either bound optional): `inc` and `set` that would
    /// leave it are rejected, never clamped.
    Number {
        /// The value.
        value: f64,
        /// Lower bound, if any.
        min: Option<f64>,
        /// Upper bound, if any.
        max: Option<f64>,
    },
    /// String keys to any serde value, changed a key at a time by `add` and `del`.
    Map {
        /// The entries.
        entries: BTreeMap<String, Json>,
        /// Most keys it may hold, if bounded.
        max_keys: Option<usize>,
    },
    /// Any serde value, replaced whole by `set`.
    Value(Json),
}

impl Property {
    /// The property's value as JSON (a number, an object, or the value).
    pub fn to_value(&self) -> Value {
        match self {
            Property::Number { value, .. } => {
                serde_json::Number::from_f64(*value).map_or(Value::Null, Value::Number)
            }
            Property::Map { entries, .. } => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.clone(), v.0.clone()))
                    .collect(),
            ),
            Property::Value(v) => v.0.clone(),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Property::Number { .. } => Kind::Number,
            Property::Map { .. } => Kind::Map,
            Property::Value(_) => Kind::Value,
        }
    }
}

/// The kind of a property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Kind {
    /// [`Property::Number`].
    Number,
    /// [`Property::Map`].
    Map,
    /// [`Property::Value`].
    Value,
}

/// The properties of a new shared object, built by name:
///
/// ```
/// use mesh_shared::Properties;
/// let p = Properties::new()
///     .number("counter", 0.0, 0.0..=100.0)
///     .map("members")
///     .value("name", "Foobar");
/// assert!(p.validate().is_ok());
/// assert!(Properties::new().number("n", 5.0, 0.0..=1.0).validate().is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Properties(pub(crate) BTreeMap<String, Property>);

fn bound(b: Bound<&f64>) -> Option<f64> {
    match b {
        Bound::Included(x) | Bound::Excluded(x) => Some(*x),
        Bound::Unbounded => None,
    }
}

impl Properties {
    /// No properties yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A number with bounds from a range (`0.0..=100.0`, `0.0..`, `..`; the ends count as
    /// included).
    pub fn number(mut self, name: &str, value: f64, range: impl RangeBounds<f64>) -> Self {
        let (min, max) = (bound(range.start_bound()), bound(range.end_bound()));
        self.0
            .insert(name.to_owned(), Property::Number { value, min, max });
        self
    }

    /// An empty map.
    pub fn map(self, name: &str) -> Self {
        self.map_with(name, BTreeMap::new(), None)
    }

    /// A map with initial entries and an optional key limit (the original discarded initial
    /// entries).
    pub fn map_with(
        mut self,
        name: &str,
        entries: BTreeMap<String, Value>,
        max_keys: Option<usize>,
    ) -> Self {
        let entries = entries.into_iter().map(|(k, v)| (k, Json(v))).collect();
        self.0
            .insert(name.to_owned(), Property::Map { entries, max_keys });
        self
    }

    /// A plain value.
    pub fn value(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.0
            .insert(name.to_owned(), Property::Value(Json(value.into())));
        self
    }

    /// Checks every initial value against its bounds.
    pub fn validate(&self) -> Result<(), Rejected> {
        for (name, p) in &self.0 {
            match p {
                Property::Number { value, min, max } => {
                    check_number(name, *value, *min, *max)?;
                    if let (Some(lo), Some(hi)) = (min, max) {
                        if lo > hi {
                            return Err(Rejected::Invalid(format!(
                                "{name}: min {lo} is above max {hi}"
                            )));
                        }
                    }
                }
                Property::Map { entries, max_keys } => {
                    if max_keys.is_some_and(|m| entries.len() > m) {
                        return Err(Rejected::MapFull {
                            prop: name.clone(),
                            max_keys: max_keys.unwrap_or_default(),
                        });
                    }
                }
                Property::Value(_) => {}
            }
        }
        Ok(())
    }

    /// The properties by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Property)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// One property.
    pub fn get(&self, name: &str) -> Option<&Property> {
        self.0.get(name)
    }

    /// How many properties.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn check_number(prop: &str, v: f64, min: Option<f64>, max: Option<f64>) -> Result<(), Rejected> {
    if !v.is_finite() || min.is_some_and(|m| v < m) || max.is_some_and(|m| v > m) {
        return Err(Rejected::OutOfBounds {
            prop: prop.to_owned(),
            value: v,
            min,
            max,
        });
    }
    Ok(())
}

/// A change asked of a shared object: an intent, applied by the owner to its current state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Op {
    /// Add `delta` to a number.
    Inc {
        /// The property.
        prop: String,
        /// The amount (negative to decrease).
        delta: f64,
    },
    /// Replace a property's value (a number within bounds, an object for a map, anything for a
    /// value).
    Set {
        /// The property.
        prop: String,
        /// The new value.
        value: Json,
    },
    /// Put one key of a map.
    Add {
        /// The map.
        prop: String,
        /// The key.
        key: String,
        /// The value.
        value: Json,
    },
    /// Remove one key of a map.
    Del {
        /// The map.
        prop: String,
        /// The key.
        key: String,
    },
}

impl Op {
    /// The property it changes.
    pub fn prop(&self) -> &str {
        match self {
            Op::Inc { prop, .. }
            | Op::Set { prop, .. }
            | Op::Add { prop, .. }
            | Op::Del { prop, .. } => prop,
        }
    }
}

/// What an applied [`Op`] did, as the owner tells replicas: the resulting state of what it
/// touched, so applying it twice is harmless.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Change {
    /// A number's new value.
    Number {
        /// The property.
        prop: String,
        /// Its value now.
        value: f64,
    },
    /// A value's new value.
    Value {
        /// The property.
        prop: String,
        /// Its value now.
        value: Json,
    },
    /// A map's whole new contents (after `set`).
    Map {
        /// The property.
        prop: String,
        /// Its entries now.
        entries: BTreeMap<String, Json>,
    },
    /// A map key's new value.
    Put {
        /// The map.
        prop: String,
        /// The key.
        key: String,
        /// Its value now.
        value: Json,
    },
    /// A map key removed.
    Removed {
        /// The map.
        prop: String,
        /// The key.
        key: String,
    },
}

impl Change {
    /// The property it changed.
    pub fn prop(&self) -> &str {
        match self {
            Change::Number { prop, .. }
            | Change::Value { prop, .. }
            | Change::Map { prop, .. }
            | Change::Put { prop, .. }
            | Change::Removed { prop, .. } => prop,
        }
    }
}

/// Why a change or a creation was refused.
#[derive(Debug, Clone, PartialEq, Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Rejected {
    /// A number would leave its bounds (or is not finite).
    #[error("{prop}: {value} is outside [{}, {}]", fmt_bound(*.min), fmt_bound(*.max))]
    OutOfBounds {
        /// The property.
        prop: String,
        /// The value it would have had.
        value: f64,
        /// Its lower bound.
        min: Option<f64>,
        /// Its upper bound.
        max: Option<f64>,
    },
    /// The property is of another kind than the change needs.
    #[error("{prop} is a {actual:?} property, not a {expected:?}")]
    WrongKind {
        /// The property.
        prop: String,
        /// What the change needs.
        expected: Kind,
        /// What it is.
        actual: Kind,
    },
    /// No property of that name.
    #[error("no property {0:?}")]
    NoSuchProperty(String),
    /// `del` of a key the map does not have.
    #[error("{prop} has no key {key:?}")]
    NoSuchKey {
        /// The map.
        prop: String,
        /// The key.
        key: String,
    },
    /// The map holds as many keys as it may.
    #[error("{prop} already holds its maximum of {max_keys} keys")]
    MapFull {
        /// The map.
        prop: String,
        /// Its limit.
        max_keys: usize,
    },
    /// The object does not exist (never did, was removed, or expired).
    #[error("no such shared object")]
    NotFound,
    /// An object with this id exists already.
    #[error("a shared object with this id exists already")]
    Exists,
    /// Too many objects on the owner.
    #[error("the owner holds as many shared objects as it may")]
    TooMany,
    /// The creation is invalid (for example `min` above `max`).
    #[error("invalid: {0}")]
    Invalid(String),
}

fn fmt_bound(b: Option<f64>) -> String {
    b.map_or_else(|| "unbounded".to_owned(), |x| x.to_string())
}

/// Applies `op` to `props`, or says why not; `props` is unchanged on refusal.
pub(crate) fn apply_op(props: &mut Properties, op: &Op) -> Result<Change, Rejected> {
    let name = op.prop();
    let p = props
        .0
        .get_mut(name)
        .ok_or_else(|| Rejected::NoSuchProperty(name.to_owned()))?;
    let wrong = |expected: Kind, p: &Property| Rejected::WrongKind {
        prop: name.to_owned(),
        expected,
        actual: p.kind(),
    };
    match (op, p) {
        (Op::Inc { delta, .. }, Property::Number { value, min, max }) => {
            let next = *value + *delta;
            check_number(name, next, *min, *max)?;
            *value = next;
            Ok(Change::Number {
                prop: name.to_owned(),
                value: next,
            })
        }
        (Op::Inc { .. }, p) => Err(wrong(Kind::Number, p)),
        (Op::Set { value: v, .. }, Property::Number { value, min, max }) => {
            let next =
                v.0.as_f64()
                    .ok_or_else(|| Rejected::Invalid(format!("{name}: {} is not a number", v.0)))?;
            check_number(name, next, *min, *max)?;
            *value = next;
            Ok(Change::Number {
                prop: name.to_owned(),
                value: next,
            })
        }
        (Op::Set { value: v, .. }, Property::Map { entries, max_keys }) => {
            let Value::Object(obj) = &v.0 else {
                return Err(Rejected::Invalid(format!(
                    "{name}: a map is set from an object"
                )));
            };
            if max_keys.is_some_and(|m| obj.len() > m) {
                return Err(Rejected::MapFull {
                    prop: name.to_owned(),
                    max_keys: max_keys.unwrap_or_default(),
                });
            }
            *entries = obj
                .iter()
                .map(|(k, v)| (k.clone(), Json(v.clone())))
                .collect();
            Ok(Change::Map {
                prop: name.to_owned(),
                entries: entries.clone(),
            })
        }
        (Op::Set { value: v, .. }, Property::Value(value)) => {
            *value = v.clone();
            Ok(Change::Value {
                prop: name.to_owned(),
                value: v.clone(),
            })
        }
        (Op::Add { key, value: v, .. }, Property::Map { entries, max_keys }) => {
            if !entries.contains_key(key) && max_keys.is_some_and(|m| entries.len() >= m) {
                return Err(Rejected::MapFull {
                    prop: name.to_owned(),
                    max_keys: max_keys.unwrap_or_default(),
                });
            }
            entries.insert(key.clone(), v.clone());
            Ok(Change::Put {
                prop: name.to_owned(),
                key: key.clone(),
                value: v.clone(),
            })
        }
        (Op::Del { key, .. }, Property::Map { entries, .. }) => {
            if entries.remove(key).is_none() {
                return Err(Rejected::NoSuchKey {
                    prop: name.to_owned(),
                    key: key.clone(),
                });
            }
            Ok(Change::Removed {
                prop: name.to_owned(),
                key: key.clone(),
            })
        }
        (Op::Add { .. } | Op::Del { .. }, p) => Err(wrong(Kind::Map, p)),
    }
}

/// Applies a change the owner made. A change that does not fit (a forged or foreign delta) is
/// refused and changes nothing.
pub(crate) fn apply_change(props: &mut Properties, change: &Change) -> Result<(), Rejected> {
    let name = change.prop();
    let p = props
        .0
        .get_mut(name)
        .ok_or_else(|| Rejected::NoSuchProperty(name.to_owned()))?;
    match (change, p) {
        (Change::Number { value: v, .. }, Property::Number { value, min, max }) => {
            check_number(name, *v, *min, *max)?;
            *value = *v;
        }
        (Change::Value { value: v, .. }, Property::Value(value)) => *value = v.clone(),
        (Change::Map { entries: e, .. }, Property::Map { entries, .. }) => *entries = e.clone(),
        (Change::Put { key, value, .. }, Property::Map { entries, .. }) => {
            entries.insert(key.clone(), value.clone());
        }
        (Change::Removed { key, .. }, Property::Map { entries, .. }) => {
            entries.remove(key);
        }
        (_, p) => {
            return Err(Rejected::WrongKind {
                prop: name.to_owned(),
                expected: p.kind(),
                actual: p.kind(),
            })
        }
    }
    Ok(())
}

/// Checks an op against a replica's view (kinds never change), to fail fast without asking
/// the owner. Bounds are the owner's to check: a replica's value may be behind.
pub(crate) fn precheck(props: &Properties, op: &Op) -> Result<(), Rejected> {
    let name = op.prop();
    let p = props
        .0
        .get(name)
        .ok_or_else(|| Rejected::NoSuchProperty(name.to_owned()))?;
    let need = match op {
        Op::Inc { delta, .. } => {
            if !delta.is_finite() {
                return Err(Rejected::Invalid(format!(
                    "{name}: delta {delta} is not finite"
                )));
            }
            Some(Kind::Number)
        }
        Op::Add { .. } | Op::Del { .. } => Some(Kind::Map),
        Op::Set { .. } => None,
    };
    match need {
        Some(k) if k != p.kind() => Err(Rejected::WrongKind {
            prop: name.to_owned(),
            expected: k,
            actual: p.kind(),
        }),
        _ => Ok(()),
    }
}

//! The Redis schema of the original Node.js mesh-link 0.13.6 (feature `node-compat`): one key
//! per node whose *name* carries everything, with an empty value and a TTL of a few seconds:
//!
//! ```text
//! @mlink`<prefix>`<address>`<port>`<type>`<backups addr-port/…>`<values k;v;k;@json…>`<objects>
//! ```
//!
//! [`AnnounceKey`] writes and reads such names. Reading is bounded and never fails loudly: a
//! name that is not one (fewer than eight fields, a bad port, over 64 KiB) is `None`, and a
//! value the original would have thrown on (bad JSON after `@`) is kept as text. Writing
//! refuses what the original would have corrupted: a backtick anywhere, a `;` in a value's
//! name or text.
//!
//! ```
//! use mesh_discovery::compat::AnnounceKey;
//!
//! let key = "@mlink`pfx`127.0.0.1`5600`T1`127.0.0.1-5555`name;probe;obj;@{\"x\":1}`0";
//! let k = AnnounceKey::parse(key).unwrap();
//! assert_eq!((k.address.as_str(), k.port, k.node_type.as_str()), ("127.0.0.1", 5600, "T1"));
//! assert_eq!(k.values["obj"], serde_json::json!({"x": 1}));
//! assert_eq!(k.encode().unwrap(), key);
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

#[cfg(feature = "redis")]
mod registry;
#[cfg(feature = "redis")]
pub use registry::{CompatRegistry, MAX_NODE_KEYS};

/// The [`protocol`](crate::NodeRecord::protocol) of a record read from the original's schema:
/// a node that speaks the original's wire (mesh-link 0.13), not ours.
pub const NODE_PROTOCOL: u8 = 13;

/// The first field of every announce key.
pub const MAGIC: &str = "@mlink";

/// The longest key name read.
pub const MAX_KEY_BYTES: usize = 64 * 1024;

/// Why a record cannot be written in the original's schema without corrupting it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A backtick in a field: it would shift every field after it.
    #[error("{0} contains a backtick")]
    Backtick(&'static str),
    /// A `;` in a value's name or text: it would shift every value after it.
    #[error("value {0:?} contains a ';'")]
    Semicolon(String),
    /// A `-` or `/` in a backup's address: the original's list format cannot carry it.
    #[error("backup address {0:?} contains '-' or '/'")]
    BackupAddress(String),
}

/// One node as the original announces it.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnounceKey {
    /// The mesh's prefix (empty: none).
    pub prefix: String,
    /// The node's address, as text.
    pub address: String,
    /// Its port.
    pub port: u16,
    /// Its type (the original's default is `0`).
    pub node_type: String,
    /// Its backups, `(address, port)`.
    pub backups: Vec<(String, u16)>,
    /// Its values, cast as the original casts them.
    pub values: BTreeMap<String, Value>,
    /// Shared objects it holds.
    pub objects: u64,
}

impl AnnounceKey {
    /// The key name.
    pub fn encode(&self) -> Result<String, KeyError> {
        for (what, field) in [
            ("the prefix", &self.prefix),
            ("the address", &self.address),
            ("the type", &self.node_type),
        ] {
            if field.contains('`') {
                return Err(KeyError::Backtick(what));
            }
        }
        let mut backups = Vec::with_capacity(self.backups.len());
        for (addr, port) in &self.backups {
            if addr.contains(['-', '/', '`']) {
                return Err(KeyError::BackupAddress(addr.clone()));
            }
            backups.push(format!("{addr}-{port}"));
        }
        let values = encode_values(&self.values)?;
        Ok(format!(
            "{MAGIC}`{}`{}`{}`{}`{}`{values}`{}",
            self.prefix,
            self.address,
            self.port,
            self.node_type,
            backups.join("/"),
            self.objects
        ))
    }

    /// Reads a key name; `None` if it is not an announce key.
    pub fn parse(key: &str) -> Option<Self> {
        if key.len() > MAX_KEY_BYTES {
            return None;
        }
        let f: Vec<&str> = key.splitn(9, '`').collect();
        if f.len() < 8 || f[0] != MAGIC {
            return None;
        }
        let backups = f[5]
            .split('/')
            .filter(|b| !b.is_empty())
            .filter_map(|b| {
                let (addr, port) = b.rsplit_once('-')?;
                Some((addr.to_owned(), port.parse().ok()?))
            })
            .collect();
        Some(Self {
            prefix: f[1].to_owned(),
            address: f[2].to_owned(),
            port: f[3].parse().ok()?,
            node_type: f[4].to_owned(),
            backups,
            values: decode_values(f[6]),
            objects: f[7].parse().unwrap_or(0),
        })
    }

    /// The `SCAN`/`KEYS` pattern of every key of mesh `prefix`, with glob characters in the
    /// prefix escaped (the original did not escape them).
    pub fn pattern(prefix: &str) -> String {
        let mut p = format!("{MAGIC}`");
        for c in prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push_str("`*");
        p
    }
}

/// The key's TTL for an update interval, as the original computes it: whole seconds, 2 s for
/// 1-1.5 s, 3 s below 2 s, 1.5 intervals from 2 s on.
pub fn ttl_secs(update_interval: Duration) -> u64 {
    let ms = update_interval.as_millis().max(1000) as u64;
    let factor = if ms < 2000 { 2.0 } else { 1.5 };
    ((ms as f64 * factor) / 1000.0).floor() as u64
}

/// Values as the original writes them: `k;v;k;v`, objects and arrays as `@` and JSON, null as
/// nothing.
pub fn encode_values(values: &BTreeMap<String, Value>) -> Result<String, KeyError> {
    let mut parts = Vec::with_capacity(values.len() * 2);
    for (k, v) in values {
        let text = match v {
            Value::Object(_) | Value::Array(_) => format!("@{v}"),
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        };
        if k.contains(';') || k.contains('`') {
            return Err(KeyError::Semicolon(k.clone()));
        }
        if text.contains(';') || text.contains('`') {
            return Err(KeyError::Semicolon(k.clone()));
        }
        parts.push(k.clone());
        parts.push(text);
    }
    Ok(parts.join(";"))
}

/// Values as the original reads them: `k;v` pairs; `@` then JSON; `true`, `false`, `null`,
/// `undefined`; what JavaScript takes for a number, parsed as `parseFloat` does (`"0x10"` is 0,
/// `""` NaN, here `null`); anything else text. JSON that does not parse stays text (the
/// original threw and lost the whole update).
pub fn decode_values(s: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    if s.is_empty() {
        return out;
    }
    let mut it = s.split(';');
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or("");
        out.insert(k.to_owned(), cast(v));
    }
    out
}

fn cast(v: &str) -> Value {
    if let Some(json) = v.strip_prefix('@') {
        return serde_json::from_str(json).unwrap_or_else(|_| Value::String(v.to_owned()));
    }
    match v {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        "null" | "undefined" => return Value::Null,
        _ => {}
    }
    if js_numeric(v) {
        return parse_float(v)
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number);
    }
    Value::String(v.to_owned())
}

/// JavaScript's `!isNaN(s)`: `Number(s)` is a number (empty and blank text are 0).
fn js_numeric(s: &str) -> bool {
    let t = s.trim();
    if t.is_empty() || matches!(t, "Infinity" | "+Infinity" | "-Infinity") {
        return true;
    }
    for (prefix, radix) in [
        ("0x", 16),
        ("0X", 16),
        ("0o", 8),
        ("0O", 8),
        ("0b", 2),
        ("0B", 2),
    ] {
        if let Some(rest) = t.strip_prefix(prefix) {
            return !rest.is_empty() && rest.chars().all(|c| c.is_digit(radix));
        }
    }
    t.chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'))
        && t.parse::<f64>().is_ok()
}

/// JavaScript's `parseFloat`: the longest decimal prefix after leading blanks; `None` for NaN
/// and the infinities (JSON has neither).
fn parse_float(s: &str) -> Option<f64> {
    let t = s.trim_start().as_bytes();
    let mut end = 0;
    if matches!(t.first(), Some(b'+' | b'-')) {
        end = 1;
    }
    let digits = |from: usize| t[from..].iter().take_while(|c| c.is_ascii_digit()).count();
    let int = digits(end);
    end += int;
    let mut frac = 0;
    if t.get(end) == Some(&b'.') {
        frac = digits(end + 1);
        if int > 0 || frac > 0 {
            end += 1 + frac;
        }
    }
    if int == 0 && frac == 0 {
        return None;
    }
    if matches!(t.get(end), Some(b'e' | b'E')) {
        let mut e = end + 1;
        if matches!(t.get(e), Some(b'+' | b'-')) {
            e += 1;
        }
        let n = digits(e);
        if n > 0 {
            end = e + n;
        }
    }
    let v: f64 = std::str::from_utf8(&t[..end]).ok()?.parse().ok()?;
    v.is_finite().then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_references_example_reads_and_writes_back() {
        let key = "@mlink`pfx`127.0.0.1`5600`T1`127.0.0.1-5555`name;probe;obj;@{\"x\":1}`0";
        let k = AnnounceKey::parse(key).unwrap();
        assert_eq!(k.prefix, "pfx");
        assert_eq!(k.backups, vec![("127.0.0.1".to_owned(), 5555)]);
        assert_eq!(k.values["name"], json!("probe"));
        assert_eq!(k.objects, 0);
        assert_eq!(k.encode().unwrap(), key);
        assert_eq!(AnnounceKey::pattern("pfx"), "@mlink`pfx`*");
        assert_eq!(AnnounceKey::pattern("a*b"), "@mlink`a\\*b`*");
    }

    #[test]
    fn values_are_cast_as_the_original_casts_them() {
        let v = decode_values("a;007;b;1e3;c;0x10;d;;e;true;f;undefined;g;@[1,2];h;text;i;@{bad");
        assert_eq!(v["a"], json!(7.0));
        assert_eq!(v["b"], json!(1000.0));
        assert_eq!(v["c"], json!(0.0));
        assert_eq!(v["d"], Value::Null); // NaN
        assert_eq!(v["e"], json!(true));
        assert_eq!(v["f"], Value::Null);
        assert_eq!(v["g"], json!([1, 2]));
        assert_eq!(v["h"], json!("text"));
        assert_eq!(v["i"], json!("@{bad")); // the original threw here
        assert!(decode_values("").is_empty());
    }

    #[test]
    fn what_would_corrupt_the_key_is_refused() {
        let mut k = AnnounceKey::parse("@mlink``10.0.0.1`1`0```0").unwrap();
        assert!(k.values.is_empty() && k.backups.is_empty());
        k.values.insert("note".into(), json!("a;b"));
        assert!(matches!(k.encode(), Err(KeyError::Semicolon(_))));
        k.values.clear();
        k.node_type = "a`b".into();
        assert_eq!(k.encode(), Err(KeyError::Backtick("the type")));
        k.node_type = "0".into();
        k.backups = vec![("host-name".into(), 1)];
        assert!(matches!(k.encode(), Err(KeyError::BackupAddress(_))));
    }

    #[test]
    fn what_is_not_a_key_is_none() {
        for bad in [
            "",
            "@mlink`p`a`1`t`b",
            "@other`p`a`1`t`b`v`0",
            "@mlink`p`a`99999`t`b`v`0",
        ] {
            assert_eq!(AnnounceKey::parse(bad), None, "{bad}");
        }
        assert_eq!(AnnounceKey::parse(&"`".repeat(MAX_KEY_BYTES + 1)), None);
    }

    #[test]
    fn the_ttl_follows_the_originals_rule() {
        let s = |ms| ttl_secs(Duration::from_millis(ms));
        assert_eq!(
            (s(500), s(1000), s(1499), s(1500), s(2000), s(5000)),
            (2, 2, 2, 3, 3, 7)
        );
    }
}

//! Typed messages: a Rust type bound to its handler id, its stable name and schema version,
//! and (for a request) its answer type, so that the compiler pairs them and the receiver can
//! check, at run time, that what arrived is what its handler takes.
//!
//! ```
//! use mesh_link::{HandlerError, MeshNode, Registry};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct GetScore { player: String }
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Score(u64);
//! mesh_link::request!(GetScore = 1000 => Score);
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let registry = Registry::memory();
//! let server = MeshNode::builder().registry(registry.clone()).bind("127.0.0.1:0")
//!     .serve(|req: GetScore, _ctx| async move { Ok::<_, HandlerError>(Score(req.player.len() as u64)) })
//!     .start().await?;
//! let client = MeshNode::builder().registry(registry).bind("127.0.0.1:0").start().await?;
//! let score = client.ask(server.local_key(), &GetScore { player: "ada".into() }).await?;
//! assert_eq!(score, Score(3));
//! # let _ = client.stop().await; let _ = server.stop().await;
//! # Ok(()) }
//! ```
//!
//! The compiler refuses a request paired with the wrong answer type:
//!
//! ```compile_fail
//! # use mesh_link::MeshNode;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct GetScore { player: String }
//! # #[derive(Serialize, Deserialize)] struct Score(u64);
//! # mesh_link::request!(GetScore = 1000 => Score);
//! # async fn f(node: MeshNode, peer: mesh_link::NodeKey) -> Result<(), mesh_link::RequestError> {
//! let name: String = node.ask(peer, &GetScore { player: "ada".into() }).await?; // a Score, not a String
//! # Ok(()) }
//! ```
//!
//! # What is checked where
//! - At compile time: [`MeshNode::ask`](crate::MeshNode::ask) returns the request's
//!   [`Answer`](Request::Answer), and [`serve`](crate::MeshNode::serve) takes a handler from
//!   the request to that answer.
//! - At run time, across processes and versions: every typed message carries its type's
//!   fingerprint ([`mesh_wire::fingerprint`] of name, version and answer name; see
//!   `mesh-wire/PROTOCOL.md`). A handler runs only for a fingerprint it serves; a request with
//!   another one fails with [`RequestError::TypeMismatch`](crate::RequestError::TypeMismatch)
//!   naming what the handler serves, and a one-way message is dropped and counted
//!   ([`NodeStats::type_mismatch`](crate::NodeStats::type_mismatch)).
//!
//! # Versioning a message
//! Two ways, per type:
//! - **Evolve in place**: choose [`Codec::MessagePack`] (named fields) and only *add* fields
//!   with `#[serde(default)]`. The name and version stay; old and new nodes read each other
//!   (old nodes ignore the new fields, new nodes default them).
//! - **Version it**: bump [`VERSION`](Message::VERSION) when the encoding changes in a way old
//!   readers cannot follow (bincode, the default codec, cannot skip or default fields). A new
//!   node serves both versions under one id (register a handler for each type); an old node
//!   answers a new request with `TypeMismatch`, which the new node can take as "ask in v1".
//!
//! Untyped handlers ([`on`](crate::MeshNode::on), [`on_request`](crate::MeshNode::on_request),
//! [`on_raw`](crate::MeshNode::on_raw)) and the numeric API remain for dynamic use and raw bytes;
//! a typed message to an untyped handler, or the reverse, is refused, since neither side can
//! vouch for the other's type.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How a message type's values are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Codec {
    /// bincode 2, standard configuration: compact and fast; fields are positional, so a
    /// schema change needs a new [`VERSION`](Message::VERSION). The default.
    #[default]
    Bincode,
    /// MessagePack with named fields (`rmp-serde`): self-describing, so fields can be added
    /// (with `#[serde(default)]`) while old and new nodes run side by side.
    MessagePack,
}

impl Codec {
    pub(crate) fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, String> {
        match self {
            Codec::Bincode => mesh_wire::codec::encode(value).map_err(|e| e.to_string()),
            Codec::MessagePack => rmp_serde::to_vec_named(value).map_err(|e| e.to_string()),
        }
    }

    pub(crate) fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            Codec::Bincode => mesh_wire::codec::decode(bytes).map_err(|e| e.to_string()),
            Codec::MessagePack => rmp_serde::from_slice(bytes).map_err(|e| e.to_string()),
        }
    }
}

/// A message type: its handler id, a name that stays stable across builds and languages, a
/// schema version, and its codec. Implement it with [`message!`](crate::message) (one-way)
/// or [`request!`](crate::request) (with an answer), or by hand.
pub trait Message: Serialize + DeserializeOwned + Send + 'static {
    /// The handler id (0..=65000).
    const ID: u16;
    /// The stable name (e.g. `"game.GetScore"`): part of the fingerprint, so renaming the Rust
    /// type is harmless only if this stays.
    const NAME: &'static str;
    /// The schema version. Default 1.
    const VERSION: u32 = 1;
    /// The codec. Default [`Codec::Bincode`].
    const CODEC: Codec = Codec::Bincode;
}

/// A message that is answered: the answer's type is part of the contract (and of the
/// fingerprint, by its name).
pub trait Request: Message {
    /// What the handler answers.
    type Answer: Serialize + DeserializeOwned + Send + 'static;
    /// The answer type's stable name.
    const ANSWER: &'static str;
}

/// The fingerprint a one-way message of type `M` carries.
pub(crate) const fn one_way_fingerprint<M: Message>() -> u64 {
    mesh_wire::fingerprint(M::NAME, M::VERSION, "")
}

/// The fingerprint a request of type `R` carries.
pub(crate) const fn request_fingerprint<R: Request>() -> u64 {
    mesh_wire::fingerprint(R::NAME, R::VERSION, R::ANSWER)
}

/// A type's identity as a handler reports it: `name vVERSION`.
pub(crate) fn describe(name: &str, version: u32) -> String {
    format!("{name} v{version}")
}

/// Encodes a typed value, to bytes.
pub(crate) fn encode<T: Serialize + ?Sized>(codec: Codec, value: &T) -> Result<Bytes, String> {
    codec.encode(value).map(Bytes::from)
}

/// Implements [`Message`] for a one-way message type.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// struct Hello { text: String }
/// mesh_link::message!(Hello = 1000);                       // named "Hello", v1, bincode
///
/// #[derive(Serialize, Deserialize)]
/// struct Moved { x: f32, y: f32 }
/// mesh_link::message!(Moved = 1001, name = "game.Moved", version = 2, codec = MessagePack);
/// # use mesh_link::Message;
/// assert_eq!(<Moved as Message>::NAME, "game.Moved");
/// ```
#[macro_export]
macro_rules! message {
    ($ty:ident = $id:expr $(, name = $name:literal)? $(, version = $v:literal)? $(, codec = $codec:ident)? $(,)?) => {
        impl $crate::Message for $ty {
            const ID: u16 = $id;
            const NAME: &'static str = $crate::__first!($($name,)? stringify!($ty));
            const VERSION: u32 = $crate::__first!($($v,)? 1);
            const CODEC: $crate::Codec = $crate::__first!($($crate::Codec::$codec,)? $crate::Codec::Bincode);
        }
    };
}

/// Implements [`Message`] and [`Request`] for a request type and its answer.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize)]
/// struct GetScore { player: String }
/// mesh_link::request!(GetScore = 2000 => u64);
///
/// #[derive(Serialize, Deserialize)]
/// struct Lookup { key: String }
/// mesh_link::request!(Lookup = 2001 => Option<String>, name = "kv.Lookup", version = 3);
/// # use mesh_link::{Message, Request};
/// assert_eq!(<Lookup as Request>::ANSWER, "Option<String>");
/// ```
#[macro_export]
macro_rules! request {
    ($ty:ident = $id:expr => $answer:ty $(, name = $name:literal)? $(, version = $v:literal)? $(, codec = $codec:ident)? $(,)?) => {
        $crate::message!($ty = $id $(, name = $name)? $(, version = $v)? $(, codec = $codec)?);
        impl $crate::Request for $ty {
            type Answer = $answer;
            const ANSWER: &'static str = stringify!($answer);
        }
    };
}

/// The first of its arguments (the macros' defaults).
#[doc(hidden)]
#[macro_export]
macro_rules! __first {
    ($first:expr $(, $rest:expr)* $(,)?) => {
        $first
    };
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V1 {
        player: String,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct V2 {
        player: String,
        #[serde(default)]
        season: Option<u32>,
    }

    #[test]
    fn message_pack_reads_across_an_added_field_and_bincode_does_not() {
        let old = V1 {
            player: "ada".into(),
        };
        let new = V2 {
            player: "bob".into(),
            season: Some(3),
        };
        let m = Codec::MessagePack;
        let v2: V2 = m.decode(&m.encode(&old).unwrap()).unwrap();
        assert_eq!(v2.season, None);
        let v1: V1 = m.decode(&m.encode(&new).unwrap()).unwrap();
        assert_eq!(v1.player, "bob");
        let b = Codec::Bincode;
        assert!(b.decode::<V2>(&b.encode(&old).unwrap()).is_err());
    }

    #[test]
    fn fingerprints_tell_name_version_and_answer_apart() {
        assert_ne!(
            mesh_wire::fingerprint("X", 1, ""),
            mesh_wire::fingerprint("X", 1, "u64")
        );
        assert_eq!(describe("game.GetScore", 2), "game.GetScore v2");
    }
}

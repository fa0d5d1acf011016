//! The payload codec: user types through serde, as bincode 2 with its standard configuration.
//!
//! This is the one place that names bincode, so the codec can be swapped without touching
//! any other layer.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, PartialEq, Debug)]
//! struct Hello { message: String }
//!
//! let mut buf = Vec::new();
//! mesh_wire::codec::encode_into(&Hello { message: "hi".into() }, &mut buf).unwrap();
//! let back: Hello = mesh_wire::codec::decode(&buf).unwrap();
//! assert_eq!(back, Hello { message: "hi".into() });
//! ```
//!
//! Decoding untrusted bytes is bounded. bincode 2 preallocates a string or byte buffer of the
//! length the input *claims*, so [`decode`] gives it a byte limit of at most four times the
//! input's length (at least 4 KiB): a 10-byte input that claims a 4 GiB string fails with
//! `LimitExceeded` before anything is allocated. The whole input must be used.

use std::cell::RefCell;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::CodecError;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Appends the encoding of `value` to `out` and returns the bytes written.
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<usize, CodecError> {
    Ok(bincode::serde::encode_into_std_write(value, out, config())?)
}

/// What a thread's encoding buffer keeps between calls, at most: a larger message's buffer
/// is given back after it.
const SCRATCH_KEPT: usize = 64 * 1024;

thread_local! {
    /// Where [`encode`] writes before copying out: reused, so that a message is not grown
    /// from an empty vector (8, 16, 32, ... bytes, a reallocation each).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Encodes `value` into a new vector.
///
/// Written first into a buffer the thread keeps (up to 64 KiB), then copied out in one
/// allocation of exactly its length: growing a fresh vector cost more than the encoding
/// itself (a 64-byte `Vec<u8>`: 217 ns, against 92 ns with the copy). A larger value's
/// buffer is handed over as it is, without the copy. A value whose serialization encodes
/// another value meanwhile gets a vector of its own.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    SCRATCH.with(|scratch| {
        let Ok(mut buf) = scratch.try_borrow_mut() else {
            let mut out = Vec::new();
            encode_into(value, &mut out)?;
            return Ok(out);
        };
        buf.clear();
        let encoded = encode_into(value, &mut buf);
        if buf.capacity() > SCRATCH_KEPT {
            // Too large to keep: the caller takes it (or, on an error, nobody does).
            let large = std::mem::take(&mut *buf);
            return encoded.map(|_| large);
        }
        encoded.map(|_| buf.to_vec())
    })
}

/// Decodes with a limit of `4^k` KiB, the smallest at least as large as the input.
macro_rules! decode_with_limit {
    ($bytes:expr, $($limit:literal),+) => {{
        let len = $bytes.len();
        $(
            if len <= $limit {
                bincode::serde::decode_from_slice($bytes, config().with_limit::<{ 4 * $limit }>())
            } else
        )+
        {
            bincode::serde::decode_from_slice($bytes, config().with_limit::<{ 1 << 32 }>())
        }
    }};
}

/// Decodes a `T` that must use every byte of `bytes`.
///
/// Allocates at most about four times `bytes.len()` (and at least 4 KiB) however the bytes
/// lie about lengths; see the module docs.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, used): (T, usize) = decode_with_limit!(
        bytes, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864, 268435456
    )?;
    if used != bytes.len() {
        return Err(CodecError::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}

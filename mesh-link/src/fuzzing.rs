//! Entry points for the fuzz targets (`fuzz/`): the decoders of what other nodes send this
//! layer, run on arbitrary bytes. Not a stable API.

use bytes::Bytes;

use crate::relay::{self, RelayReport};

/// Decodes `data` as every message body this layer reads from the network: an envelope, a
/// relay (header and message), a relay report. Panics only if an accepted relay does not
/// survive a round trip.
pub fn decode_message(data: &[u8]) {
    let _ = mesh_wire::Envelope::decode(data);
    let bytes = Bytes::copy_from_slice(data);
    if let Some((header, message)) = relay::decode(&bytes) {
        let again = relay::encode(&header, &message).expect("an accepted header re-encodes");
        let (h2, m2) = relay::decode(&again).expect("re-decodes");
        assert_eq!(h2, header);
        assert_eq!(m2, message);
    }
    let _ = mesh_wire::codec::decode::<RelayReport>(data);
}

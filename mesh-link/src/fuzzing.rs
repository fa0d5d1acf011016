//! Entry points for the fuzz targets (`fuzz/`): the decoders of what other nodes send this
//! layer, run on arbitrary bytes. Not a stable API.

use bytes::Bytes;

use crate::node::relay::{self, RelayReport};

/// Decodes `data` as every message body this layer reads from the network: an envelope, a
/// relay (header and message), a relay report, a shared-object message (handled by a fresh
/// state machine) and a shared-object reply. Panics only if an accepted relay does not
/// survive a round trip.
pub fn decode_message(data: &[u8]) {
    let _ = mesh_wire::Envelope::decode(data);
    let bytes = Bytes::copy_from_slice(data);
    for system in [crate::system::RELAY, crate::system::RELAY_TYPED] {
        if let Some((header, fingerprint, message)) = relay::decode(system, &bytes) {
            let again = relay::encode(&header, fingerprint, &message)
                .expect("an accepted header re-encodes");
            let (h2, f2, m2) = relay::decode(system, &again).expect("re-decodes");
            assert_eq!((h2, f2), (header, fingerprint));
            assert_eq!(m2, message);
        }
    }
    let _ = mesh_wire::codec::decode::<RelayReport>(data);
    // Shared objects: what an owner is asked, what it answers, what it sends watchers. An
    // accepted message is checked the way the state machine would (properties validated).
    if let Ok(m) = mesh_wire::codec::decode::<mesh_shared::Message>(data) {
        if let mesh_shared::Message::Create { props, .. } = &m {
            let _ = props.validate();
        }
        let mut objects = mesh_shared::Objects::new(
            "127.0.0.1:1".parse().expect("an address"),
            mesh_shared::Config::default(),
        );
        let now = std::time::Instant::now();
        let _ = objects.handle(now, "127.0.0.1:2".parse().expect("an address"), m);
    }
    let _ = mesh_wire::codec::decode::<mesh_shared::Reply>(data);
}

//! Building and splitting the envelope every mesh message starts with (`mesh_wire::Envelope`):
//! its kind, the handler, and for requests and answers the request id.

use bytes::Bytes;
use mesh_rudp::Payload;
use mesh_wire::{DecodeError, Envelope, EnvelopeKind, ErrorBody, ErrorCode};

/// Bodies at least this long go to the transport behind their envelope header rather than
/// copied into one buffer with it: below it, one small copy is cheaper than two buffers.
const COPY_LIMIT: usize = 4096;

/// An envelope for the transport: see [`COPY_LIMIT`].
pub(crate) fn payload(kind: EnvelopeKind, handler: u16, request_id: u64, body: &Bytes) -> Payload {
    if body.len() < COPY_LIMIT {
        return bytes(kind, handler, request_id, body).into();
    }
    let mut head = Vec::with_capacity(Envelope::header_len(kind));
    Envelope::encode_header(kind, handler, request_id, &mut head);
    Payload::with_head(Bytes::from(head), body.clone())
}

/// An envelope and its body in one buffer.
pub(crate) fn bytes(kind: EnvelopeKind, handler: u16, request_id: u64, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(Envelope::header_len(kind) + body.len());
    Envelope::encode_header(kind, handler, request_id, &mut out);
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A one-way envelope for a system handler.
pub(crate) fn one_way(handler: u16, body: &[u8]) -> Bytes {
    bytes(EnvelopeKind::OneWay, handler, 0, body)
}

/// An error answer to request `request_id`.
pub(crate) fn error(handler: u16, request_id: u64, code: ErrorCode, message: &str) -> Bytes {
    let mut out = Vec::new();
    Envelope::encode_header(EnvelopeKind::ErrorResponse, handler, request_id, &mut out);
    ErrorBody { code, message }.encode(&mut out);
    Bytes::from(out)
}

/// The envelope's fields without its payload.
pub(crate) fn head_of(env: &Envelope<'_>) -> Envelope<'static> {
    Envelope {
        kind: env.kind,
        handler: env.handler,
        request_id: env.request_id,
        payload: &[],
    }
}

/// Splits a received message into its envelope (with an empty payload) and the payload, which
/// keeps the message's buffer: moving its start past the header allocates nothing, where
/// slicing a buffer made from a `Vec` allocates a shared handle.
pub(crate) fn split(data: Bytes) -> Result<(Envelope<'static>, Bytes), DecodeError> {
    let head = head_of(&Envelope::decode(&data)?);
    let mut payload = data;
    bytes::Buf::advance(&mut payload, Envelope::header_len(head.kind));
    Ok((head, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_gives_back_what_was_built() {
        for body in [
            Bytes::new(),
            Bytes::from(vec![7u8; 10]),
            Bytes::from(vec![9u8; 5000]),
        ] {
            for (kind, id) in [
                (EnvelopeKind::OneWay, 0),
                (EnvelopeKind::Request, 42),
                (EnvelopeKind::Response, u64::MAX),
            ] {
                let p = payload(kind, 12, id, &body);
                let (env, rest) = split(p.to_bytes()).unwrap();
                assert_eq!((env.kind, env.handler, env.request_id), (kind, 12, id));
                assert_eq!(rest, body);
            }
        }
        let e = error(3, 9, ErrorCode::NO_HANDLER, "none");
        let (env, rest) = split(e).unwrap();
        assert_eq!(env.kind, EnvelopeKind::ErrorResponse);
        let b = ErrorBody::decode(&rest).unwrap();
        assert_eq!((b.code, b.message), (ErrorCode::NO_HANDLER, "none"));
    }
}

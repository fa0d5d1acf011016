//! Building and splitting the envelope every mesh message starts with (`mesh_wire::Envelope`):
//! its kind, the handler, and for requests and answers the request id.

use bytes::Bytes;
use mesh_rudp::Payload;
use mesh_wire::{DecodeError, Envelope, EnvelopeKind, ErrorBody, ErrorCode};

/// Bodies at least this long go to the transport behind their envelope header rather than
/// copied into one buffer with it: below it, one small copy is cheaper than two buffers.
const COPY_LIMIT: usize = 4096;

/// What goes before a message's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Head {
    pub(crate) kind: EnvelopeKind,
    pub(crate) handler: u16,
    pub(crate) request_id: u64,
    /// A typed message's type fingerprint.
    pub(crate) fingerprint: Option<u64>,
}

impl Head {
    /// An untyped envelope.
    pub(crate) fn new(kind: EnvelopeKind, handler: u16, request_id: u64) -> Self {
        Self {
            kind,
            handler,
            request_id,
            fingerprint: None,
        }
    }

    /// The same, carrying a type fingerprint (when `Some`).
    pub(crate) fn typed(mut self, fingerprint: Option<u64>) -> Self {
        self.fingerprint = fingerprint;
        self
    }

    fn len(&self) -> usize {
        Envelope::header_len(self.kind, self.fingerprint.is_some())
    }

    fn write(&self, out: &mut Vec<u8>) {
        Envelope::encode_header(
            self.kind,
            self.handler,
            self.request_id,
            self.fingerprint,
            out,
        );
    }
}

/// An envelope for the transport: see [`COPY_LIMIT`].
pub(crate) fn payload(head: Head, body: &Bytes) -> Payload {
    if body.len() < COPY_LIMIT {
        return bytes(head, body).into();
    }
    let mut h = Vec::with_capacity(head.len());
    head.write(&mut h);
    Payload::with_head(Bytes::from(h), body.clone())
}

/// An envelope and its body in one buffer.
pub(crate) fn bytes(head: Head, body: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(head.len() + body.len());
    head.write(&mut out);
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// A one-way envelope for a system handler.
pub(crate) fn one_way(handler: u16, body: &[u8]) -> Bytes {
    bytes(Head::new(EnvelopeKind::OneWay, handler, 0), body)
}

/// An error answer to request `request_id`.
pub(crate) fn error(handler: u16, request_id: u64, code: ErrorCode, message: &str) -> Bytes {
    let mut out = Vec::new();
    Envelope::encode_header(
        EnvelopeKind::ErrorResponse,
        handler,
        request_id,
        None,
        &mut out,
    );
    ErrorBody { code, message }.encode(&mut out);
    Bytes::from(out)
}

/// The envelope's fields without its payload.
pub(crate) fn head_of(env: &Envelope<'_>) -> Envelope<'static> {
    Envelope {
        kind: env.kind,
        handler: env.handler,
        request_id: env.request_id,
        fingerprint: env.fingerprint,
        payload: &[],
    }
}

/// Splits a received message into its envelope (with an empty payload) and the payload, which
/// keeps the message's buffer: moving its start past the header allocates nothing, where
/// slicing a buffer made from a `Vec` allocates a shared handle.
pub(crate) fn split(data: Bytes) -> Result<(Envelope<'static>, Bytes), DecodeError> {
    let head = head_of(&Envelope::decode(&data)?);
    let mut payload = data;
    let len = Envelope::header_len(head.kind, head.fingerprint.is_some());
    bytes::Buf::advance(&mut payload, len);
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
            for (kind, id, fp) in [
                (EnvelopeKind::OneWay, 0, None),
                (EnvelopeKind::OneWay, 0, Some(7)),
                (EnvelopeKind::Request, 42, None),
                (EnvelopeKind::Request, 42, Some(u64::MAX)),
                (EnvelopeKind::Response, u64::MAX, None),
            ] {
                let p = payload(Head::new(kind, 12, id).typed(fp), &body);
                let (env, rest) = split(p.to_bytes()).unwrap();
                assert_eq!(
                    (env.kind, env.handler, env.request_id, env.fingerprint),
                    (kind, 12, id, fp)
                );
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

//! Integration tests of mesh-wire: one test binary, one module per subject.

mod auth;
mod codec;
mod golden;
mod props;

//! Integration tests of mesh-wire: one test binary, one module per subject.

mod auth;
mod codec;
mod compat;
mod golden;
mod props;

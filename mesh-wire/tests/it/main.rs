//! Integration tests of mesh-wire: one test binary, one module per subject.

mod codec;
mod golden;
mod props;

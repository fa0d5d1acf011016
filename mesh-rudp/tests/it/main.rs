//! mesh-rudp integration tests: one binary, a module per subject.

mod hostile;
mod liveness;
mod models;
mod pmtu;
mod scenarios;
mod sockets;
mod sweeps;
mod util;
mod wire;

//! One module per scenario.

pub(crate) mod bulk;
pub(crate) mod fanout;
pub(crate) mod lossy;
pub(crate) mod node_compare;
pub(crate) mod oneway;
pub(crate) mod rtt;

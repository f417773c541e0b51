//! What the agent reads from `/proc` and cgroupfs: the postmaster's process
//! tree ([`ProcessTree`]) and the memory limits around it ([`memory`]).
//!
//! Every field comes back as `Option`: a file the agent may not read (another
//! user's `io`, a `wchan` that reads "0") is unknown, never 0.

mod kind;
pub mod memory;
mod process;
mod tree;

pub use kind::kind_from_title;
pub use process::{read_process, Clock};
pub use tree::ProcessTree;

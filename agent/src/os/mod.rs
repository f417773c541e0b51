//! What the agent reads from `/proc` and cgroupfs: the postmaster's process
//! tree ([`ProcessTree`]), the memory around it ([`memory`]) and the names
//! of system calls ([`syscall_name`]).
//!
//! Every field comes back as `Option`: a file the agent may not read (another
//! user's `io`, a `wchan` that reads "0") is unknown, never 0.

mod children;
mod files;
mod kind;
pub mod memory;
mod privilege;
mod process;
mod smaps;
mod syscalls;
mod tree;

pub use kind::kind_from_title;
pub use privilege::{proc_access_advice, ProcAccess};
pub use process::{read_details, read_memory, read_process, read_stat, Clock, Details};
pub use syscalls::syscall_name;
pub use tree::{ProcessTree, Visibility};

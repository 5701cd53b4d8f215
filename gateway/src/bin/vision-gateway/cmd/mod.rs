//! One module per subcommand: its arguments (`Args`, or a `Command` enum
//! for a group) and its `run`, which returns the process's exit code.

pub mod annotate;
pub mod bench;
pub mod check_config;
pub mod demo;
pub mod log;
pub mod reassemble;
pub mod replay;
pub mod run;

//! The subcommands besides serving: each runs once and exits.
//!
//! - [`admin`]: `chatgw admin …`, the admin API from an operator's shell.
//! - [`backup`]: `chatgw backup --out FILE`, an online copy of the embedded
//!   SQLite database.
//! - [`seed`]: `chatgw seed …`, bulk users, rooms and tokens for load tests.

pub mod admin;
pub mod backup;
pub mod seed;

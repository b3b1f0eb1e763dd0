//! chatgw: a real-time chat gateway.
//!
//! The components, from the edge inwards:
//! - [`config`]: the typed configuration, read once from the environment.
//! - [`startup`]: [`startup::Application`] builds, binds and runs everything.
//! - [`serve`]: the accept loop, with a deadline for request headers.
//! - [`hub`]: the WebSocket hub: sockets, rooms, group commit, ordered fan-out.
//! - [`bus`]: the seam between instances ([`bus::Bus`]; in-process by default).
//! - [`api`]: the REST layer under `/api/v1` and its middleware.
//! - [`auth`]: access tokens, passwords, refresh tokens, tickets, [`auth::AuthUser`].
//! - [`db`]: the [`db::Store`] over PostgreSQL or SQLite, with its migrations.
//! - [`net`]: the client address behind trusted proxies ([`net::ClientAddr`]).
//! - [`push`]: the offline-push webhook, fed by a transactional outbox.
//! - [`limits`]: rate limits (governor).
//! - [`metrics`]: Prometheus metrics on their own listener.
//! - [`error`]: [`error::ApiError`], the one error shape clients see.
//! - [`protocol`]: the wire protocol as types: frames, codes, versioning.
//! - [`cli`]: the subcommands (`chatgw seed`, `backup`, `admin`).
//! - [`clock`]: wall-clock milliseconds, the schema's time format.
//! - [`telemetry`]: JSON logs, and error tracking in Sentry with secrets scrubbed.
//! - [`state`], [`shutdown`]: the plumbing.

pub mod api;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod error;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod push;
pub mod retention;
pub mod serve;
pub mod shutdown;
pub mod startup;
pub mod state;
pub mod telemetry;

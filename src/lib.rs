//! chatgw: a real-time chat gateway.
//!
//! The modules by layer, ground floor first. A module imports only modules
//! listed before it (in its layer or a lower one), never upwards, so the
//! graph of `crate::X` paths between top-level modules has no circle.
//!
//! Ground floor: plain building blocks, importing nothing of the crate
//! (`metrics` only the protocol's codes).
//! - [`clock`]: wall-clock milliseconds, the schema's time format.
//! - [`protocol`]: the wire protocol as types: frames, codes, versioning.
//! - [`net`]: the client address behind trusted proxies ([`net::ClientAddr`]).
//! - [`limits`]: rate limits (governor) and their settings.
//! - [`metrics`]: Prometheus metrics on their own listener.
//! - [`shutdown`]: the one future that fires on SIGTERM or Ctrl-C.
//!
//! Components: each owns its settings type, which `config` builds.
//! - [`db`]: the [`db::Store`] over PostgreSQL or SQLite, with its
//!   migrations: one implementation for both databases.
//! - [`bus`]: the seam between instances ([`bus::Bus`], a narrow trait;
//!   in-process by default).
//! - [`auth`]: access tokens, passwords, refresh tokens, tickets
//!   ([`auth::JwtSettings`]).
//! - [`telemetry`]: JSON logs, and error tracking in Sentry with secrets
//!   scrubbed ([`telemetry::SentrySettings`]).
//! - [`push`]: the offline-push webhook, fed by a transactional outbox
//!   ([`push::WebhookSettings`]).
//! - [`retention`]: the background job that enforces message retention
//!   ([`retention::RetentionSettings`]).
//! - [`hub`]: the WebSocket hub: sockets, rooms, group commit, ordered
//!   fan-out ([`hub::HubSettings`]).
//! - [`error`]: [`error::ApiError`], the one error shape clients see.
//!
//! Composition: what ties the components together.
//! - [`config`]: the typed configuration, read once from the environment;
//!   it imports the components to build their settings, never the reverse.
//! - [`state`]: [`state::AppState`], the handles every handler receives.
//!
//! The edge, and the entry points.
//! - [`api`]: the REST layer under `/api/v1`, its middleware and extractors
//!   (`AuthUser`), the `/ws` edge (admit, origin, upgrade; the socket is
//!   then the hub's), and the instance statistics.
//! - [`serve`]: the accept loop, with a deadline for request headers.
//! - [`startup`]: [`startup::Application`] builds, binds and runs
//!   everything; shared by `main` and the tests.
//! - [`cli`]: the command line and the subcommands (`chatgw seed`,
//!   `backup`, `admin`, `bump-epochs`).
//!
//! Background jobs stay with their component (`retention`, `push`'s
//! worker; housekeeping in `startup`) rather than in a `jobs/` folder: each
//! is the component's own loop, started by `startup` with the component's
//! store handle and settings, and a folder of loops would split each
//! component in two.

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

//! One integration-test binary: a module per feature, all sharing
//! `helpers` (the real app on port 0, a fresh database per test).

mod chaos;
mod helpers;
mod procs;

mod audit;
mod auth;
mod backup;
mod bad_input;
mod binary;
mod cluster;
mod cluster_faults;
mod demo;
mod edits;
mod me;
mod observability;
mod openapi;
mod operators;
mod proxies;
mod push;
mod rooms;
mod schemas;
mod schemathesis;
mod security;
mod sentry;
mod storage;
mod structure;
mod sync;
mod user_stream;
mod ws;

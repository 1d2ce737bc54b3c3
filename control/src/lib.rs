//! tapwire-control: the control plane (`tapwire collect --db PATH|URL`): sessions and probe flows
//! managed over the HTTP API, kept in a [`store`], pushed to the collector's engine and to the
//! probes, every change audited.
//!
//! ```text
//!  CLI / HTTP client ──► collector's http (axum) ──► Controller ──► Store (one transaction per
//!                         auth: tokens                    │           change, with its audit row)
//!                                                         │ after commit
//!                     ┌───────────────────────────────────┴─────────────┐
//!                     ▼                                                 ▼
//!   Engine::apply (merged with the file's sessions;          probes: flow set version bumped,
//!   unchanged sessions keep their files)                     long-polls answered at once
//! ```
//!
//! The crate knows neither HTTP nor the engine: the collector's `http` module calls the
//! [`Controller`]'s operations, and the controller reaches the engine through the narrow
//! [`Engine`] trait and reads time from a [`Clock`], both given to [`Controller::start`].
//!
//! - [`controller`]: every operation, its checks and its audit row.
//! - [`store`]: the [`Store`] a back-end implements ([`store::sqlite`], [`store::postgres`]).
//! - [`fleet`]: collectors sharing one database: leases, and where each session runs.
//! - [`auth`]: tokens, callers and what each role may; [`tokens`]: tokens in a store.
//! - [`engine`]: what the control plane needs of the engine, and its clock.

pub mod auth;
pub mod controller;
pub mod engine;
pub mod fleet;
pub mod peer;
pub mod store;
pub mod tokens;

pub use controller::{
    CatalogChange, Controller, ControllerOptions, PollGuard, ProbeRefusal, Refused, View,
    advertisable, bootstrap_token_path, write_secret,
};
pub use engine::{Clock, Engine, EngineError};
pub use store::Store;

#[cfg(test)]
mod tests;

//! The gRPC link between components: its configuration and credentials ([`GrpcLinkConfig`],
//! [`LinkCredentials`]), the client side of the [`Shard`] seam ([`GrpcShard`]) with the
//! resolution of receivers' DNS names ([`Resolver`]), the wire
//! conversions of `nexus.v1`, and the server-side helpers a receiver needs (TLS config,
//! [`authorize_component`]).
//!
//! Invariants: secrets and private keys are read once by [`GrpcLinkConfig::load`], never logged
//! (the `Debug` of [`LinkCredentials`] redacts them) and compared in constant time; metric labels
//! carry the shard name only. The client never holds a lock across an `.await`.
//!
//! What it must not do: decide anything about runs. The receiver owns launches, the scheduler
//! owns retries; this module moves dispatches and maps errors, once, between [`ErrorKind`] and
//! the wire's codes.

mod client;
mod config;
mod resolve;
#[cfg(test)]
mod tests;
mod wire;

pub use client::*;
pub use config::*;
pub use resolve::*;
pub use wire::*;

//! nexus-proto: the wire formats of Nexus.
//!
//! * [`v1`] holds the JSON models of the HTTP v1 API, field for field compatible with the
//!   reference Go Nexus (so its Go/Python SDKs work unchanged).
//! * [`grpc`] holds the `nexus.v1` gRPC services between components (shard submission, the
//!   completion twin).
//!
//! It depends on no workspace crate: the conversions to and from the domain model live next to
//! the code that uses them.

pub mod grpc;
pub mod v1;

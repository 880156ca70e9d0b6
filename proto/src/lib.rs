//! nexus-proto: the wire formats of Nexus.
//!
//! [`v1`] holds the JSON models of the HTTP v1 API, field for field compatible with the reference
//! Go Nexus (so its Go/Python SDKs work unchanged). It depends on no workspace crate: the
//! conversions to and from the domain model live next to the handlers that use them.

pub mod v1;

//! nexus-link: how runs travel between components. The [`shard::Shard`] seam (hand a run to a
//! shard's receiver) with its conformance suite, its gRPC implementation and the link's
//! configuration and credentials ([`grpc`]), and cascading cancels across shards ([`tree`]).

pub mod grpc;
pub mod metrics;
pub mod shard;
pub mod tree;

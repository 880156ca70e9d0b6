//! nexus-core: the domain model of Nexus (runs, stages, templates, workgroups), the seams
//! (`RunStore`, `PayloadStore`, `Executor`, `Shard`) with their fakes, real backends and
//! conformance suites, signed URLs and run tokens, and the error kinds shared by every component.

pub mod catalog;
pub mod crd;
pub mod error;
pub mod executor;
pub mod grpc;
pub mod http;
pub mod kube_catalog;
pub mod kube_classify;
pub mod kube_client;
pub mod kube_job;
#[cfg(any(test, feature = "testsuite"))]
pub mod kube_testkit;
pub mod leader;
pub mod limiter;
pub mod payload;
pub mod private_fs;
pub mod render;
pub mod request_split;
pub mod run;
pub mod server;
pub mod shard;
pub mod sign;
pub mod spec;
mod sqlite_db;
pub mod store;
pub mod tree;

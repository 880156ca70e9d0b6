//! nexus-kube: everything Nexus knows about Kubernetes, in one place.
//!
//! * [`job`]: rendering a run into its `batch/v1` Job (a pure function).
//! * [`classify`]: why a Job or pod failed, from their status (pure functions).
//! * [`client`]: the API client of a shard cluster, with the cluster's API budget enforced.
//! * [`executor`]: the Kubernetes [`nexus_executor::Executor`], which renders its own Jobs;
//!   [`logs`]: its runs' pod logs, read live and kept when a Job finishes.
//! * [`catalog`]: templates and workgroups from the cluster's custom resources.
//! * [`crd`]: installing the CRDs; [`leader`]: leader election through a Lease.
//! * Feature `client` (default) gates everything that talks to a cluster; without it, a crate
//!   that only renders Jobs (the scheduler's buffer endpoint) links no Kubernetes client.
//! * `testkit` (feature `testsuite`): a namespace per test, pod-status fixtures.
//!
//! The seams (`RunStore`, `PayloadStore`, `Executor`, `Shard`) know nothing of Kubernetes.

#[cfg(feature = "client")]
pub mod catalog;
pub mod classify;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod crd;
#[cfg(feature = "client")]
pub mod executor;
pub mod job;
#[cfg(feature = "client")]
pub mod leader;
#[cfg(feature = "client")]
pub mod logs;
#[cfg(feature = "client")]
pub mod metrics;
#[cfg(all(feature = "client", any(test, feature = "testsuite")))]
pub mod testkit;

#[cfg(feature = "client")]
pub use executor::KubeExecutor;

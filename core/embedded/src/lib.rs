//! nexus-embedded: the embedded single-file store of standalone mode. One SQLite file ([`db`])
//! holds both the run records ([`SqliteRunStore`], a [`nexus_store::RunStore`]) and small
//! payload objects ([`SqliteObjectStore`], a [`nexus_payload::PayloadStore`]) behind one
//! group-commit writer, so an accepted run costs one fsync shared with its neighbours;
//! [`TieredPayloadStore`] keeps small objects there and sends big ones to the filesystem store.
//!
//! Both backends pass the same conformance suites as every other backend of their seam.

mod db;
pub mod payload;
pub mod store;
pub mod tiered;

pub use payload::SqliteObjectStore;
pub use store::SqliteRunStore;
pub use tiered::TieredPayloadStore;

//! nexus-model: what a run is. The run record and its stage machine ([`run`]), algorithm templates
//! and workgroups ([`spec`], [`crd`], [`catalog`]), the error kinds every seam reports
//! ([`error`]), secrets that never reach a log ([`secret`]), signed URLs and run tokens ([`sign`]), the token bucket ([`limiter`]) and private
//! files ([`private_fs`]).
//!
//! It knows nothing of where runs are stored or how they execute: the seams live in their own
//! crates (`nexus-store`, `nexus-payload`, `nexus-executor`, `nexus-link`) and depend on this one.

pub mod catalog;
pub mod crd;
pub mod error;
pub mod limiter;
pub mod private_fs;
pub mod run;
pub mod secret;
pub mod sign;
pub mod spec;

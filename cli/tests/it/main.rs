//! The black-box tests of the `nexus` binary and of components wired in-process, as one test
//! binary (one link instead of eleven). Modules behind a feature need a real service of the
//! integration tier (`scripts/integration.sh` starts it); run one module with a filter, e.g.
//! `cargo test -p nexus-cli --test it contract::`.

mod common;

mod auth;
#[cfg(feature = "dex-tests")]
mod auth_dex;
mod bad_input;
mod contract;
#[cfg(feature = "distributed-tests")]
mod distributed_e2e;
mod distributed_inproc;
mod docs;
mod execution_tree;
mod fanout;
mod hostile;
mod kill9;
#[cfg(feature = "kube-tests")]
mod kubernetes;
mod metrics;
mod observe;
mod server_bounds;
mod standalone_e2e;

//! nexus-cli: wiring of the `nexus` binary (configuration, standalone mode, client commands).
//! `main.rs` only parses arguments and calls into this library.

pub mod client;
pub mod config;
pub mod distributed;
pub mod objects;
pub mod payloads_cmd;
pub mod sandbox;
pub mod secrets;
pub mod standalone;
pub mod store_cmd;

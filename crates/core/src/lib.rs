//! The heart of sandboxd: the sandbox lifecycle, independent of HTTP and of any one backend.
//!
//! - [`backend`]: the [`Backend`](backend::Backend) trait a way of isolating boxes implements.
//! - [`store`]: the [`SandboxStore`](store::SandboxStore) trait where sandbox records live.
//! - [`agent`]: the async client of the guest agent's protocol.
//! - [`manager`]: [`Manager`](manager::Manager), which creates, tracks, reaps and removes
//!   sandboxes and routes work to their agents.
//! - [`pool`]: warm pools (started sandboxes waiting to be handed out) and their rules.
//! - [`templates`]: where sandbox types' root file systems are found.
//! - [`tunnel`]: byte streams to TCP ports inside sandboxes ([`Manager::connect_port`]), for
//!   published ports.
//! - [`workspace`]: per-session workspace quotas (a loop-mounted file system per session).
//!
//! Invariant: this crate never knows HTTP, Redis, Docker or any concrete backend.

pub mod agent;
pub mod backend;
pub mod error;
pub mod manager;
pub mod mcp;
pub mod nodes;
pub mod pool;
pub mod store;
pub mod templates;
pub mod tunnel;
pub mod workspace;

pub use error::CoreError;
pub use manager::{Manager, ManagerConfig};

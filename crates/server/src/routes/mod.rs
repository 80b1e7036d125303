//! Handlers of the `/v1` API, one module per area. Each handler parses its request, calls the
//! [`Manager`](sandboxd_core::Manager), and turns the answer into a response; errors leave as
//! [`ApiError`](crate::error::ApiError).

pub mod exec;
pub mod files;
pub mod meta;
pub mod sandboxes;

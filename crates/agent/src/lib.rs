//! sandboxd's guest agent.
//!
//! # Role
//!
//! The agent runs inside every sandbox, normally as PID 1 of the sandbox's pid namespace, after
//! the native backend's init has set up the mounts, dropped all capabilities and installed a
//! seccomp filter. It serves the host ↔ agent protocol ([`sandboxd_protocol`]) on a Unix
//! stream socket: running commands with streamed output, a confined file API and one
//! persistent Python interpreter per sandbox.
//!
//! It is deliberately small and synchronous — std, `libc` and `serde_json`, no async runtime —
//! because one host runs many idle sandboxes and each pays for its agent's memory: the idle
//! agent is three threads (accept loop, reaper, signal waiter) plus one thread per open host
//! connection.
//!
//! * **Socket.** If `SANDBOXD_LISTEN_FD` is set, that descriptor is an already bound and
//!   listening socket created by the host (whose path the sandbox cannot see); otherwise
//!   `sandboxd-agent --listen <path>` binds one. Each connection carries a sequence of
//!   exchanges: a request frame, then response frames up to a terminal one.
//! * **Processes.** One reaper thread ([`reaper`]) waits for every child, including orphans
//!   re-parented to PID 1, and hands statuses to the commands waiting for them. Commands run in
//!   their own process group (in the agent's session) with the sandbox's environment (minus
//!   `SANDBOXD_*` variables), the highest OOM score and default signal dispositions; timeouts
//!   and host hang-ups kill the whole process group. They are started without `fork`,
//!   vfork-style (`clone(CLONE_VM | CLONE_VFORK)`, see the private `process` module).
//! * **Python.** See [`python`].
//! * **Tunnels.** A `Connect` request turns its connection into the byte stream of a TCP
//!   connection to a port on the sandbox's loopback (the agent runs in the sandbox's network
//!   namespace), relayed by that connection's thread with one `poll` loop; the host publishes
//!   servers of the sandbox this way. See the private `tunnel` module.
//!
//! # Path confinement
//!
//! Every file request is confined to one root directory: `/workspace` by default, or
//! `SANDBOXD_FILES_ROOT`.
//!
//! * Relative paths resolve against the root; `""`, `"."` and the root's own absolute path
//!   name the root itself.
//! * Absolute paths must lie under the root (`/workspace/a` is fine, `/etc/passwd` is refused
//!   with `PathOutsideSandbox`).
//! * `..` is applied lexically and may not climb above the root.
//! * Symlinks are followed only while they stay inside the root, and that is enforced by the
//!   kernel at lookup time: every open goes through `openat2(2)` relative to a descriptor of
//!   the root with `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS`, and operations on a final
//!   component use the `*at` system calls relative to a parent opened that way. A symlink
//!   pointing outside — and, as a consequence of `RESOLVE_BENEATH`, any *absolute* symlink —
//!   yields `PathOutsideSandbox`. Recursive listing and removal never follow symlinks.
//!
//! Where `openat2` is missing (gVisor's kernel, Linux before 5.6) the agent resolves paths
//! itself with the same rules, one component at a time and never letting the kernel follow a
//! symlink ([`beneath`]). Likewise, without pidfds the reaper thread reports commands' exits.
//!
//! # Building
//!
//! A plain `cargo build -p sandboxd-agent` gives a dynamically linked (glibc) binary; it works
//! in any sandbox whose image has a compatible glibc. For images without one, build it
//! statically linked; `scripts/build` links it with musl:
//!
//! ```text
//! rustup target add x86_64-unknown-linux-musl
//! cargo build -p sandboxd-agent --release --bin sandboxd-agent --target x86_64-unknown-linux-musl
//! ```
//!
//! The agent starts at every sandbox creation, and musl's start-up is about 0.25 ms shorter
//! than glibc's on a virtual machine (glibc surveys the CPU's caches with dozens of `cpuid`
//! instructions, each a trap to the hypervisor). musl's own allocator is slow for the
//! agent's megabyte-sized transfer buffers (each one a fresh `mmap` and its page faults), so a
//! musl build allocates with `dlmalloc`, which also gives freed memory back: an agent holds
//! 4.1 MiB after a 64 MiB write and read where glibc's allocator kept 33.7 MiB.
//!
//! Without the musl target, a static glibc build works as well (slower to start):
//!
//! ```text
//! cargo rustc -p sandboxd-agent --release --bin sandboxd-agent -- -C target-feature=+crt-static
//! ```
//!
//! The flag is given to the final `rustc` invocation only, so proc-macro crates
//! (serde_derive) still build as usual. The agent calls no NSS function (no user or host name
//! lookups), so static glibc has none of its usual caveats here. The release profile keeps
//! line-level debug info (about 8 MB); `strip` brings the binary to under 2 MB.
//!
//! # Testing
//!
//! `cargo test -p sandboxd-agent` runs unit tests (path normalisation, the reaper's
//! exit/registration race, orphan reaping) and integration tests that start the real binary
//! with `--listen <tmp>/agent.sock` and `SANDBOXD_FILES_ROOT=<tmp>/root` (not as PID 1; the
//! agent makes itself a child subreaper so orphans still come to it) and speak the protocol
//! over a `UnixStream`. The Python tests need `python3` on `PATH`. `AGENT_TEST_BIN=<path>`
//! runs the integration tests against another build, e.g. the static release binary.

#![deny(unsafe_op_in_unsafe_fn)]

mod agent;
pub mod beneath;
pub mod config;
mod conn;
mod exec;
pub mod files;
pub mod init;
mod lines;
pub mod mcp;
mod process;
pub mod python;
pub mod reaper;
mod sys;
mod tunnel;

pub use agent::Agent;
pub use config::Config;
pub use exec::EXIT_GRACE;
pub use files::Files;
pub use python::Python;
pub use reaper::{ExitWatch, Reaper};

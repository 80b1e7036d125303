//! `sandboxd-agent`: the guest agent binary. See the library's crate docs.

use std::path::PathBuf;
use std::process::ExitCode;

use sandboxd_agent::{init, Agent, Config};

const USAGE: &str = "usage: sandboxd-agent [--listen <socket path>]

Serves the sandboxd host protocol inside a sandbox.
  --listen <path>   bind a Unix socket at <path> (ignored when SANDBOXD_LISTEN_FD is set)
  --version         print the agent and protocol versions
Environment:
  SANDBOXD_LISTEN_FD    inherited listening socket descriptor (normally 3)
  SANDBOXD_FILES_ROOT   directory the file API is confined to (default /workspace)";

fn main() -> ExitCode {
    let mut listen: Option<PathBuf> = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--listen") => match args.next() {
                Some(p) => listen = Some(PathBuf::from(p)),
                None => {
                    eprintln!("sandboxd-agent: --listen needs a path\n{USAGE}");
                    return ExitCode::from(2);
                }
            },
            Some("--version" | "-V") => {
                let (major, minor) = sandboxd_protocol::PROTOCOL_VERSION;
                println!(
                    "sandboxd-agent {} (protocol {major}.{minor})",
                    env!("CARGO_PKG_VERSION")
                );
                return ExitCode::SUCCESS;
            }
            Some("--help" | "-h") => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!("sandboxd-agent: unexpected argument {arg:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }

    if let Err(e) = init::setup_process() {
        eprintln!("sandboxd-agent: process setup failed: {e}");
        return ExitCode::FAILURE;
    }
    let listener = match init::listener(listen.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sandboxd-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    let agent = Agent::new(Config::from_env());
    match agent.serve(listener) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandboxd-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `sandboxd-agent`: the guest agent binary. See the library's crate docs.

use std::path::PathBuf;
use std::process::ExitCode;

use sandboxd_agent::{init, Agent, Config};

/// musl's allocator maps and unmaps every large buffer afresh (a 64 MiB file read took 1.7
/// times as long); dlmalloc reuses them (see the crate docs, "Building").
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

const USAGE: &str = "usage: sandboxd-agent [--listen <socket path>] | --relay <socket path>

Serves the sandboxd host protocol inside a sandbox.
  --listen <path>   bind a Unix socket at <path> (ignored when SANDBOXD_LISTEN_FD is set)
  --relay <path>    connect to the agent at <path> and relay its stream over stdin/stdout
                    (how a host reaches an agent through `docker exec`)
  --version         print the agent and protocol versions
Environment:
  SANDBOXD_LISTEN_FD    inherited listening socket descriptor (normally 3)
  SANDBOXD_FILES_ROOT   directory the file API is confined to (default /workspace)
  SANDBOXD_PIDS_MAX     task limit (RLIMIT_NPROC) of the whole box (gVisor)";

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
            Some("--relay") => {
                let Some(p) = args.next() else {
                    eprintln!("sandboxd-agent: --relay needs a path\n{USAGE}");
                    return ExitCode::from(2);
                };
                return match relay(std::path::Path::new(&p)) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("sandboxd-agent: relay: {e}");
                        ExitCode::FAILURE
                    }
                };
            }
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
    if let Err(e) = init::limit_tasks() {
        eprintln!("sandboxd-agent: task limit: {e}");
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

/// Relay between stdin/stdout and the agent's socket at `path`, until either side ends. The
/// end of stdin closes the socket's writing side, which the agent sees as the host hanging up.
fn relay(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::net::UnixStream;
    // A box's agent may still be starting (its socket not there yet): wait a while for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let sock = loop {
        match UnixStream::connect(path) {
            Ok(s) => break s,
            Err(e)
                if std::time::Instant::now() < deadline
                    && matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    };
    let mut to_agent = sock.try_clone()?;
    let writer = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_agent);
        let _ = to_agent.shutdown(std::net::Shutdown::Write);
    });
    // By hand rather than io::copy: stdout is line-buffered, and frames must go out at once.
    let mut from_agent = sock;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    let copied = loop {
        use std::io::{Read, Write};
        match from_agent.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if let Err(e) = out.write_all(&buf[..n]).and_then(|()| out.flush()) {
                    break Err(e);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    // The agent closed: nothing more can come from the host side either.
    drop(writer);
    copied
}

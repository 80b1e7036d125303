//! `sandboxd`: the server (`serve`), the client commands (`create`, `ls`, `exec`, `rm`, `cp`,
//! `python`) and local template builds (`template build|ls`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use futures::StreamExt;
use sandboxd_client::types::{
    is_valid_sandbox_id, CreateSandboxRequest, ExecEvent, ExecRequest, PythonRequest, Resources,
};
use sandboxd_client::Client;

mod format;

/// Self-hosted sandboxes for AI agents.
#[derive(Debug, Parser)]
#[command(name = "sandboxd", version, propagate_version = true)]
struct Cli {
    /// URL of the sandboxd server.
    #[arg(
        long,
        global = true,
        env = "SANDBOXD_URL",
        default_value = "http://127.0.0.1:8000"
    )]
    url: String,
    /// Bearer token for the server [env: SANDBOXD_TOKEN, else BEARER_TOKEN]; with `serve`, the
    /// token the server requires (like --bearer-token).
    #[arg(long, global = true, hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<sandboxd_server::ServeArgs>),
    /// Create a sandbox and print its id.
    Create(CreateArgs),
    /// List sandboxes.
    Ls(LsArgs),
    /// Run a command in a sandbox, streaming its output; exits with its exit code.
    Exec(ExecArgs),
    /// Remove sandboxes.
    Rm {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Freeze sandboxes (processes and memory kept) until `resume`.
    Pause {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Let paused sandboxes run on.
    Resume {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Start sandboxes again in new boxes (same ids, same /workspace): the way back for a
    /// sandbox in state `error`.
    Restart {
        /// Sandbox ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Copy a file into or out of a sandbox: one side is `<id>:<path>` (path relative to
    /// /workspace), the other a local path or `-` for stdin/stdout.
    Cp {
        /// Source.
        src: String,
        /// Destination.
        dst: String,
    },
    /// Run Python code in a sandbox's persistent interpreter.
    Python {
        /// Sandbox id.
        id: String,
        /// The code, or `-` to read it from stdin.
        code: String,
        /// Interrupt the code after this many seconds.
        #[arg(long, value_name = "SECS")]
        timeout: Option<f64>,
    },
    /// Build and list templates (local; no server needed).
    #[command(subcommand)]
    Template(TemplateCommand),
}

#[derive(Debug, Args)]
struct CreateArgs {
    /// Sandbox type (template); default: the server's DEFAULT_SANDBOX_TYPE.
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    sandbox_type: Option<String>,
    /// Environment variable for everything run in the sandbox (repeatable).
    #[arg(long, short = 'e', value_name = "K=V", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Seconds until the sandbox is removed (0 = never).
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// Memory limit in MiB.
    #[arg(long, value_name = "MB")]
    memory: Option<u64>,
    /// CPU limit in cores (e.g. 0.5).
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Most processes and threads.
    #[arg(long, value_name = "N")]
    pids: Option<u64>,
    /// Disk limit in MiB (the writable root layer and /tmp, each).
    #[arg(long, value_name = "MB")]
    disk: Option<u64>,
    /// Label (repeatable); `ls --metadata` filters on them.
    #[arg(long, short = 'm', value_name = "K=V", value_parser = parse_kv)]
    metadata: Vec<(String, String)>,
    /// Session whose workspace is mounted at /workspace (default: the sandbox's own id).
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Take a warm sandbox from the server's pool (POOL_SIZE) when one fits (no --env,
    /// --session or limits); else create one.
    #[arg(long)]
    from_pool: bool,
    /// Publish this TCP port of the sandbox on a host port of the server's PORT_RANGE
    /// (repeatable); where each one is published is printed on stderr.
    #[arg(long = "port", value_name = "PORT")]
    ports: Vec<u16>,
    /// Run this Docker engine image instead of the type's template (docker backend only).
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,
    /// Print the whole sandbox record as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct LsArgs {
    /// Only sandboxes with this label (repeatable; all must match).
    #[arg(long, short = 'm', value_name = "K=V", value_parser = parse_kv)]
    metadata: Vec<(String, String)>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// Sandbox id.
    id: String,
    /// Extra environment variable (repeatable).
    #[arg(long, short = 'e', value_name = "K=V", value_parser = parse_kv)]
    env: Vec<(String, String)>,
    /// Working directory (default /workspace).
    #[arg(long, short = 'w', value_name = "DIR")]
    cwd: Option<String>,
    /// Kill the command after this many seconds (exit code 124, like timeout(1)).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
    /// Run this command line with /bin/sh -c instead of a program.
    #[arg(long, value_name = "CMD", conflicts_with = "cmd")]
    shell: Option<String>,
    /// Send this process's standard input to the command (read whole first).
    #[arg(long, short = 'i')]
    stdin: bool,
    /// Program and arguments (after `--`).
    #[arg(last = true, value_name = "CMD")]
    cmd: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum TemplateCommand {
    /// Build a template (cached: nothing to do when it is ready, unless --force).
    Build {
        /// Template name.
        #[arg(default_value = "base")]
        name: String,
        /// Rebuild even if it is ready.
        #[arg(long)]
        force: bool,
        /// Debian mirror for mmdebstrap builds.
        #[arg(long, value_name = "URL")]
        mirror: Option<String>,
        #[command(flatten)]
        dir: StateDirArg,
    },
    /// List known recipes and installed templates.
    Ls {
        #[command(flatten)]
        dir: StateDirArg,
    },
}

#[derive(Debug, Args)]
struct StateDirArg {
    /// State directory; templates live in <state-dir>/templates.
    #[arg(
        long,
        env = "SANDBOXD_STATE_DIR",
        default_value = "/var/lib/sandboxd",
        value_name = "DIR"
    )]
    state_dir: PathBuf,
    /// Templates directory [default: <state-dir>/templates].
    #[arg(long, env = "SANDBOXD_TEMPLATES_DIR", value_name = "DIR")]
    templates_dir: Option<PathBuf>,
}

impl StateDirArg {
    fn templates(&self) -> PathBuf {
        self.templates_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("templates"))
    }
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn secs_to_ms(secs: f64) -> Result<u64> {
    if !secs.is_finite() || secs < 0.0 {
        bail!("a timeout must be a non-negative number of seconds");
    }
    Ok((secs * 1000.0).round() as u64)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let url = cli.url.clone();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            report(&e, &url);
            ExitCode::from(1)
        }
    }
}

/// Print an error the way every command does: `error: <message>`.
fn report(e: &anyhow::Error, url: &str) {
    if let Some(ce) = e.downcast_ref::<sandboxd_client::Error>() {
        if ce.is_connect() {
            eprintln!("error: cannot connect to {url}; is `sandboxd serve` running at {url}?");
            return;
        }
    }
    eprintln!("error: {e:#}");
}

fn client(cli: &Cli) -> Client {
    let token = cli
        .token
        .clone()
        .or_else(|| std::env::var("SANDBOXD_TOKEN").ok())
        .or_else(|| std::env::var("BEARER_TOKEN").ok())
        .unwrap_or_default();
    Client::new(&cli.url).with_token(token)
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let c = client(&cli);
    match cli.command {
        Command::Serve(mut args) => {
            // `serve --token T` means the server's token when --bearer-token is not given.
            if args.bearer_token.is_none() {
                args.bearer_token = cli.token.clone();
            }
            serve(*args).await
        }
        Command::Create(a) => create(&c, a).await,
        Command::Ls(a) => ls(&c, a).await,
        Command::Exec(a) => exec(&c, a).await,
        Command::Rm { ids } => {
            let c = &c;
            each(ids, |id| async move { c.delete(&id).await }).await
        }
        Command::Pause { ids } => {
            let c = &c;
            each(ids, |id| async move { c.pause(&id).await.map(drop) }).await
        }
        Command::Resume { ids } => {
            let c = &c;
            each(ids, |id| async move { c.resume(&id).await.map(drop) }).await
        }
        Command::Restart { ids } => {
            let c = &c;
            each(ids, |id| async move { c.restart(&id).await.map(drop) }).await
        }
        Command::Cp { src, dst } => cp(&c, &src, &dst).await,
        Command::Python { id, code, timeout } => python(&c, &id, &code, timeout).await,
        Command::Template(t) => template(t).await,
    }
}

async fn serve(args: sandboxd_server::ServeArgs) -> Result<ExitCode> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let settings = sandboxd_server::Settings::load(&args)?;
    sandboxd_server::run(settings).await?;
    Ok(ExitCode::SUCCESS)
}

/// Do `op` to each sandbox id, printing the ids it worked for and the errors of the others;
/// exit code 1 if any failed. A server that cannot be reached stops it at once.
async fn each<F, Fut>(ids: Vec<String>, op: F) -> anyhow::Result<ExitCode>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<(), sandboxd_client::Error>>,
{
    let mut failed = false;
    for id in ids {
        match op(id.clone()).await {
            Ok(()) => println!("{id}"),
            Err(e) if e.is_connect() => return Err(e.into()),
            Err(e) => {
                eprintln!("error: {id}: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn create(c: &Client, a: CreateArgs) -> Result<ExitCode> {
    let resources =
        (a.memory.is_some() || a.cpus.is_some() || a.pids.is_some() || a.disk.is_some()).then_some(
            Resources {
                memory_mb: a.memory,
                cpus: a.cpus,
                pids: a.pids,
                disk_mb: a.disk,
            },
        );
    let req = CreateSandboxRequest {
        sandbox_type: a.sandbox_type,
        env: a.env.into_iter().collect(),
        resources,
        timeout_secs: a.timeout,
        metadata: a.metadata.into_iter().collect(),
        session_id: a.session,
        from_pool: a.from_pool,
        ports: a.ports,
        image: a.image,
    };
    let sb = c.create(&req).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&sb)?);
    } else {
        println!("{}", sb.id);
        // On stderr, so that `id=$(sandboxd create ...)` still gets the id alone.
        for p in &sb.ports {
            eprintln!("port {} published at {}", p.port, p.address);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn ls(c: &Client, a: LsArgs) -> Result<ExitCode> {
    let filter: BTreeMap<String, String> = a.metadata.into_iter().collect();
    let list = c.list(&filter).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        print!("{}", format::sandbox_table(&list, format::now_ms()));
    }
    Ok(ExitCode::SUCCESS)
}

async fn exec(c: &Client, a: ExecArgs) -> Result<ExitCode> {
    if a.shell.is_none() && a.cmd.is_empty() {
        bail!("give a command after `--`, or --shell \"command line\"");
    }
    let stdin = if a.stdin {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        Some(s)
    } else {
        None
    };
    let req = ExecRequest {
        cmd: (!a.cmd.is_empty()).then_some(a.cmd),
        shell: a.shell,
        env: a.env.into_iter().collect(),
        cwd: a.cwd,
        stdin,
        timeout_ms: a.timeout.map(secs_to_ms).transpose()?,
        stream: true,
    };
    let mut events = c.exec_stream(&a.id, &req).await?;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    while let Some(ev) = events.next().await {
        match ev? {
            ExecEvent::Started { .. } => {}
            ExecEvent::Stdout { data } => {
                out.write_all(data.as_bytes())?;
                out.flush()?;
            }
            ExecEvent::Stderr { data } => {
                err.write_all(data.as_bytes())?;
                err.flush()?;
            }
            ExecEvent::Exit {
                exit_code,
                signal,
                timed_out,
                ..
            } => {
                return Ok(ExitCode::from(format::exit_status(
                    exit_code, signal, timed_out,
                )))
            }
            ExecEvent::Error { error } => {
                let code = serde_json::to_value(error.code)?;
                bail!("{} ({})", error.message, code.as_str().unwrap_or("error"));
            }
        }
    }
    bail!("the server ended the output without an exit status")
}

/// `<id>:<path>` → `(id, path)`.
fn remote(s: &str) -> Option<(&str, &str)> {
    let (id, path) = s.split_once(':')?;
    is_valid_sandbox_id(id).then_some((id, path))
}

fn base_name(p: &str) -> Option<&str> {
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
}

async fn cp(c: &Client, src: &str, dst: &str) -> Result<ExitCode> {
    match (remote(src), remote(dst)) {
        (Some(_), Some(_)) => {
            bail!("copy between two sandboxes is not supported; go through a local file")
        }
        (None, None) => bail!("one side of `cp` must be <sandbox id>:<path>"),
        (None, Some((id, path))) => {
            // Upload.
            let mut path = if path.is_empty() { "." } else { path }.to_string();
            if path.ends_with('/') || path == "." {
                let name = base_name(src)
                    .filter(|_| src != "-")
                    .ok_or_else(|| anyhow!("name the destination file: {id}:<path>"))?;
                if !path.ends_with('/') {
                    path.push('/');
                }
                path.push_str(name);
            }
            let entry = if src == "-" {
                let stream = tokio_util::io::ReaderStream::new(tokio::io::stdin());
                c.write_file_stream(id, &path, None, stream).await?
            } else {
                let file = tokio::fs::File::open(src)
                    .await
                    .with_context(|| format!("cannot open {src}"))?;
                let meta = file.metadata().await?;
                if meta.is_dir() {
                    bail!("{src} is a directory; cp copies single files");
                }
                let mode = {
                    use std::os::unix::fs::PermissionsExt;
                    meta.permissions().mode() & 0o777
                };
                let stream = tokio_util::io::ReaderStream::new(file);
                c.write_file_stream(id, &path, Some(mode), stream).await?
            };
            eprintln!("{} bytes -> {id}:{}", entry.size, entry.path);
        }
        (Some((id, path)), None) => {
            // Download.
            let mut stream = c.read_file_stream(id, path).await?;
            if dst == "-" {
                let mut out = std::io::stdout().lock();
                while let Some(piece) = stream.next().await {
                    out.write_all(&piece?)?;
                }
                out.flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut target = PathBuf::from(dst);
            if target.is_dir() {
                let name = base_name(path)
                    .ok_or_else(|| anyhow!("cannot name a local file after {path:?}"))?;
                target.push(name);
            }
            let tmp = partial_name(&target);
            let result = async {
                let mut f = tokio::fs::File::create(&tmp)
                    .await
                    .with_context(|| format!("cannot create {}", tmp.display()))?;
                let mut n: u64 = 0;
                while let Some(piece) = stream.next().await {
                    let piece = piece?;
                    n += piece.len() as u64;
                    tokio::io::AsyncWriteExt::write_all(&mut f, &piece).await?;
                }
                tokio::io::AsyncWriteExt::flush(&mut f).await?;
                tokio::fs::rename(&tmp, &target).await?;
                anyhow::Ok(n)
            }
            .await;
            match result {
                Ok(n) => eprintln!("{id}:{path} -> {} ({n} bytes)", target.display()),
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return Err(e);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Where a download goes until it is complete.
fn partial_name(target: &Path) -> PathBuf {
    let mut name = target
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".sandboxd-partial");
    target.with_file_name(name)
}

async fn python(c: &Client, id: &str, code: &str, timeout: Option<f64>) -> Result<ExitCode> {
    let code = if code == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading code from standard input")?;
        s
    } else {
        code.to_string()
    };
    let r = c
        .python(
            id,
            &PythonRequest {
                code,
                timeout_ms: timeout.map(secs_to_ms).transpose()?,
            },
        )
        .await?;
    print!("{}", r.stdout);
    eprint!("{}", r.stderr);
    if let Some(result) = &r.result {
        println!("{result}");
    }
    if let Some(e) = &r.error {
        for line in &e.traceback {
            eprint!("{line}");
            if !line.ends_with('\n') {
                eprintln!();
            }
        }
        if e.traceback.is_empty() {
            eprintln!("{}: {}", e.ename, e.evalue);
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn template(t: TemplateCommand) -> Result<ExitCode> {
    match t {
        TemplateCommand::Build {
            name,
            force,
            mirror,
            dir,
        } => {
            let templates = dir.templates();
            let opts = sandboxd_template::BuildOptions {
                force,
                mirror: Some(mirror.unwrap_or_else(sandboxd_template::default_mirror)),
                progress: std::io::stderr().is_terminal(),
            };
            let n = name.clone();
            let outcome = tokio::task::spawn_blocking(move || {
                sandboxd_template::build(&templates, &n, &opts)
            })
            .await??;
            match outcome {
                sandboxd_template::BuildOutcome::Built { elapsed } => {
                    tracing::debug!(%name, ?elapsed, "template built")
                }
                sandboxd_template::BuildOutcome::Cached => {
                    eprintln!("template {name} is ready (use --force to rebuild)")
                }
            }
        }
        TemplateCommand::Ls { dir } => {
            let templates = dir.templates();
            let recipes = sandboxd_template::recipes();
            let mut rows: Vec<[String; 3]> = recipes
                .iter()
                .map(|r| {
                    let state = if sandboxd_template::is_ready(&templates, r.name) {
                        "ready"
                    } else {
                        "not built"
                    };
                    [
                        r.name.to_string(),
                        state.to_string(),
                        r.description.to_string(),
                    ]
                })
                .collect();
            // Templates installed by other means.
            let mut others: Vec<String> = std::fs::read_dir(&templates)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.') && !recipes.iter().any(|r| r.name == n))
                .filter(|n| sandboxd_template::is_ready(&templates, n))
                .collect();
            others.sort();
            for n in others {
                rows.push([n, "ready".into(), "(no recipe)".into()]);
            }
            print!(
                "{}",
                format::table(&["NAME", "STATE", "DESCRIPTION"], &rows)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        Cli::command_for_tests().debug_assert();
        let cli = Cli::try_parse_from([
            "sandboxd",
            "exec",
            "sb-0123456789abcdef",
            "-e",
            "A=1",
            "--",
            "ls",
            "-la",
        ])
        .unwrap();
        match cli.command {
            Command::Exec(a) => {
                assert_eq!(a.cmd, vec!["ls", "-la"]);
                assert_eq!(a.env, vec![("A".into(), "1".into())]);
            }
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["sandboxd", "create", "--env", "novalue"]).is_err());
        let cli = Cli::try_parse_from([
            "sandboxd",
            "serve",
            "--port",
            "9000",
            "--config",
            "x.env",
            "--extension",
            "a.toml",
            "--extension",
            "b.toml",
        ])
        .unwrap();
        match cli.command {
            Command::Serve(a) => {
                assert_eq!(a.port.as_deref(), Some("9000"));
                assert_eq!(a.config, Some(PathBuf::from("x.env")));
                assert_eq!(
                    a.extension,
                    vec![PathBuf::from("a.toml"), PathBuf::from("b.toml")]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }

    #[test]
    fn remote_paths() {
        assert_eq!(
            remote("sb-0123456789abcdef:a/b"),
            Some(("sb-0123456789abcdef", "a/b"))
        );
        assert_eq!(remote("./local:file"), None);
        assert_eq!(remote("C:/x"), None);
        assert_eq!(base_name("a/b/c.txt"), Some("c.txt"));
        assert_eq!(base_name("dir/"), Some("dir"));
        assert_eq!(base_name(".."), None);
        assert_eq!(
            partial_name(Path::new("/tmp/x.bin")),
            PathBuf::from("/tmp/x.bin.sandboxd-partial")
        );
    }
}

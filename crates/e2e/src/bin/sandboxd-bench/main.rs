//! `sandboxd-bench`: measures sandboxd beside bubblewrap on the same machine, in one run.
//!
//! - create → first output: create a sandbox and stream `echo hi` until its first output byte
//!   arrives (sandboxd, over the HTTP API); start `bwrap … echo hi` and read its first output
//!   byte (bubblewrap, a whole process per sandbox).
//! - create from a warm pool → first output: the same, with `from_pool` against a server that
//!   keeps one sandbox warm (`POOL_SIZE=1`), waiting for the refill before each sample.
//! - exec round-trip of `true`: `POST /exec` of `true` in one running sandbox until the reply
//!   arrives; for bubblewrap, `bwrap … true` from spawn to exit (it has no long-lived sandbox).
//!
//! - the floor: `/bin/true` started and waited for as a plain host process, the least any exec
//!   round-trip on this machine can cost. Sampled between the exec round-trips, so that both
//!   see the machine in the same state (on a shared virtual machine the floor itself drifts by
//!   a quarter from one minute to the next).
//!
//! - the same two on the docker backend (a private dockerd it starts), beside `docker run …
//!   echo hi` (to its first output byte) and `docker exec … true` on the same engine, image and
//!   container.
//!
//! - the same two on the gvisor backend, beside `runsc run … echo hi` (to its first output
//!   byte, same rootfs, platform and flags) and `runsc exec … true` in a container of runsc's
//!   own.
//!
//! Prints p50 and p95 of each figure and the ratio to its peer.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::StreamExt;
use sandboxd_e2e::{percentile, Server, ServerOptions};
use sandboxd_types::{CreateSandboxRequest, ExecEvent, ExecRequest, SandboxState};

mod concurrency;
mod density;

#[derive(Parser, Debug)]
#[command(about = "Benchmark sandboxd against bubblewrap and Docker on this machine")]
struct Args {
    /// Sandbox type to create.
    #[arg(long, default_value = "base")]
    r#type: String,
    /// Create → first output samples.
    #[arg(long, default_value_t = 50)]
    creates: usize,
    /// Create-from-a-warm-pool → first output samples (only with a server of its own).
    #[arg(long, default_value_t = 30)]
    pooled: usize,
    /// Exec round-trip samples.
    #[arg(long, default_value_t = 500)]
    execs: usize,
    /// Use a running server at this URL instead of starting one.
    #[arg(long)]
    url: Option<String>,
    /// Skip the peers' rows (bubblewrap, docker run, docker exec).
    #[arg(long)]
    no_peers: bool,
    /// Skip the docker backend's rows (they start a private dockerd).
    #[arg(long)]
    no_docker: bool,
    /// Samples of each docker row.
    #[arg(long, default_value_t = 20)]
    docker_samples: usize,
    /// Skip the gvisor backend's rows.
    #[arg(long)]
    no_gvisor: bool,
    /// Samples of each gvisor row.
    #[arg(long, default_value_t = 20)]
    gvisor_samples: usize,
    /// Idle sandboxes of the density figures (the server at rest is also measured with 0 and
    /// 100).
    #[arg(long, default_value_t = 1000)]
    density: usize,
    /// Skip the density figures.
    #[arg(long)]
    no_density: bool,
    /// Concurrent clients of the concurrency figures, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8,32,128")]
    concurrency: Vec<usize>,
    /// Sandboxes each concurrent client creates (each then runs one command and is deleted).
    #[arg(long, default_value_t = 4)]
    per_client: usize,
    /// Skip the concurrency figures.
    #[arg(long)]
    no_concurrency: bool,
}

struct Row {
    what: &'static str,
    ours: Vec<Duration>,
    /// The peer doing the same, and its samples.
    peer: Option<(&'static str, Vec<Duration>)>,
    target_p50: Duration,
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server;
    let client = match &args.url {
        Some(u) => sandboxd_client::Client::new(u.clone()),
        None => {
            eprintln!("starting sandboxd serve …");
            server = Server::start(ServerOptions::default()).await?;
            server.client()
        }
    };
    let rootfs = sandboxd_e2e::templates_dir()
        .join(&args.r#type)
        .join("rootfs");

    eprintln!(
        "create → first output, sandboxd ({} samples) …",
        args.creates
    );
    let (create, echo) = sample_requests(&args);
    let mut tti = Vec::with_capacity(args.creates);
    for _ in 0..args.creates {
        let (took, _) = time_to_output(&client, &create, &echo).await?;
        tti.push(took);
    }

    // From a warm pool: a server of our own keeps one sandbox of the type warm; each sample
    // waits for the refill, then asks for a pooled sandbox and checks it got the warm one.
    let mut pooled = Vec::new();
    let pool_server;
    if args.url.is_none() {
        eprintln!(
            "create from a warm pool → first output, sandboxd ({} samples) …",
            args.pooled
        );
        pool_server = Server::start(ServerOptions {
            env: vec![
                ("POOL_SIZE".into(), "1".into()),
                ("DEFAULT_SANDBOX_TYPE".into(), args.r#type.clone()),
            ],
            ..Default::default()
        })
        .await?;
        let pool_client = pool_server.client();
        let from_pool = CreateSandboxRequest {
            from_pool: true,
            ..create.clone()
        };
        for _ in 0..args.pooled {
            let warm = wait_warm(&pool_client).await?;
            let (took, id) = time_to_output(&pool_client, &from_pool, &echo).await?;
            if id != warm {
                bail!("the pooled create did not get the warm sandbox {warm} (got {id})");
            }
            pooled.push(took);
        }
    }

    eprintln!(
        "exec round-trip of `true`, sandboxd ({} samples) …",
        args.execs
    );
    let sb = client.create(&create).await?;
    let truth = ExecRequest {
        cmd: Some(vec!["true".into()]),
        ..Default::default()
    };
    for _ in 0..20 {
        client.exec(&sb.id, &truth).await?;
    }
    let mut rtt = Vec::with_capacity(args.execs);
    let mut floor = Vec::with_capacity(args.execs);
    for _ in 0..args.execs {
        let t0 = Instant::now();
        let r = client.exec(&sb.id, &truth).await?;
        rtt.push(t0.elapsed());
        if r.exit_code != Some(0) {
            bail!("`true` failed: {r:?}");
        }
        let t0 = Instant::now();
        Command::new("/bin/true").status()?;
        floor.push(t0.elapsed());
    }
    client.delete(&sb.id).await?;

    let (peer_tti, peer_rtt) = if args.no_peers {
        (None, None)
    } else {
        match bwrap_samples(&rootfs, args.creates, args.execs.min(200)) {
            Ok((a, b)) => (Some(a), Some(b)),
            Err(e) => {
                eprintln!("bubblewrap rows skipped: {e:#}");
                (None, None)
            }
        }
    };

    let (docker_tti, docker_rtt) = backend_rows(
        "docker",
        (!args.no_docker && args.url.is_none()).then_some(docker_samples(&args).await),
        ["create → first output, docker backend", "docker run"],
        ["exec round-trip `true`, docker backend", "docker exec"],
    );
    let (gvisor_tti, gvisor_rtt) = backend_rows(
        "gvisor",
        (!args.no_gvisor && args.url.is_none()).then_some(gvisor_samples(&args, &rootfs).await),
        ["create → first output, gvisor backend", "runsc run"],
        ["exec round-trip `true`, gvisor backend", "runsc exec"],
    );

    let rows = [
        Row {
            what: "create → first output",
            ours: tti,
            peer: peer_tti.map(|p| ("bwrap", p)),
            target_p50: Duration::from_millis(30),
        },
        Row {
            what: "create from a warm pool → first output",
            ours: pooled,
            peer: None,
            target_p50: Duration::ZERO,
        },
        Row {
            what: "exec round-trip `true`",
            ours: rtt,
            peer: peer_rtt.map(|p| ("bwrap", p)),
            target_p50: Duration::from_millis(2),
        },
        docker_tti,
        docker_rtt,
        gvisor_tti,
        gvisor_rtt,
        Row {
            what: "host spawn+wait of /bin/true (floor)",
            ours: floor,
            peer: None,
            target_p50: Duration::ZERO,
        },
    ];
    println!();
    println!(
        "| figure | p50 ms | p95 ms | peer | peer p50 ms | peer p95 ms | p50 ratio to peer | target p50 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for mut r in rows {
        if r.ours.is_empty() {
            continue;
        }
        r.ours.sort();
        let (p50, p95) = (percentile(&r.ours, 50.0), percentile(&r.ours, 95.0));
        let (peer, bp50, bp95, ratio) = match r.peer.as_mut() {
            Some((name, p)) => {
                p.sort();
                let b50 = percentile(p, 50.0);
                (
                    *name,
                    ms(b50),
                    ms(percentile(p, 95.0)),
                    format!("{:.2}", p50.as_secs_f64() / b50.as_secs_f64()),
                )
            }
            None => ("-", "-".into(), "-".into(), "-".into()),
        };
        let target = if r.target_p50.is_zero() {
            "-".to_string()
        } else if p50 <= r.target_p50 {
            format!("{} (met)", ms(r.target_p50))
        } else {
            format!("{} (missed)", ms(r.target_p50))
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.what,
            ms(p50),
            ms(p95),
            peer,
            bp50,
            bp95,
            ratio,
            target
        );
    }
    // Servers of their own, so that nothing above is left in them.
    if args.url.is_none() && !args.no_concurrency {
        concurrency::run(&args).await?;
    }
    if args.url.is_none() && !args.no_density {
        density::run(&args).await?;
    }
    Ok(())
}

/// What a create → first output sample sends: the create, and the command it waits on.
fn sample_requests(args: &Args) -> (CreateSandboxRequest, ExecRequest) {
    let create = CreateSandboxRequest {
        sandbox_type: Some(args.r#type.clone()),
        timeout_secs: Some(120),
        ..Default::default()
    };
    let echo = ExecRequest {
        cmd: Some(vec!["echo".into(), "hi".into()]),
        ..Default::default()
    };
    (create, echo)
}

fn empty_row() -> Row {
    Row {
        what: "",
        ours: Vec::new(),
        peer: None,
        target_p50: Duration::ZERO,
    }
}

/// The samples of a backend's rows: sandboxd on it, and its runtime's own `run` and `exec` on
/// the same engine, image or rootfs.
struct BackendSamples {
    tti: Vec<Duration>,
    rtt: Vec<Duration>,
    run: Option<Vec<Duration>>,
    exec: Option<Vec<Duration>>,
}

async fn docker_samples(args: &Args) -> Result<BackendSamples> {
    use std::io::Read;
    eprintln!("starting a private dockerd and sandboxd serve on the docker backend …");
    let dockerd = sandboxd_e2e::DockerDaemon::start()?;
    let server = Server::start(ServerOptions {
        env: vec![
            ("CONTAINER_DEPLOYMENT".into(), "docker".into()),
            ("DOCKER_HOST".into(), dockerd.host.clone()),
        ],
        ..Default::default()
    })
    .await?;
    let client = server.client();
    let (tti, rtt, sb_id) = backend_samples(&client, args, "docker", args.docker_samples).await?;
    let docker = |args: &[&str]| {
        let mut c = Command::new("docker");
        c.env("DOCKER_HOST", &dockerd.host).args(args);
        c
    };
    let (mut run, mut exec) = (None, None);
    if !args.no_peers {
        let image = String::from_utf8(
            docker(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
                .output()?
                .stdout,
        )?;
        let image = image
            .lines()
            .find(|l| l.starts_with("sandboxd-template/"))
            .context("the imported template image")?
            .to_string();
        eprintln!("docker run … echo hi ({} samples) …", args.docker_samples);
        let mut samples = Vec::new();
        for _ in 0..args.docker_samples {
            let t0 = Instant::now();
            let mut child = docker(&["run", "--rm", "--network", "none", &image, "echo", "hi"])
                .stdout(Stdio::piped())
                .spawn()?;
            let mut byte = [0u8; 1];
            let n = child.stdout.as_mut().expect("piped").read(&mut byte)?;
            samples.push(t0.elapsed());
            child.wait()?;
            if n != 1 {
                bail!("docker run echo printed nothing");
            }
        }
        run = Some(samples);
        let container = format!("sandboxd-{sb_id}");
        eprintln!("docker exec … true ({} samples) …", args.docker_samples);
        let mut samples = Vec::new();
        for _ in 0..args.docker_samples {
            let t0 = Instant::now();
            let s = docker(&["exec", &container, "true"]).status()?;
            samples.push(t0.elapsed());
            if !s.success() {
                bail!("docker exec true failed: {s}");
            }
        }
        exec = Some(samples);
    }
    client.delete(&sb_id).await?;
    Ok(BackendSamples {
        tti,
        rtt,
        run,
        exec,
    })
}

/// A backend's two rows (its create → first output and exec round-trip, each beside its
/// runtime's own peer, named in `[figure, peer]`), empty when the backend was not measured.
fn backend_rows(
    backend: &str,
    samples: Option<Result<BackendSamples>>,
    tti: [&'static str; 2],
    rtt: [&'static str; 2],
) -> (Row, Row) {
    match samples {
        Some(Ok(d)) => (
            Row {
                what: tti[0],
                ours: d.tti,
                peer: d.run.map(|p| (tti[1], p)),
                target_p50: Duration::ZERO,
            },
            Row {
                what: rtt[0],
                ours: d.rtt,
                peer: d.exec.map(|p| (rtt[1], p)),
                target_p50: Duration::ZERO,
            },
        ),
        Some(Err(e)) => {
            eprintln!("{backend} rows skipped: {e:#}");
            (empty_row(), empty_row())
        }
        None => (empty_row(), empty_row()),
    }
}

/// sandboxd's own samples on a backend: create → first output, then exec round-trips in one
/// sandbox, whose id is returned with them.
async fn backend_samples(
    client: &sandboxd_client::Client,
    args: &Args,
    backend: &str,
    samples: usize,
) -> Result<(Vec<Duration>, Vec<Duration>, String)> {
    let (create, echo) = sample_requests(args);
    // The first create may do one-time work (the docker backend imports the template).
    time_to_output(client, &create, &echo).await?;
    eprintln!("create → first output, {backend} backend ({samples} samples) …");
    let mut tti = Vec::new();
    for _ in 0..samples {
        tti.push(time_to_output(client, &create, &echo).await?.0);
    }
    let sb = client.create(&create).await?;
    let truth = ExecRequest {
        cmd: Some(vec!["true".into()]),
        ..Default::default()
    };
    let mut rtt = Vec::new();
    for i in 0..(samples * 5 + 10) {
        let t0 = Instant::now();
        client.exec(&sb.id, &truth).await?;
        if i >= 10 {
            rtt.push(t0.elapsed());
        }
    }
    Ok((tti, rtt, sb.id))
}

/// The gvisor rows' samples: sandboxd on the gvisor backend, and runsc's own `run` and
/// `exec` with the same rootfs, platform and network flags.
async fn gvisor_samples(args: &Args, rootfs: &std::path::Path) -> Result<BackendSamples> {
    use std::io::Read;
    eprintln!("starting sandboxd serve on the gvisor backend …");
    let server = Server::start(ServerOptions {
        env: vec![("CONTAINER_DEPLOYMENT".into(), "gvisor".into())],
        ..Default::default()
    })
    .await?;
    let client = server.client();
    let (tti, rtt, id) = backend_samples(&client, args, "gvisor", args.gvisor_samples).await?;
    client.delete(&id).await?;
    drop(server);
    let (mut run, mut exec) = (None, None);
    if !args.no_peers {
        let dir = tempfile::Builder::new()
            .prefix("sandboxd-bench-runsc-")
            .tempdir()?;
        let bundle = |name: &str, argv: &[&str]| -> Result<PathBuf> {
            let b = dir.path().join(name);
            std::fs::create_dir_all(&b)?;
            let spec = serde_json::json!({
                "ociVersion": "1.0.0",
                "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": argv,
                            "env": ["PATH=/usr/bin:/bin"], "cwd": "/"},
                "root": {"path": rootfs, "readonly": false},
                "hostname": "peer",
                "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
                "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                                         {"type": "uts"}, {"type": "mount"}]},
            });
            std::fs::write(b.join("config.json"), spec.to_string())?;
            Ok(b)
        };
        let state = dir.path().join("state");
        let runsc = |extra: &[&str]| {
            let mut c = Command::new("runsc");
            c.arg("--root")
                .arg(&state)
                .args(["--platform=systrap", "--network=none"])
                .arg(format!("--overlay2=root:dir={}", dir.path().display()))
                .args(extra);
            c
        };
        let echo = bundle("echo", &["echo", "hi"])?;
        eprintln!("runsc run … echo hi ({} samples) …", args.gvisor_samples);
        let mut samples = Vec::new();
        for i in 0..args.gvisor_samples {
            let name = format!("peer-echo-{i}");
            let t0 = Instant::now();
            let mut child = runsc(&["run", "--bundle"])
                .arg(&echo)
                .arg(&name)
                .stdout(Stdio::piped())
                .spawn()?;
            let mut byte = [0u8; 1];
            let n = child.stdout.as_mut().expect("piped").read(&mut byte)?;
            samples.push(t0.elapsed());
            child.wait()?;
            let _ = runsc(&["delete", "--force", &name]).status();
            if n != 1 {
                bail!("runsc run echo printed nothing");
            }
        }
        run = Some(samples);
        let sleeper = bundle("sleep", &["sleep", "3600"])?;
        let s = runsc(&["run", "--detach", "--bundle"])
            .arg(&sleeper)
            .arg("peer-sleep")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !s.success() {
            bail!("runsc run --detach failed: {s}");
        }
        eprintln!("runsc exec … true ({} samples) …", args.gvisor_samples);
        let mut samples = Vec::new();
        for _ in 0..args.gvisor_samples {
            let t0 = Instant::now();
            let s = runsc(&["exec", "peer-sleep", "true"]).status()?;
            samples.push(t0.elapsed());
            if !s.success() {
                bail!("runsc exec true failed: {s}");
            }
        }
        let _ = runsc(&["delete", "--force", "peer-sleep"]).status();
        exec = Some(samples);
    }
    Ok(BackendSamples {
        tti,
        rtt,
        run,
        exec,
    })
}

/// One sample: create a sandbox with `create`, stream `echo` until its first output, delete it.
/// The time from the create request to that output, and the sandbox's id.
async fn time_to_output(
    client: &sandboxd_client::Client,
    create: &CreateSandboxRequest,
    echo: &ExecRequest,
) -> Result<(Duration, String)> {
    let t0 = Instant::now();
    let sb = client.create(create).await.context("create")?;
    let mut events = client.exec_stream(&sb.id, echo).await?;
    loop {
        match events.next().await {
            Some(Ok(ExecEvent::Stdout { .. })) => break,
            Some(Ok(ExecEvent::Started { .. })) => {}
            other => bail!("no output from echo: {other:?}"),
        }
    }
    let took = t0.elapsed();
    drop(events);
    client.delete(&sb.id).await?;
    Ok((took, sb.id))
}

/// The id of a warm sandbox, once the pool has one.
async fn wait_warm(client: &sandboxd_client::Client) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = client.list(&Default::default()).await?;
        if let Some(sb) = all.into_iter().find(|s| s.state == SandboxState::Warm) {
            return Ok(sb.id);
        }
        if Instant::now() > deadline {
            bail!("the pool did not refill within a minute");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// bubblewrap over the same template: a new set of namespaces per run, like a sandbox.
fn bwrap_cmd(rootfs: &PathBuf, argv: &[&str]) -> Command {
    let mut c = Command::new("bwrap");
    c.arg("--unshare-all")
        .arg("--die-with-parent")
        .arg("--ro-bind")
        .arg(rootfs)
        .arg("/")
        .args(["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--"])
        .args(argv)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    c
}

fn bwrap_samples(
    rootfs: &PathBuf,
    creates: usize,
    execs: usize,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    use std::io::Read;
    if !rootfs.exists() {
        bail!("template root {} is missing", rootfs.display());
    }
    let status = bwrap_cmd(rootfs, &["true"])
        .status()
        .context("bwrap is not installed (apt-get install bubblewrap)")?;
    if !status.success() {
        bail!("bwrap … true failed: {status}");
    }
    eprintln!("create → first output, bwrap ({creates} samples) …");
    let mut tti = Vec::with_capacity(creates);
    for _ in 0..creates {
        let t0 = Instant::now();
        let mut child = bwrap_cmd(rootfs, &["echo", "hi"])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut byte = [0u8; 1];
        let n = child.stdout.as_mut().expect("piped").read(&mut byte)?;
        tti.push(t0.elapsed());
        child.wait()?;
        if n != 1 {
            bail!("bwrap echo printed nothing");
        }
    }
    eprintln!("`true` round-trip, bwrap ({execs} samples) …");
    let mut rtt = Vec::with_capacity(execs);
    for _ in 0..execs {
        let t0 = Instant::now();
        let s = bwrap_cmd(rootfs, &["true"])
            .stdout(Stdio::null())
            .status()?;
        rtt.push(t0.elapsed());
        if !s.success() {
            bail!("bwrap true failed: {s}");
        }
    }
    Ok((tti, rtt))
}

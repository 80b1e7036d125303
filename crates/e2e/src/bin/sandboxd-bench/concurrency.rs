//! The concurrency figures: C clients at once against a server of their own, each creating
//! `per_client` sandboxes one after another; each sandbox streams `echo hi` until its first
//! output byte (time to interactive), runs one exec of `true`, and is deleted. Beside it,
//! bubblewrap with C threads each starting `bwrap … echo hi` `per_client` times, timed to the
//! first output byte as well.
//!
//! Each level also says where the machine's CPU time went: to the benchmark's own clients, to
//! the server process, to the sandboxes' cgroups (agents and their commands) and to the rest
//! (the kernel's workers: namespace and cgroup teardown, RCU), per sandbox.
//!
//! Each level runs twice: cold (no pool: every create makes a new box) and from a warm pool
//! (a pool as large as the level's sandboxes, filled before the clock starts; each create asks
//! `from_pool`), the way a server expecting a burst would be set up.
//!
//! Every client is an agent of its own: its own `Client`, so its own connection pool, like C
//! separate processes would have. Each connects (a `/health` request) before the start, so that
//! the figures are of sandboxes, not of C TCP handshakes landing at once; it then keeps that
//! connection alive, which is why the echo stream is read to its exit event (which the client
//! passes on once the response has ended) rather than dropped (a dropped stream closes its
//! connection). The client's connection pool takes a finished connection back a moment later,
//! in the connection's own task, so a request right after may still open another one: in one
//! burst of 128 clients × 2 sandboxes, 214 connections (259 before the client waited for the
//! response's end).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use sandboxd_e2e::{percentile, Server, ServerOptions};
use sandboxd_types::{CreateSandboxRequest, ExecEvent, ExecRequest};

use super::ms;

/// The target: this many clients at once, no errors, and p99 time to interactive within
/// `TARGET_P99`.
const TARGET_CLIENTS: usize = 128;
const TARGET_P99: Duration = Duration::from_millis(100);

/// Longest one operation may take before it counts as an error; far above any queueing the
/// largest run causes, so it only catches a hang, which would otherwise stall the benchmark.
const OP_TIMEOUT: Duration = Duration::from_secs(120);

/// One concurrency level's outcome.
struct Level {
    clients: usize,
    /// From a warm pool, or cold.
    pooled: bool,
    ops: usize,
    /// When each failure happened and what it was, so that the first one can be named.
    errors: Vec<(Instant, String)>,
    /// Time to interactive of each client's first sandbox (the burst of `clients` creates at
    /// the same instant), and of the later ones.
    tti_first: Vec<Duration>,
    tti_later: Vec<Duration>,
    rtt: Vec<Duration>,
    /// Deletes, on every client's path to its next create, so part of what bounds the
    /// throughput.
    del: Vec<Duration>,
    wall: Duration,
    /// CPU time the machine spent busy during the level (`None`: unreadable).
    busy: Option<Duration>,
    /// That time split by who spent it.
    split: Option<CpuTimes>,
    /// Sandboxes the server still listed after every client had finished.
    leftover: usize,
    peer: Option<Result<Peer>>,
}

/// CPU time by who spent it: the benchmark's own clients (this process), the server process
/// and the sandboxes (their cgroups: agents and commands). Read as counters since boot, and as
/// a level's share their difference; the machine's busy time less these three is the rest (the
/// kernel's workers and interrupts, other processes).
#[derive(Clone, Copy)]
struct CpuTimes {
    clients: Duration,
    server: Duration,
    sandboxes: Duration,
}

impl CpuTimes {
    fn read(server: &Server) -> Option<CpuTimes> {
        let ticks = |pid| {
            super::density::cpu_ticks(pid)
                .map(|t| Duration::from_secs_f64(t as f64 / super::density::clock_ticks()))
        };
        let groups = sandboxd_e2e::cgroup_dirs(&server.cgroup_parent);
        // Before a cold level's first create the sandboxes' parent group may not exist yet:
        // they have spent nothing.
        let sandboxes = if groups.is_empty() {
            0
        } else {
            super::density::groups_cpu_ns(&groups)?
        };
        Some(CpuTimes {
            clients: ticks(std::process::id())?,
            server: ticks(server.pid()?)?,
            sandboxes: Duration::from_nanos(sandboxes),
        })
    }

    fn since(&self, start: &CpuTimes) -> CpuTimes {
        CpuTimes {
            clients: self.clients.saturating_sub(start.clients),
            server: self.server.saturating_sub(start.server),
            sandboxes: self.sandboxes.saturating_sub(start.sandboxes),
        }
    }
}

/// bubblewrap's outcome at the same level.
struct Peer {
    tti: Vec<Duration>,
    errors: usize,
    wall: Duration,
}

/// Measure and print the concurrency figures.
pub async fn run(args: &super::Args) -> Result<()> {
    let rootfs = sandboxd_e2e::templates_dir()
        .join(&args.r#type)
        .join("rootfs");
    let mut levels = Vec::new();
    for &clients in &args.concurrency {
        if clients == 0 {
            continue;
        }
        let mut level = if args.warm_pool_only {
            None
        } else {
            eprintln!(
                "concurrency {clients}: sandboxd, {clients} clients × {} sandboxes …",
                args.per_client
            );
            Some(sandboxd_level(args, clients, false).await?)
        };
        eprintln!(
            "concurrency {clients}: sandboxd from a warm pool of {}, {clients} clients × {} sandboxes …",
            clients * args.per_client,
            args.per_client
        );
        let pooled = sandboxd_level(args, clients, true).await?;
        if let (Some(level), false) = (&mut level, args.no_peers) {
            eprintln!(
                "concurrency {clients}: bwrap, {clients} threads × {} runs …",
                args.per_client
            );
            let rootfs = rootfs.clone();
            let per_client = args.per_client;
            level.peer = Some(
                tokio::task::spawn_blocking(move || bwrap_level(&rootfs, clients, per_client))
                    .await
                    .context("the bwrap round panicked")?,
            );
        }
        levels.extend(level);
        levels.push(pooled);
    }
    print_table(&levels);
    Ok(())
}

async fn sandboxd_level(args: &super::Args, clients: usize, pooled: bool) -> Result<Level> {
    let pool_size = if pooled { clients * args.per_client } else { 0 };
    let server = Server::start(ServerOptions {
        env: vec![
            // Unlimited; cold: every create makes a new box, whatever the caller's
            // environment says.
            ("MAX_SANDBOX_INSTANCES".into(), "0".into()),
            ("POOL_SIZE".into(), pool_size.to_string()),
            ("DEFAULT_SANDBOX_TYPE".into(), args.r#type.clone()),
        ],
        ..Default::default()
    })
    .await?;
    if pooled {
        wait_pool_full(&server.client(), pool_size).await?;
    }
    let (mut create, echo) = super::sample_requests(args);
    create.from_pool = pooled;
    let truth = ExecRequest {
        cmd: Some(vec!["true".into()]),
        ..Default::default()
    };
    let reqs = Arc::new((create, echo, truth));
    // The clients and this task: the clock starts when the last of them is ready.
    let barrier = Arc::new(tokio::sync::Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        let client = server.client();
        let barrier = barrier.clone();
        let reqs = reqs.clone();
        let per_client = args.per_client;
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::with_capacity(per_client);
            let ready = client.health().await;
            barrier.wait().await;
            if let Err(e) = ready {
                out.push(Err((Instant::now(), format!("health: {e}"))));
                return out;
            }
            for _ in 0..per_client {
                let (create, echo, truth) = &*reqs;
                let r =
                    match tokio::time::timeout(OP_TIMEOUT, operation(&client, create, echo, truth))
                        .await
                    {
                        Ok(Ok(r)) => Ok(r),
                        Ok(Err(e)) => Err((Instant::now(), format!("{e:#}"))),
                        Err(_) => Err((
                            Instant::now(),
                            format!("no answer within {} s", OP_TIMEOUT.as_secs()),
                        )),
                    };
                out.push(r);
            }
            out
        }));
    }
    barrier.wait().await;
    let t0 = Instant::now();
    let busy0 = super::density::machine_busy();
    let split0 = CpuTimes::read(&server);
    let mut level = Level {
        clients,
        pooled,
        ops: clients * args.per_client,
        errors: Vec::new(),
        tti_first: Vec::new(),
        tti_later: Vec::new(),
        rtt: Vec::new(),
        del: Vec::new(),
        wall: Duration::ZERO,
        busy: None,
        split: None,
        leftover: 0,
        peer: None,
    };
    for t in tasks {
        match t.await {
            Ok(results) => {
                for (round, r) in results.into_iter().enumerate() {
                    match r {
                        Ok((tti, rtt, del)) => {
                            if round == 0 {
                                level.tti_first.push(tti);
                            } else {
                                level.tti_later.push(tti);
                            }
                            level.rtt.push(rtt);
                            level.del.push(del);
                        }
                        Err(e) => level.errors.push(e),
                    }
                }
            }
            Err(e) => level
                .errors
                .push((Instant::now(), format!("client task: {e}"))),
        }
    }
    level.wall = t0.elapsed();
    level.busy = match (busy0, super::density::machine_busy()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    level.split = split0
        .zip(CpuTimes::read(&server))
        .map(|(a, b)| b.since(&a));
    level.errors.sort_by_key(|(at, _)| *at);
    level.leftover = sweep(&server).await;
    if !level.errors.is_empty() {
        let mut kinds: Vec<&str> = level.errors.iter().map(|(_, e)| e.as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        eprintln!(
            "concurrency {clients}: {} of {} operations failed; the distinct errors:",
            level.errors.len(),
            level.ops
        );
        for k in kinds.iter().take(20) {
            eprintln!("  {k}");
        }
    }
    Ok(level)
}

/// One client operation: create, `echo hi` to its first output byte (the time to interactive),
/// one exec round-trip of `true`, delete; the three durations. The sandbox is deleted whatever fails after the
/// create.
async fn operation(
    client: &sandboxd_client::Client,
    create: &CreateSandboxRequest,
    echo: &ExecRequest,
    truth: &ExecRequest,
) -> Result<(Duration, Duration, Duration)> {
    let t0 = Instant::now();
    let sb = client.create(create).await.context("create")?;
    let tti = async {
        let mut events = client.exec_stream(&sb.id, echo).await.context("echo")?;
        let mut tti = None;
        loop {
            match events.next().await {
                Some(Ok(ExecEvent::Stdout { .. })) => {
                    tti.get_or_insert_with(|| t0.elapsed());
                }
                Some(Ok(ExecEvent::Started { .. } | ExecEvent::Stderr { .. })) => {}
                Some(Ok(ExecEvent::Exit { exit_code, .. })) => match (tti, exit_code) {
                    (Some(tti), Some(0)) => break Ok::<_, anyhow::Error>(tti),
                    _ => bail!("echo: exit {exit_code:?}, output seen: {}", tti.is_some()),
                },
                other => bail!("echo: {other:?}"),
            }
        }
    };
    let result = async {
        let tti = tti.await?;
        let t1 = Instant::now();
        let r = client.exec(&sb.id, truth).await.context("exec true")?;
        let rtt = t1.elapsed();
        if r.exit_code != Some(0) {
            bail!("exec true: {r:?}");
        }
        Ok((tti, rtt))
    }
    .await;
    let t2 = Instant::now();
    let deleted = client.delete(&sb.id).await.context("delete");
    let del = t2.elapsed();
    let (tti, rtt) = result?;
    deleted?;
    Ok((tti, rtt, del))
}

/// Wait until the server holds `size` warm sandboxes (10 minutes at most).
async fn wait_pool_full(client: &sandboxd_client::Client, size: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let all = client.list(&Default::default()).await?;
        let warm = all
            .iter()
            .filter(|s| s.state == sandboxd_types::SandboxState::Warm)
            .count();
        if warm >= size {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the pool holds {warm} of {size} warm sandboxes after 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Delete whatever the server still lists (a create whose reply was lost, a delete that
/// failed), and say how many there were, not counting a pool's sandboxes (warm, or being made
/// by its refill: they carry the pool's name until handed out).
async fn sweep(server: &Server) -> usize {
    let client = server.client();
    let all = match client.list(&Default::default()).await {
        Ok(all) => all,
        Err(e) => {
            eprintln!("cannot list the sandboxes left behind: {e}");
            return 0;
        }
    };
    for sb in &all {
        if let Err(e) = client.delete(&sb.id).await {
            eprintln!("cannot delete the leftover sandbox {}: {e}", sb.id);
        }
    }
    all.iter()
        .filter(|s| {
            s.state != sandboxd_types::SandboxState::Warm
                && !s
                    .metadata
                    .contains_key(sandboxd_core::pool::POOL_METADATA_KEY)
        })
        .count()
}

/// bubblewrap at the same level: threads each starting `bwrap … echo hi` in turn, timed from
/// the spawn to the first output byte.
fn bwrap_level(rootfs: &PathBuf, clients: usize, per_client: usize) -> Result<Peer> {
    use std::io::Read;
    if !rootfs.exists() {
        bail!("template root {} is missing", rootfs.display());
    }
    let status = super::bwrap_cmd(rootfs, &["true"])
        .status()
        .context("bwrap is not installed (apt-get install bubblewrap)")?;
    if !status.success() {
        bail!("bwrap … true failed: {status}");
    }
    let barrier = std::sync::Barrier::new(clients + 1);
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let mut out = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let run = || -> Result<Duration> {
                            let t0 = Instant::now();
                            let mut child = super::bwrap_cmd(rootfs, &["echo", "hi"])
                                .stdout(std::process::Stdio::piped())
                                .spawn()?;
                            let mut byte = [0u8; 1];
                            let n = child.stdout.as_mut().expect("piped").read(&mut byte);
                            let took = t0.elapsed();
                            let status = child.wait()?;
                            if n? != 1 || !status.success() {
                                bail!("bwrap echo printed nothing ({status})");
                            }
                            Ok(took)
                        };
                        out.push(run());
                    }
                    out
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let mut peer = Peer {
            tti: Vec::new(),
            errors: 0,
            wall: Duration::ZERO,
        };
        let mut first = None;
        for t in threads {
            for r in t.join().expect("a bwrap thread panicked") {
                match r {
                    Ok(d) => peer.tti.push(d),
                    Err(e) => {
                        peer.errors += 1;
                        first.get_or_insert(e);
                    }
                }
            }
        }
        peer.wall = t0.elapsed();
        if let Some(e) = first {
            eprintln!(
                "bwrap at {clients} threads: {} runs failed, the first: {e:#}",
                peer.errors
            );
        }
        Ok(peer)
    })
}

fn per_second(n: usize, wall: Duration) -> String {
    if wall.is_zero() {
        return "-".into();
    }
    format!("{:.1}", n as f64 / wall.as_secs_f64())
}

/// Text fit for one table cell.
fn cell(s: &str) -> String {
    let s = s.replace('|', "\\|").replace('\n', " ");
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}

fn print_table(levels: &[Level]) {
    if levels.is_empty() {
        return;
    }
    println!();
    println!(
        "Concurrency: C clients at once, each creating sandboxes one after another (create → \
         first output of `echo hi` = TTI, one exec of `true`, delete); bwrap: C threads each \
         starting `bwrap … echo hi`."
    );
    println!();
    println!(
        "| clients | creates | sandboxes | errors | first error | TTI p50 ms | TTI p95 ms | TTI p99 ms | \
         TTI max ms | exec p50 ms | exec p95 ms | exec p99 ms | delete p50 ms | delete p99 ms \
         | sandboxes/s | CPU ms per sandbox | CPUs busy | bwrap TTI p50 ms | bwrap TTI p99 ms \
         | bwrap runs/s | target: {TARGET_CLIENTS} clients, no errors, p99 TTI ≤ {} ms |",
        TARGET_P99.as_millis()
    );
    println!(
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for l in levels {
        let mut tti = [l.tti_first.as_slice(), &l.tti_later].concat();
        tti.sort();
        let mut rtt = l.rtt.clone();
        rtt.sort();
        let mut del = l.del.clone();
        del.sort();
        let errors = l.errors.len();
        let first = l.errors.first().map_or("-".to_string(), |(_, e)| cell(e));
        let errors = if l.leftover > 0 {
            format!("{errors} ({} sandboxes left behind)", l.leftover)
        } else {
            errors.to_string()
        };
        let (b50, b99, brate) = match &l.peer {
            Some(Ok(p)) => {
                let mut t = p.tti.clone();
                t.sort();
                let errs = if p.errors > 0 {
                    format!(" ({} failed)", p.errors)
                } else {
                    String::new()
                };
                (
                    ms(percentile(&t, 50.0)),
                    ms(percentile(&t, 99.0)),
                    format!("{}{errs}", per_second(t.len(), p.wall)),
                )
            }
            Some(Err(e)) => (
                format!("skipped: {}", cell(&format!("{e:#}"))),
                "-".into(),
                "-".into(),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let p99 = percentile(&tti, 99.0);
        let target = if l.clients != TARGET_CLIENTS {
            "-".to_string()
        } else if l.errors.is_empty() && l.leftover == 0 && !tti.is_empty() && p99 <= TARGET_P99 {
            "met".to_string()
        } else {
            let mut why = Vec::new();
            if !l.errors.is_empty() {
                why.push(format!("{} errors", l.errors.len()));
            }
            if p99 > TARGET_P99 {
                why.push(format!("p99 {} ms", ms(p99)));
            }
            format!("missed ({})", why.join(", "))
        };
        // The machine's busy CPU time per sandbox cycle, and how many CPUs it kept busy on
        // average: near the machine's count, the level is bound by CPU, not by waiting.
        let (cpu, cpus) = match l.busy {
            Some(b) if !tti.is_empty() && !l.wall.is_zero() => (
                ms(b / tti.len() as u32),
                format!("{:.2}", b.as_secs_f64() / l.wall.as_secs_f64()),
            ),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            l.clients,
            if l.pooled { "warm pool" } else { "cold" },
            l.ops,
            errors,
            first,
            ms(percentile(&tti, 50.0)),
            ms(percentile(&tti, 95.0)),
            ms(p99),
            ms(tti.last().copied().unwrap_or_default()),
            ms(percentile(&rtt, 50.0)),
            ms(percentile(&rtt, 95.0)),
            ms(percentile(&rtt, 99.0)),
            ms(percentile(&del, 50.0)),
            ms(percentile(&del, 99.0)),
            per_second(tti.len(), l.wall),
            cpu,
            cpus,
            b50,
            b99,
            brate,
            target,
        );
    }
    println!();
    println!(
        "Time to interactive of each client's first sandbox (all clients create at the same \
         instant) and of the later ones (ms):"
    );
    println!();
    println!("| clients | creates | first: p50 | first: p99 | later: p50 | later: p99 |");
    println!("|---|---|---|---|---|---|");
    for l in levels {
        let mut first = l.tti_first.clone();
        first.sort();
        let mut later = l.tti_later.clone();
        later.sort();
        let p = |v: &[Duration], q| {
            if v.is_empty() {
                "-".into()
            } else {
                ms(percentile(v, q))
            }
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            l.clients,
            if l.pooled { "warm pool" } else { "cold" },
            p(&first, 50.0),
            p(&first, 99.0),
            p(&later, 50.0),
            p(&later, 99.0),
        );
    }
    println!();
    println!(
        "Where the CPU time went, per sandbox (ms): the benchmark's clients, the server process, \
         the sandboxes' cgroups (agents and commands), the rest of the machine (kernel workers, \
         interrupts, other processes):"
    );
    println!();
    println!("| clients | creates | clients | server | sandboxes | rest | all |");
    println!("|---|---|---|---|---|---|---|");
    for l in levels {
        let n = (l.tti_first.len() + l.tti_later.len()) as u32;
        let (Some(split), Some(busy)) = (l.split, l.busy) else {
            continue;
        };
        if n == 0 {
            continue;
        }
        let rest = busy.saturating_sub(split.clients + split.server + split.sandboxes);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} |",
            l.clients,
            if l.pooled { "warm pool" } else { "cold" },
            ms(split.clients / n),
            ms(split.server / n),
            ms(split.sandboxes / n),
            ms(rest / n),
            ms(busy / n),
        );
    }
    if !levels.iter().any(|l| l.clients == TARGET_CLIENTS) {
        println!();
        println!("(the target's level, {TARGET_CLIENTS} clients, was not measured)");
    }
}

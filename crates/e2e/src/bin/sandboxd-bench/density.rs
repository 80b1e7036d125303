//! The density figures: how many idle sandboxes one server holds, what each costs the host, and
//! what the server costs at rest.
//!
//! - Density: a server of its own, without an instance limit or a default expiry, gets up to
//!   `--density` sandboxes of the type, each created with a timeout of 0 (never expires), a few
//!   at a time; the first create that fails ends the climb, and its error is shown.
//! - Per idle sandbox: the processes listed in its cgroups (named after its id under the
//!   server's cgroup parent, in every hierarchy), their RSS (`VmRSS`) and PSS (`smaps_rollup`),
//!   and what its memory cgroup is charged: kernel memory (v1 `memory.kmem.usage_in_bytes`, v2
//!   `memory.stat`'s `kernel`) and the whole charge (`memory.usage_in_bytes`, `memory.current`).
//!   PSS + kernel is the figure held against the target: PSS divides a shared page among its
//!   sharers, where RSS counts it in every box (the agent's code is one sealed memfd that every
//!   box maps).
//! - The machine's view: `/proc/meminfo` before the first create and after the last, which also
//!   counts what no box's cgroup is charged for (namespaces, mounts, the server's own growth).
//! - The server at rest with 0, 100 and all the sandboxes alive: its RSS, open files and
//!   threads, and its CPU (utime + stime) over an idle window, beside the CPU the sandboxes'
//!   groups used in the same window.
//!
//! Whatever happens, every sandbox the server has is deleted at the end and the server stopped;
//! a cgroup left behind afterwards is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use sandboxd_client::Client;
use sandboxd_e2e::{percentile, Server, ServerOptions};
use sandboxd_types::ErrorCode;

/// The target: host memory per idle sandbox.
const TARGET_BYTES: u64 = 3 << 20;
/// Creates in flight at once: enough to keep both cores busy, few enough that a failure stops
/// the climb close to where it happened.
const PARALLEL_CREATES: usize = 4;
const PARALLEL_DELETES: usize = 8;
/// A create that takes this long counts as failed (the client itself has no timeout).
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause before an idle window, so that the work of the creates just made (agents' first
/// connections, deferred kernel frees) is not counted as the server at rest.
const SETTLE: Duration = Duration::from_secs(2);
const REST_WINDOW: Duration = Duration::from_secs(5);
/// Where the server at rest is measured on the way up, besides 0 and the end.
const MIDPOINT: usize = 100;
const PROGRESS_EVERY: usize = 100;

/// Measure and print the density figures.
pub async fn run(args: &super::Args) -> Result<()> {
    eprintln!("density: starting sandboxd serve …");
    let mut server = Server::start(ServerOptions {
        env: vec![
            ("MAX_SANDBOX_INSTANCES".into(), "0".into()),
            ("SANDBOX_TIMEOUT".into(), "0".into()),
        ],
        ..Default::default()
    })
    .await
    .context("start the density figures' server")?;
    let client = server.client();
    let mut created = Vec::new();
    let measured = measure(args, &server, &client, &mut created).await;
    if let Err(e) = &measured {
        eprintln!("density: measuring failed ({e:#}); cleaning up");
    }
    let cleanup = delete_all(&client, &created).await;
    let parent = server.cgroup_parent.clone();
    eprintln!("density: stopping the server …");
    server.stop();
    // Dropping it removes its (then empty) cgroup parent; whatever is still there was leaked.
    drop(server);
    let leftovers = leftover_groups(&parent);
    if let Ok(m) = &measured {
        print(args, m, &cleanup);
    }
    if !leftovers.is_empty() {
        let list: Vec<String> = leftovers.iter().map(|p| p.display().to_string()).collect();
        let msg = format!(
            "density: {} cgroups left behind: {}",
            list.len(),
            list.join(", ")
        );
        if measured.is_ok() {
            bail!(msg);
        }
        eprintln!("{msg}");
    }
    measured.map(drop)
}

/// What [`measure`] found.
struct Measured {
    asked: usize,
    created: usize,
    /// The create that ended the climb early, and why.
    failure: Option<String>,
    create_times: Vec<Duration>,
    create_all: Duration,
    rest: Vec<Rest>,
    boxes: Vec<BoxMem>,
    before: MemInfo,
    after: MemInfo,
    /// Kernel memory charged to the server's own memory cgroup, before and after.
    server_kernel: (Option<u64>, Option<u64>),
}

async fn measure(
    args: &super::Args,
    server: &Server,
    client: &Client,
    created: &mut Vec<String>,
) -> Result<Measured> {
    let pid = server.pid().context("the server has no pid")?;
    let parent = server.cgroup_parent.as_str();
    let n = args.density;
    let mut rest = vec![at_rest(pid, parent, 0).await];
    let before = MemInfo::read();
    let server_kernel_before = own_cgroup_kernel(pid);
    let (mut req, _) = super::sample_requests(args);
    req.timeout_secs = Some(0);

    eprintln!(
        "density: creating {n} idle sandboxes of type `{}` ({PARALLEL_CREATES} at a time) …",
        args.r#type
    );
    // Wall time spent creating, without the midpoint's idle window.
    let mut creating = Duration::ZERO;
    let mut create_times = Vec::with_capacity(n);
    let mut failure = None;
    while created.len() < n {
        // Batches end on every multiple of PROGRESS_EVERY (and MIDPOINT), so that progress and
        // the midpoint's window come at exact counts.
        let mut next = ((created.len() / PROGRESS_EVERY + 1) * PROGRESS_EVERY).min(n);
        if created.len() < MIDPOINT {
            next = next.min(MIDPOINT);
        }
        let batch = (next - created.len()).min(PARALLEL_CREATES);
        let batch_start = Instant::now();
        let results = futures::future::join_all((0..batch).map(|_| async {
            let t = Instant::now();
            let r = tokio::time::timeout(CREATE_TIMEOUT, client.create(&req)).await;
            (t.elapsed(), r)
        }))
        .await;
        creating += batch_start.elapsed();
        for (took, r) in results {
            match r {
                Ok(Ok(sb)) => {
                    created.push(sb.id);
                    create_times.push(took);
                }
                Ok(Err(e)) => {
                    failure.get_or_insert(format!("create failed: {e}"));
                }
                Err(_) => {
                    failure.get_or_insert(format!(
                        "create did not answer within {} s",
                        CREATE_TIMEOUT.as_secs()
                    ));
                }
            }
        }
        if let Some(f) = &failure {
            eprintln!("density: stopped at {} sandboxes alive: {f}", created.len());
            break;
        }
        if created.len().is_multiple_of(PROGRESS_EVERY) || created.len() == n {
            let last = &create_times[create_times.len().saturating_sub(PROGRESS_EVERY)..];
            let mut last = last.to_vec();
            last.sort();
            eprintln!(
                "density: {} of {n} created ({:.1} s; create p50 {:.1} ms over the last {}; \
                 MemAvailable {} MiB)",
                created.len(),
                creating.as_secs_f64(),
                percentile(&last, 50.0).as_secs_f64() * 1000.0,
                last.len(),
                MemInfo::read().get("MemAvailable").map_or("?".into(), mib),
            );
        }
        if created.len() == MIDPOINT && n > MIDPOINT {
            rest.push(at_rest(pid, parent, created.len()).await);
        }
    }
    let create_all = creating;
    if rest.last().map(|r| r.alive) != Some(created.len()) {
        rest.push(at_rest(pid, parent, created.len()).await);
    }
    let after = MemInfo::read();
    let server_kernel_after = own_cgroup_kernel(pid);
    eprintln!(
        "density: reading the memory of {} sandboxes …",
        created.len()
    );
    let parents = sandboxd_e2e::cgroup_dirs(parent);
    let boxes = created.iter().map(|id| box_memory(&parents, id)).collect();
    Ok(Measured {
        asked: n,
        created: created.len(),
        failure,
        create_times,
        create_all,
        rest,
        boxes,
        before,
        after,
        server_kernel: (server_kernel_before, server_kernel_after),
    })
}

/// The server at rest with `alive` sandboxes.
struct Rest {
    alive: usize,
    rss: Option<u64>,
    fds: Option<usize>,
    threads: Option<u64>,
    /// % of one core over the window.
    cpu: Option<f64>,
    /// The sandboxes' groups' CPU over the same window, % of one core.
    boxes_cpu: Option<f64>,
}

async fn at_rest(pid: u32, parent: &str, alive: usize) -> Rest {
    eprintln!(
        "density: the server at rest with {alive} sandboxes ({} s) …",
        REST_WINDOW.as_secs()
    );
    tokio::time::sleep(SETTLE).await;
    let groups = sandboxd_e2e::cgroup_dirs(parent);
    let t0 = Instant::now();
    let (cpu0, boxes0) = (cpu_ticks(pid), groups_cpu_ns(&groups));
    tokio::time::sleep(REST_WINDOW).await;
    let (cpu1, boxes1) = (cpu_ticks(pid), groups_cpu_ns(&groups));
    let secs = t0.elapsed().as_secs_f64();
    let status = read(&proc_file(pid, "status"));
    Rest {
        alive,
        rss: status.as_deref().and_then(|s| kib_field(s, "VmRSS:")),
        fds: std::fs::read_dir(proc_file(pid, "fd"))
            .ok()
            .map(|d| d.count()),
        threads: status
            .as_deref()
            .and_then(|s| field(s, "Threads:"))
            .and_then(|v| v.parse().ok()),
        cpu: cpu0
            .zip(cpu1)
            .map(|(a, b)| b.saturating_sub(a) as f64 / clock_ticks() / secs * 100.0),
        boxes_cpu: boxes0
            .zip(boxes1)
            .map(|(a, b)| b.saturating_sub(a) as f64 / 1e9 / secs * 100.0),
    }
}

/// One sandbox's memory.
struct BoxMem {
    procs: usize,
    rss: u64,
    pss: u64,
    /// Kernel memory charged to its memory cgroup.
    kernel: Option<u64>,
    /// Everything charged to its memory cgroup (user and kernel).
    charge: Option<u64>,
}

fn box_memory(parents: &[PathBuf], id: &str) -> BoxMem {
    let dirs: Vec<PathBuf> = parents
        .iter()
        .map(|p| p.join(id))
        .filter(|d| d.is_dir())
        .collect();
    // Every hierarchy lists the same processes; the union still counts each one once should a
    // box be caught half-joined.
    let mut pids = BTreeSet::new();
    for d in &dirs {
        if let Some(text) = read(&d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
    }
    let (mut rss, mut pss) = (0, 0);
    for &pid in &pids {
        rss += read(&proc_file(pid, "status"))
            .and_then(|s| kib_field(&s, "VmRSS:"))
            .unwrap_or(0);
        pss += read(&proc_file(pid, "smaps_rollup"))
            .and_then(|s| kib_field(&s, "Pss:"))
            .unwrap_or(0);
    }
    let (kernel, charge) = cgroup_memory(&dirs);
    BoxMem {
        procs: pids.len(),
        rss,
        pss,
        kernel,
        charge,
    }
}

/// (kernel, whole charge) of the memory cgroup among a box's groups.
fn cgroup_memory(dirs: &[PathBuf]) -> (Option<u64>, Option<u64>) {
    let num = |p: PathBuf| read(&p).and_then(|s| s.trim().parse::<u64>().ok());
    for d in dirs {
        // v1: since Linux 4.x kernel memory is charged to memory.usage_in_bytes too, so the
        // kmem counter is a part of that, not an addition.
        if d.join("memory.usage_in_bytes").exists() {
            return (
                num(d.join("memory.kmem.usage_in_bytes")),
                num(d.join("memory.usage_in_bytes")),
            );
        }
    }
    for d in dirs {
        if d.join("memory.current").exists() {
            let stat = read(&d.join("memory.stat")).unwrap_or_default();
            let stat: BTreeMap<&str, u64> = stat
                .lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    Some((k, v.trim().parse().ok()?))
                })
                .collect();
            // `kernel` exists since Linux 5.18; before, its parts.
            let kernel = stat.get("kernel").copied().or_else(|| {
                let parts = [
                    "kernel_stack",
                    "pagetables",
                    "percpu",
                    "sock",
                    "slab",
                    "vmalloc",
                ];
                let found: Vec<u64> = parts.iter().filter_map(|k| stat.get(k)).copied().collect();
                (!found.is_empty()).then(|| found.iter().sum())
            });
            return (kernel, num(d.join("memory.current")));
        }
    }
    (None, None)
}

/// Kernel memory charged to the memory cgroup of a process, from its `/proc/<pid>/cgroup`.
fn own_cgroup_kernel(pid: u32) -> Option<u64> {
    let text = read(&proc_file(pid, "cgroup"))?;
    let mut dirs = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            dirs.push(Path::new("/sys/fs/cgroup/memory").join(path));
        } else if controllers.is_empty() {
            dirs.push(Path::new("/sys/fs/cgroup").join(path));
        }
    }
    cgroup_memory(&dirs).0
}

/// CPU time of all the groups under the parent (the parent's own counter sums its children):
/// v1 `cpuacct.usage`, else v2 `cpu.stat`'s `usage_usec`, in ns.
pub(crate) fn groups_cpu_ns(parents: &[PathBuf]) -> Option<u64> {
    parents
        .iter()
        .find_map(|d| read(&d.join("cpuacct.usage"))?.trim().parse().ok())
        .or_else(|| {
            parents.iter().find_map(|d| {
                let stat = read(&d.join("cpu.stat"))?;
                let us: u64 = field(&stat, "usage_usec")?.parse().ok()?;
                Some(us * 1000)
            })
        })
}

/// utime + stime of a process (all its threads), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = read(&proc_file(pid, "stat"))?;
    // The command name may hold spaces and parentheses; the fields follow the last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time the whole machine has spent busy since boot (every CPU's time outside idle and
/// I/O wait, from `/proc/stat`): the work of the server, its sandboxes, the kernel's workers
/// and the benchmark's own clients alike.
pub(crate) fn machine_busy() -> Option<Duration> {
    let stat = read(Path::new("/proc/stat"))?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let busy: u64 = fields.iter().take(8).sum::<u64>() - fields.get(3)? - fields.get(4)?;
    Some(Duration::from_secs_f64(busy as f64 / clock_ticks()))
}

pub(crate) fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Totals from `/proc/meminfo`, in bytes.
struct MemInfo(BTreeMap<String, u64>);

impl MemInfo {
    fn read() -> MemInfo {
        let text = read(Path::new("/proc/meminfo")).unwrap_or_default();
        MemInfo(
            text.lines()
                .filter_map(|l| {
                    let (k, _) = l.split_once(':')?;
                    Some((k.to_string(), kib_field(l, &format!("{k}:"))?))
                })
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<u64> {
        self.0.get(key).copied()
    }
}

/// Sandbox ids left in the server, deleted, and how long that took.
struct Cleanup {
    deleted: usize,
    failed: Vec<String>,
    took: Duration,
}

/// Delete every sandbox the server has, besides those `created` names: a create that timed
/// out here may still have made its sandbox there.
async fn delete_all(client: &Client, created: &[String]) -> Cleanup {
    let mut ids: BTreeSet<String> = created.iter().cloned().collect();
    match client.list(&Default::default()).await {
        Ok(all) => ids.extend(all.into_iter().map(|s| s.id)),
        Err(e) => eprintln!("density: cannot list the sandboxes ({e}); deleting those created"),
    }
    let total = ids.len();
    let t0 = Instant::now();
    if total > 0 {
        eprintln!("density: deleting {total} sandboxes ({PARALLEL_DELETES} at a time) …");
    }
    let mut results = futures::stream::iter(ids)
        .map(|id| async move {
            let r = client.delete(&id).await;
            (id, r)
        })
        .buffer_unordered(PARALLEL_DELETES);
    let (mut deleted, mut failed) = (0, Vec::new());
    while let Some((id, r)) = results.next().await {
        match r {
            Ok(()) => deleted += 1,
            // Gone already (a create's own clean-up, or a listed record that was retiring).
            Err(e) if e.code() == Some(ErrorCode::NotFound) => {}
            Err(e) => failed.push(format!("{id}: {e}")),
        }
        let done = deleted + failed.len();
        if done > 0 && done.is_multiple_of(PROGRESS_EVERY) {
            eprintln!("density: {done} of {total} deleted");
        }
    }
    if !failed.is_empty() {
        eprintln!(
            "density: {} deletes failed (the server removes the rest when it stops): {}",
            failed.len(),
            failed.join("; ")
        );
    }
    Cleanup {
        deleted,
        failed,
        took: t0.elapsed(),
    }
}

/// The groups still under the server's cgroup parent in any hierarchy (or the parent itself,
/// when it is there without any).
fn leftover_groups(parent: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in sandboxd_e2e::cgroup_dirs(parent) {
        let subs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        if subs.is_empty() {
            out.push(dir);
        } else {
            out.extend(subs);
        }
    }
    out
}

fn print(args: &super::Args, m: &Measured, cleanup: &Cleanup) {
    let n = m.created;
    println!();
    println!(
        "| density: idle sandboxes of type `{}` | value |",
        args.r#type
    );
    println!("|---|---|");
    println!("| asked for | {} |", m.asked);
    match &m.failure {
        None => println!("| created (timeout 0, {PARALLEL_CREATES} at a time) | {n} (all fit) |"),
        Some(f) => println!(
            "| created (timeout 0, {PARALLEL_CREATES} at a time) | {n}, then: {} |",
            f.replace('|', "\\|")
        ),
    }
    if !m.create_times.is_empty() {
        let head = m.create_times.len().min(MIDPOINT);
        let mut first = m.create_times[..head].to_vec();
        let mut last = m.create_times[m.create_times.len() - head..].to_vec();
        first.sort();
        last.sort();
        println!(
            "| create p50 ms, first {head} / last {head} | {:.2} / {:.2} |",
            percentile(&first, 50.0).as_secs_f64() * 1000.0,
            percentile(&last, 50.0).as_secs_f64() * 1000.0
        );
        println!(
            "| time to create all | {:.1} s ({:.0} per s) |",
            m.create_all.as_secs_f64(),
            n as f64 / m.create_all.as_secs_f64()
        );
    }
    println!(
        "| time to delete all ({PARALLEL_DELETES} at a time) | {:.1} s ({} deleted{}) |",
        cleanup.took.as_secs_f64(),
        cleanup.deleted,
        if cleanup.failed.is_empty() {
            String::new()
        } else {
            format!(", {} failed", cleanup.failed.len())
        }
    );

    if !m.boxes.is_empty() {
        println!();
        println!("| per idle sandbox, {n} alive | p50 | max | total | target p50 |");
        println!("|---|---|---|---|---|");
        let count = |f: &dyn Fn(&BoxMem) -> Option<u64>| -> Vec<u64> {
            m.boxes.iter().filter_map(f).collect()
        };
        let row = |what: &str, values: Vec<u64>, show: &dyn Fn(u64) -> String, target: bool| {
            if values.is_empty() {
                println!("| {what} | - | - | - | - |");
                return;
            }
            let mut v = values;
            v.sort_unstable();
            let p50 = nearest_rank(&v, 50.0);
            let target = if !target {
                "-".to_string()
            } else if p50 <= TARGET_BYTES {
                format!("{} (met)", mib(TARGET_BYTES))
            } else {
                format!("{} (missed)", mib(TARGET_BYTES))
            };
            println!(
                "| {what} | {} | {} | {} | {target} |",
                show(p50),
                show(*v.last().expect("not empty")),
                show(v.iter().sum())
            );
        };
        let plain = |v: u64| v.to_string();
        let in_mib = |v: u64| mib(v);
        row("processes", count(&|b| Some(b.procs as u64)), &plain, false);
        row(
            "RSS of its processes, MiB",
            count(&|b| Some(b.rss)),
            &in_mib,
            false,
        );
        row(
            "PSS of its processes, MiB",
            count(&|b| Some(b.pss)),
            &in_mib,
            false,
        );
        row(
            "kernel memory charged to its cgroup, MiB",
            count(&|b| b.kernel),
            &in_mib,
            false,
        );
        row(
            "whole charge of its memory cgroup (user + kernel), MiB",
            count(&|b| b.charge),
            &in_mib,
            false,
        );
        row(
            "**host memory: PSS + kernel, MiB**",
            count(&|b| Some(b.pss + b.kernel?)),
            &in_mib,
            true,
        );
        row(
            "RSS + kernel, MiB",
            count(&|b| Some(b.rss + b.kernel?)),
            &in_mib,
            false,
        );
    }

    // Whatever else the machine does meanwhile shows here too: a cross-check, not a figure of
    // its own. It also counts what the boxes' cgroups miss: the namespaces are made by the
    // clone, before the box's init joins its v1 memory group, so they are charged to the
    // server's.
    println!();
    println!(
        "| the machine (/proc/meminfo), before the first create → after the last | change MiB | per sandbox KiB |"
    );
    println!("|---|---|---|");
    let change = |what: &str, delta: Option<i64>| match delta {
        Some(d) => println!(
            "| {what} | {:.1} | {} |",
            d as f64 / 1048576.0,
            if n > 0 {
                format!("{:.0}", d as f64 / 1024.0 / n as f64)
            } else {
                "-".into()
            }
        ),
        None => println!("| {what} | - | - |"),
    };
    let meminfo = |key: &str, drop: bool| {
        let (b, a) = (m.before.get(key)? as i64, m.after.get(key)? as i64);
        Some(if drop { b - a } else { a - b })
    };
    change("MemAvailable drop", meminfo("MemAvailable", true));
    for key in [
        "AnonPages",
        "Slab",
        "SUnreclaim",
        "KernelStack",
        "PageTables",
        "Percpu",
        "Shmem",
    ] {
        change(&format!("{key} growth"), meminfo(key, false));
    }
    change(
        "kernel memory charged to the server's memory cgroup, growth",
        m.server_kernel
            .0
            .zip(m.server_kernel.1)
            .map(|(b, a)| a as i64 - b as i64),
    );
    let (first, last) = (m.rest.first(), m.rest.last());
    change(
        "server RSS growth",
        first
            .and_then(|f| f.rss)
            .zip(last.and_then(|l| l.rss))
            .map(|(f, l)| l as i64 - f as i64),
    );

    println!();
    println!(
        "| server at rest ({} s idle) | RSS MiB | open files | threads | CPU % of one core | sandboxes' CPU % of one core |",
        REST_WINDOW.as_secs()
    );
    println!("|---|---|---|---|---|---|");
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for r in &m.rest {
        println!(
            "| {} sandboxes | {} | {} | {} | {} | {} |",
            r.alive,
            opt(r.rss.map(mib)),
            opt(r.fds.map(|v| v.to_string())),
            opt(r.threads.map(|v| v.to_string())),
            opt(r.cpu.map(|v| format!("{v:.2}"))),
            opt(r.boxes_cpu.map(|v| format!("{v:.2}"))),
        );
    }
}

fn nearest_rank(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn mib(bytes: u64) -> String {
    format!("{:.2}", bytes as f64 / 1048576.0)
}

fn proc_file(pid: u32, name: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{name}"))
}

/// A file's text, or nothing if it cannot be read (a process or group that just went).
fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The value after `key` on its line (`Threads:  4` → `4`).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
}

/// A `kB` value of a `/proc` file (`VmRSS:  1234 kB`), in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    field(text, key)?.parse::<u64>().ok().map(|k| k * 1024)
}

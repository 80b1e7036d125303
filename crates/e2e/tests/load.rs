//! Load: many concurrent clients, each creating a sandbox, running a command in it, writing a
//! file and reading it back, then releasing it, again and again for a while, against one real
//! `sandboxd serve` on the native backend. Every operation must succeed, and afterwards the
//! server holds no more than before: processes, its open descriptors, mounts, cgroups, records;
//! its memory is compared between the last two rounds (a leak grows with the work done, an
//! allocator that keeps what it freed stops growing once it holds its high-water mark).
//!
//! `SANDBOXD_LOAD_CLIENTS` (default 200) and `SANDBOXD_LOAD_SECONDS` (default 10) size a
//! round, `SANDBOXD_LOAD_ROUNDS` (default 3, at least 2) says how many; the full form is 200
//! clients for 60 s:
//!
//! ```sh
//! SANDBOXD_LOAD_CLIENTS=200 SANDBOXD_LOAD_SECONDS=60 \
//!     cargo test -p sandboxd-e2e --test load -- --nocapture
//! ```
//!
//! A client gives every request five minutes: with more clients than the machine makes
//! sandboxes a second, requests queue in the server, and a slow answer is not an error. The
//! server has no load shedding by design (no 429/503 unless `MAX_SANDBOX_INSTANCES` is set or
//! it shuts down), so any error reply counts as an error.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandboxd_client::Client;
use sandboxd_e2e::Server;
use sandboxd_types::ExecRequest;
use tokio::sync::Mutex;

use common::{create_req, host_mounts_containing, sandbox_cgroups};

fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// What one round did.
#[derive(Debug, Default)]
struct Tally {
    cycles: u64,
    ops: u64,
    errors: Vec<String>,
    /// Slowest whole cycle.
    slowest: Duration,
}

/// What the server holds, outside any request.
#[derive(Debug, Clone, PartialEq)]
struct Footprint {
    /// Open descriptors other than network namespaces.
    fds: usize,
    /// Open descriptors of network namespaces: the native backend's pool holds its thread's
    /// own namespace and up to [`NETNS_POOL_MAX`] fresh ones, refilled at the lowest
    /// priority a moment after a create takes one, so their number at any instant depends on
    /// the machine's load, not on a leak; a leak would pass the pool's bound.
    netns_fds: usize,
    rss_kib: u64,
    /// Of `rss_kib`: the main heap (`[heap]`) and other anonymous memory (thread arenas, big
    /// allocations, stacks).
    heap_kib: u64,
    anon_kib: u64,
    threads: u64,
    procs: usize,
    cgroups: usize,
    mounts: usize,
    records: usize,
}

fn status_field(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// Resident KiB of the main heap and of the other anonymous mappings, from `smaps`.
fn heap_and_anon(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut heap, mut anon, mut kind) = (0, 0, 0);
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let name = line.split_whitespace().nth(5);
            kind = match name {
                Some("[heap]") => 1,
                None => 2,
                Some(_) => 0,
            };
        } else if first == "Rss:" {
            let kib: u64 = words.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            match kind {
                1 => heap += kib,
                2 => anon += kib,
                _ => {}
            }
        }
    }
    (heap, anon)
}

/// The native backend's namespace pool: its thread's own namespace and two made ahead.
const NETNS_POOL_MAX: usize = 1 + 2;

/// The server's open descriptors: (network namespaces, all others).
fn descriptors(pid: u32) -> (usize, usize) {
    let (mut netns, mut other) = (0, 0);
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
    {
        // A descriptor closed between the listing and the link's read counts as neither.
        match std::fs::read_link(entry.path()) {
            Ok(target) if target.to_string_lossy().starts_with("net:[") => netns += 1,
            Ok(_) => other += 1,
            Err(_) => {}
        }
    }
    (netns, other)
}

async fn footprint(server: &Server) -> Footprint {
    let pid = server.pid().expect("running");
    let (heap_kib, anon_kib) = heap_and_anon(pid);
    let (netns_fds, fds) = descriptors(pid);
    Footprint {
        heap_kib,
        anon_kib,
        fds,
        netns_fds,
        rss_kib: status_field(pid, "VmRSS:"),
        threads: status_field(pid, "Threads:"),
        procs: common::sandbox_pids(&server.cgroup_parent).len(),
        cgroups: sandbox_cgroups(&server.cgroup_parent).len(),
        mounts: host_mounts_containing(&server.state.path().to_string_lossy()).len(),
        records: server
            .client()
            .list(&Default::default())
            .await
            .unwrap()
            .len(),
    }
}

/// One client's loop until `until`: create, exec, write, read back, delete.
async fn client_loop(c: Client, n: usize, until: Instant, tally: Arc<Mutex<Tally>>) {
    let mut round = 0u64;
    while Instant::now() < until {
        round += 1;
        let t0 = Instant::now();
        let (ops, err) = cycle(&c, n, round).await;
        let took = t0.elapsed();
        let mut t = tally.lock().await;
        t.ops += ops;
        match err {
            None => t.cycles += 1,
            Some(e) => t.errors.push(format!("client {n} round {round}: {e}")),
        }
        t.slowest = t.slowest.max(took);
    }
}

/// One cycle; the operations that succeeded and the first error.
async fn cycle(c: &Client, n: usize, round: u64) -> (u64, Option<String>) {
    let sb = match c.create(&create_req()).await {
        Ok(sb) => sb,
        Err(e) => return (0, Some(format!("create: {e}"))),
    };
    let mut ops = 1;
    let word = format!("c{n}r{round}");
    let result = async {
        let r = c
            .exec(
                &sb.id,
                &ExecRequest {
                    cmd: Some(vec!["echo".into(), word.clone()]),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("exec: {e}"))?;
        if r.stdout != format!("{word}\n") || r.exit_code != Some(0) {
            return Err(format!("exec answered {r:?}"));
        }
        ops += 1;
        let data: Vec<u8> = (0..(4096 + n * 61 + round as usize % 4096))
            .map(|i| (i as u64 * 31 + round + n as u64) as u8)
            .collect();
        c.write_file(&sb.id, "load/data.bin", data.clone())
            .await
            .map_err(|e| format!("write: {e}"))?;
        ops += 1;
        let back = c
            .read_file(&sb.id, "load/data.bin")
            .await
            .map_err(|e| format!("read: {e}"))?;
        if back[..] != data[..] {
            return Err(format!(
                "read back {} bytes, wrote {}",
                back.len(),
                data.len()
            ));
        }
        ops += 1;
        Ok(())
    }
    .await;
    let deleted = c.delete(&sb.id).await;
    if deleted.is_ok() {
        ops += 1;
    }
    match (result, deleted) {
        (Err(e), _) => (ops, Some(e)),
        (Ok(()), Err(e)) => (ops, Some(format!("delete: {e}"))),
        (Ok(()), Ok(())) => (ops, None),
    }
}

async fn round(server: &Server, clients: usize, secs: u64) -> Tally {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for n in 0..clients {
        // One HTTP client (one connection pool) per client, as independent users have.
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(300))
            .build()
            .unwrap();
        let c = server.client().with_http_client(http);
        tasks.push(tokio::spawn(client_loop(c, n, until, tally.clone())));
    }
    for t in tasks {
        t.await.unwrap();
    }
    Arc::try_unwrap(tally).unwrap().into_inner()
}

/// Wait until the server's descriptors, processes, cgroups, mounts and records are back to
/// `base` (the clients' kept-alive connections close a moment after the clients go), and its
/// threads too, within a few: the runtime's pool of blocking threads (the backend kills and
/// removes boxes on it) grows with the load and retires idle threads after 10 s, and memory
/// is compared without them.
async fn settled(server: &Server, base: &Footprint) -> Footprint {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let now = footprint(server).await;
        let back = now.fds <= base.fds
            && now.netns_fds <= NETNS_POOL_MAX
            && now.procs == base.procs
            && now.cgroups == base.cgroups
            && now.mounts == base.mounts
            && now.records == base.records
            && now.threads <= base.threads + 8;
        if back || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn many_clients_no_errors_no_leaks() {
    let clients = env_number("SANDBOXD_LOAD_CLIENTS", 200) as usize;
    let secs = env_number("SANDBOXD_LOAD_SECONDS", 10);
    let server = common::server().await;
    // A cycle first, so that what the server sets up once (the template's first use, the
    // runtime's threads) counts in the baseline.
    let warm = cycle(&server.client(), 0, 0).await;
    assert!(warm.1.is_none(), "{warm:?}");
    let base = settled(&server, &footprint(&server).await).await;
    eprintln!("before: {base:?}");

    let mut report = BTreeMap::new();
    let mut after = Vec::new();
    let rounds = env_number("SANDBOXD_LOAD_ROUNDS", 3).max(2);
    for r in 1..=rounds {
        let t0 = Instant::now();
        let tally = round(&server, clients, secs).await;
        let took = t0.elapsed();
        let now = settled(&server, &base).await;
        eprintln!(
            "round {r}: {clients} clients, {secs} s asked, {:.1} s taken: {} cycles ({:.1}/s), \
             {} operations, {} errors, slowest cycle {:.1} s; after: {now:?}",
            took.as_secs_f64(),
            tally.cycles,
            tally.cycles as f64 / took.as_secs_f64(),
            tally.ops,
            tally.errors.len(),
            tally.slowest.as_secs_f64()
        );
        assert!(
            tally.errors.is_empty(),
            "{} errors, the first ones: {:#?}",
            tally.errors.len(),
            &tally.errors[..tally.errors.len().min(10)]
        );
        assert!(tally.cycles >= clients as u64, "{tally:?}");
        assert!(
            now.fds <= base.fds && now.netns_fds <= NETNS_POOL_MAX,
            "descriptors leaked: {base:?} -> {now:?}"
        );
        assert_eq!(
            (now.procs, now.cgroups, now.mounts, now.records),
            (base.procs, base.cgroups, base.mounts, base.records),
            "sandboxes left behind: {base:?} -> {now:?}"
        );
        report.insert(r, tally.cycles);
        after.push(now);
    }
    // Memory: the last round (as much work again) must not add what the first took: the
    // allocator's and the runtime's caches fill in the first round, a leak grows every round.
    let (first, second) = (&after[after.len() - 2], &after[after.len() - 1]);
    let grown = second.rss_kib.saturating_sub(first.rss_kib);
    let cycles = report[&rounds];
    let rss: Vec<u64> = after.iter().map(|f| f.rss_kib).collect();
    eprintln!(
        "server RSS: {} KiB before, after each round {rss:?} KiB ({cycles} cycles in the last)",
        base.rss_kib
    );
    assert!(
        grown < (cycles / 2).max(16 << 10),
        "server memory grew by {grown} KiB over a round of {cycles} cycles: {first:?} -> {second:?}"
    );
}

//! The native backend on this machine, end to end: real namespaces, cgroups, overlayfs,
//! seccomp and landlock around the real guest agent, in a busybox template.
//!
//! Needs root, busybox and the agent binary (`cargo build -p sandboxd-agent`).

mod common;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use common::*;
use sandboxd_backend_native::NativeBackend;
use sandboxd_core::backend::{Backend, BackendError, ReadonlyMount};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exec_destroy_leaves_nothing() {
    let fx = Fixture::new("life");
    let t0 = Instant::now();
    let handle = fx.backend.create(fx.spec("life1")).await.unwrap();
    let created = t0.elapsed();
    let mut agent = Agent::connect(&handle);
    assert_hello(agent.hello());
    eprintln!(
        "create -> Hello: {:?} (create returned after {:?})",
        t0.elapsed(),
        created
    );
    assert!(fx.backend.is_alive("life1").await);

    let out = agent.sh("echo hi");
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(0), "hi\n"),
        "{out:?}"
    );
    let out = agent.sh("hostname; cat /proc/self/cgroup");
    assert!(out.stdout.starts_with("life1-host\n"), "{out:?}");
    assert!(
        out.stdout.lines().skip(1).all(|l| l.ends_with(":/")),
        "cgroup namespace root: {out:?}"
    );

    let pid = fx.backend.init_pid("life1").unwrap();
    let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().starts_with("/memfd:sandboxd-agent"),
        "the agent runs from its sealed copy: {exe:?}"
    );
    let box_dir = fx.backend.box_dir("life1");
    // The box's groups: memory and pids limits (v1 or v2) at least; a hierarchy it does not
    // need (v1's freezer where v2 freezes) has none.
    let cgroups = fx.backend.cgroup_dirs("life1");
    let has = |file: &str| cgroups.iter().any(|d| d.join(file).exists());
    assert!(
        has("memory.limit_in_bytes") || has("memory.max"),
        "{cgroups:?}"
    );
    assert!(has("pids.max"), "{cgroups:?}");
    assert!(box_dir.is_dir());
    // Even while the box runs, none of its mounts is in the host's mount table.
    assert_eq!(host_mounts_mentioning(fx.tmp.path()), Vec::<String>::new());

    drop(agent);
    fx.backend.destroy("life1").await.unwrap();
    assert!(!fx.backend.is_alive("life1").await);
    assert!(!process_running(pid), "pid {pid} still running");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "pid {pid} not reaped"
    );
    for d in &cgroups {
        assert!(!d.exists(), "cgroup {} left", d.display());
    }
    assert!(!box_dir.exists());
    assert!(!fx.config.run_dir.join("life1").exists());
    assert_eq!(host_mounts_mentioning(fx.tmp.path()), Vec::<String>::new());
    // Idempotent, also for ids never seen.
    fx.backend.destroy("life1").await.unwrap();
    fx.backend.destroy("never-was").await.unwrap();
    assert!(fx.workspace.is_dir(), "the workspace is never removed");
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_processes_are_invisible() {
    let fx = Fixture::new("pid");
    let handle = fx.backend.create(fx.spec("pid1")).await.unwrap();
    let mut agent = Agent::connect(&handle);
    let out =
        agent.sh("ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; echo; ps -o pid,comm");
    assert!(out.ok(), "{out:?}");
    let pids: Vec<u32> = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.first(), Some(&1), "the agent is PID 1: {out:?}");
    assert!(
        pids.len() < 10,
        "only the box's own few processes: {pids:?}"
    );
    assert!(
        !pids.contains(&std::process::id()),
        "the host test process is visible"
    );
    let out2 = agent.sh("tr '\\0' ' ' < /proc/1/cmdline");
    assert!(out2.stdout.starts_with("sandboxd-agent"), "{out2:?}");
    let out = agent.sh(&format!("kill -0 {} 2>&1; echo rc=$?", std::process::id()));
    assert!(
        out.stdout.contains("rc=1"),
        "signalling a host pid must fail: {out:?}"
    );
    drop(agent);
    fx.backend.destroy("pid1").await.unwrap();
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_and_host_files_are_out_of_reach() {
    let fx = Fixture::new("fs");
    let host_secret = fx.tmp.path().join("host-secret");
    fs::write(&host_secret, "secret").unwrap();
    let handle = fx.backend.create(fx.spec("fs1")).await.unwrap();
    let mut agent = Agent::connect(&handle);
    let marker = format!("sbx-tmp-{}", std::process::id());
    let script = format!(
        "echo new > /bin/x && cat /bin/x && rm /bin/cat.gone 2>/dev/null; rm /bin/ls && \
         echo box > /tmp/{marker} && cat /tmp/{marker} && \
         (cat {secret} 2>&1 || echo secret-unreadable) && \
         (ls /work /var/lib 2>&1; true) && ls /",
        secret = host_secret.display()
    );
    let out = agent.sh(&script);
    assert!(out.ok(), "{out:?}");
    assert!(out.stdout.starts_with("new\nbox\n"), "{out:?}");
    assert!(out.stdout.contains("secret-unreadable"), "{out:?}");
    assert!(!out.stdout.contains("secret\n"), "{out:?}");
    // Writes went to the box's overlay, not the template.
    assert!(
        !fx.template.join("bin/x").exists(),
        "the template was written"
    );
    assert!(
        fs::symlink_metadata(fx.template.join("bin/ls")).is_ok(),
        "the template lost a file"
    );
    let upper = fx.backend.box_dir("fs1").join("layer/upper");
    assert_eq!(fs::read_to_string(upper.join("bin/x")).unwrap(), "new\n");
    // The box's /tmp is its own.
    assert!(!std::path::Path::new("/tmp").join(&marker).exists());
    // The box's own procfs and sysfs, with their flags.
    assert_own_proc_and_sys(&mut agent);
    // Writing into a read-only /proc/sys fails, and the masked files are empty.
    let out = agent.sh("echo 1 > /proc/sys/kernel/hostname; echo rc=$?");
    assert!(
        out.stdout.contains("rc=1") && out.stderr.contains("Read-only"),
        "{out:?}"
    );
    for masked in ["keys", "timer_list", "kcore", "sched_debug"] {
        if std::path::Path::new("/proc").join(masked).exists() {
            let out = agent.sh(&format!("wc -c < /proc/{masked}"));
            assert_eq!(
                out.stdout.trim(),
                "0",
                "/proc/{masked} is not masked: {out:?}"
            );
        }
    }
    drop(agent);
    fx.backend.destroy("fs1").await.unwrap();
    fx.finish().await;
}

/// `/tmp`, `/dev` and `/dev/shm` are directories of one tmpfs of the box's own (sized by the
/// disk limit when there is one), and the hidden parts of `/proc` and `/sys` are empty
/// read-only directories of it; with and without a disk limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmp_dev_and_shm_are_one_tmpfs_and_the_masks_are_empty() {
    let fx = Fixture::new("scratch");
    for (id, disk_mb) in [("scratch0", 0u64), ("scratch1", 48)] {
        let mut spec = fx.spec(id);
        spec.limits.disk_bytes = disk_mb << 20;
        let handle = fx.backend.create(spec).await.unwrap();
        let mut agent = Agent::connect(&handle);
        let out = agent.sh("stat -c '%d %a %n' /tmp /dev /dev/shm /; \
             grep -E ' /(tmp|dev|dev/shm|proc/acpi|sys/firmware) ' /proc/mounts; \
             df -k /tmp | tail -1");
        assert!(out.ok(), "{out:?}");
        let lines: Vec<&str> = out.stdout.lines().collect();
        let stat = |i: usize| lines[i].split(' ').collect::<Vec<_>>();
        let (tmp, dev, shm, root) = (stat(0), stat(1), stat(2), stat(3));
        assert_eq!(tmp[1], "1777", "{out:?}");
        assert_eq!(dev[1], "755", "{out:?}");
        assert_eq!(shm[1], "1777", "{out:?}");
        assert!(
            tmp[0] == dev[0] && dev[0] == shm[0],
            "not one tmpfs: {out:?}"
        );
        assert_ne!(tmp[0], root[0], "/tmp is on the root layer: {out:?}");
        for (path, flags) in [
            ("/tmp", "tmpfs rw,nosuid,nodev"),
            ("/dev", "tmpfs rw,nosuid,nodev,noexec"),
            ("/dev/shm", "tmpfs rw,nosuid,nodev,noexec"),
        ] {
            assert!(
                out.stdout.contains(&format!("tmpfs {path} {flags}")),
                "{path} not mounted {flags}: {out:?}"
            );
        }
        let size_kb: u64 = lines
            .last()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no size in {out:?}"));
        // The fixture's `tmp_size_mb`.
        let want_mb = if disk_mb > 0 { disk_mb } else { 64 };
        assert_eq!(size_kb, want_mb << 10, "{out:?}");
        // What one of them holds, the others do not show.
        let out = agent.sh("echo t > /tmp/t && echo s > /dev/shm/s && ls -A /tmp /dev/shm");
        assert_eq!(out.stdout, "/dev/shm:\ns\n\n/tmp:\nt\n", "{out:?}");
        for masked in ["/proc/acpi", "/sys/firmware"] {
            if !std::path::Path::new(masked).is_dir() {
                continue;
            }
            let out = agent.sh(&format!(
                "ls -A {masked} | wc -l; touch {masked}/x 2>&1; stat -c %d {masked}"
            ));
            let lines: Vec<&str> = out.stdout.lines().collect();
            assert_eq!(lines.first(), Some(&"0"), "{masked} not empty: {out:?}");
            assert!(
                out.stdout.contains("Read-only"),
                "{masked} writable: {out:?}"
            );
            assert_eq!(lines.last(), Some(&tmp[0]), "{masked}: {out:?}");
        }
        drop(agent);
        fx.backend.destroy(id).await.unwrap();
    }
    fx.finish().await;
}

/// Boxes enter network namespaces the backend made ahead of time (or, when none is ready,
/// their clone makes one): either way each box has its own, never the host's, never another
/// box's, with only `lo` in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_box_has_a_network_namespace_of_its_own() {
    let fx = Fixture::new("netns");
    let host = std::fs::read_link("/proc/self/ns/net").unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut agents = Vec::new();
    // Alive together, so that the kernel cannot reuse a namespace's inode number.
    for i in 0..4 {
        let id = format!("netns{i}");
        let handle = fx.backend.create(fx.spec(&id)).await.unwrap();
        let mut agent = Agent::connect(&handle);
        let out = agent.sh("readlink /proc/self/ns/net; ls /sys/class/net");
        let mut lines = out.stdout.lines();
        let ns = lines.next().unwrap_or_default().to_string();
        assert!(ns.starts_with("net:["), "{out:?}");
        assert_ne!(
            std::path::Path::new(&ns),
            host,
            "box {id} is in the host's namespace"
        );
        assert!(seen.insert(ns.clone()), "box {id} shares namespace {ns}");
        assert_eq!(
            lines.collect::<Vec<_>>(),
            ["lo"],
            "only lo in box {id}: {out:?}"
        );
        agents.push((id, agent));
        // Give the pool a moment to refill, so that later boxes take pooled namespaces too.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (id, agent) in agents {
        drop(agent);
        fx.backend.destroy(&id).await.unwrap();
    }
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_loopback_is_unreachable() {
    let fx = Fixture::new("net");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = fx.backend.create(fx.spec("net1")).await.unwrap();
    let mut agent = Agent::connect(&handle);
    let out = agent.sh(&format!(
        "nc -w 2 127.0.0.1 {port} </dev/null 2>&1; echo rc=$?; ls /sys/class/net; ip -o link | wc -l"
    ));
    assert!(
        !out.stdout.contains("rc=0"),
        "connected to the host's 127.0.0.1: {out:?}"
    );
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.contains(&"lo"), "{out:?}");
    assert_eq!(lines.last(), Some(&"1"), "only lo exists: {out:?}");
    assert!(
        listener.accept().is_err(),
        "the host listener saw a connection"
    );
    // The box's own loopback works. Generous waits, and a few tries on fresh ports: on a
    // loaded machine busybox's nc can miss a round (the listener slow to start, a -w timer
    // firing first); a box without loopback fails every try.
    let mut tries = Vec::new();
    for port in 7777..7780 {
        let out = agent.sh(&format!(
            "(nc -l -p {port} > /tmp/got{port} &); for i in $(seq 100); do echo ping | nc -w 3 127.0.0.1 {port} && break; sleep 0.1; done; \
             for i in $(seq 100); do [ -s /tmp/got{port} ] && break; sleep 0.1; done; cat /tmp/got{port}"
        ));
        let ok = out.stdout.contains("ping");
        tries.push(out);
        if ok {
            break;
        }
    }
    assert!(
        tries.last().is_some_and(|o| o.stdout.contains("ping")),
        "loopback inside the box: {tries:?}"
    );
    drop(agent);
    fx.backend.destroy("net1").await.unwrap();
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_operations_are_refused() {
    let fx = Fixture::new("priv");
    let handle = fx.backend.create(fx.spec("priv1")).await.unwrap();
    let mut agent = Agent::connect(&handle);
    let checks = [
        ("mount", "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m"),
        (
            "insmod",
            "head -c 4096 /dev/urandom > /tmp/x.ko && insmod /tmp/x.ko",
        ),
        ("unshare", "unshare -n true"),
        ("unshare-user", "unshare -U -r true"),
        ("mknod", "mknod /tmp/mem c 1 1"),
        ("chroot", "chroot / true"),
        // Needs CAP_SYS_ADMIN even in the box's own UTS namespace.
        ("sethostname", "hostname newname"),
    ];
    for (name, cmd) in checks {
        let out = agent.sh(&format!("{cmd} 2>&1"));
        assert!(!out.ok(), "{name} succeeded: {out:?}");
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            text.contains("not permitted") || text.contains("ermission denied"),
            "{name} failed otherwise than EPERM: {out:?}"
        );
    }
    // The agent's executable cannot be replaced through /proc/1/exe (CVE-2019-5736 style):
    // it is a sealed in-memory copy (and the agent may also make itself non-dumpable).
    let agent_before = fs::read(&fx.config.agent_bin).unwrap();
    let out = agent.sh(
        "readlink /proc/1/exe; echo x >> /proc/1/exe && echo WROTE; \
         printf x | dd of=/proc/1/exe conv=notrunc 2>&1 && echo WROTE",
    );
    assert!(!out.stdout.contains("WROTE"), "{out:?}");
    assert!(
        fs::read(&fx.config.agent_bin).unwrap() == agent_before,
        "the host's agent binary changed"
    );
    let out = agent.sh(
        "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
    );
    for line in out.stdout.lines() {
        let (k, v) = line.split_once(':').unwrap();
        let v = v.trim();
        match k {
            "NoNewPrivs" => assert_eq!(v, "1"),
            "Seccomp" => assert_eq!(v, "2"),
            _ => assert_eq!(v, "0000000000000000", "{k} not empty"),
        }
    }
    assert_eq!(out.stdout.lines().count(), 7, "{out:?}");
    drop(agent);
    fx.backend.destroy("priv1").await.unwrap();
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_kills_the_hog_not_the_agent() {
    let fx = Fixture::new("mem");
    let mut spec = fx.spec("mem1");
    spec.limits.memory_bytes = 32 << 20;
    let handle = fx.backend.create(spec).await.unwrap();
    let mut agent = Agent::connect(&handle);
    // `tail` keeps the whole (newline-free) input in memory.
    let out = agent.sh("head -c 200m /dev/zero | tail | wc -c");
    let killed = out.signal == Some(9) || out.code == Some(137) || out.stderr.contains("Killed");
    // `wc` prints 0 once `tail` is killed, unless a second OOM kill takes `wc` too: the kernel
    // may kill again before the first victim's memory is freed (seen in about 1 run in 10).
    assert!(
        killed && matches!(out.stdout.trim(), "0" | ""),
        "the hog survived: {out:?}"
    );
    assert_hello(agent.hello());
    let out = agent.sh("echo alive");
    assert_eq!(out.stdout, "alive\n");
    let dirs = fx.backend.cgroup_dirs("mem1");
    if let Some(memcg) = dirs.iter().find(|d| d.join("memory.oom_control").exists()) {
        let oom = fs::read_to_string(memcg.join("memory.oom_control")).unwrap();
        assert!(!oom.contains("oom_kill 0"), "no OOM kill recorded: {oom}");
    }
    if let Some(memcg) = dirs.iter().find(|d| d.join("memory.events").exists()) {
        let events = fs::read_to_string(memcg.join("memory.events")).unwrap();
        assert!(
            !events.contains("oom_kill 0"),
            "no OOM kill recorded: {events}"
        );
    }
    drop(agent);
    fx.backend.destroy("mem1").await.unwrap();
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_limit_stops_a_fork_loop() {
    let fx = Fixture::new("pids");
    let mut spec = fx.spec("pids1");
    spec.limits.pids = 32;
    let handle = fx.backend.create(spec).await.unwrap();
    let mut agent = Agent::connect(&handle);
    let out = agent.sh("i=0; while [ $i -lt 100 ]; do sleep 3 & i=$((i+1)); done; echo started=$i");
    assert!(
        !out.stdout.contains("started=100"),
        "100 processes under pids.max=32: {out:?}"
    );
    assert!(
        out.stderr.contains("fork")
            || out.stderr.contains("Resource temporarily unavailable")
            || !out.ok(),
        "{out:?}"
    );
    assert_hello(agent.hello());
    // Once the sleeps end, the box works again.
    let mut recovered = false;
    for _ in 0..50 {
        let out = agent.sh("echo ok");
        if out.stdout == "ok\n" {
            recovered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(recovered, "the box did not recover after the fork loop");
    drop(agent);
    fx.backend.destroy("pids1").await.unwrap();
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readonly_mounts_and_workspace() {
    let fx = Fixture::new("mnt");
    let ro = fx.tmp.path().join("ro");
    fs::create_dir_all(ro.join("sub")).unwrap();
    fs::write(ro.join("data.txt"), "read me\n").unwrap();
    let ro_file = fx.tmp.path().join("ro-file.conf");
    fs::write(&ro_file, "k=v\n").unwrap();
    let mut spec = fx.spec("mnt1");
    spec.readonly_mounts = vec![
        ReadonlyMount {
            host: ro.clone(),
            guest: "/data".into(),
        },
        ReadonlyMount {
            host: ro_file.clone(),
            guest: "/etc/app/ro-file.conf".into(),
        },
    ];
    let handle = fx.backend.create(spec).await.unwrap();
    let mut agent = Agent::connect(&handle);
    let out = agent.sh("cat /data/data.txt /etc/app/ro-file.conf");
    assert_eq!(out.stdout, "read me\nk=v\n", "{out:?}");
    for cmd in [
        "echo x > /data/new",
        "echo x >> /data/data.txt",
        "rm /data/data.txt",
        "mkdir /data/sub/d",
        "echo x > /etc/app/ro-file.conf",
    ] {
        let out = agent.sh(cmd);
        assert!(!out.ok(), "{cmd} succeeded: {out:?}");
        assert!(
            out.stderr.contains("Read-only file system"),
            "{cmd}: {out:?}"
        );
    }
    assert_eq!(
        fs::read_to_string(ro.join("data.txt")).unwrap(),
        "read me\n"
    );
    let out = agent
        .sh("cd /workspace && echo hello > out.txt && mkdir -p d/e && echo deep > d/e/f && pwd");
    assert!(out.ok(), "{out:?}");
    assert_eq!(
        fs::read_to_string(fx.workspace.join("out.txt")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        fs::read_to_string(fx.workspace.join("d/e/f")).unwrap(),
        "deep\n"
    );
    drop(agent);
    fx.backend.destroy("mnt1").await.unwrap();
    assert_eq!(
        fs::read_to_string(fx.workspace.join("out.txt")).unwrap(),
        "hello\n",
        "destroy kept the workspace"
    );
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_setup_is_reported_and_leaves_nothing() {
    let fx = Fixture::new("bad");
    // A template whose /workspace is a symlink out of the box, and one where it is a file.
    let evil = fx.tmp.path().join("evil-tpl");
    make_template(&evil);
    fs::remove_dir(evil.join("workspace")).unwrap();
    symlink("/etc", evil.join("workspace")).unwrap();
    let mut spec = fx.spec("bad1");
    spec.template_rootfs = evil.clone();
    // Refused (a mount onto a symlink), and in any case resolved inside the box.
    let err = fx.backend.create(spec).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::StartFailed(m) if m.contains("/workspace")),
        "{err:?}"
    );
    assert!(fx.backend.cgroup_dirs("bad1").iter().all(|d| !d.exists()));
    assert!(!fx.backend.box_dir("bad1").exists());

    let broken = fx.tmp.path().join("broken-tpl");
    make_template(&broken);
    fs::remove_dir(broken.join("workspace")).unwrap();
    fs::write(broken.join("workspace"), "not a dir").unwrap();
    let mut spec = fx.spec("bad2");
    spec.template_rootfs = broken;
    let err = fx.backend.create(spec).await.unwrap_err();
    let BackendError::StartFailed(msg) = &err else {
        panic!("{err:?}")
    };
    assert!(
        msg.contains("/workspace"),
        "the init's message names the step: {msg}"
    );
    assert!(!fx.backend.is_alive("bad2").await);
    assert!(fx.backend.cgroup_dirs("bad2").iter().all(|d| !d.exists()));
    assert!(!fx.backend.box_dir("bad2").exists());

    let mut spec = fx.spec("../bad3");
    spec.id = "../bad3".into();
    assert!(matches!(
        fx.backend.create(spec).await,
        Err(BackendError::StartFailed(_))
    ));
    let mut spec = fx.spec("bad4");
    spec.template_rootfs = fx.tmp.path().join("missing");
    assert!(matches!(
        fx.backend.create(spec).await,
        Err(BackendError::StartFailed(_))
    ));
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_alive_follows_the_agent() {
    let fx = Fixture::new("alive");
    let handle = fx.backend.create(fx.spec("alive1")).await.unwrap();
    assert_hello(Agent::connect(&handle).hello());
    assert!(fx.backend.is_alive("alive1").await);
    let pid = fx.backend.init_pid("alive1").unwrap();
    unsafe_kill(pid);
    let mut dead = false;
    for _ in 0..100 {
        if !fx.backend.is_alive("alive1").await {
            dead = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dead, "is_alive still true after the agent was killed");
    fx.backend.destroy("alive1").await.unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "not reaped"
    );
    fx.finish().await;
}

fn unsafe_kill(pid: i32) {
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
}

/// Not an assertion: prints create -> Hello latency over a few boxes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_to_hello_latency() {
    let fx = Fixture::new("lat");
    let mut times = Vec::new();
    for i in 0..10 {
        let id = format!("lat{i}");
        let t0 = Instant::now();
        let handle = fx.backend.create(fx.spec(&id)).await.unwrap();
        let created = t0.elapsed();
        let mut agent = Agent::connect(&handle);
        assert_hello(agent.hello());
        times.push((created, t0.elapsed()));
        if i == 0 {
            // Footprint of an idle box: the agent's resident memory and the box's memory
            // cgroup usage (which also counts kernel memory such as its page tables).
            let pid = fx.backend.init_pid(&id).unwrap();
            let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let rss = status
                .lines()
                .find(|l| l.starts_with("VmRSS"))
                .unwrap_or("VmRSS: ?");
            let threads = status
                .lines()
                .find(|l| l.starts_with("Threads"))
                .unwrap_or("Threads: ?");
            let usage = fx
                .backend
                .cgroup_dirs(&id)
                .iter()
                .find_map(|d| fs::read_to_string(d.join("memory.usage_in_bytes")).ok())
                .unwrap_or_default();
            eprintln!(
                "idle box: agent {rss}, {threads}, memory cgroup usage {} bytes",
                usage.trim()
            );
        }
        drop(agent);
        fx.backend.destroy(&id).await.unwrap();
    }
    for (created, hello) in &times {
        eprintln!("create {created:?}, create -> Hello {hello:?}");
    }
    let mut hellos: Vec<_> = times.iter().map(|t| t.1).collect();
    hellos.sort();
    eprintln!("create -> Hello median {:?}", hellos[hellos.len() / 2]);
    fx.finish().await;
}

const CRASH_ROOT: &str = "SANDBOXD_TEST_CRASH_ROOT";
const CRASH_PARENT: &str = "SANDBOXD_TEST_CRASH_PARENT";

/// Plays the server in `cleanup_stale_after_server_crash_adopts_what_the_store_keeps`: makes two boxes, prints their
/// pids, and waits to be SIGKILLed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of cleanup_stale_after_server_crash_adopts_what_the_store_keeps"]
async fn crash_helper() {
    let (Ok(root), Ok(parent)) = (std::env::var(CRASH_ROOT), std::env::var(CRASH_PARENT)) else {
        return;
    };
    let root = std::path::PathBuf::from(root);
    let mut config = config_in(&root, "crash");
    config.cgroup_parent = parent;
    let backend = NativeBackend::new(config).unwrap();
    for i in 0..2 {
        let id = format!("crash{i}");
        let mut spec = fx_spec(&root, &id);
        spec.limits.pids = 64;
        let handle = backend.create(spec).await.unwrap();
        let mut agent = Agent::connect(&handle);
        assert_hello(agent.hello());
        // A process of its own besides the agent, detached from the exec.
        assert!(agent
            .sh("setsid sleep 1000 > /dev/null 2>&1 < /dev/null &")
            .ok());
        std::mem::forget(agent);
        println!("HELPER-PID {}", backend.init_pid(&id).unwrap());
    }
    println!("HELPER-READY");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn fx_spec(root: &std::path::Path, id: &str) -> sandboxd_core::backend::BoxSpec {
    sandboxd_core::backend::BoxSpec {
        id: id.to_string(),
        template_rootfs: root.join("tpl"),
        workspace: root.join("ws"),
        readonly_mounts: Vec::new(),
        env: Default::default(),
        limits: sandboxd_core::backend::Limits {
            memory_bytes: 128 << 20,
            cpu_millis: 500,
            pids: 64,
            disk_bytes: 0,
        },
        hostname: id.to_string(),
        image: None,
    }
}

/// Kills the helper server even when the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_stale_after_server_crash_adopts_what_the_store_keeps() {
    use std::io::BufRead;
    let tmp = tempfile::Builder::new()
        .prefix("sbxc-")
        .tempdir_in("/tmp")
        .unwrap();
    make_template(&tmp.path().join("tpl"));
    fs::create_dir_all(tmp.path().join("ws")).unwrap();
    let parent = format!("sandboxd-test-{}-crash", std::process::id());
    let mut config = config_in(tmp.path(), "crash");
    config.cgroup_parent = parent.clone();

    // The "server": this test binary again, running only crash_helper.
    let server = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_ROOT, tmp.path())
        .env(CRASH_PARENT, &parent)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = KillOnDrop(server);
    let stdout = server.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut pids = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the helper server did not get ready");
        // libtest may print "test crash_helper ... " on the same line.
        if let Some(at) = line.find("HELPER-PID ") {
            pids.push(line[at + 11..].trim().parse::<i32>().unwrap());
        }
        if line.contains("HELPER-READY") {
            break;
        }
    }
    assert_eq!(pids.len(), 2);
    // Crash the server: its boxes keep running, reparented away from it.
    server.0.kill().unwrap();
    server.0.wait().unwrap();
    assert!(
        pids.iter().all(|&p| process_running(p)),
        "the boxes died with the server"
    );

    let backend = NativeBackend::new(config.clone()).unwrap();
    let box_pids: Vec<i32> = ["crash0", "crash1"]
        .iter()
        .flat_map(|id| {
            let dirs = backend.cgroup_dirs(id);
            let procs = dirs
                .iter()
                .find_map(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
                .unwrap_or_default();
            procs
                .split_whitespace()
                .map(|p| p.parse::<i32>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        box_pids.len() >= 4,
        "each box runs its agent and a sleep: {box_pids:?}"
    );
    // The store still records crash0 as alive: it is adopted; crash1 is cleaned up.
    let crash1_groups = backend
        .cgroup_dirs("crash1")
        .iter()
        .filter(|d| d.is_dir())
        .count();
    assert!(crash1_groups >= 2, "crash1 has {crash1_groups} cgroups");
    let keep = std::collections::BTreeSet::from(["crash0".to_string()]);
    let report = backend.cleanup_stale(&keep).await.unwrap();
    assert_eq!(report.boxes_killed, 1, "{report:?}");
    // One box x (its groups + state dir + run dir); the parents stay for crash0.
    assert_eq!(report.resources_removed, crash1_groups + 2, "{report:?}");
    let crash1_pids: Vec<i32> = box_pids
        .iter()
        .copied()
        .filter(|p| {
            !backend.cgroup_dirs("crash0").iter().any(|d| {
                fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .any(|q| q == p.to_string())
            })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || crash1_pids
            .iter()
            .all(|&p| !process_running(p))),
        "crash1's processes survived cleanup_stale"
    );

    // The adopted box works through the new backend: alive, its agent answers on its socket,
    // it pauses and resumes, and destroying it removes it like one of its own.
    assert!(backend.is_alive("crash0").await);
    assert!(!backend.is_alive("crash1").await);
    let handle = sandboxd_core::backend::BoxHandle {
        id: "crash0".into(),
        endpoint: sandboxd_core::backend::AgentEndpoint::Unix {
            path: config.run_dir.join("crash0").join("agent.sock"),
        },
    };
    assert_hello(Agent::connect(&handle).hello());
    backend.set_paused("crash0", true).await.unwrap();
    backend.set_paused("crash0", false).await.unwrap();
    assert!(Agent::connect(&handle).sh("true").ok());
    backend.destroy("crash0").await.unwrap();
    assert!(!backend.is_alive("crash0").await);
    assert!(
        eventually(Duration::from_secs(10), || box_pids
            .iter()
            .all(|&p| !process_running(p))),
        "box processes survived"
    );
    // With no box left, a cleanup removes the parents too.
    backend.cleanup_stale(&Default::default()).await.unwrap();
    assert_no_leftovers(&backend, &config);
    assert_eq!(
        host_mounts_mentioning(tmp.path()),
        Vec::<String>::new(),
        "a box mount leaked to the host"
    );
    // A second run finds nothing.
    let again = backend.cleanup_stale(&Default::default()).await.unwrap();
    assert_eq!((again.boxes_killed, again.resources_removed), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_stale_after_dropping_the_backend() {
    let fx = Fixture::new("drop");
    let first = NativeBackend::new(fx.config.clone()).unwrap();
    let mut pids = Vec::new();
    for id in ["d0", "d1", "d2"] {
        let handle = first.create(fx.spec(id)).await.unwrap();
        assert_hello(Agent::connect(&handle).hello());
        pids.push(first.init_pid(id).unwrap());
    }
    drop(first);
    let report = fx.backend.cleanup_stale(&Default::default()).await.unwrap();
    assert_eq!(report.boxes_killed, 3, "{report:?}");
    assert!(
        eventually(Duration::from_secs(10), || pids
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())),
        "box inits not killed and reaped"
    );
    assert_no_leftovers(&fx.backend, &fx.config);
    assert_eq!(host_mounts_mentioning(fx.tmp.path()), Vec::<String>::new());
    fx.finish().await;
}

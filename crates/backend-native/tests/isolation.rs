//! The native backend on this machine, end to end: real namespaces, cgroups, overlayfs,
//! seccomp and landlock around the real guest agent, in a busybox template.
//!
//! Needs root, busybox and the agent binary (`cargo build -p sandboxd-agent`).

mod common;

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use sandboxd_core::backend::{Backend, BackendError, ReadonlyMount};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_exec_destroy_leaves_nothing() {
    let fx = Fixture::new("life");
    let t0 = Instant::now();
    let handle = fx.backend.create(fx.spec("life1")).await.unwrap();
    let created = t0.elapsed();
    let mut agent = Agent::connect(&handle);
    assert_hello(agent.hello());
    eprintln!("create -> Hello: {:?} (create returned after {:?})", t0.elapsed(), created);
    assert!(fx.backend.is_alive("life1").await);

    let out = agent.sh("echo hi");
    assert_eq!((out.code, out.stdout.as_str()), (Some(0), "hi\n"), "{out:?}");
    let out = agent.sh("hostname; cat /proc/self/cgroup");
    assert!(out.stdout.starts_with("life1-host\n"), "{out:?}");
    assert!(out.stdout.lines().skip(1).all(|l| l.ends_with(":/")), "cgroup namespace root: {out:?}");

    let pid = fx.backend.init_pid("life1").unwrap();
    let box_dir = fx.backend.box_dir("life1");
    let cgroups = fx.backend.cgroup_dirs("life1");
    assert!(cgroups.iter().all(|d| d.is_dir()));
    assert!(box_dir.is_dir());
    // Even while the box runs, none of its mounts is in the host's mount table.
    assert_eq!(host_mounts_mentioning(fx.tmp.path()), Vec::<String>::new());

    drop(agent);
    eprintln!("{}", std::fs::read_to_string(box_dir.join("init.log")).unwrap());
    fx.backend.destroy("life1").await.unwrap();
    assert!(!fx.backend.is_alive("life1").await);
    assert!(!process_running(pid), "pid {pid} still running");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} not reaped");
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

//! The confined file API against the real agent binary.

mod common;

use std::os::unix::fs::{symlink, PermissionsExt};

use common::{exists, Client, TestAgent};
use sandboxd_protocol::{AgentErrorKind, Entry, EntryKind, Request, Response};

const MIB: usize = 1 << 20;

fn write(c: &mut Client, path: &str, data: &[u8]) -> Response {
    c.call(
        &Request::WriteFile {
            path: path.into(),
            mode: None,
            create_parents: false,
            more: false,
        },
        data,
    )
    .remove(0)
    .resp
}

/// Start a chunked write of `path` with its first chunk; `Request::Chunk`s follow.
fn begin_write(c: &mut Client, path: &str, first: &[u8]) {
    c.send(
        &Request::WriteFile {
            path: path.into(),
            mode: None,
            create_parents: false,
            more: true,
        },
        first,
    );
}

/// Read a file: its contents, or the error kind.
fn read(c: &mut Client, path: &str) -> Result<Vec<u8>, AgentErrorKind> {
    let frames = c.call(&Request::ReadFile { path: path.into() }, &[]);
    let mut data = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        match &f.resp {
            Response::Data { last } => {
                assert!(f.payload.len() <= MIB, "frame larger than 1 MiB");
                assert_eq!(*last, i == frames.len() - 1);
                data.extend_from_slice(&f.payload);
            }
            Response::Error(e) => return Err(e.kind),
            other => panic!("{other:?}"),
        }
    }
    Ok(data)
}

fn entry(resp: Response) -> Entry {
    match resp {
        Response::Entry(e) => e,
        other => panic!("expected an entry, got {other:?}"),
    }
}

fn err_kind(resp: Response) -> AgentErrorKind {
    match resp {
        Response::Error(e) => e.kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

fn list(c: &mut Client, path: &str, depth: u32) -> Vec<Entry> {
    match c.one(&Request::ListDir {
        path: path.into(),
        depth,
    }) {
        Response::Entries { entries } => entries,
        other => panic!("{other:?}"),
    }
}

#[test]
fn write_read_round_trip_text_and_binary() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let e = entry(write(&mut c, "hello.txt", b"hello\n"));
    assert_eq!(e.path, agent.shown("hello.txt"));
    assert_eq!(e.name, "hello.txt");
    assert_eq!(e.kind, EntryKind::File);
    assert_eq!(e.size, 6);
    assert_eq!(e.mode, 0o644);
    assert!(e.mtime_ms > 1_600_000_000_000);
    assert_eq!(read(&mut c, "hello.txt").unwrap(), b"hello\n");
    assert_eq!(std::fs::read(agent.path("hello.txt")).unwrap(), b"hello\n");

    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    write(&mut c, "bin.dat", &binary);
    assert_eq!(read(&mut c, "bin.dat").unwrap(), binary);
    // Absolute paths under the root name the same file.
    assert_eq!(read(&mut c, &agent.shown("bin.dat")).unwrap(), binary);

    // Overwrite keeps nothing of the old contents; an empty file reads as one empty frame.
    write(&mut c, "hello.txt", b"");
    let frames = c.call(
        &Request::ReadFile {
            path: "hello.txt".into(),
        },
        &[],
    );
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].resp, Response::Data { last: true });
    assert!(frames[0].payload.is_empty());

    // Mode, and create_parents.
    let e = entry(
        c.call(
            &Request::WriteFile {
                path: "deep/er/run.sh".into(),
                mode: Some(0o750),
                create_parents: true,
                more: false,
            },
            b"#!/bin/sh\n",
        )
        .remove(0)
        .resp,
    );
    assert_eq!(e.mode, 0o750);
    let meta = std::fs::metadata(agent.path("deep/er/run.sh")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o750);
    // Without create_parents a missing parent is an error.
    assert_eq!(
        err_kind(write(&mut c, "nope/x.txt", b"x")),
        AgentErrorKind::NotFound
    );
    // Reading a directory or a missing file.
    assert_eq!(read(&mut c, "deep").unwrap_err(), AgentErrorKind::WrongKind);
    assert_eq!(
        read(&mut c, "missing").unwrap_err(),
        AgentErrorKind::NotFound
    );
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(&agent.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.contains("sandboxd")), "{names:?}");
}

#[test]
fn multi_chunk_write_and_read() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let data: Vec<u8> = (0..(2 * MIB + MIB / 2)).map(|i| (i % 251) as u8).collect();
    begin_write(&mut c, "big.bin", &data[..MIB]);
    c.send(&Request::Chunk { more: true }, &data[MIB..2 * MIB]);
    c.send(&Request::Chunk { more: false }, &data[2 * MIB..]);
    let e = entry(c.recv().resp);
    assert_eq!(e.size, data.len() as u64);

    let frames = c.call(
        &Request::ReadFile {
            path: "big.bin".into(),
        },
        &[],
    );
    assert_eq!(frames.len(), 3, "2.5 MiB in pieces of at most 1 MiB");
    let got: Vec<u8> = frames.iter().flat_map(|f| f.payload.clone()).collect();
    assert!(got == data);
    assert_eq!(read(&mut c, "big.bin").unwrap().len(), data.len());

    // Exactly 1 MiB: one full frame, then the last (empty or not) frame.
    write(&mut c, "one.bin", &data[..MIB]);
    assert_eq!(read(&mut c, "one.bin").unwrap(), &data[..MIB]);
}

#[test]
fn failed_write_keeps_old_contents_and_stream_in_step() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    write(&mut c, "keep.txt", b"original");
    // A chunked write to a path outside the root: the chunks are still consumed, the error
    // answers the whole request and the connection keeps working.
    begin_write(&mut c, "../evil.txt", b"aaa");
    c.send(&Request::Chunk { more: false }, b"bbb");
    assert_eq!(err_kind(c.recv().resp), AgentErrorKind::PathOutsideSandbox);
    assert!(!exists(&agent.dir.join("evil.txt")));
    // A write interrupted by a protocol error leaves the old contents.
    begin_write(&mut c, "keep.txt", b"new contents that never land");
    c.send(&Request::Stat { path: "x".into() }, &[]);
    assert_eq!(err_kind(c.recv().resp), AgentErrorKind::InvalidRequest);
    let mut c = agent.connect();
    assert_eq!(read(&mut c, "keep.txt").unwrap(), b"original");
}

#[test]
fn list_with_depth_stat_mkdir_move_remove() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    assert_eq!(
        c.one(&Request::Mkdir {
            path: "a/b".into(),
            parents: true
        }),
        Response::Created { created: true }
    );
    assert_eq!(
        c.one(&Request::Mkdir {
            path: "a/b".into(),
            parents: true
        }),
        Response::Created { created: false }
    );
    assert_eq!(
        err_kind(c.one(&Request::Mkdir {
            path: "a/b".into(),
            parents: false
        })),
        AgentErrorKind::AlreadyExists
    );
    assert_eq!(
        err_kind(c.one(&Request::Mkdir {
            path: "x/y".into(),
            parents: false
        })),
        AgentErrorKind::NotFound
    );
    assert_eq!(
        c.one(&Request::Mkdir {
            path: "m".into(),
            parents: false
        }),
        Response::Created { created: true }
    );
    write(&mut c, "a/b/c.txt", b"c");
    write(&mut c, "a/x.txt", b"xx");
    write(&mut c, "z.txt", b"zzz");
    symlink("a/x.txt", agent.path("lnk")).unwrap();

    let top = list(&mut c, "", 1);
    let names: Vec<_> = top.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["a", "lnk", "m", "z.txt"]);
    assert_eq!(top[0].kind, EntryKind::Dir);
    assert_eq!(top[1].kind, EntryKind::Symlink);
    assert_eq!(top[1].target.as_deref(), Some("a/x.txt"));
    assert_eq!(top[3].size, 3);

    let all = list(&mut c, ".", 3);
    let paths: Vec<_> = all.iter().map(|e| e.path.clone()).collect();
    let want: Vec<_> = ["a", "a/b", "a/b/c.txt", "a/x.txt", "lnk", "m", "z.txt"]
        .iter()
        .map(|p| agent.shown(p))
        .collect();
    assert_eq!(paths, want);
    let two = list(&mut c, &agent.shown("a"), 1);
    assert_eq!(two.len(), 2);
    assert_eq!(
        err_kind(c.one(&Request::ListDir {
            path: "z.txt".into(),
            depth: 1
        })),
        AgentErrorKind::WrongKind
    );

    let st = entry(c.one(&Request::Stat {
        path: "a/b/c.txt".into(),
    }));
    assert_eq!(
        (st.kind, st.size, st.name.as_str()),
        (EntryKind::File, 1, "c.txt")
    );
    assert_eq!(st.path, agent.shown("a/b/c.txt"));
    let st = entry(c.one(&Request::Stat { path: "lnk".into() }));
    assert_eq!(st.kind, EntryKind::Symlink);
    assert_eq!(st.target.as_deref(), Some("a/x.txt"));
    let root = entry(c.one(&Request::Stat { path: "".into() }));
    assert_eq!(root.kind, EntryKind::Dir);
    assert_eq!(root.path, agent.shown(""));
    assert_eq!(
        err_kind(c.one(&Request::Stat {
            path: "nope".into()
        })),
        AgentErrorKind::NotFound
    );

    let moved = entry(c.one(&Request::Move {
        from: "z.txt".into(),
        to: "m/z2.txt".into(),
    }));
    assert_eq!(moved.path, agent.shown("m/z2.txt"));
    assert_eq!(moved.size, 3);
    assert!(!exists(&agent.path("z.txt")));
    assert_eq!(read(&mut c, "m/z2.txt").unwrap(), b"zzz");
    assert_eq!(
        err_kind(c.one(&Request::Move {
            from: "gone".into(),
            to: "m/x".into(),
        })),
        AgentErrorKind::NotFound
    );

    assert_eq!(
        err_kind(c.one(&Request::Remove {
            path: "a".into(),
            recursive: false
        })),
        AgentErrorKind::WrongKind
    );
    assert_eq!(
        c.one(&Request::Remove {
            path: "a".into(),
            recursive: true
        }),
        Response::Ok
    );
    assert!(!exists(&agent.path("a")));
    // The symlink is removed as a link; its (now dangling) target is not touched.
    assert_eq!(
        c.one(&Request::Remove {
            path: "lnk".into(),
            recursive: false
        }),
        Response::Ok
    );
    assert_eq!(
        err_kind(c.one(&Request::Remove {
            path: "".into(),
            recursive: true
        })),
        AgentErrorKind::InvalidRequest
    );
    assert!(exists(&agent.root));
}

#[test]
fn paths_outside_the_root_are_refused() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    let outside = agent.dir.join("outside");
    std::fs::write(outside.join("secret.txt"), b"secret").unwrap();
    symlink("/etc", agent.path("etc_link")).unwrap();
    symlink(outside.join("secret.txt"), agent.path("abs_secret")).unwrap();
    symlink("../outside", agent.path("rel_out")).unwrap();
    symlink("../outside/secret.txt", agent.path("rel_secret")).unwrap();
    symlink("../outside/new.txt", agent.path("dangling_out")).unwrap();

    for p in [
        "../../etc/passwd",
        "/etc/passwd",
        "..",
        "a/../../x",
        "etc_link/passwd",
        "abs_secret",
        "rel_out/secret.txt",
        "rel_secret",
    ] {
        assert_eq!(
            read(&mut c, p).unwrap_err(),
            AgentErrorKind::PathOutsideSandbox,
            "read {p}"
        );
    }
    // Writes: into a symlinked dir, and through final symlinks, including a dangling one.
    for p in [
        "etc_link/sandboxd-test",
        "rel_out/new.txt",
        "abs_secret",
        "rel_secret",
        "dangling_out",
        "/etc/sandboxd-test",
    ] {
        assert_eq!(
            err_kind(write(&mut c, p, b"pwned")),
            AgentErrorKind::PathOutsideSandbox,
            "write {p}"
        );
    }
    assert_eq!(
        std::fs::read(outside.join("secret.txt")).unwrap(),
        b"secret"
    );
    assert!(!exists(&outside.join("new.txt")));
    assert!(!exists(std::path::Path::new("/etc/sandboxd-test")));
    // Other operations through an escaping link.
    assert_eq!(
        err_kind(c.one(&Request::Mkdir {
            path: "rel_out/d".into(),
            parents: true
        })),
        AgentErrorKind::PathOutsideSandbox
    );
    assert_eq!(
        err_kind(c.one(&Request::ListDir {
            path: "etc_link".into(),
            depth: 1
        })),
        AgentErrorKind::PathOutsideSandbox
    );
    assert_eq!(
        err_kind(c.one(&Request::Stat {
            path: "rel_out/secret.txt".into()
        })),
        AgentErrorKind::PathOutsideSandbox
    );
    assert_eq!(
        err_kind(c.one(&Request::Remove {
            path: "rel_out/secret.txt".into(),
            recursive: false
        })),
        AgentErrorKind::PathOutsideSandbox
    );
    assert_eq!(
        err_kind(c.one(&Request::Move {
            from: "rel_out/secret.txt".into(),
            to: "stolen.txt".into()
        })),
        AgentErrorKind::PathOutsideSandbox
    );
    assert!(exists(&outside.join("secret.txt")));
    // The links themselves are inside and can be described, listed (not followed) and
    // removed.
    let st = entry(c.one(&Request::Stat {
        path: "etc_link".into(),
    }));
    assert_eq!(st.kind, EntryKind::Symlink);
    assert_eq!(st.target.as_deref(), Some("/etc"));
    let all = list(&mut c, "", 5);
    assert!(all.iter().all(|e| e.path.starts_with(&agent.shown(""))));
    assert_eq!(all.len(), 5, "symlinked directories are not descended into");
    std::fs::create_dir(agent.path("tree")).unwrap();
    symlink("../../outside", agent.path("tree/out")).unwrap();
    assert_eq!(
        c.one(&Request::Remove {
            path: "tree".into(),
            recursive: true
        }),
        Response::Ok
    );
    assert!(
        exists(&outside.join("secret.txt")),
        "recursive remove followed a symlink"
    );
}

#[test]
fn symlinks_inside_the_root_work() {
    let agent = TestAgent::start();
    let mut c = agent.connect();
    std::fs::create_dir(agent.path("real")).unwrap();
    std::fs::write(agent.path("real/data.txt"), b"inside").unwrap();
    symlink("real/data.txt", agent.path("link.txt")).unwrap();
    symlink("real", agent.path("dirlink")).unwrap();
    std::fs::create_dir(agent.path("sub")).unwrap();
    symlink("../real/data.txt", agent.path("sub/up_link")).unwrap();

    assert_eq!(read(&mut c, "link.txt").unwrap(), b"inside");
    assert_eq!(read(&mut c, "dirlink/data.txt").unwrap(), b"inside");
    assert_eq!(read(&mut c, "sub/up_link").unwrap(), b"inside");
    assert_eq!(list(&mut c, "dirlink", 1).len(), 1);

    // Writing through a link updates its target and keeps the link.
    let e = entry(write(&mut c, "sub/up_link", b"updated"));
    assert_eq!(e.path, agent.shown("real/data.txt"));
    assert_eq!(
        std::fs::read(agent.path("real/data.txt")).unwrap(),
        b"updated"
    );
    assert!(std::fs::symlink_metadata(agent.path("sub/up_link"))
        .unwrap()
        .file_type()
        .is_symlink());
    write(&mut c, "dirlink/new.txt", b"n");
    assert_eq!(std::fs::read(agent.path("real/new.txt")).unwrap(), b"n");
    // A dangling link inside the root is written through too.
    symlink("real/later.txt", agent.path("later")).unwrap();
    write(&mut c, "later", b"later");
    assert_eq!(
        std::fs::read(agent.path("real/later.txt")).unwrap(),
        b"later"
    );
}

/// The descriptors of process `pid` that point below `dir`, as `/proc` names their files.
fn open_files_in(pid: u32, dir: &std::path::Path) -> Vec<String> {
    let prefix = format!("{}/", dir.to_string_lossy());
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|p| p.to_string_lossy().to_string())
        .filter(|p| p.starts_with(&prefix))
        .collect()
}

/// A write in progress is invisible in its directory, and an agent killed in the middle of it
/// (as when its box is) leaves nothing behind: the file it would have replaced keeps its old
/// bytes, and no temporary file is left among the user's.
#[test]
fn an_upload_cut_by_a_killed_agent_leaves_nothing_behind() {
    let mut agent = TestAgent::start();
    let mut c = agent.connect();
    write(&mut c, "keep.txt", b"original");
    begin_write(&mut c, "keep.txt", &vec![b'n'; MIB]);
    // The agent holds the file being written once it has taken the first chunk.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let held = loop {
        let held: Vec<String> = open_files_in(agent.pid(), &agent.root)
            .into_iter()
            .filter(|p| !p.ends_with("/keep.txt"))
            .collect();
        if !held.is_empty() {
            break held;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never opened the upload"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(
        held.iter().all(|p| p.ends_with(" (deleted)")),
        "the upload has a name while it is written: {held:?}"
    );
    let root = agent.root.clone();
    let names = || -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        n.sort();
        n
    };
    assert_eq!(names(), ["keep.txt"]);
    agent.kill();
    assert_eq!(names(), ["keep.txt"]);
    assert_eq!(std::fs::read(agent.path("keep.txt")).unwrap(), b"original");
}

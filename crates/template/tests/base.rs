//! Builds the `base` template for real with mmdebstrap.

use std::time::Instant;

use sandboxd_template::{build, is_ready, BuildOptions, BuildOutcome};

#[test]
#[ignore = "downloads ~60 MB from the Debian mirror and takes about a minute; \
            run with `cargo test -p sandboxd-template -- --ignored`"]
fn base_is_built_with_mmdebstrap() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let start = Instant::now();
    let opts = BuildOptions {
        progress: false,
        ..BuildOptions::default()
    };
    let outcome = build(dir, "base", &opts).unwrap();
    eprintln!("base: {outcome:?} in {:?}", start.elapsed());
    assert!(matches!(outcome, BuildOutcome::Built { .. }));
    assert!(is_ready(dir, "base"));
    let root = dir.join("base/rootfs");
    for f in [
        "bin/bash",
        "usr/bin/python3",
        "usr/bin/git",
        "usr/bin/curl",
        "usr/bin/pip3",
        "usr/bin/ps",
        "usr/bin/less",
        "usr/bin/xz",
        "usr/bin/unzip",
        "usr/bin/ip",
        "etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(root.join(f).exists(), "{f} is missing");
    }
    assert!(root.join("workspace").is_dir());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/resolv.conf")).unwrap(),
        ""
    );
    let lists: Vec<_> = std::fs::read_dir(root.join("var/lib/apt/lists"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != "lock" && n != "partial")
        .collect();
    assert!(lists.is_empty(), "{lists:?}");
    let info = std::fs::read_to_string(dir.join("base/info.json")).unwrap();
    eprintln!("{info}");
    assert_eq!(build(dir, "base", &opts).unwrap(), BuildOutcome::Cached);
}

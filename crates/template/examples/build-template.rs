//! Builds a template into an explicit directory, without the CLI:
//!
//! ```sh
//! cargo run -p sandboxd-template --example build-template -- DIR NAME [--force] [--mirror URL]
//! ```
//!
//! `scripts/test` uses it to build `base` into the directory the tests read
//! (`SANDBOXD_TEST_TEMPLATES`). Exit status: 0 built or cached, 1 failed, 2 bad usage.

use std::process::ExitCode;

use sandboxd_template::{build, recipes, BuildOptions, BuildOutcome};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut opts = BuildOptions::default();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--force" => opts.force = true,
            "--mirror" => opts.mirror = args.next(),
            "--no-progress" => opts.progress = false,
            _ if a.starts_with('-') => return usage(),
            _ => positional.push(a),
        }
    }
    let [dir, name] = positional.as_slice() else {
        return usage();
    };
    match build(dir.as_ref(), name, &opts) {
        Ok(BuildOutcome::Cached) => {
            eprintln!("template {name} is ready in {dir} (cached)");
            ExitCode::SUCCESS
        }
        Ok(BuildOutcome::Built { .. }) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage() -> ExitCode {
    let names: Vec<&str> = recipes().iter().map(|r| r.name).collect();
    eprintln!(
        "usage: build-template DIR NAME [--force] [--mirror URL] [--no-progress]\n\
         NAME is one of: {}",
        names.join(", ")
    );
    ExitCode::from(2)
}

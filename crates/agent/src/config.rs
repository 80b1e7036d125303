//! The agent's configuration, read once from its own environment at startup.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Default directory the file API is confined to and commands start in.
pub const DEFAULT_FILES_ROOT: &str = "/workspace";

/// `PATH` for commands when the sandbox's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Prefix of the variables that configure the agent itself; they are never passed on.
pub const AGENT_VAR_PREFIX: &str = "SANDBOXD_";

/// What the agent needs to know about its sandbox.
#[derive(Debug, Clone)]
pub struct Config {
    /// Directory every file request is confined to (`SANDBOXD_FILES_ROOT`, default
    /// `/workspace`). Also the default working directory of commands when it exists.
    pub files_root: PathBuf,
    /// Base environment of every command: the agent's own environment minus `SANDBOXD_*`
    /// variables, with a default `PATH` when none was set.
    pub env: Vec<(OsString, OsString)>,
    /// Program run as the persistent Python interpreter (looked up in `PATH`).
    pub python: OsString,
}

impl Config {
    /// Build the configuration from the process environment.
    pub fn from_env() -> Config {
        Self::from_vars(std::env::vars_os())
    }

    /// Build the configuration from an explicit environment (for embedding and tests).
    pub fn from_vars(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Config {
        let mut files_root = PathBuf::from(DEFAULT_FILES_ROOT);
        let mut env = Vec::new();
        for (k, v) in vars {
            if k.as_bytes().starts_with(AGENT_VAR_PREFIX.as_bytes()) {
                if k == "SANDBOXD_FILES_ROOT" && !v.is_empty() {
                    files_root = PathBuf::from(v);
                }
                continue;
            }
            env.push((k, v));
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        Config {
            files_root,
            env,
            python: "python3".into(),
        }
    }

    /// Working directory of a command that names none: the files root when it exists (so that
    /// relative paths of commands and of the file API agree), else `/`.
    pub fn default_cwd(&self) -> PathBuf {
        if self.files_root.is_dir() {
            self.files_root.clone()
        } else {
            PathBuf::from("/")
        }
    }

    /// The shell for [`sandboxd_protocol::ExecSpec::shell`]: bash when present, else sh.
    pub fn shell(&self) -> &'static str {
        if Path::new("/bin/bash").exists() {
            "/bin/bash"
        } else {
            "/bin/sh"
        }
    }

    /// Value of `name` in the base environment.
    pub fn env_var(&self, name: &str) -> Option<&OsStr> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_os_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_variables_are_stripped_and_path_defaulted() {
        let cfg = Config::from_vars([
            ("SANDBOXD_LISTEN_FD".into(), "3".into()),
            ("SANDBOXD_FILES_ROOT".into(), "/srv/x".into()),
            ("HOME".into(), "/root".into()),
        ]);
        assert_eq!(cfg.files_root, PathBuf::from("/srv/x"));
        assert!(cfg
            .env
            .iter()
            .all(|(k, _)| !k.as_bytes().starts_with(b"SANDBOXD_")));
        assert_eq!(cfg.env_var("PATH"), Some(OsStr::new(DEFAULT_PATH)));
        assert_eq!(cfg.env_var("HOME"), Some(OsStr::new("/root")));
    }
}

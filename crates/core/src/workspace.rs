//! Per-session workspace quotas (`SANDBOXD_WORKSPACE_MB`): each session's workspace is an ext4
//! file system of its own, in an image file, loop-mounted on `DEFAULT_MOUNT_DIR/<session>` while
//! a sandbox of the session lives.
//!
//! Why an image and not project quotas: ext4's and XFS's project quotas need `CONFIG_QUOTA`
//! (and for ext4 `CONFIG_QFMT_V2`) in the kernel and a file system made and mounted for them,
//! which many hosts lack (the machines this project is built on among them); a loop device
//! and ext4 are everywhere. The cost is paid once per session (formatting, a few ms) and once
//! per sandbox start (a mount, a few ms); with the quota off nothing here runs.
//!
//! Invariants:
//! - an image is only ever attached to one loop device and mounted at its own workspace: every
//!   mount and unmount happens under one lock (`flock` on a file beside the images), shared by
//!   the threads and the worker processes of the server alike;
//! - an image is complete or absent: it is formatted under a temporary name and renamed;
//! - the mounts live in the host's mount namespace (boxes bind them), so a crash of the server
//!   leaves them in place with the files intact; the next start unmounts those no adopted
//!   sandbox uses ([`WorkspaceQuota::unmount_unused`]).

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a workspace's file system could not be set up or taken down.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// A file operation on the images or the workspace failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// `mkfs.ext4`, `mount` or `umount` failed; the text is what it printed.
    #[error("{command} failed: {output}")]
    Command {
        /// The command, without its arguments.
        command: String,
        /// What it printed on stderr (its exit status when it printed nothing).
        output: String,
    },
    /// The host cannot give workspaces their own file systems (no root, no loop devices).
    #[error("workspace quotas are unavailable: {0}")]
    Unavailable(String),
}

impl WorkspaceError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let context = context.into();
        move |source| WorkspaceError::Io { context, source }
    }

    /// Whether the host's disk is full (the image could not be made for want of space).
    pub fn is_no_space(&self) -> bool {
        matches!(self, WorkspaceError::Io { source, .. } if crate::backend::io_no_space(source))
    }
}

/// Gives each session's workspace a file system of `size_mb`.
#[derive(Debug, Clone)]
pub struct WorkspaceQuota {
    /// `DEFAULT_MOUNT_DIR`.
    mount_dir: PathBuf,
    /// Where the images live: `<DEFAULT_MOUNT_DIR>.images`, beside the workspaces and not among
    /// them, so that no session id can name it.
    images: PathBuf,
    size_mb: u64,
}

impl WorkspaceQuota {
    /// Quotas of `size_mb` for the workspaces under `mount_dir`; checks that this host can
    /// mount loop devices and format ext4.
    pub fn new(mount_dir: &Path, size_mb: u64) -> Result<Self, WorkspaceError> {
        let name = mount_dir.file_name().ok_or_else(|| {
            WorkspaceError::Unavailable(format!(
                "DEFAULT_MOUNT_DIR {} has no name to put the images beside",
                mount_dir.display()
            ))
        })?;
        let mut images_name = name.to_os_string();
        images_name.push(".images");
        let images = mount_dir.with_file_name(images_name);
        // /proc/self belongs to the process's effective uid.
        if std::fs::metadata("/proc/self").map(|m| m.uid()).ok() != Some(0) {
            return Err(WorkspaceError::Unavailable(
                "mounting workspace file systems needs root".into(),
            ));
        }
        if !Path::new("/dev/loop-control").exists() {
            return Err(WorkspaceError::Unavailable(
                "/dev/loop-control is missing (the kernel has no loop devices)".into(),
            ));
        }
        if !["/sbin/mkfs.ext4", "/usr/sbin/mkfs.ext4"]
            .iter()
            .any(|p| Path::new(p).exists())
        {
            return Err(WorkspaceError::Unavailable(
                "mkfs.ext4 is missing (install e2fsprogs)".into(),
            ));
        }
        std::fs::create_dir_all(&images)
            .map_err(WorkspaceError::io(format!("create {}", images.display())))?;
        std::fs::set_permissions(&images, std::fs::Permissions::from_mode(0o700))
            .map_err(WorkspaceError::io(format!("chmod {}", images.display())))?;
        Ok(WorkspaceQuota {
            mount_dir: mount_dir.to_path_buf(),
            images,
            size_mb,
        })
    }

    /// The image file of a session.
    pub fn image(&self, session: &str) -> PathBuf {
        self.images.join(format!("{session}.ext4"))
    }

    /// Take the lock every mount and unmount happens under.
    async fn lock(&self) -> Result<std::fs::File, WorkspaceError> {
        let path = self.images.join(".lock");
        tokio::task::spawn_blocking(move || {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(WorkspaceError::io(format!("open {}", path.display())))?;
            f.lock()
                .map_err(WorkspaceError::io(format!("lock {}", path.display())))?;
            Ok(f)
        })
        .await
        .expect("the lock task does not panic")
    }

    /// Whether `dir` is a mount point (another file system than its parent's).
    fn mounted(dir: &Path) -> bool {
        let (Ok(d), Some(Ok(p))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata))
        else {
            return false;
        };
        d.dev() != p.dev()
    }

    /// Make sure the workspace of `session` (which exists) is its image, mounted: formats the
    /// image on the session's first start. A workspace that already holds files but has no
    /// image (made while the quota was off) is left as it is, without a quota, so that none of
    /// its files is hidden; that is logged.
    pub async fn attach(&self, session: &str) -> Result<(), WorkspaceError> {
        let _lock = self.lock().await?;
        let workspace = self.mount_dir.join(session);
        if Self::mounted(&workspace) {
            return Ok(());
        }
        let image = self.image(session);
        let fresh = !image.exists();
        if fresh {
            let has_files = std::fs::read_dir(&workspace)
                .map_err(WorkspaceError::io(format!("read {}", workspace.display())))?
                .next()
                .is_some();
            if has_files {
                tracing::warn!(
                    session,
                    "workspace holds files from before the workspace quota was on: it keeps them \
                     and has no quota"
                );
                return Ok(());
            }
            self.format(&image).await?;
        }
        run(
            "mount -t ext4 -o loop,nosuid,nodev,noatime",
            tokio::process::Command::new("mount")
                .args(["-t", "ext4", "-o", "loop,nosuid,nodev,noatime"])
                .arg(&image)
                .arg(&workspace),
        )
        .await?;
        if fresh {
            // mkfs's lost+found would be the first thing a new sandbox sees in /workspace.
            let _ = std::fs::remove_dir(workspace.join("lost+found"));
        }
        Ok(())
    }

    /// Format a new image of `size_mb` at `image`, atomically.
    async fn format(&self, image: &Path) -> Result<(), WorkspaceError> {
        let tmp = image.with_extension("ext4.tmp");
        let f = std::fs::File::create(&tmp)
            .map_err(WorkspaceError::io(format!("create {}", tmp.display())))?;
        // Sparse: the image takes the space its files take, up to the quota.
        f.set_len(self.size_mb << 20)
            .map_err(WorkspaceError::io(format!("size {}", tmp.display())))?;
        drop(f);
        let made = run(
            "mkfs.ext4",
            tokio::process::Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-L", "sandboxd-ws"])
                .args(["-E", "lazy_itable_init=1,lazy_journal_init=1,nodiscard"])
                .arg(&tmp),
        )
        .await;
        let made = made.and_then(|()| {
            std::fs::rename(&tmp, image)
                .map_err(WorkspaceError::io(format!("rename {}", tmp.display())))
        });
        if made.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        made
    }

    /// Unmount the workspace of `session` unless `in_use` says a sandbox still needs it (or
    /// fails); its files stay in the image. `in_use` is asked under the lock, so that a
    /// sandbox of the session being started at the same time (whose record exists before it
    /// attaches) keeps its mount.
    pub async fn detach<F, Fut, E>(&self, session: &str, in_use: F) -> Result<(), E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<bool, E>>,
        E: From<WorkspaceError>,
    {
        let _lock = self.lock().await?;
        let workspace = self.mount_dir.join(session);
        if !Self::mounted(&workspace) || !self.image(session).exists() || in_use().await? {
            return Ok(());
        }
        Ok(unmount(&workspace).await?)
    }

    /// Unmount every workspace with an image whose session is not in `keep` (after a crash:
    /// the sandboxes using them are gone). Returns how many were unmounted.
    pub async fn unmount_unused(&self, keep: &BTreeSet<String>) -> Result<usize, WorkspaceError> {
        let _lock = self.lock().await?;
        let mut n = 0;
        let entries = std::fs::read_dir(&self.images).map_err(WorkspaceError::io(format!(
            "read {}",
            self.images.display()
        )))?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(session) = name.to_str().and_then(|n| n.strip_suffix(".ext4")) else {
                if name.to_string_lossy().ends_with(".ext4.tmp") {
                    // A format a crash interrupted.
                    let _ = std::fs::remove_file(entry.path());
                }
                continue;
            };
            let workspace = self.mount_dir.join(session);
            if !keep.contains(session) && Self::mounted(&workspace) {
                unmount(&workspace).await?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Unmount a workspace (its loop device goes with the mount: `mount -o loop` sets autoclear).
async fn unmount(workspace: &Path) -> Result<(), WorkspaceError> {
    let plain = run(
        "umount",
        tokio::process::Command::new("umount").arg(workspace),
    )
    .await;
    if plain.is_ok() {
        return plain;
    }
    // Busy: a process outside every box (an operator's shell) is in it. Detaching keeps the
    // device until that process lets go, and a later mount of the image reuses that device.
    run(
        "umount -l",
        tokio::process::Command::new("umount")
            .arg("-l")
            .arg(workspace),
    )
    .await
}

/// Run a command to its end; its stderr is the error.
async fn run(label: &str, cmd: &mut tokio::process::Command) -> Result<(), WorkspaceError> {
    let out = cmd
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(WorkspaceError::io(format!("run {label}")))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(WorkspaceError::Command {
        command: label.to_string(),
        output: if stderr.is_empty() {
            out.status.to_string()
        } else {
            stderr
        },
    })
}

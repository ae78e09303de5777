//! A file system that can lose power: FUSE, in memory, mounted by the test process, keeping for
//! every file and directory what reads see now and what fsync made durable, so that
//! [`PowerCutFs::cut`] drops exactly what a power cut may drop. SIGKILL keeps the page cache;
//! this does not.
//!
//! The durability rules (strict: a file's data needs its fsync, a name needs its directory's)
//! are in [`model`]'s documentation; how requests are served, in [`fuse`]'s.
//!
//! ```no_run
//! use eddy_tests::powercut_fs::PowerCutFs;
//!
//! let fs = PowerCutFs::mount_temp().expect("FUSE mounts");
//! let dir = fs.create_dir_durably("data").unwrap();
//! std::fs::write(dir.join("unsynced"), b"gone after the cut").unwrap();
//! let report = fs.cut();
//! assert!(!dir.join("unsynced").exists());
//! assert_eq!(report.dropped_bytes, 18);
//! ```
//!
//! Mounting needs `/dev/fuse` and, as root, nothing else (a mount(2) call); another user needs
//! `fusermount3` (Debian's `fuse3` package). Dropping the value unmounts.

mod fuse;
mod model;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};

use model::Tree;
pub use model::{CutReport, PowerCutStats};

/// The most bytes the files of one mount hold together: ENOSPC past it.
const CAPACITY: u64 = 8 << 30;

/// A mounted power-cut file system.
pub struct PowerCutFs {
    tree: Arc<Mutex<Tree>>,
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
    _tmp: Option<tempfile::TempDir>,
}

impl PowerCutFs {
    /// Mounts an empty power-cut file system on `mountpoint` (an existing empty directory),
    /// served by a thread of this process until the value is dropped.
    pub fn mount(mountpoint: &Path) -> anyhow::Result<PowerCutFs> {
        if !Path::new("/dev/fuse").exists() {
            bail!(
                "the power-cut tests need FUSE, and /dev/fuse is missing: load the module \
                 (`modprobe fuse`) or give the container the device (`--device /dev/fuse`)"
            );
        }
        let tree = Arc::new(Mutex::new(Tree::new(CAPACITY)));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("eddy-powercut".into()),
            fuser::MountOption::Subtype("powercut".into()),
            fuser::MountOption::NoAtime,
        ];
        let filesystem = fuse::PowerCutFuse { tree: tree.clone() };
        let session = fuser::spawn_mount(filesystem, mountpoint, &config).with_context(|| {
            format!(
                "cannot mount the power-cut FUSE file system on {}: mounting needs root (or \
                 CAP_SYS_ADMIN), or fusermount3 from Debian's `fuse3` package \
                 (scripts/test-all.sh installs it)",
                mountpoint.display()
            )
        })?;
        Ok(PowerCutFs { tree, mountpoint: mountpoint.to_path_buf(), session: Some(session), _tmp: None })
    }

    /// Mounts one on a fresh temporary directory.
    pub fn mount_temp() -> anyhow::Result<PowerCutFs> {
        let tmp = tempfile::Builder::new().prefix("powercut-").tempdir().context("temp dir")?;
        let mut fs = PowerCutFs::mount(tmp.path())?;
        fs._tmp = Some(tmp);
        Ok(fs)
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Creates the directory `name` under the root and fsyncs the root, so that it outlives
    /// cuts (as an installer or systemd's `StateDirectory=` makes a service's data directory).
    pub fn create_dir_durably(&self, name: &str) -> anyhow::Result<PathBuf> {
        let dir = self.mountpoint.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        std::fs::File::open(&self.mountpoint)
            .and_then(|root| root.sync_all())
            .with_context(|| format!("fsync {}", self.mountpoint.display()))?;
        Ok(dir)
    }

    /// The power cut: drops every write not made durable by an fsync of its file, and every
    /// create, unlink, rename and mkdir not made durable by an fsync of its directory. Call it
    /// when nothing uses the file system (after SIGKILL of whoever did): a handle kept open
    /// across it is stale (ESTALE), as after a reboot.
    pub fn cut(&self) -> CutReport {
        self.tree.lock().unwrap_or_else(std::sync::PoisonError::into_inner).cut()
    }

    /// Arms a power failure at an exact point: `changes` more changing requests (writes,
    /// truncations, fsyncs, creates, renames…) go through, and from the next one on every change
    /// fails with EIO and nothing more becomes durable, until [`PowerCutFs::cut`]. Reads still
    /// answer. A test polls [`PowerCutFs::power_is_off`], kills the process and cuts: the cut
    /// then falls exactly between two changes, say between a write and its fsync, which a
    /// moment picked by the clock seldom hits when fsyncs follow writes closely.
    pub fn power_off_after(&self, changes: u64) {
        self.tree.lock().unwrap_or_else(std::sync::PoisonError::into_inner).power_off_after(changes);
    }

    /// True once the changes [`PowerCutFs::power_off_after`] allowed are spent.
    pub fn power_is_off(&self) -> bool {
        self.tree.lock().unwrap_or_else(std::sync::PoisonError::into_inner).power_is_off()
    }

    /// Counters since the mount: writes, fsyncs by kind, cuts and the bytes they dropped.
    pub fn stats(&self) -> PowerCutStats {
        self.tree.lock().unwrap_or_else(std::sync::PoisonError::into_inner).stats()
    }
}

impl Drop for PowerCutFs {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        if let Err(error) = session.umount_and_join() {
            // Busy (a process still has a file open there): detach it lazily rather than hang
            // the test on a join; the serving thread ends once the last user lets go.
            eprintln!("powercut_fs: unmounting {} failed ({error}); detaching it", self.mountpoint.display());
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
    }
}

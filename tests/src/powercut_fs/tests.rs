//! The power-cut file system through the kernel (a real mount: std::fs calls, other processes)
//! and its model alone (cases awkward to reach through a mount).

use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::model::{RenameMode, Tree, ROOT};
use super::PowerCutFs;

fn mounted() -> PowerCutFs {
    PowerCutFs::mount_temp().expect("the power-cut file system mounts (needs /dev/fuse and root)")
}

fn fsync_dir(dir: &Path) {
    File::open(dir).and_then(|dir| dir.sync_all()).expect("fsync of a directory");
}

/// A file `name` in a durable directory `data`, created and made durable, holding `contents`.
fn durable_file(fs: &PowerCutFs, name: &str, contents: &[u8]) -> std::path::PathBuf {
    let dir = fs.path().join("data");
    if !dir.exists() {
        fs.create_dir_durably("data").unwrap();
    }
    let path = dir.join(name);
    let mut file = File::create(&path).unwrap();
    file.write_all(contents).unwrap();
    file.sync_all().unwrap();
    fsync_dir(&dir);
    path
}

#[test]
fn a_write_without_fsync_is_gone_after_a_cut_and_a_synced_one_stays() {
    let fs = mounted();
    let path = durable_file(&fs, "log", b"synced ");
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"not synced").unwrap();
    drop(file);
    assert_eq!(fs::read(&path).unwrap(), b"synced not synced", "reads see every write before a cut");
    let report = fs.cut();
    assert_eq!(fs::read(&path).unwrap(), b"synced ", "only the synced bytes survive");
    assert_eq!((report.dropped_bytes, report.reverted_files, report.vanished), (10, 1, 0));

    // fdatasync makes data durable too, and an overwrite in place is undone like an append.
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"SYNCED", 0).unwrap();
    file.sync_data().unwrap();
    file.write_all_at(b"lost", 0).unwrap();
    drop(file);
    fs.cut();
    assert_eq!(fs::read(&path).unwrap(), b"SYNCED ");
    let stats = fs.stats();
    assert_eq!((stats.fdatasyncs, stats.cuts, stats.dropped_bytes), (1, 2, 14));
    assert!(stats.fsyncs >= 1 && stats.dir_fsyncs >= 2, "{stats:?}");
}

#[test]
fn a_new_file_outlives_a_cut_only_once_its_directory_is_fsynced() {
    let fs = mounted();
    let dir = fs.create_dir_durably("data").unwrap();
    // Its data synced, but not its name.
    let mut file = File::create(dir.join("a")).unwrap();
    file.write_all(b"data").unwrap();
    file.sync_all().unwrap();
    drop(file);
    let report = fs.cut();
    assert!(!dir.join("a").exists(), "a create is undone without an fsync of the directory");
    assert_eq!((report.vanished, report.dropped_bytes), (1, 4));

    let mut file = File::create(dir.join("b")).unwrap();
    file.write_all(b"data").unwrap();
    file.sync_all().unwrap();
    fsync_dir(&dir);
    drop(file);
    fs.cut();
    assert_eq!(fs::read(dir.join("b")).unwrap(), b"data");

    // The name durable, the data not: an empty file.
    File::create(dir.join("c")).unwrap().write_all(b"unsynced").unwrap();
    fsync_dir(&dir);
    fs.cut();
    assert_eq!(fs::read(dir.join("c")).unwrap(), b"");
}

#[test]
fn a_rename_or_unlink_without_a_directory_fsync_is_undone() {
    let fs = mounted();
    let old = durable_file(&fs, "snap.generating", b"snapshot");
    let dir = old.parent().unwrap().to_path_buf();
    fs::rename(&old, dir.join("snap")).unwrap();
    assert!(dir.join("snap").exists() && !old.exists());
    fs.cut();
    assert!(!dir.join("snap").exists(), "the new name is gone");
    assert_eq!(fs::read(&old).unwrap(), b"snapshot", "the old name is back, with its contents");

    fs::rename(&old, dir.join("snap")).unwrap();
    fsync_dir(&dir);
    fs.cut();
    assert_eq!(fs::read(dir.join("snap")).unwrap(), b"snapshot");
    assert!(!old.exists());

    // A rename over an existing file, undone: both come back as they were.
    let other = durable_file(&fs, "other", b"other");
    fs::rename(&other, dir.join("snap")).unwrap();
    assert_eq!(fs::read(dir.join("snap")).unwrap(), b"other");
    fs.cut();
    assert_eq!(fs::read(dir.join("snap")).unwrap(), b"snapshot");
    assert_eq!(fs::read(&other).unwrap(), b"other");

    fs::remove_file(&other).unwrap();
    assert!(!other.exists());
    fs.cut();
    assert_eq!(fs::read(&other).unwrap(), b"other", "an unlink is undone too");
    fs::remove_file(&other).unwrap();
    fsync_dir(&dir);
    fs.cut();
    assert!(!other.exists());
}

#[test]
fn a_directory_and_what_it_holds_need_the_parent_fsync() {
    let fs = mounted();
    let dir = fs.path().join("blobs");
    fs::create_dir(&dir).unwrap();
    let mut file = File::create(dir.join("1")).unwrap();
    file.write_all(b"blob").unwrap();
    file.sync_all().unwrap();
    fsync_dir(&dir);
    drop(file);
    let report = fs.cut();
    assert!(!dir.exists(), "mkdir is undone without an fsync of the parent");
    assert_eq!(report.vanished, 2);

    fs::create_dir(&dir).unwrap();
    fsync_dir(fs.path());
    fs::write(dir.join("1"), b"blob").unwrap();
    fs.cut();
    assert!(dir.is_dir());
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 0, "its entries need its own fsync");

    // rmdir, undone and durable.
    fs::remove_dir(&dir).unwrap();
    fs.cut();
    assert!(dir.is_dir());
    fs::remove_dir(&dir).unwrap();
    fsync_dir(fs.path());
    fs.cut();
    assert!(!dir.exists());
}

#[test]
fn truncation_and_sizes_follow_the_durable_state() {
    let fs = mounted();
    let path = durable_file(&fs, "db", &[7; 100_000]);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(10).unwrap();
    file.set_len(70_000).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().len(), 70_000);
    let bytes = fs::read(&path).unwrap();
    assert!(bytes[..10].iter().all(|byte| *byte == 7) && bytes[10..].iter().all(|byte| *byte == 0));
    drop(file);
    fs.cut();
    assert_eq!(fs::read(&path).unwrap(), vec![7; 100_000], "the truncation is undone");
    assert_eq!(fs::metadata(&path).unwrap().len(), 100_000);
}

/// splitmix64, for the seeded operations below.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

/// Seeded writes at random offsets (across the 64 KiB pages), truncations, fsyncs and cuts,
/// checked against a plain `Vec` and its copy at the last fsync.
#[test]
fn random_writes_truncations_fsyncs_and_cuts_match_a_reference() {
    let fs = mounted();
    let path = durable_file(&fs, "random", b"");
    let mut rng = Rng(0x00c0_ffee);
    let (mut current, mut durable): (Vec<u8>, Vec<u8>) = (Vec::new(), Vec::new());
    let mut file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
    for step in 0..400 {
        match rng.below(10) {
            0 => {
                let len = usize::try_from(rng.below(300_000)).unwrap();
                file.set_len(len as u64).unwrap();
                current.resize(len, 0);
            }
            1 => {
                file.sync_data().unwrap();
                durable = current.clone();
            }
            2 => {
                drop(file);
                fs.cut();
                current = durable.clone();
                file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
            }
            _ => {
                let offset = usize::try_from(rng.below(250_000)).unwrap();
                let len = usize::try_from(rng.below(150_000)).unwrap();
                let byte = u8::try_from(rng.below(255) + 1).unwrap();
                file.write_all_at(&vec![byte; len], offset as u64).unwrap();
                if current.len() < offset + len {
                    current.resize(offset + len, 0);
                }
                current[offset..offset + len].fill(byte);
            }
        }
        let mut read_back = Vec::new();
        file.seek(SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut read_back).unwrap();
        assert!(read_back == current, "step {step}: contents differ from the reference");
    }
}

#[test]
fn flock_is_exclusive_between_processes_on_the_mount() {
    // sled locks its `db` file with flock (fs2's try_lock_exclusive); FUSE leaves flock to the
    // kernel, which must still keep a second process out.
    let fs = mounted();
    let path = durable_file(&fs, "db", b"");
    // `flock PATH cat` holds the lock (cat inherits the locked file) until its standard input
    // closes: then both exit and the lock goes, with no signal sent to anyone.
    let mut holder = Command::new("flock")
        .arg(&path)
        .arg("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("flock(1) runs (util-linux)");
    let try_lock = || Command::new("flock").arg("-n").arg(&path).arg("true").status().unwrap().success();
    let locked_out = crate::wait_until(Duration::from_secs(10), || !try_lock());
    drop(holder.stdin.take());
    holder.wait().unwrap();
    assert!(locked_out, "a second flock on the mount got the lock the first process holds");
    let free = crate::wait_until(Duration::from_secs(10), try_lock);
    assert!(free, "the lock is free once its holder died");
}

#[test]
fn statfs_reports_room_and_unknown_names_are_enoent() {
    let fs = mounted();
    fs.create_dir_durably("data").unwrap();
    let error = fs::read(fs.path().join("data/missing")).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    let output = Command::new("df").arg("-B1").arg("--output=avail").arg(fs.path()).output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let avail: u64 = text.lines().nth(1).and_then(|line| line.trim().parse().ok()).unwrap_or(0);
    assert!(avail >= 1 << 30, "df reports {avail} bytes free:\n{text}");
}

#[test]
fn model_keeps_one_name_for_a_node_two_durable_directories_name() {
    // root: a (dir), x (dir), both durable; a/f durable. f moves to x, only x is fsynced:
    // a's durable entries still name f too. After the cut f has one name, the first met.
    let mut tree = Tree::new(1 << 20);
    let a = tree.mkdir(ROOT, OsStr::new("a"), 0o755, 0, 0).unwrap().ino.0;
    let x = tree.mkdir(ROOT, OsStr::new("x"), 0o755, 0, 0).unwrap().ino.0;
    tree.fsyncdir(ROOT).unwrap();
    tree.mknod(a, OsStr::new("f"), libc::S_IFREG | 0o644, 0, 0).unwrap();
    tree.fsyncdir(a).unwrap();
    tree.rename(a, OsStr::new("f"), x, OsStr::new("f"), RenameMode::Replace).unwrap();
    tree.fsyncdir(x).unwrap();
    tree.cut();
    let a = tree.lookup(ROOT, OsStr::new("a")).unwrap().ino.0;
    let x = tree.lookup(ROOT, OsStr::new("x")).unwrap().ino.0;
    assert!(tree.lookup(a, OsStr::new("f")).is_ok(), "first in walk order");
    assert!(tree.lookup(x, OsStr::new("f")).is_err(), "not twice");
}

#[test]
fn model_renumbers_surviving_nodes_and_makes_old_handles_stale() {
    let mut tree = Tree::new(1 << 20);
    let (attr, handle) = tree.create(ROOT, OsStr::new("f"), 0o644, 0, 0).unwrap();
    tree.fsyncdir(ROOT).unwrap();
    tree.write(attr.ino.0, 0, b"x").unwrap();
    tree.cut();
    let new = tree.lookup(ROOT, OsStr::new("f")).unwrap();
    assert_ne!(new.ino, attr.ino, "a fresh inode number");
    assert_eq!(new.size, 0);
    assert_eq!(tree.write(attr.ino.0, 0, b"y"), Err(fuser::Errno::ESTALE));
    tree.release(handle);
    // Directories cannot move into themselves.
    let d = tree.mkdir(ROOT, OsStr::new("d"), 0o755, 0, 0).unwrap().ino.0;
    let e = tree.mkdir(d, OsStr::new("e"), 0o755, 0, 0).unwrap().ino.0;
    assert_eq!(
        tree.rename(ROOT, OsStr::new("d"), e, OsStr::new("d"), RenameMode::Replace),
        Err(fuser::Errno::EINVAL)
    );
}

#[test]
fn after_the_power_goes_off_changes_fail_and_the_cut_keeps_what_was_durable_then() {
    let fs = mounted();
    let path = durable_file(&fs, "log", b"durable ");
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    // One more change goes through (the write); its fsync finds the power off.
    fs.power_off_after(1);
    file.write_all(b"written").unwrap();
    assert!(fs.power_is_off(), "the change allowed is spent");
    let error = file.sync_data().unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EIO));
    assert!(file.write_all(b"more").is_err(), "no change is taken while the power is off");
    assert_eq!(fs::read(&path).unwrap(), b"durable written", "reads still answer");
    drop(file);
    let report = fs.cut();
    assert!(!fs.power_is_off(), "a cut is also the restart");
    assert_eq!(fs::read(&path).unwrap(), b"durable ");
    assert_eq!(report.dropped_bytes, 7);
    assert!(fs.stats().refused_changes >= 2);
    fs::write(fs.path().join("data/after"), b"x").unwrap();
}

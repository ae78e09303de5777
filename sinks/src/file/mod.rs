//! The file sink: records appended as JSON lines, fsynced before a delivery counts.
//!
//! Contract:
//! - Each delivery appends one line per record, `payload` then `\n`, in one write, then
//!   `sync_data`s the file; only then is it `Delivered`. The first delivery into a file this
//!   sink created also fsyncs the parent directory, so the new name survives a power cut.
//! - A newline inside a payload would split the line, so it is written as a space. In valid
//!   JSON a raw newline can only be whitespace between tokens, so the meaning is unchanged.
//! - Any I/O error is `Offline` and the file is closed; the next delivery reopens it by path.
//!   The same records then come again, so a retry after a failed write can duplicate records
//!   (they carry deterministic ids for readers to drop duplicates). A failed write can also
//!   leave a torn line: every (re)open checks the last byte and, if it is not `\n`, starts a
//!   new line first, so a torn line never glues onto the next record. The same check repairs
//!   the tail left by a crash before a restart.
//! - Rotation (logrotate's move-and-create or a plain `mv`/`rm`): before each delivery the
//!   path's device and inode are compared with the open file's; if they differ or the path is
//!   gone, the file is reopened (created) by path. copytruncate also works, since writes
//!   append at the current end.
//! - Character devices and FIFOs (`/dev/stdout`, `/dev/null`) are accepted: they are written to
//!   but neither fsynced nor tail-checked, since they have no disk state.
//! - One writer per file: two sinks or processes appending to the same path interleave.
//! - Rotation by size (`max_file_bytes`, `max_files`): before a delivery that would take the
//!   live file past `max_file_bytes`, the oldest kept file is deleted, `PATH.1` … are renamed
//!   one up, the live file becomes `PATH.1` and a new live file is created; the directory is
//!   fsynced before that delivery counts. So the sink's files hold at most `max_files` ×
//!   `max_file_bytes` (plus one delivery, when a single delivery is larger than a file), and a
//!   results file cannot fill the disk. A delivery is never split across two files. A failed
//!   rename is `Offline` like a failed write. Records in deleted files are gone: that is the
//!   point of the setting.
//! - [`FileSink::disk_bytes`]: the bytes of the live file and of the rotated files it keeps,
//!   measured at open and after every rotation and tracked on every write, for the daemon's
//!   reports.

mod config;

use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{reason_of, SinkError};
use crate::record::{Delivery, OutRecord};

pub use crate::file::config::{FileConfig, RawFileSink, DEFAULT_MAX_FILES, DEFAULT_MAX_FILE_BYTES};

/// Appends records as JSON lines to a file.
pub struct FileSink {
    name: String,
    /// A std mutex locked only inside blocking tasks, never across an `.await`; shared with the
    /// blocking task so that a cancelled delivery still finishes before the next one starts.
    state: Arc<Mutex<FileState>>,
    /// [`FileSink::disk_bytes`], kept by the blocking side, read without the lock.
    disk_bytes: Arc<AtomicU64>,
}

impl FileSink {
    /// Opens (creating it and its parent directories if needed) `config.path` for appending.
    ///
    /// This does blocking file I/O: call it at start-up or inside `spawn_blocking`. An error
    /// names the directory or file that failed; it is usually a configuration mistake. A full
    /// or failing disk (ENOSPC, EDQUOT, EIO) is not: the sink is returned without its file,
    /// which each delivery tries to open again (`Offline` until it can).
    pub fn open(name: &str, config: &FileConfig) -> Result<FileSink, SinkError> {
        let disk_bytes = Arc::new(AtomicU64::new(0));
        let mut state = FileState {
            sink: name.to_owned(),
            path: config.path.clone(),
            rotation: config
                .max_file_bytes
                .map(|max_bytes| Rotation { max_bytes, max_files: config.max_files }),
            file: None,
            dir_sync_pending: false,
            rotated_bytes: 0,
            disk_bytes: disk_bytes.clone(),
        };
        match state.ensure_open() {
            Ok(()) => {}
            Err(error) if error.is_disk_full_or_failing() => {
                tracing::warn!(sink = %name, error = %reason_of(&error), "Cannot open the output file now (disk full or failing); each delivery tries again.");
            }
            Err(error) => return Err(error),
        }
        Ok(FileSink { name: name.to_owned(), state: Arc::new(Mutex::new(state)), disk_bytes })
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Bytes this sink's files take: the live file and the rotated files it keeps (0 for a
    /// character device). As of the last open, rotation or write.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }

    /// Appends `records` and fsyncs; see the module docs for what happens on errors.
    pub(crate) async fn deliver(&mut self, records: &[OutRecord]) -> Delivery {
        if records.is_empty() {
            return Delivery::Delivered;
        }
        let lines = encode_lines(records);
        let state = Arc::clone(&self.state);
        // Reopen and repair warnings are logged on the blocking thread: keep the caller's span.
        let span = tracing::Span::current();
        let appended = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            state.lock().unwrap_or_else(PoisonError::into_inner).append(&lines)
        })
        .await;
        match appended {
            Ok(Ok(())) => Delivery::Delivered,
            Ok(Err(error)) => Delivery::Offline { reason: reason_of(&error) },
            Err(join_error) => Delivery::Offline { reason: format!("file write task failed: {join_error}") },
        }
    }

    /// Syncs and closes the file; the next delivery reopens it. A failure is logged.
    pub(crate) async fn close(&mut self) {
        let state = Arc::clone(&self.state);
        let closed =
            tokio::task::spawn_blocking(move || state.lock().unwrap_or_else(PoisonError::into_inner).close())
                .await;
        let reason = match closed {
            Ok(Ok(())) => return,
            Ok(Err(error)) => reason_of(&error),
            Err(join_error) => format!("file close task failed: {join_error}"),
        };
        tracing::warn!(sink = %self.name, %reason, "Could not sync the output file on close.");
    }
}

impl fmt::Debug for FileSink {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("FileSink").field("name", &self.name).finish_non_exhaustive()
    }
}

/// What the blocking side of the sink owns.
struct FileState {
    /// The sink's name, for logs.
    sink: String,
    path: PathBuf,
    /// `None`: the file is never rotated by the sink.
    rotation: Option<Rotation>,
    /// `None` after an error or `close`: the next delivery opens the path again.
    file: Option<OpenFile>,
    /// This sink created the file, or renamed files in its directory, and the directory is not
    /// fsynced yet. Kept apart from `file` so that it survives a reopen after an error.
    dir_sync_pending: bool,
    /// Bytes of the rotated files kept (`PATH.1` …), as of the last open or rotation.
    rotated_bytes: u64,
    /// Shared with [`FileSink::disk_bytes`].
    disk_bytes: Arc<AtomicU64>,
}

/// Size rotation of a regular file.
#[derive(Debug, Clone, Copy)]
struct Rotation {
    max_bytes: u64,
    /// Files kept, the live one included (at least 1).
    max_files: u32,
}

/// The open output file.
struct OpenFile {
    file: File,
    /// Device and inode at open time, to notice the path being moved or replaced.
    identity: (u64, u64),
    /// A regular file, which is fsynced, tail-checked and rotated.
    regular: bool,
    /// The file does not end in `\n` (a torn line): start a new line before the next record.
    torn_tail: bool,
    /// Its length, as of the open and the writes since.
    len: u64,
}

impl FileState {
    /// Appends `lines`, closing the file on any error so the next attempt reopens it by path.
    fn append(&mut self, lines: &[u8]) -> Result<(), SinkError> {
        let appended = self.try_append(lines);
        if appended.is_err() {
            self.file = None;
        }
        appended
    }

    fn try_append(&mut self, lines: &[u8]) -> Result<(), SinkError> {
        self.forget_if_moved();
        self.ensure_open()?;
        if let Some(open) = self.file.as_mut().filter(|open| open.regular) {
            // Measured again: another writer, or a copytruncate, may have changed it.
            if let Ok(metadata) = open.file.metadata() {
                open.len = metadata.len();
            }
        }
        if self.rotation_due(lines.len()) {
            self.rotate()?;
            self.ensure_open()?;
        }
        let path = &self.path;
        let open = self.file.as_mut().expect("ensure_open succeeded, so the file is open");
        if open.torn_tail {
            tracing::warn!(sink = %self.sink, path = %path.display(), "Output file ends in a torn line; starting a new line.");
            open.file.write_all(b"\n").map_err(|source| SinkError::Write { path: path.clone(), source })?;
            open.torn_tail = false;
            open.len += 1;
        }
        // A failed write may have written part of `lines`: the length is measured again at the
        // reopen that follows an error.
        open.file.write_all(lines).map_err(|source| SinkError::Write { path: path.clone(), source })?;
        open.len += u64::try_from(lines.len()).unwrap_or(u64::MAX);
        if open.regular {
            open.file.sync_data().map_err(|source| SinkError::Sync { path: path.clone(), source })?;
        }
        self.publish_disk_bytes();
        if self.dir_sync_pending {
            sync_parent_dir(path)?;
            self.dir_sync_pending = false;
        }
        Ok(())
    }

    /// Whether `incoming` more bytes would take a non-empty live file past its size.
    fn rotation_due(&self, incoming: usize) -> bool {
        let (Some(rotation), Some(open)) = (self.rotation, &self.file) else { return false };
        let incoming = u64::try_from(incoming).unwrap_or(u64::MAX);
        open.regular && open.len > 0 && open.len.saturating_add(incoming) > rotation.max_bytes
    }

    /// Closes the live file and shifts the kept files one up (`PATH` → `PATH.1` → `PATH.2` …),
    /// deleting the oldest; the next open creates a new live file. The renames become durable
    /// with the directory's fsync before the next delivery counts.
    fn rotate(&mut self) -> Result<(), SinkError> {
        let Some(rotation) = self.rotation else { return Ok(()) };
        self.file = None;
        let rotate_error = |path: &Path| {
            let path = path.to_owned();
            move |source| SinkError::Rotate { path, source }
        };
        if rotation.max_files <= 1 {
            // Nothing is kept: the live file's records go.
            remove_if_present(&self.path).map_err(rotate_error(&self.path))?;
        } else {
            let oldest = rotated_path(&self.path, rotation.max_files - 1);
            remove_if_present(&oldest).map_err(rotate_error(&oldest))?;
            for idx in (1..rotation.max_files - 1).rev() {
                let from = rotated_path(&self.path, idx);
                match fs::rename(&from, rotated_path(&self.path, idx + 1)) {
                    Err(error) if error.kind() != io::ErrorKind::NotFound => {
                        return Err(rotate_error(&from)(error))
                    }
                    _ => {}
                }
            }
            fs::rename(&self.path, rotated_path(&self.path, 1)).map_err(rotate_error(&self.path))?;
        }
        self.dir_sync_pending = true;
        tracing::info!(sink = %self.sink, path = %self.path.display(), max_bytes = rotation.max_bytes, max_files = rotation.max_files, "Output file rotated.");
        Ok(())
    }

    /// Measures the rotated files kept (a few `stat`s, at open and after a rotation).
    fn measure_rotated(&mut self) {
        self.rotated_bytes = match self.rotation {
            Some(rotation) => (1..rotation.max_files)
                .filter_map(|idx| fs::metadata(rotated_path(&self.path, idx)).ok())
                .map(|metadata| metadata.len())
                .sum(),
            None => 0,
        };
    }

    fn publish_disk_bytes(&self) {
        let live = self.file.as_ref().filter(|open| open.regular).map_or(0, |open| open.len);
        self.disk_bytes.store(live.saturating_add(self.rotated_bytes), Ordering::Relaxed);
    }

    /// Drops the open file if `path` no longer names it (moved, removed or replaced).
    fn forget_if_moved(&mut self) {
        let Some(open) = &self.file else { return };
        let current = fs::metadata(&self.path).ok().map(|metadata| identity(&metadata));
        if current != Some(open.identity) {
            tracing::info!(sink = %self.sink, path = %self.path.display(), "Output file was moved or removed; reopening it.");
            self.file = None;
        }
    }

    /// Opens the path if no file is open: parent directories, the file, the tail check.
    fn ensure_open(&mut self) -> Result<(), SinkError> {
        if self.file.is_some() {
            return Ok(());
        }
        let (open, created) = OpenFile::open(&self.path)?;
        self.dir_sync_pending |= created;
        self.file = Some(open);
        self.measure_rotated();
        self.publish_disk_bytes();
        Ok(())
    }

    fn close(&mut self) -> Result<(), SinkError> {
        let Some(open) = self.file.take() else { return Ok(()) };
        if open.regular {
            open.file.sync_data().map_err(|source| SinkError::Sync { path: self.path.clone(), source })?;
        }
        Ok(())
    }
}

impl OpenFile {
    /// Opens `path` for appending, creating it and its parent directories; says whether it
    /// created the file.
    fn open(path: &Path) -> Result<(OpenFile, bool), SinkError> {
        if let Some(parent) = parent_dir(path) {
            fs::create_dir_all(parent)
                .map_err(|source| SinkError::CreateDir { path: parent.to_owned(), source })?;
        }
        // Read access is for the tail check. `create_new` tells whether we made the file, which
        // decides whether its directory entry needs an fsync.
        let mut options = OpenOptions::new();
        options.read(true).append(true);
        let (file, created) = match options.clone().create_new(true).open(path) {
            Ok(file) => (file, true),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                let file =
                    options.open(path).map_err(|source| SinkError::Open { path: path.to_owned(), source })?;
                (file, false)
            }
            Err(source) => return Err(SinkError::Open { path: path.to_owned(), source }),
        };
        let inspect_error = |source| SinkError::Inspect { path: path.to_owned(), source };
        let metadata = file.metadata().map_err(inspect_error)?;
        let regular = metadata.is_file();
        let torn_tail = regular && metadata.len() > 0 && last_byte(&file).map_err(inspect_error)? != b'\n';
        let len = if regular { metadata.len() } else { 0 };
        Ok((OpenFile { file, identity: identity(&metadata), regular, torn_tail, len }, created))
    }
}

/// `PATH.idx`, the `idx`-th newest rotated file.
fn rotated_path(path: &Path, idx: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{idx}"));
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// The payloads as JSON lines, newlines inside a payload turned into spaces.
fn encode_lines(records: &[OutRecord]) -> Vec<u8> {
    let n_bytes = records.iter().map(|record| record.payload.len() + 1).sum();
    let mut lines = Vec::with_capacity(n_bytes);
    for record in records {
        lines.extend(record.payload.iter().map(|&byte| if byte == b'\n' { b' ' } else { byte }));
        lines.push(b'\n');
    }
    lines
}

fn last_byte(mut file: &File) -> io::Result<u8> {
    // The position does not matter for writes: the file is opened in append mode.
    file.seek(SeekFrom::End(-1))?;
    let mut byte = [0_u8];
    file.read_exact(&mut byte)?;
    Ok(byte[0])
}

/// The directory holding `path`, if it names one (`out.jsonl` has none to create).
fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent().filter(|parent| !parent.as_os_str().is_empty())
}

#[cfg(unix)]
fn sync_parent_dir(path: &Path) -> Result<(), SinkError> {
    let dir = parent_dir(path).unwrap_or(Path::new("."));
    let sync_error = |source| SinkError::Sync { path: dir.to_owned(), source };
    File::open(dir).and_then(|dir_file| dir_file.sync_all()).map_err(sync_error)
}

#[cfg(not(unix))]
fn sync_parent_dir(_path: &Path) -> Result<(), SinkError> {
    // Directories cannot be opened as files here; the entry is made durable by the file's sync.
    Ok(())
}

#[cfg(unix)]
fn identity(metadata: &Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (metadata.dev(), metadata.ino())
}

#[cfg(not(unix))]
fn identity(_metadata: &Metadata) -> (u64, u64) {
    // No cheap file identity: rotation is only noticed through a failed write.
    (0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::Sink;

    fn record(seq: u64) -> OutRecord {
        OutRecord {
            seq,
            kind: "window".into(),
            group: "g".into(),
            payload: format!(r#"{{"id":"w-{seq}","count":{seq}}}"#).into_bytes(),
        }
    }

    fn line(seq: u64) -> String {
        format!("{{\"id\":\"w-{seq}\",\"count\":{seq}}}\n")
    }

    fn lines(seqs: &[u64]) -> String {
        seqs.iter().map(|&seq| line(seq)).collect()
    }

    fn read(path: &Path) -> String {
        fs::read_to_string(path).unwrap()
    }

    fn offline_reason(delivery: Delivery) -> String {
        match delivery {
            Delivery::Offline { reason } => reason,
            other => panic!("expected Offline, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn file_sink_appends_json_lines_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = Sink::File(FileSink::open("results", &FileConfig::new(&path)).unwrap());
        assert_eq!(sink.name(), "results");
        assert_eq!(sink.deliver(&[record(1), record(2)]).await, Delivery::Delivered);
        sink.close().await;
        // A closed sink reopens on the next delivery.
        assert_eq!(sink.deliver(&[record(3)]).await, Delivery::Delivered);

        let mut reopened = FileSink::open("results", &FileConfig::new(&path)).unwrap();
        assert_eq!(reopened.deliver(&[record(4)]).await, Delivery::Delivered);
        assert_eq!(reopened.deliver(&[]).await, Delivery::Delivered);
        assert_eq!(read(&path), lines(&[1, 2, 3, 4]));
    }

    #[tokio::test]
    async fn file_sink_records_are_synced_in_the_file_when_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/out.jsonl");
        let mut sink = FileSink::open("results", &FileConfig::new(&path)).unwrap();
        assert!(sink.state.lock().unwrap().dir_sync_pending, "a new file's directory entry needs a sync");
        assert_eq!(sink.deliver(&[record(1)]).await, Delivery::Delivered);
        // The data and the new directory entry went through fsync before `Delivered`.
        assert!(!sink.state.lock().unwrap().dir_sync_pending);
        assert_eq!(read(&path), lines(&[1]));
    }

    #[tokio::test]
    async fn file_sink_writes_newlines_inside_a_payload_as_spaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = FileSink::open("results", &FileConfig::new(&path)).unwrap();
        let record = OutRecord { payload: b"{\"a\":\n1}".to_vec(), ..record(1) };
        assert_eq!(sink.deliver(&[record]).await, Delivery::Delivered);
        assert_eq!(read(&path), "{\"a\": 1}\n");
    }

    #[tokio::test]
    async fn file_sink_starts_a_new_line_after_a_torn_tail_left_by_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        fs::write(&path, format!("{}{{\"id\":\"w-", line(1))).unwrap();
        let mut sink = FileSink::open("results", &FileConfig::new(&path)).unwrap();
        assert_eq!(sink.deliver(&[record(2)]).await, Delivery::Delivered);
        assert_eq!(read(&path), format!("{}{{\"id\":\"w-\n{}", line(1), line(2)));
    }

    #[tokio::test]
    async fn file_sink_repairs_a_torn_line_when_retrying_after_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = FileSink::open("results", &FileConfig::new(&path)).unwrap();
        assert_eq!(sink.deliver(&[record(1)]).await, Delivery::Delivered);

        // The path turns into a directory: the delivery fails and names the path.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let reason = offline_reason(sink.deliver(&[record(2), record(3)]).await);
        assert!(reason.contains(&path.display().to_string()), "{reason}");

        // The file comes back holding a torn line, as after a partial write: the retry starts
        // a new line before the re-delivered records.
        fs::remove_dir(&path).unwrap();
        fs::write(&path, format!("{}{{\"id\":\"w-2\",\"co", line(1))).unwrap();
        assert_eq!(sink.deliver(&[record(2), record(3)]).await, Delivery::Delivered);
        assert_eq!(read(&path), format!("{}{{\"id\":\"w-2\",\"co\n{}", line(1), lines(&[2, 3])));
    }

    #[tokio::test]
    async fn file_sink_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let rotated = dir.path().join("out.jsonl.1");
        let mut sink = FileSink::open("results", &FileConfig::new(&path)).unwrap();
        assert_eq!(sink.deliver(&[record(1)]).await, Delivery::Delivered);
        fs::rename(&path, &rotated).unwrap();
        assert_eq!(sink.deliver(&[record(2)]).await, Delivery::Delivered);
        assert_eq!(read(&rotated), lines(&[1]));
        assert_eq!(read(&path), lines(&[2]));

        // Removed outright: created again.
        fs::remove_file(&path).unwrap();
        assert_eq!(sink.deliver(&[record(3)]).await, Delivery::Delivered);
        assert_eq!(read(&path), lines(&[3]));
    }

    #[tokio::test]
    async fn file_sink_appends_at_the_end_after_copytruncate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = FileSink::open("results", &FileConfig::new(&path)).unwrap();
        assert_eq!(sink.deliver(&[record(1), record(2)]).await, Delivery::Delivered);
        File::options().write(true).open(&path).unwrap().set_len(0).unwrap();
        assert_eq!(sink.deliver(&[record(3)]).await, Delivery::Delivered);
        assert_eq!(read(&path), lines(&[3]));
    }

    #[test]
    fn file_sink_open_names_the_path_when_it_is_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let error = FileSink::open("results", &FileConfig::new(dir.path())).unwrap_err();
        assert!(matches!(&error, SinkError::Open { path, .. } if path == dir.path()), "{error:?}");
        assert!(error.to_string().contains(&dir.path().display().to_string()), "{error}");
    }

    #[test]
    fn file_sink_open_names_the_directory_it_cannot_create() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("not-a-dir");
        fs::write(&blocker, "").unwrap();
        let error = FileSink::open("results", &FileConfig::new(blocker.join("sub/out.jsonl"))).unwrap_err();
        assert!(
            matches!(&error, SinkError::CreateDir { path, .. } if *path == blocker.join("sub")),
            "{error:?}"
        );
        assert!(error.to_string().contains("not-a-dir/sub"), "{error}");
    }

    #[test]
    fn only_a_full_or_failing_disk_is_waited_out() {
        let error = |raw| SinkError::Open { path: "/x".into(), source: io::Error::from_raw_os_error(raw) };
        assert!(error(28).is_disk_full_or_failing(), "ENOSPC");
        assert!(error(5).is_disk_full_or_failing(), "EIO");
        assert!(!error(21).is_disk_full_or_failing(), "EISDIR");
        assert!(!error(13).is_disk_full_or_failing(), "EACCES");
    }

    #[tokio::test]
    async fn file_sink_reports_offline_when_the_device_is_full() {
        let mut sink = FileSink::open("results", &FileConfig::new("/dev/full")).unwrap();
        let reason = offline_reason(sink.deliver(&[record(1)]).await);
        assert!(reason.starts_with("cannot write output file /dev/full: "), "{reason}");
        assert!(reason.contains("os error 28"), "ENOSPC expected: {reason}");
        // Still offline on the retry, which reopens the path.
        let reason = offline_reason(sink.deliver(&[record(1)]).await);
        assert!(reason.contains("os error 28"), "{reason}");
    }

    /// `PATH`, then `PATH.1` …: every record kept, oldest file first.
    fn kept(path: &Path, max_files: u32) -> Vec<String> {
        (1..max_files)
            .rev()
            .map(|idx| rotated_path(path, idx))
            .chain([path.to_owned()])
            .map(|path| fs::read_to_string(path).unwrap_or_default())
            .collect()
    }

    fn rotating(path: &Path, max_file_bytes: u64, max_files: u32) -> FileConfig {
        FileConfig { path: path.to_owned(), max_file_bytes: Some(max_file_bytes), max_files }
    }

    #[tokio::test]
    async fn file_sink_rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        // Two deliveries of two lines (25 bytes each) fit 110 bytes, a third does not.
        assert_eq!(line(10).len(), 25);
        let mut sink = FileSink::open("results", &rotating(&path, 110, 3)).unwrap();
        for seq in (10..30).step_by(2) {
            assert_eq!(sink.deliver(&[record(seq), record(seq + 1)]).await, Delivery::Delivered);
        }
        // 10 deliveries, two per file: the files of 18-21, 22-25 and 26-29 are kept.
        assert_eq!(
            kept(&path, 3),
            vec![lines(&[18, 19, 20, 21]), lines(&[22, 23, 24, 25]), lines(&[26, 27, 28, 29])]
        );
        assert!(!rotated_path(&path, 3).exists(), "the oldest file is deleted");
        assert!(!sink.state.lock().unwrap().dir_sync_pending, "the renames were fsynced with the delivery");
        assert_eq!(sink.disk_bytes(), 3 * 4 * 25);
        // A reopen measures the same files.
        let reopened = FileSink::open("results", &rotating(&path, 110, 3)).unwrap();
        assert_eq!(reopened.disk_bytes(), 3 * 4 * 25);
    }

    #[tokio::test]
    async fn file_sink_never_splits_a_delivery_and_keeps_one_file_with_max_files_1() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let mut sink = FileSink::open("results", &rotating(&path, 60, 1)).unwrap();
        // Bigger than a file: written whole into the (empty) live file.
        assert_eq!(sink.deliver(&[record(1), record(2), record(3)]).await, Delivery::Delivered);
        assert_eq!(read(&path), lines(&[1, 2, 3]));
        // Nothing else is kept: the rotation starts the live file afresh.
        assert_eq!(sink.deliver(&[record(4)]).await, Delivery::Delivered);
        assert_eq!(read(&path), lines(&[4]));
        assert!(!rotated_path(&path, 1).exists());
        assert_eq!(sink.disk_bytes(), u64::try_from(line(4).len()).unwrap());
    }

    #[tokio::test]
    async fn file_sink_without_rotation_grows_and_counts_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let config = FileConfig { max_file_bytes: None, ..FileConfig::new(&path) };
        let mut sink = FileSink::open("results", &config).unwrap();
        let seqs: Vec<u64> = (1..=10).collect();
        for seq in &seqs {
            assert_eq!(sink.deliver(&[record(*seq)]).await, Delivery::Delivered);
        }
        let expected = lines(&seqs);
        assert_eq!(read(&path), expected);
        let n_bytes = u64::try_from(expected.len()).unwrap();
        assert_eq!(sink.disk_bytes(), n_bytes);
        assert_eq!(Sink::File(sink).disk_bytes(), Some(n_bytes));
    }

    #[tokio::test]
    async fn file_sink_writes_to_character_devices_without_fsync() {
        let mut sink = FileSink::open("discard", &FileConfig::new("/dev/null")).unwrap();
        assert_eq!(sink.deliver(&[record(1)]).await, Delivery::Delivered);
        sink.close().await;
    }
}

//! The power-cut file system's state, without FUSE: every file and directory with what a read
//! sees now and what the last `fsync` made durable, and the cut that drops the rest.
//!
//! # Durability model
//! - A **file**'s contents and size are durable as of its last `fsync` or `fdatasync`
//!   (FUSE_FSYNC; both make the size durable, as fdatasync must when the size changed).
//!   Writes and truncations after it are lost by a cut. `sync_file_range` never reaches a
//!   FUSE file system, so it makes nothing durable here, which is the point.
//! - A **directory**'s entries (create, mknod, mkdir, unlink, rmdir, rename, in or out) are
//!   durable as of its last `fsync` (FUSE_FSYNCDIR). So a new file survives a cut only if its
//!   parent was fsynced after the create, however often the file itself was; an unlink or a
//!   rename not followed by an fsync of the directory is undone. A rename between two
//!   directories needs both: strict, as POSIX promises no more.
//! - A **cut** reverts every directory to its durable entries and every file to its durable
//!   contents, starting from the root (always there). Whatever is no longer reachable is gone.
//!   Strictness leaves one case a real file system's journal would not: a node named by two
//!   durable entries (moved out of a directory that was not fsynced into one that was) keeps
//!   only the first name met, walking from the root in name order, so the tree stays a tree.
//! - The power can also go off at an exact point ([`Tree::power_off_after`]): after a given
//!   number of changing requests, every further one fails with EIO and nothing more becomes
//!   durable until the cut, which then falls between two changes of the test's choosing.
//! - Not modelled: permissions, owners and times are kept as they are (not reverted), and a cut
//!   drops all unsynced writes, never a part of them (a real disk may keep some, or tear one).
//!
//! After a cut every surviving node gets a fresh inode number, so nothing the kernel cached
//! (pages, attributes, names) about the old ones can be served again.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo};

/// The root directory's inode number (FUSE's).
pub(crate) const ROOT: u64 = 1;
/// Bytes per shared page of file contents.
const PAGE: usize = 64 * 1024;
/// The block size reported by `stat` and `statfs`.
pub(crate) const BLOCK_SIZE: u32 = 4096;
/// The longest name in a directory.
pub(crate) const NAME_MAX: u32 = 255;

/// Counters since the mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PowerCutStats {
    /// `write` calls, and the bytes they carried.
    pub writes: u64,
    /// Bytes written by `write` calls.
    pub written_bytes: u64,
    /// `fsync` calls on files (FUSE_FSYNC without the datasync flag).
    pub fsyncs: u64,
    /// `fdatasync` calls on files (FUSE_FSYNC with the datasync flag).
    pub fdatasyncs: u64,
    /// `fsync` calls on directories (FUSE_FSYNCDIR).
    pub dir_fsyncs: u64,
    /// Cuts so far.
    pub cuts: u64,
    /// Bytes the cuts dropped, all together (see [`CutReport::dropped_bytes`]).
    pub dropped_bytes: u64,
    /// Changes refused (EIO) while the power was off, before a cut.
    pub refused_changes: u64,
}

/// What one cut dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Bytes lost: those written or truncated away since each surviving file's last fsync, plus
    /// the whole contents of every file that is gone.
    pub dropped_bytes: u64,
    /// Surviving files whose contents went back to an earlier state.
    pub reverted_files: u64,
    /// Directories whose entries went back to an earlier state.
    pub reverted_dirs: u64,
    /// Files and directories that are gone (created, or moved, without a directory fsync).
    pub vanished: u64,
}

/// File contents as shared pages: a copy (the durable state) costs one pointer per page, and a
/// write copies only the pages it changes. Bytes past `len` in the last page are zero.
#[derive(Debug, Clone, Default)]
pub(crate) struct Content {
    pages: Vec<Arc<Vec<u8>>>,
    len: u64,
}

/// Where byte `pos` lives: (page index, offset within the page).
fn page_of(pos: u64) -> (usize, usize) {
    let page = usize::try_from(pos / PAGE as u64).expect("file offsets fit in memory");
    let within = usize::try_from(pos % PAGE as u64).expect("below the page size");
    (page, within)
}

impl Content {
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Up to `size` bytes from `offset` (fewer at the end of the file).
    pub(crate) fn read(&self, offset: u64, size: u32) -> Vec<u8> {
        let end = self.len.min(offset.saturating_add(u64::from(size)));
        let mut out = Vec::with_capacity(usize::try_from(end.saturating_sub(offset)).unwrap_or(0));
        let mut pos = offset;
        while pos < end {
            let (page, within) = page_of(pos);
            let take = (PAGE - within).min(usize::try_from(end - pos).unwrap_or(PAGE));
            out.extend_from_slice(&self.pages[page][within..within + take]);
            pos += take as u64;
        }
        out
    }

    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        if end > self.len {
            self.grow(end);
        }
        let mut done = 0;
        while done < data.len() {
            let (page, within) = page_of(offset + done as u64);
            let take = (PAGE - within).min(data.len() - done);
            Arc::make_mut(&mut self.pages[page])[within..within + take]
                .copy_from_slice(&data[done..done + take]);
            done += take;
        }
    }

    pub(crate) fn set_len(&mut self, len: u64) {
        if len >= self.len {
            self.grow(len);
            return;
        }
        let (page, within) = page_of(len);
        self.pages.truncate(if within == 0 { page } else { page + 1 });
        if within != 0 {
            Arc::make_mut(&mut self.pages[page])[within..].fill(0);
        }
        self.len = len;
    }

    fn grow(&mut self, len: u64) {
        let pages = usize::try_from(len.div_ceil(PAGE as u64)).expect("file sizes fit in memory");
        while self.pages.len() < pages {
            self.pages.push(Arc::new(vec![0; PAGE]));
        }
        self.len = len;
    }
}

#[derive(Debug)]
enum Body {
    File {
        /// What reads see.
        data: Content,
        /// As of the last fsync.
        durable: Content,
        /// Bytes written or truncated away since then.
        unsynced: u64,
    },
    Dir {
        /// What lookups see.
        entries: BTreeMap<OsString, u64>,
        /// As of the last fsync of this directory.
        durable: BTreeMap<OsString, u64>,
        /// The directory holding it now (for `..`).
        parent: u64,
    },
}

#[derive(Debug)]
struct Node {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
}

impl Node {
    fn new(body: Body, mode: u32, uid: u32, gid: u32) -> Node {
        let now = SystemTime::now();
        let perm = u16::try_from(mode & 0o7777).expect("masked to 12 bits");
        Node { body, perm, uid, gid, atime: now, mtime: now, ctime: now }
    }

    fn kind(&self) -> FileType {
        match self.body {
            Body::File { .. } => FileType::RegularFile,
            Body::Dir { .. } => FileType::Directory,
        }
    }

    fn touch(&mut self) {
        let now = SystemTime::now();
        self.mtime = now;
        self.ctime = now;
    }
}

/// Attribute changes of a `setattr`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SetAttr {
    pub(crate) mode: Option<u32>,
    pub(crate) uid: Option<u32>,
    pub(crate) gid: Option<u32>,
    pub(crate) size: Option<u64>,
    pub(crate) atime: Option<SystemTime>,
    pub(crate) mtime: Option<SystemTime>,
}

/// How a rename treats an existing target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RenameMode {
    /// Replace it (rename(2)).
    Replace,
    /// Fail with EEXIST (RENAME_NOREPLACE).
    NoReplace,
    /// Swap the two (RENAME_EXCHANGE).
    Exchange,
}

/// The whole file system.
#[derive(Debug)]
pub(crate) struct Tree {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Open file and directory handles: handle → inode.
    handles: HashMap<u64, u64>,
    next_handle: u64,
    /// Most bytes the files may hold together (ENOSPC past it).
    capacity: u64,
    power: Power,
    stats: PowerCutStats,
}

/// Whether changes are still taken (see [`Tree::power_off_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    On,
    /// On for this many more changing requests; the next one finds it off.
    OnFor(u64),
    Off,
}

type FsResult<T> = Result<T, Errno>;

impl Tree {
    /// An empty file system (the root directory, durable) holding at most `capacity` bytes.
    pub(crate) fn new(capacity: u64) -> Tree {
        let root = Body::Dir { entries: BTreeMap::new(), durable: BTreeMap::new(), parent: ROOT };
        let mut nodes = HashMap::new();
        nodes.insert(ROOT, Node::new(root, 0o755, 0, 0));
        Tree {
            nodes,
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_handle: 1,
            capacity,
            power: Power::On,
            stats: Default::default(),
        }
    }

    pub(crate) fn stats(&self) -> PowerCutStats {
        self.stats
    }

    /// Lets `changes` more changing requests (write, truncate, fsync, create, rename…) through;
    /// the one after them finds the power off: it and every later change fail with EIO and
    /// nothing more becomes durable, until [`Tree::cut`]. Reads still answer (what they see is
    /// lost at the cut anyway). So a cut can fall between any two changes, say between a write
    /// and its fsync.
    pub(crate) fn power_off_after(&mut self, changes: u64) {
        self.power = if changes == 0 { Power::Off } else { Power::OnFor(changes) };
    }

    /// True once [`Tree::power_off_after`]'s changes are spent.
    pub(crate) fn power_is_off(&self) -> bool {
        self.power == Power::Off
    }

    /// Spends one change of the power left, or fails with EIO if there is none.
    fn change(&mut self) -> FsResult<()> {
        match self.power {
            Power::On => Ok(()),
            Power::OnFor(left) => {
                self.power = if left > 1 { Power::OnFor(left - 1) } else { Power::Off };
                Ok(())
            }
            Power::Off => {
                self.stats.refused_changes += 1;
                Err(Errno::EIO)
            }
        }
    }

    fn node(&self, ino: u64) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or(Errno::ESTALE)
    }

    fn node_mut(&mut self, ino: u64) -> FsResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(Errno::ESTALE)
    }

    fn entries(&self, dir: u64) -> FsResult<&BTreeMap<OsString, u64>> {
        match &self.node(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    fn entries_mut(&mut self, dir: u64) -> FsResult<&mut BTreeMap<OsString, u64>> {
        match &mut self.node_mut(dir)?.body {
            Body::Dir { entries, .. } => Ok(entries),
            Body::File { .. } => Err(Errno::ENOTDIR),
        }
    }

    pub(crate) fn attr(&self, ino: u64) -> FsResult<FileAttr> {
        let node = self.node(ino)?;
        let (size, nlink) = match &node.body {
            Body::File { data, .. } => (data.len(), 1),
            Body::Dir { entries, .. } => {
                let subdirs = entries
                    .values()
                    .filter(|child| {
                        matches!(self.nodes.get(child), Some(Node { body: Body::Dir { .. }, .. }))
                    })
                    .count();
                (u64::from(BLOCK_SIZE), 2 + u32::try_from(subdirs).unwrap_or(u32::MAX - 2))
            }
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.atime,
            mtime: node.mtime,
            ctime: node.ctime,
            crtime: node.ctime,
            kind: node.kind(),
            perm: node.perm,
            nlink,
            uid: node.uid,
            gid: node.gid,
            rdev: 0,
            blksize: BLOCK_SIZE,
            flags: 0,
        })
    }

    pub(crate) fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<FileAttr> {
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    fn check_name(name: &OsStr) -> FsResult<()> {
        if name.len() > NAME_MAX as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(())
    }

    /// Adds a new node named `name` in `parent` (not durable until `parent` is fsynced).
    fn add(&mut self, parent: u64, name: &OsStr, node: Node) -> FsResult<u64> {
        self.change()?;
        Tree::check_name(name)?;
        if self.entries(parent)?.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, node);
        self.entries_mut(parent)?.insert(name.to_owned(), ino);
        self.node_mut(parent)?.touch();
        Ok(ino)
    }

    /// Creates an empty regular file (mknod, or create without the open).
    pub(crate) fn mknod(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<FileAttr> {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            // Devices, FIFOs and sockets: nothing eddy or sled makes.
            return Err(Errno::EPERM);
        }
        let body = Body::File { data: Content::default(), durable: Content::default(), unsynced: 0 };
        let ino = self.add(parent, name, Node::new(body, mode, uid, gid))?;
        self.attr(ino)
    }

    /// Creates a regular file and opens it: (attributes, handle).
    pub(crate) fn create(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<(FileAttr, u64)> {
        let attr = self.mknod(parent, name, libc::S_IFREG | (mode & 0o7777), uid, gid)?;
        let handle = self.open(attr.ino.0, false)?;
        Ok((attr, handle))
    }

    pub(crate) fn mkdir(
        &mut self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> FsResult<FileAttr> {
        let body = Body::Dir { entries: BTreeMap::new(), durable: BTreeMap::new(), parent };
        let ino = self.add(parent, name, Node::new(body, mode, uid, gid))?;
        self.attr(ino)
    }

    pub(crate) fn unlink(&mut self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.change()?;
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        if matches!(self.node(ino)?.body, Body::Dir { .. }) {
            return Err(Errno::EISDIR);
        }
        self.entries_mut(parent)?.remove(name);
        self.node_mut(parent)?.touch();
        self.node_mut(ino)?.ctime = SystemTime::now();
        self.collect_garbage();
        Ok(())
    }

    pub(crate) fn rmdir(&mut self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.change()?;
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        match &self.node(ino)?.body {
            Body::File { .. } => return Err(Errno::ENOTDIR),
            Body::Dir { entries, .. } if !entries.is_empty() => return Err(Errno::ENOTEMPTY),
            Body::Dir { .. } => {}
        }
        self.entries_mut(parent)?.remove(name);
        self.node_mut(parent)?.touch();
        self.collect_garbage();
        Ok(())
    }

    /// True if `ino` is `ancestor` or lies below it (now).
    fn is_within(&self, mut ino: u64, ancestor: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.nodes.get(&ino).map(|node| &node.body) {
                Some(Body::Dir { parent, .. }) if *parent != ino => ino = *parent,
                _ => return false,
            }
        }
    }

    fn set_parent(&mut self, ino: u64, new_parent: u64) {
        if let Some(Node { body: Body::Dir { parent, .. }, .. }) = self.nodes.get_mut(&ino) {
            *parent = new_parent;
        }
    }

    pub(crate) fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        mode: RenameMode,
    ) -> FsResult<()> {
        self.change()?;
        Tree::check_name(new_name)?;
        let ino = *self.entries(parent)?.get(name).ok_or(Errno::ENOENT)?;
        let target = self.entries(new_parent)?.get(new_name).copied();
        let is_dir =
            |tree: &Tree, ino: u64| matches!(tree.nodes.get(&ino), Some(Node { body: Body::Dir { .. }, .. }));
        if target == Some(ino) {
            return Ok(());
        }
        if is_dir(self, ino) && self.is_within(new_parent, ino) {
            return Err(Errno::EINVAL);
        }
        match (mode, target) {
            (RenameMode::NoReplace, Some(_)) => return Err(Errno::EEXIST),
            (RenameMode::Exchange, None) => return Err(Errno::ENOENT),
            (RenameMode::Exchange, Some(target)) => {
                if is_dir(self, target) && self.is_within(parent, target) {
                    return Err(Errno::EINVAL);
                }
                self.entries_mut(parent)?.insert(name.to_owned(), target);
                self.entries_mut(new_parent)?.insert(new_name.to_owned(), ino);
                self.set_parent(target, parent);
                self.set_parent(ino, new_parent);
                self.node_mut(parent)?.touch();
                self.node_mut(new_parent)?.touch();
                return Ok(());
            }
            (_, Some(target)) => match (is_dir(self, ino), &self.node(target)?.body) {
                (false, Body::Dir { .. }) => return Err(Errno::EISDIR),
                (true, Body::File { .. }) => return Err(Errno::ENOTDIR),
                (true, Body::Dir { entries, .. }) if !entries.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            },
            (_, None) => {}
        }
        self.entries_mut(parent)?.remove(name);
        self.entries_mut(new_parent)?.insert(new_name.to_owned(), ino);
        self.set_parent(ino, new_parent);
        self.node_mut(parent)?.touch();
        self.node_mut(new_parent)?.touch();
        self.node_mut(ino)?.ctime = SystemTime::now();
        if target.is_some() {
            self.collect_garbage();
        }
        Ok(())
    }

    /// Opens a file (truncating it with `truncate`); returns the handle.
    pub(crate) fn open(&mut self, ino: u64, truncate: bool) -> FsResult<u64> {
        if matches!(self.node(ino)?.body, Body::Dir { .. }) {
            return Err(Errno::EISDIR);
        }
        if truncate {
            self.setattr(ino, SetAttr { size: Some(0), ..SetAttr::default() })?;
        }
        Ok(self.new_handle(ino))
    }

    pub(crate) fn opendir(&mut self, ino: u64) -> FsResult<u64> {
        self.entries(ino)?;
        Ok(self.new_handle(ino))
    }

    fn new_handle(&mut self, ino: u64) -> u64 {
        let handle = self.next_handle;
        self.next_handle += 1;
        self.handles.insert(handle, ino);
        handle
    }

    /// Closes a handle (file or directory); one the cut made stale is ignored.
    pub(crate) fn release(&mut self, handle: u64) {
        if self.handles.remove(&handle).is_some() {
            self.collect_garbage();
        }
    }

    pub(crate) fn read(&mut self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let node = self.node_mut(ino)?;
        node.atime = SystemTime::now();
        match &node.body {
            Body::File { data, .. } => Ok(data.read(offset, size)),
            Body::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    fn used_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|node| match &node.body {
                Body::File { data, .. } => data.len(),
                Body::Dir { .. } => 0,
            })
            .sum()
    }

    pub(crate) fn write(&mut self, ino: u64, offset: u64, bytes: &[u8]) -> FsResult<u32> {
        self.change()?;
        let written = u32::try_from(bytes.len()).map_err(|_| Errno::EINVAL)?;
        let end = offset.checked_add(u64::from(written)).ok_or(Errno::EFBIG)?;
        let growth = match &self.node(ino)?.body {
            Body::File { data, .. } => end.saturating_sub(data.len()),
            Body::Dir { .. } => return Err(Errno::EISDIR),
        };
        if growth > 0 && self.used_bytes() + growth > self.capacity {
            return Err(Errno::ENOSPC);
        }
        let node = self.node_mut(ino)?;
        if let Body::File { data, unsynced, .. } = &mut node.body {
            data.write(offset, bytes);
            *unsynced += u64::from(written);
        }
        node.touch();
        self.stats.writes += 1;
        self.stats.written_bytes += u64::from(written);
        Ok(written)
    }

    pub(crate) fn setattr(&mut self, ino: u64, change: SetAttr) -> FsResult<FileAttr> {
        self.change()?;
        if let Some(size) = change.size {
            let growth = match &self.node(ino)?.body {
                Body::File { data, .. } => size.saturating_sub(data.len()),
                Body::Dir { .. } => return Err(Errno::EISDIR),
            };
            if growth > 0 && self.used_bytes() + growth > self.capacity {
                return Err(Errno::ENOSPC);
            }
        }
        let node = self.node_mut(ino)?;
        let now = SystemTime::now();
        if let (Some(size), Body::File { data, unsynced, .. }) = (change.size, &mut node.body) {
            *unsynced += data.len().abs_diff(size);
            data.set_len(size);
            node.mtime = now;
        }
        if let Some(mode) = change.mode {
            node.perm = u16::try_from(mode & 0o7777).expect("masked to 12 bits");
        }
        node.uid = change.uid.unwrap_or(node.uid);
        node.gid = change.gid.unwrap_or(node.gid);
        node.atime = change.atime.unwrap_or(node.atime);
        node.mtime = change.mtime.unwrap_or(node.mtime);
        node.ctime = now;
        self.attr(ino)
    }

    /// `fsync`/`fdatasync` of a file: its contents and size become durable.
    pub(crate) fn fsync(&mut self, ino: u64, datasync: bool) -> FsResult<()> {
        self.change()?;
        match &mut self.node_mut(ino)?.body {
            Body::File { data, durable, unsynced } => {
                *durable = data.clone();
                *unsynced = 0;
            }
            // The kernel sends FSYNCDIR for directories; be lenient with a plain FSYNC.
            Body::Dir { .. } => return self.sync_dir(ino),
        }
        if datasync {
            self.stats.fdatasyncs += 1;
        } else {
            self.stats.fsyncs += 1;
        }
        Ok(())
    }

    /// `fsync` of a directory: its entries become durable.
    pub(crate) fn fsyncdir(&mut self, ino: u64) -> FsResult<()> {
        self.change()?;
        self.sync_dir(ino)
    }

    fn sync_dir(&mut self, ino: u64) -> FsResult<()> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir { entries, durable, .. } => *durable = entries.clone(),
            Body::File { .. } => return Err(Errno::ENOTDIR),
        }
        self.stats.dir_fsyncs += 1;
        self.collect_garbage();
        Ok(())
    }

    /// The entries of a directory, `.` and `..` first: (inode, kind, name).
    pub(crate) fn readdir(&self, ino: u64) -> FsResult<Vec<(u64, FileType, OsString)>> {
        let Body::Dir { entries, parent, .. } = &self.node(ino)?.body else { return Err(Errno::ENOTDIR) };
        let mut list =
            vec![(ino, FileType::Directory, ".".into()), (*parent, FileType::Directory, "..".into())];
        for (name, child) in entries {
            list.push((*child, self.node(*child)?.kind(), name.clone()));
        }
        Ok(list)
    }

    /// (total blocks, free blocks, files) for statfs.
    pub(crate) fn statfs(&self) -> (u64, u64, u64) {
        let block = u64::from(BLOCK_SIZE);
        let total = self.capacity / block;
        let used = self.used_bytes().div_ceil(block);
        (total, total.saturating_sub(used), self.nodes.len() as u64)
    }

    /// Drops nodes nothing can reach any more: no name now, no durable name, no open handle.
    /// A node kept for a durable name alone is what a cut brings back.
    fn collect_garbage(&mut self) {
        let mut live: HashSet<u64> = HashSet::new();
        let mut queue: VecDeque<u64> = self.handles.values().copied().chain([ROOT]).collect();
        while let Some(ino) = queue.pop_front() {
            if !live.insert(ino) {
                continue;
            }
            if let Some(Node { body: Body::Dir { entries, durable, .. }, .. }) = self.nodes.get(&ino) {
                queue.extend(entries.values().chain(durable.values()).copied());
            }
        }
        self.nodes.retain(|ino, _| live.contains(ino));
    }

    /// The power cut: every directory and file goes back to its durable state, what is then
    /// unreachable from the root is gone, open handles go stale, and every surviving node but
    /// the root gets a new inode number.
    pub(crate) fn cut(&mut self) -> CutReport {
        let mut report = CutReport::default();
        // Walk the durable tree from the root, breadth first, names in order; a node met
        // again under another durable name is dropped there (see the module doc).
        let mut renumbered: HashMap<u64, u64> = HashMap::from([(ROOT, ROOT)]);
        let mut order = vec![ROOT];
        let mut queue = VecDeque::from([ROOT]);
        while let Some(dir) = queue.pop_front() {
            let Some(Node { body: Body::Dir { durable, .. }, .. }) = self.nodes.get(&dir) else { continue };
            for (_, child) in durable.iter() {
                if renumbered.contains_key(child) || !self.nodes.contains_key(child) {
                    continue;
                }
                renumbered.insert(*child, self.next_ino);
                self.next_ino += 1;
                order.push(*child);
                if matches!(self.nodes[child].body, Body::Dir { .. }) {
                    queue.push_back(*child);
                }
            }
        }
        let mut old = std::mem::take(&mut self.nodes);
        for (ino, node) in &old {
            if !renumbered.contains_key(ino) {
                report.vanished += 1;
                if let Body::File { data, .. } = &node.body {
                    report.dropped_bytes += data.len();
                }
            }
        }
        let mut seen: HashSet<u64> = HashSet::new();
        for ino in order {
            let mut node = old.remove(&ino).expect("walked nodes exist");
            match &mut node.body {
                Body::File { data, durable, unsynced } => {
                    if *unsynced > 0 {
                        report.reverted_files += 1;
                        report.dropped_bytes += *unsynced;
                    }
                    *data = durable.clone();
                    *unsynced = 0;
                }
                Body::Dir { entries, durable, .. } => {
                    // Keep each durable entry whose node is kept under this name (the first).
                    let kept: BTreeMap<OsString, u64> = durable
                        .iter()
                        .filter(|(_, child)| renumbered.contains_key(child) && seen.insert(**child))
                        .map(|(name, child)| (name.clone(), renumbered[child]))
                        .collect();
                    if *entries != *durable || kept.len() != durable.len() {
                        report.reverted_dirs += 1;
                    }
                    *entries = kept.clone();
                    *durable = kept;
                }
            }
            self.nodes.insert(renumbered[&ino], node);
        }
        // Parents (for `..`) from the new tree.
        let links: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .filter_map(|(ino, node)| match &node.body {
                Body::Dir { entries, .. } => Some(entries.values().map(move |child| (*child, *ino))),
                Body::File { .. } => None,
            })
            .flatten()
            .collect();
        for (child, parent) in links {
            self.set_parent(child, parent);
        }
        self.handles.clear();
        self.power = Power::On;
        self.stats.cuts += 1;
        self.stats.dropped_bytes += report.dropped_bytes;
        report
    }
}

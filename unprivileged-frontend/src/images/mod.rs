//! Image files: the container format ([`format`]) and the records
//! ([`types`]). A checkpoint is a directory holding `inventory.img`,
//! `pstree.img`, `files.img` and, per process, `core-PID.img`, `mm-PID.img`, `fs-PID.img`,
//! `files-PID.img`, `pagemap-PID.img` and the raw `pages-PID.img`.

pub mod format;
pub mod types;

pub use format::{read_image, read_single, write_image, ImageError, ImageWriter, Kind};

use std::path::{Path, PathBuf};

/// Names of the files in an image directory.
#[derive(Debug, Clone)]
pub struct ImageDir {
    dir: PathBuf,
}

impl ImageDir {
    /// Wrap a directory path (not checked here).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ImageDir { dir: dir.into() }
    }
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// `inventory.img`
    pub fn inventory(&self) -> PathBuf {
        self.dir.join("inventory.img")
    }
    /// `pstree.img`
    pub fn pstree(&self) -> PathBuf {
        self.dir.join("pstree.img")
    }
    /// `core-PID.img`
    pub fn core(&self, pid: i32) -> PathBuf {
        self.dir.join(format!("core-{pid}.img"))
    }
    /// `mm-PID.img`
    pub fn mm(&self, pid: i32) -> PathBuf {
        self.dir.join(format!("mm-{pid}.img"))
    }
    /// `fs-PID.img`
    pub fn fs(&self, pid: i32) -> PathBuf {
        self.dir.join(format!("fs-{pid}.img"))
    }
    /// `files-PID.img`
    pub fn files(&self, pid: i32) -> PathBuf {
        self.dir.join(format!("files-{pid}.img"))
    }
    /// `files.img`: the open file descriptions of the whole tree.
    pub fn file_table(&self) -> PathBuf {
        self.dir.join("files.img")
    }
    /// `ghost-DATA.img`: the contents of a deleted file (raw bytes).
    pub fn ghost(&self, data: u32) -> PathBuf {
        self.dir.join(format!("ghost-{data}.img"))
    }
    /// `pagemap-PID.img`
    pub fn pagemap(&self, pid: i32) -> PathBuf {
        self.dir.join(format!("pagemap-{pid}.img"))
    }
    /// `pages-PID.img` (file name only).
    pub fn pages_name(pid: i32) -> String {
        format!("pages-{pid}.img")
    }
    /// Name of pages file `k` of `pid`: `pages-PID.img` for 0, then
    /// `pages-PID.K.img` (file name only).
    pub fn pages_name_k(pid: i32, k: usize) -> String {
        match k {
            0 => Self::pages_name(pid),
            k => format!("pages-{pid}.{k}.img"),
        }
    }
    /// Any file in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

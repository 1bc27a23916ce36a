//! The unprivileged `criu` frontend: command line, image files, and the dump
//! and restore logic that drives `criu-helper` through small requests.
//!
//! Nothing here needs privilege; every ptrace or task-memory operation is a
//! request to the helper (see `shared_ipc::Request`).

pub mod check;
pub mod cli;
pub mod dump;
pub mod error;
pub mod exec;
pub mod fdkind;
pub mod helper;
pub mod images;
pub mod log;
pub mod netlock;
pub mod pagemap_scan;
pub mod proc;
pub mod remote;
pub mod restore;
pub mod show;
pub mod sys;
pub mod uffd;

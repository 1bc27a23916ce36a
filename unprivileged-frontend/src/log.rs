//! criu-style logging: lines `(SS.UUUUUU) message` to the `-o` file (or
//! stderr when none is given), filtered by the `-v` level like upstream:
//! 0 nothing, 1 errors, 2 warnings (default), 3 information, 4 debug.
//! Errors always reach stderr as well, once.

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

/// Message levels, as upstream's `-v` numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Always shown on stderr too.
    Error = 1,
    /// Something was approximated or skipped.
    Warn = 2,
    /// Progress.
    Info = 3,
    /// Every step.
    Debug = 4,
}

struct Logger {
    level: u8,
    file: Option<File>,
    start: Instant,
}

static LOGGER: OnceLock<Mutex<Logger>> = OnceLock::new();

/// Install the logger. `file` is the already-opened `-o` file, if any.
/// Calling it twice keeps the first.
pub fn init(level: u8, file: Option<File>) {
    let _ = LOGGER.set(Mutex::new(Logger {
        level,
        file,
        start: Instant::now(),
    }));
}

/// Whether messages of `level` are written anywhere.
pub fn enabled(level: Level) -> bool {
    LOGGER
        .get()
        .and_then(|l| l.lock().ok().map(|l| level as u8 <= l.level))
        .unwrap_or(level == Level::Error)
}

/// Write one message. Use the `error!`/`warn!`/`info!`/`debug!` macros.
pub fn write(level: Level, msg: std::fmt::Arguments<'_>) {
    let Some(lock) = LOGGER.get() else {
        if level == Level::Error {
            eprintln!("Error: {msg}");
        }
        return;
    };
    let Ok(mut l) = lock.lock() else { return };
    let t = l.start.elapsed();
    let prefix = match level {
        Level::Error => "Error: ",
        Level::Warn => "Warn: ",
        _ => "",
    };
    let line = format!(
        "({:02}.{:06}) {prefix}{msg}\n",
        t.as_secs(),
        t.subsec_micros()
    );
    if level as u8 <= l.level {
        match l.file.as_mut() {
            Some(f) => {
                let _ = f.write_all(line.as_bytes());
            }
            // Without -o, errors reach stderr once, from `main`.
            None if level != Level::Error => {
                let _ = std::io::stderr().write_all(line.as_bytes());
            }
            None => {}
        }
    }
}

/// Log an error (also the final error line goes to stderr from `main`).
#[macro_export]
macro_rules! error {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Error, format_args!($($t)*)) };
}
/// Log a warning.
#[macro_export]
macro_rules! warn {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Warn, format_args!($($t)*)) };
}
/// Log progress information.
#[macro_export]
macro_rules! info {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Info, format_args!($($t)*)) };
}
/// Log a debug step.
#[macro_export]
macro_rules! debug {
    ($($t:tt)*) => { $crate::log::write($crate::log::Level::Debug, format_args!($($t)*)) };
}

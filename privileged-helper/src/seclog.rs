//! Security events to syslog, facility `auth` (DESIGN.md section 4).
//!
//! The socket is connected once at start-up, before the seccomp filter; if
//! there is no syslog socket (no /dev/log), logging silently does nothing.
//! Messages hold only numbers and fixed names, never text from the frontend.

#![forbid(unsafe_code)]

use syslog::{Facility, Formatter3164, Logger, LoggerBackend};

/// The security log of one helper.
pub struct SecLog {
    logger: Option<Logger<LoggerBackend, Formatter3164>>,
    caller: u32,
}

impl SecLog {
    /// Connect to the local syslog socket, for events of caller `caller_uid`.
    pub fn connect(caller_uid: u32) -> SecLog {
        let formatter = Formatter3164 {
            facility: Facility::LOG_AUTH,
            hostname: None,
            process: "criu-helper".into(),
            pid: std::process::id(),
        };
        SecLog {
            logger: syslog::unix(formatter).ok(),
            caller: caller_uid,
        }
    }

    /// A log that drops everything (unit tests).
    #[cfg(test)]
    pub fn none() -> SecLog {
        SecLog {
            logger: None,
            caller: 0,
        }
    }

    /// A privileged operation that was done: `op` on `pid`, with details.
    pub fn done(&mut self, op: &str, pid: i32, detail: std::fmt::Arguments<'_>) {
        let msg = format!("caller_uid={} op={op} pid={pid} ok {detail}", self.caller);
        if let Some(l) = self.logger.as_mut() {
            let _ = l.info(msg);
        }
    }

    /// A refusal or a failure of `op` on `pid`.
    pub fn refused(&mut self, op: &str, pid: i32, why: std::fmt::Arguments<'_>) {
        let msg = format!(
            "caller_uid={} op={op} pid={pid} refused: {why}",
            self.caller
        );
        if let Some(l) = self.logger.as_mut() {
            let _ = l.warning(msg);
        }
    }
}

//! `criu restore`.

use crate::cli::RestoreArgs;
use crate::error::Result;

/// Run `criu restore`; returns criu's exit code.
///
/// Errors: any failure; nothing half-restored is left behind.
pub fn run(_args: &RestoreArgs) -> Result<u8> {
    Err(crate::error::Error::Unsupported("restore: not written yet".into()))
}

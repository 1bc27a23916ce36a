//! `criu dump`.

use crate::cli::DumpArgs;
use crate::error::Result;

/// Run `criu dump`.
///
/// Errors: any failure; the task is left running unharmed.
pub fn run(_args: &DumpArgs) -> Result<()> {
    Err(crate::error::Error::Unsupported("dump: not written yet".into()))
}

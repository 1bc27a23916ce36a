//! Kernel objects that processes of the tree share because they were made
//! with clone(2) `CLONE_FS` or `CLONE_FILES`: found with kcmp(2), which
//! orders the objects, so equal ones are neighbours after a sort.

use crate::error::{Error, Result};
use crate::sys::{kcmp_order, KcmpResource};
use crate::warn;

/// For each `(pid, ppid)` (tree order, parents first, no zombies): whether
/// it shares `what` with its parent.
///
/// Errors: [`Error::Unsupported`] when processes share it other than along
/// parent-child links (e.g. two siblings sharing an object their parent
/// no longer has): restore can only hand an object from parent to child.
/// When kcmp is refused, nothing is taken as shared (with a warning).
pub fn shared_with_parent(procs: &[(i32, i32)], what: KcmpResource) -> Result<Vec<bool>> {
    let name = match what {
        KcmpResource::Files => "descriptor table (CLONE_FILES)",
        KcmpResource::Fs => "filesystem information (CLONE_FS)",
    };
    let mut failed = None;
    let mut order: Vec<usize> = (0..procs.len()).collect();
    order.sort_by(|&a, &b| {
        kcmp_order(procs[a].0, procs[b].0, what).unwrap_or_else(|e| {
            failed.get_or_insert(e);
            std::cmp::Ordering::Equal
        })
    });
    if let Some(e) = failed {
        warn!("kcmp of the {name} of the tree failed ({e}); restoring each process with its own");
        return Ok(vec![false; procs.len()]);
    }
    let same = |a: usize, b: usize| {
        kcmp_order(procs[a].0, procs[b].0, what).map(|o| o == std::cmp::Ordering::Equal)
    };
    let mut out = vec![false; procs.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && same(order[i], order[j]).unwrap_or(false) {
            j += 1;
        }
        let group = &order[i..j];
        let mut tops = Vec::new();
        for &m in group {
            let parent_in = group.iter().any(|&o| procs[o].0 == procs[m].1);
            out[m] = parent_in;
            if !parent_in {
                tops.push(procs[m].0);
            }
        }
        tops.sort_unstable();
        if tops.len() > 1 {
            return Err(Error::Unsupported(format!(
                "processes {tops:?} share one {name} but not with their parents; restore can only share it between a parent and its children: dump a tree where they do not"
            )));
        }
        i = j;
    }
    Ok(out)
}

//! The `PAGEMAP_SCAN` ioctl on /proc/PID/pagemap (Linux 6.7+, see
//! Documentation/admin-guide/mm/pagemap.rst, "PAGEMAP_SCAN"): page
//! categories of a range in one call. Used for what the plain pagemap
//! hides from an unprivileged reader: which pages map the shared zero page
//! (the PFN is shown as 0 without `CAP_SYS_ADMIN`, but the `PAGE_IS_PFNZERO`
//! category is reported to anyone who may read the pagemap).

use std::fs::File;
use std::os::fd::AsRawFd;

/// `PAGEMAP_SCAN`: `_IOWR('f', 16, struct pm_scan_arg)` (96 bytes).
const PAGEMAP_SCAN: u64 = 0xC060_6610;
/// `PAGE_IS_PFNZERO`: the page is the shared zero page.
const PAGE_IS_PFNZERO: u64 = 1 << 5;
/// Regions asked for per call.
const VEC_LEN: usize = 512;

/// The page-aligned ranges `[start, end)` within `[start, end)` of the
/// address space `pagemap` describes that map the shared zero page, in
/// address order.
///
/// Errors: the ioctl's errno (`ENOTTY`/`EINVAL` on kernels without it).
pub fn zero_page_ranges(pagemap: &File, start: u64, end: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut regions = vec![[0u64; 3]; VEC_LEN];
    let mut from = start;
    while from < end {
        // struct pm_scan_arg: size, flags, start, end, walk_end, vec,
        // vec_len, max_pages, category_inverted, category_mask,
        // category_anyof_mask, return_mask.
        let mut arg: [u64; 12] = [
            96,
            0,
            from,
            end,
            0,
            regions.as_mut_ptr() as u64,
            VEC_LEN as u64,
            0,
            0,
            PAGE_IS_PFNZERO,
            0,
            PAGE_IS_PFNZERO,
        ];
        // SAFETY: `arg` is a struct pm_scan_arg of the size it declares;
        // `vec` points at `regions`, VEC_LEN struct page_region (3 u64
        // each) that live across the call; the kernel writes only there
        // and into `arg.walk_end`.
        let n = unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN as _, arg.as_mut_ptr()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for r in &regions[..n as usize] {
            match out.last_mut() {
                Some(last) if last.1 == r[0] => last.1 = r[1],
                _ => out.push((r[0], r[1])),
            }
        }
        let walk_end = arg[4];
        if walk_end <= from {
            break;
        }
        from = walk_end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_read_only_touched_pages_of_our_own() {
        const PAGE: usize = 4096;
        // SAFETY: a fresh private anonymous mapping of ours, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                8 * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let base = p as usize;
        // Pages 1-2 read (zero page), page 4 written, the rest untouched.
        // SAFETY: inside our mapping.
        unsafe {
            std::ptr::read_volatile((base + PAGE) as *const u8);
            std::ptr::read_volatile((base + 2 * PAGE) as *const u8);
            std::ptr::write_volatile((base + 4 * PAGE) as *mut u8, 1);
        }
        let pm = File::open("/proc/self/pagemap").unwrap();
        let got = zero_page_ranges(&pm, base as u64, (base + 8 * PAGE) as u64);
        // SAFETY: our mapping from above.
        unsafe { libc::munmap(p, 8 * PAGE) };
        match got {
            Ok(r) => assert_eq!(r, vec![((base + PAGE) as u64, (base + 3 * PAGE) as u64)]),
            Err(e) => eprintln!("skipped: PAGEMAP_SCAN not available: {e}"),
        }
    }
}

//! Address-range arithmetic for restore: merging occupied ranges, finding
//! holes and the complement of what must be kept. Pure functions, so the
//! planning is unit-tested without any process.

/// A half-open address range `[start, end)`.
pub type Range = (u64, u64);

/// Sort ranges and merge the ones that overlap or touch; empty ranges go.
pub fn merge(mut ranges: Vec<Range>) -> Vec<Range> {
    ranges.retain(|r| r.0 < r.1);
    ranges.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

/// The parts of `[lo, hi)` covered by none of `occupied`.
pub fn complement(occupied: Vec<Range>, lo: u64, hi: u64) -> Vec<Range> {
    let mut out = Vec::new();
    let mut cur = lo;
    for (s, e) in merge(occupied) {
        if e <= cur {
            continue;
        }
        if s >= hi {
            break;
        }
        if s > cur {
            out.push((cur, s));
        }
        cur = cur.max(e);
    }
    if cur < hi {
        out.push((cur, hi));
    }
    out
}

/// The highest page-aligned address `a` with `[a, a + len)` inside `[lo, hi)`
/// and free of every range in `occupied`, leaving one free page on each side
/// so the area never merges with a neighbour.
pub fn find_hole(occupied: Vec<Range>, len: u64, lo: u64, hi: u64) -> Option<u64> {
    const GUARD: u64 = 4096;
    let need = len.checked_add(2 * GUARD)?;
    complement(occupied, lo, hi)
        .into_iter()
        .rev()
        .find(|(s, e)| e - s >= need)
        .map(|(_, e)| (e - GUARD - len) & !0xfff)
}

/// Whether `[s, e)` intersects any of the (sorted, merged or not) ranges.
pub fn overlaps(ranges: &[Range], s: u64, e: u64) -> bool {
    ranges.iter().any(|&(a, b)| a < e && s < b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sorts_and_joins() {
        assert_eq!(
            merge(vec![(10, 20), (0, 5), (5, 8), (15, 30), (40, 40)]),
            vec![(0, 8), (10, 30)]
        );
    }

    #[test]
    fn complement_of_keep() {
        let keep = vec![(0x5000, 0x6000), (0x1000, 0x2000)];
        assert_eq!(
            complement(keep, 0, 0x10000),
            vec![(0, 0x1000), (0x2000, 0x5000), (0x6000, 0x10000)]
        );
        assert_eq!(complement(vec![(0, 0x10000)], 0, 0x10000), vec![]);
        assert_eq!(complement(vec![], 0x1000, 0x3000), vec![(0x1000, 0x3000)]);
        // Ranges sticking out of [lo, hi) are clipped.
        assert_eq!(
            complement(vec![(0, 0x2000), (0x9000, 0x20000)], 0x1000, 0x10000),
            vec![(0x2000, 0x9000)]
        );
    }

    #[test]
    fn hole_is_highest_free_with_guards() {
        let occ = vec![(0x10000, 0x20000), (0x30000, 0x40000)];
        // Highest: below hi = 0x50000, above 0x40000.
        assert_eq!(
            find_hole(occ.clone(), 0x4000, 0x10000, 0x50000),
            Some(0x4b000)
        );
        // Too big for the top gap (0x10000), fits the middle one? No (0x10000).
        assert_eq!(find_hole(occ.clone(), 0xf000, 0x10000, 0x50000), None);
        assert_eq!(
            find_hole(occ.clone(), 0xe000, 0x10000, 0x50000),
            Some(0x41000)
        );
        // Nothing above lo fits.
        assert_eq!(find_hole(occ, 0x1000, 0x10000, 0x40000), Some(0x2e000));
        assert!(find_hole(vec![], u64::MAX, 0, 10).is_none());
    }

    #[test]
    fn overlap_check() {
        let r = vec![(0x1000, 0x2000)];
        assert!(overlaps(&r, 0x1fff, 0x3000));
        assert!(!overlaps(&r, 0x2000, 0x3000));
        assert!(!overlaps(&r, 0, 0x1000));
    }
}

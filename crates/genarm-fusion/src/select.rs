//! Top-k selection over a vocabulary in one streaming pass: the ids of the `k` largest finite values,
//! ordered by value descending, ties broken by lower id (a total order, so the result never depends on
//! the selection algorithm of the standard library).

use std::cmp::Ordering;

/// The order every kept set uses: larger value first, then lower id.
#[inline(always)]
pub(crate) fn rank(xs: &[f32], a: u32, b: u32) -> Ordering {
    xs[b as usize].partial_cmp(&xs[a as usize]).unwrap_or(Ordering::Equal).then(a.cmp(&b))
}

/// Fills `out` with the ids of the `k` best entries of `xs` by [`rank`] among those greater than −∞
/// (all of them if fewer), sorted by [`rank`]. `xs` must hold no NaN.
///
/// One pass over `xs`: candidates above a running threshold are buffered, and whenever the buffer
/// holds `cap` ids it is cut back to its best `k`, raising the threshold to the k-th value. Scanning
/// in id order makes the strict `x > threshold` test exact: a later id tying the threshold ranks
/// below every buffered id with that value.
pub(crate) fn top_k(xs: &[f32], k: usize, out: &mut Vec<u32>) {
    out.clear();
    if k == 0 {
        return;
    }
    let k = k.min(xs.len());
    let cap = (2 * k).max(k + 512);
    out.reserve(cap);
    let mut threshold = f32::NEG_INFINITY;
    // Chunks of 16 are first tested with one vector compare against the threshold at their start
    // (the threshold only rises, so a chunk that fails it holds no candidate).
    const CHUNK: usize = 16;
    let mut base = 0usize;
    for chunk in xs.chunks(CHUNK) {
        let mut hit = false;
        for &x in chunk {
            hit |= x > threshold;
        }
        if hit {
            for (j, &x) in chunk.iter().enumerate() {
                if x > threshold {
                    out.push((base + j) as u32);
                    if out.len() == cap {
                        out.select_nth_unstable_by(k - 1, |&a, &b| rank(xs, a, b));
                        out.truncate(k);
                        threshold = xs[out[k - 1] as usize];
                    }
                }
            }
        }
        base += CHUNK;
    }
    if out.len() > k {
        out.select_nth_unstable_by(k - 1, |&a, &b| rank(xs, a, b));
        out.truncate(k);
    }
    out.sort_unstable_by(|&a, &b| rank(xs, a, b));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(xs: &[f32], k: usize) -> Vec<u32> {
        let mut ids: Vec<u32> =
            (0..xs.len() as u32).filter(|&i| xs[i as usize] > f32::NEG_INFINITY).collect();
        ids.sort_by(|&a, &b| rank(xs, a, b));
        ids.truncate(k);
        ids
    }

    #[test]
    fn matches_a_full_sort_with_ties_and_masks() {
        // Few distinct values: many ties, across several buffer flushes.
        let mut xs: Vec<f32> =
            (0..5000u32).map(|i| ((i.wrapping_mul(2654435761) >> 7) % 13) as f32).collect();
        for i in (0..5000).step_by(7) {
            xs[i] = f32::NEG_INFINITY;
        }
        let mut out = Vec::new();
        for k in [1, 2, 5, 50, 511, 512, 513, 1200, 4285, 4286, 5000, 9999] {
            top_k(&xs, k, &mut out);
            assert_eq!(out, naive(&xs, k), "k = {k}");
        }
        top_k(&xs, 0, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn all_masked_gives_nothing() {
        let mut out = vec![3];
        top_k(&[f32::NEG_INFINITY; 10], 3, &mut out);
        assert!(out.is_empty());
    }
}

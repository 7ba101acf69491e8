//! Paged varlen attention as one candle op: every sequence of a step (decodes and prefill chunks
//! alike) attends over its K/V read in place from the block pool through its block table, with an
//! online softmax over key chunks, GQA without copying K/V, and no score matrix beyond one tile.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, WithDType};
use rayon::prelude::*;

use crate::step_plan::StepPlan;

/// Query tokens of a sequence that one work item takes together: each K/V row read from the pool
/// is used by this many tokens × the GQA group before it leaves the cache.
const TILE_TOKENS: usize = 16;

/// Keys scored before the running softmax is updated: bounds the score tile and amortises the
/// rescale of the accumulator.
const CHUNK: usize = 64;

/// Partial sums of a dot product: two AVX vectors' worth.
const LANES: usize = 16;

/// The attention of a whole step: `q [tokens, heads, head_dim]` against K/V in the pool
/// `[slots, kv_heads, head_dim]` (or, without cache, the step's own `[tokens, kv_heads,
/// head_dim]`), giving `[tokens, heads * head_dim]`.
pub struct PagedAttention<'a> {
    /// Sequences, block tables and lengths of the step.
    pub plan: &'a StepPlan,
    /// Query heads on this rank.
    pub heads: usize,
    /// KV heads on this rank; divides `heads`.
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
    /// Softmax scale, 1/√head_dim.
    pub scale: f32,
}

impl PagedAttention<'_> {
    /// Runs the op; `k` and `v` are the layer's pool when the plan is cached.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
        q.apply_op3_no_bwd(k, v, self)
    }
}

/// One unit of parallel work: a tile of one sequence's queries against one KV head.
#[derive(Debug, Clone, Copy)]
struct Item {
    seq: usize,
    kv_head: usize,
    /// First query token of the tile, relative to the sequence's new tokens.
    t0: usize,
    tokens: usize,
    /// Key positions `[from, to)` this item scores: the whole context, or one split of it.
    from: usize,
    to: usize,
}

/// Unnormalised attention state of a tile over some keys: running max, sum and weighted values.
struct Partial {
    m: Vec<f32>,
    l: Vec<f32>,
    acc: Vec<f32>,
}

/// Keys below which a context is not split across threads: a split must pay for its merge.
const MIN_SPLIT_KEYS: usize = 4 * CHUNK;

/// Values the kernel reads and writes, widened to f32 for the arithmetic.
trait Elem: WithDType {
    #[inline(always)]
    fn f32(self) -> f32 {
        // f32 → f64 → f32 folds away; half types widen exactly.
        self.to_f64() as f32
    }
}
impl<T: WithDType> Elem for T {}

fn contiguous<'s, T: WithDType>(s: &'s [T], l: &Layout, what: &str) -> candle_core::Result<&'s [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s[a..b]),
        None => candle_core::bail!("paged attention: {what} must be contiguous"),
    }
}

impl CustomOp3 for PagedAttention<'_> {
    fn name(&self) -> &'static str {
        "paged-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (heads, kv_heads, hd) = (self.heads, self.kv_heads, self.head_dim);
        if kv_heads == 0 || heads % kv_heads != 0 {
            candle_core::bail!("paged attention: {heads} heads over {kv_heads} KV heads");
        }
        let tokens = self.plan.tokens();
        if l1.shape().dims() != [tokens, heads, hd] {
            candle_core::bail!("paged attention: q is {:?}, want [{tokens}, {heads}, {hd}]", l1.shape());
        }
        for l in [l2, l3] {
            let d = l.shape().dims();
            if d.len() != 3 || d[1] != kv_heads || d[2] != hd {
                candle_core::bail!("paged attention: K/V are {:?}, want [_, {kv_heads}, {hd}]", l.shape());
            }
        }
        let out_shape = Shape::from((tokens, heads * hd));
        macro_rules! run {
            ($q:expr, $k:expr, $v:expr) => {{
                let q = contiguous($q, l1, "q")?;
                let k = contiguous($k, l2, "K")?;
                let v = contiguous($v, l3, "V")?;
                let out = attend(self, q, k, v)?;
                Ok((WithDType::to_cpu_storage_owned(out), out_shape))
            }};
        }
        match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => run!(q, k, v),
            (CpuStorage::BF16(q), CpuStorage::BF16(k), CpuStorage::BF16(v)) => run!(q, k, v),
            (CpuStorage::F16(q), CpuStorage::F16(k), CpuStorage::F16(v)) => run!(q, k, v),
            _ => candle_core::bail!("paged attention: q, K and V must share one float dtype"),
        }
    }
}

/// Where sequence `seq`'s positions live: `(first position, first row, rows)` runs of at most
/// [`CHUNK`] consecutive rows covering positions `[from, upto)`.
fn runs(plan: &StepPlan, seq: usize, from: usize, upto: usize) -> Vec<(usize, usize, usize)> {
    let bs = plan.block_size();
    let run = if bs == 0 { CHUNK } else { CHUNK.min(bs) };
    let mut out = Vec::with_capacity((upto - from).div_ceil(run) + 1);
    let mut p = from;
    if bs == 0 {
        // Without cache the sequence's K/V are its own rows of the step, in position order.
        let base = plan.seq(seq).offset;
        while p < upto {
            let n = CHUNK.min(upto - p);
            out.push((p, base + p, n));
            p += n;
        }
        return out;
    }
    let table = plan.table(seq);
    while p < upto {
        let off = p % bs;
        let n = (bs - off).min(CHUNK).min(upto - p);
        out.push((p, table[p / bs] as usize * bs + off, n));
        p += n;
    }
    out
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    // mul_add is one instruction only where FMA is enabled; elsewhere it is a libm call.
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn dot<T: Elem, const FMA: bool>(a: &[f32], b: &[T]) -> f32 {
    // Sixteen independent sums: the loop vectorises without reassociation, into two vector
    // accumulators so consecutive FMAs do not wait on each other.
    let mut acc = [0f32; LANES];
    let (ac, ar) = a.split_at(a.len() / LANES * LANES);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(LANES).zip(bc.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] = madd::<FMA>(x[i], y[i].f32(), acc[i]);
        }
    }
    let mut s = acc.iter().sum::<f32>();
    for (x, y) in ar.iter().zip(br) {
        s = madd::<FMA>(*x, y.f32(), s);
    }
    s
}

#[inline(always)]
fn axpy<T: Elem, const FMA: bool>(acc: &mut [f32], p: f32, v: &[T]) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a = madd::<FMA>(p, x.f32(), *a);
    }
}

/// [`tile`] compiled for the best instruction set this CPU has.
fn tile_dispatch<T: Elem>(op: &PagedAttention, it: &Item, q: &[T], k: &[T], v: &[T]) -> Partial {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
        return unsafe { tile_avx2_fma(op, it, q, k, v) };
    }
    tile::<T, false>(op, it, q, k, v)
}

/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2_fma<T: Elem>(op: &PagedAttention, it: &Item, q: &[T], k: &[T], v: &[T]) -> Partial {
    tile::<T, true>(op, it, q, k, v)
}

fn attend<T: Elem>(op: &PagedAttention, q: &[T], k: &[T], v: &[T]) -> candle_core::Result<Vec<T>> {
    let plan = op.plan;
    let (heads, kv_heads, hd) = (op.heads, op.kv_heads, op.head_dim);
    if k.len() != v.len() {
        candle_core::bail!("paged attention: K and V differ in size");
    }
    let rows_per_kv = k.len() / (kv_heads * hd).max(1);
    let mut items = Vec::new();
    for s in 0..plan.len() {
        let seq = plan.seq(s);
        let context = seq.past + seq.len;
        let bs = plan.block_size();
        let table = plan.table(s);
        let within = seq.offset + seq.len <= plan.tokens()
            && if plan.cached() {
                table.len() * bs >= context && table.iter().all(|&b| (b as usize + 1) * bs <= rows_per_kv)
            } else {
                seq.past == 0 && seq.offset + context <= rows_per_kv
            };
        if !within {
            candle_core::bail!("paged attention: sequence {s} reads past its K/V");
        }
        for kv_head in 0..kv_heads {
            for t0 in (0..seq.len).step_by(TILE_TOKENS) {
                let tokens = TILE_TOKENS.min(seq.len - t0);
                items.push(Item { seq: s, kv_head, t0, tokens, from: 0, to: seq.past + t0 + tokens });
            }
        }
    }
    // Too few tiles to occupy every thread (small decode batches over long contexts): split each
    // tile's keys, chunk-aligned, and merge the partial softmaxes afterwards.
    let want = 2 * rayon::current_num_threads();
    let splits = if items.len() < want { want.div_ceil(items.len().max(1)) } else { 1 };
    let mut work = Vec::with_capacity(items.len() * splits);
    let mut owners = Vec::with_capacity(items.len() * splits);
    for (i, it) in items.iter().enumerate() {
        let n = splits.min(it.to / MIN_SPLIT_KEYS).max(1);
        let step = it.to.div_ceil(n).div_ceil(CHUNK) * CHUNK;
        for from in (0..it.to).step_by(step) {
            work.push(Item { from, to: (from + step).min(it.to), ..*it });
            owners.push(i);
        }
    }
    let parts: Vec<Partial> = work.par_iter().map(|it| tile_dispatch(op, it, q, k, v)).collect();
    let mut out = vec![T::from_f64(0.0); plan.tokens() * heads * hd];
    let group = heads / kv_heads;
    let mut at_part = 0;
    for (i, it) in items.iter().enumerate() {
        let n = owners[at_part..].iter().take_while(|&&o| o == i).count();
        let acc = merge(&parts[at_part..at_part + n], hd);
        at_part += n;
        let seq = plan.seq(it.seq);
        for (r, row) in acc.chunks_exact(hd).enumerate() {
            let (ti, gi) = (r / group, r % group);
            let at = ((seq.offset + it.t0 + ti) * heads + it.kv_head * group + gi) * hd;
            for (o, x) in out[at..at + hd].iter_mut().zip(row) {
                *o = T::from_f64(*x as f64);
            }
        }
    }
    Ok(out)
}

/// One tile: `tokens × group` query rows against the sequence's context, causally; returns the
/// normalised outputs row by row (row = token * group + head in group).
#[inline(always)]
fn tile<T: Elem, const FMA: bool>(op: &PagedAttention, it: &Item, q: &[T], k: &[T], v: &[T]) -> Partial {
    let (heads, kv_heads, hd) = (op.heads, op.kv_heads, op.head_dim);
    let group = heads / kv_heads;
    let seq = op.plan.seq(it.seq);
    let rows = it.tokens * group;
    let mut qt = vec![0f32; rows * hd];
    for r in 0..rows {
        let (ti, gi) = (r / group, r % group);
        let at = ((seq.offset + it.t0 + ti) * heads + it.kv_head * group + gi) * hd;
        for (d, x) in qt[r * hd..(r + 1) * hd].iter_mut().zip(&q[at..at + hd]) {
            *d = x.f32() * op.scale;
        }
    }
    let mut m = vec![f32::NEG_INFINITY; rows];
    let mut l = vec![0f32; rows];
    let mut acc = vec![0f32; rows * hd];
    let mut scores = vec![0f32; rows * CHUNK];
    let mut valid = vec![0usize; rows];
    // Row r may see positions up to past + t0 + r / group.
    let upto = (seq.past + it.t0 + it.tokens).min(it.to);
    for (p0, row0, n) in runs(op.plan, it.seq, it.from.min(upto), upto) {
        for j in 0..n {
            let at = ((row0 + j) * kv_heads + it.kv_head) * hd;
            let krow = &k[at..at + hd];
            for r in 0..rows {
                scores[r * CHUNK + j] = dot::<T, FMA>(&qt[r * hd..(r + 1) * hd], krow);
            }
        }
        for r in 0..rows {
            let last = seq.past + it.t0 + r / group;
            let nv = (last + 1).saturating_sub(p0).min(n);
            valid[r] = nv;
            if nv == 0 {
                continue;
            }
            let s = &mut scores[r * CHUNK..r * CHUNK + nv];
            let mx = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let new_m = m[r].max(mx);
            if new_m > m[r] {
                let corr = (m[r] - new_m).exp();
                l[r] *= corr;
                acc[r * hd..(r + 1) * hd].iter_mut().for_each(|a| *a *= corr);
                m[r] = new_m;
            }
            for x in s.iter_mut() {
                *x = (*x - new_m).exp();
                l[r] += *x;
            }
        }
        for j in 0..n {
            let at = ((row0 + j) * kv_heads + it.kv_head) * hd;
            let vrow = &v[at..at + hd];
            for r in 0..rows {
                if j < valid[r] {
                    axpy::<T, FMA>(&mut acc[r * hd..(r + 1) * hd], scores[r * CHUNK + j], vrow);
                }
            }
        }
    }
    Partial { m, l, acc }
}

/// Combines the partials of one tile's key splits and normalises: row by row, the outputs.
fn merge(parts: &[Partial], hd: usize) -> Vec<f32> {
    let mut out = vec![0f32; parts[0].acc.len()];
    for r in 0..parts[0].m.len() {
        let m = parts.iter().map(|p| p.m[r]).fold(f32::NEG_INFINITY, f32::max);
        let mut l = 0f32;
        let o = &mut out[r * hd..(r + 1) * hd];
        for p in parts {
            if p.l[r] == 0.0 {
                continue; // a split wholly past this row's causal limit
            }
            let w = (p.m[r] - m).exp();
            l += p.l[r] * w;
            for (x, a) in o.iter_mut().zip(&p.acc[r * hd..(r + 1) * hd]) {
                *x += a * w;
            }
        }
        // Every row sees at least its own position, so l > 0.
        let inv = 1.0 / l;
        o.iter_mut().for_each(|x| *x *= inv);
    }
    out
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::model::{Batch, SeqSpan};

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Textbook attention in f64: full scores, causal mask, softmax, weighted sum.
    fn naive(
        q: &[f32],
        ctx_k: &[Vec<f32>],
        ctx_v: &[Vec<f32>],
        past: usize,
        shape: (usize, usize, usize),
    ) -> Vec<f32> {
        // q: [len, heads, hd]; ctx_k/v[p]: [kv_heads * hd] for p in 0..past+len.
        let (heads, kv_heads, hd) = shape;
        let len = q.len() / (heads * hd);
        let group = heads / kv_heads;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut out = vec![0f32; q.len()];
        for t in 0..len {
            for h in 0..heads {
                let kvh = h / group;
                let qr = &q[(t * heads + h) * hd..][..hd];
                let s: Vec<f64> = (0..=past + t)
                    .map(|p| {
                        let kr = &ctx_k[p][kvh * hd..][..hd];
                        qr.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale
                    })
                    .collect();
                let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for d in 0..hd {
                    let o: f64 = e.iter().enumerate().map(|(p, w)| w * ctx_v[p][kvh * hd + d] as f64).sum();
                    out[(t * heads + h) * hd + d] = (o / z) as f32;
                }
            }
        }
        out
    }

    /// Runs a step of `(past, len)` sequences with the given head shape and block size, K/V
    /// scattered over the pool in a shuffled block order, and compares with [`naive`].
    fn check(seqs: &[(usize, usize)], shape: (usize, usize, usize), block_size: usize, dtype: DType) -> f32 {
        let (heads, kv_heads, hd) = shape;
        let row = kv_heads * hd;
        let blocks_needed: usize = seqs.iter().map(|(p, l)| (p + l).div_ceil(block_size)).sum();
        let pool_blocks = blocks_needed + 3;
        // Hand out blocks from the back, interleaved, so tables are neither sorted nor adjacent.
        let mut free: Vec<u32> = (0..pool_blocks as u32).collect();
        free.reverse();
        free.rotate_left(2);
        let mut k_pool = values(pool_blocks * block_size * row, 1);
        let mut v_pool = values(pool_blocks * block_size * row, 2);
        let mut spans = Vec::new();
        let mut q_all = Vec::new();
        let mut refs = Vec::new();
        let mut offset = 0;
        for (i, &(past, len)) in seqs.iter().enumerate() {
            let table: Vec<u32> =
                (0..(past + len).div_ceil(block_size)).map(|_| free.pop().unwrap()).collect();
            let ctx_k: Vec<Vec<f32>> =
                (0..past + len).map(|_| values(row, 10 + i as u64 * 7 + offset as u64)).collect();
            let ctx_v: Vec<Vec<f32>> =
                (0..past + len).map(|p| values(row, 99 + p as u64 * 13 + i as u64)).collect();
            for p in 0..past + len {
                let slot = table[p / block_size] as usize * block_size + p % block_size;
                k_pool[slot * row..(slot + 1) * row].copy_from_slice(&ctx_k[p]);
                v_pool[slot * row..(slot + 1) * row].copy_from_slice(&ctx_v[p]);
            }
            let q = values(len * heads * hd, 500 + i as u64);
            refs.push(naive(&q, &ctx_k, &ctx_v, past, shape));
            q_all.extend(q);
            spans.push(SeqSpan { offset, len, past, blocks: Some(table) });
            offset += len;
        }
        let batch = Batch {
            tokens: vec![0; offset],
            positions: vec![0; offset],
            seqs: spans,
            all_logits: false,
            block_size,
        };
        let plan = StepPlan::new(&batch);
        let dev = Device::Cpu;
        let t = |v: Vec<f32>, n: usize, w: usize| {
            Tensor::from_vec(v, (n, w, hd), &dev).unwrap().to_dtype(dtype).unwrap()
        };
        let q = t(q_all, offset, heads);
        let k = t(k_pool, pool_blocks * block_size, kv_heads);
        let v = t(v_pool, pool_blocks * block_size, kv_heads);
        let op =
            PagedAttention { plan: &plan, heads, kv_heads, head_dim: hd, scale: 1.0 / (hd as f32).sqrt() };
        let got: Vec<f32> = op
            .forward(&q, &k, &v)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = refs.concat();
        got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }

    #[test]
    fn decode_matches_naive_for_gqa_and_mha_and_block_sizes() {
        for shape in [(8, 2, 16), (4, 4, 12), (6, 1, 8)] {
            for bs in [1, 4, 16, 100] {
                let d = check(&[(0, 1), (5, 1), (37, 1), (130, 1)], shape, bs, DType::F32);
                assert!(d < 1e-5, "shape {shape:?} block {bs}: max |Δ| = {d}");
            }
        }
    }

    #[test]
    fn ragged_prefill_and_decode_mixed_match_naive() {
        // Fresh prompts, chunks over a cached past, a tile boundary (16) and a chunk boundary (64).
        let seqs = [(0, 1), (9, 1), (0, 7), (5, 33), (70, 17), (0, 100)];
        for shape in [(8, 2, 16), (4, 4, 12)] {
            for bs in [4, 16, 64] {
                let d = check(&seqs, shape, bs, DType::F32);
                assert!(d < 1e-5, "shape {shape:?} block {bs}: max |Δ| = {d}");
            }
        }
    }

    #[test]
    fn long_contexts_split_over_threads_match_naive() {
        // One tile per KV head: the keys are split, the partial softmaxes merged.
        for seqs in [vec![(1000, 1)], vec![(600, 3)], vec![(300, 1), (0, 1)]] {
            let d = check(&seqs, (4, 1, 16), 16, DType::F32);
            assert!(d < 1e-5, "{seqs:?}: max |Δ| = {d}");
        }
    }

    #[test]
    fn half_dtypes_stay_within_their_rounding() {
        for dtype in [DType::BF16, DType::F16] {
            let d = check(&[(3, 1), (0, 20), (40, 5)], (4, 2, 16), 8, dtype);
            assert!(d < 3e-2, "{dtype:?}: max |Δ| = {d}");
        }
    }

    #[test]
    fn a_table_too_short_is_an_error_not_a_panic() {
        let batch = Batch {
            tokens: vec![0],
            positions: vec![9],
            seqs: vec![SeqSpan { offset: 0, len: 1, past: 9, blocks: Some(vec![0]) }],
            all_logits: false,
            block_size: 4,
        };
        let plan = StepPlan::new(&batch);
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 8), DType::F32, &dev).unwrap();
        let kv = Tensor::zeros((8, 1, 8), DType::F32, &dev).unwrap();
        let op = PagedAttention { plan: &plan, heads: 2, kv_heads: 1, head_dim: 8, scale: 1.0 };
        assert!(op.forward(&q, &kv, &kv).is_err());
    }
}

//! Deterministic random numbers for fixture weights: SplitMix64 and a libm-free normal sampler.

/// SplitMix64 generator. Every value it yields, and every normal sample derived from it, is
/// bit-identical on every platform, so committed fixtures can be compared byte for byte.
pub(crate) struct Rng(u64);

impl Rng {
    /// A generator for one tensor: `seed` mixed with the tensor's name, so tensors do not
    /// depend on each other (adding or dropping one leaves the others unchanged).
    pub(crate) fn for_tensor(seed: u64, name: &str) -> Self {
        // FNV-1a of the name, then one SplitMix step so nearby seeds diverge.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut rng = Rng(seed ^ h);
        rng.next_u64();
        rng
    }

    /// The next 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// An approximately standard normal sample (mean 0, variance 1, bounded by ±6): the
    /// Irwin–Hall sum of twelve 32-bit uniforms minus 6. Unlike Box–Muller it needs no `ln`/`cos`,
    /// whose last bits may differ between C libraries; integer sums and one exact division do not.
    pub(crate) fn normal(&mut self) -> f64 {
        let mut sum = 0u64;
        for _ in 0..6 {
            let x = self.next_u64();
            sum += (x >> 32) + (x & 0xffff_ffff);
        }
        sum as f64 / 4_294_967_296.0 - 6.0
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    #[test]
    fn normal_has_unit_moments_and_a_fixed_stream() {
        let mut rng = Rng::for_tensor(7, "t");
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        // Same seed and name, same stream; another name, another stream.
        assert_eq!(Rng::for_tensor(7, "t").next_u64(), Rng::for_tensor(7, "t").next_u64());
        assert_ne!(Rng::for_tensor(7, "t").next_u64(), Rng::for_tensor(7, "u").next_u64());
    }
}

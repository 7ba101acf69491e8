//! Deterministic random numbers for fixture weights: per-tensor genarm-fusion SplitMix64 streams
//! and a libm-free normal sampler.

use genarm_fusion::rng::SplitMix64;

/// A generator for one tensor: `seed` mixed with the tensor's name, so tensors do not depend on
/// each other (adding or dropping one leaves the others unchanged). Every value it yields, and
/// every [`normal`] sample drawn from it, is bit-identical on every platform, so committed
/// fixtures can be compared byte for byte.
pub(crate) fn for_tensor(seed: u64, name: &str) -> SplitMix64 {
    // FNV-1a of the name, then one SplitMix step so nearby seeds diverge.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut rng = SplitMix64::new(seed ^ h);
    rng.next_u64();
    rng
}

/// An approximately standard normal sample (mean 0, variance 1, bounded by ±6): the Irwin–Hall
/// sum of twelve 32-bit uniforms minus 6. Unlike Box–Muller it needs no `ln`/`cos`, whose last
/// bits may differ between C libraries; integer sums and one exact division do not.
pub(crate) fn normal(rng: &mut SplitMix64) -> f64 {
    let mut sum = 0u64;
    for _ in 0..6 {
        let x = rng.next_u64();
        sum += (x >> 32) + (x & 0xffff_ffff);
    }
    sum as f64 / 4_294_967_296.0 - 6.0
}

#[cfg(test)]
mod tests {
    use super::{for_tensor, normal};

    #[test]
    fn normal_has_unit_moments_and_a_fixed_stream() {
        let mut rng = for_tensor(7, "t");
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| normal(&mut rng)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.02, "mean {mean}");
        assert!((var - 1.0).abs() < 0.02, "variance {var}");
        // Same seed and name, same stream; another name, another stream.
        assert_eq!(for_tensor(7, "t").next_u64(), for_tensor(7, "t").next_u64());
        assert_ne!(for_tensor(7, "t").next_u64(), for_tensor(7, "u").next_u64());
    }

    #[test]
    fn tensor_streams_are_pinned() {
        // The committed fixtures' bytes are drawn from these streams.
        let pinned: [(u64, &str, [u64; 3], [u64; 3]); 3] = [
            (
                7,
                "t",
                [6986873007241360680, 9376788888027525454, 8305446372470973155],
                [13817715857935040512, 13820182055536820224, 13821111464011759616],
            ),
            (
                0,
                "model.embed_tokens.weight",
                [5903293806216743662, 9468441521265356444, 4582946464993283594],
                [4608355564080070656, 4582827098078445568, 13825864445257056256],
            ),
            (
                42,
                "lm_head.weight",
                [18153115427738941554, 8093341859481606982, 10233558478787174595],
                [4607775027803193344, 4610439369379020800, 13830932242826788864],
            ),
        ];
        for (seed, name, raw, normals) in pinned {
            let mut rng = for_tensor(seed, name);
            assert_eq!(raw.map(|_| rng.next_u64()), raw, "{seed} {name}");
            let mut rng = for_tensor(seed, name);
            assert_eq!(normals.map(|_| normal(&mut rng).to_bits()), normals, "{seed} {name}");
        }
    }
}

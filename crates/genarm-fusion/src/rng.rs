//! The project's random numbers: xoshiro256++ seeded through splitmix64 for the sampler, and
//! splitmix64 itself (with uniform floats, ranges and shuffles) for training and test data, written
//! here once so that a seed's outputs never change with a dependency upgrade.

/// splitmix64: expands a 64-bit seed into well-mixed state words.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next output (reference: Vigna's `splitmix64.c`).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)` with 53 random bits (one `next_u64`).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)` (`n > 0`), by rejection so it has no modulo bias.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }

    /// Fisher–Yates shuffle, drawing with [`Self::below`].
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }
}

/// xoshiro256++ (Blackman and Vigna): fast, 256 bits of state, good statistical quality.
#[derive(Debug, Clone)]
pub struct Xoshiro256PlusPlus {
    s: [u64; 4],
}

impl Xoshiro256PlusPlus {
    /// The generator for `seed`: its four state words are the first four outputs of
    /// [`SplitMix64::new(seed)`](SplitMix64::new), as the xoshiro authors recommend.
    pub fn seed_from_u64(seed: u64) -> Self {
        let mut sm = SplitMix64::new(seed);
        Self { s: [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()] }
    }

    /// A generator with the given raw state (must not be all zero). For reference tests.
    pub fn from_state(s: [u64; 4]) -> Self {
        assert!(s != [0; 4], "xoshiro256++ state must not be all zero");
        Self { s }
    }

    /// The next 64 random bits (reference: Vigna's `xoshiro256plusplus.c`).
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// A uniform draw from `[0, 1)` with 53 random bits (one `next_u64`).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_matches_the_reference() {
        // Published outputs of splitmix64.c for seed 1234567.
        let mut sm = SplitMix64::new(1234567);
        let expected = [
            6457827717110365317,
            3203168211198807973,
            9817491932198370423,
            4593380528125082431,
            16408922859458223821,
        ];
        for e in expected {
            assert_eq!(sm.next_u64(), e);
        }
    }

    #[test]
    fn splitmix64_streams_are_pinned() {
        // Training checkpoints, data orders, LoRA initializations and test fixtures are keyed by
        // these streams: a change here silently changes every seeded run.
        let pinned: [(u64, [u64; 6]); 4] = [
            (
                0,
                [
                    16294208416658607535,
                    7960286522194355700,
                    487617019471545679,
                    17909611376780542444,
                    1961750202426094747,
                    6038094601263162090,
                ],
            ),
            (
                1,
                [
                    10451216379200822465,
                    13757245211066428519,
                    17911839290282890590,
                    8196980753821780235,
                    8195237237126968761,
                    14072917602864530048,
                ],
            ),
            (
                42,
                [
                    13679457532755275413,
                    2949826092126892291,
                    5139283748462763858,
                    6349198060258255764,
                    701532786141963250,
                    16015981125662989062,
                ],
            ),
            (
                u64::MAX,
                [
                    16490336266968443936,
                    16834447057089888969,
                    4048727598324417001,
                    7862637804313477842,
                    13015481187462834606,
                    15212506146343009075,
                ],
            ),
        ];
        for (seed, expected) in pinned {
            let mut sm = SplitMix64::new(seed);
            let got: Vec<u64> = (0..expected.len()).map(|_| sm.next_u64()).collect();
            assert_eq!(got, expected, "seed {seed}");
        }
    }

    #[test]
    fn splitmix64_helpers_are_pinned() {
        // genarm-train's LoRA init (next_f64), held-out split and epoch orders (shuffle) were
        // drawn with these before the generator moved here; checkpoints depend on them.
        let floats: [(u64, [u64; 4]); 4] = [
            (0, [4606131375998723001, 4601445337224736344, 4583276237337666816, 4606920146975345040]),
            (1, [4603278352542933067, 4604892624433492445, 4606921234823734858, 4601676483935310002]),
            (42, [4604854642168692077, 4594929399376720760, 4598690451703514086, 4599872008648626872]),
            (u64::MAX, [4606227141550632101, 4606395164397371088, 4597075691381012800, 4601349977148680800]),
        ];
        for (seed, bits) in floats {
            let mut sm = SplitMix64::new(seed);
            let got: Vec<u64> = bits.iter().map(|_| sm.next_f64().to_bits()).collect();
            assert_eq!(got, bits, "next_f64, seed {seed}");
        }
        // `1 << 63 | 1` rejects about half its draws, so it checks the rejection path too.
        let bounds = [10u64, 3, 1000, 1 << 63 | 1, 7];
        let below: [(u64, [u64; 5]); 4] = [
            (0, [5, 0, 679, 1961750202426094747, 2]),
            (1, [5, 1, 590, 8196980753821780235, 5]),
            (42, [3, 1, 858, 6349198060258255764, 6]),
            (u64::MAX, [6, 0, 1, 7862637804313477842, 1]),
        ];
        for (seed, expected) in below {
            let mut sm = SplitMix64::new(seed);
            let got: Vec<u64> = bounds.iter().map(|&n| sm.below(n)).collect();
            assert_eq!(got, expected, "below, seed {seed}");
        }
        let shuffled: [(u64, [u32; 10]); 4] = [
            (0, [6, 3, 2, 9, 8, 1, 4, 7, 0, 5]),
            (1, [4, 2, 8, 1, 9, 3, 0, 6, 7, 5]),
            (42, [0, 9, 5, 8, 6, 4, 7, 2, 1, 3]),
            (u64::MAX, [3, 4, 2, 7, 5, 0, 8, 1, 9, 6]),
        ];
        for (seed, expected) in shuffled {
            let mut v: Vec<u32> = (0..10).collect();
            SplitMix64::new(seed).shuffle(&mut v);
            assert_eq!(v, expected, "shuffle, seed {seed}");
        }
    }

    #[test]
    fn xoshiro256plusplus_matches_the_reference() {
        // Outputs of xoshiro256plusplus.c from the state {1, 2, 3, 4}.
        let mut rng = Xoshiro256PlusPlus::from_state([1, 2, 3, 4]);
        let expected = [
            41943041,
            58720359,
            3588806011781223,
            3591011842654386,
            9228616714210784205,
            9973669472204895162,
            14011001112246962877,
            12406186145184390807,
            15849039046786891736,
            10450023813501588000,
        ];
        for e in expected {
            assert_eq!(rng.next_u64(), e);
        }
    }

    #[test]
    fn uniform_draws_stay_in_the_unit_interval() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let mut sum = 0.0;
        for _ in 0..10_000 {
            let u = rng.next_f64();
            assert!((0.0..1.0).contains(&u));
            sum += u;
        }
        assert!((sum / 10_000.0 - 0.5).abs() < 0.02);
    }
}

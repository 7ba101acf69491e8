//! The hot path allocates nothing: after a sampler's first step, `fuse` and `Sampler::sample` make no
//! heap allocation (counted by a wrapping global allocator; this file holds a single test so no other
//! test allocates concurrently).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use genarm_fusion::rng::Xoshiro256PlusPlus;
use genarm_fusion::{fuse, ArmTerm, Sampler, SamplingParams};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only counts them.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through `alloc`/`realloc` above, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn logits(seed: u64, n: usize) -> Vec<f32> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..n).map(|_| (rng.next_f64() * 12.0 - 6.0) as f32).collect()
}

#[test]
fn steps_after_the_first_allocate_nothing() {
    // The counter works.
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    drop(std::hint::black_box(Vec::<u8>::with_capacity(16)));
    assert!(ALLOCATIONS.load(Ordering::SeqCst) > before);

    let vocab = 50_000;
    let steps: Vec<(Vec<f32>, Vec<f32>, Vec<f32>)> = (0..8)
        .map(|i| (logits(3 * i, vocab), logits(3 * i + 1, vocab + 7), logits(3 * i + 2, vocab)))
        .collect();
    let mut fused = vec![0.0; vocab];
    let configs = [
        SamplingParams { temperature: 0.0, ..Default::default() },
        SamplingParams { temperature: 1.0, ..Default::default() },
        SamplingParams { temperature: 0.7, top_k: Some(50), ..Default::default() },
        SamplingParams { temperature: 1.0, top_p: Some(0.9), ..Default::default() },
        SamplingParams { temperature: 0.8, top_k: Some(2_000), top_p: Some(0.95), seed: 3 },
    ];
    for params in configs {
        let mut sampler = Sampler::new(params).unwrap();
        // The first step sizes the scratch buffers (the largest top-p candidate set may grow them
        // once more on a later step, so warm up on every step's logits).
        for (base, a1, a2) in &steps {
            let arms = [ArmTerm { alpha: 0.5, logits: a1 }, ArmTerm { alpha: -0.25, logits: a2 }];
            fuse(base, &arms, &mut fused).unwrap();
            sampler.sample(&fused).unwrap();
        }
        let before = ALLOCATIONS.load(Ordering::SeqCst);
        for (base, a1, a2) in &steps {
            let arms = [ArmTerm { alpha: 0.5, logits: a1 }, ArmTerm { alpha: -0.25, logits: a2 }];
            fuse(base, &arms, &mut fused).unwrap();
            sampler.sample(&fused).unwrap();
        }
        let after = ALLOCATIONS.load(Ordering::SeqCst);
        assert_eq!(after - before, 0, "{params:?}: {} allocations in 8 steps", after - before);
    }
}

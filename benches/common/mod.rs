//! What the benches share: a global allocator that counts, so a change that adds an
//! allocation on a hot path shows up as a number, not a hunch.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts every allocation the process makes.
pub struct Counting;

pub static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per call of `f`, over `n` calls.
pub fn allocations_per_call(n: u64, mut f: impl FnMut(u64)) -> f64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in 0..n {
        f(i);
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
}

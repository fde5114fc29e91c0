//! Data frames with known contents, for the tests of both kernels: a run of
//! physically contiguous frames from the data pool, each holding a pattern
//! derived from its address in its first word, so that a load through any
//! mapping tells which frame it reached.

use lazymmu::addr::PhysAddr;

use crate::check::Message;
use crate::frames::FRAME;
use crate::memory::{phys_to_virt, DATA_FRAMES};
use crate::message;

/// The value the tests store in the first word of a data frame.
pub fn pattern(frame: PhysAddr) -> u64 {
    0x5a5a_0000_0000_0000 ^ frame.0
}

/// `n` physically contiguous data frames, zeroed, each holding its
/// [`pattern`].
///
/// # Errors
/// A message when the pool has no such run.
pub fn data_run(n: usize) -> Result<PhysAddr, Message> {
    let first = DATA_FRAMES
        .allocate_run(n)
        .ok_or(message!("no run of {n} free data frames"))?;
    fill(first, n);
    Ok(first)
}

/// Like [`data_run`], with the first frame aligned to `align` bytes (a
/// power of two: 2 MiB for a block mapping). The frames around it that the
/// search took are returned to the pool.
///
/// # Errors
/// A message when the pool has no such run.
#[cfg_attr(
    target_arch = "x86_64",
    expect(
        dead_code,
        reason = "the x86-64 kernel's tests map no blocks of test data"
    )
)]
pub fn aligned_run(n: usize, align: u64) -> Result<PhysAddr, Message> {
    let slack = (align / FRAME) as usize;
    let wide = DATA_FRAMES.allocate_run(n + slack).ok_or(message!(
        "no run of {n} free data frames aligned to {align:#x}"
    ))?;
    let first = PhysAddr(wide.0.next_multiple_of(align));
    let head = ((first.0 - wide.0) / FRAME) as usize;
    free_run(wide, head);
    free_run(first.add(n as u64 * FRAME), slack - head);
    fill(first, n);
    Ok(first)
}

/// Zeroes the `n` frames from `first` and stores each one's [`pattern`].
fn fill(first: PhysAddr, n: usize) {
    for i in 0..n as u64 {
        let frame = first.add(i * FRAME);
        let page = phys_to_virt(frame) as *mut u64;
        // SAFETY: the frames were just allocated and are mapped writable
        // in the direct map; nothing else uses them.
        unsafe {
            core::ptr::write_bytes(page, 0, 512);
            page.write_volatile(pattern(frame));
        }
    }
}

/// Returns a run from [`data_run`].
///
/// # Panics
/// If a frame of it is not allocated (a double free).
pub fn free_run(first: PhysAddr, n: usize) {
    for i in 0..n as u64 {
        if let Err(error) = DATA_FRAMES.free(first.add(i * FRAME)) {
            panic!("data frame free: {error:?}");
        }
    }
}

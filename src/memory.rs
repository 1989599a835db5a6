//! Gives memory freed after a peak back to the system.
//!
//! A fleet-sized spillway allocates in bursts: a scrape of its own `/metrics` with 5,000
//! Kafka triggers builds ~10 MB of text, start-up parses every object, a registry change
//! rebuilds the served view. glibc's allocator keeps the pages of such a peak in its arenas
//! (there is one per thread that ever allocated), so RSS stays at the high-water mark of the
//! largest burst. Two settings fix it, measured with 5,000 Kafka objects and a scrape every
//! 3 s for 36 s (release build): RSS 109 MB before the first scrape and 180 MB after the
//! last with glibc's defaults; 82 MB and 83 MB (96 MB at most) with both below.
//! - [`configure_allocator`] fixes glibc's mmap threshold at 128 KiB. By default glibc raises
//!   it to the size of every large block freed (up to 32 MiB), so after one scrape the next
//!   scrape's buffers come from an arena and stay there; fixed, a block that large is its own
//!   mapping, returned whole when freed.
//! - [`release_freed_memory_forever`] trims every arena now and then, for the many small
//!   blocks a burst leaves free.
//!
//! Another allocator was tried first: mimalloc held more (133-137 MB after the same scrapes).
//!
//! `malloc_trim` walks the arenas under their locks; at a few milliseconds for a
//! fleet-sized heap, once every [`TRIM_PERIOD`] costs nothing a client would see.

use std::time::{Duration, Instant};

/// How often freed memory is handed back. Long enough that the walk is rare, short enough
/// that a scrape's peak is gone well before the next one (Prometheus scrapes every 15-60 s).
pub const TRIM_PERIOD: Duration = Duration::from_secs(10);

/// Where the allocator is glibc's, blocks of 128 KiB and more get their own mapping, always
/// (see the module doc). Call once, first thing in `main`.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Trims every [`TRIM_PERIOD`] until dropped (abort the task to stop it).
pub async fn release_freed_memory_forever() {
    let mut ticks = tokio::time::interval(TRIM_PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        // Off the async workers: the walk holds allocator locks and may take milliseconds.
        match tokio::task::spawn_blocking(release_freed_memory).await {
            Ok(Some(took)) => tracing::trace!(
                took_ms = took.as_secs_f64() * 1e3,
                "returned freed memory to the system"
            ),
            Ok(None) => return,
            Err(err) => tracing::warn!(error = %err, "trimming the allocator's arenas failed"),
        }
    }
}

/// Hands the free pages of every allocator arena back to the system; how long it took, or
/// None where the allocator has no such call (not glibc).
pub fn release_freed_memory() -> Option<Duration> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = Instant::now();
        // SAFETY: malloc_trim only releases memory the allocator holds free; it touches no
        // live allocation and is thread-safe (it takes each arena's lock).
        unsafe {
            libc::malloc_trim(0);
        }
        Some(started.elapsed())
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = Instant::now;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a large block is freed, a trim gives its pages back: RSS falls.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn a_freed_peak_leaves_the_process_after_a_trim() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        // Many small blocks (below the mmap threshold, so they live in an arena) touched
        // and freed: 64 MiB that glibc keeps until trimmed.
        let blocks: Vec<Vec<u8>> = (0..16_384).map(|_| vec![1u8; 4096]).collect();
        let peak = rss_kib();
        drop(blocks);
        assert!(release_freed_memory().is_some());
        let after = rss_kib();
        assert!(
            after + 32 * 1024 < peak,
            "RSS {after} KiB after the trim, {peak} KiB at the peak"
        );
    }
}

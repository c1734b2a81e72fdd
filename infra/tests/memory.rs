//! Freed large blocks leave the process (issue 18 item 7). In a test binary of its own: the
//! allocator setting is process-wide and the figure measured is the whole process's.

use quantus_infra::memory::{fix_mmap_threshold, resident, DEFAULT_MMAP_THRESHOLD};

/// An argon2id hash's working memory at the documented cost (m = 19 MiB).
const BLOCK: usize = 19 * 1024 * 1024;
const THREADS: usize = 8;

fn anonymous() -> u64 {
    resident().expect("Linux has /proc/self/status").1
}

/// Allocates a block, writes every page of it (as a hash does) and frees it.
fn use_block() {
    let mut block = vec![0u8; BLOCK];
    for page in block.chunks_mut(4096) {
        page[0] = 1;
    }
    std::hint::black_box(&block);
}

#[test]
fn freed_large_blocks_go_back_to_the_system_from_every_thread() {
    assert!(fix_mmap_threshold(DEFAULT_MMAP_THRESHOLD));
    // One block freed first: with glibc's adjusting threshold, this is what moves later blocks
    // into the threads' own heap arenas, where they stay after being freed.
    use_block();
    let before = anonymous();
    // Threads alive at once, as a pool's blocking threads are, each hashing in its own arena.
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                use_block();
                barrier.wait();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let grown = anonymous().saturating_sub(before);
    assert!(
        grown < BLOCK as u64,
        "{THREADS} threads each freed a {} MiB block and the process kept {} MiB",
        BLOCK >> 20,
        grown >> 20
    );
}

//! The process's memory: large blocks returned to the system when freed, and the resident
//! size for `/metrics` (issue 18 item 7).
//!
//! glibc raises its mmap threshold to the size of any mmapped block that is freed (up to
//! 32 MiB), so after the first argon2id hash (19 MiB of working memory) every later one is
//! carved from the calling thread's heap arena, and each arena keeps up to twice that when it
//! is freed. Every blocking thread that ever hashed a password then holds 19-38 MiB: measured,
//! 20 sign-ins took the process from 53 to 262 MiB of anonymous memory and it never came back
//! (docs/PERFORMANCE.md, "Scale"). A fixed threshold stops the adjustment: blocks at or above
//! it are mapped on allocation and unmapped on free.

/// The default fixed threshold: glibc's own starting value.
pub const DEFAULT_MMAP_THRESHOLD: u64 = 128 * 1024;

/// Fixes the allocator's mmap threshold at `bytes` (0: leave glibc's adjusting threshold).
/// Returns whether it was applied (only glibc on Linux has the knob).
pub fn fix_mmap_threshold(bytes: u64) -> bool {
    if bytes == 0 {
        return false;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let Ok(bytes) = libc::c_int::try_from(bytes) else {
            return false;
        };
        // SAFETY: mallopt only sets an allocator parameter; any int is accepted or refused
        // (returns 0) by glibc itself.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, bytes) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Resident and anonymous (heap) resident bytes of this process, from `/proc/self/status`
/// (Linux; elsewhere none).
pub fn resident() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((field("VmRSS:")?, field("RssAnon:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read() {
        let (rss, anon) = resident().expect("Linux has /proc/self/status");
        assert!(rss > 0 && anon > 0 && anon <= rss, "{rss} {anon}");
    }

    #[test]
    fn no_threshold_is_not_applied() {
        assert!(!fix_mmap_threshold(0));
    }
}

//! The process's memory allocator: mimalloc, tuned to return freed memory at once.
//!
//! A member and the load generator allocate many small, short-lived buffers per request
//! (HTTP/2 frames, protobuf messages); mimalloc serves them markedly faster than glibc's
//! allocator (serializable ranges at 100/1000 went from about 21,000/s to 31,000/s on the
//! comparison machine). By default (mimalloc 3) it keeps freed pages for a second before
//! purging them, which under load adds tens of MiB of resident memory per member (97 instead
//! of 63 MiB after the comparison's workloads); purging at once keeps the member's memory
//! close to what it uses. The cost is CPU: freed pages come back zeroed by the kernel when they
//! are used again. Measured on the comparison machine (alternating fresh clusters, four rounds,
//! put 16/64 and 100/1000): a 50 ms delay gave 7-8 % more puts/s and 9 % more resident memory
//! (129 instead of 118 MiB per member after 144,000 puts), 10 ms 2-5 % and 6 %. Memory wins
//! by default; `MIMALLOC_PURGE_DELAY` in the environment overrides it.
//!
//! Transparent huge pages are turned off for the process. mimalloc asks for them on its arenas
//! (`madvise(MADV_HUGEPAGE)`, which the kernel's usual `madvise` setting honours); a purged
//! range that is touched again then faults in, and zeroes, a whole 2 MiB page, and a huge page
//! counts whole in resident memory however little of it is in use. Measured on the comparison
//! machine (alternating rounds of 144,000 puts at 1/1, 16/64 and 100/1000): 104 instead of
//! 110 MiB per member afterwards and 2-3 % less CPU for the same work, throughput within the
//! noise. `MIMALLOC_ALLOW_THP` in the environment leaves the kernel's choice in place.

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_e`; the `libmimalloc-sys`
/// bindings do not name it). A test recognizes it by its default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Applies the tuning; call first thing in `main`. A purge delay set in the environment
/// (`MIMALLOC_PURGE_DELAY`, milliseconds) is left as chosen.
/// Transparent huge pages stay as the kernel decides when the environment sets
/// `MIMALLOC_ALLOW_THP` (mimalloc's own switch for them).
pub fn tune() {
    purge_at_once();
    no_huge_pages();
}

fn purge_at_once() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: setting an option is thread-safe and takes effect for later purges.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

fn no_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // The kernel checks this flag at every fault, so it covers the arenas mimalloc mapped
        // (and advised) before `main` too. A kernel without it refuses; nothing is lost then.
        // SAFETY: PR_SET_THP_DISABLE only sets a flag of this process; no memory is passed.
        unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

/// Returns the calling thread's emptied pages to the OS (mimalloc's `mi_collect`, not forced:
/// blocks other threads freed into this thread's pages are gathered first). The server runs it
/// when a client connection ends (`skiff_server::client_server::on_connection_end`): without
/// it, a leader kept 5-8 MiB more than its followers after 1,000 clients had come and gone,
/// the buffers of their connections, held by tokio workers that had gone to sleep.
pub fn collect_thread() {
    // SAFETY: collects only the calling thread's heap; no pointers are passed.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_is_the_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return; // the environment chose the value; nothing to recognize it by
        }
        // SAFETY: reading an option.
        let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            default, 1000,
            "option 15 is not mimalloc 3's purge delay (default 1000 ms)"
        );
        purge_at_once();
        // SAFETY: reading an option.
        assert_eq!(
            unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) },
            0
        );
    }

    /// The premise of `skiff_kv`'s revision index trimming its chunks by copying them rather
    /// than with `shrink_to_fit`: mimalloc keeps a block that shrinks by less than half.
    #[test]
    fn a_block_shrunk_by_less_than_half_stays_whole() {
        // SAFETY: one block, allocated, resized and freed here; no other pointer to it.
        unsafe {
            let block = libmimalloc_sys::mi_malloc(4096);
            let shrunk = libmimalloc_sys::mi_realloc(block, 2600);
            assert_eq!(shrunk, block, "shrunk in place");
            assert!(libmimalloc_sys::mi_usable_size(shrunk) >= 4096);
            libmimalloc_sys::mi_free(shrunk);
            let exact = libmimalloc_sys::mi_malloc(2600);
            assert!(libmimalloc_sys::mi_usable_size(exact) < 4096);
            libmimalloc_sys::mi_free(exact);
        }
    }

    #[test]
    fn huge_pages_are_off() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            return; // the environment chose
        }
        // Not `tune()`: the test above must still find mimalloc's default purge delay (tests
        // share the process).
        no_huge_pages();
        // SAFETY: PR_GET_THP_DISABLE reads a flag of this process.
        assert_eq!(
            unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) },
            1
        );
    }
}

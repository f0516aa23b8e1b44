//! How every part of the pipeline allocates: with mimalloc, and without
//! transparent huge pages. Not a stage of the data flow; the binary sets it
//! up before any stage starts.

/// Every binary linking extsync (the service, tests, benchmarks) allocates
/// with mimalloc: the pipeline allocates many short-lived values per change,
/// which mimalloc keeps cheaper than the system allocator under contention.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's own switch; when it is set, it decides instead.
const ALLOW_THP_VAR: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process (Linux), unless
/// `MIMALLOC_ALLOW_THP` is set, in which case mimalloc has already done as
/// it says.
///
/// mimalloc takes fresh memory a few KiB at a time. Where the kernel backs
/// anonymous memory with huge pages (`transparent_hugepage=always`), each
/// first touch makes it zero a whole 2 MiB page: while the state cache and
/// the write batches grow, that zeroing took about a fifth of the service's
/// CPU (`perf`, `extsync bench e2e`). Databases that hold much memory
/// (PostgreSQL, Redis, MongoDB) advise the same.
pub fn disable_transparent_huge_pages() {
    if std::env::var_os(ALLOW_THP_VAR).is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes an integer flag and touches no memory
    // of this process; it only changes how later page faults are served.
    unsafe {
        if libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "could not turn transparent huge pages off"
            );
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn huge_pages_are_off_once_set_up() {
        assert!(
            std::env::var_os(ALLOW_THP_VAR).is_none(),
            "unset {ALLOW_THP_VAR} to run this test"
        );
        disable_transparent_huge_pages();
        // SAFETY: PR_GET_THP_DISABLE only reads the process's flag.
        let off = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(off, 1, "transparent huge pages are still on");
    }
}

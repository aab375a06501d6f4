//! Settings of the whole process that every Hourglass binary applies first.

/// Turn transparent huge pages off for this process.
///
/// mimalloc asks the kernel for huge pages on its arenas (`MADV_HUGEPAGE`)
/// and gives freed memory back a second later. The pipeline frees and
/// allocates again in quick cycles (a closed window's histograms, each
/// fetched batch's decompression buffer, each request's body), so the kernel
/// kept zeroing whole 2 MiB pages to hand back memory just returned to it: a
/// fifth of the aggregator's CPU in a profile (3.1 CPU-seconds per million
/// events with huge pages, 2.5 without, before histograms became small).
/// The process-wide switch also covers kernels set to use huge pages
/// everywhere, where no `madvise` is needed.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        tracing::debug!(error = %e, "cannot turn transparent huge pages off");
    }
}

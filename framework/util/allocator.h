#pragma once
#include <string>

namespace recsys::util {

/// Keep freed memory in the process instead of handing it back to the kernel after every step.
///
/// A training step allocates and frees the same multi-megabyte activations and gradients over
/// and over. With glibc's defaults, blocks above the mmap threshold (128 KiB, adapting up to
/// 32 MiB) are mmap'ed and unmapped each time and the heap top is trimmed on free, so every step
/// page-faults its buffers back in (the kernel zeroes each page). Raising the mmap threshold and
/// the trim threshold lets malloc reuse the blocks; peak RSS is unchanged because the same blocks
/// are reused (docs/performance.md has the before/after).
///
/// Does nothing when the user configured malloc (GLIBC_TUNABLES, MALLOC_MMAP_THRESHOLD_,
/// MALLOC_TRIM_THRESHOLD_; the GLIBC_TUNABLES that request_huge_page_heap() sets is not the
/// user's) or on a C library without mallopt. Returns a one-line description of what is in
/// effect ("retain (mmap threshold 1024 MiB, trim threshold 2047 MiB)", "glibc defaults",
/// "user settings (GLIBC_TUNABLES)"), with "; heap in 2 MiB pages (glibc.malloc.hugetlb=1)"
/// appended when huge_page_heap().
std::string retain_freed_memory();

/// What retain_freed_memory() last did in this process ("glibc defaults" before any call).
std::string allocator_policy();

}  // namespace recsys::util

namespace torch {
class Tensor;
}

namespace recsys::util {

/// Asks the kernel to back a large CPU tensor's memory with 2 MiB pages (transparent huge pages:
/// madvise MADV_HUGEPAGE on the whole 2 MiB-aligned pages inside its storage, then MADV_COLLAPSE
/// to convert the pages already touched now rather than when khugepaged gets to them). Row-wise
/// lookups and optimizer updates read random rows of tables of tens of megabytes; with 4 KiB
/// pages nearly every row costs a TLB miss and a page walk. Best effort: returns the bytes
/// advised (0 when madvise refuses, as a kernel without transparent huge pages does, the tensor
/// is not a CPU tensor, it holds no whole aligned 2 MiB page, or set_huge_pages(false)); the
/// advice is accepted but has no effect where the system's mode is "never": what the kernel
/// actually gave shows in huge_pages_mb(). A kernel without MADV_COLLAPSE (before Linux 6.1) still backs memory
/// faulted in later with huge pages. The tensor's values and layout are unchanged.
/// train::Optimizer calls it for every parameter of 4 MiB or more and for its state.
int64_t prefer_huge_pages(const torch::Tensor& t);

/// Process-wide switch for prefer_huge_pages (on by default; `recsys bench --disable
/// huge_pages` measures without).
void set_huge_pages(bool on);
bool huge_pages_enabled();

/// The process's anonymous memory in transparent huge pages, MiB (/proc/self/smaps_rollup; 0
/// where it cannot be read).
double huge_pages_mb();

/// glibc's malloc backs the memory it takes from the system with transparent huge pages when
/// the process starts with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc 2.35 and later; older
/// ones ignore it). A training step's activations and gradients then stream through 2 MiB
/// pages (hardware prefetchers stop at page boundaries; fewer TLB misses): measured 1.02-1.07x
/// on the bench workloads (docs/performance.md). A tunable is read at start-up only, so this
/// sets it for a re-execution of the binary: it sets GLIBC_TUNABLES and the marker
/// RECSYS_HUGE_HEAP=1 and returns true when none of GLIBC_TUNABLES, MALLOC_MMAP_THRESHOLD_,
/// MALLOC_TRIM_THRESHOLD_ is set (the user's malloc settings win), the marker is not set already
/// (RECSYS_HUGE_HEAP=0 in the environment keeps `train`, `sweep` and `bench` on 4 KiB pages) and
/// huge_page_heap_supported(); otherwise it changes nothing and returns false. The caller execs
/// (or calls forget_huge_page_heap_request() when the exec fails). The two variables stay in the
/// environment of the processes it starts.
bool request_huge_page_heap();
void forget_huge_page_heap_request();

/// Whether the tunable can take effect here: glibc 2.35 or later, and transparent huge pages
/// enabled in /sys/kernel/mm/transparent_hugepage/enabled ("always" or "madvise").
bool huge_page_heap_supported();

/// Whether this process started with the tunable request_huge_page_heap() sets, where it takes
/// effect.
bool huge_page_heap();

}  // namespace recsys::util

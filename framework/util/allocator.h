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
/// MALLOC_TRIM_THRESHOLD_) or on a C library without mallopt. Returns a one-line description
/// of what is in effect ("retain (mmap threshold 1024 MiB, trim threshold 2047 MiB)",
/// "glibc defaults", "user settings (GLIBC_TUNABLES)").
std::string retain_freed_memory();

/// What retain_freed_memory() last did in this process ("glibc defaults" before any call).
std::string allocator_policy();

}  // namespace recsys::util

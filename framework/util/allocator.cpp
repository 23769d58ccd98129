#include "framework/util/allocator.h"

#include <cstdlib>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace recsys::util {

namespace {

std::string& policy() {
  static std::string p = "glibc defaults";
  return p;
}

}  // namespace

std::string retain_freed_memory() {
#if defined(__GLIBC__)
  for (const char* var : {"GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}) {
    if (std::getenv(var) != nullptr) {
      policy() = std::string("user settings (") + var + ")";
      return policy();
    }
  }
  constexpr int kMiB = 1 << 20;
  constexpr int kMmapThreshold = 1024 * kMiB;  // blocks below this come from the reusable heap
  constexpr int kTrimThreshold = 2047 * kMiB;  // free heap top kept up to this size
  const bool ok = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 &&
                  mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
  policy() = ok ? "retain (mmap threshold 1024 MiB, trim threshold 2047 MiB)"
                : "glibc defaults (mallopt refused)";
#endif
  return policy();
}

std::string allocator_policy() { return policy(); }

}  // namespace recsys::util

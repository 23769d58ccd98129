#include "framework/util/allocator.h"

#include <sys/mman.h>
#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cstdlib>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace recsys::util {

namespace {

std::atomic<bool> g_huge_pages{true};

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

int64_t prefer_huge_pages(const torch::Tensor& t) {
#if defined(MADV_HUGEPAGE)
  if (!g_huge_pages.load(std::memory_order_relaxed) || !t.defined() || !t.device().is_cpu() ||
      !t.has_storage())
    return 0;
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  const auto& storage = t.storage();
  const auto begin = reinterpret_cast<uintptr_t>(storage.data());
  const uintptr_t end = begin + storage.nbytes();
  const uintptr_t first = (begin + kHuge - 1) & ~(kHuge - 1), last = end & ~(kHuge - 1);
  if (begin == 0 || last <= first) return 0;
  void* at = reinterpret_cast<void*>(first);
  const size_t len = last - first;
  if (madvise(at, len, MADV_HUGEPAGE) != 0) return 0;
  // MADV_COLLAPSE (Linux 6.1; glibc's headers may not name it): refused by older kernels, where
  // memory faulted in later still gets huge pages.
  constexpr int kMadvCollapse = 25;
  madvise(at, len, kMadvCollapse);
  return static_cast<int64_t>(len);
#else
  (void)t;
  return 0;
#endif
}

void set_huge_pages(bool on) { g_huge_pages = on; }
bool huge_pages_enabled() { return g_huge_pages.load(); }

double huge_pages_mb() {
  std::FILE* f = std::fopen("/proc/self/smaps_rollup", "r");
  if (!f) return 0;
  char line[256];
  double kb = 0;
  constexpr const char* kKey = "AnonHugePages:";
  while (std::fgets(line, sizeof line, f))
    if (std::strncmp(line, kKey, std::strlen(kKey)) == 0) {
      kb = std::atof(line + std::strlen(kKey));
      break;
    }
  std::fclose(f);
  return kb / 1024.0;
}

}  // namespace recsys::util

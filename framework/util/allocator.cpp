#include "framework/util/allocator.h"

#include <sys/mman.h>
#include <torch/torch.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <cstdlib>

#if defined(__GLIBC__)
#include <gnu/libc-version.h>
#include <malloc.h>
#endif

namespace recsys::util {

namespace {

std::atomic<bool> g_huge_pages{true};

constexpr const char* kHugeHeapTunable = "glibc.malloc.hugetlb=1";
constexpr const char* kHugeHeapMarker = "RECSYS_HUGE_HEAP";

// Whether the environment holds our tunable (set by request_huge_page_heap, here or in a parent).
bool ours_in_environment() {
  const char* t = std::getenv("GLIBC_TUNABLES");
  const char* m = std::getenv(kHugeHeapMarker);
  return t != nullptr && m != nullptr && std::strcmp(t, kHugeHeapTunable) == 0 &&
         std::strcmp(m, "1") == 0;
}

// glibc's version at run time, as major * 1000 + minor (0 where unknown).
int glibc_version() {
#if defined(__GLIBC__)
  int major = 0, minor = 0;
  if (std::sscanf(gnu_get_libc_version(), "%d.%d", &major, &minor) == 2) return major * 1000 + minor;
#endif
  return 0;
}

// Read before main: what glibc saw when the process started.
const bool g_started_with_huge_heap = ours_in_environment() && huge_page_heap_supported();

std::string with_heap(std::string p) {
  if (g_started_with_huge_heap) p += std::string("; heap in 2 MiB pages (") + kHugeHeapTunable + ")";
  return p;
}

std::string& policy() {
  static std::string p = with_heap("glibc defaults");
  return p;
}

}  // namespace

std::string retain_freed_memory() {
#if defined(__GLIBC__)
  for (const char* var : {"GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}) {
    if (std::getenv(var) != nullptr && !(std::strcmp(var, "GLIBC_TUNABLES") == 0 &&
                                         ours_in_environment())) {
      policy() = std::string("user settings (") + var + ")";
      return policy();
    }
  }
  constexpr int kMiB = 1 << 20;
  constexpr int kMmapThreshold = 1024 * kMiB;  // blocks below this come from the reusable heap
  constexpr int kTrimThreshold = 2047 * kMiB;  // free heap top kept up to this size
  const bool ok = mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 &&
                  mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
  policy() = with_heap(ok ? "retain (mmap threshold 1024 MiB, trim threshold 2047 MiB)"
                          : "glibc defaults (mallopt refused)");
#endif
  return policy();
}

std::string allocator_policy() { return policy(); }

bool huge_page_heap_supported() {
  if (glibc_version() < 2035) return false;  // glibc.malloc.hugetlb came with 2.35
  std::FILE* f = std::fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
  if (!f) return false;
  char line[128] = {0};
  const bool ok = std::fgets(line, sizeof line, f) != nullptr &&
                  std::strstr(line, "[never]") == nullptr;
  std::fclose(f);
  return ok;
}

bool request_huge_page_heap() {
#if defined(__GLIBC__)
  if (!huge_page_heap_supported()) return false;
  for (const char* var :
       {"GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", kHugeHeapMarker})
    if (std::getenv(var) != nullptr) return false;
  setenv("GLIBC_TUNABLES", kHugeHeapTunable, 1);
  setenv(kHugeHeapMarker, "1", 1);
  return true;
#else
  return false;
#endif
}

void forget_huge_page_heap_request() {
  if (!ours_in_environment()) return;
  unsetenv("GLIBC_TUNABLES");
  unsetenv(kHugeHeapMarker);
}

bool huge_page_heap() { return g_started_with_huge_heap; }

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

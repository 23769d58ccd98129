// recsys::util::retain_freed_memory: freed step-sized blocks are reused without page faults;
// recsys::util::prefer_huge_pages: large tables advised into 2 MiB pages, values unchanged.
#include "framework/util/allocator.h"

#include <sys/resource.h>
#include <torch/torch.h>

#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include <cstdlib>
#include <cstring>

#include "support.h"

namespace {

long minor_faults() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_minflt;
}

// Allocate, touch every page of, and free a block `rounds` times; the minor page faults taken.
long faults_of_reallocating(size_t bytes, int rounds) {
  const long before = minor_faults();
  for (int i = 0; i < rounds; ++i) {
    auto* p = static_cast<char*>(std::malloc(bytes));
    REQUIRE(p != nullptr);
    std::memset(p, i + 1, bytes);
    // The compiler may drop a malloc/memset/free whose memory nobody reads: make it observable.
    __asm__ volatile("" : : "r"(p) : "memory");
    std::free(p);
  }
  return minor_faults() - before;
}

}  // namespace

TEST_CASE("retain_freed_memory keeps a freed 48 MiB block for the next step", "[kernels]") {
#if !defined(__GLIBC__)
  WARN("skipped: mallopt is glibc's");
  return;
#endif
  if (std::getenv("GLIBC_TUNABLES") || std::getenv("MALLOC_MMAP_THRESHOLD_") ||
      std::getenv("MALLOC_TRIM_THRESHOLD_")) {
    CHECK(recsys::util::retain_freed_memory().rfind("user settings", 0) == 0);
    WARN("skipped: malloc is configured by the environment");
    return;
  }
  const std::string policy = recsys::util::retain_freed_memory();
  CHECK(policy.rfind("retain", 0) == 0);
  CHECK(recsys::util::allocator_policy() == policy);
  // 48 MiB is above glibc's largest adaptive mmap threshold (32 MiB): with the defaults each
  // round maps fresh zeroed pages (12k faults per round). Retained, only the first round faults.
  const size_t bytes = size_t{48} << 20;
  const long pages = static_cast<long>(bytes / 4096);
  (void)faults_of_reallocating(bytes, 1);  // the first use may fault its pages in
  const long later = faults_of_reallocating(bytes, 4);
  INFO("minor faults over 4 rounds: " << later << " (one round of pages: " << pages << ")");
  CHECK(later < pages / 4);
}

namespace {

// Whether transparent huge pages can be asked for with madvise ("always" or "madvise").
bool thp_available() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string line;
  return std::getline(f, line) && line.find("[never]") == std::string::npos;
}

}  // namespace

TEST_CASE("prefer_huge_pages advises the whole 2 MiB pages of a large tensor, values unchanged",
          "[kernels]") {
  using recsys::util::prefer_huge_pages;
  constexpr int64_t kHuge = int64_t{2} << 20;
  torch::manual_seed(3);
  auto big = torch::randn({200003, 16});  // 12.8 MB, not a multiple of 2 MiB
  const auto before = big.clone();
  const int64_t bytes = static_cast<int64_t>(big.nbytes());
  CHECK(prefer_huge_pages(torch::Tensor()) == 0);
  CHECK(prefer_huge_pages(torch::randn({1000, 16})) == 0);  // 64 KB: no whole 2 MiB page
  recsys::util::set_huge_pages(false);
  CHECK_FALSE(recsys::util::huge_pages_enabled());
  CHECK(prefer_huge_pages(big) == 0);
  recsys::util::set_huge_pages(true);
  const int64_t advised = prefer_huge_pages(big);
  // madvise accepts the advice even where the system's mode is "never" (it then has no effect);
  // a kernel built without transparent huge pages refuses it (0).
  CHECK(advised % kHuge == 0);
  CHECK(advised <= bytes);
  if (thp_available()) {
    // The aligned interior: all of the tensor but less than 2 MiB at each end.
    CHECK(advised > bytes - 2 * kHuge);
    INFO("process memory in huge pages: " << recsys::util::huge_pages_mb() << " MiB");
  } else {
    WARN("transparent huge pages are off on this machine: the advice has no effect");
  }
  CHECK(torch::equal(big, before));
  // Still ordinary memory: written and read back.
  big.mul_(2);
  CHECK(torch::allclose(big, before * 2));
}

TEST_CASE("request_huge_page_heap sets glibc's hugetlb tunable only where the user set nothing",
          "[kernels]") {
  using recsys::util::forget_huge_page_heap_request;
  using recsys::util::request_huge_page_heap;
  // This process's own environment is put back afterwards.
  const char* names[] = {"GLIBC_TUNABLES", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                         "RECSYS_HUGE_HEAP"};
  std::vector<std::pair<std::string, std::string>> saved;
  for (const char* n : names) {
    if (const char* v = std::getenv(n)) saved.emplace_back(n, v);
    unsetenv(n);
  }
  auto env = [](const char* n) {
    const char* v = std::getenv(n);
    return std::string(v ? v : "(unset)");
  };

  if (!recsys::util::huge_page_heap_supported()) {
    // glibc before 2.35 or transparent huge pages off: never requested.
    CHECK_FALSE(request_huge_page_heap());
    CHECK(env("GLIBC_TUNABLES") == "(unset)");
    WARN("glibc.malloc.hugetlb cannot take effect here: request checks skipped");
    for (const auto& [n, v] : saved) setenv(n.c_str(), v.c_str(), 1);
    return;
  }
  // Nothing set: the tunable and the marker are set for the re-execution.
  CHECK(request_huge_page_heap());
  CHECK(env("GLIBC_TUNABLES") == "glibc.malloc.hugetlb=1");
  CHECK(env("RECSYS_HUGE_HEAP") == "1");
  // Already requested (a re-executed or child recsys): nothing more to do.
  CHECK_FALSE(request_huge_page_heap());
  // A failed exec takes the request back.
  forget_huge_page_heap_request();
  CHECK(env("GLIBC_TUNABLES") == "(unset)");
  CHECK(env("RECSYS_HUGE_HEAP") == "(unset)");

  // The user's malloc settings win, and are never taken back as if they were ours.
  setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2", 1);
  CHECK_FALSE(request_huge_page_heap());
  CHECK(env("GLIBC_TUNABLES") == "glibc.malloc.arena_max=2");
  forget_huge_page_heap_request();
  CHECK(env("GLIBC_TUNABLES") == "glibc.malloc.arena_max=2");
  unsetenv("GLIBC_TUNABLES");
  setenv("MALLOC_TRIM_THRESHOLD_", "1000000", 1);
  CHECK_FALSE(request_huge_page_heap());
  CHECK(env("GLIBC_TUNABLES") == "(unset)");
  unsetenv("MALLOC_TRIM_THRESHOLD_");

  // RECSYS_HUGE_HEAP set to anything else opts out.
  setenv("RECSYS_HUGE_HEAP", "0", 1);
  CHECK_FALSE(request_huge_page_heap());
  CHECK(env("GLIBC_TUNABLES") == "(unset)");
  unsetenv("RECSYS_HUGE_HEAP");

  // This process started without the tunable unless its environment says so.
  if (saved.empty()) CHECK_FALSE(recsys::util::huge_page_heap());

  for (const char* n : names) unsetenv(n);
  for (const auto& [n, v] : saved) setenv(n.c_str(), v.c_str(), 1);
}

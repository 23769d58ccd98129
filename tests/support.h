// Shared helpers for the Catch2 tests: seeding, tolerance checks, fixture paths.
#pragma once
#include <unistd.h>
#include <catch.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <string>

namespace recsys::testing {

inline void seed(uint64_t s = 0) { torch::manual_seed(s); }

/// Element-wise |a - b| <= atol + rtol * |b|, with a readable failure message.
inline void require_close(const torch::Tensor& a, const torch::Tensor& b, double rtol = 1e-5,
                          double atol = 1e-6) {
  REQUIRE(a.sizes() == b.sizes());
  auto da = a.detach().to(torch::kFloat64).cpu();
  auto db = b.detach().to(torch::kFloat64).cpu();
  auto diff = (da - db).abs();
  auto tol = atol + rtol * db.abs();
  bool ok = (diff <= tol).all().item<bool>();
  if (!ok) {
    INFO("max abs diff " << diff.max().item<double>() << "\nactual:\n"
                         << da << "\nexpected:\n" << db);
    REQUIRE(ok);
  }
}

inline void require_close(double a, double b, double tol = 1e-9) {
  INFO("actual " << a << " expected " << b);
  REQUIRE(std::abs(a - b) <= tol);
}

/// Sets LibTorch's intra-op thread count for a scope; the previous count comes back however the
/// scope ends (a failed REQUIRE throws).
struct ThreadCount {
  int previous;
  explicit ThreadCount(int n) : previous(at::get_num_threads()) { at::set_num_threads(n); }
  void set(int n) { at::set_num_threads(n); }
  ~ThreadCount() { at::set_num_threads(previous); }
  ThreadCount(const ThreadCount&) = delete;
  ThreadCount& operator=(const ThreadCount&) = delete;
};

/// Tests run with the repository root as working directory (see CMakeLists.txt).
inline std::string shared_data(const std::string& rel) { return "../shared/data/" + rel; }

/// A fresh empty temporary directory for one test.
/// The prefix of this test process's scratch directories: the process id keeps two test runs on
/// one machine (a developer's and CI's) out of each other's files.
inline std::string temp_prefix() { return "recsys_test_" + std::to_string(::getpid()) + "_"; }

/// A fresh, empty scratch directory for one test (removed again when the test run ends).
inline std::filesystem::path temp_dir(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / (temp_prefix() + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

/// Removes this process's scratch directories (called once the test run is over).
inline void remove_temp_dirs() {
  std::error_code ec;
  const std::string prefix = temp_prefix();
  std::vector<std::filesystem::path> mine;
  for (auto& e : std::filesystem::directory_iterator(std::filesystem::temp_directory_path(), ec))
    if (e.path().filename().string().rfind(prefix, 0) == 0) mine.push_back(e.path());
  for (auto& p : mine) std::filesystem::remove_all(p, ec);
}

}  // namespace recsys::testing

// util::ShareGroup / shared_for (work sharing between side-by-side parts), and the products and
// kernels that cut their work for it: inside a part, the same results as outside one.
#include "framework/util/share.h"

#include <ATen/Parallel.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "framework/util/blas.h"
#include "models/layers/mlp_fused.h"
#include "models/layers/rows.h"
#include "support.h"

using namespace recsys::util;
using recsys::testing::ThreadCount;

namespace {

/// Runs `parts` side by side as train::run_staged's branches do: one intra-op thread each, every
/// thread helping (ShareGroup) once its own parts are done. Returns each part's exception text.
std::vector<std::string> side_by_side(const std::vector<std::function<void()>>& parts) {
  ShareGroup group(static_cast<int64_t>(parts.size()), at::get_num_threads());
  std::vector<std::string> errors(parts.size());
  at::parallel_for(0, static_cast<int64_t>(parts.size()), 1, [&](int64_t j0, int64_t j1) {
    const ShareGroup::Member member(group);
    for (int64_t j = j0; j < j1; ++j) {
      try {
        parts[static_cast<size_t>(j)]();
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(j)] = e.what();
      }
      group.part_finished();
    }
    group.help_until_finished();
  });
  return errors;
}

/// Part 0 signals that it is done (and goes on to help); part 1 waits for that, then runs `work`:
/// a helper is certainly waiting when `work` posts its chunks.
std::vector<std::string> with_idle_helper(const std::function<void()>& work) {
  std::atomic<bool> first_done{false};
  return side_by_side({[&] { first_done = true; },
                       [&] {
                         while (!first_done) std::this_thread::yield();
                         work();
                       }});
}

struct Threads {
  std::mutex mu;
  std::set<std::thread::id> seen;
  void note() {
    std::lock_guard<std::mutex> lock(mu);
    seen.insert(std::this_thread::get_id());
  }
};

}  // namespace

TEST_CASE("shared_for outside a side-by-side part refuses, so the caller takes its own path", "[util]") {
  int runs = 0;
  REQUIRE_FALSE(shared_for(4, [&](int64_t) { ++runs; }));
  REQUIRE(runs == 0);
  REQUIRE(shared_threads() == 0);
  // parallel_for_shared falls back to ATen's split: every index once.
  std::vector<std::atomic<int>> hits(1000);
  parallel_for_shared(0, 1000, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) ++hits[static_cast<size_t>(i)];
  });
  for (const auto& h : hits) REQUIRE(h.load() == 1);
}

TEST_CASE("shared_for runs every chunk once, and an idle part's thread takes some", "[util]") {
  ThreadCount threads(2);
  if (at::get_num_threads() < 2) return;  // one thread: nothing to share with
  std::vector<std::atomic<int>> hits(8);
  Threads seen;
  bool shared = false;
  int64_t inside = -1;
  std::atomic<int> nested{0};
  auto errors = with_idle_helper([&] {
    inside = shared_threads();
    shared = shared_for(8, [&](int64_t c) {
      seen.note();
      // Nested sharing inside a chunk is refused (the chunk runs on whichever thread took it).
      if (shared_threads() != 0 || shared_for(2, [](int64_t) {})) ++nested;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
      ++hits[static_cast<size_t>(c)];
    });
  });
  REQUIRE(nested.load() == 0);
  REQUIRE(errors == std::vector<std::string>{"", ""});
  REQUIRE(shared);
  REQUIRE(inside == 2);
  for (const auto& h : hits) REQUIRE(h.load() == 1);
  // Eight chunks of 5 ms with the other thread waiting: both threads ran some.
  REQUIRE(seen.seen.size() == 2);
}

TEST_CASE("shared_for rethrows a chunk's error once every chunk has run", "[util]") {
  ThreadCount threads(2);
  std::atomic<int> ran{0};
  auto errors = with_idle_helper([&] {
    shared_for(6, [&](int64_t c) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ++ran;
      if (c == 2) throw std::runtime_error("chunk 2 failed");
    });
  });
  REQUIRE(errors[0].empty());
  REQUIRE(errors[1].find("chunk 2 failed") != std::string::npos);
  REQUIRE(ran.load() == 6);
}

TEST_CASE("set_work_sharing(false) turns sharing off inside parts", "[util]") {
  ThreadCount threads(2);
  set_work_sharing(false);
  bool shared = true;
  int64_t inside = -1;
  with_idle_helper([&] {
    inside = shared_threads();
    shared = shared_for(2, [](int64_t) {});
  });
  set_work_sharing(true);
  REQUIRE(work_sharing_enabled());
  REQUIRE_FALSE(shared);
  REQUIRE(inside == 0);
}

TEST_CASE("products and kernels inside a part give exactly their results outside one", "[util]") {
  ThreadCount threads(2);
  torch::manual_seed(3);
  SECTION("gemm_parallel: rows, columns and split-k") {
    struct Shape {
      bool ta, tb;
      int64_t m, n, k;
    };
    for (const auto& s : {Shape{false, true, 300, 96, 64}, Shape{true, false, 8, 256, 80},
                          Shape{true, false, 64, 48, 2048}}) {
      INFO("m " << s.m << " n " << s.n << " k " << s.k);
      auto a = s.ta ? torch::randn({s.k, s.m}) : torch::randn({s.m, s.k});
      auto b = s.tb ? torch::randn({s.n, s.k}) : torch::randn({s.k, s.n});
      auto product = [&](torch::Tensor& c) {
        return (gemm_parallel(s.ta, s.tb, s.m, s.n, s.k, 1.0f, a.data_ptr<float>(), a.size(1),
                              b.data_ptr<float>(), b.size(1), 0.0f, c.data_ptr<float>(), s.n));
      };
      auto outside = torch::empty({s.m, s.n}), inside = torch::empty({s.m, s.n});
      REQUIRE(product(outside));
      bool ok = false;
      with_idle_helper([&] { ok = product(inside); });
      REQUIRE(ok);
      REQUIRE(inside.equal(outside));
      auto expected = (s.ta ? a.t() : a).to(torch::kFloat64).mm((s.tb ? b.t() : b).to(torch::kFloat64));
      recsys::testing::require_close(outside.to(torch::kFloat64), expected, 1e-4, 1e-4);
    }
  }
  SECTION("the MLP tail kernel's outputs and gradients, and the bag kernels'") {
    auto h = torch::randn({700, 96});
    std::vector<torch::Tensor> w{torch::randn({48, 96}) * 0.2, torch::randn({16, 48}) * 0.2};
    std::vector<torch::Tensor> bias{torch::randn({48}) * 0.1, torch::randn({16}) * 0.1};
    auto up = torch::randn({700, 16});
    auto table = torch::randn({500, 32});
    auto ids = torch::randint(0, 500, {700, 6}, torch::kInt64);
    auto run = [&] {
      auto hv = h.clone().requires_grad_(true);
      std::vector<torch::Tensor> wv, bv;
      for (auto& t : w) wv.push_back(t.clone().requires_grad_(true));
      for (auto& t : bias) bv.push_back(t.clone().requires_grad_(true));
      auto tv = table.clone().requires_grad_(true);
      auto y = recsys::models::mlp_tail_fused(hv, wv, bv, /*normalize=*/true);
      auto pooled = recsys::models::pooled_rows_sparse(tv, ids, /*mean=*/true);
      ((y * up).sum() + pooled.pow(2).sum()).backward();
      std::vector<torch::Tensor> out{y.detach(), hv.grad(), pooled.detach(), tv.grad().to_dense()};
      for (auto& t : wv) out.push_back(t.grad());
      for (auto& t : bv) out.push_back(t.grad());
      return out;
    };
    auto outside = run();
    std::vector<torch::Tensor> inside;
    auto errors = with_idle_helper([&] { inside = run(); });
    REQUIRE(errors[1].empty());
    REQUIRE(inside.size() == outside.size());
    for (size_t k = 0; k < inside.size(); ++k) {
      INFO("output " << k);
      REQUIRE(inside[k].equal(outside[k]));
    }
  }
}

// The background batch producer: order, errors, shutdown.
#include "framework/train/prefetch.h"

#include <atomic>
#include <chrono>
#include <stdexcept>

#include "support.h"

using recsys::train::Batch;
using recsys::train::PrefetchStream;

namespace {

struct IntBatch : Batch {
  explicit IntBatch(int64_t v) : value(v) {}
  int64_t value;
  int64_t size() const override { return 1; }
};

/// Yields 0, 1, ..., n - 1, then nullptr; throws at `throw_at` when >= 0.
PrefetchStream::Producer counter(int64_t n, int64_t throw_at = -1, std::atomic<int64_t>* calls = nullptr) {
  auto next = std::make_shared<int64_t>(0);
  return [=]() -> std::unique_ptr<Batch> {
    if (calls) ++*calls;
    int64_t v = (*next)++;
    if (v == throw_at) throw std::runtime_error("producer failed at " + std::to_string(v));
    if (n >= 0 && v >= n) return nullptr;
    return std::make_unique<IntBatch>(v);
  };
}

int64_t value(const std::unique_ptr<Batch>& b) { return static_cast<IntBatch&>(*b).value; }

}  // namespace

TEST_CASE("PrefetchStream preserves the producer's order", "[train]") {
  for (int64_t depth : {0, 1, 3, 64}) {
    INFO("depth " << depth);
    PrefetchStream s(counter(50), depth);
    for (int64_t i = 0; i < 50; ++i) {
      auto b = s.next();
      REQUIRE(b);
      CHECK(value(b) == i);
    }
    CHECK(s.next() == nullptr);
  }
}

TEST_CASE("PrefetchStream rethrows the producer's exception after the earlier batches", "[train]") {
  for (int64_t depth : {0, 2}) {
    INFO("depth " << depth);
    PrefetchStream s(counter(100, 5), depth);
    for (int64_t i = 0; i < 5; ++i) {
      auto b = s.next();
      REQUIRE(b);
      CHECK(value(b) == i);
    }
    CHECK_THROWS_WITH(s.next(), Catch::Contains("producer failed at 5"));
  }
}

TEST_CASE("PrefetchStream stays at most depth ahead and can be destroyed early", "[train]") {
  std::atomic<int64_t> calls{0};
  auto start = std::chrono::steady_clock::now();
  {
    PrefetchStream s(counter(-1, -1, &calls), 3);  // an endless producer
    auto b = s.next();
    REQUIRE(b);
    CHECK(value(b) == 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    // One consumed, three queued, possibly one in flight.
    CHECK(calls.load() <= 5);
    CHECK(calls.load() >= 4);
  }
  {
    PrefetchStream never_read(counter(-1), 2);  // destroyed without a single next()
  }
  {
    PrefetchStream finished(counter(2), 4);  // producer already done
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(seconds < 5.0);
}

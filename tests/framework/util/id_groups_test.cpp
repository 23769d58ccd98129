// recsys::util::group_ids: every entry in exactly one group, in entry order, rows in order of
// first appearance, bad ids named, the slot array left clean.
#include "framework/util/id_groups.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "support.h"

using recsys::util::group_ids;
using recsys::util::IdGroups;

namespace {

// id -> its entries, in order, from a grouping; checks the structure on the way.
std::map<int64_t, std::vector<int64_t>> by_id(const IdGroups& g, const std::vector<int64_t>& ids) {
  std::map<int64_t, std::vector<int64_t>> out;
  REQUIRE(g.start.size() == g.rows.size() + 1);
  REQUIRE(g.start.front() == 0);
  REQUIRE(static_cast<size_t>(g.start.back()) == g.order.size());
  for (size_t u = 0; u < g.rows.size(); ++u) {
    REQUIRE(g.start[u + 1] > g.start[u]);  // no empty group
    REQUIRE(out.count(g.rows[u]) == 0);    // each id once
    auto& entries = out[g.rows[u]];
    for (int64_t e = g.start[u]; e < g.start[u + 1]; ++e) {
      const int64_t k = g.order[static_cast<size_t>(e)];
      REQUIRE(ids[static_cast<size_t>(k)] == g.rows[u]);
      if (!entries.empty()) REQUIRE(k > entries.back());  // entry order within a group
      entries.push_back(k);
    }
  }
  return out;
}

}  // namespace

TEST_CASE("group_ids groups every entry once, rows in order of first appearance", "[kernels]") {
  std::mt19937_64 rng(5);
  const int64_t vocab = 60000;
  std::vector<int32_t> slot(static_cast<size_t>(vocab), -1);
  for (int64_t n : {int64_t{1}, int64_t{100}, int64_t{30000}}) {
    CAPTURE(n);
    // Zipf-like: a heavy head, repeats, the skipped id 0 sprinkled in.
    std::vector<int64_t> ids(static_cast<size_t>(n));
    for (auto& v : ids) {
      const double u = std::uniform_real_distribution<double>(0, 1)(rng);
      v = u < 0.05 ? 0 : static_cast<int64_t>(std::pow(static_cast<double>(vocab - 1), u * u));
    }
    std::map<int64_t, std::vector<int64_t>> expected;
    for (int64_t k = 0; k < n; ++k)
      if (ids[static_cast<size_t>(k)] != 0) expected[ids[static_cast<size_t>(k)]].push_back(k);
    {
      IdGroups g;
      int64_t bad = 0;
      REQUIRE(group_ids(ids.data(), n, /*skip=*/0, slot, g, bad));
      CHECK(by_id(g, ids) == expected);
      {
        std::vector<int64_t> first_seen;
        std::vector<char> seen(static_cast<size_t>(vocab), 0);
        for (auto v : ids)
          if (v != 0 && !seen[static_cast<size_t>(v)]) {
            seen[static_cast<size_t>(v)] = 1;
            first_seen.push_back(v);
          }
        CHECK(g.rows == first_seen);
      }
      CHECK(std::all_of(slot.begin(), slot.end(), [](int32_t s) { return s == -1; }));
    }
  }
  // An id outside the table: the first such entry (in entry order) is named, and the slots are
  // left clean.
  {
    std::vector<int64_t> ids(20000, 5);
    for (size_t k = 0; k < ids.size(); ++k) ids[k] = static_cast<int64_t>(k % 1000);
    ids[15000] = vocab + 8;
    ids[17000] = vocab;
    ids[12000] = -1;
    IdGroups g;
    int64_t bad = 0;
    CHECK_FALSE(group_ids(ids.data(), static_cast<int64_t>(ids.size()), 0, slot, g, bad));
    CHECK(bad == -1);
    CHECK(std::all_of(slot.begin(), slot.end(), [](int32_t s) { return s == -1; }));
  }
}

TEST_CASE("group_ids_sorted groups every entry once, ids ascending, payloads per bag in entry order",
          "[kernels]") {
  using recsys::util::group_ids_sorted;
  std::mt19937_64 rng(7);
  // Bounds of one digit, several digits (a digit every id shares is skipped), and beyond 32
  // bits (the unpacked path).
  for (int64_t bound : {int64_t{1000}, int64_t{300000}, int64_t{1} << 20, (int64_t{1} << 33) + 5}) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{100}, int64_t{30000}}) {
      for (int64_t per : {int64_t{1}, int64_t{3}}) {
        CAPTURE(bound, n, per);
        std::vector<int64_t> ids(static_cast<size_t>(n));
        for (auto& v : ids) {
          const double u = std::uniform_real_distribution<double>(0, 1)(rng);
          v = u < 0.05 ? 0 : static_cast<int64_t>(std::pow(static_cast<double>(bound - 1), u * u));
        }
        if (n > 10) ids[3] = bound - 1;  // the largest id
        std::map<int64_t, std::vector<int64_t>> expected;
        for (int64_t k = 0; k < n; ++k)
          if (ids[static_cast<size_t>(k)] != 0) expected[ids[static_cast<size_t>(k)]].push_back(k / per);
        IdGroups g;
        int64_t bad = 0;
        REQUIRE(group_ids_sorted(ids.data(), n, /*skip=*/0, bound, per, g, bad));
        REQUIRE(g.start.size() == g.rows.size() + 1);
        REQUIRE(g.start.front() == 0);
        REQUIRE(static_cast<size_t>(g.start.back()) == g.order.size());
        std::map<int64_t, std::vector<int64_t>> got;
        for (size_t u = 0; u < g.rows.size(); ++u) {
          if (u > 0) REQUIRE(g.rows[u] > g.rows[u - 1]);  // ascending, each id once
          REQUIRE(g.start[u + 1] > g.start[u]);
          got[g.rows[u]].assign(g.order.begin() + g.start[u], g.order.begin() + g.start[u + 1]);
        }
        CHECK(got == expected);  // payloads k / per, in entry order within each id
      }
    }
  }
  // Ids outside [0, bound): the first in entry order is named; the skipped id is not checked.
  std::vector<int64_t> ids{4, -7, 2, 9, 12, 3};
  IdGroups g;
  int64_t bad = 0;
  CHECK_FALSE(group_ids_sorted(ids.data(), 6, /*skip=*/-7, /*bound=*/10, 1, g, bad));
  CHECK(bad == 12);
  CHECK_FALSE(group_ids_sorted(ids.data(), 6, /*skip=*/0, /*bound=*/10, 1, g, bad));
  CHECK(bad == -7);
  REQUIRE(group_ids_sorted(ids.data(), 4, /*skip=*/-7, /*bound=*/10, 2, g, bad));
  CHECK(g.rows == std::vector<int64_t>{2, 4, 9});
  CHECK(g.order == std::vector<int64_t>{1, 0, 1});
}

#include "framework/util/id_groups.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>

namespace recsys::util {

namespace {
constexpr int64_t kPrefetchAhead = 16;
}  // namespace

bool group_ids(const int64_t* ids, int64_t n, int64_t skip, std::vector<int32_t>& slot,
               IdGroups& out, int64_t& bad) {
  out.rows.clear();
  const auto size = static_cast<int64_t>(slot.size());
  // The slots this call set are reset however it leaves (an allocation failure included).
  struct Reset {
    std::vector<int32_t>& slot;
    const std::vector<int64_t>& rows;
    ~Reset() {
      for (auto r : rows) slot[static_cast<size_t>(r)] = -1;
    }
  } reset{slot, out.rows};
  std::vector<int32_t> entry_slot(static_cast<size_t>(n), -1);
  std::vector<int64_t> count;
  int32_t* slots = slot.data();
  for (int64_t k = 0; k < n; ++k) {
    // The slot array is table-sized (hundreds of kilobytes, beyond the core's L2): ask for the
    // slot of an entry a few ahead while this one is handled.
    if (k + kPrefetchAhead < n) {
      const int64_t ahead = ids[k + kPrefetchAhead];
      if (ahead >= 0 && ahead < size) __builtin_prefetch(slots + ahead, 1);
    }
    const int64_t r = ids[k];
    if (r == skip) continue;
    if (r < 0 || r >= size) {
      bad = r;
      return false;
    }
    int32_t s = slot[static_cast<size_t>(r)];
    if (s < 0) {
      // Recorded in rows before the slot is set, so that the reset always finds it.
      out.rows.push_back(r);
      count.push_back(0);
      s = slot[static_cast<size_t>(r)] = static_cast<int32_t>(out.rows.size() - 1);
    }
    ++count[static_cast<size_t>(s)];
    entry_slot[static_cast<size_t>(k)] = s;
  }
  const size_t u = out.rows.size();
  out.start.assign(u + 1, 0);
  for (size_t g = 0; g < u; ++g) out.start[g + 1] = out.start[g] + count[g];
  std::vector<int64_t> fill(out.start.begin(), out.start.end() - 1);
  out.order.resize(static_cast<size_t>(out.start[u]));
  for (int64_t k = 0; k < n; ++k)
    if (entry_slot[static_cast<size_t>(k)] >= 0) out.order[fill[entry_slot[k]]++] = k;
  return true;
}

namespace {

constexpr int kDigitBits = 11;
constexpr uint64_t kDigitMask = (uint64_t{1} << kDigitBits) - 1;
// From this many entries group_ids_sorted sorts two halves on two threads.
constexpr int64_t kParallelEntries = 8192;

// Entries k in [k0, k1) whose id is not `skip`, as id << 32 | k / per, appended to `a`; false
// (with `bad`) at the first id outside [0, bound).
bool pack(const int64_t* ids, int64_t k0, int64_t k1, int64_t skip, int64_t bound, int64_t per,
          std::vector<uint64_t>& a, int64_t& bad) {
  a.reserve(static_cast<size_t>(k1 - k0));
  for (int64_t k = k0, p = k0 / per, j = k0 % per; k < k1; ++k) {
    const int64_t r = ids[k];
    if (r != skip) {
      if (r < 0 || r >= bound) {
        bad = r;
        return false;
      }
      a.push_back(static_cast<uint64_t>(r) << 32 | static_cast<uint64_t>(p));
    }
    if (++j == per) {
      j = 0;
      ++p;
    }
  }
  return true;
}

// Sorts packed entries by their id (the high 32 bits), stably: an LSD radix sort over `passes`
// digits. Entries packed in entry order come out sorted by the whole key.
void radix_sort(std::vector<uint64_t>& a, int passes) {
  const size_t m = a.size();
  if (m < 2) return;
  std::vector<int64_t> hist(static_cast<size_t>(passes) << kDigitBits, 0);
  for (const uint64_t x : a)
    for (int d = 0; d < passes; ++d)
      ++hist[(static_cast<size_t>(d) << kDigitBits) + ((x >> (32 + d * kDigitBits)) & kDigitMask)];
  std::vector<uint64_t> b(m);
  for (int d = 0; d < passes; ++d) {
    int64_t* h = hist.data() + (static_cast<size_t>(d) << kDigitBits);
    // A digit every entry shares orders nothing: skip its pass.
    if (static_cast<size_t>(*std::max_element(h, h + (kDigitMask + 1))) == m) continue;
    int64_t sum = 0;
    for (uint64_t v = 0; v <= kDigitMask; ++v) {
      const int64_t c = h[v];
      h[v] = sum;
      sum += c;
    }
    const int shift = 32 + d * kDigitBits;
    for (size_t e = 0; e < m; ++e) b[static_cast<size_t>(h[(a[e] >> shift) & kDigitMask]++)] = a[e];
    a.swap(b);
  }
}

// The groups of entries sorted by id, into an empty `out` (start = {0}).
void groups_of_sorted(const uint64_t* a, size_t m, IdGroups& out) {
  out.order.reserve(m);
  for (size_t e = 0; e < m; ++e) {
    const auto id = static_cast<int64_t>(a[e] >> 32);
    if (out.rows.empty() || out.rows.back() != id) {
      if (!out.rows.empty()) out.start.push_back(static_cast<int64_t>(e));
      out.rows.push_back(id);
    }
    out.order.push_back(static_cast<int64_t>(a[e] & 0xFFFFFFFFu));
  }
  if (!out.rows.empty()) out.start.push_back(static_cast<int64_t>(m));
}

}  // namespace

bool group_ids_sorted(const int64_t* ids, int64_t n, int64_t skip, int64_t bound, int64_t per,
                      IdGroups& out, int64_t& bad) {
  out.rows.clear();
  out.start.assign(1, 0);
  out.order.clear();
  if (per < 1) per = 1;
  // Entries packed as id << 32 | payload where both fit 32 bits (always, short of 2^32 rows or
  // payloads); sorted by the id's significant bits, in digits of kDigitBits.
  constexpr int64_t kLimit = int64_t{1} << 32;
  int bits = 1;
  while (bits < 63 && (int64_t{1} << bits) < bound) ++bits;
  const int passes = (bits + kDigitBits - 1) / kDigitBits;
  if (!(bound <= kLimit && (n == 0 || (n - 1) / per < kLimit))) {
    // Beyond 32 bits: (id, payload) pairs, sorted stably.
    std::vector<std::pair<int64_t, int64_t>> wide;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t r = ids[k];
      if (r == skip) continue;
      if (r < 0 || r >= bound) {
        bad = r;
        return false;
      }
      wide.emplace_back(r, k / per);
    }
    std::stable_sort(wide.begin(), wide.end(),
                     [](const auto& x, const auto& y) { return x.first < y.first; });
    for (size_t e = 0; e < wide.size(); ++e) {
      if (out.rows.empty() || out.rows.back() != wide[e].first) {
        if (!out.rows.empty()) out.start.push_back(static_cast<int64_t>(e));
        out.rows.push_back(wide[e].first);
      }
      out.order.push_back(wide[e].second);
    }
    if (!out.rows.empty()) out.start.push_back(static_cast<int64_t>(wide.size()));
    return true;
  }
  if (n < kParallelEntries || at::in_parallel_region() || at::get_num_threads() < 2) {
    std::vector<uint64_t> a;
    if (!pack(ids, 0, n, skip, bound, per, a, bad)) return false;
    radix_sort(a, passes);
    groups_of_sorted(a.data(), a.size(), out);
    return true;
  }
  // Two threads: each packs and sorts one half of the entries; the two sorted runs are then
  // merged in two parts split at an id (each part's ids on one thread, the first run's entries
  // first among equal ids: entry order), and the parts' groups concatenated. The same result
  // as one sort.
  std::vector<uint64_t> run[2];
  int64_t bad_in[2] = {0, 0};
  bool ok[2] = {true, true};
  const int64_t mid = n / 2;
  at::parallel_for(0, 2, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      ok[t] = pack(ids, t == 0 ? 0 : mid, t == 0 ? mid : n, skip, bound, per, run[t], bad_in[t]);
      if (ok[t]) radix_sort(run[t], passes);
    }
  });
  for (int t = 0; t < 2; ++t)
    if (!ok[t]) {
      bad = bad_in[t];  // the first half's first bad id comes first in entry order
      return false;
    }
  const auto& longer = run[0].size() >= run[1].size() ? run[0] : run[1];
  if (longer.empty()) return true;
  const uint64_t pivot = longer[longer.size() / 2] >> 32 << 32;  // the first key of the middle id
  size_t cut[2];
  for (int t = 0; t < 2; ++t)
    cut[t] = static_cast<size_t>(std::lower_bound(run[t].begin(), run[t].end(), pivot) - run[t].begin());
  IdGroups part[2];
  at::parallel_for(0, 2, 1, [&](int64_t h0, int64_t h1) {
    for (int64_t h = h0; h < h1; ++h) {
      auto begin = [&](int t) { return run[t].begin() + static_cast<long>(h == 0 ? 0 : cut[t]); };
      auto end = [&](int t) { return h == 0 ? run[t].begin() + static_cast<long>(cut[t]) : run[t].end(); };
      std::vector<uint64_t> merged(static_cast<size_t>((end(0) - begin(0)) + (end(1) - begin(1))));
      std::merge(begin(0), end(0), begin(1), end(1), merged.begin(),
                 [](uint64_t x, uint64_t y) { return (x >> 32) < (y >> 32); });
      part[h].start.assign(1, 0);
      groups_of_sorted(merged.data(), merged.size(), part[h]);
    }
  });
  out = std::move(part[0]);
  const int64_t offset = static_cast<int64_t>(out.order.size());
  out.rows.insert(out.rows.end(), part[1].rows.begin(), part[1].rows.end());
  for (size_t u = 1; u < part[1].start.size(); ++u) out.start.push_back(part[1].start[u] + offset);
  out.order.insert(out.order.end(), part[1].order.begin(), part[1].order.end());
  return true;
}

}  // namespace recsys::util

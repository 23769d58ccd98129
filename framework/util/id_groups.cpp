#include "framework/util/id_groups.h"

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

// emit(id, k / per) for the entries k whose id is not `skip`, in entry order; false (with
// `bad`) at the first id outside [0, bound).
template <typename Emit>
bool for_each_entry(const int64_t* ids, int64_t n, int64_t skip, int64_t bound, int64_t per,
                    int64_t& bad, const Emit& emit) {
  for (int64_t k = 0, p = 0, j = 0; k < n; ++k) {
    const int64_t r = ids[k];
    if (r != skip) {
      if (r < 0 || r >= bound) {
        bad = r;
        return false;
      }
      emit(r, p);
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

// The groups of m entries sorted by id, entry(e) giving entry e's (id, payload), into an empty
// `out` (start = {0}).
template <typename Entry>
void groups_of_sorted(size_t m, const Entry& entry, IdGroups& out) {
  out.order.resize(m);
  out.rows.reserve(m);
  out.start.reserve(m + 1);
  for (size_t e = 0; e < m; ++e) {
    const auto [id, payload] = entry(e);
    if (out.rows.empty() || out.rows.back() != id) {
      if (!out.rows.empty()) out.start.push_back(static_cast<int64_t>(e));
      out.rows.push_back(id);
    }
    out.order[e] = payload;
  }
  if (m > 0) out.start.push_back(static_cast<int64_t>(m));
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
    if (!for_each_entry(ids, n, skip, bound, per, bad,
                        [&](int64_t r, int64_t p) { wide.emplace_back(r, p); }))
      return false;
    std::stable_sort(wide.begin(), wide.end(),
                     [](const auto& x, const auto& y) { return x.first < y.first; });
    groups_of_sorted(wide.size(), [&](size_t e) { return wide[e]; }, out);
    return true;
  }
  std::vector<uint64_t> a;
  a.reserve(static_cast<size_t>(n));
  if (!for_each_entry(ids, n, skip, bound, per, bad, [&](int64_t r, int64_t p) {
        a.push_back(static_cast<uint64_t>(r) << 32 | static_cast<uint64_t>(p));
      }))
    return false;
  radix_sort(a, passes);
  groups_of_sorted(a.size(), [&](size_t e) {
    return std::pair<int64_t, int64_t>(static_cast<int64_t>(a[e] >> 32), static_cast<int64_t>(a[e] & 0xFFFFFFFFu));
  }, out);
  return true;
}

}  // namespace recsys::util

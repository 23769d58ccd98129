#include "framework/util/id_groups.h"

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

}  // namespace recsys::util

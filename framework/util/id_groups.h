#pragma once
#include <cstdint>
#include <vector>

// Grouping of index entries by id, in one pass through a caller-kept id -> group array: the
// optimizer's row-wise updates and the fused lookups' sparse gradients both sum the entries of
// each distinct row.
namespace recsys::util {

/// The distinct ids in order of first appearance (`rows`), and for group u its entries k, in
/// entry order, at order[start[u] .. start[u + 1]).
struct IdGroups {
  std::vector<int64_t> rows, start, order;
};

/// Groups the entries k < n of `ids` whose id is not `skip` (-1: none skipped). `slot` must
/// have -1 for every id on entry and has again on return, however the call leaves: it is the
/// id -> group map, kept by the caller so that no call clears a table-sized array. Returns
/// false (with `bad` = the id) at the first id outside [0, slot.size()).
bool group_ids(const int64_t* ids, int64_t n, int64_t skip, std::vector<int32_t>& slot,
               IdGroups& out, int64_t& bad);

/// Groups the entries k < n of `ids` whose id is not `skip` by id, the distinct ids ascending
/// (`rows`), and gives for group u the payloads k / per of its entries, in entry order, at
/// order[start[u] .. start[u + 1]) (per = 1: the entries themselves; per = L for [B, L] bags:
/// their bags). A radix sort over the ids' significant bits, stable so entry order holds within
/// a group: no table-sized array, and its passes read and write the entries in order, where
/// group_ids looks each id up at random in a table-sized one. Returns false (with `bad` = the
/// id) at the first id, in entry order, outside [0, bound). per must be at least 1.
bool group_ids_sorted(const int64_t* ids, int64_t n, int64_t skip, int64_t bound, int64_t per,
                      IdGroups& out, int64_t& bad);

}  // namespace recsys::util

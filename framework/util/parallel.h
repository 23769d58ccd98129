#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

// Work split across LibTorch's intra-op threads by pieces taken on demand.
namespace recsys::util {

/// Runs fn(piece) for every piece in [0, pieces): on up to `max_threads` of LibTorch's intra-op
/// threads, each thread taking the next piece when it has finished one. A static split (half of
/// the rows per thread) leaves one core waiting whenever the other runs slower (it shares its
/// core or its cache with other work, or it also dispatches): on the 2-vCPU hosts of this project
/// the worker thread waited for a quarter of the twotower_ssl step that way. Pieces must be
/// independent (disjoint outputs), so that the result does not depend on which thread ran which
/// piece: a kernel that reduces across pieces keeps one partial per piece and adds them in piece
/// order afterwards. Inside a parallel region, with one thread or one piece, every piece runs on
/// the calling thread in order. Exceptions propagate as from at::parallel_for.
template <typename F>
void parallel_pieces(int64_t pieces, int64_t max_threads, const F& fn) {
  const int64_t threads = std::min<int64_t>(std::min<int64_t>(max_threads, pieces),
                                            at::get_num_threads());
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t p = 0; p < pieces; ++p) fn(p);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t p = next.fetch_add(1, std::memory_order_relaxed); p < pieces;
         p = next.fetch_add(1, std::memory_order_relaxed))
      fn(p);
  });
}

}  // namespace recsys::util

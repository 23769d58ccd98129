#include "framework/train/branches.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <unordered_set>
#include <utility>

#include "framework/util/blas.h"
#include "framework/util/share.h"

namespace recsys::train {

bool side_by_side_at(size_t branches) {
  const auto threads = static_cast<size_t>(at::get_num_threads());
  // A BLAS with its own thread pool (pthreads OpenBLAS) would share it between the branches'
  // products instead of running each on its calling thread.
  return branches >= 2 && threads >= 2 && threads <= branches && !at::in_parallel_region() &&
         util::blas_calls_nest();
}

namespace {

/// The sparse parts' rows (one sparse dim, rows of values) when every part's rows are strictly
/// ascending: merged into one gradient whose rows are strictly ascending, the values of a row
/// that several parts hold summed in part order (the order in which the optimizer would sum the
/// concatenation's entries). Undefined where the parts are not of that form.
torch::Tensor merge_ascending(const std::vector<torch::Tensor>& parts) {
  const auto& first = parts.front();
  if (first.sparse_dim() != 1 || first.dense_dim() != 1 || !first.device().is_cpu() ||
      (first.scalar_type() != torch::kFloat && first.scalar_type() != torch::kDouble))
    return {};
  std::vector<torch::Tensor> rows, values;
  std::vector<const int64_t*> ix;
  std::vector<int64_t> nnz;
  for (const auto& p : parts) {
    // combine_gradients checked that every part has first's sparse dims.
    if (p.dense_dim() != 1 || p.scalar_type() != first.scalar_type() || !p.device().is_cpu())
      return {};
    rows.push_back(p._indices().select(0, 0).contiguous());
    values.push_back(p._values().contiguous());
    ix.push_back(rows.back().data_ptr<int64_t>());
    nnz.push_back(rows.back().numel());
    for (int64_t k = 1; k < nnz.back(); ++k)
      if (ix.back()[k - 1] >= ix.back()[k]) return {};
  }
  const size_t P = parts.size();
  const int64_t width = first.size(1);
  int64_t total = 0;
  for (auto c : nnz) total += c;
  // At most `total` distinct rows: written in one pass, then the used prefix kept.
  auto out_rows = torch::empty({1, total}, torch::kLong);
  auto out_values = torch::empty({total, width}, values.front().options());
  int64_t* orow = out_rows.data_ptr<int64_t>();
  int64_t distinct = 0;
  AT_DISPATCH_FLOATING_TYPES(first.scalar_type(), "combine_gradients", [&] {
    scalar_t* ov = out_values.data_ptr<scalar_t>();
    std::vector<const scalar_t*> src;
    for (const auto& v : values) src.push_back(v.data_ptr<scalar_t>());
    std::vector<int64_t> at(P, 0);
    for (;;) {
      // The smallest row any part still holds; its entries taken in part order.
      int64_t row = -1;
      for (size_t j = 0; j < P; ++j)
        if (at[j] < nnz[j] && (row < 0 || ix[j][at[j]] < row)) row = ix[j][at[j]];
      if (row < 0) break;
      scalar_t* __restrict to = ov + distinct * width;
      orow[distinct++] = row;
      bool copied = false;
      for (size_t j = 0; j < P; ++j) {
        if (at[j] >= nnz[j] || ix[j][at[j]] != row) continue;
        const scalar_t* __restrict from = src[j] + at[j]++ * width;
        if (!copied)
          std::copy(from, from + width, to);
        else
          for (int64_t c = 0; c < width; ++c) to[c] += from[c];
        copied = true;
      }
    }
  });
  out_rows = out_rows.narrow(1, 0, distinct);
  out_values = out_values.narrow(0, 0, distinct);
  return at::_sparse_coo_tensor_unsafe(out_rows, out_values, first.sizes())._coalesced_(true);
}

}  // namespace

torch::Tensor combine_gradients(const std::vector<torch::Tensor>& parts) {
  std::vector<torch::Tensor> present;
  for (const auto& p : parts)
    if (p.defined()) present.push_back(p);
  if (present.empty()) return {};
  if (present.size() == 1) return present.front();
  const auto& first = present.front();
  bool all_sparse = true;
  for (const auto& p : present) {
    TORCH_CHECK(p.sizes() == first.sizes(), "combine_gradients: gradients of shapes ",
                first.sizes(), " and ", p.sizes());
    all_sparse = all_sparse && p.is_sparse();
  }
  if (all_sparse) {
    for (const auto& p : present)
      TORCH_CHECK(p.sparse_dim() == first.sparse_dim(),
                  "combine_gradients: sparse gradients with different sparse dims");
    if (auto merged = merge_ascending(present); merged.defined()) return merged;
    std::vector<torch::Tensor> indices, values;
    for (const auto& p : present) {
      indices.push_back(p._indices());
      values.push_back(p._values());
    }
    return at::_sparse_coo_tensor_unsafe(torch::cat(indices, 1), torch::cat(values, 0),
                                         first.sizes());
  }
  // The dense parts first (in order), then the sparse ones added to them (in order).
  torch::Tensor sum;
  for (const auto& p : present)
    if (!p.is_sparse()) sum = sum.defined() ? sum + p : p;
  for (const auto& p : present)
    if (p.is_sparse()) sum = sum + p;
  return sum;
}

namespace {

/// Runs work(j) for j = 0 .. n-1, side by side (one intra-op thread each, the caller's
/// thread-local state such as grad mode and the profiler carried over; the operators inside see
/// a parallel region and run inline) or one after the other. With `dynamic`, each thread takes
/// the next j as it finishes one (items of unequal cost), else each thread runs a fixed share.
/// The first failing j's exception is rethrown once all have stopped.
template <typename F>
void for_each_part(size_t n, bool side_by_side, const F& work, bool dynamic = false) {
  std::vector<std::exception_ptr> failed(n);
  auto run = [&](size_t j) {
    try {
      work(j);
    } catch (...) {
      failed[j] = std::current_exception();
    }
  };
  if (side_by_side && n > 1) {
    const at::ThreadLocalState state;
    std::atomic<size_t> next{0};
    const int64_t threads = std::min<int64_t>(at::get_num_threads(), static_cast<int64_t>(n));
    // A thread done with its parts takes chunks of the others' products and blockwise kernels
    // (util::shared_for) instead of waiting at the join.
    util::ShareGroup group(static_cast<int64_t>(n), at::get_num_threads());
    at::parallel_for(0, dynamic ? threads : static_cast<int64_t>(n), 1, [&](int64_t j0, int64_t j1) {
      at::ThreadLocalStateGuard guard(state);
      const util::ShareGroup::Member member(group);
      auto run_part = [&](size_t j) {
        run(j);
        group.part_finished();
      };
      if (dynamic)
        for (size_t j; (j = next.fetch_add(1)) < n;) run_part(j);
      else
        for (int64_t j = j0; j < j1; ++j) run_part(static_cast<size_t>(j));
      group.help_until_finished();
    });
  } else {
    for (size_t j = 0; j < n; ++j) run(j);
  }
  for (const auto& e : failed)
    if (e) std::rethrow_exception(e);
}

std::vector<torch::Tensor> grads_of(const std::vector<torch::Tensor>& roots,
                                    const std::vector<torch::Tensor>& inputs,
                                    const std::vector<torch::Tensor>& root_grads) {
  return torch::autograd::grad(roots, inputs, root_grads, /*retain_graph=*/false,
                               /*create_graph=*/false, /*allow_unused=*/true);
}

}  // namespace

torch::Tensor run_staged(const std::vector<OutputBranch>& branches, const StagedLoss& loss_fn,
                         const std::vector<torch::Tensor>& params, bool side_by_side) {
  const size_t n = branches.size();
  // The parameters that take gradients (autograd::grad refuses the others), each once (a tied
  // weight listed twice gets its gradient once).
  std::vector<torch::Tensor> trainable;
  std::vector<size_t> param_of;
  std::unordered_set<const void*> seen;
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].requires_grad() && seen.insert(params[i].unsafeGetTensorImpl()).second) {
      trainable.push_back(params[i]);
      param_of.push_back(i);
    }
  const size_t P = trainable.size();

  // Stage 1: the branches' outputs.
  std::vector<std::vector<torch::Tensor>> outs(n), cut(n);
  for_each_part(n, side_by_side, [&](size_t b) { outs[b] = branches[b](); });
  // The outputs that carry gradients, as leaves of the loss's own graph.
  std::vector<torch::Tensor> inputs;
  std::vector<std::pair<size_t, size_t>> leaf_of;  // (branch, output)
  for (size_t b = 0; b < n; ++b)
    for (size_t k = 0; k < outs[b].size(); ++k) {
      const auto& o = outs[b][k];
      if (o.defined() && o.requires_grad()) {
        cut[b].push_back(o.detach().requires_grad_(true));
        inputs.push_back(cut[b].back());
        leaf_of.emplace_back(b, k);
      } else {
        cut[b].push_back(o);
      }
    }
  const size_t leaves = inputs.size();
  inputs.insert(inputs.end(), trainable.begin(), trainable.end());

  // Stage 2: the loss and its gradients (the cut outputs, then the parameters).
  auto loss = loss_fn(cut);
  TORCH_CHECK(loss.defined() && loss.numel() == 1, "run_staged: the loss must be a scalar");
  std::vector<torch::Tensor> g;
  if (loss.requires_grad() && !inputs.empty()) g = grads_of({loss}, inputs, {});

  // Stage 3: each branch's backward from its outputs' gradients.
  std::vector<std::vector<torch::Tensor>> roots(n), root_grads(n);
  for (size_t c = 0; c < leaves && !g.empty(); ++c)
    if (g[c].defined()) {
      const auto [b, k] = leaf_of[c];
      roots[b].push_back(outs[b][k]);
      root_grads[b].push_back(g[c]);
    }
  std::vector<std::vector<torch::Tensor>> branch_grads(n);
  for_each_part(n, side_by_side, [&](size_t b) {
    if (!roots[b].empty() && P > 0) branch_grads[b] = grads_of(roots[b], trainable, root_grads[b]);
    // The branch's graph freed on its own thread.
    roots[b].clear();
    outs[b].clear();
  });

  // The parameters' gradients, each from its parts in a fixed order; the parameters spread over
  // the threads when side by side (a sparse gradient's parts are concatenated, a dense one's
  // summed: about a millisecond for the two towers on one thread).
  for_each_part(P, side_by_side, [&](size_t k) {
    auto& p = params[param_of[k]];
    std::vector<torch::Tensor> parts{p.grad()};
    if (!g.empty()) parts.push_back(g[leaves + k]);
    for (const auto& bg : branch_grads)
      if (!bg.empty()) parts.push_back(bg[k]);
    auto sum = combine_gradients(parts);
    if (!sum.defined()) return;
    // As AccumulateGrad keeps it: a dense gradient in its own contiguous memory (one handed over
    // as is may be an expanded or strided view).
    if (!sum.is_sparse() && !sum.is_contiguous()) sum = sum.contiguous();
    const_cast<torch::Tensor&>(p).mutable_grad() = sum;
  }, /*dynamic=*/true);
  return loss.detach();
}

}  // namespace recsys::train

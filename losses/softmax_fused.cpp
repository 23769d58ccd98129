#include "losses/softmax_fused.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>
#include <vector>

#include "framework/util/blas.h"
#include "framework/util/fast_math.h"
#include "framework/util/kernel.h"

namespace recsys::losses {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows per block: a block's scores ([128, C], 512 KB at C = 1024 in float32) stay in a core's L2
// cache next to b ([C, D], 256 KB) and the chunk's gradient accumulator for b (the same size).
constexpr int64_t kBlockRows = 128;

// Reductions run in 16 independent lanes: a fixed-width inner loop the compiler vectorises (a
// plain floating-point reduction it may not reorder).
constexpr int kLanes = 16;

// Maxima in vectors of GCC's vector extension (32 bytes: AVX2's width, lowered to what the
// target has): a plain lane array reduced with std::max stays scalar, since GCC may not turn
// std::max into a vector max without -ffinite-math-only. `a > m ? a : m` is the vector max
// instruction's own rule, so a NaN score leaves the lane as it was (skipped, as before).
template <typename S>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(32)));
};

template <typename V, typename S>
inline V load_vec(const S* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V, typename S>
inline void store_vec(S* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// max_j x[j] over a row whose scores first get bias[j] and then add[j] added (each pointer may
// be null), the sums written back.
template <typename S, bool kBias, bool kAdd>
S add_and_max(S* __restrict x, const S* __restrict bias, const S* __restrict add, int64_t c) {
  using V = typename VecOf<S>::type;
  constexpr int64_t W = sizeof(V) / sizeof(S);
  const S inf = std::numeric_limits<S>::infinity();
  V m0, m1;
  for (int64_t k = 0; k < W; ++k) m0[k] = m1[k] = -inf;
  int64_t j = 0;
  for (; j + 2 * W <= c; j += 2 * W) {
    V a = load_vec<V>(x + j), b = load_vec<V>(x + j + W);
    if (kBias) {
      a += load_vec<V>(bias + j);
      b += load_vec<V>(bias + j + W);
    }
    if (kAdd) {
      a += load_vec<V>(add + j);
      b += load_vec<V>(add + j + W);
    }
    if (kBias || kAdd) {
      store_vec(x + j, a);
      store_vec(x + j + W, b);
    }
    m0 = a > m0 ? a : m0;
    m1 = b > m1 ? b : m1;
  }
  S m = -inf;
  for (int64_t k = 0; k < W; ++k) m = std::max(m, std::max(m0[k], m1[k]));
  for (; j < c; ++j) {
    if (kBias) x[j] += bias[j];
    if (kAdd) x[j] += add[j];
    m = std::max(m, x[j]);
  }
  return m;
}

template <typename S>
S row_max(S* x, int64_t c) {
  return add_and_max<S, false, false>(x, nullptr, nullptr, c);
}

// x[j] = e^(x[j] - m); returns the sum. A NaN score (skipped by the max) makes the sum NaN.
template <typename S>
S exp_and_sum(S* __restrict x, S m, int64_t c) {
  S lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= c; j += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const S e = fast::exp(x[j + k] - m);
      x[j + k] = e;
      lane[k] += e;
    }
  S s = 0;
  for (int k = 0; k < kLanes; ++k) s += lane[k];
  for (; j < c; ++j) {
    x[j] = fast::exp(x[j] - m);
    s += x[j];
  }
  return s;
}

// The operands as raw row-major pointers.
template <typename S>
struct Problem {
  int64_t B = 0, C = 0, D = 0;
  S scale = 1;
  const S *a = nullptr, *b = nullptr, *bias = nullptr;
  const int64_t* ids = nullptr;
  // Distinct columns (diagonal_softmax_mean_fused's `targets`): row i's target column, and
  // log of each column's multiplicity (added to its score, except to the target's own score
  // when accidental hits are removed). Null: the diagonal, multiplicity 1.
  const int64_t* targets = nullptr;
  const S* log_counts = nullptr;
  bool grads = false;
  S* da = nullptr;  // [B, D], rows written by the block that owns them
  // Row stride of a block's scores (util::padded_stride of C): db += g^T a reads them
  // transposed. With rows of 4 KiB (C = 1024) oneDNN's copy of the transposed operand maps to
  // few cache sets and prefer_onednn (blas.cpp) leaves the product to the BLAS (57-77
  // GFLOP/s); padded rows let oneDNN take it.
  int64_t ls = 0;
};

// Rows [i0, i1): their scores in `s` ([i1 - i0, C] scratch), the sum of their losses (returned)
// and, with grads, their rows of da and their contributions to the chunk's accumulators db [C, D]
// and dbias [C] (null when the bias needs no gradient). `k` and `a_k` are scratch of [rows] and
// [rows, D].
// `first`: the chunk's first block, which writes the accumulators instead of adding to them (no
// zero-filled accumulator to start from).
//
// Two passes over a row's scores: the bias and multiplicities added while the maximum is found,
// then the exponentials and their sum. The gradient of the scores, g_ij = (k_i e_ij - w [j = t_i])
// with k_i = w / sum_i and w = 1 / B, is never written out: the products take the exponentials
// e as they are, and the row factors k and the targets' -w go into the small operands instead
// (da_i = scale (k_i (e b)_i - w b_{t_i}), db = scale (e^T (k a) - w sum_i a_i at row t_i)).
template <typename S>
double run_block(const Problem<S>& p, int64_t i0, int64_t i1, S* s, S* k, S* a_k, S* db,
                 S* dbias, bool first) {
  const int64_t n = i1 - i0, C = p.C, D = p.D, ls = p.ls;
  util::gemm_rowmajor(false, true, n, C, D, p.scale, p.a + i0 * D, D, p.b, D, S(0), s, ls);
  const S w = S(1) / static_cast<S>(p.B);
  // Row i's target column.
  auto target_of = [&](int64_t i) { return p.targets ? p.targets[i] : i; };
  double loss = 0;
  for (int64_t r = 0; r < n; ++r) {
    S* row = s + r * ls;
    const int64_t t = target_of(i0 + r);
    // The target's score before the multiplicities: loss_i = logsumexp_j s'_ij - s_it, where
    // s'_ij = s_ij + log c_j sums c_j equal columns; with hits removed the target column counts
    // once (its other copies are row i's positive again).
    const S target = row[t] + (p.bias ? p.bias[t] : S(0));
    S m;
    if (p.bias && p.log_counts)
      m = add_and_max<S, true, true>(row, p.bias, p.log_counts, C);
    else if (p.bias)
      m = add_and_max<S, true, false>(row, p.bias, nullptr, C);
    else if (p.log_counts)
      m = add_and_max<S, false, true>(row, nullptr, p.log_counts, C);
    else
      m = row_max(row, C);
    if (p.ids) {
      if (p.log_counts) row[t] = target;
      const int64_t own = p.ids[t];
      // A select storing every element (a conditional store is a slow masked store on AMD).
      for (int64_t j = 0; j < C; ++j) row[j] = p.ids[j] == own && j != t ? S(-1e9) : row[j];
    }
    // Masked columns or a target put back: the maximum of what the row now holds.
    if (p.ids) m = row_max(row, C);
    const S sum = exp_and_sum(row, m, C);
    loss += static_cast<double>(m + std::log(sum) - target);
    if (!p.grads) continue;
    k[r] = w / sum;
    if (dbias) {
      const S kr = k[r];
      if (first && r == 0)
        for (int64_t j = 0; j < C; ++j) dbias[j] = kr * row[j];
      else
        for (int64_t j = 0; j < C; ++j) dbias[j] += kr * row[j];
      dbias[t] -= w;
    }
  }
  if (p.grads) {
    const S* a = p.a + i0 * D;
    S* da = p.da + i0 * D;
    const S sw = p.scale * w;
    // da = scale (k e b - w b_t).
    util::gemm_rowmajor(false, false, n, D, C, p.scale, s, ls, p.b, D, S(0), da, D);
    for (int64_t r = 0; r < n; ++r) {
      const S kr = k[r];
      const S* bt = p.b + target_of(i0 + r) * D;
      S* dr = da + r * D;
      for (int64_t c = 0; c < D; ++c) dr[c] = kr * dr[c] - sw * bt[c];
      const S* ar = a + r * D;
      S* akr = a_k + r * D;
      for (int64_t c = 0; c < D; ++c) akr[c] = kr * ar[c];
    }
    // db += scale (e^T (k a)), then -scale w a_i at each row's target column.
    util::gemm_rowmajor(true, false, C, D, n, p.scale, s, ls, a_k, D, S(first ? 0 : 1), db, D);
    for (int64_t r = 0; r < n; ++r) {
      const S* ar = a + r * D;
      S* dbt = db + target_of(i0 + r) * D;
      for (int64_t c = 0; c < D; ++c) dbt[c] -= sw * ar[c];
    }
  }
  return loss;
}

class DiagonalSoftmaxFunction : public torch::autograd::Function<DiagonalSoftmaxFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& a_in, const Tensor& b_in,
                               const Tensor& bias_in, const Tensor& ids_in,
                               const Tensor& targets_in, const Tensor& log_counts_in,
                               double scale, bool has_bias, bool has_ids, bool has_targets,
                               bool need_grads, bool bias_grad) {
    auto a = a_in.contiguous(), b = b_in.contiguous();
    // Absent bias / ids / targets arrive as empty placeholders (an autograd input cannot be
    // undefined).
    auto bias = has_bias ? bias_in.contiguous() : Tensor();
    auto ids = has_ids ? ids_in.contiguous() : Tensor();
    auto targets = has_targets ? targets_in.contiguous() : Tensor();
    auto log_counts = has_targets ? log_counts_in.contiguous() : Tensor();
    const int64_t B = a.size(0), C = b.size(0), D = a.size(1);
    bias_grad = bias_grad && bias.defined();
    Tensor loss, da, db, dbias;
    AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "diagonal_softmax_mean_fused", [&] {
      Problem<scalar_t> p;
      p.B = B;
      p.C = C;
      p.D = D;
      p.scale = static_cast<scalar_t>(scale);
      p.a = a.data_ptr<scalar_t>();
      p.b = b.data_ptr<scalar_t>();
      p.bias = bias.defined() ? bias.data_ptr<scalar_t>() : nullptr;
      p.ids = ids.defined() ? ids.data_ptr<int64_t>() : nullptr;
      if (targets.defined()) {
        p.targets = targets.data_ptr<int64_t>();
        p.log_counts = log_counts.data_ptr<scalar_t>();
      }
      p.grads = need_grads;
      p.ls = util::padded_stride(C, static_cast<int64_t>(sizeof(scalar_t)));
      if (need_grads) {
        da = torch::empty_like(a);
        p.da = da.data_ptr<scalar_t>();
      }
      const int64_t blocks = (B + kBlockRows - 1) / kBlockRows;
      // The blocks cut into one chunk per thread; chunk k owns accumulator k whichever thread
      // runs it, and the accumulators are summed in chunk order (the same result for the same
      // thread count).
      const int64_t slots = util::blas_chunks(blocks);
      const int64_t acc_size = need_grads ? C * D + (bias_grad ? C : 0) : 0;
      // Written by each chunk's first block (every chunk has at least one block).
      auto acc = torch::empty({slots, acc_size}, a.options());
      scalar_t* accp = acc.data_ptr<scalar_t>();
      std::vector<double> losses(static_cast<size_t>(slots), 0.0);
      at::parallel_for(0, slots, 1, [&](int64_t k0, int64_t k1) {
        // The scores' padding columns are never read; everything else is written first.
        const int64_t rows = std::min(B, kBlockRows);
        auto scratch = util::scratch_buffer<scalar_t>(rows * p.ls);
        auto factors = util::scratch_buffer<scalar_t>(rows);
        auto a_k = util::scratch_buffer<scalar_t>(rows * D);
        for (int64_t k = k0; k < k1; ++k) {
          scalar_t* db_k = need_grads ? accp + k * acc_size : nullptr;
          scalar_t* dbias_k = need_grads && bias_grad ? db_k + C * D : nullptr;
          double sum = 0;
          const int64_t first = k * blocks / slots;
          for (int64_t blk = first; blk < (k + 1) * blocks / slots; ++blk)
            sum += run_block(p, blk * kBlockRows, std::min(B, (blk + 1) * kBlockRows),
                             scratch.get(), factors.get(), a_k.get(), db_k, dbias_k,
                             blk == first);
          losses[static_cast<size_t>(k)] = sum;
        }
      });
      double total = 0;
      for (double v : losses) total += v;
      loss = torch::full({}, total / static_cast<double>(B), a.options());
      if (need_grads) {
        // Chunk accumulators summed in chunk order into the first.
        auto sums = acc[0];
        for (int64_t k = 1; k < slots; ++k) sums.add_(acc[k]);
        db = sums.narrow(0, 0, C * D).view({C, D});
        if (bias_grad) dbias = sums.narrow(0, C * D, C);
      }
    });
    if (need_grads) {
      ctx->save_for_backward({da, db});
      if (bias_grad) ctx->saved_data["dbias"] = dbias;
    }
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The gradients were computed in the forward as plain numbers: no graph to differentiate.
    util::refuse_double_backward("diagonal_softmax_mean_fused",
                                 "the composed loss (InBatchSoftmaxOptions::fused_mean(false))");
    const auto saved = ctx->get_saved_variables();
    const auto& g = grads[0];
    Tensor dbias;
    // An incoming gradient of exactly 1 (a loss used as is) needs no scaling pass.
    const bool one = g.numel() == 1 && g.item<double>() == 1.0;
    auto scaled = [&](const Tensor& t) { return one ? t : t * g; };
    if (ctx->saved_data.count("dbias")) dbias = scaled(ctx->saved_data["dbias"].toTensor());
    // Inputs in order: a, b, bias, ids, targets, log_counts, scale, has_bias, has_ids,
    // has_targets, need_grads, bias_grad.
    return {scaled(saved[0]), scaled(saved[1]), dbias,    Tensor(), Tensor(), Tensor(),
            Tensor(),         Tensor(),         Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

namespace {

/// diagonal_softmax_unsupported's checks; `targets` / `counts` defined = the distinct-column form.
std::string softmax_unsupported(const Tensor& a, const Tensor& b, const Tensor& bias,
                                const Tensor& column_ids, const Tensor& targets,
                                const Tensor& counts) {
  std::ostringstream why;
  const auto dtype = a.scalar_type();
  const int64_t kMaxBlas = int64_t{1} << 30;
  const bool distinct = targets.defined();
  if (const auto base = util::blas_kernel_unsupported(dtype); !base.empty()) {
    why << base;
  } else if (!a.device().is_cpu() || !b.device().is_cpu() || b.scalar_type() != dtype) {
    why << "a and b must be CPU tensors of one dtype";
  } else if (a.dim() != 2 || b.dim() != 2 || a.size(1) != b.size(1) || a.size(0) < 1 ||
             b.size(0) < (distinct ? 1 : a.size(0)) || b.size(0) > kMaxBlas ||
             a.size(1) > kMaxBlas) {
    why << "a must be [B, D] and b [C, D] with " << (distinct ? "C, B >= 1" : "C >= B >= 1")
        << ", got " << a.sizes() << " and " << b.sizes();
  } else if (bias.defined() && (!bias.device().is_cpu() || bias.scalar_type() != dtype ||
                                bias.dim() != 1 || bias.size(0) != b.size(0))) {
    why << "bias must be a CPU " << dtype << " vector [" << b.size(0) << "], got "
        << bias.sizes();
  } else if (column_ids.defined() &&
             (!column_ids.device().is_cpu() || column_ids.scalar_type() != torch::kInt64 ||
              column_ids.dim() != 1 || column_ids.size(0) != b.size(0))) {
    why << "column ids must be a CPU int64 vector [" << b.size(0) << "], got "
        << column_ids.sizes();
  } else if (distinct && (!targets.device().is_cpu() || targets.scalar_type() != torch::kInt64 ||
                          targets.dim() != 1 || targets.size(0) != a.size(0))) {
    why << "targets must be a CPU int64 vector [" << a.size(0) << "], got " << targets.sizes();
  } else if (distinct && (!counts.defined() || !counts.device().is_cpu() || counts.dim() != 1 ||
                          counts.size(0) != b.size(0))) {
    why << "counts must be a CPU vector [" << b.size(0) << "]";
  }
  return why.str();
}

/// The shared entry of both forms (`targets` undefined: the diagonal).
Tensor softmax_mean_fused(const char* name, const Tensor& a, const Tensor& b, double scale,
                          const Tensor& bias, const Tensor& column_ids, const Tensor& targets,
                          const Tensor& counts) {
  const auto why = softmax_unsupported(a, b, bias, column_ids, targets, counts);
  TORCH_CHECK(why.empty(), name, ": ", why);
  Tensor log_counts;
  if (targets.defined()) {
    const int64_t C = b.size(0);
    // One pass over the raw values (this runs every step): targets in range, counts >= 0, and
    // every target column standing for at least its own row's copy.
    auto c = counts.to(torch::kFloat64).contiguous();
    auto t = targets.contiguous();
    const double* cp = c.data_ptr<double>();
    const int64_t* tp = t.data_ptr<int64_t>();
    for (int64_t j = 0; j < C; ++j)
      TORCH_CHECK(cp[j] >= 0, name, ": counts must be >= 0, got ", cp[j], " at column ", j);
    for (int64_t i = 0; i < t.size(0); ++i) {
      TORCH_CHECK(tp[i] >= 0 && tp[i] < C, name, ": targets must lie in [0, ", C, "), got ",
                  tp[i], " at row ", i);
      TORCH_CHECK(cp[tp[i]] >= 1, name, ": the target column ", tp[i], " of row ", i,
                  " has a count below 1");
    }
    log_counts = c.log().to(a.scalar_type());  // a count of 0 leaves the column out (-inf)
  }
  const bool grad_mode = torch::GradMode::is_enabled();
  const bool bias_grad = grad_mode && bias.defined() && bias.requires_grad();
  const bool need = grad_mode && (a.requires_grad() || b.requires_grad() || bias_grad);
  RECORD_FUNCTION(name, std::vector<c10::IValue>());
  auto none = torch::empty({0}, a.options());
  auto none_ids = torch::empty({0}, a.options().dtype(torch::kInt64));
  return DiagonalSoftmaxFunction::apply(
      a, b, bias.defined() ? bias : none, column_ids.defined() ? column_ids : none_ids,
      targets.defined() ? targets : none_ids, log_counts.defined() ? log_counts : none, scale,
      bias.defined(), column_ids.defined(), targets.defined(), need, bias_grad)[0];
}

}  // namespace

std::string diagonal_softmax_unsupported(const torch::Tensor& a, const torch::Tensor& b,
                                         const torch::Tensor& bias,
                                         const torch::Tensor& column_ids) {
  return softmax_unsupported(a, b, bias, column_ids, {}, {});
}

std::string distinct_softmax_unsupported(const torch::Tensor& a, const torch::Tensor& b,
                                         const torch::Tensor& targets, const torch::Tensor& counts,
                                         const torch::Tensor& bias,
                                         const torch::Tensor& column_ids) {
  TORCH_CHECK(targets.defined(), "distinct_softmax_unsupported: targets are required");
  return softmax_unsupported(a, b, bias, column_ids, targets, counts);
}

torch::Tensor diagonal_softmax_mean_fused(const torch::Tensor& a, const torch::Tensor& b,
                                          double scale, const torch::Tensor& bias,
                                          const torch::Tensor& column_ids) {
  return softmax_mean_fused("diagonal_softmax_mean_fused", a, b, scale, bias, column_ids, {}, {});
}

torch::Tensor distinct_softmax_mean_fused(const torch::Tensor& a, const torch::Tensor& b,
                                          double scale, const torch::Tensor& targets,
                                          const torch::Tensor& counts, const torch::Tensor& bias,
                                          const torch::Tensor& column_ids) {
  TORCH_CHECK(targets.defined(), "distinct_softmax_mean_fused: targets are required");
  return softmax_mean_fused("distinct_softmax_mean_fused", a, b, scale, bias, column_ids, targets,
                            counts);
}

}  // namespace recsys::losses

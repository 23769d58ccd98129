#include "losses/cross_entropy.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>

#include "framework/util/fast_math.h"
#include "framework/util/simd.h"

namespace recsys::losses {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// logsumexp of x[0..c). The reductions run in 16 independent lanes (a fixed-width inner loop
// the compiler vectorises; a plain float reduction it may not reorder).
RECSYS_CLONES float row_logsumexp(const float* __restrict x, int64_t c) {
  constexpr int kLanes = 16;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  float lane[kLanes];
  for (int k = 0; k < kLanes; ++k) lane[k] = -kInf;
  int64_t j = 0;
  for (; j + kLanes <= c; j += kLanes)
    for (int k = 0; k < kLanes; ++k) lane[k] = std::max(lane[k], x[j + k]);
  float m = -kInf;
  for (int k = 0; k < kLanes; ++k) m = std::max(m, lane[k]);
  for (int64_t r = j; r < c; ++r) m = std::max(m, x[r]);
  if (!(m > -kInf)) {
    // Every entry -inf (or NaN): the sum below would be NaN either way; say which.
    for (int64_t r = 0; r < c; ++r)
      if (std::isnan(x[r])) return std::numeric_limits<float>::quiet_NaN();
    return -kInf;
  }
  // A NaN entry was skipped by max but makes its exponential, and so the sum, NaN.
  for (int k = 0; k < kLanes; ++k) lane[k] = 0;
  for (j = 0; j + kLanes <= c; j += kLanes)
    for (int k = 0; k < kLanes; ++k) lane[k] += fast::exp(x[j + k] - m);
  float s = 0;
  for (int k = 0; k < kLanes; ++k) s += lane[k];
  for (int64_t r = j; r < c; ++r) s += fast::exp(x[r] - m);
  return m + std::log(s);
}

// dx[j] = g * exp(x[j] - lse).
RECSYS_CLONES void row_softmax_scaled(const float* __restrict x, float lse, float g,
                                      float* __restrict dx, int64_t c) {
  for (int64_t j = 0; j < c; ++j) dx[j] = g * fast::exp(x[j] - lse);
}

class RowCrossEntropy : public torch::autograd::Function<RowCrossEntropy> {
 public:
  static Tensor forward(AutogradContext* ctx, const Tensor& logits_in, const Tensor& targets_in) {
    auto logits = logits_in.contiguous();
    auto targets = targets_in.to(torch::kLong).contiguous();
    const int64_t B = logits.size(0), C = logits.size(1);
    const float* x = logits.data_ptr<float>();
    const int64_t* t = targets.data_ptr<int64_t>();
    for (int64_t i = 0; i < B; ++i)
      TORCH_CHECK(t[i] >= 0 && t[i] < C, "rowwise_cross_entropy: target ", t[i], " of row ", i,
                  " is outside [0, ", C, ")");
    auto lse = torch::empty({B}, logits.options());
    auto loss = torch::empty({B}, logits.options());
    float* lp = lse.data_ptr<float>();
    float* out = loss.data_ptr<float>();
    // ~C exponentials per row: a grain of 16 rows keeps tiny batches on one thread.
    at::parallel_for(0, B, 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        lp[i] = row_logsumexp(x + i * C, C);
        out[i] = lp[i] - x[i * C + t[i]];
      }
    });
    ctx->save_for_backward({logits, targets, lse});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& logits = saved[0];
    const auto& targets = saved[1];
    const auto& lse = saved[2];
    auto g = grads[0].contiguous();
    const int64_t B = logits.size(0), C = logits.size(1);
    auto dx = torch::empty({B, C}, logits.options());
    const float* x = logits.data_ptr<float>();
    const int64_t* t = targets.data_ptr<int64_t>();
    const float* lp = lse.data_ptr<float>();
    const float* gp = g.data_ptr<float>();
    float* d = dx.data_ptr<float>();
    at::parallel_for(0, B, 16, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        row_softmax_scaled(x + i * C, lp[i], gp[i], d + i * C, C);
        d[i * C + t[i]] -= gp[i];
      }
    });
    return {dx, Tensor()};
  }
};

}  // namespace

torch::Tensor rowwise_cross_entropy_reference(const torch::Tensor& logits,
                                              const torch::Tensor& targets) {
  namespace F = torch::nn::functional;
  return F::cross_entropy(logits, targets,
                          F::CrossEntropyFuncOptions().reduction(torch::kNone));
}

torch::Tensor rowwise_cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2, "rowwise_cross_entropy: logits must be [B, C], got ",
              logits.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0),
              "rowwise_cross_entropy: targets must be [B] = [", logits.size(0), "], got ",
              targets.sizes());
  if (logits.device().is_cpu() && logits.scalar_type() == torch::kFloat && logits.size(1) > 0 &&
      targets.device().is_cpu())
    return RowCrossEntropy::apply(logits, targets);
  return rowwise_cross_entropy_reference(logits, targets);
}

}  // namespace recsys::losses

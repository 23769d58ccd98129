#include "models/layers/attention.h"

#include <cmath>
#include <limits>

#include "models/layers/dice.h"
#include "models/layers/linear.h"
#include "models/layers/mlp_fused.h"
#include "models/layers/rows.h"

namespace recsys::models {

namespace {

// Same choices as the Mlp's activations (mlp.cpp keeps its factory private).
torch::nn::AnyModule make_activation(Activation a, int64_t dim) {
  switch (a) {
    case Activation::kRelu:
      return torch::nn::AnyModule(torch::nn::ReLU());
    case Activation::kSigmoid:
      return torch::nn::AnyModule(torch::nn::Sigmoid());
    case Activation::kTanh:
      return torch::nn::AnyModule(torch::nn::Tanh());
    case Activation::kPrelu:
      return torch::nn::AnyModule(torch::nn::PReLU(torch::nn::PReLUOptions().num_parameters(dim)));
    case Activation::kDice:
      return torch::nn::AnyModule(Dice(DiceOptions(dim)));
    case Activation::kNone:
      return torch::nn::AnyModule(torch::nn::Identity());
  }
  return torch::nn::AnyModule(torch::nn::Identity());
}

void check_mask(const char* who, const torch::Tensor& mask, int64_t b, int64_t t) {
  TORCH_CHECK(
      mask.scalar_type() == torch::kBool, who,
      ": mask must be a bool tensor (true = valid step); convert with mask.to(torch::kBool)");
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == b && mask.size(1) == t, who,
              ": mask must have shape [B, T] = [", b, ", ", t, "], got ", mask.sizes());
}

}  // namespace

torch::Tensor masked_softmax(const torch::Tensor& scores, const torch::Tensor& mask) {
  TORCH_CHECK(mask.scalar_type() == torch::kBool, "masked_softmax: mask must be a bool tensor");
  TORCH_CHECK(scores.sizes() == mask.sizes(), "masked_softmax: scores ", scores.sizes(),
              " and mask ", mask.sizes(), " must have the same shape");
  auto filled = scores.masked_fill(~mask, -std::numeric_limits<double>::infinity());
  // The shift only stabilises exp; softmax is invariant to it, so it carries no gradient.
  auto shift = std::get<0>(filled.detach().max(-1, /*keepdim=*/true));
  shift = torch::where(torch::isfinite(shift), shift, torch::zeros_like(shift));
  auto e = torch::exp(filled - shift);  // exactly 0 at masked positions
  auto sum = e.sum(-1, /*keepdim=*/true);
  // A valid row sums to >= 1 (its maximum contributes exp(0)); an empty row sums to 0 and stays 0.
  auto denom = torch::where(sum > 0, sum, torch::ones_like(sum));
  return e / denom;
}

ActivationUnitImpl::ActivationUnitImpl(ActivationUnitOptions options)
    : options_(std::move(options)) {
  TORCH_CHECK(options_.dim() > 0, "ActivationUnit: dim must be positive, got ", options_.dim());
  const auto& hidden = options_.hidden();
  TORCH_CHECK(!hidden.empty(),
              "ActivationUnit: give at least one hidden width in 'hidden' (DIN uses {80, 40})");
  for (auto h : hidden)
    TORCH_CHECK(h > 0, "ActivationUnit: hidden widths must be positive, got ", h);

  first_ = register_module("first", torch::nn::Linear(4 * options_.dim(), hidden[0]));
  first_activation_ = make_activation(options_.activation(), hidden[0]);
  if (options_.activation() != Activation::kNone)
    register_module("first_act", first_activation_.ptr());
  std::vector<int64_t> rest(hidden.begin() + 1, hidden.end());
  rest.push_back(1);
  tail_ = register_module(
      "tail",
      Mlp(MlpOptions(hidden[0], rest).activation(options_.activation()).activate_last(false)));
}

std::pair<torch::Tensor, torch::Tensor> ActivationUnitImpl::fused_weights() {
  const int64_t d = options_.dim();
  // W = [Wq | Wk | Wd | Wp] along the input dimension (Linear stores [out, in]).
  const auto& w = first_->weight;
  auto wq = w.narrow(1, 0, d), wk = w.narrow(1, d, d), wd = w.narrow(1, 2 * d, d),
       wp = w.narrow(1, 3 * d, d);
  return {wq + wd, torch::cat({wk - wd, wp}, 1)};
}

bool ActivationUnitImpl::packs(const torch::Device& device) const {
  return options_.pack_valid() && options_.fused_first_layer() && device.is_cpu() &&
         options_.activation() != Activation::kDice;
}

AttentionOutput ActivationUnitImpl::forward_masked_packed(const torch::Tensor& query,
                                                          const torch::Tensor& keys,
                                                          const torch::Tensor& mask) {
  const int64_t B = keys.size(0), T = keys.size(1), d = options_.dim();
  auto index = mask.reshape(-1).nonzero().squeeze(1);          // [N] = b * T + t
  auto row = torch::div(index, T, /*rounding_mode=*/"floor");  // [N] = b
  auto k = gather_rows(keys.reshape({B * T, d}), index);       // [N, D]
  return forward_packed(query, k, row, index, T);
}

AttentionOutput ActivationUnitImpl::forward_packed(const torch::Tensor& query,
                                                   const torch::Tensor& k,
                                                   const torch::Tensor& row,
                                                   const torch::Tensor& index, int64_t T) {
  const int64_t B = query.size(0), d = options_.dim();
  TORCH_CHECK(query.dim() == 2 && query.size(1) == d && k.dim() == 2 && k.size(1) == d &&
                  row.dim() == 1 && row.size(0) == k.size(0) && index.sizes() == row.sizes(),
              "ActivationUnit::forward_packed: query must be [B, ", d, "], keys [N, ", d,
              "], row and index [N]; got ", query.sizes(), ", ", k.sizes(), ", ", row.sizes(),
              " and ", index.sizes());
  auto q = gather_rows(query, row);  // [N, D]
  auto [w_query, w_key] = fused_weights();
  auto q_part = models::linear(query, w_query, first_->bias);  // [B, H1]
  auto pre = models::linear(torch::cat({k, q * k}, 1), w_key, gather_rows(q_part, row));
  auto s = score_rows(pre);  // [N]
  AttentionOutput out;
  if (options_.softmax()) {
    // Softmax over each row's valid steps: exp(s - max of its row) / the row's sum.
    // Each row's max over its valid steps (-inf for a row without any; no step refers to it).
    auto row_max = torch::full({B * T}, -std::numeric_limits<double>::infinity(), s.options())
                       .index_copy_(0, index, s.detach())
                       .view({B, T})
                       .amax(1);
    auto e = torch::exp(s - row_max.index_select(0, row));
    auto w = e / gather_rows(scatter_add_rows(e, row, B), row);
    out.weights = torch::zeros({B * T}, s.options()).index_copy(0, index, w).view({B, T});
    out.pooled = scatter_add_rows(k * w.unsqueeze(1), row, B);
  } else {
    out.weights = torch::zeros({B * T}, s.options()).index_copy(0, index, s).view({B, T});
    out.pooled = scatter_add_rows(k * s.unsqueeze(1), row, B);
  }
  return out;
}

torch::Tensor ActivationUnitImpl::scores(const torch::Tensor& query, const torch::Tensor& keys) {
  const int64_t d = options_.dim();
  TORCH_CHECK(query.dim() == 2 && query.size(1) == d, "ActivationUnit: query must be [B, ", d,
              "], got ", query.sizes());
  TORCH_CHECK(keys.dim() == 3 && keys.size(0) == query.size(0) && keys.size(2) == d,
              "ActivationUnit: keys must be [B, T, ", d, "] with B = ", query.size(0), ", got ",
              keys.sizes());
  auto q = query.unsqueeze(1);  // [B, 1, D], broadcast over T
  torch::Tensor pre;
  if (options_.fused_first_layer()) {
    auto [w_query, w_key] = fused_weights();
    auto q_part = models::linear(query, w_query, first_->bias);                    // [B, H1]
    auto kp_part = models::linear(torch::cat({keys, q * keys}, -1), w_key, torch::Tensor());
    pre = q_part.unsqueeze(1) + kp_part;
  } else {
    auto qe = q.expand_as(keys);
    pre = first_->forward(torch::cat({qe, keys, qe - keys, qe * keys}, -1));
  }
  // Flatten to [B * T, H1]: PReLU takes its channels from dim 1, not from the last dim.
  return score_rows(pre.reshape({-1, pre.size(-1)})).view({keys.size(0), keys.size(1)});
}

torch::Tensor ActivationUnitImpl::score_rows(const torch::Tensor& pre) {
  const auto a = options_.activation();
  if (options_.fused_tail() && (a == Activation::kSigmoid || a == Activation::kRelu)) {
    std::vector<torch::Tensor> w, b;
    for (auto& l : tail_->linears()) {
      w.push_back(l->weight);
      b.push_back(l->bias);
    }
    if (mlp_tail_unsupported(pre, w, b).empty())
      return mlp_tail_fused(pre, w, b, /*normalize=*/false, 0.0,
                            a == Activation::kSigmoid ? TailActivation::kSigmoid
                                                      : TailActivation::kRelu)
          .squeeze(1);
  }
  return tail_->forward(first_activation_.forward(pre)).squeeze(1);
}

AttentionOutput ActivationUnitImpl::forward(const torch::Tensor& query, const torch::Tensor& keys,
                                            const torch::Tensor& mask) {
  TORCH_CHECK(keys.dim() == 3, "ActivationUnit: keys must be [B, T, D], got ", keys.sizes());
  check_mask("ActivationUnit", mask, keys.size(0), keys.size(1));
  if (packs(keys.device())) {
    TORCH_CHECK(query.dim() == 2 && query.size(1) == options_.dim() &&
                    keys.size(0) == query.size(0) && keys.size(2) == options_.dim(),
                "ActivationUnit: query must be [B, ", options_.dim(), "] and keys [B, T, ",
                options_.dim(), "], got ", query.sizes(), " and ", keys.sizes());
    return forward_masked_packed(query, keys, mask);
  }
  auto s = scores(query, keys);
  AttentionOutput out;
  out.weights = options_.softmax() ? masked_softmax(s, mask) : s.masked_fill(~mask, 0.0);
  // Elementwise rather than bmm: a [B, 1, T] x [B, T, D] bmm runs B tiny products.
  out.pooled = (out.weights.unsqueeze(-1) * keys).sum(1);  // [B, D]
  return out;
}

BilinearAttentionImpl::BilinearAttentionImpl(BilinearAttentionOptions options) : options_(options) {
  TORCH_CHECK(options_.dim_h() > 0 && options_.dim_q() > 0,
              "BilinearAttention: dim_h and dim_q must be positive, got ", options_.dim_h(),
              " and ", options_.dim_q());
  // Same scale as torch::nn::Linear(dim_q, dim_h)'s default initialisation.
  double bound = 1.0 / std::sqrt(static_cast<double>(options_.dim_q()));
  weight = register_parameter(
      "weight", torch::empty({options_.dim_h(), options_.dim_q()}).uniform_(-bound, bound));
}

torch::Tensor BilinearAttentionImpl::forward(const torch::Tensor& query,
                                             const torch::Tensor& states,
                                             const torch::Tensor& mask) {
  TORCH_CHECK(query.dim() == 2 && query.size(1) == options_.dim_q(),
              "BilinearAttention: query must be [B, ", options_.dim_q(), "], got ", query.sizes());
  TORCH_CHECK(
      states.dim() == 3 && states.size(0) == query.size(0) && states.size(2) == options_.dim_h(),
      "BilinearAttention: states must be [B, T, ", options_.dim_h(), "] with B = ", query.size(0),
      ", got ", states.sizes());
  check_mask("BilinearAttention", mask, states.size(0), states.size(1));
  auto wq = torch::matmul(query, weight.t());          // [B, Dh]
  auto s = (states * wq.unsqueeze(1)).sum(-1);         // [B, T]; a bmm would run B tiny products
  return masked_softmax(s, mask);
}

}  // namespace recsys::models

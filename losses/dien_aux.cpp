#include "losses/dien_aux.h"

namespace recsys::losses {

AuxiliaryPairs auxiliary_pairs(const torch::Tensor& states, const torch::Tensor& positive,
                               const torch::Tensor& negative, const torch::Tensor& mask) {
  TORCH_CHECK(states.dim() == 3, "auxiliary_pairs: states must be [B, T, H], got ", states.sizes());
  const int64_t B = states.size(0), T = states.size(1);
  TORCH_CHECK(T >= 2,
              "auxiliary_pairs: needs T >= 2 steps to form (h_t, e_{t+1}) pairs, got T = ", T,
              "; skip the auxiliary loss for such batches");
  TORCH_CHECK(positive.dim() == 3 && positive.size(0) == B && positive.size(1) == T,
              "auxiliary_pairs: positive must be [B, T, E] = [", B, ", ", T, ", E], got ",
              positive.sizes());
  TORCH_CHECK(negative.sizes() == positive.sizes(),
              "auxiliary_pairs: negative must have the shape of positive ", positive.sizes(),
              ", got ", negative.sizes());
  TORCH_CHECK(mask.dim() == 2 && mask.size(0) == B && mask.size(1) == T &&
                  mask.scalar_type() == torch::kBool,
              "auxiliary_pairs: mask must be a bool [B, T] = [", B, ", ", T, "] tensor, got ",
              mask.scalar_type(), " ", mask.sizes());
  using torch::indexing::Slice;
  AuxiliaryPairs out;
  out.states = states.index({Slice(), Slice(0, T - 1)});
  out.positive = positive.index({Slice(), Slice(1, T)});
  out.negative = negative.index({Slice(), Slice(1, T)});
  out.mask = mask.index({Slice(), Slice(1, T)});
  return out;
}

torch::Tensor auxiliary_loss(const torch::Tensor& pos_logits, const torch::Tensor& neg_logits,
                             const torch::Tensor& pair_mask) {
  auto squeeze = [](const torch::Tensor& t) {
    return t.dim() == 3 && t.size(2) == 1 ? t.squeeze(2) : t;
  };
  auto pos = squeeze(pos_logits), neg = squeeze(neg_logits);
  TORCH_CHECK(pos.dim() == 2 && pos.sizes() == pair_mask.sizes() && neg.sizes() == pos.sizes(),
              "auxiliary_loss: pos_logits and neg_logits must be [B, P] (or [B, P, 1]) like "
              "pair_mask ",
              pair_mask.sizes(), ", got ", pos_logits.sizes(), " and ", neg_logits.sizes());
  TORCH_CHECK(pair_mask.scalar_type() == torch::kBool,
              "auxiliary_loss: pair_mask must be bool, got ", pair_mask.scalar_type());
  // softplus(-x) = -log sigmoid(x) and softplus(x) = -log(1 - sigmoid(x)), both stable.
  auto per_pair = torch::softplus(-pos) + torch::softplus(neg);
  // where() rather than a product: a padded pair cannot leak a NaN or Inf into the loss.
  auto masked = torch::where(pair_mask, per_pair, torch::zeros_like(per_pair));
  auto count = pair_mask.sum().clamp_min(1).to(per_pair.scalar_type());
  return masked.sum() / count;
}

}  // namespace recsys::losses

#pragma once
#include <torch/torch.h>

// DIEN's auxiliary loss (Zhou et al., AAAI 2019, eq. 4): the interest extractor's state h_t must
// tell the behaviour actually taken at t + 1 (e_{t+1}, label 1) from a sampled negative behaviour
// at t + 1 (label 0). The scorer (models/dien AuxiliaryNet) lives with the model; this file holds
// the pairing and the loss, which know nothing about the scorer.
namespace recsys::losses {

/// The (h_t, e_{t+1}) pairs of a right-padded batch, t = 0 .. T - 2.
struct AuxiliaryPairs {
  /// [B, T - 1, H]: h_t.
  torch::Tensor states;
  /// [B, T - 1, E]: e_{t+1} of the real behaviours.
  torch::Tensor positive;
  /// [B, T - 1, E]: e_{t+1} of the negative behaviours.
  torch::Tensor negative;
  /// [B, T - 1] bool: pair t is valid when step t + 1 is (then so is t, padding being on the
  /// right).
  torch::Tensor mask;
};

/// states [B, T, H], positive / negative [B, T, E], mask [B, T] bool (true on valid steps, right
/// padding). Needs T >= 2 (with T = 1 no pair exists: check before calling).
AuxiliaryPairs auxiliary_pairs(const torch::Tensor& states, const torch::Tensor& positive,
                               const torch::Tensor& negative, const torch::Tensor& mask);

/// Binary cross-entropy on logits, masked mean over the valid pairs:
///   loss = sum_{valid (b,t)} [softplus(-pos_logits) + softplus(neg_logits)] / #valid pairs
/// i.e. per pair the sum of its positive term (-log sigmoid) and its negative term
/// (-log(1 - sigmoid)), as in the DIEN reference code. Padded pairs contribute exactly 0 to the
/// value and the gradient (whatever their logits); with no valid pair the loss is 0.
/// pos_logits, neg_logits [B, P] (or [B, P, 1]); pair_mask [B, P] bool.
torch::Tensor auxiliary_loss(const torch::Tensor& pos_logits, const torch::Tensor& neg_logits,
                             const torch::Tensor& pair_mask);

}  // namespace recsys::losses

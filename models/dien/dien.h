#pragma once
#include <torch/torch.h>

#include <vector>

#include "models/din/ctr_embeddings.h"
#include "models/din/ctr_task.h"
#include "models/layers/attention.h"
#include "models/layers/gru.h"
#include "models/layers/mlp.h"

// DIEN: Deep Interest Evolution Network (Zhou et al., AAAI 2019). See docs/dien.md.
namespace recsys::models {

struct AuxiliaryNetOptions {
  AuxiliaryNetOptions(int64_t state_dim, int64_t behaviour_dim)
      : state_dim_(state_dim), behaviour_dim_(behaviour_dim) {}
  /// Width H of the interest extractor's states h_t.
  TORCH_ARG(int64_t, state_dim);
  /// Width E of a behaviour embedding e_t.
  TORCH_ARG(int64_t, behaviour_dim);
  /// Hidden widths; a final linear layer to 1 logit is appended.
  TORCH_ARG(std::vector<int64_t>, hidden) = std::vector<int64_t>{100, 50};
  /// Activation after every hidden layer (sigmoid in the paper's reference code).
  TORCH_ARG(Activation, activation) = Activation::kSigmoid;
  /// loss_pairs takes the fused CPU kernel (models/dien/aux_fused.h) where it applies; false =
  /// forward_pairs and losses::auxiliary_loss (its oracle).
  TORCH_ARG(bool, fused) = true;
};

/// The scorer of DIEN's auxiliary loss: logit of "behaviour e follows state h", an MLP over [h, e].
class AuxiliaryNetImpl : public torch::nn::Module {
 public:
  explicit AuxiliaryNetImpl(AuxiliaryNetOptions options);
  /// h [..., H], e [..., E] with the same leading dimensions -> logits [...].
  torch::Tensor forward(const torch::Tensor& h, const torch::Tensor& e);
  /// Logits of (h, positive) and (h, negative) for rows h [P, H], positive and negative [P, E]:
  /// the first layer's h part is computed once for both ([h, e] W = h W_h + e W_e). Returns
  /// [2P]: the positives' logits, then the negatives'.
  torch::Tensor forward_pairs(const torch::Tensor& h, const torch::Tensor& positive,
                              const torch::Tensor& negative);
  /// DIEN's auxiliary loss (losses::auxiliary_loss) of P >= 1 pairs, all valid: the mean over
  /// pairs of softplus(-logit(h, positive)) + softplus(logit(h, negative)). With options().fused
  /// on the CPU, one kernel computes the value and its gradients block by block.
  torch::Tensor loss_pairs(const torch::Tensor& h, const torch::Tensor& positive,
                           const torch::Tensor& negative);
  const AuxiliaryNetOptions& options() const { return options_; }
  Mlp& mlp() { return mlp_; }

 private:
  AuxiliaryNetOptions options_;
  Mlp mlp_{nullptr};
};
TORCH_MODULE(AuxiliaryNet);

struct DienOptions {
  explicit DienOptions(CtrEmbeddingsOptions embeddings) : embeddings_(std::move(embeddings)) {}
  /// Item/category tables (a behaviour is [item, category]) and their regularisation.
  TORCH_ARG(CtrEmbeddingsOptions, embeddings);
  /// State width of the interest extractor GRU; 0 = the behaviour width.
  TORCH_ARG(int64_t, extractor_hidden) = 0;
  /// State width of the interest evolution GRU; 0 = the extractor's width.
  TORCH_ARG(int64_t, evolution_hidden) = 0;
  /// Interest evolution cell: kAugru (the paper's DIEN), kAgru, kAigru, or kGru (no attention:
  /// the plain GRU control).
  TORCH_ARG(GruKind, evolution) = GruKind::kAugru;
  /// Both GRUs use gru_fused (custom BPTT) when true, the per-step gru_reference when false.
  TORCH_ARG(bool, fused) = true;
  /// On the CPU (with fused), run the whole model in the packed layout of the valid steps
  /// (PackedLayout): only valid steps are looked up, fed to the GRUs, scored by the attention
  /// and paired for the auxiliary loss; nothing [B, T]-shaped is built but the reported
  /// attention. Same function as the padded path (its test oracle); histories of length 0 take
  /// the padded path.
  TORCH_ARG(bool, pack_valid) = true;
  /// With fused, both GRU layers take gru_packed on the CPU (GruLayerOptions::packed); false
  /// keeps gru_fused over the padded steps (and so the padded model path).
  TORCH_ARG(bool, packed_gru) = true;
  /// The output MLP over [h_final, candidate, sum of history] (a final layer to 1 logit is
  /// appended); Dice 200 -> 80 by default.
  TORCH_ARG(CtrMlpOptions, mlp);
  /// Hidden widths of the auxiliary network (see AuxiliaryNetOptions).
  TORCH_ARG(std::vector<int64_t>, aux_hidden) = std::vector<int64_t>{100, 50};
  /// Weight of the auxiliary loss in the returned CtrOutput::aux_loss (0 disables it and the
  /// negative histories).
  TORCH_ARG(double, alpha_aux) = 1.0;
  /// The auxiliary loss through its fused CPU kernel (AuxiliaryNetOptions::fused).
  TORCH_ARG(bool, fused_aux) = true;
};

/// Everything DienImpl::forward_parts computes.
struct DienOutput {
  /// [B] click logits.
  torch::Tensor logits;
  /// Scalar auxiliary loss (losses/dien_aux.h), NOT weighted by alpha_aux; undefined in eval
  /// mode, without negative histories in the input, or when T < 2 (no pair exists).
  torch::Tensor aux_loss;
  /// [B, T] attention of the candidate over the extractor states (undefined for kGru).
  torch::Tensor attention;
};

/// Embeddings -> interest extractor GRU (+ auxiliary loss) -> attention of the candidate over the
/// extractor states -> interest evolution GRU (AUGRU / AGRU / AIGRU driven by the attention, or a
/// plain GRU) -> its state at each sequence's last valid step -> MLP over
/// [h_final, candidate, sum of the history's behaviours] -> logit.
/// Histories of length 0 (data.min_history = 0) give a zero h_final and a zero sum.
class DienImpl : public CtrModel {
 public:
  explicit DienImpl(DienOptions options);
  /// Injects the interest-evolution layer (its kind and path win over options.evolution/fused);
  /// its input_size must be the extractor's width.
  DienImpl(DienOptions options, GruLayer evolution_layer);

  /// logits, aux_loss = alpha_aux * the auxiliary loss when the input has negatives, and the
  /// embeddings' regularisation term.
  CtrOutput forward(const CtrModelInput& input) override;
  /// The same pass, returning the unweighted auxiliary loss and the attention.
  DienOutput forward_parts(const CtrModelInput& input);
  bool needs_negative_history() const override { return options_.alpha_aux() > 0; }

  const DienOptions& options() const { return options_; }
  int64_t behaviour_dim() const {
    return options_.embeddings().item_dim() + options_.embeddings().category_dim();
  }
  GruKind evolution_kind() const { return evolution->options().kind(); }
  /// Whether forward_parts takes the packed path for this input.
  bool packs(const CtrModelInput& input) const;

  CtrEmbeddings embeddings{nullptr};
  GruLayer extractor{nullptr}, evolution{nullptr};
  /// Null for kGru (no attention is used).
  BilinearAttention attention{nullptr};
  AuxiliaryNet aux{nullptr};
  Mlp mlp{nullptr};

 private:
  void build(GruLayer evolution_layer);
  DienOutput forward_packed(const CtrModelInput& input);
  /// Whether this pass computes the auxiliary loss (training, negatives given, alpha_aux > 0,
  /// T >= 2); checks the negatives' shapes.
  bool wants_aux(const CtrModelInput& input) const;
  DienOptions options_;
};
TORCH_MODULE(Dien);

}  // namespace recsys::models

namespace recsys::models {
/// Adds "dien" to ctr_models() (idempotent); call after register_ctr_task().
void register_dien_model();
}  // namespace recsys::models

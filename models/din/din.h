#pragma once
#include <torch/torch.h>

#include <vector>

#include "models/din/ctr_embeddings.h"
#include "models/din/ctr_task.h"
#include "models/layers/attention.h"
#include "models/layers/mlp.h"

namespace recsys::models {

struct DinOptions {
  explicit DinOptions(CtrEmbeddingsOptions embeddings) : embeddings_(std::move(embeddings)) {}
  /// Item/category tables and their regularisation (mba, l2).
  TORCH_ARG(CtrEmbeddingsOptions, embeddings);
  /// Hidden widths of the activation unit (a final layer to 1 score is appended).
  TORCH_ARG(std::vector<int64_t>, attention_hidden) = std::vector<int64_t>{80, 40};
  /// Activation inside the activation unit (the reference code uses sigmoid).
  TORCH_ARG(Activation, attention_activation) = Activation::kSigmoid;
  /// Normalise the attention scores with a softmax over the valid steps (DIN keeps raw scores).
  TORCH_ARG(bool, attention_softmax) = false;
  /// The output MLP: [interest, candidate, sum of history] -> hidden -> 1.
  /// Look up, score and sum only the valid history steps on the CPU (ActivationUnitOptions::
  /// pack_valid); false builds the padded [B, T, D] behaviours. Same function either way.
  TORCH_ARG(bool, pack_valid) = true;
  /// The attention's first layer computed as q (Wq + Wd) + [k, q * k] [Wk - Wd; Wp] (same
  /// parameters and function); false concatenates [q, k, q - k, q * k] (the plain path, which
  /// also scores every padded step).
  TORCH_ARG(bool, attention_fused_first_layer) = true;
  /// The attention scorer after its first layer as one blockwise kernel
  /// (ActivationUnitOptions::fused_tail); false composes the layers.
  TORCH_ARG(bool, attention_fused_tail) = true;
  TORCH_ARG(CtrMlpOptions, mlp);
};

/// Deep Interest Network (Zhou et al., KDD 2018): the candidate attends over the behaviour
/// history through the local activation unit; the attention-weighted sum (the user interest
/// relative to this candidate), the candidate and the plain sum of the history feed the MLP.
class DinImpl : public CtrModel {
 public:
  explicit DinImpl(DinOptions options);
  CtrOutput forward(const CtrModelInput& input) override;
  /// The attention weights of the last forward pass, [B, T] (for inspection).
  const torch::Tensor& last_attention() const { return last_attention_; }

  const DinOptions& options() const { return options_; }
  CtrEmbeddings embeddings{nullptr};
  ActivationUnit attention{nullptr};
  Mlp mlp{nullptr};

 private:
  DinOptions options_;
  torch::Tensor last_attention_;
};
TORCH_MODULE(Din);

}  // namespace recsys::models

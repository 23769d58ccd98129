#pragma once
#include <torch/torch.h>

#include "models/din/ctr_embeddings.h"
#include "models/din/ctr_task.h"
#include "models/layers/mlp.h"

namespace recsys::models {

struct BaseModelOptions {
  explicit BaseModelOptions(CtrEmbeddingsOptions embeddings) : embeddings_(std::move(embeddings)) {}
  /// Item/category tables and their regularisation.
  TORCH_ARG(CtrEmbeddingsOptions, embeddings);
  /// The MLP over [sum of history, candidate] -> hidden -> 1.
  TORCH_ARG(CtrMlpOptions, mlp);
};

/// DIN's BaseModel (Embedding&MLP): the history is sum-pooled into one fixed vector, whatever the
/// candidate, and concatenated with the candidate's embedding.
class BaseModelImpl : public CtrModel {
 public:
  explicit BaseModelImpl(BaseModelOptions options);
  CtrOutput forward(const CtrModelInput& input) override;
  /// The MLP's input [B, 2D] (Wide&Deep reuses the deep part through it).
  torch::Tensor features(const CtrModelInput& input);

  const BaseModelOptions& options() const { return options_; }
  CtrEmbeddings embeddings{nullptr};
  Mlp mlp{nullptr};

 private:
  BaseModelOptions options_;
};
TORCH_MODULE(BaseModel);

}  // namespace recsys::models

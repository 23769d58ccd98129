#include "models/baselines/base_model.h"

namespace recsys::models {

BaseModelImpl::BaseModelImpl(BaseModelOptions options) : options_(std::move(options)) {
  embeddings = register_module("embeddings", CtrEmbeddings(options_.embeddings()));
  mlp = register_module("mlp", make_ctr_mlp(2 * embeddings->dim(), options_.mlp()));
}

torch::Tensor BaseModelImpl::features(const CtrModelInput& in) {
  auto candidate = embeddings->forward(in.item, in.category);
  auto behaviours = embeddings->forward(in.hist_item, in.hist_category);
  return torch::cat({masked_sum(behaviours, in.hist_mask), candidate}, 1);
}

CtrOutput BaseModelImpl::forward(const CtrModelInput& in) {
  CtrOutput out;
  out.logits = mlp->forward(features(in)).squeeze(1);
  out.regularization = embeddings->regularization(in);
  return out;
}

}  // namespace recsys::models

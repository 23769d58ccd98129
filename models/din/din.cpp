#include "models/din/din.h"

namespace recsys::models {

DinImpl::DinImpl(DinOptions options) : options_(std::move(options)) {
  embeddings = register_module("embeddings", CtrEmbeddings(options_.embeddings()));
  const int64_t d = embeddings->dim();
  attention =
      register_module("attention", ActivationUnit(ActivationUnitOptions(d)
                                                      .hidden(options_.attention_hidden())
                                                      .activation(options_.attention_activation())
                                                      .softmax(options_.attention_softmax())));
  mlp = register_module("mlp", make_ctr_mlp(3 * d, options_.mlp()));
}

CtrOutput DinImpl::forward(const CtrModelInput& in) {
  auto candidate = embeddings->forward(in.item, in.category);             // [B, D]
  auto behaviours = embeddings->forward(in.hist_item, in.hist_category);  // [B, T, D]
  auto att = attention->forward(candidate, behaviours, in.hist_mask);
  last_attention_ = att.weights.detach();
  auto x = torch::cat({att.pooled, candidate, masked_sum(behaviours, in.hist_mask)}, 1);
  CtrOutput out;
  out.logits = mlp->forward(x).squeeze(1);
  out.regularization = embeddings->regularization(in);
  return out;
}

}  // namespace recsys::models

#include "models/din/din.h"

#include "models/layers/rows.h"

namespace recsys::models {

DinImpl::DinImpl(DinOptions options) : options_(std::move(options)) {
  embeddings = register_module("embeddings", CtrEmbeddings(options_.embeddings()));
  const int64_t d = embeddings->dim();
  attention =
      register_module("attention", ActivationUnit(ActivationUnitOptions(d)
                                                      .hidden(options_.attention_hidden())
                                                      .activation(options_.attention_activation())
                                                      .softmax(options_.attention_softmax())
                                                      .pack_valid(options_.pack_valid())
                                                      .fused_first_layer(
                                                          options_.attention_fused_first_layer())
                                                      .fused_tail(options_.attention_fused_tail())));
  mlp = register_module("mlp", make_ctr_mlp(3 * d, options_.mlp()));
}

CtrOutput DinImpl::forward(const CtrModelInput& in) {
  torch::Tensor candidate, pooled, history_sum;
  if (attention->packs(in.hist_item.device()) && in.hist_item.dim() == 2 &&
      in.hist_mask.scalar_type() == torch::kBool && in.hist_mask.sizes() == in.hist_item.sizes() &&
      in.hist_category.sizes() == in.hist_item.sizes()) {
    // Only the valid steps are looked up, scored and summed: the [B, T, D] behaviour tensor
    // (mostly padding on short histories) is never built.
    const int64_t B = in.hist_item.size(0), T = in.hist_item.size(1);
    auto index = in.hist_mask.reshape(-1).nonzero().squeeze(1);  // [N] = b * T + t
    auto row = torch::div(index, T, /*rounding_mode=*/"floor");
    // One lookup per table for the candidates and the valid steps (one sparse gradient each).
    auto all = embeddings->forward(
        torch::cat({in.item, in.hist_item.reshape(-1).index_select(0, index)}),
        torch::cat({in.category, in.hist_category.reshape(-1).index_select(0, index)}));
    // split, not two narrows: one backward node concatenates the gradients (narrow's backward
    // would build two full-size zero tensors and add them).
    auto parts = all.split_with_sizes({B, all.size(0) - B});
    candidate = parts[0];
    auto keys = parts[1];
    auto att = attention->forward_packed(candidate, keys, row, index, T);
    last_attention_ = att.weights.detach();
    pooled = att.pooled;
    history_sum = scatter_add_rows(keys, row, B);
  } else {
    candidate = embeddings->forward(in.item, in.category);                  // [B, D]
    auto behaviours = embeddings->forward(in.hist_item, in.hist_category);  // [B, T, D]
    auto att = attention->forward(candidate, behaviours, in.hist_mask);
    last_attention_ = att.weights.detach();
    pooled = att.pooled;
    history_sum = masked_sum(behaviours, in.hist_mask);
  }
  auto x = torch::cat({pooled, candidate, history_sum}, 1);
  CtrOutput out;
  out.logits = mlp->forward(x).squeeze(1);
  out.regularization = embeddings->regularization(in);
  return out;
}

}  // namespace recsys::models

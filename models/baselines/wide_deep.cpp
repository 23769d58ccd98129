#include "models/baselines/wide_deep.h"

namespace recsys::models {

WideDeepImpl::WideDeepImpl(WideDeepOptions options) : options_(std::move(options)) {
  TORCH_CHECK(options_.wide_buckets() >= 2, "WideDeep: wide_buckets must be >= 2, got ",
              options_.wide_buckets());
  deep = register_module("deep", BaseModel(options_.deep()));
  wide_weight = register_parameter("wide_weight", torch::zeros({options_.wide_buckets(), 1}));
  wide_bias = register_parameter("wide_bias", torch::zeros({1}));
}

namespace {

/// Hash of the pair (a, b) of the cross `kind` into [1, buckets). Ids stay far below 2^31, so
/// the products below stay inside int64.
torch::Tensor hash_cross(const torch::Tensor& a, const torch::Tensor& b, int64_t kind,
                         int64_t buckets) {
  auto x = a * int64_t{1000003} + b * int64_t{2654435761} + int64_t{97} * kind;
  x = torch::bitwise_xor(x, x.__rshift__(15));
  x = torch::bitwise_xor(x * 31, x.__rshift__(7));
  return torch::remainder(x, buckets - 1) + 1;
}

}  // namespace

torch::Tensor WideDeepImpl::cross_ids(const CtrModelInput& in) const {
  const int64_t buckets = options_.wide_buckets();
  auto cand_cat = in.category.unsqueeze(1).expand_as(in.hist_category);
  auto cand_item = in.item.unsqueeze(1).expand_as(in.hist_category);
  auto cat_x_cat = hash_cross(cand_cat, in.hist_category, 1, buckets);
  auto item_x_cat = hash_cross(cand_item, in.hist_category, 2, buckets);
  auto ids = torch::cat({cat_x_cat, item_x_cat}, 1);
  auto mask = torch::cat({in.hist_mask, in.hist_mask}, 1);
  return ids.masked_fill(~mask, 0);
}

CtrOutput WideDeepImpl::forward(const CtrModelInput& in) {
  CtrOutput out;
  auto deep_logit = deep->mlp->forward(deep->features(in)).squeeze(1);
  const bool sparse = options_.deep().embeddings().sparse();
  auto wide = torch::embedding(wide_weight, cross_ids(in), /*padding_idx=*/0, false, sparse);
  auto wide_logit = wide.sum({1, 2}) + wide_bias;
  out.logits = deep_logit + wide_logit;
  out.regularization = deep->embeddings->regularization(in);
  return out;
}

}  // namespace recsys::models

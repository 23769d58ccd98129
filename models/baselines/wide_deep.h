#pragma once
#include <torch/torch.h>

#include "models/baselines/base_model.h"
#include "models/din/ctr_task.h"

namespace recsys::models {

struct WideDeepOptions {
  explicit WideDeepOptions(BaseModelOptions deep) : deep_(std::move(deep)) {}
  /// The deep part: a BaseModel.
  TORCH_ARG(BaseModelOptions, deep);
  /// Hash buckets of the wide part's cross features (bucket 0 is reserved for padding).
  TORCH_ARG(int64_t, wide_buckets) = int64_t{1} << 18;
};

/// Wide&Deep (Cheng et al., 2016) as DIN's baseline: the BaseModel's logit plus a linear model
/// over hashed cross features, (candidate category x history category) and (candidate item x
/// history category) for every valid history step, looked up as a sum-pooled embedding bag of
/// width 1 (plus a bias).
class WideDeepImpl : public CtrModel {
 public:
  explicit WideDeepImpl(WideDeepOptions options);
  CtrOutput forward(const CtrModelInput& input) override;
  /// The wide part's hashed ids [B, 2T] (0 at padded steps).
  torch::Tensor cross_ids(const CtrModelInput& input) const;

  const WideDeepOptions& options() const { return options_; }
  BaseModel deep{nullptr};
  /// [wide_buckets, 1] weights of the crosses; row 0 (padding) stays 0.
  torch::Tensor wide_weight;
  torch::Tensor wide_bias;

 private:
  WideDeepOptions options_;
};
TORCH_MODULE(WideDeep);

}  // namespace recsys::models

#include "models/two_tower/two_tower.h"

namespace recsys::models {

TowerImpl::TowerImpl(TowerOptions options) : options_(std::move(options)) {
  encoder_ = register_module("encoder", FeatureEncoder(FeatureEncoderOptions(options_.features()).sparse(options_.sparse())));
  mlp_ = register_module("mlp", Mlp(MlpOptions(encoder_->out_dim(), options_.hidden())
                                         .activation(options_.activation())
                                         .dropout(options_.dropout())));
}

torch::Tensor TowerImpl::forward(const std::vector<torch::Tensor>& inputs) {
  auto out = mlp_->forward(encoder_->forward(inputs));
  if (options_.normalize()) out = torch::nn::functional::normalize(out, torch::nn::functional::NormalizeFuncOptions().dim(1).eps(1e-8));
  return out;
}

TwoTowerImpl::TwoTowerImpl(TwoTowerOptions options) {
  user_ = register_module("user_tower", Tower(options.user()));
  item_ = register_module("item_tower", Tower(options.item()));
}

}  // namespace recsys::models

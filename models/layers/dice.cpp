#include "models/layers/dice.h"

namespace recsys::models {

DiceImpl::DiceImpl(DiceOptions options) : options_(options) {
  TORCH_CHECK(options_.dim() > 0, "Dice: dim must be positive, got ", options_.dim());
  alpha = register_parameter("alpha", torch::zeros({options_.dim()}));
  running_mean = register_buffer("running_mean", torch::zeros({options_.dim()}));
  running_var = register_buffer("running_var", torch::ones({options_.dim()}));
}

torch::Tensor DiceImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.size(-1) == options_.dim(), "Dice: expected last dimension ", options_.dim(),
              ", got ", x.size(-1));
  auto flat = x.reshape({-1, options_.dim()});
  torch::Tensor mean, var;
  if (is_training()) {
    mean = flat.mean(0);
    var = flat.var(0, /*unbiased=*/false);
    torch::NoGradGuard guard;
    running_mean.mul_(1 - options_.momentum()).add_(mean.detach(), options_.momentum());
    running_var.mul_(1 - options_.momentum()).add_(var.detach(), options_.momentum());
  } else {
    mean = running_mean;
    var = running_var;
  }
  auto p = torch::sigmoid((x - mean) * torch::rsqrt(var + options_.eps()));
  // p*x + (1-p)*alpha*x  ==  x * (alpha + p * (1 - alpha))
  return x * (alpha + p * (1 - alpha));
}

}  // namespace recsys::models

#include "models/layers/dice.h"

#include <cmath>

#include "support.h"

using namespace recsys::models;
using recsys::testing::require_close;

namespace {
// f(s) = p s + (1 - p) alpha s, p = sigmoid((s - mean) / sqrt(var + eps)), element by element.
torch::Tensor dice_by_hand(const torch::Tensor& x, const std::vector<double>& mean,
                           const std::vector<double>& var, const std::vector<double>& alpha,
                           double eps) {
  auto out = torch::zeros_like(x);
  auto xa = x.accessor<double, 2>();
  for (int64_t n = 0; n < x.size(0); ++n)
    for (int64_t c = 0; c < x.size(1); ++c) {
      double s = xa[n][c];
      double p = 1.0 / (1.0 + std::exp(-(s - mean[c]) / std::sqrt(var[c] + eps)));
      out[n][c] = p * s + (1 - p) * alpha[c] * s;
    }
  return out;
}
}  // namespace

TEST_CASE("Dice matches its formula with batch statistics in train mode and running ones in eval",
          "[din]") {
  const int64_t n = 6, c = 3;
  const double eps = 1e-8, momentum = 0.01;
  Dice dice{DiceOptions(c)};
  dice->to(torch::kFloat64);
  std::vector<double> alpha = {0.25, -0.5, 1.5};
  {
    torch::NoGradGuard guard;
    for (int64_t j = 0; j < c; ++j) dice->alpha[j] = alpha[j];
  }
  recsys::testing::seed(6);
  auto x = torch::randn({n, c}, torch::kFloat64) * 2 + 0.5;
  auto xa = x.accessor<double, 2>();
  std::vector<double> mean(c, 0.0), var(c, 0.0);
  for (int64_t j = 0; j < c; ++j) {
    for (int64_t i = 0; i < n; ++i) mean[j] += xa[i][j] / n;
    for (int64_t i = 0; i < n; ++i)
      var[j] += (xa[i][j] - mean[j]) * (xa[i][j] - mean[j]) / n;  // biased
  }

  dice->train();
  require_close(dice->forward(x), dice_by_hand(x, mean, var, alpha, eps), 1e-12, 1e-12);
  for (int64_t j = 0; j < c; ++j) {
    require_close(dice->running_mean[j].item<double>(), momentum * mean[j], 1e-12);
    require_close(dice->running_var[j].item<double>(), (1 - momentum) * 1.0 + momentum * var[j],
                  1e-12);
  }

  dice->eval();
  std::vector<double> rmean = {0.3, -0.2, 1.0}, rvar = {0.5, 2.0, 0.1};
  {
    torch::NoGradGuard guard;
    for (int64_t j = 0; j < c; ++j) {
      dice->running_mean[j] = rmean[j];
      dice->running_var[j] = rvar[j];
    }
  }
  require_close(dice->forward(x), dice_by_hand(x, rmean, rvar, alpha, eps), 1e-12, 1e-12);
  // Eval mode must not touch the running statistics.
  require_close(dice->running_mean[0].item<double>(), rmean[0], 0);
}

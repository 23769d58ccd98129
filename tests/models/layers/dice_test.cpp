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

TEST_CASE("Dice's fused kernel matches the composed operations in values, running statistics "
          "and gradients", "[din]") {
  for (bool training : {true, false}) {
    for (std::vector<int64_t> shape : {std::vector<int64_t>{37, 21}, {5, 7, 21}}) {
      CAPTURE(training, shape.size());
      recsys::testing::seed(12);
      Dice fused{DiceOptions(21)}, plain{DiceOptions(21).fused(false)};
      fused->to(torch::kFloat64);
      plain->to(torch::kFloat64);
      {
        torch::NoGradGuard g;
        auto a = torch::randn({21}, torch::kFloat64);
        fused->alpha.copy_(a);
        plain->alpha.copy_(a);
        auto rm = torch::randn({21}, torch::kFloat64), rv = torch::rand({21}, torch::kFloat64) + 0.1;
        fused->running_mean.copy_(rm);
        plain->running_mean.copy_(rm);
        fused->running_var.copy_(rv);
        plain->running_var.copy_(rv);
      }
      fused->train(training);
      plain->train(training);
      auto x = (torch::randn(shape, torch::kFloat64) * 1.5 + 0.3).requires_grad_(true);
      auto xr = x.detach().clone().requires_grad_(true);
      auto a = fused->forward(x), b = plain->forward(xr);
      require_close(a, b, 1e-12, 1e-12);
      require_close(fused->running_mean, plain->running_mean, 1e-14, 1e-14);
      require_close(fused->running_var, plain->running_var, 1e-14, 1e-14);
      auto w = torch::randn(a.sizes(), torch::kFloat64);
      (a * w).sum().backward();
      (b * w).sum().backward();
      require_close(x.grad(), xr.grad(), 1e-10, 1e-10);
      require_close(fused->alpha.grad(), plain->alpha.grad(), 1e-10, 1e-10);
    }
  }
  // float32: the fused path's sigmoid is recsys::fast::sigmoid (within 1e-7 of float64).
  recsys::testing::seed(13);
  Dice fused{DiceOptions(200)}, plain{DiceOptions(200).fused(false)};
  {
    torch::NoGradGuard g;
    plain->alpha.copy_(torch::randn({200}));
    fused->alpha.copy_(plain->alpha);
  }
  auto x = torch::randn({256, 200}).requires_grad_(true);
  auto xr = x.detach().clone().requires_grad_(true);
  auto a = fused->forward(x), b = plain->forward(xr);
  require_close(a, b.to(torch::kFloat64), 1e-5, 1e-5);
  auto w = torch::randn({256, 200});
  (a * w).sum().backward();
  (b * w).sum().backward();
  require_close(x.grad(), xr.grad().to(torch::kFloat64), 1e-4, 1e-4);
  require_close(fused->alpha.grad(), plain->alpha.grad().to(torch::kFloat64), 1e-3, 1e-4);
}

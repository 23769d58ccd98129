// The fused softmax cross-entropy kernel against torch's cross_entropy (its oracle) and float64.
#include "losses/cross_entropy.h"

#include <cmath>
#include <limits>

#include "support.h"

using recsys::losses::rowwise_cross_entropy;
using recsys::losses::rowwise_cross_entropy_reference;
using recsys::testing::require_close;

TEST_CASE("rowwise_cross_entropy matches torch's cross_entropy in value and gradient", "[loss]") {
  recsys::testing::seed(4);
  // Widths around the kernel's 16-lane blocks, scales from tiny to large logits.
  for (int64_t c : {1, 7, 16, 33, 1024}) {
    for (double scale : {0.1, 5.0, 40.0}) {
      CAPTURE(c, scale);
      const int64_t b = 37;
      auto base = torch::randn({b, c}) * scale;
      auto targets = torch::randint(0, c, {b}, torch::kLong);
      auto weights = torch::rand({b});
      auto run = [&](bool fused) {
        auto x = base.clone().requires_grad_(true);
        auto loss = fused ? rowwise_cross_entropy(x, targets)
                          : rowwise_cross_entropy_reference(x, targets);
        (loss * weights).sum().backward();
        return std::make_pair(loss.detach(), x.grad());
      };
      auto [lf, gf] = run(true);
      auto [lr, gr] = run(false);
      require_close(lf, lr.to(torch::kFloat64), 1e-5, 1e-5);
      // Both float32 paths round x - logsumexp(x) at the scale of the logits: compare each to
      // float64 with a tolerance that grows with that scale.
      const double atol = 1e-7 * (1 + scale);
      require_close(gf, gr.to(torch::kFloat64), 1e-4, 2 * atol);
      auto x64 = base.to(torch::kFloat64);
      auto expected = torch::logsumexp(x64, 1) - x64.gather(1, targets.unsqueeze(1)).squeeze(1);
      require_close(lf, expected, 1e-5, 1e-5);
      auto onehot = torch::zeros({b, c}, torch::kFloat64).scatter_(1, targets.unsqueeze(1), 1.0);
      auto grad64 = weights.to(torch::kFloat64).unsqueeze(1) * (torch::softmax(x64, 1) - onehot);
      require_close(gf, grad64, 1e-4, atol);
    }
  }
}

TEST_CASE("rowwise_cross_entropy handles masked, infinite and NaN logits like the reference",
          "[loss]") {
  auto x = torch::tensor({{1.0f, -1e9f, 2.0f, 0.5f},
                          {-std::numeric_limits<float>::infinity(), 3.0f, 1.0f, 0.0f},
                          {0.0f, std::numeric_limits<float>::quiet_NaN(), 1.0f, 2.0f}});
  auto t = torch::tensor({0L, 1L, 2L});
  auto lf = rowwise_cross_entropy(x, t);
  auto lr = rowwise_cross_entropy_reference(x, t);
  require_close(lf.narrow(0, 0, 2), lr.narrow(0, 0, 2).to(torch::kFloat64), 1e-6, 1e-6);
  CHECK(std::isnan(lf[2].item<float>()));
  CHECK(std::isnan(lr[2].item<float>()));
  auto xg = x.narrow(0, 0, 2).clone().requires_grad_(true);
  rowwise_cross_entropy(xg, t.narrow(0, 0, 2)).sum().backward();
  CHECK(xg.grad()[0][1].item<float>() == 0.0f);  // a masked column gets exactly no gradient
  CHECK(xg.grad()[1][0].item<float>() == 0.0f);
  require_close(xg.grad().sum(1), torch::zeros({2}, torch::kFloat64), 0, 1e-6);
}

TEST_CASE("rowwise_cross_entropy names an out-of-range target; float64 uses the reference",
          "[loss]") {
  auto x = torch::randn({3, 4});
  CHECK_THROWS_WITH(rowwise_cross_entropy(x, torch::tensor({0L, 4L, 1L})),
                    Catch::Contains("target 4 of row 1 is outside [0, 4)"));
  auto x64 = torch::randn({3, 4}, torch::kFloat64);
  auto t = torch::tensor({0L, 3L, 1L});
  CHECK(torch::equal(rowwise_cross_entropy(x64, t), rowwise_cross_entropy_reference(x64, t)));
}

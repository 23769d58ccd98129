#include "models/layers/regularization.h"

#include "support.h"

using namespace recsys::models;
using recsys::testing::require_close;

TEST_CASE("mba_l2 value and gradient touch only the batch's distinct rows", "[din]") {
  recsys::testing::seed(5);
  auto weight = torch::randn({7, 3}, torch::kFloat64).requires_grad_(true);
  auto ids =
      torch::tensor({1, 3, 3, 0, 5, 1, 3, 0}, torch::kLong).view({2, 4});  // distinct: 1, 3, 5
  auto inv = torch::tensor({0.9f, 0.5f, 0.7f, 0.25f, 0.3f, 0.125f, 0.6f});
  auto reg = mba_l2(weight, ids, inv);

  auto w = weight.detach();
  double expected = 0;
  for (int64_t j : {1, 3, 5})
    expected += 0.5 * inv[j].item<double>() * w[j].pow(2).sum().item<double>();
  require_close(reg.item<double>(), expected, 1e-7);  // inv is float32

  reg.backward();
  auto grad = weight.grad();
  for (int64_t j : {0, 2, 4, 6}) REQUIRE((grad[j] == 0).all().item<bool>());
  for (int64_t j : {1, 3, 5})
    require_close(grad[j], w[j] * static_cast<double>(inv[j].item<float>()), 1e-12, 1e-12);
}

TEST_CASE("mba_l2 of a padding-only batch is zero", "[din]") {
  auto weight = torch::randn({4, 2}).requires_grad_(true);
  auto reg = mba_l2(weight, torch::zeros({3}, torch::kLong), torch::ones({4}));
  REQUIRE(reg.item<double>() == 0.0);
  reg.backward();
  REQUIRE((weight.grad() == 0).all().item<bool>());
}

TEST_CASE("plain_l2 and inverse_counts", "[din]") {
  auto weight =
      torch::tensor({1.0, -2.0, 3.0, 0.5}, torch::kFloat64).view({2, 2}).requires_grad_(true);
  auto reg = plain_l2(weight);
  require_close(reg.item<double>(), 0.5 * (1 + 4 + 9 + 0.25));
  reg.backward();
  require_close(weight.grad(), weight.detach(), 0, 0);
  auto inv = inverse_counts(torch::tensor({0, 1, 4}, torch::kLong));
  require_close(inv, torch::tensor({1.0f, 1.0f, 0.25f}), 0, 0);
}

#include "models/layers/attention.h"

#include <cmath>
#include <vector>

#include "support.h"

using namespace recsys::models;
using recsys::testing::require_close;

namespace {

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

/// Copies every parameter and buffer of `from` into `to` (same architecture).
void copy_state(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard guard;
  auto dst = to.named_parameters();
  for (const auto& p : from.named_parameters()) dst[p.key()].copy_(p.value());
  auto dst_b = to.named_buffers();
  for (const auto& b : from.named_buffers()) dst_b[b.key()].copy_(b.value());
}

torch::Tensor example_mask() {
  // Row 0: 3 valid of 4; row 1: 1 valid; row 2: 4 valid.
  return torch::tensor({1, 1, 1, 0, 1, 0, 0, 0, 1, 1, 1, 1}, torch::kBool).view({3, 4});
}

}  // namespace

TEST_CASE("ActivationUnit matches a hand computation", "[din]") {
  const int64_t d = 2, h = 3;
  for (bool fused : {true, false}) {
    ActivationUnit unit(ActivationUnitOptions(d).hidden({h}).fused_first_layer(fused));
    unit->to(torch::kFloat64);
    // Hand-set weights: W1 [h, 4d], b1 [h], W2 [1, h], b2 [1].
    std::vector<std::vector<double>> w1(h, std::vector<double>(4 * d));
    std::vector<double> b1(h), w2(h);
    const double b2 = -0.25;
    {
      torch::NoGradGuard guard;
      auto& first = unit->first_layer();
      auto& last = unit->tail()->linears().back();
      for (int64_t i = 0; i < h; ++i) {
        for (int64_t j = 0; j < 4 * d; ++j) {
          w1[i][j] = 0.1 * (i + 1) - 0.07 * j + 0.01 * i * j;
          first->weight[i][j] = w1[i][j];
        }
        b1[i] = 0.05 * (i - 1);
        first->bias[i] = b1[i];
        w2[i] = 0.3 - 0.2 * i;
        last->weight[0][i] = w2[i];
      }
      last->bias[0] = b2;
    }
    auto q = torch::tensor({0.5, -1.0, 2.0, 0.25}, torch::kFloat64).view({2, d});
    auto k = torch::tensor({1.0, 2.0, -0.5, 0.5, 3.0, -3.0, 0.1, 0.2, -1.0, 1.5, 0.7, 0.0},
                           torch::kFloat64)
                 .view({2, 3, d});
    auto mask = torch::tensor({1, 1, 0, 1, 1, 1}, torch::kBool).view({2, 3});
    auto out = unit->forward(q, k, mask);

    auto qa = q.accessor<double, 2>();
    auto ka = k.accessor<double, 3>();
    auto ma = mask.accessor<bool, 2>();
    auto expected_w = torch::zeros({2, 3}, torch::kFloat64);
    auto expected_p = torch::zeros({2, d}, torch::kFloat64);
    for (int64_t b = 0; b < 2; ++b) {
      for (int64_t t = 0; t < 3; ++t) {
        if (!ma[b][t]) continue;
        std::vector<double> x;
        for (int64_t j = 0; j < d; ++j) x.push_back(qa[b][j]);
        for (int64_t j = 0; j < d; ++j) x.push_back(ka[b][t][j]);
        for (int64_t j = 0; j < d; ++j) x.push_back(qa[b][j] - ka[b][t][j]);
        for (int64_t j = 0; j < d; ++j) x.push_back(qa[b][j] * ka[b][t][j]);
        double s = b2;
        for (int64_t i = 0; i < h; ++i) {
          double z = b1[i];
          for (int64_t j = 0; j < 4 * d; ++j) z += w1[i][j] * x[j];
          s += w2[i] * sigmoid(z);
        }
        expected_w[b][t] = s;
        for (int64_t j = 0; j < d; ++j) expected_p[b][j] += s * ka[b][t][j];
      }
    }
    require_close(out.weights, expected_w, 1e-12, 1e-12);
    require_close(out.pooled, expected_p, 1e-12, 1e-12);
  }
}

TEST_CASE("ActivationUnit ignores padded keys and gives them zero weight", "[din]") {
  recsys::testing::seed(1);
  for (bool softmax : {false, true}) {
    for (bool fused : {true, false}) {
      ActivationUnit unit(ActivationUnitOptions(4).softmax(softmax).fused_first_layer(fused));
      auto q = torch::randn({3, 4});
      auto k = torch::randn({3, 4, 4});
      auto mask = example_mask();
      auto a = unit->forward(q, k, mask);
      auto k2 = torch::where(mask.unsqueeze(-1), k, 100 * torch::randn({3, 4, 4}));
      auto b = unit->forward(q, k2, mask);
      REQUIRE(torch::equal(a.weights, b.weights));
      require_close(a.pooled, b.pooled, 0, 1e-6);
      REQUIRE((a.weights.masked_select(~mask) == 0).all().item<bool>());
    }
  }
}

TEST_CASE("ActivationUnit fused first layer and scorer (packed or not) equal the composed path",
          "[din]") {
  // The plain unit concatenates [q, k, q - k, q * k] and composes its scorer's layers; the
  // fused one also runs the scorer's tail as one kernel for sigmoid and ReLU.
  for (auto act : {Activation::kSigmoid, Activation::kRelu, Activation::kDice, Activation::kPrelu}) {
    for (bool softmax : {false, true}) {
     for (bool pack : {true, false}) {
      INFO("activation " << static_cast<int>(act) << " softmax " << softmax << " pack " << pack);
      recsys::testing::seed(2);
      auto opts = ActivationUnitOptions(5).hidden({7, 6}).activation(act).softmax(softmax);
      ActivationUnit fused(ActivationUnitOptions(opts).fused_first_layer(true).pack_valid(pack));
      CHECK(fused->packs(torch::kCPU) == (pack && act != Activation::kDice));
      ActivationUnit plain(ActivationUnitOptions(opts).fused_first_layer(false).fused_tail(false));
      fused->to(torch::kFloat64);
      plain->to(torch::kFloat64);
      copy_state(*fused, *plain);
      auto q0 = torch::randn({4, 5}, torch::kFloat64);
      auto k0 = torch::randn({4, 4, 5}, torch::kFloat64);
      // Row 3 has no valid step at all.
      auto mask = torch::cat({example_mask(), torch::zeros({1, 4}, torch::kBool)});
      auto run = [&](ActivationUnit& unit) {
        auto q = q0.clone().requires_grad_(true);
        auto k = k0.clone().requires_grad_(true);
        auto out = unit->forward(q, k, mask);
        (out.pooled.pow(2).sum() + out.weights.sin().sum()).backward();
        return std::make_tuple(out, q.grad(), k.grad());
      };
      auto [of, qf, kf] = run(fused);
      auto [op, qp, kp] = run(plain);
      require_close(of.weights, op.weights, 0, 1e-10);
      require_close(of.pooled, op.pooled, 0, 1e-10);
      require_close(qf, qp, 0, 1e-10);
      require_close(kf, kp, 0, 1e-10);
      auto pp = plain->named_parameters();
      for (const auto& p : fused->named_parameters()) {
        INFO(p.key());
        require_close(p.value().grad(), pp[p.key()].grad(), 0, 1e-10);
      }
      CHECK((of.weights.masked_select(~mask) == 0).all().item<bool>());
      CHECK((of.pooled[3] == 0).all().item<bool>());
     }
    }
  }
}

TEST_CASE("ActivationUnit softmax sums to one over valid steps", "[din]") {
  recsys::testing::seed(3);
  ActivationUnit unit(ActivationUnitOptions(4).softmax(true));
  auto q = torch::randn({4, 4});
  auto k = torch::randn({4, 4, 4}).requires_grad_(true);
  auto mask = torch::cat({example_mask(), torch::zeros({1, 4}, torch::kBool)});  // row 3 is empty
  auto out = unit->forward(q, k, mask);
  auto sums = out.weights.sum(1);
  require_close(sums.narrow(0, 0, 3), torch::ones({3}), 0, 1e-6);
  REQUIRE((out.weights[3] == 0).all().item<bool>());
  REQUIRE((out.weights.masked_select(~mask) == 0).all().item<bool>());
  out.pooled.sum().backward();
  REQUIRE(torch::isfinite(k.grad()).all().item<bool>());
  for (const auto& p : unit->parameters()) REQUIRE(torch::isfinite(p.grad()).all().item<bool>());
}

TEST_CASE("ActivationUnit rejects a non-bool mask with a fix", "[din]") {
  ActivationUnit unit(ActivationUnitOptions(2));
  auto q = torch::randn({1, 2});
  auto k = torch::randn({1, 3, 2});
  try {
    unit->forward(q, k, torch::ones({1, 3}));
    FAIL("expected an error");
  } catch (const c10::Error& e) {
    REQUIRE(std::string(e.what()).find("mask must be a bool tensor") != std::string::npos);
  }
}

TEST_CASE("BilinearAttention matches a hand computation", "[din]") {
  const int64_t dh = 3, dq = 2, t_len = 4;
  BilinearAttention att(dh, dq);
  att->to(torch::kFloat64);
  double w[dh][dq] = {{0.5, -1.0}, {0.25, 0.75}, {-0.5, 0.1}};
  {
    torch::NoGradGuard guard;
    for (int64_t i = 0; i < dh; ++i)
      for (int64_t j = 0; j < dq; ++j) att->weight[i][j] = w[i][j];
  }
  recsys::testing::seed(4);
  auto q = torch::randn({3, dq}, torch::kFloat64);
  auto s = torch::randn({3, t_len, dh}, torch::kFloat64);
  auto mask = torch::tensor({1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0}, torch::kBool).view({3, t_len});
  auto out = att->forward(q, s, mask);

  auto qa = q.accessor<double, 2>();
  auto sa = s.accessor<double, 3>();
  auto ma = mask.accessor<bool, 2>();
  auto expected = torch::zeros({3, t_len}, torch::kFloat64);
  for (int64_t b = 0; b < 3; ++b) {
    std::vector<double> score(t_len, 0.0);
    double total = 0;
    for (int64_t t = 0; t < t_len; ++t) {
      if (!ma[b][t]) continue;
      for (int64_t i = 0; i < dh; ++i)
        for (int64_t j = 0; j < dq; ++j) score[t] += sa[b][t][i] * w[i][j] * qa[b][j];
      total += std::exp(score[t]);
    }
    for (int64_t t = 0; t < t_len; ++t)
      if (ma[b][t]) expected[b][t] = std::exp(score[t]) / total;
  }
  require_close(out, expected, 1e-12, 1e-12);
  REQUIRE((out.masked_select(~mask) == 0).all().item<bool>());
  REQUIRE((out[2] == 0).all().item<bool>());
}

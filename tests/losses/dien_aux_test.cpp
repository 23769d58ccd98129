#include "losses/dien_aux.h"

#include <cmath>
#include <vector>

#include "models/dien/dien.h"
#include "support.h"

using recsys::losses::auxiliary_loss;
using recsys::losses::auxiliary_pairs;
using recsys::testing::require_close;

namespace {
double softplus(double x) { return std::log1p(std::exp(x)); }
double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
}  // namespace

TEST_CASE("auxiliary_loss is the masked mean of the pair BCE terms", "[dien][dien_aux]") {
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto pos = torch::tensor({{0.5, -1.0, 2.0}, {3.0, 100.0, -7.0}}, f64);
  auto neg = torch::tensor({{-0.25, 1.5, 0.0}, {-2.0, 50.0, 9.0}}, f64);
  auto mask = torch::tensor({{true, true, false}, {true, false, false}});
  // -log sigmoid(p) - log(1 - sigmoid(n)) for the three valid pairs, over 3 pairs.
  const double expected = (softplus(-0.5) + softplus(-0.25) + softplus(1.0) + softplus(1.5) +
                           softplus(-3.0) + softplus(-2.0)) /
                          3.0;
  require_close(auxiliary_loss(pos, neg, mask).item<double>(), expected, 1e-14);
  // [B, P, 1] logits are accepted.
  require_close(auxiliary_loss(pos.unsqueeze(-1), neg.unsqueeze(-1), mask).item<double>(), expected,
                1e-14);
  // No valid pair: 0, not NaN.
  REQUIRE(auxiliary_loss(pos, neg, torch::zeros_like(mask)).item<double>() == 0.0);
  // Padded pairs with infinite or NaN logits change nothing.
  auto pos_bad = pos.clone(), neg_bad = neg.clone();
  pos_bad.index_put_({0, 2}, -INFINITY);
  neg_bad.index_put_({1, 2}, NAN);
  require_close(auxiliary_loss(pos_bad, neg_bad, mask).item<double>(), expected, 1e-14);
}

TEST_CASE("auxiliary_loss with AuxiliaryNet matches a float64 hand computation",
          "[dien][dien_aux]") {
  recsys::testing::seed(5);
  const int64_t H = 3, E = 2;
  recsys::models::AuxiliaryNet net(recsys::models::AuxiliaryNetOptions(H, E).hidden({4, 3}));
  net->to(torch::kFloat64);
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto states = torch::randn({2, 4, H}, f64);
  auto pos = torch::randn({2, 4, E}, f64);
  auto neg = torch::randn({2, 4, E}, f64);
  const std::vector<int64_t> lengths{4, 2};
  auto mask = torch::tensor({{true, true, true, true}, {true, true, false, false}});

  auto pairs = auxiliary_pairs(states, pos, neg, mask);
  auto loss = auxiliary_loss(net->forward(pairs.states, pairs.positive),
                             net->forward(pairs.states, pairs.negative), pairs.mask);

  // By hand: sigmoid MLP [h, e] -> 4 -> 3 -> 1 with the net's weights, scalar arithmetic.
  auto& lin = net->mlp()->linears();
  auto mlp = [&](const std::vector<double>& x) {
    std::vector<double> a = x;
    for (size_t l = 0; l < lin.size(); ++l) {
      auto w = lin[l]->weight.accessor<double, 2>();
      auto b = lin[l]->bias.accessor<double, 1>();
      std::vector<double> y(w.size(0));
      for (int64_t o = 0; o < w.size(0); ++o) {
        double s = b[o];
        for (int64_t i = 0; i < w.size(1); ++i) s += w[o][i] * a[i];
        y[o] = l + 1 < lin.size() ? sigmoid(s) : s;
      }
      a = y;
    }
    return a[0];
  };
  auto sa = states.accessor<double, 3>(), pa = pos.accessor<double, 3>(),
       na = neg.accessor<double, 3>();
  double total = 0;
  int pairs_count = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t + 1 < lengths[b]; ++t) {
      std::vector<double> xp, xn;
      for (int64_t i = 0; i < H; ++i) xp.push_back(sa[b][t][i]);
      xn = xp;
      for (int64_t i = 0; i < E; ++i) {
        xp.push_back(pa[b][t + 1][i]);
        xn.push_back(na[b][t + 1][i]);
      }
      total += -std::log(sigmoid(mlp(xp))) - std::log(1.0 - sigmoid(mlp(xn)));
      ++pairs_count;
    }
  REQUIRE(pairs_count == 4);
  require_close(loss.item<double>(), total / pairs_count, 1e-12);
}

TEST_CASE("auxiliary loss ignores padding in value and gradient", "[dien][dien_aux]") {
  recsys::testing::seed(6);
  const int64_t H = 3, E = 2, T = 3;
  recsys::models::AuxiliaryNet net(recsys::models::AuxiliaryNetOptions(H, E).hidden({5}));
  net->to(torch::kFloat64);
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto states = torch::randn({2, T, H}, f64);
  auto pos = torch::randn({2, T, E}, f64);
  auto neg = torch::randn({2, T, E}, f64);
  auto mask = torch::tensor({{true, true, true}, {true, true, false}});

  auto run = [&](int64_t pad) {
    // Pad to T + pad with random values (not zeros) and extend the mask with false.
    auto grow = [&](const torch::Tensor& x) {
      auto p = torch::randn({2, pad, x.size(2)}, f64) * 10;
      return torch::cat({x, p}, 1).detach().requires_grad_();
    };
    auto s = grow(states), p = grow(pos), n = grow(neg);
    auto m = torch::cat({mask, torch::zeros({2, pad}, torch::kBool)}, 1);
    // The padded row 1 also gets garbage at its own padded step T - 1.
    {
      torch::NoGradGuard g;
      s.index_put_({1, T - 1}, 100.0);
      p.index_put_({1, T - 1}, -100.0);
    }
    auto pairs = auxiliary_pairs(s, p, n, m);
    auto loss = auxiliary_loss(net->forward(pairs.states, pairs.positive),
                               net->forward(pairs.states, pairs.negative), pairs.mask);
    loss.backward();
    return std::vector<torch::Tensor>{loss.detach(), s.grad(), p.grad(), n.grad()};
  };
  auto a = run(0);
  auto b = run(4);
  require_close(a[0], b[0], 0, 1e-14);
  using torch::indexing::Slice;
  for (int i = 1; i < 4; ++i) {
    require_close(b[i].index({Slice(), Slice(0, T)}), a[i], 0, 1e-14);
    REQUIRE(b[i].index({Slice(), Slice(T)}).abs().max().item<double>() == 0.0);
    // Row 1's own padded step has no gradient either.
    REQUIRE(a[i].index({1, T - 1}).abs().max().item<double>() == 0.0);
  }
}

TEST_CASE("auxiliary_pairs rejects bad shapes with a fix", "[dien][dien_aux]") {
  auto s = torch::zeros({2, 1, 3});
  auto e = torch::zeros({2, 1, 2});
  auto m = torch::ones({2, 1}, torch::kBool);
  REQUIRE_THROWS_WITH(auxiliary_pairs(s, e, e, m), Catch::Contains("T >= 2"));
  auto s2 = torch::zeros({2, 3, 3});
  REQUIRE_THROWS_WITH(auxiliary_pairs(s2, torch::zeros({2, 3, 2}), torch::zeros({2, 3, 4}),
                                      torch::ones({2, 3}, torch::kBool)),
                      Catch::Contains("shape of positive"));
}

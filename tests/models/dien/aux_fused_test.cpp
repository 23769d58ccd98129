// The fused auxiliary-loss kernel (models/dien/aux_fused.h) against its oracle, the composed
// AuxiliaryNet::forward_pairs + losses::auxiliary_loss: values and every gradient.
#include "models/dien/aux_fused.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <iostream>

#include "losses/dien_aux.h"
#include "models/dien/dien.h"
#include "support.h"

using namespace recsys::models;
using recsys::testing::require_close;

namespace {

struct Pairs {
  torch::Tensor h, pos, neg;
};

Pairs make_pairs(int64_t P, int64_t H, int64_t E, torch::Dtype dtype, uint64_t seed) {
  recsys::testing::seed(seed);
  Pairs p{torch::randn({P, H}, dtype), torch::randn({P, E}, dtype), torch::randn({P, E}, dtype)};
  for (auto* t : {&p.h, &p.pos, &p.neg}) t->requires_grad_(true);
  return p;
}

// The oracle: logits of every pair through the MLP, then the loss of losses/dien_aux.
torch::Tensor composed_loss(AuxiliaryNet& net, const Pairs& p) {
  const int64_t P = p.h.size(0);
  auto logits = net->mlp()->forward(torch::cat({torch::cat({p.h, p.pos}, 1),
                                                torch::cat({p.h, p.neg}, 1)}))
                    .squeeze(-1);
  return recsys::losses::auxiliary_loss(logits.narrow(0, 0, P).unsqueeze(0),
                                        logits.narrow(0, P, P).unsqueeze(0),
                                        torch::ones({1, P}, torch::kBool));
}

struct Result {
  double loss;
  std::vector<torch::Tensor> grads;  // h, pos, neg, then every parameter
};

Result run(AuxiliaryNet& net, const Pairs& p, bool fused, double scale = 1.0) {
  for (auto* t : {&p.h, &p.pos, &p.neg})
    if (t->grad().defined()) t->mutable_grad().zero_();
  net->zero_grad();
  auto loss = fused ? net->loss_pairs(p.h, p.pos, p.neg) : composed_loss(net, p);
  (loss * scale).backward();
  Result r{loss.item<double>(), {p.h.grad().clone(), p.pos.grad().clone(), p.neg.grad().clone()}};
  for (auto& param : net->parameters()) r.grads.push_back(param.grad().clone());
  return r;
}

void require_same(const Result& a, const Result& b, double tol) {
  require_close(a.loss, b.loss, tol);
  REQUIRE(a.grads.size() == b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i) {
    INFO("gradient " << i << " (0-2: h, positive, negative; then the parameters)");
    require_close(a.grads[i], b.grads[i], tol, tol);
  }
}

}  // namespace

TEST_CASE("Fused auxiliary loss equals the composed MLP + loss in float64, every gradient",
          "[dien][kernels]") {
  const std::vector<std::vector<int64_t>> hidden_sets{{100, 50}, {7, 5, 3}, {6}, {}};
  for (auto act : {Activation::kSigmoid, Activation::kTanh, Activation::kRelu,
                   Activation::kNone}) {
    for (const auto& hidden : hidden_sets) {
      // 1 pair, a partial block, several blocks with a partial last one.
      for (int64_t P : {1, 37, 64, 203}) {
        CAPTURE(static_cast<int>(act), hidden.size(), P);
        recsys::testing::seed(5);
        AuxiliaryNet net(AuxiliaryNetOptions(5, 4).hidden(hidden).activation(act));
        net->to(torch::kFloat64);
        auto pairs = make_pairs(P, 5, 4, torch::kFloat64, 11 + static_cast<uint64_t>(P));
        REQUIRE(auxiliary_loss_fusable(pairs.h, pairs.pos, pairs.neg, net->mlp()->options(),
                                       {net->mlp()->linears()[0]->weight}));
        auto fused = run(net, pairs, true), plain = run(net, pairs, false);
        require_same(fused, plain, 1e-11);
        REQUIRE(fused.loss > 0);
      }
    }
  }
}

TEST_CASE("Fused auxiliary loss: float32, the incoming gradient's scale, no-grad mode, threads",
          "[dien][kernels]") {
  recsys::testing::seed(2);
  AuxiliaryNet net(AuxiliaryNetOptions(36, 36));  // the paper's widths: 100 -> 50 -> 1, sigmoid
  auto pairs = make_pairs(3000, 36, 36, torch::kFloat32, 4);
  auto fused = run(net, pairs, true), plain = run(net, pairs, false);
  require_same(fused, plain, 2e-5);

  // The backward scales the gradients computed in the forward by the incoming gradient.
  auto scaled = run(net, pairs, true, -2.5);
  for (size_t i = 0; i < fused.grads.size(); ++i)
    require_close(scaled.grads[i], fused.grads[i] * -2.5, 1e-6, 1e-9);

  // Without gradients only the value is computed.
  {
    torch::NoGradGuard guard;
    auto v = net->loss_pairs(pairs.h, pairs.pos, pairs.neg);
    CHECK_FALSE(v.requires_grad());
    require_close(v.item<double>(), fused.loss, 1e-6);
  }

  // Its gradients are numbers computed in the forward: a double backward is refused.
  {
    auto v = net->loss_pairs(pairs.h, pairs.pos, pairs.neg);
    CHECK_THROWS_WITH(torch::autograd::grad({v}, {pairs.h}, {}, /*retain_graph=*/true,
                                            /*create_graph=*/true),
                      Catch::Contains("double backward"));
  }

  // One thread and two: the same value and gradients up to summation order.
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  auto one = run(net, pairs, true);
  at::set_num_threads(2);
  auto two = run(net, pairs, true);
  at::set_num_threads(threads);
  require_same(one, two, 1e-5);
}

TEST_CASE("Fused auxiliary loss falls back where it does not apply, and checks its shapes",
          "[dien][kernels]") {
  auto pairs = make_pairs(9, 3, 2, torch::kFloat64, 1);
  for (auto act : {Activation::kPrelu, Activation::kDice}) {
    CAPTURE(static_cast<int>(act));
    recsys::testing::seed(3);
    AuxiliaryNet net(AuxiliaryNetOptions(3, 2).hidden({4}).activation(act));
    net->to(torch::kFloat64);
    CHECK_FALSE(auxiliary_loss_fusable(pairs.h, pairs.pos, pairs.neg, net->mlp()->options(),
                                       {net->mlp()->linears()[0]->weight}));
    // loss_pairs takes the composed path: the same as the oracle.
    require_same(run(net, pairs, true), run(net, pairs, false), 1e-12);
  }
  recsys::testing::seed(3);
  AuxiliaryNet net(AuxiliaryNetOptions(3, 2).hidden({4}));
  net->to(torch::kFloat64);
  std::vector<torch::Tensor> w, b;
  for (auto& l : net->mlp()->linears()) {
    w.push_back(l->weight);
    b.push_back(l->bias);
  }
  CHECK_FALSE(auxiliary_loss_fusable(pairs.h.to(torch::kFloat32), pairs.pos, pairs.neg,
                                     net->mlp()->options(), w));
  CHECK_THROWS_WITH(auxiliary_loss_fused(pairs.h, pairs.pos.narrow(0, 0, 4), pairs.neg, w, b,
                                         Activation::kSigmoid),
                    Catch::Contains("positive, negative [P, E]"));
  CHECK_THROWS_WITH(auxiliary_loss_fused(pairs.h.narrow(1, 0, 2), pairs.pos, pairs.neg, w, b,
                                         Activation::kSigmoid),
                    Catch::Contains("layer 0"));
  CHECK_THROWS_WITH(auxiliary_loss_fused(pairs.h, pairs.pos, pairs.neg, {w[0]}, {b[0]},
                                         Activation::kSigmoid),
                    Catch::Contains("1 output"));
}

TEST_CASE("DIEN with the fused auxiliary loss equals DIEN without it", "[dien]") {
  CtrMlpOptions mlp;
  mlp.hidden = {8, 4};
  auto options = DienOptions(CtrEmbeddingsOptions(40, 9).item_dim(4).category_dim(3))
                     .extractor_hidden(5)
                     .aux_hidden({6, 3})
                     .mlp(mlp)
                     .alpha_aux(0.7);
  for (bool packed : {true, false}) {
    CAPTURE(packed);
    recsys::testing::seed(8);
    Dien fused(DienOptions(options).pack_valid(packed));
    Dien plain(DienOptions(options).pack_valid(packed).fused_aux(false));
    fused->to(torch::kFloat64);
    plain->to(torch::kFloat64);
    {
      torch::NoGradGuard guard;
      auto dst = plain->named_parameters();
      for (auto& p : fused->named_parameters()) dst[p.key()].copy_(p.value());
    }
    recsys::testing::seed(9);
    CtrModelInput in;
    const int64_t B = 6, T = 9;
    in.item = torch::randint(1, 40, {B});
    in.category = torch::randint(1, 9, {B});
    in.hist_length = torch::tensor({9, 3, 1, 5, 8, 2});
    in.hist_mask = torch::arange(T).unsqueeze(0) < in.hist_length.unsqueeze(1);
    auto ids = [&](int64_t hi) {
      return torch::randint(1, hi, {B, T}).masked_fill(in.hist_mask.logical_not(), 0);
    };
    in.hist_item = ids(40);
    in.hist_category = ids(9);
    in.neg_hist_item = ids(40);
    in.neg_hist_category = ids(9);
    auto labels = torch::tensor({1.0, 0.0, 0.0, 1.0, 1.0, 0.0}, torch::kFloat64);
    auto step = [&](Dien& m) {
      auto out = m->forward(in);
      (torch::binary_cross_entropy_with_logits(out.logits, labels) + out.aux_loss).backward();
      return out.aux_loss.item<double>();
    };
    require_close(step(fused), step(plain), 1e-12);
    auto gp = plain->named_parameters();
    for (auto& p : fused->named_parameters()) {
      INFO("parameter " << p.key());
      auto a = p.value().grad(), b = gp[p.key()].grad();
      require_close(a.is_sparse() ? a.to_dense() : a, b.is_sparse() ? b.to_dense() : b, 1e-10,
                    1e-12);
    }
  }
}

TEST_CASE("Fused auxiliary loss timing at the bench shapes", "[.aux-timing]") {
  recsys::testing::seed(2);
  AuxiliaryNet net(AuxiliaryNetOptions(36, 36));
  auto pairs = make_pairs(3400, 36, 36, torch::kFloat32, 4);
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  for (bool grad : {false, true}) {
    std::vector<double> ms;
    for (int i = 0; i < 40; ++i) {
      torch::AutoGradMode mode(grad);
      auto t0 = std::chrono::steady_clock::now();
      auto l = net->loss_pairs(pairs.h, pairs.pos, pairs.neg);
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    std::cout << "fused forward only, grads " << grad << ": " << ms[ms.size() / 2] << " ms\n";
  }
  for (int rep = 0; rep < 3; ++rep)
    for (bool fused : {true, false}) {
      std::vector<double> ms;
      for (int i = 0; i < 40; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        run(net, pairs, fused);
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(ms.begin(), ms.end());
      std::cout << (fused ? "fused " : "composed ") << ms[ms.size() / 2] << " ms\n";
    }
  at::set_num_threads(threads);
}

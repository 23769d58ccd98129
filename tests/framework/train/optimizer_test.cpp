// Row-wise sparse updates, dense updates against torch::optim, clipping and checkpoints.
#include "framework/train/optimizer.h"

#include <cmath>
#include <set>

#include "models/layers/embedding.h"
#include "support.h"

using namespace recsys::train;
using recsys::testing::require_close;
using Rows = std::vector<std::vector<double>>;

namespace {

constexpr int64_t kRows = 7, kDim = 3;

torch::Tensor initial_table() {
  auto t = torch::empty({kRows, kDim}, torch::kFloat32);
  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t c = 0; c < kDim; ++c) t[r][c] = 0.1 * static_cast<double>(r * kDim + c) - 0.9;
  return t;
}

struct SparseStep {
  std::vector<std::vector<int64_t>> bags;  // [B, L], 0 = padding
  std::vector<std::vector<double>> coef;   // [B, D]: loss = sum_b <pooled_b, coef_b>
};

// Rows 2, 5, 6 are never touched; row 1 is skipped by step 2; row 0 only appears as padding.
const std::vector<SparseStep> kSteps = {
    {{{1, 3, 0}, {1, 0, 0}}, {{0.5, -1.0, 2.0}, {0.25, 0.75, -0.5}}},
    {{{3, 4, 4}, {4, 0, 0}}, {{-0.3, 0.2, 0.1}, {1.5, -0.5, 0.4}}},
    {{{1, 4, 0}, {3, 1, 1}}, {{0.6, 0.6, -0.6}, {-1.2, 0.1, 0.9}}},
};

torch::Tensor to_tensor(const std::vector<std::vector<double>>& m, torch::Dtype dtype) {
  auto t = torch::empty({static_cast<int64_t>(m.size()), static_cast<int64_t>(m[0].size())}, dtype);
  for (size_t i = 0; i < m.size(); ++i)
    for (size_t j = 0; j < m[0].size(); ++j) t[static_cast<int64_t>(i)][static_cast<int64_t>(j)] = m[i][j];
  return t;
}

/// Float64 reference of the row-wise rule: only touched rows and their state change; Adam bias
/// correction uses the global step count (the SparseAdam rule).
struct Reference {
  OptimizerOptions o;
  Rows p, s1, s2;
  int64_t t = 0;

  Reference(const OptimizerOptions& options, const torch::Tensor& init) : o(options) {
    auto a = init.to(torch::kFloat64);
    p.assign(kRows, std::vector<double>(kDim));
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t c = 0; c < kDim; ++c) p[r][c] = a[r][c].item<double>();
    double s1_init = o.kind == OptimizerKind::kAdagrad ? o.initial_accumulator : 0.0;
    s1.assign(kRows, std::vector<double>(kDim, s1_init));
    s2.assign(kRows, std::vector<double>(kDim, 0.0));
  }

  std::set<int64_t> step(const SparseStep& s) {
    ++t;
    Rows g(kRows, std::vector<double>(kDim, 0.0));
    std::set<int64_t> touched;
    for (size_t b = 0; b < s.bags.size(); ++b)
      for (int64_t id : s.bags[b]) {
        if (id == 0) continue;
        touched.insert(id);
        for (int64_t c = 0; c < kDim; ++c) g[id][c] += s.coef[b][c];
      }
    for (int64_t r : touched)
      for (int64_t c = 0; c < kDim; ++c) {
        double gr = g[r][c] + o.weight_decay * p[r][c];
        switch (o.kind) {
          case OptimizerKind::kAdam: {
            s1[r][c] = o.beta1 * s1[r][c] + (1 - o.beta1) * gr;
            s2[r][c] = o.beta2 * s2[r][c] + (1 - o.beta2) * gr * gr;
            double bc1 = 1 - std::pow(o.beta1, t), bc2 = 1 - std::pow(o.beta2, t);
            p[r][c] -= o.lr / bc1 * s1[r][c] / (std::sqrt(s2[r][c]) / std::sqrt(bc2) + o.eps);
            break;
          }
          case OptimizerKind::kAdagrad:
            s1[r][c] += gr * gr;
            p[r][c] -= o.lr * gr / (std::sqrt(s1[r][c]) + 1e-10);
            break;
          case OptimizerKind::kSgd:
            p[r][c] -= o.lr * gr;
            break;
        }
      }
    return touched;
  }
};

void check_sparse_against_reference(OptimizerOptions o) {
  for (bool fused : {true, false}) {
    INFO("fused " << fused);
    o.fused = fused;
  auto table = initial_table().requires_grad_(true);
  Optimizer opt({table}, o);
  Reference ref(o, table.detach());
  for (size_t k = 0; k < kSteps.size(); ++k) {
    INFO("step " << k + 1);
    const auto& s = kSteps[k];
    auto before = table.detach().clone();
    auto state_before = opt.state_tensors();
    opt.zero_grad();
    auto ids = torch::tensor(s.bags[0], torch::kInt64).unsqueeze(0);
    for (size_t b = 1; b < s.bags.size(); ++b)
      ids = torch::cat({ids, torch::tensor(s.bags[b], torch::kInt64).unsqueeze(0)});
    auto pooled = recsys::models::pooled_lookup(table, ids, recsys::models::Pooling::kSum, true);
    (pooled * to_tensor(s.coef, torch::kFloat32)).sum().backward();
    REQUIRE(table.grad().is_sparse());
    opt.step();
    auto touched = ref.step(s);
    auto state_after = opt.state_tensors();
    REQUIRE(state_after.size() == state_before.size());
    for (int64_t r = 0; r < kRows; ++r) {
      INFO("row " << r);
      if (touched.count(r)) {
        require_close(table.detach()[r], torch::tensor(ref.p[r], torch::kFloat64), 1e-5, 1e-6);
        if (!state_after.empty())
          require_close(state_after[0][r], torch::tensor(ref.s1[r], torch::kFloat64), 1e-5, 1e-7);
        if (state_after.size() > 1)
          require_close(state_after[1][r], torch::tensor(ref.s2[r], torch::kFloat64), 1e-5, 1e-9);
      } else {
        CHECK(torch::equal(table.detach()[r], before[r]));
        for (size_t i = 0; i < state_after.size(); ++i)
          CHECK(torch::equal(state_after[i][r], state_before[i][r]));
      }
    }
  }
  CHECK(opt.steps() == 3);
  // Never-touched rows still hold their initial values.
  auto init = initial_table();
  for (int64_t r : {0, 2, 5, 6}) CHECK(torch::equal(table.detach()[r], init[r]));
  }
}

}  // namespace

TEST_CASE("sparse Adam updates touched rows like a float64 reference", "[optim]") {
  OptimizerOptions o;
  o.kind = OptimizerKind::kAdam;
  o.lr = 0.05;
  o.beta1 = 0.8;
  o.beta2 = 0.95;
  check_sparse_against_reference(o);
  o.weight_decay = 0.1;
  check_sparse_against_reference(o);
}

TEST_CASE("sparse Adagrad updates touched rows like a float64 reference", "[optim]") {
  OptimizerOptions o;
  o.kind = OptimizerKind::kAdagrad;
  o.lr = 0.2;
  o.initial_accumulator = 0.1;
  check_sparse_against_reference(o);
  o.weight_decay = 0.05;
  check_sparse_against_reference(o);
}

TEST_CASE("sparse SGD updates touched rows like a float64 reference", "[optim]") {
  OptimizerOptions o;
  o.kind = OptimizerKind::kSgd;
  o.lr = 0.3;
  check_sparse_against_reference(o);
}

namespace {

/// Runs `steps` steps of ours and torch's optimizer on copies of the same linear layer.
template <class TorchOptimizer, class TorchOptions>
void compare_dense(OptimizerOptions ours, TorchOptions theirs, int steps) {
  for (bool fused : {true, false}) {
  INFO("fused " << fused);
  ours.fused = fused;
  recsys::testing::seed(3);
  torch::nn::Linear a(4, 3), b(4, 3);
  {
    torch::NoGradGuard g;
    b->weight.copy_(a->weight);
    b->bias.copy_(a->bias);
  }
  Optimizer opt_a(a->parameters(), ours);
  TorchOptimizer opt_b(b->parameters(), theirs);
  auto initial = a->weight.detach().clone();
  auto x = torch::randn({5, 4});
  auto y = torch::randn({5, 3});
  for (int s = 0; s < steps; ++s) {
    INFO("step " << s + 1);
    opt_a.zero_grad();
    opt_b.zero_grad();
    (a->forward(x) - y).pow(2).sum().backward();
    (b->forward(x) - y).pow(2).sum().backward();
    opt_a.step();
    opt_b.step();
    require_close(a->weight, b->weight, 1e-5, 1e-6);
    require_close(a->bias, b->bias, 1e-5, 1e-6);
  }
  CHECK_FALSE(torch::allclose(a->weight.detach(), initial));  // the parameters did move
  }
}

}  // namespace

TEST_CASE("dense Adam matches torch::optim::Adam over 5 steps", "[optim]") {
  OptimizerOptions o;
  o.kind = OptimizerKind::kAdam;
  o.lr = 0.01;
  o.beta1 = 0.85;
  o.beta2 = 0.99;
  o.eps = 1e-7;
  o.weight_decay = 0.02;
  compare_dense<torch::optim::Adam>(
      o, torch::optim::AdamOptions(0.01).betas({0.85, 0.99}).eps(1e-7).weight_decay(0.02), 5);
}

TEST_CASE("dense Adagrad and momentum SGD match torch::optim", "[optim]") {
  OptimizerOptions ag;
  ag.kind = OptimizerKind::kAdagrad;
  ag.lr = 0.1;
  ag.initial_accumulator = 0.1;
  compare_dense<torch::optim::Adagrad>(
      ag, torch::optim::AdagradOptions(0.1).initial_accumulator_value(0.1).eps(1e-10), 5);
  OptimizerOptions sgd;
  sgd.kind = OptimizerKind::kSgd;
  sgd.lr = 0.01;
  sgd.momentum = 0.9;
  compare_dense<torch::optim::SGD>(sgd, torch::optim::SGDOptions(0.01).momentum(0.9), 5);
}

TEST_CASE("grad_clip scales the global norm over sparse and dense gradients", "[optim]") {
  for (bool fused : {true, false}) {
  INFO("fused " << fused);
  auto run = [fused](double clip, torch::Tensor& table, torch::Tensor& w) {
    table = initial_table().requires_grad_(true);
    w = torch::tensor({1.0f, 2.0f, 3.0f}).requires_grad_(true);
    OptimizerOptions o;
    o.kind = OptimizerKind::kSgd;
    o.lr = 1.0;
    o.grad_clip = clip;
    o.fused = fused;
    Optimizer opt({table, w}, o);
    // Row 1 is looked up twice: its gradient is the sum (0.5, -1, 2) + (0.5, 1, 1) = (1, 0, 3).
    auto ids = torch::tensor({1L, 1L, 4L});
    auto emb = torch::embedding(table, ids, -1, false, true);
    auto coef = torch::tensor({0.5f, -1.0f, 2.0f, 0.5f, 1.0f, 1.0f, 0.0f, 2.0f, 0.0f}).reshape({3, 3});
    auto loss = (emb * coef).sum() + (w * torch::tensor({2.0f, 0.0f, -1.0f})).sum();
    loss.backward();
    opt.step();
  };
  // Global norm: |(1,0,3)|^2 + |(0,2,0)|^2 + |(2,0,-1)|^2 = 10 + 4 + 5 = 19.
  const double norm = std::sqrt(19.0), clip = 1.5, scale = clip / (norm + 1e-6);
  torch::Tensor table, w;
  run(clip, table, w);
  auto init = initial_table().to(torch::kFloat64);
  auto expected_row1 = init[1] - scale * torch::tensor({1.0, 0.0, 3.0}, torch::kFloat64);
  auto expected_row4 = init[4] - scale * torch::tensor({0.0, 2.0, 0.0}, torch::kFloat64);
  require_close(table.detach()[1], expected_row1, 1e-6, 1e-7);
  require_close(table.detach()[4], expected_row4, 1e-6, 1e-7);
  require_close(w.detach(), torch::tensor({1.0, 2.0, 3.0}, torch::kFloat64) -
                                scale * torch::tensor({2.0, 0.0, -1.0}, torch::kFloat64),
                1e-6, 1e-7);
  CHECK(torch::equal(table.detach()[0], initial_table()[0]));

  // A norm below the threshold is left alone.
  run(10.0, table, w);
  require_close(table.detach()[1], init[1] - torch::tensor({1.0, 0.0, 3.0}, torch::kFloat64), 1e-6, 1e-7);
  require_close(w.detach(), torch::tensor({-1.0, 2.0, 4.0}, torch::kFloat64), 1e-6, 1e-7);
  }
}

TEST_CASE("fused optimizer path matches the tensor-op path on large random problems", "[optim]") {
  // Two tables (one looked up twice, so its gradient arrives in two uncoalesced pieces), many
  // duplicate rows, a dense matrix and a bias; every rule, with weight decay and clipping.
  struct Case {
    OptimizerKind kind;
    double lr, weight_decay, clip, momentum;
  };
  for (const Case& c : {Case{OptimizerKind::kAdam, 0.01, 0.0, 0.0, 0.0},
                        Case{OptimizerKind::kAdam, 0.02, 0.01, 0.5, 0.0},
                        Case{OptimizerKind::kAdagrad, 0.05, 0.01, 0.0, 0.0},
                        Case{OptimizerKind::kSgd, 0.1, 0.0, 1.0, 0.9}}) {
    INFO("kind " << static_cast<int>(c.kind) << " clip " << c.clip);
    std::vector<std::vector<torch::Tensor>> params(2);
    recsys::testing::seed(11);
    auto t1 = torch::randn({5000, 16}) * 0.1, t2 = torch::randn({300, 8}) * 0.1;
    auto w = torch::randn({24, 4}) * 0.1, bias = torch::randn({4}) * 0.1;
    std::vector<Optimizer> opts;
    for (int k = 0; k < 2; ++k) {
      for (const auto& t : {t1, t2, w, bias}) params[k].push_back(t.clone().requires_grad_(true));
      OptimizerOptions o;
      o.kind = c.kind;
      o.lr = c.lr;
      o.weight_decay = c.weight_decay;
      o.grad_clip = c.clip;
      o.momentum = c.momentum;
      o.fused = k == 0;
      opts.emplace_back(params[k], o);
    }
    for (int step = 0; step < 4; ++step) {
      INFO("step " << step + 1);
      auto ids1 = torch::randint(0, 700, {256, 6});  // many duplicates, some padding
      auto ids1b = torch::randint(0, 5000, {64});
      auto ids2 = torch::randint(0, 300, {256});
      auto y = torch::randn({256, 4});
      for (int k = 0; k < 2; ++k) {
        auto& p = params[k];
        opts[k].zero_grad();
        auto a = recsys::models::pooled_lookup(p[0], ids1, recsys::models::Pooling::kMean, true);
        auto b = recsys::models::pooled_lookup(p[1], ids2, recsys::models::Pooling::kMean, true);
        auto extra = torch::embedding(p[0], ids1b, 0, false, true).sum(0);
        auto out = torch::mm(torch::cat({a, b}, 1), p[2]) + p[3] + extra.narrow(0, 0, 4);
        (out - y).pow(2).mean().backward();
        REQUIRE(p[0].grad().is_sparse());
        opts[k].step();
      }
      for (size_t i = 0; i < 4; ++i) {
        INFO("param " << i);
        require_close(params[0][i], params[1][i].detach().to(torch::kFloat64), 1e-5, 1e-6);
      }
      auto s0 = opts[0].state_tensors(), s1 = opts[1].state_tensors();
      REQUIRE(s0.size() == s1.size());
      for (size_t i = 0; i < s0.size(); ++i) {
        INFO("state " << i);
        require_close(s0[i], s1[i].to(torch::kFloat64), 1e-5, 1e-8);
      }
    }
    CHECK_FALSE(torch::allclose(params[0][0].detach(), t1));
  }
}

TEST_CASE("fused optimizer names a sparse gradient row outside the table", "[optim]") {
  auto table = torch::zeros({4, 2}).requires_grad_(true);
  Optimizer opt({table}, OptimizerOptions{});
  table.mutable_grad() = torch::_sparse_coo_tensor_unsafe(torch::tensor({{1L, 9L}}),
                                                          torch::ones({2, 2}), {4, 2});
  CHECK_THROWS_WITH(opt.step(), Catch::Contains("row 9 is outside"));
  // Nothing was updated, and a later valid gradient still works (no row left marked).
  CHECK(torch::equal(table.detach(), torch::zeros({4, 2})));
  CHECK(opt.steps() == 0);
  table.mutable_grad() = torch::sparse_coo_tensor(torch::tensor({{1L, 1L}}), torch::ones({2, 2}),
                                                  {4, 2});
  opt.step();
  CHECK(table.detach()[1][0].item<float>() < 0);
  CHECK(table.detach()[2][0].item<float>() == 0);
}

TEST_CASE("Optimizer state round-trips through save/load", "[optim]") {
  auto dir = recsys::testing::temp_dir("optim_save");
  auto path = (dir / "opt.pt").string();
  OptimizerOptions o;
  o.kind = OptimizerKind::kAdam;
  o.lr = 0.05;
  auto step = [](Optimizer& opt, torch::Tensor& table, torch::Tensor& w, int64_t id) {
    opt.zero_grad();
    auto emb = torch::embedding(table, torch::tensor({id, 3L}), -1, false, true);
    ((emb * torch::tensor({0.3f, -0.2f, 0.5f})).sum() + (w * w).sum()).backward();
    opt.step();
  };
  auto table_a = initial_table().requires_grad_(true);
  auto w_a = torch::tensor({0.5f, -1.0f}).requires_grad_(true);
  Optimizer a({table_a, w_a}, o);
  step(a, table_a, w_a, 1);
  step(a, table_a, w_a, 2);
  {
    torch::serialize::OutputArchive archive;
    a.save(archive);
    archive.save_to(path);
  }
  auto table_b = table_a.detach().clone().requires_grad_(true);
  auto w_b = w_a.detach().clone().requires_grad_(true);
  Optimizer b({table_b, w_b}, o);
  {
    torch::serialize::InputArchive archive;
    archive.load_from(path);
    b.load(archive);
  }
  CHECK(b.steps() == 2);
  auto sa = a.state_tensors(), sb = b.state_tensors();
  REQUIRE(sa.size() == sb.size());
  REQUIRE(sa.size() == 4);
  for (size_t i = 0; i < sa.size(); ++i) CHECK(torch::equal(sa[i], sb[i]));
  step(a, table_a, w_a, 1);
  step(b, table_b, w_b, 1);
  CHECK(torch::equal(table_a.detach(), table_b.detach()));
  CHECK(torch::equal(w_a.detach(), w_b.detach()));

  // Without the state the next step differs (the round trip matters).
  auto table_c = table_b.detach().clone().requires_grad_(true);
  auto w_c = w_b.detach().clone().requires_grad_(true);
  Optimizer c({table_c, w_c}, o);
  step(c, table_c, w_c, 1);
  step(a, table_a, w_a, 1);
  CHECK_FALSE(torch::allclose(w_a.detach(), w_c.detach()));
}

TEST_CASE("OptimizerOptions::from_config validates by path", "[optim]") {
  recsys::config::Json j = {{"type", "adagrad"}, {"lr", -1}};
  try {
    OptimizerOptions::from_config(recsys::config::Reader(j));
    FAIL("expected a ConfigError");
  } catch (const recsys::ConfigError& e) {
    CHECK(e.path() == "lr");
  }
  recsys::config::Json ok = {{"type", "adagrad"}};
  auto o = OptimizerOptions::from_config(recsys::config::Reader(ok));
  CHECK(o.kind == OptimizerKind::kAdagrad);
  CHECK(o.lr == 0.05);
}

TEST_CASE("optimizer steps over empty parameters and empty sparse gradients", "[optim]") {
  for (bool fused : {true, false}) {
    CAPTURE(fused);
    auto empty_rows = torch::zeros({0, 3}).requires_grad_(true);
    auto empty_cols = torch::zeros({4, 0}).requires_grad_(true);
    auto table = torch::ones({5, 2}).requires_grad_(true);
    OptimizerOptions o;
    o.fused = fused;
    Optimizer opt({empty_rows, empty_cols, table}, o);
    auto none = torch::zeros({0}, torch::kLong);
    (torch::embedding(empty_rows, none, -1, false, true).sum() +
     torch::embedding(empty_cols, torch::tensor({1L, 2L}), -1, false, true).sum() +
     torch::embedding(table, none, -1, false, true).sum())
        .backward();
    REQUIRE_NOTHROW(opt.step());
    CHECK(torch::equal(table.detach(), torch::ones({5, 2})));
  }
}

TEST_CASE("zero_grad drops gradients; a dense parameter without one steps as if zeroed", "[optim]") {
  // Step 2's loss leaves w out: torch::optim::Adam, whose gradients are zeroed in place (defined
  // and zero), still moves w by its moments; ours must too, from a dropped gradient.
  for (bool fused : {true, false}) {
    CAPTURE(fused);
    recsys::testing::seed(4);
    auto w0 = torch::randn({3, 4}), v0 = torch::randn({4});
    auto w = w0.clone().requires_grad_(true), v = v0.clone().requires_grad_(true);
    auto rw = w0.clone().requires_grad_(true), rv = v0.clone().requires_grad_(true);
    OptimizerOptions o;
    o.fused = fused;
    o.lr = 0.05;
    Optimizer opt({w, v}, o);
    torch::optim::Adam ref({rw, rv}, torch::optim::AdamOptions(0.05));
    auto x = torch::randn({5, 3});
    for (int s = 0; s < 4; ++s) {
      INFO("step " << s + 1);
      opt.zero_grad();
      CHECK_FALSE(w.grad().defined());
      for (auto* p : {&rw, &rv})
        if (p->grad().defined()) p->mutable_grad().zero_();
      const bool use_w = s != 1;
      auto loss = [&](const torch::Tensor& a, const torch::Tensor& b) {
        return use_w ? (x.matmul(a) + b).pow(2).sum() : (b * 3).pow(2).sum();
      };
      loss(w, v).backward();
      loss(rw, rv).backward();
      CHECK(w.grad().defined() == use_w);
      auto before = w.detach().clone();
      opt.step();
      ref.step();
      require_close(w, rw, 1e-5, 1e-6);
      require_close(v, rv, 1e-5, 1e-6);
      if (!use_w) CHECK_FALSE(torch::equal(w.detach(), before));  // moved by its moments alone
    }
  }
}

TEST_CASE("fused optimizer: large gradients of distinct rows, on 2 threads", "[optim]") {
  // A gradient whose entries are all distinct rows is used as the row sums without a copy: each
  // row must get its own value row, for the fused lookups' gradients and for any order.
  recsys::testing::ThreadCount threads(2);
  recsys::testing::seed(17);
  auto table = torch::randn({60000, 8}) * 0.1;
  std::vector<std::vector<torch::Tensor>> params(2);
  std::vector<Optimizer> opts;
  for (int k = 0; k < 2; ++k) {
    params[k].push_back(table.clone().requires_grad_(true));
    OptimizerOptions o;
    o.lr = 0.01;
    o.fused = k == 0;
    opts.emplace_back(params[k], o);
  }
  for (int step = 0; step < 4; ++step) {
    CAPTURE(step);
    // Steps 0 and 2: the fused lookups' gradient (about 20k distinct rows); steps 1 and 3: a
    // gradient of 20k distinct rows in random order, made directly.
    auto ids = torch::randint(1, 60000, {6000, 4});
    auto y = torch::randn({6000, 8});
    auto rows = torch::randperm(60000).narrow(0, 0, 20000).view({1, 20000});
    auto values = torch::randn({20000, 8});
    for (int k = 0; k < 2; ++k) {
      opts[k].zero_grad();
      if (step % 2 == 0) {
        auto a =
            recsys::models::pooled_lookup(params[k][0], ids, recsys::models::Pooling::kMean, true);
        (a * y).sum().backward();
      } else {
        params[k][0].mutable_grad() = torch::_sparse_coo_tensor_unsafe(rows, values, {60000, 8});
      }
      REQUIRE(params[k][0].grad().is_sparse());
      opts[k].step();
    }
    require_close(params[0][0], params[1][0].detach().to(torch::kFloat64), 1e-5, 1e-6);
  }
  CHECK_FALSE(torch::allclose(params[0][0].detach(), table));
}

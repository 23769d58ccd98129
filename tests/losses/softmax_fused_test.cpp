// The fused in-batch softmax kernel (losses/softmax_fused.h) against its oracle, the composed
// product + cross-entropy + mean, in float64 (where both compute with libm's exp) and float32.
#include "losses/softmax_fused.h"

#include <ATen/Parallel.h>

#include "losses/retrieval.h"
#include "support.h"

using recsys::losses::contrastive;
using recsys::losses::contrastive_mean;
using recsys::losses::diagonal_softmax_mean_fused;
using recsys::losses::diagonal_softmax_unsupported;
using recsys::losses::inbatch_softmax;
using recsys::losses::inbatch_softmax_mean;
using recsys::losses::InBatchSoftmaxOptions;
using recsys::testing::require_close;

namespace {

struct Grads {
  torch::Tensor loss, da, db, dbias;
};

// The composed oracle: mean_i [logsumexp_j s_ij - s_ii], s = scale a b^T + bias, masked columns
// at -1e9, through ATen's autograd.
Grads composed(torch::Tensor a, torch::Tensor b, double scale, torch::Tensor bias,
               torch::Tensor ids, double upstream = 1.0) {
  a = a.detach().clone().requires_grad_(true);
  b = b.detach().clone().requires_grad_(true);
  if (bias.defined()) bias = bias.detach().clone().requires_grad_(true);
  auto s = torch::mm(a, b.t()) * scale;
  if (bias.defined()) s = s + bias.unsqueeze(0);
  const int64_t B = a.size(0);
  if (ids.defined()) {
    auto same = ids.narrow(0, 0, B).unsqueeze(1) == ids.unsqueeze(0);
    auto diag = torch::zeros_like(same);
    diag.narrow(1, 0, B).fill_diagonal_(true);
    s = s.masked_fill(same & ~diag, -1e9);
  }
  auto loss = torch::nn::functional::cross_entropy(s, torch::arange(B));
  (loss * upstream).backward();
  return {loss.detach(), a.grad(), b.grad(), bias.defined() ? bias.grad() : torch::Tensor()};
}

Grads fused(torch::Tensor a, torch::Tensor b, double scale, torch::Tensor bias, torch::Tensor ids,
            double upstream = 1.0) {
  a = a.detach().clone().requires_grad_(true);
  b = b.detach().clone().requires_grad_(true);
  if (bias.defined()) bias = bias.detach().clone().requires_grad_(true);
  auto loss = diagonal_softmax_mean_fused(a, b, scale, bias, ids);
  (loss * upstream).backward();
  return {loss.detach(), a.grad(), b.grad(), bias.defined() ? bias.grad() : torch::Tensor()};
}

void require_same(const Grads& got, const Grads& want, double rtol, double atol) {
  require_close(got.loss, want.loss, rtol, atol);
  require_close(got.da, want.da, rtol, atol);
  require_close(got.db, want.db, rtol, atol);
  REQUIRE(got.dbias.defined() == want.dbias.defined());
  if (want.dbias.defined()) require_close(got.dbias, want.dbias, rtol, atol);
}

}  // namespace

TEST_CASE("diagonal_softmax_mean_fused matches the composed loss and gradients in float64",
          "[loss][kernel]") {
  recsys::testing::seed(3);
  // Row counts around the 128-row block (one row, a partial block, several blocks with a
  // partial last one), extra columns, bias and accidental-hit masks.
  for (int64_t B : {1, 37, 128, 300}) {
    for (int64_t extra : {0, 5}) {
      const int64_t C = B + extra, D = 7;
      auto a = torch::randn({B, D}, torch::kFloat64);
      auto b = torch::randn({C, D}, torch::kFloat64);
      auto bias = torch::randn({C}, torch::kFloat64) * 2;
      // Ids with repeats, so that some columns are accidental hits of some rows.
      auto ids = torch::randint(0, std::max<int64_t>(2, C / 3), {C}, torch::kInt64);
      for (bool with_bias : {false, true})
        for (bool with_ids : {false, true}) {
          INFO("B " << B << " C " << C << " bias " << with_bias << " ids " << with_ids);
          auto bb = with_bias ? bias : torch::Tensor();
          auto ii = with_ids ? ids : torch::Tensor();
          require_same(fused(a, b, 3.0, bb, ii), composed(a, b, 3.0, bb, ii), 1e-10, 1e-12);
        }
    }
  }
}

TEST_CASE("diagonal_softmax_mean_fused in float32 stays within float rounding of float64",
          "[loss][kernel]") {
  recsys::testing::seed(4);
  const int64_t B = 300, D = 16;
  auto a = torch::nn::functional::normalize(torch::randn({B, D}, torch::kFloat64));
  auto b = torch::nn::functional::normalize(torch::randn({B, D}, torch::kFloat64));
  auto bias = -torch::rand({B}, torch::kFloat64) * 10;  // -log q
  auto want = composed(a, b, 20.0, bias, {});
  auto got = fused(a.to(torch::kFloat32), b.to(torch::kFloat32), 20.0, bias.to(torch::kFloat32),
                   {});
  REQUIRE(got.loss.scalar_type() == torch::kFloat32);
  require_same(got, want, 1e-4, 1e-6);
}

TEST_CASE("diagonal_softmax_mean_fused with 512 or 1024 columns (scores in padded rows)",
          "[loss][kernel]") {
  // Column counts that are multiples of 256 floats, at least 512, give the block's scores a
  // padded row stride (util::padded_stride): the loss and every gradient as with any other width.
  recsys::testing::seed(6);
  for (int64_t C : {512, 1024}) {
    const int64_t B = 130, D = 12;
    auto a = torch::nn::functional::normalize(torch::randn({B, D}, torch::kFloat64));
    auto b = torch::nn::functional::normalize(torch::randn({C, D}, torch::kFloat64));
    auto bias = -torch::rand({C}, torch::kFloat64) * 5;
    auto ids = torch::randint(0, C / 2, {C}, torch::kInt64);
    INFO("C " << C);
    require_same(fused(a, b, 20.0, bias, ids), composed(a, b, 20.0, bias, ids), 1e-10, 1e-12);
    auto got = fused(a.to(torch::kFloat32), b.to(torch::kFloat32), 20.0,
                     bias.to(torch::kFloat32), {});
    require_same(got, composed(a, b, 20.0, bias, {}), 1e-4, 1e-6);
  }
}

TEST_CASE("diagonal_softmax_mean_fused scales by the incoming gradient, on 1 or 2 threads",
          "[loss][kernel]") {
  recsys::testing::seed(5);
  const int64_t B = 260, C = 270, D = 9;
  auto a = torch::randn({B, D}, torch::kFloat64);
  auto b = torch::randn({C, D}, torch::kFloat64);
  auto bias = torch::randn({C}, torch::kFloat64);
  const int threads = at::get_num_threads();
  for (int t : {1, 2}) {
    at::set_num_threads(t);
    INFO("threads " << t);
    require_same(fused(a, b, 0.5, bias, {}, -2.5), composed(a, b, 0.5, bias, {}, -2.5), 1e-10,
                 1e-12);
  }
  at::set_num_threads(threads);
}

TEST_CASE("diagonal_softmax_mean_fused: no-grad value, NaN scores, refused operands",
          "[loss][kernel]") {
  recsys::testing::seed(6);
  auto a = torch::randn({4, 3}, torch::kFloat64);
  auto b = torch::randn({6, 3}, torch::kFloat64);
  {
    const auto want = composed(a, b, 2.0, {}, {}).loss;
    auto ag = a.clone().requires_grad_(true);
    torch::NoGradGuard no_grad;
    auto v = diagonal_softmax_mean_fused(ag, b, 2.0);
    REQUIRE_FALSE(v.requires_grad());
    require_close(v, want, 1e-12, 1e-12);
  }
  auto nan_a = a.clone();
  nan_a[2][1] = std::nan("");
  REQUIRE(std::isnan(diagonal_softmax_mean_fused(nan_a, b, 1.0).item<double>()));

  CHECK_THAT(diagonal_softmax_unsupported(a.to(torch::kHalf), b.to(torch::kHalf), {}, {}),
             Catch::Contains("float32 or float64"));
  CHECK_THAT(diagonal_softmax_unsupported(b, a, {}, {}), Catch::Contains("C >= B"));
  CHECK_THAT(diagonal_softmax_unsupported(a, b, torch::zeros({5}, torch::kFloat64), {}),
             Catch::Contains("bias must be"));
  CHECK_THAT(diagonal_softmax_unsupported(a, b, {}, torch::zeros({6}, torch::kInt32)),
             Catch::Contains("column ids"));
  CHECK_THROWS_WITH(diagonal_softmax_mean_fused(b, a, 1.0), Catch::Contains("C >= B"));

  auto ag = a.clone().requires_grad_(true);
  auto loss = diagonal_softmax_mean_fused(ag, b, 1.0);
  // The gradients are plain numbers computed in the forward: a graph of them is refused.
  CHECK_THROWS_WITH(torch::autograd::grad({loss}, {ag}, {}, /*retain_graph=*/true,
                                          /*create_graph=*/true),
                    Catch::Contains("double backward"));
  auto g = torch::autograd::grad({loss}, {ag});
  require_close(g[0], composed(a, b, 1.0, {}, {}).da, 1e-10, 1e-12);
}

TEST_CASE("inbatch_softmax_mean and contrastive_mean equal the composed means", "[loss]") {
  recsys::testing::seed(7);
  const int64_t B = 150, M = 12, D = 8;
  auto u = torch::nn::functional::normalize(torch::randn({B, D}));
  auto it = torch::nn::functional::normalize(torch::randn({B, D}));
  auto extra = torch::nn::functional::normalize(torch::randn({M, D}));
  auto log_q = -torch::rand({B + M}) * 8;
  auto ids = torch::randint(0, 40, {B + M}, torch::kInt64);
  for (bool hits : {false, true})
    for (bool with_extra : {false, true}) {
      INFO("accidental hits " << hits << " extra " << with_extra);
      auto ex = with_extra ? extra : torch::Tensor();
      auto lq = with_extra ? log_q : log_q.narrow(0, 0, B);
      auto id = with_extra ? ids : ids.narrow(0, 0, B);
      auto opts = InBatchSoftmaxOptions().temperature(0.1).remove_accidental_hits(hits);
      auto run = [&](bool fused_mean) {
        auto a = u.clone().requires_grad_(true), b = it.clone().requires_grad_(true);
        auto e = ex.defined() ? ex.clone().requires_grad_(true) : ex;
        auto l = fused_mean ? inbatch_softmax_mean(a, b, lq, id, opts, e)
                            : inbatch_softmax(a, b, lq, id, opts, e).mean();
        if (fused_mean) CHECK_THAT(l.grad_fn()->name(), Catch::Contains("DiagonalSoftmax"));
        l.backward();
        return std::vector<torch::Tensor>{l.detach(), a.grad(), b.grad(),
                                          e.defined() ? e.grad() : torch::zeros({1})};
      };
      auto f = run(true), c = run(false);
      for (size_t k = 0; k < f.size(); ++k) require_close(f[k], c[k], 1e-4, 1e-6);
    }
  auto z1 = torch::nn::functional::normalize(torch::randn({B, D})).requires_grad_(true);
  auto z2 = torch::nn::functional::normalize(torch::randn({B, D})).requires_grad_(true);
  auto lf = contrastive_mean(z1, z2, 0.05);
  // The fused kernel computed it (not the composed mean it is compared with).
  REQUIRE(lf.grad_fn());
  CHECK_THAT(lf.grad_fn()->name(), Catch::Contains("DiagonalSoftmax"));
  auto gf = torch::autograd::grad({lf}, {z1, z2});
  auto lc = contrastive(z1, z2, 0.05).mean();
  auto gc = torch::autograd::grad({lc}, {z1, z2});
  require_close(lf, lc, 1e-5, 1e-6);
  require_close(gf[0], gc[0], 1e-4, 1e-6);
  require_close(gf[1], gc[1], 1e-4, 1e-6);
  // The symmetric loss takes the composed path.
  require_close(contrastive_mean(z1, z2, 0.05, true), contrastive(z1, z2, 0.05, true).mean(),
                1e-6, 1e-7);
}

namespace {

// inbatch_softmax_mean_distinct through `fused_mean` (the distinct-column kernel) or through its
// expansion; returns the loss and the gradients of user, distinct items and extra columns.
std::vector<torch::Tensor> distinct_run(const torch::Tensor& u, const torch::Tensor& items,
                                        const torch::Tensor& extra, const torch::Tensor& targets,
                                        const torch::Tensor& log_q, const torch::Tensor& ids,
                                        InBatchSoftmaxOptions opts, bool fused_mean) {
  auto a = u.clone().requires_grad_(true), b = items.clone().requires_grad_(true);
  auto e = extra.defined() ? extra.clone().requires_grad_(true) : extra;
  auto l = recsys::losses::inbatch_softmax_mean_distinct(a, b, targets, log_q, ids,
                                                         opts.fused_mean(fused_mean), e);
  if (fused_mean) CHECK_THAT(l.grad_fn()->name(), Catch::Contains("DiagonalSoftmax"));
  l.backward();
  return {l.detach(), a.grad(), b.grad(), e.defined() ? e.grad() : torch::zeros({1})};
}

}  // namespace

TEST_CASE("inbatch_softmax_mean_distinct equals the in-batch softmax over the expanded batch",
          "[loss][kernel]") {
  recsys::testing::seed(8);
  // Float64: the distinct-column kernel against three references: its own expanded
  // composition, and the plain in-batch softmax (fused and composed) on the batch written out
  // row by row, with the positives' gradients summed back per distinct item.
  for (int64_t B : {1, 40, 300}) {
    const int64_t U = std::max<int64_t>(1, B / 3), M = 6, D = 5;
    auto u = torch::randn({B, D}, torch::kFloat64);
    auto items = torch::randn({U, D}, torch::kFloat64);
    auto extra = torch::randn({M, D}, torch::kFloat64);
    // Every distinct column some row's positive, popular ones many times.
    auto targets = torch::cat({torch::arange(std::min(U, B)), torch::randint(0, std::max<int64_t>(1, U / 4), {B - std::min(U, B)})})
                       .index_select(0, torch::randperm(B));
    auto log_q = -torch::rand({U + M}, torch::kFloat64) * 6;
    // Distinct columns that share an item id (different features of one item) and extra
    // negatives that hit a positive's id.
    auto ids = torch::randint(0, std::max<int64_t>(2, U / 2), {U + M}, torch::kInt64);
    for (bool hits : {false, true})
      for (bool with_extra : {false, true}) {
        INFO("B " << B << " hits " << hits << " extra " << with_extra);
        auto ex = with_extra ? extra : torch::Tensor();
        auto lq = with_extra ? log_q : log_q.narrow(0, 0, U);
        auto id = with_extra ? ids : ids.narrow(0, 0, U);
        auto opts = InBatchSoftmaxOptions().temperature(0.5).remove_accidental_hits(hits);
        auto f = distinct_run(u, items, ex, targets, lq, id, opts, true);
        auto c = distinct_run(u, items, ex, targets, lq, id, opts, false);
        for (size_t k = 0; k < f.size(); ++k) require_close(f[k], c[k], 1e-10, 1e-12);
        // The batch written out: column i is row i's positive.
        auto expand = [&](const torch::Tensor& t) {
          auto own = t.narrow(0, 0, U).index_select(0, targets);
          return with_extra ? torch::cat({own, t.narrow(0, U, M)}) : own;
        };
        for (bool fused_mean : {true, false}) {
          auto a = u.clone().requires_grad_(true), b = items.clone().requires_grad_(true);
          auto e = ex.defined() ? ex.clone().requires_grad_(true) : ex;
          auto full = b.index_select(0, targets);
          auto l = inbatch_softmax_mean(a, full, expand(lq), expand(id),
                                        InBatchSoftmaxOptions(opts).fused_mean(fused_mean), e);
          l.backward();
          require_close(f[0], l.detach(), 1e-10, 1e-12);
          require_close(f[1], a.grad(), 1e-10, 1e-12);
          require_close(f[2], b.grad(), 1e-10, 1e-12);
          if (e.defined()) require_close(f[3], e.grad(), 1e-10, 1e-12);
        }
      }
  }
}

TEST_CASE("distinct_softmax_mean_fused: counts, float32, threads and refused operands",
          "[loss][kernel]") {
  using recsys::losses::distinct_softmax_mean_fused;
  using recsys::losses::distinct_softmax_unsupported;
  recsys::testing::seed(9);
  const int64_t B = 200, U = 90, D = 8;
  auto a = torch::nn::functional::normalize(torch::randn({B, D}, torch::kFloat64));
  auto b = torch::nn::functional::normalize(torch::randn({U, D}, torch::kFloat64));
  // Columns 80.. are no row's target: a count of 0 leaves them out, like the expansion does.
  auto targets = torch::randint(0, 80, {B}, torch::kInt64);
  auto counts = torch::bincount(targets, {}, U).to(torch::kFloat64);
  auto bias = -torch::rand({U}, torch::kFloat64) * 8;
  auto want = composed(a, b.index_select(0, targets), 20.0, bias.index_select(0, targets), {});
  auto run = [&](torch::ScalarType dtype, double upstream) {
    auto ag = a.to(dtype).clone().requires_grad_(true), bg = b.to(dtype).clone().requires_grad_(true);
    auto l = distinct_softmax_mean_fused(ag, bg, 20.0, targets, counts, bias.to(dtype));
    (l * upstream).backward();
    return std::vector<torch::Tensor>{l.detach(), ag.grad(), bg.grad()};
  };
  // The expanded oracle's gradient of b, summed per distinct column.
  auto db = torch::zeros({U, D}, torch::kFloat64).index_add_(0, targets, want.db);
  const int threads = at::get_num_threads();
  for (int t : {1, 2}) {
    at::set_num_threads(t);
    INFO("threads " << t);
    auto g = run(torch::kFloat64, 1.0);
    require_close(g[0], want.loss, 1e-10, 1e-12);
    require_close(g[1], want.da, 1e-10, 1e-12);
    require_close(g[2], db, 1e-10, 1e-12);
    REQUIRE(g[2].narrow(0, 80, U - 80).abs().max().item<double>() == 0.0);
    auto s = run(torch::kFloat64, -1.5);
    require_close(s[1], want.da * -1.5, 1e-10, 1e-12);
  }
  at::set_num_threads(threads);
  auto f32 = run(torch::kFloat32, 1.0);
  REQUIRE(f32[0].scalar_type() == torch::kFloat32);
  require_close(f32[0], want.loss, 1e-4, 1e-6);
  require_close(f32[1], want.da, 1e-4, 1e-6);
  require_close(f32[2], db, 1e-4, 1e-6);

  // C < B is fine in this form; wrong operands are named.
  CHECK(distinct_softmax_unsupported(a, b, targets, counts).empty());
  CHECK_THAT(distinct_softmax_unsupported(a, b, targets.narrow(0, 0, 5), counts),
             Catch::Contains("targets must be"));
  CHECK_THAT(distinct_softmax_unsupported(a, b, targets.to(torch::kInt32), counts),
             Catch::Contains("targets must be"));
  CHECK_THAT(distinct_softmax_unsupported(a, b, targets, counts.narrow(0, 0, 3)),
             Catch::Contains("counts must be"));
  auto bad = targets.clone();
  bad[7] = U;
  CHECK_THROWS_WITH(distinct_softmax_mean_fused(a, b, 1.0, bad, counts),
                    Catch::Contains("targets must lie in [0, 90)") && Catch::Contains("row 7"));
  auto zero = counts.clone();
  zero[targets[3].item<int64_t>()] = 0;
  CHECK_THROWS_WITH(distinct_softmax_mean_fused(a, b, 1.0, targets, zero),
                    Catch::Contains("has a count below 1"));
  auto negative = counts.clone();
  negative[85] = -1;
  CHECK_THROWS_WITH(distinct_softmax_mean_fused(a, b, 1.0, targets, negative),
                    Catch::Contains("counts must be >= 0"));
}

// gather_rows / scatter_add_rows against index_select / index_add, pooled_rows_sparse against
// torch::embedding + pooling: values and gradients.
#include "models/layers/rows.h"

#include <ATen/Parallel.h>

#include "models/layers/embedding.h"

#include "support.h"

using recsys::models::gather_rows;
using recsys::models::scatter_add_rows;
using recsys::testing::require_close;

TEST_CASE("gather_rows and scatter_add_rows match index_select and index_add", "[din]") {
  recsys::testing::seed(6);
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    for (std::vector<int64_t> shape : {std::vector<int64_t>{7, 5}, {7}, {7, 2, 3}}) {
      CAPTURE(dtype, shape.size());
      // Unsorted, repeated and missing rows; an empty index too.
      for (auto index : {torch::tensor({3L, 0L, 3L, 6L, 1L, 3L}), torch::zeros({0}, torch::kLong)}) {
        auto src = torch::randn(shape, dtype).requires_grad_(true);
        auto ref = src.detach().clone().requires_grad_(true);
        auto a = gather_rows(src, index);
        auto b = ref.index_select(0, index);
        require_close(a, b, 0, 0);
        auto w = torch::randn(b.sizes(), dtype);
        (a * w).sum().backward();
        (b * w).sum().backward();
        require_close(src.grad(), ref.grad(), 1e-6, 1e-6);

        std::vector<int64_t> pshape = shape;
        pshape[0] = index.size(0);
        auto p = torch::randn(pshape, dtype).requires_grad_(true);
        auto pr = p.detach().clone().requires_grad_(true);
        auto s = scatter_add_rows(p, index, 7);
        std::vector<int64_t> oshape = shape;
        auto t = torch::zeros(oshape, dtype).index_add(0, index, pr);
        require_close(s, t, 1e-6, 1e-6);
        auto v = torch::randn(t.sizes(), dtype);
        (s * v).sum().backward();
        (t * v).sum().backward();
        if (index.size(0) > 0) require_close(p.grad(), pr.grad(), 0, 0);
      }
    }
  }
  auto src = torch::randn({4, 3});
  CHECK_THROWS_WITH(gather_rows(src, torch::tensor({0L, 4L})),
                    Catch::Contains("must lie in [0, 4)"));
  CHECK_THROWS_WITH(scatter_add_rows(src, torch::tensor({0L, 1L}), 5),
                    Catch::Contains("index must be a 1-D int64 tensor of 4 entries"));
  CHECK_THROWS_WITH(gather_rows(src, torch::tensor({0, 1}, torch::kInt32)),
                    Catch::Contains("int64"));
}

TEST_CASE("bag_rows matches weighted embedding sums, values and table gradients", "[kernels]") {
  using recsys::models::bag_rows;
  recsys::testing::seed(8);
  // Repeated ids within and across bags, zero weights (skipped entries), an id the batch never
  // uses. (The thread splits: "row kernels split across threads" below.)
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    CAPTURE(dtype);
    const int64_t R = 9, H = 37, B = 700, L = 3;
    auto ids = torch::randint(0, R - 1, {B, L}, torch::kLong);  // row R - 1 never used
    ids[0] = torch::tensor({2L, 2L, 5L});
    auto weights = torch::rand({B, L}, dtype);
    weights.select(1, 2).masked_fill_(ids.select(1, 2) == 0, 0.0);
    auto table = torch::randn({R, H}, dtype).requires_grad_(true);
    auto ref = table.detach().to(torch::kFloat64).requires_grad_(true);
    auto a = bag_rows(table, ids, weights);
    auto b = (torch::embedding(ref, ids) * weights.to(torch::kFloat64).unsqueeze(-1)).sum(1);
    const double tol = dtype == torch::kFloat32 ? 1e-5 : 1e-12;
    require_close(a, b, tol, tol);
    auto g = torch::randn({B, H}, torch::kFloat64);
    (a * g.to(dtype)).sum().backward();
    (b * g).sum().backward();
    require_close(table.grad(), ref.grad(), 1e-4, tol);
    CHECK(table.grad()[R - 1].abs().sum().item<double>() == 0);
  }
  auto t = torch::randn({4, 3});
  CHECK_THROWS_WITH(bag_rows(t, torch::tensor({{0L, 4L}}), torch::ones({1, 2})),
                    Catch::Contains("must lie in [0, 4)"));
  CHECK_THROWS_WITH(bag_rows(t, torch::tensor({{0L, 1L}}), torch::ones({1, 3})),
                    Catch::Contains("weights must be"));
}

TEST_CASE("pooled_rows_sparse matches embedding + pooling with one sparse entry per distinct id",
          "[layers]") {
  recsys::testing::seed(21);
  const int64_t R = 50, D = 6, B = 40, L = 4;
  auto table = torch::randn({R, D}, torch::kFloat64);
  table[0].zero_();  // padding row
  // Repeats within and across bags, padding inside bags, an all-padding bag.
  auto ids = torch::randint(0, 12, {B, L}, torch::kInt64);
  ids[3].zero_();
  ids[5][2] = 0;
  auto weights = torch::randn({B, D}, torch::kFloat64);
  for (auto pooling : {recsys::models::Pooling::kMean, recsys::models::Pooling::kSum}) {
    for (bool single : {false, true}) {
      INFO("mean " << (pooling == recsys::models::Pooling::kMean) << " single " << single);
      auto in = single ? ids.select(1, 0).contiguous() : ids;
      auto run = [&](bool fused) {
        auto t = table.clone().requires_grad_(true);
        auto out = recsys::models::pooled_lookup(t, in, pooling, /*sparse=*/true, fused);
        (out * weights).sum().backward();
        return std::make_pair(out.detach(), t.grad());
      };
      auto [of, gf] = run(true);
      auto [op, gp] = run(false);
      require_close(of, op, 1e-12, 1e-12);
      REQUIRE(gf.is_sparse());
      // One entry per distinct non-padding id (the plain gradient has one per looked-up entry).
      auto used = std::get<0>(torch::_unique2(in.masked_select(in != 0)));
      CHECK(gf._nnz() == used.size(0));
      CHECK(torch::equal(std::get<0>(gf._indices()[0].sort()), used));
      require_close(gf.coalesce().to_dense(), gp.coalesce().to_dense(), 1e-12, 1e-12);
    }
  }
  // float32, and a bag of padding only: zeros and no entries.
  auto t32 = table.to(torch::kFloat32).requires_grad_(true);
  auto pad = torch::zeros({2, 3}, torch::kInt64);
  auto out = recsys::models::pooled_rows_sparse(t32, pad, true);
  CHECK(out.abs().sum().item<float>() == 0);
  out.sum().backward();
  CHECK(t32.grad()._nnz() == 0);
  CHECK_THROWS_WITH(recsys::models::pooled_rows_sparse(table, torch::full({2, 1}, R, torch::kInt64), true),
                    Catch::Contains("[0, 50)"));
}

TEST_CASE("sorted_rows_sparse matches torch::embedding with padding 0, values and coalesced gradients",
          "[layers]") {
  recsys::testing::seed(22);
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    // With and without the padding row, one row, none.
    for (auto rows : {torch::tensor({0L, 2L, 3L, 9L}), torch::tensor({1L, 4L, 11L}), torch::tensor({0L}),
                      torch::zeros({0}, torch::kLong)}) {
      CAPTURE(dtype, rows.size(0));
      auto table = torch::randn({12, 5}, dtype).requires_grad_(true);
      auto ref = table.detach().clone().requires_grad_(true);
      auto a = recsys::models::sorted_rows_sparse(table, rows);
      auto b = torch::embedding(ref, rows, /*padding_idx=*/0, false, /*sparse=*/true);
      require_close(a, b, 0, 0);
      auto w = torch::randn(b.sizes(), dtype);
      (a * w).sum().backward();
      (b * w).sum().backward();
      const auto& g = table.grad();
      REQUIRE(g.is_sparse());
      const int64_t padded = rows.size(0) > 0 && rows[0].item<int64_t>() == 0 ? 1 : 0;
      CHECK(g._nnz() == rows.size(0) - padded);
      auto c = g.coalesce(), rc = ref.grad().coalesce();
      require_close(c.to_dense(), rc.to_dense(), 0, 0);
      CHECK(torch::equal(c._indices(), g._indices()));  // already in coalesced order
    }
  }
  auto t = torch::randn({6, 2});
  CHECK_THROWS_WITH(recsys::models::sorted_rows_sparse(t, torch::tensor({1L, 1L})),
                    Catch::Contains("strictly increasing in [0, 6), got 1 at position 1 after 1"));
  CHECK_THROWS_WITH(recsys::models::sorted_rows_sparse(t, torch::tensor({2L, 6L})),
                    Catch::Contains("got 6 at position 1"));
  CHECK_THROWS_WITH(recsys::models::sorted_rows_sparse(t, torch::tensor({-1L})), Catch::Contains("got -1"));
  CHECK_THROWS_WITH(recsys::models::sorted_rows_sparse(t, torch::tensor({1, 2}, torch::kInt32)),
                    Catch::Contains("int64"));
}

TEST_CASE("add_bag_rows equals the base plus each bag_rows, values and gradients", "[layers]") {
  recsys::testing::seed(22);
  const int64_t B = 33, H = 7;
  for (bool per_row : {true, false}) {
    INFO("base per row " << per_row);
    auto base = per_row ? torch::randn({B, H}, torch::kFloat64) : torch::randn({H}, torch::kFloat64);
    std::vector<torch::Tensor> tables{torch::randn({5, H}, torch::kFloat64),
                                      torch::randn({40, H}, torch::kFloat64)};
    std::vector<torch::Tensor> ids{torch::randint(0, 5, {B, 3}, torch::kInt64),
                                   torch::randint(0, 40, {B, 1}, torch::kInt64)};
    std::vector<torch::Tensor> weights{torch::rand({B, 3}, torch::kFloat64),
                                       torch::ones({B, 1}, torch::kFloat64)};
    weights[0][4][1] = 0;  // a skipped entry
    auto w = torch::randn({B, H}, torch::kFloat64);
    auto run = [&](bool fused) {
      auto b = base.clone().requires_grad_(true);
      std::vector<torch::Tensor> t;
      for (auto& x : tables) t.push_back(x.clone().requires_grad_(true));
      torch::Tensor out;
      if (fused) {
        out = recsys::models::add_bag_rows(b, t, ids, weights);
      } else {
        out = per_row ? b : b.expand({B, H});
        for (size_t f = 0; f < t.size(); ++f)
          out = out + (t[f].index_select(0, ids[f].reshape({-1})).view({B, -1, H}) *
                       weights[f].unsqueeze(-1)).sum(1);
      }
      (out * w).sum().backward();
      return std::vector<torch::Tensor>{out.detach(), b.grad(), t[0].grad(), t[1].grad()};
    };
    auto f = run(true), c = run(false);
    for (size_t k = 0; k < f.size(); ++k) require_close(f[k], c[k], 1e-12, 1e-12);
  }
  CHECK_THROWS_WITH(recsys::models::add_bag_rows(torch::zeros({3, 2}), {torch::zeros({4, 2})},
                                                 {torch::full({2, 1}, 1, torch::kInt64)},
                                                 {torch::ones({2, 1})}),
                    Catch::Contains("expected 3"));
}

TEST_CASE("row kernels split across threads: shapes with several chunks each, on 2 threads",
          "[layers]") {
  // The kernels cut their loops into chunks of about 2^16 multiply-adds; these shapes give each
  // loop several chunks, so the threads' shares (forward rows, backward output rows) are
  // checked, not just one thread's loop.
  recsys::testing::seed(23);
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  const int64_t R = 20000, D = 8, B = 6000, L = 4;
  auto table = torch::randn({R, D}, torch::kFloat64);
  table[0].zero_();
  auto ids = torch::randint(0, R, {B, L}, torch::kInt64);
  ids.narrow(0, 0, 100).select(1, 3).zero_();  // some padding
  auto up = torch::randn({B, D}, torch::kFloat64);
  auto run = [&](bool fused) {
    auto t = table.clone().requires_grad_(true);
    auto out = recsys::models::pooled_lookup(t, ids, recsys::models::Pooling::kMean, true, fused);
    (out * up).sum().backward();
    return std::make_pair(out.detach(), t.grad().coalesce().to_dense());
  };
  auto [of, gf] = run(true);
  auto [op, gp] = run(false);
  require_close(of, op, 1e-12, 1e-12);
  require_close(gf, gp, 1e-12, 1e-12);

  // add_bag_rows and bag_rows with a table of more rows than one backward chunk takes.
  const int64_t H = 7, T = 12000;
  auto base = torch::randn({B, H}, torch::kFloat64);
  auto big = torch::randn({T, H}, torch::kFloat64);
  auto bids = torch::randint(0, T, {B, 2}, torch::kInt64);
  auto bw = torch::rand({B, 2}, torch::kFloat64);
  auto w = torch::randn({B, H}, torch::kFloat64);
  auto go = [&](bool fused) {
    auto b = base.clone().requires_grad_(true), t = big.clone().requires_grad_(true);
    auto out = fused ? recsys::models::add_bag_rows(b, {t}, {bids}, {bw})
                     : b + (t.index_select(0, bids.reshape({-1})).view({B, 2, H}) *
                            bw.unsqueeze(-1)).sum(1);
    (out * w).sum().backward();
    return std::vector<torch::Tensor>{out.detach(), b.grad(), t.grad()};
  };
  auto f = go(true), c = go(false);
  for (size_t k = 0; k < f.size(); ++k) require_close(f[k], c[k], 1e-12, 1e-12);
  at::set_num_threads(threads);
}

TEST_CASE("row kernels' backward: one id holding most entries is cut across the threads' parts",
          "[layers]") {
  // The backward kernels split the entries, not the output rows, between threads: a row whose
  // entries cross a part boundary is summed piecewise. Ids: one holding 60% of the entries
  // (Zipf's head, the SSL views' default bag), rows never used before, between and after the
  // used ones; on 2 and 3 threads. For bag_rows (groups by table row) the heavy row lies in the
  // middle and, on 3 threads, crosses both boundaries (a part entirely inside one row), and so
  // for pooled_rows_sparse (groups by ascending id).
  recsys::testing::seed(31);
  recsys::testing::ThreadCount threads(2);
  const int64_t R = 400, H = 16, B = 6000, L = 4;
  auto ids = torch::randint(100, 300, {B, L}, torch::kInt64);
  ids.masked_fill_(torch::rand({B, L}) < 0.6, 150);
  ids.narrow(0, 10, 20).select(1, 1).zero_();  // some padding (pooled) / zero-weight entries
  auto table = torch::randn({R, H}, torch::kFloat64);
  table[0].zero_();
  auto up = torch::randn({B, H}, torch::kFloat64);
  auto weights = torch::rand({B, L}, torch::kFloat64).masked_fill_(ids == 0, 0.0);
  for (int n : {2, 3}) {
    CAPTURE(n);
    threads.set(n);
    // pooled_rows_sparse (groups by ascending id) against embedding + mean.
    auto pooled = [&](bool fused) {
      auto t = table.clone().requires_grad_(true);
      auto out = recsys::models::pooled_lookup(t, ids, recsys::models::Pooling::kMean, true, fused);
      (out * up).sum().backward();
      return t.grad().coalesce().to_dense();
    };
    require_close(pooled(true), pooled(false), 1e-12, 1e-12);
    // bag_rows (groups by table row) against the weighted embedding sum, float64 and float32.
    for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
      auto t = table.to(dtype).detach().clone().requires_grad_(true);
      (recsys::models::bag_rows(t, ids, weights.to(dtype)) * up.to(dtype)).sum().backward();
      auto ref = table.clone().requires_grad_(true);
      ((torch::embedding(ref, ids) * weights.unsqueeze(-1)).sum(1) * up).sum().backward();
      const double tol = dtype == torch::kFloat32 ? 2e-3 : 1e-10;
      require_close(t.grad().to(torch::kFloat64), ref.grad(), tol, tol);
      CHECK(t.grad()[R - 1].abs().sum().item<double>() == 0);  // never used: zero
      CHECK(t.grad()[1].abs().sum().item<double>() == 0);
    }
  }
}

// models::linear and util::mm / util::addmm (BLAS calls split across threads) against ATen.
#include "models/layers/linear.h"

#include <ATen/Parallel.h>

#include "framework/util/matmul.h"
#include "support.h"

using recsys::testing::require_close;

TEST_CASE("util::mm and util::addmm equal ATen on views, transposes and both dtypes",
          "[kernels]") {
  recsys::testing::seed(7);
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  for (auto dtype : {torch::kFloat32, torch::kFloat64}) {
    CAPTURE(dtype);
    const double tol = dtype == torch::kFloat32 ? 1e-4 : 1e-12;
    auto a = torch::randn({300, 50}, dtype), b = torch::randn({50, 70}, dtype);
    auto bias = torch::randn({70}, dtype);
    require_close(recsys::util::mm(a, b), torch::mm(a, b), tol, tol);
    // Transposed views (unit stride in the other dimension) and a narrowed one.
    auto at_ = torch::randn({50, 300}, dtype), bt = torch::randn({70, 50}, dtype);
    require_close(recsys::util::mm(at_.t(), bt.t()), torch::mm(at_.t(), bt.t()), tol, tol);
    auto wide = torch::randn({300, 60}, dtype).narrow(1, 5, 50);
    require_close(recsys::util::mm(wide, b), torch::mm(wide, b), tol, tol);
    // A layout the BLAS cannot take (no unit stride) is copied first.
    auto strided = torch::randn({300, 100}, dtype).slice(1, 0, 100, 2);
    require_close(recsys::util::mm(strided, b), torch::mm(strided, b), tol, tol);
    require_close(recsys::util::addmm(bias, a, b), torch::addmm(bias, a, b), tol, tol);
    auto rows = torch::randn({300, 70}, dtype);
    require_close(recsys::util::addmm(rows, a, b), torch::addmm(rows, a, b), tol, tol);
    // A long reduction into a small result (split-K).
    auto g = torch::randn({4000, 36}, dtype), x = torch::randn({4000, 20}, dtype);
    require_close(recsys::util::mm(g.t(), x), torch::mm(g.t(), x), tol * 10, tol * 10);
  }
  // With the switch off, or where autograd must record the product, it is ATen's product.
  auto a = torch::randn({40, 30}, torch::requires_grad()), b = torch::randn({30, 20});
  auto y = recsys::util::mm(a, b);
  CHECK(y.requires_grad());
  recsys::util::set_parallel_gemm(false);
  CHECK_FALSE(recsys::util::parallel_gemm_enabled());
  require_close(recsys::util::mm(a.detach(), b), torch::mm(a.detach(), b), 1e-6, 1e-6);
  recsys::util::set_parallel_gemm(true);
  at::set_num_threads(threads);
}

TEST_CASE("models::linear equals torch::linear in value and every gradient", "[kernels]") {
  recsys::testing::seed(8);
  const int threads = at::get_num_threads();
  at::set_num_threads(2);
  struct Case {
    std::vector<int64_t> x_shape;
    int bias;  // 0 none, 1 [out], 2 [N, out]
  };
  const int64_t in = 24, out = 17;
  for (const auto& c : std::vector<Case>{{{500, in}, 1}, {{500, in}, 0}, {{500, in}, 2},
                                         {{7, 9, in}, 1}, {{3, in}, 1}}) {
    CAPTURE(c.x_shape, c.bias);
    auto x = torch::randn(c.x_shape, torch::kFloat64).requires_grad_(true);
    auto w = torch::randn({out, in}, torch::kFloat64).requires_grad_(true);
    torch::Tensor b;
    if (c.bias == 1) b = torch::randn({out}, torch::kFloat64).requires_grad_(true);
    if (c.bias == 2) b = torch::randn({c.x_shape[0], out}, torch::kFloat64).requires_grad_(true);
    auto run = [&](bool fast) {
      for (auto* t : {&x, &w, &b})
        if (t->defined() && t->grad().defined()) t->mutable_grad().zero_();
      auto y = fast ? recsys::models::linear(x, w, b)
                    : (c.bias == 2 ? torch::addmm(b, x, w.t()) : torch::linear(x, w, b));
      // A loss whose gradient differs per output element.
      auto g = torch::arange(y.numel(), torch::kFloat64).view(y.sizes()).sin();
      (y * g).sum().backward();
      std::vector<torch::Tensor> r{y.detach().clone(), x.grad().clone(), w.grad().clone()};
      if (b.defined()) r.push_back(b.grad().clone());
      return r;
    };
    auto fast = run(true), plain = run(false);
    for (size_t i = 0; i < fast.size(); ++i) {
      INFO("output " << i << " (value, dx, dW, db)");
      require_close(fast[i], plain[i], 1e-11, 1e-11);
    }
  }
  // A scalar bias broadcasts (torch::linear's rules) and gets its gradient.
  auto x = torch::randn({5, in}, torch::kFloat64);
  auto w = torch::randn({out, in}, torch::kFloat64);
  auto b = torch::tensor(0.5, torch::kFloat64).requires_grad_(true);
  recsys::models::linear(x, w, b).sum().backward();
  require_close(b.grad(), torch::tensor(5.0 * out, torch::kFloat64), 1e-12, 1e-12);
  at::set_num_threads(threads);
}

// The blockwise MLP tail kernel (models/layers/mlp_fused.h) against the composed layers:
// ReLU, linear layers, L2 normalisation, through ATen's autograd, in float64.
#include "models/layers/mlp_fused.h"

#include <ATen/Parallel.h>

#include "support.h"

using recsys::models::mlp_tail_fused;
using recsys::models::mlp_tail_unsupported;
using recsys::testing::require_close;

namespace {

struct Result {
  std::vector<torch::Tensor> values;  // y, dh, then each dW, each db
};

Result run(bool fused, const torch::Tensor& h, const std::vector<torch::Tensor>& w,
           const std::vector<torch::Tensor>& b, bool normalize, const torch::Tensor& up,
           bool sigmoid = false) {
  auto act = [&](const torch::Tensor& x) { return sigmoid ? torch::sigmoid(x) : torch::relu(x); };
  auto hv = h.clone().requires_grad_(true);
  std::vector<torch::Tensor> wv, bv;
  for (auto& t : w) wv.push_back(t.clone().requires_grad_(true));
  for (auto& t : b) bv.push_back(t.clone().requires_grad_(true));
  torch::Tensor y;
  if (fused) {
    y = mlp_tail_fused(hv, wv, bv, normalize, 1e-8,
                       sigmoid ? recsys::models::TailActivation::kSigmoid
                               : recsys::models::TailActivation::kRelu);
  } else {
    y = act(hv);
    for (size_t k = 0; k < wv.size(); ++k) {
      y = torch::linear(y, wv[k], bv[k]);
      if (k + 1 < wv.size()) y = act(y);
    }
    if (normalize)
      y = torch::nn::functional::normalize(
          y, torch::nn::functional::NormalizeFuncOptions().dim(1).eps(1e-8));
  }
  (y * up).sum().backward();
  Result r{{y.detach(), hv.grad()}};
  for (auto& t : wv) r.values.push_back(t.grad());
  for (auto& t : bv) r.values.push_back(t.grad());
  return r;
}

// The kernel against the composed layers in float64, widths d[0] -> ... -> d[layers], N rows.
void check_against_composed(const std::vector<int64_t>& d, size_t layers, int64_t N,
                            bool normalize, bool sigmoid, double weight_scale) {
  auto h = torch::randn({N, d[0]}, torch::kFloat64);
  std::vector<torch::Tensor> w, b;
  for (size_t k = 0; k < layers; ++k) {
    w.push_back(torch::randn({d[k + 1], d[k]}, torch::kFloat64) * weight_scale);
    b.push_back(torch::randn({d[k + 1]}, torch::kFloat64) * 0.1);
  }
  auto up = torch::randn({N, d[layers]}, torch::kFloat64);
  auto f = run(true, h, w, b, normalize, up, sigmoid);
  auto c = run(false, h, w, b, normalize, up, sigmoid);
  REQUIRE(f.values.size() == c.values.size());
  for (size_t k = 0; k < f.values.size(); ++k) {
    INFO("output " << k);
    require_close(f.values[k], c.values[k], 1e-10, 1e-12);
  }
}

}  // namespace

TEST_CASE("mlp_tail_fused equals ReLU / sigmoid + linear layers + normalisation, values and gradients",
          "[kernels]") {
  recsys::testing::seed(31);
  const int threads = at::get_num_threads();
  // Row counts around the 128-row block; one to three layers; with and without normalising.
  // The second widths are rows of 1,024 and 512 bytes in float64: the kernel keeps ReLU(h),
  // the hidden outputs and its copies of the weights in rows 64 bytes longer (padded_stride).
  const std::vector<std::vector<int64_t>> widths{{24, 17, 9, 5}, {128, 64, 64, 7}};
  for (int t : {1, 2}) {
    at::set_num_threads(t);
    for (int64_t N : {int64_t{1}, int64_t{37}, int64_t{128}, int64_t{300}}) {
      for (size_t layers : {size_t{1}, size_t{2}, size_t{3}}) {
        for (bool normalize : {true, false})
          for (bool sigmoid : {false, true})
            for (size_t k = 0; k < widths.size(); ++k) {
              CAPTURE(t, N, layers, normalize, sigmoid, k);
              check_against_composed(widths[k], layers, N, normalize, sigmoid, k == 0 ? 0.4 : 0.2);
            }
      }
    }
  }
  at::set_num_threads(threads);
}

TEST_CASE("mlp_tail_fused: a row whose output norm is below eps, float32, refusals",
          "[kernels]") {
  recsys::testing::seed(32);
  // A row whose ReLU(h) is zero has the (zero) bias as its output: below eps, the
  // normalisation divides by eps.
  auto h = torch::randn({6, 4}, torch::kFloat64);
  h[2].fill_(-1.0);  // ReLU(h) = 0 on this row: its output is the bias alone
  std::vector<torch::Tensor> w{torch::randn({3, 4}, torch::kFloat64)};
  std::vector<torch::Tensor> b{torch::zeros({3}, torch::kFloat64)};
  auto up = torch::randn({6, 3}, torch::kFloat64);
  auto f = run(true, h, w, b, true, up), c = run(false, h, w, b, true, up);
  for (size_t k = 0; k < f.values.size(); ++k) require_close(f.values[k], c.values[k], 1e-9, 1e-9);

  // A NaN input stays NaN in its row, as through torch's relu (a diverging model stays visible).
  {
    torch::NoGradGuard no_grad;
    auto hn = h.clone();
    hn[4][1] = std::nan("");
    auto y = mlp_tail_fused(hn, w, b, true);
    CHECK(torch::isnan(y[4]).all().item<bool>());
    CHECK_FALSE(torch::isnan(y[3]).any().item<bool>());
  }

  // float32 at the towers' widths, within rounding of float64.
  const int64_t N = 260;
  auto h32 = torch::randn({N, 256});
  std::vector<torch::Tensor> w32{torch::randn({128, 256}) * 0.06, torch::randn({64, 128}) * 0.09};
  std::vector<torch::Tensor> b32{torch::randn({128}) * 0.1, torch::randn({64}) * 0.1};
  auto up32 = torch::randn({N, 64});
  std::vector<torch::Tensor> w64, b64;
  for (auto& t : w32) w64.push_back(t.to(torch::kFloat64));
  for (auto& t : b32) b64.push_back(t.to(torch::kFloat64));
  auto f32 = run(true, h32, w32, b32, true, up32);
  auto c64 = run(false, h32.to(torch::kFloat64), w64, b64, true, up32.to(torch::kFloat64));
  for (size_t k = 0; k < f32.values.size(); ++k) require_close(f32.values[k], c64.values[k], 1e-3, 1e-5);

  CHECK_THAT(mlp_tail_unsupported(h.to(torch::kHalf), w, b), Catch::Contains("float32 or float64"));
  CHECK_THAT(mlp_tail_unsupported(h, {torch::randn({3, 5}, torch::kFloat64)}, b),
             Catch::Contains("layer 0"));
  CHECK_THAT(mlp_tail_unsupported(h, w, {}), Catch::Contains("one bias per weight"));
  auto hg = h.clone().requires_grad_(true);
  auto y = mlp_tail_fused(hg, w, b, true);
  CHECK_THROWS_WITH(torch::autograd::grad({y.sum()}, {hg}, {}, true, true),
                    Catch::Contains("double backward"));
}

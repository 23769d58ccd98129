#include "models/layers/dice.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "framework/util/fast_math.h"

namespace recsys::models {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;


// Runs fn(c0, c1) over column ranges of a [rows, cols] input, split across threads in blocks of
// 16 columns (each thread owns whole columns: the statistics are per column); a block is only
// worth a thread with enough rows.
template <typename Fn>
void for_column_blocks(int64_t cols, int64_t rows, const Fn& fn) {
  constexpr int64_t kBlock = 16;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, rows * kBlock));
  at::parallel_for(0, (cols + kBlock - 1) / kBlock, grain, [&](int64_t b0, int64_t b1) {
    fn(b0 * kBlock, std::min(cols, b1 * kBlock));
  });
}

// Dice over x [N, D] (row-major): y = x (alpha + p (1 - alpha)), p = sigmoid((x - mean) inv),
// inv = 1 / sqrt(var + eps), with the batch's biased statistics (training) or given ones.
class DiceFunction : public torch::autograd::Function<DiceFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x_in, const Tensor& alpha_in,
                               const Tensor& running_mean, const Tensor& running_var,
                               bool training, double eps) {
    auto x = x_in.contiguous();
    auto alpha = alpha_in.contiguous();
    const int64_t N = x.size(0), D = x.size(1);
    auto mean = training ? torch::empty({D}, x.options()) : running_mean.contiguous().clone();
    auto var = training ? torch::empty({D}, x.options()) : running_var.contiguous().clone();
    auto inv = torch::empty({D}, x.options());
    auto y = torch::empty_like(x);
    auto p = torch::empty_like(x);
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dice_forward", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const scalar_t* ap = alpha.data_ptr<scalar_t>();
      scalar_t* mp = mean.data_ptr<scalar_t>();
      scalar_t* vp = var.data_ptr<scalar_t>();
      scalar_t* ip = inv.data_ptr<scalar_t>();
      scalar_t* yp = y.data_ptr<scalar_t>();
      scalar_t* pp = p.data_ptr<scalar_t>();
      for_column_blocks(D, N, [&](int64_t c0, int64_t c1) {
        const int64_t w = c1 - c0;
        std::vector<double> s(static_cast<size_t>(w), 0.0), ss(static_cast<size_t>(w), 0.0);
        if (training) {
          // Two passes in double: the mean, then the squared deviations (biased variance).
          for (int64_t r = 0; r < N; ++r)
            for (int64_t k = 0; k < w; ++k) s[k] += xp[r * D + c0 + k];
          for (int64_t k = 0; k < w; ++k) s[k] /= static_cast<double>(N);
          for (int64_t r = 0; r < N; ++r)
            for (int64_t k = 0; k < w; ++k) {
              const double d = xp[r * D + c0 + k] - s[k];
              ss[k] += d * d;
            }
          for (int64_t k = 0; k < w; ++k) {
            mp[c0 + k] = static_cast<scalar_t>(s[k]);
            vp[c0 + k] = static_cast<scalar_t>(ss[k] / static_cast<double>(N));
          }
        }
        for (int64_t k = 0; k < w; ++k)
          ip[c0 + k] = static_cast<scalar_t>(1.0 / std::sqrt(static_cast<double>(vp[c0 + k]) + eps));
        for (int64_t r = 0; r < N; ++r)
          for (int64_t c = c0; c < c1; ++c) {
            const scalar_t xv = xp[r * D + c];
            const scalar_t pv = fast::sigmoid((xv - mp[c]) * ip[c]);
            pp[r * D + c] = pv;
            yp[r * D + c] = xv * (ap[c] + pv * (scalar_t(1) - ap[c]));
          }
      });
    });
    ctx->save_for_backward({x, alpha, p, mean, inv});
    ctx->saved_data["training"] = training;
    ctx->mark_non_differentiable({mean, var});
    return {y, mean, var};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &alpha = saved[1], &p = saved[2], &mean = saved[3], &inv = saved[4];
    const bool training = ctx->saved_data["training"].toBool();
    auto gy = grads[0].contiguous();
    const int64_t N = x.size(0), D = x.size(1);
    auto dx = torch::empty_like(x);
    auto dalpha = torch::empty_like(alpha);
    auto gxhat = torch::empty_like(x);  // d loss / d xhat
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dice_backward", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const scalar_t* ap = alpha.data_ptr<scalar_t>();
      const scalar_t* pp = p.data_ptr<scalar_t>();
      const scalar_t* mp = mean.data_ptr<scalar_t>();
      const scalar_t* ip = inv.data_ptr<scalar_t>();
      const scalar_t* gp = gy.data_ptr<scalar_t>();
      scalar_t* dxp = dx.data_ptr<scalar_t>();
      scalar_t* dap = dalpha.data_ptr<scalar_t>();
      scalar_t* hp = gxhat.data_ptr<scalar_t>();
      for_column_blocks(D, N, [&](int64_t c0, int64_t c1) {
        const int64_t w = c1 - c0;
        std::vector<double> da(static_cast<size_t>(w), 0.0), sg(static_cast<size_t>(w), 0.0),
            sgx(static_cast<size_t>(w), 0.0);
        // y = x (a + p (1 - a)): dy/dx direct = a + p (1 - a); dy/dp = x (1 - a); dy/da = x (1 - p);
        // dp/dxhat = p (1 - p).
        for (int64_t r = 0; r < N; ++r)
          for (int64_t k = 0; k < w; ++k) {
            const int64_t i = r * D + c0 + k, c = c0 + k;
            const scalar_t g = gp[i], xv = xp[i], pv = pp[i], a = ap[c];
            const scalar_t h = g * xv * (scalar_t(1) - a) * pv * (scalar_t(1) - pv);
            hp[i] = h;
            dxp[i] = g * (a + pv * (scalar_t(1) - a));
            da[k] += static_cast<double>(g * xv * (scalar_t(1) - pv));
            sg[k] += h;
            sgx[k] += static_cast<double>(h) * static_cast<double>((xv - mp[c]) * ip[c]);
          }
        for (int64_t k = 0; k < w; ++k) dap[c0 + k] = static_cast<scalar_t>(da[k]);
        // xhat's gradient into x: with batch statistics (biased variance) the usual batch-norm
        // backward, inv (h - mean(h) - xhat mean(h xhat)); with fixed statistics inv h.
        for (int64_t r = 0; r < N; ++r)
          for (int64_t k = 0; k < w; ++k) {
            const int64_t i = r * D + c0 + k, c = c0 + k;
            scalar_t h = hp[i];
            if (training) {
              const scalar_t xhat = (xp[i] - mp[c]) * ip[c];
              h -= static_cast<scalar_t>(sg[k] / static_cast<double>(N)) +
                   xhat * static_cast<scalar_t>(sgx[k] / static_cast<double>(N));
            }
            dxp[i] += ip[c] * h;
          }
      });
    });
    return {dx, dalpha, Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

}  // namespace

DiceImpl::DiceImpl(DiceOptions options) : options_(options) {
  TORCH_CHECK(options_.dim() > 0, "Dice: dim must be positive, got ", options_.dim());
  alpha = register_parameter("alpha", torch::zeros({options_.dim()}));
  running_mean = register_buffer("running_mean", torch::zeros({options_.dim()}));
  running_var = register_buffer("running_var", torch::ones({options_.dim()}));
}

torch::Tensor DiceImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.size(-1) == options_.dim(), "Dice: expected last dimension ", options_.dim(),
              ", got ", x.size(-1));
  auto flat = x.reshape({-1, options_.dim()});
  if (is_training() && sync_.active()) return forward_synced(flat).view(x.sizes());
  const auto dtype = x.scalar_type();
  if (options_.fused() && x.device().is_cpu() && alpha.device().is_cpu() &&
      (dtype == torch::kFloat || dtype == torch::kDouble) && alpha.scalar_type() == dtype &&
      running_mean.scalar_type() == dtype && flat.size(0) > 0) {
    auto out = DiceFunction::apply(flat, alpha, running_mean, running_var, is_training(),
                                   options_.eps());
    if (is_training()) {
      torch::NoGradGuard guard;
      running_mean.mul_(1 - options_.momentum()).add_(out[1], options_.momentum());
      running_var.mul_(1 - options_.momentum()).add_(out[2], options_.momentum());
    }
    return out[0].view(x.sizes());
  }
  torch::Tensor mean, var;
  if (is_training()) {
    mean = flat.mean(0);
    var = flat.var(0, /*unbiased=*/false);
    torch::NoGradGuard guard;
    running_mean.mul_(1 - options_.momentum()).add_(mean.detach(), options_.momentum());
    running_var.mul_(1 - options_.momentum()).add_(var.detach(), options_.momentum());
  } else {
    mean = running_mean;
    var = running_var;
  }
  auto p = torch::sigmoid((x - mean) * torch::rsqrt(var + options_.eps()));
  // p*x + (1-p)*alpha*x  ==  x * (alpha + p * (1 - alpha))
  return x * (alpha + p * (1 - alpha));
}

torch::Tensor DiceImpl::forward_synced(const torch::Tensor& flat) {
  // One collective per call: each rank's [sum x, sum x^2, rows] per column, in double, gathered
  // and summed (the gather's backward returns each rank's share of the gradient from every
  // rank's loss). The variance as E[x^2] - E[x]^2: the two-pass form would need a second
  // collective, and double keeps the cancellation harmless at activation scales.
  const int64_t D = flat.size(1);
  auto xd = flat.to(torch::kFloat64);
  auto rows = torch::full({1}, static_cast<double>(flat.size(0)), xd.options());
  auto local = torch::cat({xd.sum(0), xd.pow(2).sum(0), rows});
  auto total = sync_.all_gather_rows(local.unsqueeze(0)).sum(0);
  auto n = total.narrow(0, 2 * D, 1).detach();
  TORCH_CHECK(n.item<double>() > 0, "Dice: no rows on any rank");
  auto mean = total.narrow(0, 0, D) / n;
  auto var = (total.narrow(0, D, D) / n - mean.pow(2)).clamp_min(0.0);  // biased, as in the local path
  {
    torch::NoGradGuard guard;
    running_mean.mul_(1 - options_.momentum()).add_(mean.to(running_mean.scalar_type()), options_.momentum());
    running_var.mul_(1 - options_.momentum()).add_(var.to(running_var.scalar_type()), options_.momentum());
  }
  auto p = torch::sigmoid(((xd - mean) * torch::rsqrt(var + options_.eps())).to(flat.scalar_type()));
  return flat * (alpha + p * (1 - alpha));
}

}  // namespace recsys::models

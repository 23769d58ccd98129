#include "models/layers/linear.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <vector>

#include "framework/util/matmul.h"

namespace recsys::models {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// On 2-D x [N, in]: y = x W^T + b; dx = dy W, dW = dy^T x, db = dy summed over rows (b [out])
// or dy itself (b [N, out]).
class LinearFunction : public torch::autograd::Function<LinearFunction> {
 public:
  // bias as an optional: an undefined tensor cannot be an input of an autograd node.
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                               const c10::optional<Tensor>& bias) {
    ctx->save_for_backward({x, weight});
    ctx->saved_data["bias"] = bias.has_value() ? bias->dim() : int64_t{0};
    auto y = bias.has_value() ? util::addmm(*bias, x, weight.t()) : util::mm(x, weight.t());
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1];
    const auto dy = grads[0].contiguous();
    Tensor dx, dw, db;
    if (ctx->needs_input_grad(0)) dx = util::mm(dy, weight);
    if (ctx->needs_input_grad(1)) dw = util::mm(dy.t(), x);
    const int64_t bias_dim = ctx->saved_data["bias"].toInt();
    if (bias_dim > 0 && ctx->needs_input_grad(2)) db = bias_dim == 1 ? dy.sum(0) : dy;
    return {dx, dw, db};
  }
};

std::atomic<bool>& fused_activation_switch() {
  static std::atomic<bool> on{true};
  return on;
}

// dz = dy * act'(y) (y the activation's output), and, when db is given, db = column sums of dz:
// one pass over the rows, split across threads in contiguous chunks with one partial sum per
// chunk, summed in chunk order.
template <typename S>
void activation_backward(LinearActivation act, const S* dy, const S* y, S* dz, S* db, int64_t n,
                         int64_t m) {
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, m));
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                  (n + grain - 1) / grain));
  std::vector<S> partial(db ? static_cast<size_t>(chunks * m) : 0, S(0));
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      S* acc = db ? partial.data() + c * m : nullptr;
      for (int64_t r = c * n / chunks; r < (c + 1) * n / chunks; ++r) {
        const S* g = dy + r * m;
        const S* o = y + r * m;
        S* d = dz + r * m;
        switch (act) {
          case LinearActivation::kRelu:
            for (int64_t j = 0; j < m; ++j) d[j] = o[j] > S(0) ? g[j] : S(0);
            break;
          case LinearActivation::kSigmoid:
            for (int64_t j = 0; j < m; ++j) d[j] = g[j] * (S(1) - o[j]) * o[j];
            break;
          case LinearActivation::kTanh:
            for (int64_t j = 0; j < m; ++j) d[j] = g[j] * (S(1) - o[j] * o[j]);
            break;
          case LinearActivation::kNone:
            for (int64_t j = 0; j < m; ++j) d[j] = g[j];
            break;
        }
        if (acc)
          for (int64_t j = 0; j < m; ++j) acc[j] += d[j];
      }
    }
  });
  if (!db) return;
  for (int64_t j = 0; j < m; ++j) db[j] = S(0);
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t j = 0; j < m; ++j) db[j] += partial[c * m + j];
}

// y = act(x W^T + b) on 2-D x; saves x, W and y.
class LinearActFunction : public torch::autograd::Function<LinearActFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight,
                               const c10::optional<Tensor>& bias, int64_t act) {
    auto y = bias.has_value() ? util::addmm(*bias, x, weight.t()) : util::mm(x, weight.t());
    switch (static_cast<LinearActivation>(act)) {
      case LinearActivation::kRelu: y.clamp_min_(0); break;
      case LinearActivation::kSigmoid: y.sigmoid_(); break;
      case LinearActivation::kTanh: y.tanh_(); break;
      case LinearActivation::kNone: break;
    }
    ctx->save_for_backward({x, weight, y});
    ctx->saved_data["bias"] = bias.has_value();
    ctx->saved_data["act"] = act;
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1], &y = saved[2];
    const auto dy = grads[0].contiguous();
    const auto act = static_cast<LinearActivation>(ctx->saved_data["act"].toInt());
    const bool bias_grad = ctx->saved_data["bias"].toBool() && ctx->needs_input_grad(2);
    auto dz = torch::empty_like(dy);
    Tensor db = bias_grad ? torch::empty({dy.size(1)}, dy.options()) : Tensor();
    AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "linear_act_backward", [&] {
      activation_backward<scalar_t>(act, dy.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                    dz.data_ptr<scalar_t>(),
                                    bias_grad ? db.data_ptr<scalar_t>() : nullptr, dy.size(0),
                                    dy.size(1));
    });
    Tensor dx, dw;
    if (ctx->needs_input_grad(0)) dx = util::mm(dz, weight);
    if (ctx->needs_input_grad(1)) dw = util::mm(dz.t(), x);
    return {dx, dw, db, Tensor()};
  }
};

}  // namespace

void set_fused_linear_activation(bool on) { fused_activation_switch() = on; }
bool fused_linear_activation_enabled() { return fused_activation_switch(); }

torch::Tensor linear_act(const torch::Tensor& x, const torch::Tensor& weight,
                         const torch::Tensor& bias, LinearActivation act) {
  const bool fast = fused_activation_switch() && x.dim() == 2 && x.device().is_cpu() &&
                    weight.device().is_cpu() &&
                    (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kFloat64) &&
                    weight.scalar_type() == x.scalar_type() && weight.dim() == 2 &&
                    x.size(1) == weight.size(1) &&
                    (!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0) &&
                                         bias.scalar_type() == x.scalar_type()));
  if (!fast) {
    auto y = linear(x, weight, bias);
    switch (act) {
      case LinearActivation::kRelu: return torch::relu(y);
      case LinearActivation::kSigmoid: return torch::sigmoid(y);
      case LinearActivation::kTanh: return torch::tanh(y);
      case LinearActivation::kNone: return y;
    }
    return y;
  }
  c10::optional<torch::Tensor> b;
  if (bias.defined()) b = bias;
  return LinearActFunction::apply(x, weight, b, static_cast<int64_t>(act))[0];
}

torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& weight,
                     const torch::Tensor& bias) {
  const bool cpu_float = x.device().is_cpu() && weight.device().is_cpu() &&
                         (x.scalar_type() == torch::kFloat32 ||
                          x.scalar_type() == torch::kFloat64) &&
                         weight.scalar_type() == x.scalar_type() &&
                         (!bias.defined() || bias.scalar_type() == x.scalar_type());
  const bool row_addend = bias.defined() && bias.dim() == 2;
  if (!cpu_float || x.dim() < 1 || (bias.defined() && bias.dim() == 0) || weight.dim() != 2 || x.size(-1) != weight.size(1) ||
      (row_addend && (x.dim() != 2 || bias.size(0) != x.size(0) || bias.size(1) != weight.size(0))))
    return row_addend ? torch::addmm(bias, x, weight.t()) : torch::linear(x, weight, bias);
  c10::optional<torch::Tensor> b;
  if (bias.defined()) b = bias;
  if (x.dim() == 2) return LinearFunction::apply(x, weight, b)[0];
  auto sizes = x.sizes().vec();
  sizes.back() = weight.size(0);
  return LinearFunction::apply(x.reshape({-1, x.size(-1)}), weight, b)[0].view(sizes);
}

}  // namespace recsys::models

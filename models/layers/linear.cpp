#include "models/layers/linear.h"

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

}  // namespace

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

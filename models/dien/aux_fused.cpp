#include "models/dien/aux_fused.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>

#include "framework/util/blas.h"
#include "framework/util/fast_math.h"

namespace recsys::models {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Pairs per block: a block's positive and negative rows (2 x 64) keep every layer's activations
// and gradients (about 150 KB at the default widths) in a core's L2 cache.
constexpr int64_t kBlockPairs = 64;

inline float sigmoid_of(float v) { return fast::sigmoid(v); }
inline double sigmoid_of(double v) { return 1.0 / (1.0 + std::exp(-v)); }
inline float tanh_of(float v) { return fast::tanh(v); }
inline double tanh_of(double v) { return std::tanh(v); }
inline float exp_of(float v) { return fast::exp(v); }
inline double exp_of(double v) { return std::exp(v); }

// log(1 + e^x) without overflow.
template <typename S>
double softplus(S x) {
  const S ax = x < 0 ? -x : x;
  return static_cast<double>(std::max(x, S(0))) + std::log1p(static_cast<double>(exp_of(-ax)));
}

template <typename S>
void activate(Activation a, S* x, int64_t n) {
  switch (a) {
    case Activation::kSigmoid:
      for (int64_t i = 0; i < n; ++i) x[i] = sigmoid_of(x[i]);
      break;
    case Activation::kTanh:
      for (int64_t i = 0; i < n; ++i) x[i] = tanh_of(x[i]);
      break;
    case Activation::kRelu:
      for (int64_t i = 0; i < n; ++i) x[i] = x[i] > S(0) ? x[i] : S(0);
      break;
    default: break;
  }
}

// g *= the activation's derivative, written in terms of its output y.
template <typename S>
void times_derivative(Activation a, const S* y, S* g, int64_t n) {
  switch (a) {
    case Activation::kSigmoid:
      for (int64_t i = 0; i < n; ++i) g[i] *= y[i] * (S(1) - y[i]);
      break;
    case Activation::kTanh:
      for (int64_t i = 0; i < n; ++i) g[i] *= S(1) - y[i] * y[i];
      break;
    case Activation::kRelu:
      for (int64_t i = 0; i < n; ++i) g[i] = y[i] > S(0) ? g[i] : S(0);
      break;
    default: break;
  }
}

// sums[c] += column sums of x [rows, cols].
template <typename S>
void add_column_sums(const S* x, int64_t rows, int64_t cols, S* sums) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) sums[c] += x[r * cols + c];
}

void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a,
          int64_t lda, const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  util::gemm_rowmajor(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a,
          int64_t lda, const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  util::gemm_rowmajor(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// The network and its inputs as raw row-major pointers. Layer l maps d[l] -> d[l + 1]; d[0] =
// H + E (a row's first H inputs are h, the rest e), d[L] = 1.
template <typename S>
struct Net {
  int64_t P = 0, H = 0, E = 0;
  std::vector<int64_t> d;
  std::vector<const S*> w, b;
  Activation activation = Activation::kNone;
  const S *h = nullptr, *pos = nullptr, *neg = nullptr;
  size_t layers() const { return w.size(); }
  // Offsets of layer l's weight and bias in a flat gradient buffer.
  int64_t grad_size() const {
    int64_t s = 0;
    for (size_t l = 0; l < layers(); ++l) s += d[l + 1] * d[l] + d[l + 1];
    return s;
  }
};

// One block of pairs [i0, i1): forward, loss, and (with grads) the gradients: dh, dpos, dneg rows
// written, weight and bias gradients added into acc (flat, layer by layer: weight then bias).
// ws: scratch of at least block_scratch(net) elements. Returns the block's summed loss terms.
template <typename S>
int64_t block_scratch(const Net<S>& net) {
  int64_t s = kBlockPairs * net.d[1];  // the shared h part of layer 0
  for (size_t l = 0; l < net.layers(); ++l) s += 2 * (2 * kBlockPairs * net.d[l + 1]);
  return s;
}

template <typename S>
double run_block(const Net<S>& net, int64_t i0, int64_t i1, bool grads, S* ws, S* acc, S* dh,
                 S* dpos, S* dneg) {
  const int64_t n = i1 - i0, rows = 2 * n, H = net.H, E = net.E, D0 = H + E, D1 = net.d[1];
  const size_t L = net.layers();
  S* hp = ws;
  std::vector<S*> out(L), g(L);
  S* next = ws + kBlockPairs * D1;
  for (size_t l = 0; l < L; ++l) {
    out[l] = next;
    next += 2 * kBlockPairs * net.d[l + 1];
    g[l] = next;
    next += 2 * kBlockPairs * net.d[l + 1];
  }
  const S* h = net.h + i0 * H;
  const S* pos = net.pos + i0 * E;
  const S* neg = net.neg + i0 * E;

  // Layer 0: [h, e] W0^T + b0 = (h W0h^T + b0) + e W0e^T, the h part shared by both rows.
  for (int64_t r = 0; r < n; ++r) std::copy(net.b[0], net.b[0] + D1, hp + r * D1);
  gemm(false, true, n, D1, H, S(1), h, H, net.w[0], D0, S(1), hp, D1);
  std::copy(hp, hp + n * D1, out[0]);
  std::copy(hp, hp + n * D1, out[0] + n * D1);
  gemm(false, true, n, D1, E, S(1), pos, E, net.w[0] + H, D0, S(1), out[0], D1);
  gemm(false, true, n, D1, E, S(1), neg, E, net.w[0] + H, D0, S(1), out[0] + n * D1, D1);
  if (L > 1) activate(net.activation, out[0], rows * D1);
  for (size_t l = 1; l < L; ++l) {
    const int64_t din = net.d[l], dout = net.d[l + 1];
    for (int64_t r = 0; r < rows; ++r) std::copy(net.b[l], net.b[l] + dout, out[l] + r * dout);
    gemm(false, true, rows, dout, din, S(1), out[l - 1], din, net.w[l], din, S(1), out[l], dout);
    if (l + 1 < L) activate(net.activation, out[l], rows * dout);
  }

  // Loss terms; d loss / d logit = (sigmoid(z) - label) / P.
  const S* z = out[L - 1];
  S* dz = g[L - 1];
  const S inv_p = S(1) / static_cast<S>(net.P);
  double loss = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const bool positive = r < n;
    loss += softplus(positive ? -z[r] : z[r]);
    dz[r] = (sigmoid_of(z[r]) - (positive ? S(1) : S(0))) * inv_p;
  }
  if (!grads) return loss;

  // Offsets of each layer's weight / bias gradient in acc.
  std::vector<S*> dw(L), db(L);
  S* a = acc;
  for (size_t l = 0; l < L; ++l) {
    dw[l] = a;
    a += net.d[l + 1] * net.d[l];
    db[l] = a;
    a += net.d[l + 1];
  }
  for (size_t l = L - 1; l >= 1; --l) {
    const int64_t din = net.d[l], dout = net.d[l + 1];
    gemm(true, false, dout, din, rows, S(1), g[l], dout, out[l - 1], din, S(1), dw[l], din);
    add_column_sums(g[l], rows, dout, db[l]);
    gemm(false, false, rows, din, dout, S(1), g[l], dout, net.w[l], din, S(0), g[l - 1], din);
    times_derivative(net.activation, out[l - 1], g[l - 1], rows * din);
  }
  // Layer 0: the positive and negative rows' gradients; the h part receives their sum.
  S* gpos = g[0];
  S* gneg = g[0] + n * D1;
  gemm(true, false, D1, E, n, S(1), gpos, D1, pos, E, S(1), dw[0] + H, D0);
  gemm(true, false, D1, E, n, S(1), gneg, D1, neg, E, S(1), dw[0] + H, D0);
  gemm(false, false, n, E, D1, S(1), gpos, D1, net.w[0] + H, D0, S(0), dpos + i0 * E, E);
  gemm(false, false, n, E, D1, S(1), gneg, D1, net.w[0] + H, D0, S(0), dneg + i0 * E, E);
  for (int64_t i = 0; i < n * D1; ++i) gpos[i] += gneg[i];
  add_column_sums(gpos, n, D1, db[0]);
  gemm(true, false, D1, H, n, S(1), gpos, D1, h, H, S(1), dw[0], D0);
  gemm(false, false, n, H, D1, S(1), gpos, D1, net.w[0], D0, S(0), dh + i0 * H, H);
  return loss;
}

class AuxLossFunction : public torch::autograd::Function<AuxLossFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& h_in, const Tensor& pos_in,
                               const Tensor& neg_in, at::TensorList weights,
                               at::TensorList biases, int64_t activation,
                               bool need_grads) {
    auto h = h_in.contiguous(), pos = pos_in.contiguous(), neg = neg_in.contiguous();
    std::vector<Tensor> w, b;
    for (const auto& t : weights) w.push_back(t.contiguous());
    for (const auto& t : biases) b.push_back(t.contiguous());
    const int64_t P = h.size(0), H = h.size(1), E = pos.size(1);
    const size_t L = w.size();
    Tensor loss, dh, dpos, dneg, flat;
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "auxiliary_loss_fused", [&] {
      Net<scalar_t> net;
      net.P = P;
      net.H = H;
      net.E = E;
      net.d.push_back(H + E);
      for (size_t l = 0; l < L; ++l) {
        net.d.push_back(w[l].size(0));
        net.w.push_back(w[l].data_ptr<scalar_t>());
        net.b.push_back(b[l].data_ptr<scalar_t>());
      }
      net.activation = static_cast<Activation>(activation);
      net.h = h.data_ptr<scalar_t>();
      net.pos = pos.data_ptr<scalar_t>();
      net.neg = neg.data_ptr<scalar_t>();

      const int64_t blocks = (P + kBlockPairs - 1) / kBlockPairs;
      // The blocks cut into one chunk per thread; chunk p owns accumulator p whichever thread
      // runs it (no reliance on thread ids; the same chunks for the same thread count).
      const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), blocks));
      const int64_t gsize = net.grad_size();
      // One gradient accumulator and one loss per chunk, summed in chunk order afterwards.
      auto acc = torch::zeros({slots, need_grads ? gsize : 0}, h.options());
      std::vector<double> losses(static_cast<size_t>(slots), 0.0);
      if (need_grads) {
        dh = torch::empty_like(h);
        dpos = torch::empty_like(pos);
        dneg = torch::empty_like(neg);
      }
      scalar_t* dhp = need_grads ? dh.data_ptr<scalar_t>() : nullptr;
      scalar_t* dposp = need_grads ? dpos.data_ptr<scalar_t>() : nullptr;
      scalar_t* dnegp = need_grads ? dneg.data_ptr<scalar_t>() : nullptr;
      scalar_t* accp = acc.data_ptr<scalar_t>();
      const int64_t scratch = block_scratch(net);
      at::parallel_for(0, slots, 1, [&](int64_t p0, int64_t p1) {
        std::vector<scalar_t> ws(static_cast<size_t>(scratch));
        for (int64_t slot = p0; slot < p1; ++slot) {
          double sum = 0;
          for (int64_t blk = slot * blocks / slots; blk < (slot + 1) * blocks / slots; ++blk)
            sum += run_block(net, blk * kBlockPairs, std::min(P, (blk + 1) * kBlockPairs),
                             need_grads, ws.data(), accp + slot * gsize, dhp, dposp, dnegp);
          losses[static_cast<size_t>(slot)] = sum;
        }
      });
      double total = 0;
      for (double v : losses) total += v;
      loss = torch::full({}, total / static_cast<double>(P), h.options());
      if (need_grads) flat = acc.sum(0);
    });
    if (need_grads) {
      std::vector<Tensor> saved{dh, dpos, dneg};
      int64_t off = 0;
      for (size_t l = 0; l < L; ++l) {
        const int64_t nw = w[l].numel(), nb = b[l].numel();
        saved.push_back(flat.narrow(0, off, nw).view(w[l].sizes()));
        saved.push_back(flat.narrow(0, off + nw, nb).view(b[l].sizes()));
        off += nw + nb;
      }
      ctx->save_for_backward(saved);
      ctx->saved_data["layers"] = static_cast<int64_t>(L);
    }
    return {loss};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // The gradients were computed in the forward as plain numbers: no graph to differentiate.
    TORCH_CHECK(!torch::GradMode::is_enabled(),
                "auxiliary_loss_fused: double backward (create_graph) is not supported; use "
                "AuxiliaryNetOptions::fused(false)");
    const auto saved = ctx->get_saved_variables();
    const auto L = static_cast<size_t>(ctx->saved_data["layers"].toInt());
    const auto& g = grads[0];
    // Inputs in order: h, positive, negative, each weight, each bias, activation, need_grads.
    variable_list out{saved[0] * g, saved[1] * g, saved[2] * g};
    for (size_t l = 0; l < L; ++l) out.push_back(saved[3 + 2 * l] * g);
    for (size_t l = 0; l < L; ++l) out.push_back(saved[4 + 2 * l] * g);
    out.emplace_back();
    out.emplace_back();
    return out;
  }
};

}  // namespace

bool auxiliary_loss_fusable(const torch::Tensor& h, const torch::Tensor& positive,
                            const torch::Tensor& negative, const MlpOptions& mlp,
                            const std::vector<torch::Tensor>& weights) {
  if (!util::has_blas_gemm()) return false;
  const auto a = mlp.activation();
  if (a != Activation::kSigmoid && a != Activation::kTanh && a != Activation::kRelu &&
      a != Activation::kNone)
    return false;
  if (mlp.dropout() > 0 || mlp.activate_last() || mlp.hidden().empty() || mlp.hidden().back() != 1)
    return false;
  const auto dtype = h.scalar_type();
  if (dtype != torch::kFloat32 && dtype != torch::kFloat64) return false;
  for (const auto* t : {&h, &positive, &negative})
    if (!t->device().is_cpu() || t->scalar_type() != dtype || t->dim() != 2) return false;
  if (positive.sizes() != negative.sizes() || positive.size(0) != h.size(0) || h.size(0) < 1)
    return false;
  if (weights.empty() || weights[0].dim() != 2 ||
      weights[0].size(1) != h.size(1) + positive.size(1))
    return false;
  for (const auto& w : weights)
    if (!w.device().is_cpu() || w.scalar_type() != dtype) return false;
  // The blocks' BLAS calls take int sizes (at most 2 x 64 rows, the layers' widths).
  for (const auto& w : weights)
    if (w.size(0) > (int64_t{1} << 30) || w.size(1) > (int64_t{1} << 30)) return false;
  return true;
}

torch::Tensor auxiliary_loss_fused(const torch::Tensor& h, const torch::Tensor& positive,
                                   const torch::Tensor& negative,
                                   const std::vector<torch::Tensor>& weights,
                                   const std::vector<torch::Tensor>& biases,
                                   Activation activation) {
  TORCH_CHECK(weights.size() == biases.size() && !weights.empty(),
              "auxiliary_loss_fused: one bias per weight, at least one layer");
  TORCH_CHECK(util::has_blas_gemm(), "auxiliary_loss_fused: no BLAS sgemm_/dgemm_ in the process");
  const auto dtype = h.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat32 || dtype == torch::kFloat64,
              "auxiliary_loss_fused: float32 or float64 inputs, got ", dtype);
  for (const auto* t : {&h, &positive, &negative})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == dtype,
                "auxiliary_loss_fused: h, positive and negative must be CPU tensors of one dtype");
  for (size_t l = 0; l < weights.size(); ++l)
    TORCH_CHECK(weights[l].device().is_cpu() && biases[l].device().is_cpu() &&
                    weights[l].scalar_type() == dtype && biases[l].scalar_type() == dtype,
                "auxiliary_loss_fused: layer ", l, "'s weight and bias must be CPU ", dtype);
  TORCH_CHECK(h.dim() == 2 && positive.dim() == 2 && negative.sizes() == positive.sizes() &&
                  positive.size(0) == h.size(0) && h.size(0) >= 1,
              "auxiliary_loss_fused: h must be [P, H] and positive, negative [P, E] with P >= 1, "
              "got ", h.sizes(), ", ", positive.sizes(), " and ", negative.sizes());
  int64_t width = h.size(1) + positive.size(1);
  for (size_t l = 0; l < weights.size(); ++l) {
    TORCH_CHECK(weights[l].dim() == 2 && weights[l].size(1) == width && biases[l].dim() == 1 &&
                    biases[l].size(0) == weights[l].size(0),
                "auxiliary_loss_fused: layer ", l, " must be a weight [out, ", width,
                "] and a bias [out], got ", weights[l].sizes(), " and ", biases[l].sizes());
    width = weights[l].size(0);
  }
  TORCH_CHECK(width == 1, "auxiliary_loss_fused: the last layer must have 1 output, got ", width);
  bool need = torch::GradMode::is_enabled() &&
              (h.requires_grad() || positive.requires_grad() || negative.requires_grad());
  for (size_t l = 0; l < weights.size() && !need; ++l)
    need = torch::GradMode::is_enabled() &&
           (weights[l].requires_grad() || biases[l].requires_grad());
  RECORD_FUNCTION("auxiliary_loss_fused", std::vector<c10::IValue>());
  // As TensorLists, every weight and bias is an input of the autograd node (a std::vector would
  // be taken for a non-tensor argument).
  return AuxLossFunction::apply(h, positive, negative, at::TensorList(weights),
                                at::TensorList(biases),
                                static_cast<int64_t>(activation), need)[0];
}

}  // namespace recsys::models

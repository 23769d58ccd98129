#include "models/dien/aux_fused.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <sstream>
#include <string>

#include "framework/util/blas.h"
#include "framework/util/fast_math.h"
#include "framework/util/kernel.h"

namespace recsys::models {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Pairs per block: a block's positive and negative rows (2 x 64) keep every layer's activations
// and gradients (about 150 KB at the default widths) in a core's L2 cache.
constexpr int64_t kBlockPairs = 64;


// log(1 + e^x) without overflow.
template <typename S>
double softplus(S x) {
  const S ax = x < 0 ? -x : x;
  return static_cast<double>(std::max(x, S(0))) + std::log1p(static_cast<double>(fast::exp(-ax)));
}

template <typename S>
void activate(Activation a, S* x, int64_t n) {
  switch (a) {
    case Activation::kSigmoid:
      for (int64_t i = 0; i < n; ++i) x[i] = fast::sigmoid(x[i]);
      break;
    case Activation::kTanh:
      for (int64_t i = 0; i < n; ++i) x[i] = fast::tanh(x[i]);
      break;
    case Activation::kRelu:
      for (int64_t i = 0; i < n; ++i) x[i] = x[i] <= S(0) ? S(0) : x[i];  // NaN kept, as torch
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
      for (int64_t i = 0; i < n; ++i) g[i] = y[i] <= S(0) ? S(0) : g[i];
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

using util::gemm_rowmajor;

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
  // Size of a flat gradient buffer: every layer's weight, then its bias.
  int64_t grad_size() const {
    int64_t s = 0;
    for (size_t l = 0; l < layers(); ++l) s += d[l + 1] * d[l] + d[l + 1];
    return s;
  }
};

// One chunk of blocks' buffers, laid out once: the block's activations and their gradients
// (scratch reused block after block) and where each layer's weight and bias gradient sits in the
// chunk's flat accumulator.
template <typename S>
struct Chunk {
  std::vector<S> scratch;
  S* hp = nullptr;         // [kBlockPairs, d1]: layer 0's h part, shared by both rows of a pair
  std::vector<S*> out, g;  // per layer [2 kBlockPairs, d_{l+1}]: outputs and their gradients
  std::vector<S*> dw, db;  // per layer, in the accumulator
  Chunk(const Net<S>& net, S* acc) {
    const size_t L = net.layers();
    int64_t size = kBlockPairs * net.d[1];
    for (size_t l = 0; l < L; ++l) size += 2 * (2 * kBlockPairs * net.d[l + 1]);
    scratch.resize(static_cast<size_t>(size));
    hp = scratch.data();
    S* next = hp + kBlockPairs * net.d[1];
    for (size_t l = 0; l < L; ++l) {
      out.push_back(next);
      next += 2 * kBlockPairs * net.d[l + 1];
      g.push_back(next);
      next += 2 * kBlockPairs * net.d[l + 1];
      dw.push_back(acc);
      acc += net.d[l + 1] * net.d[l];
      db.push_back(acc);
      acc += net.d[l + 1];
    }
  }
};

// One block of pairs [i0, i1): forward, loss, and (with grads) the gradients: dh, dpos, dneg rows
// written, weight and bias gradients added into the chunk's accumulator. Returns the block's
// summed loss terms.
template <typename S>
double run_block(const Net<S>& net, int64_t i0, int64_t i1, bool grads, Chunk<S>& c, S* dh,
                 S* dpos, S* dneg) {
  const int64_t n = i1 - i0, rows = 2 * n, H = net.H, E = net.E, D0 = H + E, D1 = net.d[1];
  const size_t L = net.layers();
  S* hp = c.hp;
  const auto& out = c.out;
  const auto& g = c.g;
  const auto& dw = c.dw;
  const auto& db = c.db;
  const S* h = net.h + i0 * H;
  const S* pos = net.pos + i0 * E;
  const S* neg = net.neg + i0 * E;

  // Layer 0: [h, e] W0^T + b0 = (h W0h^T + b0) + e W0e^T, the h part shared by both rows.
  for (int64_t r = 0; r < n; ++r) std::copy(net.b[0], net.b[0] + D1, hp + r * D1);
  gemm_rowmajor(false, true, n, D1, H, S(1), h, H, net.w[0], D0, S(1), hp, D1);
  std::copy(hp, hp + n * D1, out[0]);
  std::copy(hp, hp + n * D1, out[0] + n * D1);
  gemm_rowmajor(false, true, n, D1, E, S(1), pos, E, net.w[0] + H, D0, S(1), out[0], D1);
  gemm_rowmajor(false, true, n, D1, E, S(1), neg, E, net.w[0] + H, D0, S(1), out[0] + n * D1, D1);
  if (L > 1) activate(net.activation, out[0], rows * D1);
  for (size_t l = 1; l < L; ++l) {
    const int64_t din = net.d[l], dout = net.d[l + 1];
    for (int64_t r = 0; r < rows; ++r) std::copy(net.b[l], net.b[l] + dout, out[l] + r * dout);
    gemm_rowmajor(false, true, rows, dout, din, S(1), out[l - 1], din, net.w[l], din, S(1),
                  out[l], dout);
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
    dz[r] = (fast::sigmoid(z[r]) - (positive ? S(1) : S(0))) * inv_p;
  }
  if (!grads) return loss;

  for (size_t l = L - 1; l >= 1; --l) {
    const int64_t din = net.d[l], dout = net.d[l + 1];
    gemm_rowmajor(true, false, dout, din, rows, S(1), g[l], dout, out[l - 1], din, S(1), dw[l],
                  din);
    add_column_sums(g[l], rows, dout, db[l]);
    gemm_rowmajor(false, false, rows, din, dout, S(1), g[l], dout, net.w[l], din, S(0), g[l - 1],
                  din);
    times_derivative(net.activation, out[l - 1], g[l - 1], rows * din);
  }
  // Layer 0: the positive and negative rows' gradients; the h part receives their sum.
  S* gpos = g[0];
  S* gneg = g[0] + n * D1;
  gemm_rowmajor(true, false, D1, E, n, S(1), gpos, D1, pos, E, S(1), dw[0] + H, D0);
  gemm_rowmajor(true, false, D1, E, n, S(1), gneg, D1, neg, E, S(1), dw[0] + H, D0);
  gemm_rowmajor(false, false, n, E, D1, S(1), gpos, D1, net.w[0] + H, D0, S(0), dpos + i0 * E, E);
  gemm_rowmajor(false, false, n, E, D1, S(1), gneg, D1, net.w[0] + H, D0, S(0), dneg + i0 * E, E);
  for (int64_t i = 0; i < n * D1; ++i) gpos[i] += gneg[i];
  add_column_sums(gpos, n, D1, db[0]);
  gemm_rowmajor(true, false, D1, H, n, S(1), gpos, D1, h, H, S(1), dw[0], D0);
  gemm_rowmajor(false, false, n, H, D1, S(1), gpos, D1, net.w[0], D0, S(0), dh + i0 * H, H);
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
      const int64_t slots = util::blas_chunks(blocks);
      const int64_t gsize = net.grad_size();
      // One gradient accumulator and one loss per chunk, summed in chunk order afterwards.
      auto acc = torch::zeros({slots, gsize}, h.options());  // small: the MLP's parameters
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
      at::parallel_for(0, slots, 1, [&](int64_t p0, int64_t p1) {
        for (int64_t slot = p0; slot < p1; ++slot) {
          Chunk<scalar_t> chunk(net, accp + slot * gsize);
          double sum = 0;
          for (int64_t blk = slot * blocks / slots; blk < (slot + 1) * blocks / slots; ++blk)
            sum += run_block(net, blk * kBlockPairs, std::min(P, (blk + 1) * kBlockPairs),
                             need_grads, chunk, dhp, dposp, dnegp);
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
    util::refuse_double_backward("auxiliary_loss_fused", "AuxiliaryNetOptions::fused(false)");
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

namespace {

// Why the kernel cannot take these operands ("" when it can): a BLAS in the process, CPU float32 /
// float64 tensors of one dtype, h [P, H] and positive / negative [P, E] with P >= 1, and weights
// [out, in] chaining from H + E, each with a bias [out] when biases are given. Widths stay far
// below the BLAS's int arguments (a block has at most 2 x 64 rows).
std::string unsupported(const torch::Tensor& h, const torch::Tensor& positive,
                        const torch::Tensor& negative, const std::vector<torch::Tensor>& weights,
                        const std::vector<torch::Tensor>& biases) {
  std::ostringstream why;
  const auto dtype = h.scalar_type();
  if (const auto base = util::blas_kernel_unsupported(dtype); !base.empty()) {
    why << base;
  } else if (!h.device().is_cpu() || !positive.device().is_cpu() || !negative.device().is_cpu() ||
             positive.scalar_type() != dtype || negative.scalar_type() != dtype) {
    why << "h, positive and negative must be CPU tensors of one dtype";
  } else if (h.dim() != 2 || positive.dim() != 2 || negative.sizes() != positive.sizes() ||
             positive.size(0) != h.size(0) || h.size(0) < 1) {
    why << "h must be [P, H] and positive, negative [P, E] with P >= 1, got " << h.sizes() << ", "
        << positive.sizes() << " and " << negative.sizes();
  } else if (weights.empty()) {
    why << "at least one layer";
  } else {
    int64_t width = h.size(1) + positive.size(1);
    for (size_t l = 0; l < weights.size(); ++l) {
      const auto& w = weights[l];
      const bool ok = w.dim() == 2 && w.size(1) == width && w.device().is_cpu() &&
                      w.scalar_type() == dtype && w.size(0) <= (int64_t{1} << 30) &&
                      (biases.empty() ||
                       (biases[l].dim() == 1 && biases[l].size(0) == w.size(0) &&
                        biases[l].device().is_cpu() && biases[l].scalar_type() == dtype));
      if (!ok) {
        why << "layer " << l << " must be a CPU " << dtype << " weight [out, " << width
            << "] and a bias [out], got " << w.sizes();
        if (!biases.empty()) why << " and " << biases[l].sizes();
        break;
      }
      width = w.size(0);
    }
  }
  return why.str();
}

}  // namespace

bool auxiliary_loss_fusable(const torch::Tensor& h, const torch::Tensor& positive,
                            const torch::Tensor& negative, const MlpOptions& mlp,
                            const std::vector<torch::Tensor>& weights) {
  const auto a = mlp.activation();
  if (a != Activation::kSigmoid && a != Activation::kTanh && a != Activation::kRelu &&
      a != Activation::kNone)
    return false;
  if (mlp.dropout() > 0 || mlp.activate_last() || mlp.hidden().empty() || mlp.hidden().back() != 1)
    return false;
  return unsupported(h, positive, negative, weights, {}).empty();
}

torch::Tensor auxiliary_loss_fused(const torch::Tensor& h, const torch::Tensor& positive,
                                   const torch::Tensor& negative,
                                   const std::vector<torch::Tensor>& weights,
                                   const std::vector<torch::Tensor>& biases,
                                   Activation activation) {
  TORCH_CHECK(weights.size() == biases.size(), "auxiliary_loss_fused: one bias per weight");
  const auto why = unsupported(h, positive, negative, weights, biases);
  TORCH_CHECK(why.empty(), "auxiliary_loss_fused: ", why);
  TORCH_CHECK(weights.back().size(0) == 1,
              "auxiliary_loss_fused: the last layer must have 1 output, got ",
              weights.back().size(0));
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

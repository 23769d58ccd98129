#include "models/layers/mlp_fused.h"

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "framework/util/blas.h"
#include "framework/util/fast_math.h"
#include "framework/util/kernel.h"
#include "framework/util/share.h"

namespace recsys::models {

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using util::gemm_rowmajor;

// Rows per block: at the towers' widths (256, 128, 64) a block's activations and gradients take
// about 400 KB in float32, inside a core's L2 next to the weights and their gradient
// accumulators.
constexpr int64_t kBlockRows = 128;
// The backward's blocks (64 to 384 rows measured the same; its products dominate either way).
constexpr int64_t kBackwardRows = 128;

// The operands as raw row-major pointers. Layer k maps d[k] -> d[k + 1]; its input is x_k =
// ReLU(h) for k = 0 (recomputed where needed) and the saved x[k] for k >= 1.
template <typename S>
struct Tail {
  int64_t N = 0;
  std::vector<int64_t> d;
  std::vector<int64_t> ld;  // ld[k]: row stride of x_k (util::padded_stride of d[k])
  std::vector<const S*> w, b;
  // The backward's copies of the weights in rows of ld[k] (or the weights
  // themselves where that is d[k]); set by the backward only.
  std::vector<const S*> wpad;
  std::vector<S*> x;  // x[k], k >= 1: [N, ld[k]] (d[k] values per row); x[0] unused
  bool normalize = false;
  bool sigmoid = false;  // else ReLU
  S eps = 0;
  const S* h = nullptr;
  S* y = nullptr;     // [N, d[K]]
  S* norm = nullptr;  // [N], with normalize
  size_t layers() const { return w.size(); }
  int64_t widest() const { return *std::max_element(d.begin() + 1, d.end()); }
  int64_t grad_size() const {
    int64_t s = 0;
    for (size_t k = 0; k < layers(); ++k) s += d[k + 1] * d[k] + d[k + 1];
    return s;
  }
};

// max(x, 0) with NaN kept (as torch's relu): a diverging model stays visible downstream.
template <typename S>
inline S relu(S x) {
  return x <= S(0) ? S(0) : x;
}

template <typename S>
void activate_rows(bool sigmoid, const S* src, S* dst, int64_t n) {
  if (sigmoid) {
    for (int64_t i = 0; i < n; ++i) dst[i] = fast::sigmoid(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = relu(src[i]);
  }
}

// g *= the activation's derivative, from its output y: ReLU passes where y > 0 (a NaN output
// passes, as torch's threshold_backward), sigmoid multiplies by (1 - y) y (as torch's
// sigmoid_backward).
template <typename S>
void times_derivative(bool sigmoid, const S* y, S* g, int64_t n) {
  if (sigmoid) {
    for (int64_t i = 0; i < n; ++i) g[i] = g[i] * (S(1) - y[i]) * y[i];
  } else {
    // Written as a select that stores every element: a conditional store compiles to a masked
    // store (vmaskmovps), which is microcoded and slow on AMD cores (half the kernel's own time).
    for (int64_t i = 0; i < n; ++i) g[i] = y[i] <= S(0) ? S(0) : g[i];
  }
}

// act(h) for rows [i0, i1) into x0 (rows of t.ld[0]).
template <typename S>
void activate_block(const Tail<S>& t, int64_t i0, int64_t i1, S* x0) {
  const int64_t d0 = t.d[0];
  for (int64_t r = 0; r < i1 - i0; ++r)
    activate_rows(t.sigmoid, t.h + (i0 + r) * d0, x0 + r * t.ld[0], d0);
}

// Rows [i0, i1): every layer's output and the (normalised) result.
template <typename S>
void forward_block(const Tail<S>& t, int64_t i0, int64_t i1, S* x0) {
  const int64_t n = i1 - i0, K = static_cast<int64_t>(t.layers());
  activate_block(t, i0, i1, x0);
  const S* in = x0;
  for (int64_t k = 0; k < K; ++k) {
    const int64_t din = t.d[k], dout = t.d[k + 1];
    const bool last = k + 1 == K;
    const int64_t ldo = last ? dout : t.ld[k + 1];
    S* out = last ? t.y + i0 * dout : t.x[k + 1] + i0 * ldo;
    gemm_rowmajor(false, true, n, dout, din, S(1), in, t.ld[k], t.w[k], din, S(0), out, ldo);
    for (int64_t r = 0; r < n; ++r) {
      S* row = out + r * ldo;
      for (int64_t c = 0; c < dout; ++c) row[c] += t.b[k][c];
      if (!last) activate_rows(t.sigmoid, row, row, dout);
    }
    in = out;
  }
  if (!t.normalize) return;
  const int64_t dk = t.d[K];
  for (int64_t r = 0; r < n; ++r) {
    S* row = t.y + (i0 + r) * dk;
    S sq = 0;
    for (int64_t c = 0; c < dk; ++c) sq += row[c] * row[c];
    const S nrm = std::sqrt(sq);
    t.norm[i0 + r] = nrm;
    const S inv = S(1) / std::max(nrm, t.eps);
    for (int64_t c = 0; c < dk; ++c) row[c] *= inv;
  }
}

// Per-chunk buffers, laid out once: ReLU(h) of a block, two gradient buffers, and where each
// layer's weight and bias gradient sits in the chunk's accumulator.
template <typename S>
struct Chunk {
  // Uninitialised: each block writes what it reads (the padding columns are never read).
  std::unique_ptr<S[]> scratch;
  S *x0 = nullptr, *ga = nullptr, *gb = nullptr;
  std::vector<S*> dw, db;
  Chunk(const Tail<S>& t, S* acc) {
    const int64_t wide = std::max(t.widest(), t.d[0]);
    scratch = util::scratch_buffer<S>(kBackwardRows * (t.ld[0] + 2 * wide));
    x0 = scratch.get();
    ga = x0 + kBackwardRows * t.ld[0];
    gb = ga + kBackwardRows * wide;
    for (size_t k = 0; acc && k < t.layers(); ++k) {
      dw.push_back(acc);
      acc += t.d[k + 1] * t.d[k];
      db.push_back(acc);
      acc += t.d[k + 1];
    }
  }
};

// Rows [i0, i1) of the backward: dh rows, and the block's weight and bias gradients added to
// the chunk's accumulators.
// `first`: the chunk's first block, which writes the accumulators instead of adding to them.
template <typename S>
void backward_block(const Tail<S>& t, int64_t i0, int64_t i1, const S* dy, S* dh, Chunk<S>& c,
                    bool first) {
  const int64_t n = i1 - i0, K = static_cast<int64_t>(t.layers()), dk = t.d[K];
  // Gradient at the last layer's output (before the normalisation).
  S* g = c.ga;
  for (int64_t r = 0; r < n; ++r) {
    const S* yr = t.y + (i0 + r) * dk;
    const S* dyr = dy + (i0 + r) * dk;
    S* gr = g + r * dk;
    if (!t.normalize) {
      std::copy(dyr, dyr + dk, gr);
      continue;
    }
    // y = p / max(|p|, eps): (dy - y (y . dy)) / |p| where the norm is at least eps (torch's
    // clamp_min passes the gradient there), dy / eps below it.
    const S nrm = t.norm[i0 + r];
    if (nrm >= t.eps) {
      S dot = 0;
      for (int64_t cc = 0; cc < dk; ++cc) dot += yr[cc] * dyr[cc];
      const S inv = S(1) / nrm;
      for (int64_t cc = 0; cc < dk; ++cc) gr[cc] = (dyr[cc] - yr[cc] * dot) * inv;
    } else {
      for (int64_t cc = 0; cc < dk; ++cc) gr[cc] = dyr[cc] / t.eps;
    }
  }
  activate_block(t, i0, i1, c.x0);
  S* spare = c.gb;
  for (int64_t k = K - 1; k >= 0; --k) {
    const int64_t din = t.d[k], dout = t.d[k + 1], ldx = t.ld[k];
    const S* xin = k == 0 ? c.x0 : t.x[k] + i0 * ldx;
    gemm_rowmajor(true, false, dout, din, n, S(1), g, dout, xin, ldx, S(first ? 0 : 1), c.dw[k],
                  din);
    if (first) std::fill(c.db[k], c.db[k] + dout, S(0));
    for (int64_t r = 0; r < n; ++r)
      for (int64_t cc = 0; cc < dout; ++cc) c.db[k][cc] += g[r * dout + cc];
    S* gin = k == 0 ? dh + i0 * din : spare;
    gemm_rowmajor(false, false, n, din, dout, S(1), g, dout, t.wpad[k], ldx, S(0), gin, din);
    // Through the activation that made x_k (x_0 = act(h)).
    for (int64_t r = 0; r < n; ++r)
      times_derivative(t.sigmoid, xin + r * ldx, gin + r * din, din);
    spare = g;
    g = gin;
  }
}

class MlpTailFunction : public torch::autograd::Function<MlpTailFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const Tensor& h_in, at::TensorList weights,
                               at::TensorList biases, bool normalize, double eps, bool sigmoid) {
    auto h = h_in.contiguous();
    std::vector<Tensor> w, b, x;
    for (const auto& t : weights) w.push_back(t.contiguous());
    for (const auto& t : biases) b.push_back(t.contiguous());
    const int64_t N = h.size(0);
    const size_t K = w.size();
    x.push_back(Tensor());
    // Each hidden layer's output in rows of util::padded_stride (the next layer's input).
    for (size_t k = 1; k < K; ++k)
      x.push_back(torch::empty({N, util::padded_stride(w[k].size(1), h.element_size())},
                               h.options()));
    auto y = torch::empty({N, w.back().size(0)}, h.options());
    auto norm = normalize ? torch::empty({N}, h.options()) : torch::empty({0}, h.options());
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "mlp_tail_fused", [&] {
      Tail<scalar_t> t = make_tail<scalar_t>(h, w, b, x, y, norm, normalize, eps, sigmoid);
      const int64_t blocks = (N + kBlockRows - 1) / kBlockRows;
      // All blocks on this thread where the BLAS would not run a call on its calling thread.
      const int64_t grain = util::blas_calls_nest() ? 1 : blocks;
      auto run_blocks = [&](int64_t b0, int64_t b1) {
        // Rows of ld[0]: the padding columns are never read.
        auto x0 = util::scratch_buffer<scalar_t>(kBlockRows * t.ld[0]);
        for (int64_t blk = b0; blk < b1; ++blk)
          forward_block(t, blk * kBlockRows, std::min(N, (blk + 1) * kBlockRows), x0.get());
      };
      // Inside a side-by-side part, in chunks a helper may take (each block writes only its own
      // rows, so any split gives the same output).
      util::parallel_for_shared(0, blocks, grain, run_blocks);
    });
    std::vector<Tensor> saved{h, y, norm};
    for (size_t k = 1; k < K; ++k) saved.push_back(x[k]);
    for (const auto& t : w) saved.push_back(t);
    for (const auto& t : b) saved.push_back(t);
    ctx->save_for_backward(saved);
    ctx->saved_data["layers"] = static_cast<int64_t>(K);
    ctx->saved_data["normalize"] = normalize;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["sigmoid"] = sigmoid;
    return {y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    util::refuse_double_backward("mlp_tail_fused", "TowerOptions::fused_mlp(false)");
    const auto saved = ctx->get_saved_variables();
    const auto K = static_cast<size_t>(ctx->saved_data["layers"].toInt());
    const bool normalize = ctx->saved_data["normalize"].toBool();
    const double eps = ctx->saved_data["eps"].toDouble();
    const bool sigmoid = ctx->saved_data["sigmoid"].toBool();
    const auto &h = saved[0], &y = saved[1], &norm = saved[2];
    std::vector<Tensor> x{Tensor()}, w, b;
    for (size_t k = 1; k < K; ++k) x.push_back(saved[2 + k]);
    for (size_t k = 0; k < K; ++k) w.push_back(saved[2 + K + k]);
    for (size_t k = 0; k < K; ++k) b.push_back(saved[2 + 2 * K + k]);
    auto dy = grads[0].contiguous();
    const int64_t N = h.size(0);
    auto dh = torch::empty_like(h);
    Tensor flat;
    AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "mlp_tail_fused_backward", [&] {
      Tail<scalar_t> t = make_tail<scalar_t>(h, w, b, x, y, norm, normalize, eps, sigmoid);
      // dx = g W reads W as B: copies in rows of the padded stride where it differs.
      std::vector<Tensor> padded;
      for (size_t k = 0; k < K; ++k) {
        if (t.ld[k] == t.d[k]) {
          t.wpad.push_back(t.w[k]);
          continue;
        }
        auto wp = torch::empty({w[k].size(0), t.ld[k]}, w[k].options());
        wp.narrow(1, 0, t.d[k]).copy_(w[k]);
        padded.push_back(wp);
        t.wpad.push_back(wp.data_ptr<scalar_t>());
      }
      const int64_t blocks = (N + kBackwardRows - 1) / kBackwardRows;
      // One gradient accumulator per chunk of blocks (chunk k owns accumulator k whichever
      // thread runs it), summed in chunk order afterwards.
      const int64_t slots = util::blas_chunks(blocks);
      const int64_t gsize = t.grad_size();
      // Written by each chunk's first block (every chunk has at least one block).
      auto acc = torch::empty({slots, gsize}, h.options());
      scalar_t* accp = acc.data_ptr<scalar_t>();
      const scalar_t* dyp = dy.data_ptr<scalar_t>();
      scalar_t* dhp = dh.data_ptr<scalar_t>();
      auto run_slot = [&](int64_t s) {
        Chunk<scalar_t> chunk(t, accp + s * gsize);
        const int64_t first = s * blocks / slots;
        for (int64_t blk = first; blk < (s + 1) * blocks / slots; ++blk)
          backward_block(t, blk * kBackwardRows, std::min(N, (blk + 1) * kBackwardRows), dyp,
                         dhp, chunk, blk == first);
      };
      // Inside a side-by-side part, a helper may take slots (each has its own accumulator).
      util::for_each_chunk(slots, run_slot);
      // Chunk accumulators summed in chunk order into the first.
      flat = acc[0];
      for (int64_t k = 1; k < slots; ++k) flat.add_(acc[k]);
    });
    variable_list out{dh};
    int64_t off = 0;
    std::vector<Tensor> dws, dbs;
    for (size_t k = 0; k < K; ++k) {
      const int64_t nw = w[k].numel(), nb = b[k].numel();
      dws.push_back(flat.narrow(0, off, nw).view(w[k].sizes()));
      dbs.push_back(flat.narrow(0, off + nw, nb).view(b[k].sizes()));
      off += nw + nb;
    }
    out.insert(out.end(), dws.begin(), dws.end());
    out.insert(out.end(), dbs.begin(), dbs.end());
    out.emplace_back();  // normalize
    out.emplace_back();  // eps
    out.emplace_back();  // sigmoid
    return out;
  }

 private:
  template <typename S>
  static Tail<S> make_tail(const Tensor& h, const std::vector<Tensor>& w,
                           const std::vector<Tensor>& b, const std::vector<Tensor>& x,
                           const Tensor& y, const Tensor& norm, bool normalize, double eps,
                           bool sigmoid) {
    Tail<S> t;
    t.N = h.size(0);
    t.d.push_back(h.size(1));
    t.ld.push_back(util::padded_stride(h.size(1), static_cast<int64_t>(sizeof(S))));
    for (size_t k = 0; k < w.size(); ++k) {
      t.d.push_back(w[k].size(0));
      // The saved hidden outputs carry their row stride (as the forward laid them out).
      if (k + 1 < w.size()) t.ld.push_back(x[k + 1].size(1));
      t.w.push_back(w[k].data_ptr<S>());
      t.b.push_back(b[k].data_ptr<S>());
      t.x.push_back(k == 0 ? nullptr : x[k].data_ptr<S>());
    }
    t.h = h.data_ptr<S>();
    t.y = y.data_ptr<S>();
    t.normalize = normalize;
    t.norm = normalize ? norm.data_ptr<S>() : nullptr;
    t.eps = static_cast<S>(eps);
    t.sigmoid = sigmoid;
    return t;
  }
};

}  // namespace

std::string mlp_tail_unsupported(const torch::Tensor& h, const std::vector<torch::Tensor>& weights,
                                 const std::vector<torch::Tensor>& biases) {
  std::ostringstream why;
  const auto dtype = h.scalar_type();
  if (const auto base = util::blas_kernel_unsupported(dtype); !base.empty()) {
    why << base;
  } else if (!h.device().is_cpu() || h.dim() != 2 || h.size(0) < 1) {
    why << "h must be a CPU [N, d] tensor with N >= 1, got " << h.sizes();
  } else if (weights.empty() || weights.size() != biases.size()) {
    why << "one bias per weight, at least one layer";
  } else {
    int64_t width = h.size(1);
    for (size_t k = 0; k < weights.size(); ++k) {
      const auto &w = weights[k], &b = biases[k];
      if (!(w.dim() == 2 && w.size(1) == width && w.device().is_cpu() &&
            w.scalar_type() == dtype && b.defined() && b.dim() == 1 &&
            b.size(0) == w.size(0) && b.device().is_cpu() && b.scalar_type() == dtype &&
            w.size(0) <= (int64_t{1} << 30))) {
        why << "layer " << k << " must be a CPU " << dtype << " weight [out, " << width
            << "] with a bias [out], got " << w.sizes();
        break;
      }
      width = w.size(0);
    }
  }
  return why.str();
}

torch::Tensor mlp_tail_fused(const torch::Tensor& h, const std::vector<torch::Tensor>& weights,
                             const std::vector<torch::Tensor>& biases, bool normalize,
                             double eps, TailActivation activation) {
  const auto why = mlp_tail_unsupported(h, weights, biases);
  TORCH_CHECK(why.empty(), "mlp_tail_fused: ", why);
  RECORD_FUNCTION("mlp_tail_fused", std::vector<c10::IValue>());
  return MlpTailFunction::apply(h, at::TensorList(weights), at::TensorList(biases), normalize,
                                eps, activation == TailActivation::kSigmoid)[0];
}

}  // namespace recsys::models

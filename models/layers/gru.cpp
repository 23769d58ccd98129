#include "models/layers/gru.h"

#include <ATen/Parallel.h>

#include "framework/util/blas.h"
#include "framework/util/fast_math.h"
#include "framework/util/matmul.h"
#include "framework/util/simd.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace recsys::models {

GruKind parse_gru_kind(const std::string& name) {
  if (name == "gru") return GruKind::kGru;
  if (name == "aigru") return GruKind::kAigru;
  if (name == "agru") return GruKind::kAgru;
  if (name == "augru") return GruKind::kAugru;
  throw std::invalid_argument("unknown GRU kind '" + name +
                              "'; known kinds: gru, aigru, agru, augru");
}

const char* gru_kind_name(GruKind kind) {
  switch (kind) {
    case GruKind::kGru: return "gru";
    case GruKind::kAigru: return "aigru";
    case GruKind::kAgru: return "agru";
    case GruKind::kAugru: return "augru";
  }
  return "?";
}

namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_same(const char* who, const char* what, const Tensor& t, const Tensor& x) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), who, ": ", what, " has dtype ", t.scalar_type(),
              " but x has ", x.scalar_type(), "; convert both to one floating type");
  TORCH_CHECK(t.device() == x.device(), who, ": ", what, " is on ", t.device(), " but x is on ",
              x.device(), "; move both to one device");
}

// The weights against x's input width I (and dtype / device); returns H.
int64_t check_weights(const char* who, const Tensor& x, int64_t I, const Tensor& w_ih,
                      const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh) {
  TORCH_CHECK(x.is_floating_point(), who, ": x must be floating point, got ", x.scalar_type());
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) == 3 * w_hh.size(1), who,
              ": weight_hh must be [3H, H] (gates r, z, n), got ", w_hh.sizes());
  const int64_t H = w_hh.size(1);
  TORCH_CHECK(w_ih.dim() == 2 && w_ih.size(0) == 3 * H && w_ih.size(1) == I, who,
              ": weight_ih must be [3H, I] = [", 3 * H, ", ", I, "] to match weight_hh and x, got ",
              w_ih.sizes());
  TORCH_CHECK(b_ih.dim() == 1 && b_ih.size(0) == 3 * H, who, ": bias_ih must be [3H] = [", 3 * H,
              "], got ", b_ih.sizes());
  TORCH_CHECK(b_hh.dim() == 1 && b_hh.size(0) == 3 * H, who, ": bias_hh must be [3H] = [", 3 * H,
              "], got ", b_hh.sizes());
  check_same(who, "weight_ih", w_ih, x);
  check_same(who, "weight_hh", w_hh, x);
  check_same(who, "bias_ih", b_ih, x);
  check_same(who, "bias_hh", b_hh, x);
  return H;
}

// Attention scores: none for kGru, of shape `shape` (named `shape_name`) for the other kinds.
void check_attention(const char* who, GruKind kind, const Tensor& attention, const Tensor& x,
                     c10::IntArrayRef shape, const char* shape_name) {
  if (kind == GruKind::kGru) {
    TORCH_CHECK(!attention.defined(), who,
                ": kind 'gru' takes no attention scores; pass an undefined tensor or use "
                "aigru/agru/augru");
    return;
  }
  TORCH_CHECK(attention.defined(), who, ": kind '", gru_kind_name(kind), "' needs attention scores ",
              shape_name, "; pass them or use kind 'gru'");
  TORCH_CHECK(attention.sizes() == shape, who, ": attention must be ", shape_name, " = ", shape,
              ", got ", attention.sizes());
  check_same(who, "attention", attention, x);
}

void check_h0(const char* who, const Tensor& h0, const Tensor& x, int64_t B, int64_t H) {
  if (!h0.defined()) return;
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H, who,
              ": h0 must be [B, H] = [", B, ", ", H, "], got ", h0.sizes());
  check_same(who, "h0", h0, x);
}

void check_inputs(const char* who, GruKind kind, const Tensor& x, const Tensor& lengths,
                  const Tensor& attention, const Tensor& h0, const Tensor& w_ih,
                  const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh) {
  TORCH_CHECK(x.defined() && x.dim() == 3, who, ": x must be [B, T, I], got ",
              x.defined() ? x.sizes() : c10::IntArrayRef{});
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2);
  TORCH_CHECK(T >= 1, who, ": x has no time steps (T = 0); every sequence needs length >= 1");
  const int64_t H = check_weights(who, x, I, w_ih, w_hh, b_ih, b_hh);

  TORCH_CHECK(lengths.defined() && lengths.dim() == 1 && lengths.size(0) == B, who,
              ": lengths must be a 1-D tensor with one entry per sequence ([B] = [", B, "]), got ",
              lengths.defined() ? lengths.sizes() : c10::IntArrayRef{});
  TORCH_CHECK(at::isIntegralType(lengths.scalar_type(), /*includeBool=*/false), who,
              ": lengths must hold integers (int64), got ", lengths.scalar_type());
  // Only CPU lengths are range-checked: on an accelerator this would be a host-device sync.
  if (lengths.device().is_cpu() && B > 0) {
    const auto lo = lengths.min().item<int64_t>();
    const auto hi = lengths.max().item<int64_t>();
    TORCH_CHECK(lo >= 1 && hi <= T, who, ": lengths must lie in [1, T] = [1, ", T, "], got min ",
                lo, " and max ", hi, "; drop empty sequences and pad x to the longest sequence");
  }
  check_attention(who, kind, attention, x, {B, T}, "[B, T]");
  check_h0(who, h0, x, B, H);
}

// What follows from the gate pre-activations' gradients d_gi, d_gh [M, 3H] (one row per step,
// any row order): the weight and bias gradients, and d loss / d x_in = d_gi W_ih [M, I] when
// wanted. x_in [M, I] is the input fed to the cell, h_before [M, H] the state before each step.
struct InputSideGrads {
  Tensor dw_ih, dw_hh, db_ih, db_hh, dx_in;
};
InputSideGrads input_side_grads(const Tensor& d_gi, const Tensor& d_gh, const Tensor& x_in,
                                const Tensor& h_before, const Tensor& w_ih, bool want_dx_in) {
  InputSideGrads g;
  g.dw_hh = util::mm(d_gh.t(), h_before);
  g.db_hh = d_gh.sum(0);
  g.dw_ih = util::mm(d_gi.t(), x_in);
  g.db_ih = d_gi.sum(0);
  if (want_dx_in) g.dx_in = util::mm(d_gi, w_ih);
  return g;
}

// Autograd node over the whole sequence. Notation: the candidate weight g is what multiplies
// (n - h) in h' = h + g (n - h); with c = mask (kGru, kAigru) or c = a * mask (kAgru, kAugru),
// g = c (1 - z) for every kind but kAgru, where g = c. Folding the mask into c makes a padded step
// an exact pass-through (h + 0) in both directions.
class GruFusedFunction : public torch::autograd::Function<GruFusedFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, int64_t kind_id, const Tensor& x,
                               const Tensor& lengths, const c10::optional<Tensor>& attention,
                               const c10::optional<Tensor>& h0, const Tensor& w_ih,
                               const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh) {
    const auto kind = static_cast<GruKind>(kind_id);
    const int64_t B = x.size(0), T = x.size(1), I = x.size(2), H = w_hh.size(1), G = 3 * H;
    const auto opts = x.options();
    const bool uses_z = kind != GruKind::kAgru;

    auto len = lengths.to(x.device(), torch::kLong);
    // [T, B, 1]; time-major everywhere so that each step's slice is contiguous.
    auto mask = (torch::arange(T, len.options()).unsqueeze(1) < len.unsqueeze(0))
                    .to(x.scalar_type())
                    .unsqueeze(2);
    Tensor a_tb;
    if (attention.has_value()) a_tb = attention->t().unsqueeze(2).contiguous();
    auto x_tb = x.transpose(0, 1).contiguous();
    auto x_in = kind == GruKind::kAigru ? x_tb * a_tb : x_tb;
    auto c = (kind == GruKind::kAgru || kind == GruKind::kAugru) ? a_tb * mask : mask;

    // After the loop `gates` holds r | z | n and `gh` holds h W_hh^T + b_hh (its n part is needed
    // by backward).
    auto gates = util::addmm(b_ih, x_in.view({T * B, I}), w_ih.t()).view({T, B, G});
    auto gh = at::empty({T, B, G}, opts);
    auto hs = at::empty({T + 1, B, H}, opts);
    if (h0.has_value()) {
      hs[0].copy_(*h0);
    } else {
      hs[0].zero_();
    }
    auto g_all = uses_z ? at::empty({T, B, H}, opts) : Tensor();
    auto diff_all = at::empty({T, B, H}, opts);  // n - h, reused by backward
    const auto w_hh_t = w_hh.t();

    for (int64_t t = 0; t < T; ++t) {
      auto h = hs[t];
      auto gh_t = gh[t];
      auto gates_t = gates[t];
      at::addmm_out(gh_t, b_hh, h, w_hh_t);
      auto rz = gates_t.narrow(1, 0, 2 * H);
      rz.add_(gh_t.narrow(1, 0, 2 * H)).sigmoid_();
      auto r = gates_t.narrow(1, 0, H);
      auto z = gates_t.narrow(1, H, H);
      auto n = gates_t.narrow(1, 2 * H, H);
      n.addcmul_(r, gh_t.narrow(1, 2 * H, H)).tanh_();
      auto diff = diff_all[t];
      at::sub_out(diff, n, h);
      auto c_t = c[t];
      auto g = uses_z ? g_all[t] : c_t;
      if (uses_z) at::addcmul_out(g, c_t, c_t, z, -1);  // g = c - c z
      auto h_next = hs[t + 1];
      at::addcmul_out(h_next, h, g, diff);
    }

    auto outputs = at::empty({B, T, H}, opts);
    auto outputs_tb = outputs.transpose(0, 1);
    at::mul_out(outputs_tb, hs.narrow(0, 1, T), mask);
    auto final_state = hs[T].clone();

    ctx->save_for_backward({w_ih, w_hh});
    auto& s = ctx->saved_data;
    s["kind"] = kind_id;
    s["has_h0"] = h0.has_value();
    s["need_dx"] = x.requires_grad();
    s["gates"] = gates;
    s["gh"] = gh;
    s["hs"] = hs;
    s["x_in"] = x_in;
    s["diff"] = diff_all;
    if (kind == GruKind::kAigru) s["x_tb"] = x_tb;
    s["mask"] = mask;
    s["c"] = c;
    if (uses_z) s["g"] = g_all;
    if (kind == GruKind::kAigru) s["a_tb"] = a_tb;
    ctx->set_materialize_grads(false);
    return {outputs, final_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& w_ih = saved[0];
    const auto& w_hh = saved[1];
    auto& s = ctx->saved_data;
    const auto kind = static_cast<GruKind>(s["kind"].toInt());
    const bool has_h0 = s["has_h0"].toBool();
    const bool uses_z = kind != GruKind::kAgru;
    const auto gates = s["gates"].toTensor();
    const auto gh = s["gh"].toTensor();
    const auto hs = s["hs"].toTensor();
    const auto x_in = s["x_in"].toTensor();
    const auto mask = s["mask"].toTensor();
    const auto c = s["c"].toTensor();
    const auto g_all = uses_z ? s["g"].toTensor() : Tensor();
    const auto diff_all = s["diff"].toTensor();
    const int64_t T = gates.size(0), B = gates.size(1), G = gates.size(2), H = G / 3;
    const int64_t I = x_in.size(2);
    const auto opts = gates.options();

    const auto& d_out = grads[0];
    const auto& d_final = grads[1];
    auto dh = d_final.defined() ? d_final.contiguous().clone() : at::zeros({B, H}, opts);
    Tensor d_out_tb;
    if (d_out.defined()) d_out_tb = d_out.transpose(0, 1).contiguous();

    // Gradients of the gate pre-activations, per step, for one weight-gradient matmul at the end.
    // They differ only in the n block: d(h W_hn + b_hn) = d(pre_n) * r.
    auto d_gi = at::empty({T, B, G}, opts);
    auto d_gh = at::empty({T, B, G}, opts);
    if (!uses_z) d_gh.narrow(2, H, H).zero_();
    // d loss / d g per step; the attention gradient is reduced from it after the loop.
    auto dg_all = at::empty({T, B, H}, opts);
    auto neg_c = uses_z ? c.neg() : Tensor();
    auto dn = at::empty({B, H}, opts);
    auto tmp = at::empty({B, H}, opts);

    for (int64_t t = T - 1; t >= 0; --t) {
      if (d_out.defined()) dh.addcmul_(d_out_tb[t], mask[t]);
      auto h = hs[t];
      auto gates_t = gates[t];
      auto r = gates_t.narrow(1, 0, H);
      auto z = gates_t.narrow(1, H, H);
      auto n = gates_t.narrow(1, 2 * H, H);
      auto hn = gh[t].narrow(1, 2 * H, H);
      auto g = uses_z ? g_all[t] : c[t];
      auto d_gi_t = d_gi[t];
      auto d_gh_t = d_gh[t];
      auto d_pre_n = d_gi_t.narrow(1, 2 * H, H);

      at::mul_out(dn, dh, g);
      at::tanh_backward_out(d_pre_n, dn, n);
      auto dg = dg_all[t];
      at::mul_out(dg, dh, diff_all[t]);
      at::mul_out(tmp, d_pre_n, hn);
      auto d_gh_r = d_gh_t.narrow(1, 0, H);
      at::sigmoid_backward_out(d_gh_r, tmp, r);
      auto d_gh_n = d_gh_t.narrow(1, 2 * H, H);
      at::mul_out(d_gh_n, d_pre_n, r);
      if (uses_z) {
        at::mul_out(tmp, dg, neg_c[t]);
        auto d_gh_z = d_gh_t.narrow(1, H, H);
        at::sigmoid_backward_out(d_gh_z, tmp, z);
      }
      // h' = h + g (n - h) plus the paths through the gates' h W_hh^T term.
      dh.sub_(dn);
      dh.addmm_(d_gh_t, w_hh);
    }
    d_gi.narrow(2, 0, 2 * H).copy_(d_gh.narrow(2, 0, 2 * H));

    const bool need_dx = s["need_dx"].toBool();
    auto side = input_side_grads(d_gi.view({T * B, G}), d_gh.view({T * B, G}),
                              x_in.view({T * B, I}), hs.narrow(0, 0, T).reshape({T * B, H}), w_ih,
                              need_dx || kind == GruKind::kAigru);
    Tensor dx, da;
    if (kind == GruKind::kAigru) {
      auto dx_in = side.dx_in.view({T, B, I});
      // x_in = a * x: the mask needs no separate handling since d_gi is zero at padded steps.
      da = (dx_in * s["x_tb"].toTensor()).sum(2).t();
      if (need_dx) dx = (dx_in * s["a_tb"].toTensor()).transpose(0, 1);
    } else if (need_dx) {
      dx = side.dx_in.view({T, B, I}).transpose(0, 1);
    }
    if (kind == GruKind::kAugru) {
      // g = a mask (1 - z), so dg/da = mask (1 - z).
      auto one_minus_z = 1 - gates.narrow(2, H, H);
      da = (dg_all * one_minus_z).sum(2).mul_(mask.squeeze(2)).t();
    } else if (kind == GruKind::kAgru) {
      da = dg_all.sum(2).mul_(mask.squeeze(2)).t();
    }
    Tensor dh0 = has_h0 ? dh : Tensor();
    return {Tensor(), dx, Tensor(), da, dh0, side.dw_ih, side.dw_hh, side.db_ih, side.db_hh};
  }
};


// ---------------------------------------------------------------------------------------------
// Packed path (CPU): sequences sorted by length, longest first, so that the sequences still
// running at step t are the first bt[t] rows; the valid (t, b) steps are packed time-major into
// [N, .] matrices (N = sum of the lengths, as PackedSequence). Padded steps cost nothing, each
// step is one [bt, H] x [H, 3H] product plus one loop over its gates, and backward is one loop
// plus one product per step. Same math as GruFusedFunction (g, c as documented there).
// Saves a layout's vectors in an autograd context (saved_data holds IValues) and reads them back.
void save_layout(AutogradContext* ctx, const PackedLayout& p) {
  auto& s = ctx->saved_data;
  s["perm"] = torch::tensor(p.perm, torch::kLong);
  s["bt"] = torch::tensor(p.bt, torch::kLong);
  s["off"] = torch::tensor(p.off, torch::kLong);
  s["batch"] = p.batch;
}

PackedLayout load_layout(AutogradContext* ctx) {
  auto& s = ctx->saved_data;
  auto vec = [](const torch::Tensor& t) {
    const int64_t* q = t.data_ptr<int64_t>();
    return std::vector<int64_t>(q, q + t.numel());
  };
  PackedLayout p;
  p.perm = vec(s["perm"].toTensor());
  p.bt = vec(s["bt"].toTensor());
  p.off = vec(s["off"].toTensor());
  p.batch = s["batch"].toInt();
  return p;
}

// The kinds differ only in g (the weight of n - h) and in what the attention a receives, so the
// row loops take them as per-row coefficients and stay branch-free (vectorisable):
//   g = ca (1 - z) + cb;  dz = -ca dg;  da = sum_c dg (ua (1 - z) + ub)
//   kGru, kAigru: ca = 1, cb = 0, ua = ub = 0;  kAugru: ca = a;  ua = 1;  kAgru: ca = 0, cb = a, ub = 1.
struct RowCoef {
  double ca, cb, ua, ub;
};
inline RowCoef row_coef(GruKind kind, double a) {
  switch (kind) {
    case GruKind::kAugru: return {a, 0, 1, 0};
    case GruKind::kAgru: return {0, a, 0, 1};
    default: return {1, 0, 0, 0};
  }
}

// One row of a forward step. gi: r | z | n pre-activations of x (in), activated r, z, n (out);
// hh: h W_hh^T (in), + b_hh (out; backward reads its n block); h: state before, o: after.
template <typename S>
inline void forward_row(int64_t H, S* __restrict gi, S* __restrict hh, const S* __restrict bh,
                        S ca, S cb, const S* __restrict h, S* __restrict o) {
  for (int64_t c = 0; c < 3 * H; ++c) hh[c] += bh[c];
  for (int64_t c = 0; c < H; ++c) {
    const S r = fast::sigmoid(gi[c] + hh[c]);
    const S z = fast::sigmoid(gi[H + c] + hh[H + c]);
    const S nn = fast::tanh(gi[2 * H + c] + r * hh[2 * H + c]);
    gi[c] = r;
    gi[H + c] = z;
    gi[2 * H + c] = nn;
    const S g = ca * (S(1) - z) + cb;
    o[c] = h[c] + g * (nn - h[c]);
  }
}

// One row of a backward step: d (in: d loss / d h' incl. the output's gradient; out: the direct
// part (1 - g) d of d loss / d h); d_gi, d_gh (out); dg_buf: scratch [H]. Returns d loss / d a.
template <typename S>
inline S backward_row(int64_t H, const S* __restrict act, const S* __restrict hh,
                      const S* __restrict h, S* __restrict d, S* __restrict dgi,
                      S* __restrict dgh, S ca, S cb, S ua, S ub, S* __restrict dg_buf) {
  for (int64_t c = 0; c < H; ++c) {
    const S r = act[c], z = act[H + c], nn = act[2 * H + c];
    const S dc = d[c];
    const S dg = dc * (nn - h[c]);
    const S g = ca * (S(1) - z) + cb;
    const S dn = dc * g;
    const S dpre_n = dn * (S(1) - nn * nn);
    const S dpre_r = dpre_n * hh[2 * H + c] * r * (S(1) - r);
    const S dpre_z = -ca * dg * z * (S(1) - z);
    dgi[c] = dpre_r;
    dgh[c] = dpre_r;
    dgi[H + c] = dpre_z;
    dgh[H + c] = dpre_z;
    dgi[2 * H + c] = dpre_n;
    dgh[2 * H + c] = dpre_n * r;
    d[c] = dc - dn;
    dg_buf[c] = dg * (ua * (S(1) - z) + ub);
  }
  S da = 0;
  for (int64_t c = 0; c < H; ++c) da += dg_buf[c];
  return da;
}

// float32 rows built for AVX2 / AVX-512 as well (target_clones does not take templates).
RECSYS_CLONES void forward_row_f32(int64_t H, float* gi, float* hh, const float* bh, float ca,
                                   float cb, const float* h, float* o) {
  forward_row<float>(H, gi, hh, bh, ca, cb, h, o);
}
RECSYS_CLONES float backward_row_f32(int64_t H, const float* act, const float* hh, const float* h,
                                     float* d, float* dgi, float* dgh, float ca, float cb,
                                     float ua, float ub, float* dg_buf) {
  return backward_row<float>(H, act, hh, h, d, dgi, dgh, ca, cb, ua, ub, dg_buf);
}
inline void forward_row_any(int64_t H, float* gi, float* hh, const float* bh, float ca, float cb,
                            const float* h, float* o) {
  forward_row_f32(H, gi, hh, bh, ca, cb, h, o);
}
inline void forward_row_any(int64_t H, double* gi, double* hh, const double* bh, double ca,
                            double cb, const double* h, double* o) {
  forward_row<double>(H, gi, hh, bh, ca, cb, h, o);
}
inline float backward_row_any(int64_t H, const float* act, const float* hh, const float* h,
                              float* d, float* dgi, float* dgh, float ca, float cb, float ua,
                              float ub, float* dg_buf) {
  return backward_row_f32(H, act, hh, h, d, dgi, dgh, ca, cb, ua, ub, dg_buf);
}
inline double backward_row_any(int64_t H, const double* act, const double* hh, const double* h,
                               double* d, double* dgi, double* dgh, double ca, double cb,
                               double ua, double ub, double* dg_buf) {
  return backward_row<double>(H, act, hh, h, d, dgi, dgh, ca, cb, ua, ub, dg_buf);
}

// One forward step over rows [0, n); a: attention per row (or null); the first n_next rows'
// new states are also the next step's previous states (hnext).
template <typename S>
void packed_forward_step(GruKind kind, int64_t n, int64_t H, S* gates, S* gh, const S* b_hh,
                         const S* a, const S* hprev, S* hout, S* hnext, int64_t n_next) {
  const int64_t G = 3 * H;
  for (int64_t j = 0; j < n; ++j) {
    const auto k = row_coef(kind, a ? static_cast<double>(a[j]) : 1.0);
    S* o = hout + j * H;
    forward_row_any(H, gates + j * G, gh + j * G, b_hh, static_cast<S>(k.ca),
                    static_cast<S>(k.cb), hprev + j * H, o);
    if (j < n_next) std::copy(o, o + H, hnext + j * H);
  }
}

// One backward step over rows [0, n): dh (in: d loss / d h' of each sorted row; out: the direct
// part of d loss / d h, the W_hh part is added by the caller), dout: the outputs' gradient (or
// null), d_gi, d_gh (out), da (out, kAgru / kAugru only).
template <typename S>
void packed_backward_step(GruKind kind, int64_t n, int64_t H, const S* gates, const S* gh,
                          const S* a, const S* hprev, const S* dout, S* dh, S* d_gi, S* d_gh,
                          S* da, S* dg_buf) {
  const int64_t G = 3 * H;
  for (int64_t j = 0; j < n; ++j) {
    const auto k = row_coef(kind, a ? static_cast<double>(a[j]) : 1.0);
    S* dhj = dh + j * H;
    if (dout)
      for (int64_t c = 0; c < H; ++c) dhj[c] += dout[j * H + c];
    const S dsum = backward_row_any(H, gates + j * G, gh + j * G, hprev + j * H, dhj,
                                    d_gi + j * G, d_gh + j * G, static_cast<S>(k.ca),
                                    static_cast<S>(k.cb), static_cast<S>(k.ua),
                                    static_cast<S>(k.ub), dg_buf);
    if (da) da[j] = dsum;
  }
}

// Bounds of `parts` contiguous ranges of the sorted sequences (rows j of every step), balanced by
// their number of steps. Sequences are independent, so each range's recurrence can run on its own
// thread without any synchronisation between steps; contiguous ranges keep each thread's rows
// apart in memory (interleaved rows would share cache lines).
std::vector<int64_t> sequence_ranges(const PackedLayout& pk, int64_t parts) {
  const int64_t B = pk.batch, N = pk.size();
  std::vector<int64_t> bounds{0};
  if (parts > 1 && B > 0) {
    // Sequence j runs for as many steps as have more than j rows (bt is non-increasing).
    std::vector<int64_t> len(static_cast<size_t>(B), 0);
    for (int64_t n : pk.bt)
      for (int64_t j = 0; j < n; ++j) ++len[static_cast<size_t>(j)];
    int64_t done = 0;
    for (int64_t j = 0; j < B && static_cast<int64_t>(bounds.size()) < parts; ++j) {
      done += len[static_cast<size_t>(j)];
      if (done * parts >= N * static_cast<int64_t>(bounds.size())) bounds.push_back(j + 1);
    }
  }
  if (bounds.back() != B) bounds.push_back(B);
  return bounds;
}

std::atomic<bool> g_recurrence_threads{true};

// Runs fn(r0, r1) on contiguous ranges [r0, r1) of the sorted sequences that cover them all: one
// range per thread when there is enough work (and a BLAS to call from each thread), else one.
template <typename Fn>
void for_sequence_ranges(const PackedLayout& pk, const Fn& fn) {
  const int64_t threads = at::get_num_threads();
  const bool split = g_recurrence_threads.load(std::memory_order_relaxed) && threads > 1 &&
                     !at::in_parallel_region() && util::has_blas_gemm() &&
                     pk.batch >= 2 * threads && pk.size() >= 256;
  const auto bounds = sequence_ranges(pk, split ? threads : 1);
  at::parallel_for(0, static_cast<int64_t>(bounds.size()) - 1, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t part = p0; part < p1; ++part)
      fn(bounds[static_cast<size_t>(part)], bounds[static_cast<size_t>(part) + 1]);
  });
}

// Autograd node of gru_packed_sequences: packed x [N, I] (and attention [N]) in, packed states
// [N, H] and the final states [B, H] (original order) out.
class GruPackedFunction : public torch::autograd::Function<GruPackedFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, int64_t kind_id, const PackedLayout* layout,
                               const Tensor& x_p, const c10::optional<Tensor>& attention,
                               const c10::optional<Tensor>& h0, const Tensor& w_ih,
                               const Tensor& w_hh, const Tensor& b_ih, const Tensor& b_hh) {
    const auto kind = static_cast<GruKind>(kind_id);
    const PackedLayout* pk = layout;
    const int64_t H = w_hh.size(1), G = 3 * H;
    const int64_t steps = pk->steps(), N = pk->size();
    Tensor a_p;
    if (attention.has_value()) a_p = *attention;
    auto x_in = kind == GruKind::kAigru ? x_p * a_p.unsqueeze(1) : x_p;
    auto gates = util::addmm(b_ih, x_in, w_ih.t()).contiguous();  // [N, G]
    auto gh = at::empty({N, G}, x_p.options());
    auto hprev = at::empty({N, H}, x_p.options());
    auto hout = at::empty({N, H}, x_p.options());
    if (steps > 0) {
      auto first = hprev.narrow(0, 0, pk->bt[0]);
      if (h0.has_value())
        first.copy_(h0->index_select(0, torch::tensor(pk->perm, torch::kLong)));
      else
        first.zero_();
    }
    const auto w_hh_rows = w_hh.t().contiguous();  // [H, 3H]: row p holds column p of W_hh
    const bool scores = kind == GruKind::kAgru || kind == GruKind::kAugru;
    AT_DISPATCH_FLOATING_TYPES(x_p.scalar_type(), "gru_packed_forward", [&] {
      scalar_t* gp = gates.data_ptr<scalar_t>();
      const scalar_t* ap = scores ? a_p.data_ptr<scalar_t>() : nullptr;
      const auto b_hh_c = b_hh.contiguous();
      const scalar_t* bh = b_hh_c.data_ptr<scalar_t>();
      scalar_t* hp = hprev.data_ptr<scalar_t>();
      scalar_t* ho = hout.data_ptr<scalar_t>();
      scalar_t* ghp = gh.data_ptr<scalar_t>();
      const scalar_t* wr = w_hh_rows.data_ptr<scalar_t>();
      // Each thread runs the recurrence of its own range of sequences [r0, r1) (sorted order).
      for_sequence_ranges(*pk, [&](int64_t r0, int64_t r1) {
        for (int64_t t = 0; t < steps; ++t) {
          const int64_t n = std::min(r1, pk->bt[t]) - r0;  // this range's rows at step t
          if (n <= 0) break;                               // (bt only decreases)
          const int64_t o = pk->off[t] + r0;
          // h W_hh^T, the bias added by the gate loop. W_hh^T as a contiguous [H, 3H] matrix:
          // with the transposed view, these small products took 5x longer (OpenBLAS, 2
          // threads). The process's BLAS is called directly where found: ATen's per-call work
          // costs about as much as these small products (docs/performance.md).
          if (!util::gemm_rowmajor(n, G, H, scalar_t(1), hp + o * H, H, wr, G, scalar_t(0),
                                   ghp + o * G, G)) {
            auto gh_t = gh.narrow(0, o, n);
            at::mm_out(gh_t, hprev.narrow(0, o, n), w_hh_rows);
          }
          const int64_t n_next =
              t + 1 < steps ? std::max<int64_t>(0, std::min(r1, pk->bt[t + 1]) - r0) : 0;
          packed_forward_step<scalar_t>(kind, n, H, gp + o * G, ghp + o * G, bh,
                                        ap ? ap + o : nullptr, hp + o * H, ho + o * H,
                                        n_next ? hp + (pk->off[t + 1] + r0) * H : nullptr,
                                        n_next);
        }
      });
    });
    auto final_state = hout.index_select(0, pk->final_index);

    ctx->save_for_backward({w_ih, w_hh});
    auto& s = ctx->saved_data;
    s["kind"] = kind_id;
    s["has_h0"] = h0.has_value();
    s["need_dx"] = x_p.requires_grad();
    s["gates"] = gates;
    s["gh"] = gh;
    s["hprev"] = hprev;
    s["x_in"] = x_in;
    if (kind == GruKind::kAigru) s["x_p"] = x_p;
    if (a_p.defined()) s["a_p"] = a_p;
    save_layout(ctx, *pk);
    ctx->set_materialize_grads(false);
    return {hout, final_state};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& w_ih = saved[0];
    const auto& w_hh = saved[1];
    auto& s = ctx->saved_data;
    const auto kind = static_cast<GruKind>(s["kind"].toInt());
    const auto gates = s["gates"].toTensor();
    const auto gh = s["gh"].toTensor();
    const auto hprev = s["hprev"].toTensor();
    const auto x_in = s["x_in"].toTensor();
    const PackedLayout layout = load_layout(ctx);
    const PackedLayout* pk = &layout;
    const int64_t G = gates.size(1), H = G / 3, B = pk->batch;
    const int64_t steps = pk->steps(), N = pk->size();
    const auto opts = gates.options();
    const bool scores = kind == GruKind::kAgru || kind == GruKind::kAugru;
    Tensor a_p = s.count("a_p") ? s["a_p"].toTensor() : Tensor();

    const auto& d_out = grads[0];  // [N, H] packed
    const auto& d_final = grads[1];
    auto perm = torch::tensor(pk->perm, torch::kLong);
    auto dh = d_final.defined() ? d_final.index_select(0, perm).contiguous()
                                : at::zeros({B, H}, opts);
    Tensor dout_p;
    if (d_out.defined()) dout_p = d_out.contiguous();
    auto d_gi = at::empty({N, G}, opts);
    auto d_gh = at::empty({N, G}, opts);
    Tensor da_p = scores ? at::empty({N}, opts) : Tensor();

    const auto w_hh_c = w_hh.contiguous();  // [3H, H]
    AT_DISPATCH_FLOATING_TYPES(opts.dtype().toScalarType(), "gru_packed_backward", [&] {
      const scalar_t* gates_p = gates.data_ptr<scalar_t>();
      const scalar_t* gh_p = gh.data_ptr<scalar_t>();
      const scalar_t* a = scores ? a_p.data_ptr<scalar_t>() : nullptr;
      const scalar_t* hprev_p = hprev.data_ptr<scalar_t>();
      const scalar_t* dout = dout_p.defined() ? dout_p.data_ptr<scalar_t>() : nullptr;
      scalar_t* dh_p = dh.data_ptr<scalar_t>();
      scalar_t* d_gi_p = d_gi.data_ptr<scalar_t>();
      scalar_t* d_gh_p = d_gh.data_ptr<scalar_t>();
      scalar_t* da = scores ? da_p.data_ptr<scalar_t>() : nullptr;
      // Each thread takes its range of sequences back through time (as forward).
      for_sequence_ranges(*pk, [&](int64_t r0, int64_t r1) {
        std::vector<scalar_t> dg_buf(static_cast<size_t>(H));
        scalar_t* dh_r = dh_p + r0 * H;
        for (int64_t t = steps - 1; t >= 0; --t) {
          const int64_t n = std::min(r1, pk->bt[t]) - r0;
          if (n <= 0) continue;  // this range's sequences have all ended before step t
          const int64_t o = pk->off[t] + r0;
          packed_backward_step<scalar_t>(kind, n, H, gates_p + o * G, gh_p + o * G,
                                         a ? a + o : nullptr, hprev_p + o * H,
                                         dout ? dout + o * H : nullptr, dh_r, d_gi_p + o * G,
                                         d_gh_p + o * G, da ? da + o : nullptr, dg_buf.data());
          // dh += d_gh W_hh: through the process's BLAS directly where found (as forward).
          if (!util::gemm_rowmajor(n, H, G, scalar_t(1), d_gh_p + o * G, G,
                                   w_hh_c.data_ptr<scalar_t>(), H, scalar_t(1), dh_r, H))
            dh.narrow(0, r0, n).addmm_(d_gh.narrow(0, o, n), w_hh_c);
        }
      });
    });

    const bool need_dx = s["need_dx"].toBool();
    auto side = input_side_grads(d_gi, d_gh, x_in, hprev, w_ih, need_dx || kind == GruKind::kAigru);
    Tensor dx;
    if (kind == GruKind::kAigru) {
      da_p = (side.dx_in * s["x_p"].toTensor()).sum(1);
      if (need_dx) dx = side.dx_in * a_p.unsqueeze(1);
    } else if (need_dx) {
      dx = side.dx_in;
    }
    Tensor dh0;
    if (s["has_h0"].toBool()) dh0 = at::empty_like(dh).index_copy_(0, perm, dh);
    return {Tensor(), Tensor(), dx, da_p, dh0, side.dw_ih, side.dw_hh, side.db_ih, side.db_hh};
  }
};

}  // namespace

GruOutput gru_reference(GruKind kind, const torch::Tensor& x, const torch::Tensor& lengths,
                        const torch::Tensor& attention, const torch::Tensor& h0,
                        const torch::Tensor& weight_ih, const torch::Tensor& weight_hh,
                        const torch::Tensor& bias_ih, const torch::Tensor& bias_hh) {
  check_inputs("gru_reference", kind, x, lengths, attention, h0, weight_ih, weight_hh, bias_ih,
               bias_hh);
  const int64_t B = x.size(0), T = x.size(1), H = weight_hh.size(1);
  auto len = lengths.to(x.device(), torch::kLong);
  auto h = h0.defined() ? h0 : torch::zeros({B, H}, x.options());
  std::vector<torch::Tensor> outputs;
  outputs.reserve(T);
  for (int64_t t = 0; t < T; ++t) {
    auto x_t = x.select(1, t);
    torch::Tensor a_t;
    if (kind != GruKind::kGru) a_t = attention.select(1, t).unsqueeze(1);
    if (kind == GruKind::kAigru) x_t = a_t * x_t;
    auto gi = torch::linear(x_t, weight_ih, bias_ih).chunk(3, 1);
    auto gh = torch::linear(h, weight_hh, bias_hh).chunk(3, 1);
    auto r = torch::sigmoid(gi[0] + gh[0]);
    auto z = torch::sigmoid(gi[1] + gh[1]);
    auto n = torch::tanh(gi[2] + r * gh[2]);
    torch::Tensor h_new;
    switch (kind) {
      case GruKind::kGru:
      case GruKind::kAigru: h_new = (1 - z) * n + z * h; break;
      case GruKind::kAgru: h_new = (1 - a_t) * h + a_t * n; break;
      case GruKind::kAugru: {
        auto u = a_t * (1 - z);  // DIEN's update gate weighs the new candidate: u = 1 - z
        h_new = (1 - u) * h + u * n;
        break;
      }
    }
    auto m = (len > t).to(x.scalar_type()).unsqueeze(1);
    h = m * h_new + (1 - m) * h;
    outputs.push_back(m * h);
  }
  return {torch::stack(outputs, 1), h};
}

GruOutput gru_fused(GruKind kind, const torch::Tensor& x, const torch::Tensor& lengths,
                    const torch::Tensor& attention, const torch::Tensor& h0,
                    const torch::Tensor& weight_ih, const torch::Tensor& weight_hh,
                    const torch::Tensor& bias_ih, const torch::Tensor& bias_hh) {
  check_inputs("gru_fused", kind, x, lengths, attention, h0, weight_ih, weight_hh, bias_ih,
               bias_hh);
  c10::optional<torch::Tensor> a, h;
  if (attention.defined()) a = attention;
  if (h0.defined()) h = h0;
  auto out = GruFusedFunction::apply(static_cast<int64_t>(kind), x, lengths, a, h, weight_ih,
                                     weight_hh, bias_ih, bias_hh);
  return {out[0], out[1]};
}

PackedLayout PackedLayout::from_lengths(const torch::Tensor& lengths, int64_t T) {
  TORCH_CHECK(lengths.dim() == 1 && lengths.device().is_cpu(),
              "PackedLayout: lengths must be a 1-D CPU tensor, got ", lengths.sizes());
  auto len_t = lengths.to(torch::kLong).contiguous();
  const int64_t* len = len_t.data_ptr<int64_t>();
  const int64_t B = len_t.numel();
  PackedLayout p;
  p.batch = B;
  p.max_len = T;
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK(len[b] >= 1 && len[b] <= T, "PackedLayout: lengths must lie in [1, T] = [1, ", T,
                "], got ", len[b], " at row ", b);
  p.perm.resize(B);
  for (int64_t b = 0; b < B; ++b) p.perm[b] = b;
  std::stable_sort(p.perm.begin(), p.perm.end(),
                   [len](int64_t a, int64_t b) { return len[a] > len[b]; });
  const int64_t steps = B > 0 ? len[p.perm[0]] : 0;
  p.bt.assign(steps, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < len[b]; ++t) ++p.bt[t];
  p.off.assign(steps + 1, 0);
  for (int64_t t = 0; t < steps; ++t) p.off[t + 1] = p.off[t] + p.bt[t];
  const int64_t N = p.off[steps];
  int64_t pairs = N - B;  // every step but each sequence's first has a predecessor
  p.index = torch::empty({N}, torch::kLong);
  p.row = torch::empty({N}, torch::kLong);
  p.final_index = torch::empty({B}, torch::kLong);
  p.pair_first = torch::empty({pairs}, torch::kLong);
  p.pair_next = torch::empty({pairs}, torch::kLong);
  int64_t* ix = p.index.data_ptr<int64_t>();
  int64_t* rw = p.row.data_ptr<int64_t>();
  int64_t* fi = p.final_index.data_ptr<int64_t>();
  int64_t* pf = p.pair_first.data_ptr<int64_t>();
  int64_t* pn = p.pair_next.data_ptr<int64_t>();
  int64_t k = 0;
  for (int64_t t = 0; t < steps; ++t)
    for (int64_t j = 0; j < p.bt[t]; ++j) {
      const int64_t b = p.perm[j], r = p.off[t] + j;
      ix[r] = b * T + t;
      rw[r] = b;
      if (len[b] == t + 1) fi[b] = r;
      if (t + 1 < steps && j < p.bt[t + 1]) {
        pf[k] = r;
        pn[k] = p.off[t + 1] + j;
        ++k;
      }
    }
  return p;
}

void set_gru_recurrence_threads(bool on) { g_recurrence_threads = on; }
bool gru_recurrence_threads_enabled() { return g_recurrence_threads.load(); }

GruOutput gru_packed_sequences(GruKind kind, const PackedLayout& layout, const torch::Tensor& x,
                               const torch::Tensor& attention, const torch::Tensor& h0,
                               const torch::Tensor& weight_ih, const torch::Tensor& weight_hh,
                               const torch::Tensor& bias_ih, const torch::Tensor& bias_hh) {
  const int64_t N = layout.size();
  TORCH_CHECK(x.dim() == 2 && x.size(0) == N && x.device().is_cpu(),
              "gru_packed_sequences: x must be the packed [N, I] = [", N, ", I] CPU tensor, got ",
              x.sizes());
  const char* who = "gru_packed_sequences";
  const int64_t H = check_weights(who, x, x.size(1), weight_ih, weight_hh, bias_ih, bias_hh);
  check_attention(who, kind, attention, x, {N}, "packed [N]");
  check_h0(who, h0, x, layout.batch, H);
  c10::optional<torch::Tensor> a, h;
  if (attention.defined()) a = attention.contiguous();
  if (h0.defined()) h = h0;
  auto out = GruPackedFunction::apply(static_cast<int64_t>(kind), &layout, x.contiguous(), a, h,
                                      weight_ih, weight_hh, bias_ih, bias_hh);
  return {out[0], out[1]};
}

GruOutput gru_packed(GruKind kind, const torch::Tensor& x, const torch::Tensor& lengths,
                     const torch::Tensor& attention, const torch::Tensor& h0,
                     const torch::Tensor& weight_ih, const torch::Tensor& weight_hh,
                     const torch::Tensor& bias_ih, const torch::Tensor& bias_hh) {
  check_inputs("gru_packed", kind, x, lengths, attention, h0, weight_ih, weight_hh, bias_ih,
               bias_hh);
  TORCH_CHECK(x.device().is_cpu() && lengths.device().is_cpu(),
              "gru_packed: runs on the CPU (x and lengths); use gru_fused on an accelerator");
  const int64_t B = x.size(0), T = x.size(1), I = x.size(2);
  const auto layout = PackedLayout::from_lengths(lengths, T);
  auto x_p = x.reshape({B * T, I}).index_select(0, layout.index);
  torch::Tensor a_p;
  if (attention.defined()) a_p = attention.reshape({B * T}).index_select(0, layout.index);
  auto out = gru_packed_sequences(kind, layout, x_p, a_p, h0, weight_ih, weight_hh, bias_ih,
                                  bias_hh);
  const int64_t H = weight_hh.size(1);
  auto outputs = torch::zeros({B * T, H}, x.options()).index_copy(0, layout.index, out.outputs);
  return {outputs.view({B, T, H}), out.final_state};
}

GruLayerImpl::GruLayerImpl(GruLayerOptions options) : options_(options) {
  TORCH_CHECK(options_.input_size() > 0, "GruLayer: input_size must be positive, got ",
              options_.input_size());
  TORCH_CHECK(options_.hidden_size() > 0, "GruLayer: hidden_size must be positive, got ",
              options_.hidden_size());
  const int64_t I = options_.input_size(), H = options_.hidden_size();
  weight_ih = register_parameter("weight_ih", torch::empty({3 * H, I}));
  weight_hh = register_parameter("weight_hh", torch::empty({3 * H, H}));
  bias_ih = register_parameter("bias_ih", torch::empty({3 * H}));
  bias_hh = register_parameter("bias_hh", torch::empty({3 * H}));
  reset_parameters();
}

void GruLayerImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const double k = 1.0 / std::sqrt(static_cast<double>(options_.hidden_size()));
  for (auto& p : parameters()) p.uniform_(-k, k);
}

GruOutput GruLayerImpl::forward(const torch::Tensor& x, const torch::Tensor& lengths,
                                const torch::Tensor& attention, const torch::Tensor& h0) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == options_.input_size(),
              "GruLayer: x must be [B, T, input_size] with input_size = ", options_.input_size(),
              ", got ", x.sizes());
  const auto run = !options_.fused() ? gru_reference
                   : options_.packed() && x.device().is_cpu() && lengths.device().is_cpu()
                       ? gru_packed
                       : gru_fused;
  return run(options_.kind(), x, lengths, attention, h0, weight_ih, weight_hh, bias_ih, bias_hh);
}

GruOutput GruLayerImpl::forward_packed(const PackedLayout& layout, const torch::Tensor& x,
                                       const torch::Tensor& attention, const torch::Tensor& h0) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options_.input_size(),
              "GruLayer: packed x must be [N, input_size] with input_size = ",
              options_.input_size(), ", got ", x.sizes());
  return gru_packed_sequences(options_.kind(), layout, x, attention, h0, weight_ih, weight_hh,
                              bias_ih, bias_hh);
}

double time_gru_ms(bool fused, GruKind kind, int64_t B, int64_t T, int64_t I, int64_t H, int iters,
                   torch::Device device) {
  TORCH_CHECK(iters >= 1, "time_gru_ms: iters must be >= 1, got ", iters);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  const double k = 1.0 / std::sqrt(static_cast<double>(H));
  auto x = torch::randn({B, T, I}, opts).requires_grad_();
  auto lengths = torch::full({B}, T, torch::kLong);
  torch::Tensor attention;
  if (kind != GruKind::kGru) attention = torch::rand({B, T}, opts).requires_grad_();
  auto w_ih = torch::empty({3 * H, I}, opts).uniform_(-k, k).requires_grad_();
  auto w_hh = torch::empty({3 * H, H}, opts).uniform_(-k, k).requires_grad_();
  auto b_ih = torch::empty({3 * H}, opts).uniform_(-k, k).requires_grad_();
  auto b_hh = torch::empty({3 * H}, opts).uniform_(-k, k).requires_grad_();
  std::vector<torch::Tensor> leaves{x, w_ih, w_hh, b_ih, b_hh};
  if (attention.defined()) leaves.push_back(attention);

  auto run_once = [&] {
    const auto f = fused ? gru_fused : gru_reference;
    auto out = f(kind, x, lengths, attention, {}, w_ih, w_hh, b_ih, b_hh);
    (out.outputs.sum() + out.final_state.sum()).backward();
    // Accelerators run asynchronously: reading a gradient waits for the whole backward.
    if (!device.is_cpu()) (void)w_hh.grad().sum().item<double>();
    for (auto& p : leaves) p.mutable_grad() = torch::Tensor();
  };
  run_once();
  run_once();
  std::vector<double> ms;
  ms.reserve(iters);
  for (int i = 0; i < iters; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run_once();
    const auto stop = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

}  // namespace recsys::models

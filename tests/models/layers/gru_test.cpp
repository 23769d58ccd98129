#include "models/layers/gru.h"

#include <cmath>
#include <iostream>
#include <vector>

#include <ATen/Parallel.h>

#include "support.h"

using recsys::models::GruKind;
using recsys::models::GruOutput;
using recsys::testing::require_close;

namespace {

const std::vector<GruKind> kAllKinds{GruKind::kGru, GruKind::kAigru, GruKind::kAgru,
                                     GruKind::kAugru};

struct GruCase {
  torch::Tensor x, lengths, attention, h0, w_ih, w_hh, b_ih, b_hh;

  /// The differentiable inputs that are defined, in a fixed order.
  std::vector<torch::Tensor> leaves() const {
    std::vector<torch::Tensor> out;
    for (const auto& t : {x, attention, h0, w_ih, w_hh, b_ih, b_hh})
      if (t.defined()) out.push_back(t);
    return out;
  }
};

// Weights in (-0.8, 0.8) so that gates are neither saturated nor trivially linear.
GruCase make_case(GruKind kind, int64_t B, int64_t T, int64_t I, int64_t H,
                  std::vector<int64_t> lengths, bool with_h0,
                  torch::Dtype dtype = torch::kFloat64) {
  auto o = torch::TensorOptions().dtype(dtype);
  auto u = [&](std::vector<int64_t> shape) {
    return ((torch::rand(shape, o) * 2 - 1) * 0.8).requires_grad_();
  };
  GruCase c;
  c.x = torch::randn({B, T, I}, o).requires_grad_();
  c.lengths = torch::tensor(lengths, torch::kLong);
  if (kind != GruKind::kGru) c.attention = torch::rand({B, T}, o).requires_grad_();
  if (with_h0) c.h0 = (torch::randn({B, H}, o) * 0.5).requires_grad_();
  c.w_ih = u({3 * H, I});
  c.w_hh = u({3 * H, H});
  c.b_ih = u({3 * H});
  c.b_hh = u({3 * H});
  return c;
}

// path: 0 gru_reference, 1 gru_fused, 2 gru_packed (a bool picks the first two).
GruOutput run(int path, GruKind kind, const GruCase& c) {
  const auto f = path == 2   ? recsys::models::gru_packed
                 : path == 1 ? recsys::models::gru_fused
                             : recsys::models::gru_reference;
  return f(kind, c.x, c.lengths, c.attention, c.h0, c.w_ih, c.w_hh, c.b_ih, c.b_hh);
}

// DIEN's equations written out with scalars, independent of both implementations.
GruOutput plain_gru(GruKind kind, const GruCase& c) {
  const int64_t B = c.x.size(0), T = c.x.size(1), I = c.x.size(2), H = c.w_hh.size(1);
  auto x = c.x.detach().to(torch::kFloat64).contiguous();
  auto wi = c.w_ih.detach().to(torch::kFloat64).contiguous();
  auto wh = c.w_hh.detach().to(torch::kFloat64).contiguous();
  auto bi = c.b_ih.detach().to(torch::kFloat64).contiguous();
  auto bh = c.b_hh.detach().to(torch::kFloat64).contiguous();
  auto X = x.accessor<double, 3>();
  auto Wi = wi.accessor<double, 2>();
  auto Wh = wh.accessor<double, 2>();
  auto Bi = bi.accessor<double, 1>();
  auto Bh = bh.accessor<double, 1>();
  auto out = torch::zeros({B, T, H}, torch::kFloat64);
  auto fin = torch::zeros({B, H}, torch::kFloat64);
  auto O = out.accessor<double, 3>();
  auto F = fin.accessor<double, 2>();
  auto sigmoid = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> h(H, 0.0);
    if (c.h0.defined())
      for (int64_t j = 0; j < H; ++j) h[j] = c.h0[b][j].item<double>();
    const auto len = c.lengths[b].item<int64_t>();
    for (int64_t t = 0; t < len; ++t) {
      const double a = c.attention.defined() ? c.attention[b][t].item<double>() : 1.0;
      std::vector<double> xt(I);
      for (int64_t i = 0; i < I; ++i) xt[i] = X[b][t][i] * (kind == GruKind::kAigru ? a : 1.0);
      std::vector<double> h_new(H);
      for (int64_t j = 0; j < H; ++j) {
        double gi[3], gh[3];
        for (int g = 0; g < 3; ++g) {
          gi[g] = Bi[g * H + j];
          gh[g] = Bh[g * H + j];
          for (int64_t i = 0; i < I; ++i) gi[g] += Wi[g * H + j][i] * xt[i];
          for (int64_t k = 0; k < H; ++k) gh[g] += Wh[g * H + j][k] * h[k];
        }
        const double r = sigmoid(gi[0] + gh[0]);
        const double z = sigmoid(gi[1] + gh[1]);
        const double n = std::tanh(gi[2] + r * gh[2]);
        switch (kind) {
          case GruKind::kGru:
          case GruKind::kAigru: h_new[j] = (1 - z) * n + z * h[j]; break;
          case GruKind::kAgru: h_new[j] = (1 - a) * h[j] + a * n; break;
          case GruKind::kAugru: {
            const double u = a * (1 - z);  // DIEN's u_t = 1 - z in PyTorch's convention
            h_new[j] = (1 - u) * h[j] + u * n;
            break;
          }
        }
      }
      h = h_new;
      for (int64_t j = 0; j < H; ++j) O[b][t][j] = h[j];
    }
    for (int64_t j = 0; j < H; ++j) F[b][j] = h[j];
  }
  return {out, fin};
}

// loss = <outputs, g_out> + <final_state, g_final>; returns d loss / d leaves.
std::vector<torch::Tensor> grads_of(int fused, GruKind kind, const GruCase& c,
                                    const torch::Tensor& g_out, const torch::Tensor& g_final) {
  auto out = run(fused, kind, c);
  auto loss = (out.outputs * g_out).sum() + (out.final_state * g_final).sum();
  return torch::autograd::grad({loss}, c.leaves());
}

}  // namespace

TEST_CASE("parse_gru_kind accepts the four names and lists them otherwise", "[gru]") {
  using recsys::models::parse_gru_kind;
  REQUIRE(parse_gru_kind("gru") == GruKind::kGru);
  REQUIRE(parse_gru_kind("aigru") == GruKind::kAigru);
  REQUIRE(parse_gru_kind("agru") == GruKind::kAgru);
  REQUIRE(parse_gru_kind("augru") == GruKind::kAugru);
  for (auto kind : kAllKinds)
    REQUIRE(parse_gru_kind(recsys::models::gru_kind_name(kind)) == kind);
  REQUIRE_THROWS_WITH(parse_gru_kind("lstm"),
                      Catch::Contains("lstm") && Catch::Contains("gru, aigru, agru, augru"));
}

TEST_CASE("gru_reference matches DIEN's equations written with scalars", "[gru]") {
  for (auto kind : kAllKinds) {
    for (bool with_h0 : {false, true}) {
      CAPTURE(recsys::models::gru_kind_name(kind), with_h0);
      recsys::testing::seed(1);
      // B=2, T=3, I=2, H=2; the second sequence has one padded step.
      auto c = make_case(kind, 2, 3, 2, 2, {3, 2}, with_h0);
      auto expected = plain_gru(kind, c);
      auto ref = run(/*fused=*/false, kind, c);
      require_close(ref.outputs, expected.outputs, 0, 1e-12);
      require_close(ref.final_state, expected.final_state, 0, 1e-12);
      // Padded step: zero output, final state is the state after the last valid step.
      REQUIRE(ref.outputs[1][2].abs().max().item<double>() == 0.0);
      require_close(ref.final_state[1], ref.outputs[1][1], 0, 0);
      auto fused = run(/*fused=*/true, kind, c);
      require_close(fused.outputs, expected.outputs, 0, 1e-12);
      require_close(fused.final_state, expected.final_state, 0, 1e-12);
    }
  }
}

TEST_CASE("gru_fused and gru_packed match gru_reference in values and every gradient", "[gru]") {
  for (int path : {1, 2}) {
  for (auto kind : kAllKinds) {
    for (bool with_h0 : {true, false}) {
      CAPTURE(path, recsys::models::gru_kind_name(kind), with_h0);
      recsys::testing::seed(7);
      const int64_t B = 5, T = 6, I = 3, H = 4;
      auto c = make_case(kind, B, T, I, H, {6, 2, 1, 4, 5}, with_h0);
      auto g_out = torch::randn({B, T, H}, torch::kFloat64);
      auto g_final = torch::randn({B, H}, torch::kFloat64);
      auto ref = run(false, kind, c);
      auto fused = run(path, kind, c);
      require_close(fused.outputs, ref.outputs, 0, 1e-10);
      require_close(fused.final_state, ref.final_state, 0, 1e-10);
      auto g_ref = grads_of(false, kind, c, g_out, g_final);
      auto g_fused = grads_of(path, kind, c, g_out, g_final);
      REQUIRE(g_ref.size() == g_fused.size());
      REQUIRE(g_ref.size() == 5 + (c.attention.defined() ? 1u : 0u) + (with_h0 ? 1u : 0u));
      for (size_t i = 0; i < g_ref.size(); ++i) {
        CAPTURE(i);
        REQUIRE(g_fused[i].defined());
        require_close(g_fused[i], g_ref[i], 0, 1e-10);
      }
      // Only one of the two outputs used.
      auto only_final = [&](int f) {
        auto out = run(f, kind, c);
        return torch::autograd::grad({(out.final_state * g_final).sum()}, c.leaves());
      };
      auto a = only_final(0), b = only_final(path);
      for (size_t i = 0; i < a.size(); ++i) require_close(b[i], a[i], 0, 1e-10);
      // Only the outputs used (no gradient reaches the final state).
      auto only_outputs = [&](int f) {
        auto out = run(f, kind, c);
        return torch::autograd::grad({(out.outputs * g_out).sum()}, c.leaves());
      };
      auto oa = only_outputs(0), ob = only_outputs(path);
      for (size_t i = 0; i < oa.size(); ++i) require_close(ob[i], oa[i], 0, 1e-10);
    }
  }
  }
}

TEST_CASE("gru_packed matches gru_reference in float32 on DIEN-sized batches", "[gru]") {
  for (auto kind : {GruKind::kGru, GruKind::kAugru}) {
    CAPTURE(recsys::models::gru_kind_name(kind));
    recsys::testing::seed(21);
    const int64_t B = 64, T = 50, I = 36, H = 36;
    auto lengths = (torch::randint(5, 51, {B}, torch::kLong));
    std::vector<int64_t> len(lengths.data_ptr<int64_t>(), lengths.data_ptr<int64_t>() + B);
    auto c = make_case(kind, B, T, I, H, len, /*with_h0=*/false, torch::kFloat32);
    auto g_out = torch::randn({B, T, H});
    auto g_final = torch::randn({B, H});
    auto ref = run(0, kind, c), packed = run(2, kind, c);
    require_close(packed.outputs, ref.outputs.to(torch::kFloat64), 1e-4, 1e-5);
    require_close(packed.final_state, ref.final_state.to(torch::kFloat64), 1e-4, 1e-5);
    auto g_ref = grads_of(0, kind, c, g_out, g_final);
    auto g_packed = grads_of(2, kind, c, g_out, g_final);
    for (size_t i = 0; i < g_ref.size(); ++i) {
      CAPTURE(i);
      const double scale = g_ref[i].abs().max().item<double>();
      require_close(g_packed[i], g_ref[i].to(torch::kFloat64), 1e-3, 1e-4 * scale);
    }
  }
}

TEST_CASE("gru_packed's recurrence split across threads equals the reference in float64",
          "[gru]") {
  // Enough sequences and steps for the packed recurrences to take both threads (ranges of
  // sorted sequences balanced by step count), with lengths from 1 to T.
  const int threads = at::get_num_threads();
  for (auto kind : kAllKinds) {
    for (bool with_h0 : {true, false}) {
      CAPTURE(recsys::models::gru_kind_name(kind), with_h0);
      recsys::testing::seed(31);
      const int64_t B = 23, T = 30, I = 5, H = 6;
      auto lengths = torch::randint(1, T + 1, {B}, torch::kLong);
      lengths[3] = T;
      lengths[7] = 1;
      std::vector<int64_t> len(lengths.data_ptr<int64_t>(), lengths.data_ptr<int64_t>() + B);
      REQUIRE(lengths.sum().item<int64_t>() >= 256);
      auto c = make_case(kind, B, T, I, H, len, with_h0);
      auto g_out = torch::randn({B, T, H}, torch::kFloat64);
      auto g_final = torch::randn({B, H}, torch::kFloat64);
      at::set_num_threads(1);
      auto ref = run(0, kind, c);
      auto g_ref = grads_of(0, kind, c, g_out, g_final);
      auto one = grads_of(2, kind, c, g_out, g_final);
      at::set_num_threads(2);
      auto packed = run(2, kind, c);
      auto two = grads_of(2, kind, c, g_out, g_final);
      at::set_num_threads(threads);
      require_close(packed.outputs, ref.outputs, 0, 1e-10);
      require_close(packed.final_state, ref.final_state, 0, 1e-10);
      REQUIRE(two.size() == g_ref.size());
      for (size_t i = 0; i < g_ref.size(); ++i) {
        CAPTURE(i);
        require_close(two[i], g_ref[i], 0, 1e-10);
        require_close(two[i], one[i], 0, 1e-12);
      }
    }
  }
}

TEST_CASE("gru_fused and gru_packed backward agree with central finite differences", "[gru]") {
  for (int path : {1, 2}) {
  for (auto kind : kAllKinds) {
    CAPTURE(path, recsys::models::gru_kind_name(kind));
    recsys::testing::seed(3);
    const int64_t B = 2, T = 3, I = 2, H = 3;
    auto c = make_case(kind, B, T, I, H, {3, 2}, /*with_h0=*/true);
    auto g_out = torch::randn({B, T, H}, torch::kFloat64);
    auto g_final = torch::randn({B, H}, torch::kFloat64);
    auto analytic = grads_of(path, kind, c, g_out, g_final);
    auto loss = [&] {
      torch::NoGradGuard no_grad;
      auto out = run(path, kind, c);
      return ((out.outputs * g_out).sum() + (out.final_state * g_final).sum()).item<double>();
    };
    const double eps = 1e-6;
    auto leaves = c.leaves();
    for (size_t l = 0; l < leaves.size(); ++l) {
      auto flat = leaves[l].detach().view({-1});  // shares storage with the leaf
      auto numeric = torch::zeros_like(flat);
      for (int64_t k = 0; k < flat.numel(); ++k) {
        const double v = flat[k].item<double>();
        flat[k].fill_(v + eps);
        const double up = loss();
        flat[k].fill_(v - eps);
        const double down = loss();
        flat[k].fill_(v);
        numeric[k] = (up - down) / (2 * eps);
      }
      CAPTURE(l);
      require_close(analytic[l].reshape({-1}), numeric, 1e-6, 1e-6);
    }
  }
  }
}

TEST_CASE("padding to a longer T changes nothing on valid steps", "[gru]") {
  for (auto kind : kAllKinds) {
    for (int fused : {2, 1, 0}) {
      CAPTURE(recsys::models::gru_kind_name(kind), fused);
      recsys::testing::seed(11);
      const int64_t B = 3, T = 4, I = 3, H = 5, extra = 3;
      auto c = make_case(kind, B, T, I, H, {4, 1, 3}, /*with_h0=*/true);
      // Garbage (not zeros) in the padding, so a leak would show.
      GruCase p = c;
      p.x = torch::cat({c.x.detach(), torch::randn({B, extra, I}, torch::kFloat64) * 5}, 1);
      if (c.attention.defined())
        p.attention =
            torch::cat({c.attention.detach(), torch::rand({B, extra}, torch::kFloat64)}, 1);
      auto short_out = run(fused, kind, c);
      auto long_out = run(fused, kind, p);
      require_close(long_out.outputs.narrow(1, 0, T), short_out.outputs, 0, 1e-13);
      REQUIRE(long_out.outputs.narrow(1, T, extra).abs().max().item<double>() == 0.0);
      require_close(long_out.final_state, short_out.final_state, 0, 1e-13);
    }
  }
}

TEST_CASE("AUGRU with attention 1 is GRU; AGRU and AUGRU with attention 0 keep the state",
          "[gru]") {
  for (int fused : {2, 1, 0}) {
    CAPTURE(fused);
    recsys::testing::seed(5);
    const int64_t B = 3, T = 4, I = 2, H = 3;
    auto c = make_case(GruKind::kAugru, B, T, I, H, {4, 2, 3}, /*with_h0=*/true);
    GruCase ones = c;
    ones.attention = torch::ones({B, T}, torch::kFloat64);
    GruCase plain = c;
    plain.attention = torch::Tensor();
    auto augru = run(fused, GruKind::kAugru, ones);
    auto gru = run(fused, GruKind::kGru, plain);
    require_close(augru.outputs, gru.outputs, 0, 1e-14);
    require_close(augru.final_state, gru.final_state, 0, 1e-14);

    GruCase zeros = c;
    zeros.attention = torch::zeros({B, T}, torch::kFloat64);
    auto valid = (torch::arange(T).unsqueeze(0) < c.lengths.unsqueeze(1))
                     .to(torch::kFloat64)
                     .unsqueeze(2);
    for (auto kind : {GruKind::kAgru, GruKind::kAugru}) {
      CAPTURE(recsys::models::gru_kind_name(kind));
      auto out = run(fused, kind, zeros);
      require_close(out.final_state, c.h0, 0, 0);
      require_close(out.outputs, c.h0.unsqueeze(1) * valid, 0, 0);
    }
  }
}

TEST_CASE("GRU inputs out of range are rejected with a message that says what to fix", "[gru]") {
  recsys::testing::seed(2);
  auto c = make_case(GruKind::kAugru, 2, 3, 2, 2, {3, 2}, /*with_h0=*/false);
  for (int fused : {2, 1, 0}) {
    CAPTURE(fused);
    GruCase bad = c;
    bad.lengths = torch::tensor({3, 0}, torch::kLong);
    REQUIRE_THROWS_WITH(run(fused, GruKind::kAugru, bad),
                        Catch::Contains("lengths must lie in [1, T]"));
    bad.lengths = torch::tensor({4, 2}, torch::kLong);
    REQUIRE_THROWS_WITH(run(fused, GruKind::kAugru, bad),
                        Catch::Contains("lengths must lie in [1, T]"));
    bad.lengths = torch::tensor({3, 2, 1}, torch::kLong);
    REQUIRE_THROWS_WITH(run(fused, GruKind::kAugru, bad), Catch::Contains("lengths must be a 1-D"));
    REQUIRE_THROWS_WITH(run(fused, GruKind::kGru, c), Catch::Contains("takes no attention"));
    GruCase no_attention = c;
    no_attention.attention = torch::Tensor();
    REQUIRE_THROWS_WITH(run(fused, GruKind::kAgru, no_attention),
                        Catch::Contains("needs attention scores"));
    GruCase wrong_h0 = c;
    wrong_h0.h0 = torch::zeros({2, 3}, torch::kFloat64);
    REQUIRE_THROWS_WITH(run(fused, GruKind::kAugru, wrong_h0),
                        Catch::Contains("h0 must be [B, H]"));
  }
  REQUIRE_THROWS_WITH(recsys::models::GruLayer(recsys::models::GruLayerOptions(0, 4)),
                      Catch::Contains("input_size must be positive"));
  // The packed entry point checks h0 like the padded ones.
  auto layout = recsys::models::PackedLayout::from_lengths(c.lengths, 3);
  auto x_p = c.x.detach().reshape({6, 2}).index_select(0, layout.index);
  auto a_p = c.attention.detach().reshape({6}).index_select(0, layout.index);
  REQUIRE_THROWS_WITH(recsys::models::gru_packed_sequences(GruKind::kAugru, layout, x_p, a_p,
                                                           torch::zeros({2, 2}, torch::kFloat32),
                                                           c.w_ih, c.w_hh, c.b_ih, c.b_hh),
                      Catch::Contains("h0 has dtype"));
  REQUIRE_THROWS_WITH(recsys::models::PackedLayout::from_lengths(torch::tensor({3L, 0L}), 3),
                      Catch::Contains("lengths must lie in [1, T]"));
}

TEST_CASE("GruLayer holds PyTorch-shaped parameters and both paths agree", "[gru]") {
  using namespace recsys::models;
  recsys::testing::seed(9);
  const int64_t B = 4, T = 5, I = 3, H = 6;
  GruLayer layer(GruLayerOptions(I, H).kind(GruKind::kAugru));
  auto params = layer->named_parameters();
  REQUIRE(params.size() == 4);
  REQUIRE(params["weight_ih"].sizes() == torch::IntArrayRef{3 * H, I});
  REQUIRE(params["weight_hh"].sizes() == torch::IntArrayRef{3 * H, H});
  REQUIRE(params["bias_ih"].sizes() == torch::IntArrayRef{3 * H});
  REQUIRE(params["bias_hh"].sizes() == torch::IntArrayRef{3 * H});
  const double k = 1.0 / std::sqrt(static_cast<double>(H));
  for (const auto& p : layer->parameters()) REQUIRE(p.abs().max().item<double>() <= k);

  auto x = torch::randn({B, T, I});
  auto lengths = torch::tensor({5, 3, 1, 4}, torch::kLong);
  auto a = torch::rand({B, T});
  auto fused = layer->forward(x, lengths, a);
  REQUIRE(fused.outputs.sizes() == torch::IntArrayRef{B, T, H});
  REQUIRE(fused.final_state.sizes() == torch::IntArrayRef{B, H});
  REQUIRE(fused.outputs.is_contiguous());
  GruLayer reference(GruLayerOptions(I, H).kind(GruKind::kAugru).fused(false));
  torch::NoGradGuard no_grad;
  for (auto& p : reference->named_parameters()) p.value().copy_(params[p.key()]);
  auto ref = reference->forward(x, lengths, a);
  require_close(fused.outputs, ref.outputs, 1e-5, 1e-6);
  require_close(fused.final_state, ref.final_state, 1e-5, 1e-6);

  layer->to(torch::kFloat64);
  auto f64 = layer->forward(x.to(torch::kFloat64), lengths, a.to(torch::kFloat64));
  REQUIRE(f64.outputs.scalar_type() == torch::kFloat64);
  require_close(f64.outputs, ref.outputs, 1e-5, 1e-6);
  REQUIRE_THROWS_WITH(layer->forward(torch::randn({B, T, I + 1}, torch::kFloat64), lengths, a),
                      Catch::Contains("input_size"));
}

// Not run by default: `recsys_tests "[.gru-timing]"`.
TEST_CASE("GRU forward+backward timing, fused vs reference", "[.gru-timing]") {
  torch::set_num_threads(2);
  for (auto kind : kAllKinds) {
    const double ref = recsys::models::time_gru_ms(false, kind, 128, 50, 36, 36, 20);
    const double fused = recsys::models::time_gru_ms(true, kind, 128, 50, 36, 36, 20);
    std::cout << recsys::models::gru_kind_name(kind) << " B=128 T=50 I=36 H=36 fwd+bwd median ms: "
              << "reference " << ref << ", fused " << fused << ", speedup " << ref / fused << "\n";
  }
}

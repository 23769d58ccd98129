#include "framework/train/optimizer.h"

#include "framework/util/checksum.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>

#include "framework/util/allocator.h"
#include "framework/util/id_groups.h"
#include "framework/util/simd.h"

namespace recsys::train {

OptimizerOptions OptimizerOptions::from_config(const config::Reader& r) {
  OptimizerOptions o;
  std::string type = r.choice("type", "adam", {"adam", "adagrad", "sgd"});
  o.kind = type == "adam" ? OptimizerKind::kAdam
           : type == "adagrad" ? OptimizerKind::kAdagrad : OptimizerKind::kSgd;
  o.lr = r.get<double>("lr", type == "adam" ? 1e-3 : (type == "adagrad" ? 0.05 : 0.1));
  o.beta1 = r.get<double>("beta1", o.beta1);
  o.beta2 = r.get<double>("beta2", o.beta2);
  o.eps = r.get<double>("eps", o.eps);
  o.initial_accumulator = r.get<double>("initial_accumulator", o.initial_accumulator);
  o.momentum = r.get<double>("momentum", o.momentum);
  o.weight_decay = r.get<double>("weight_decay", o.weight_decay);
  o.grad_clip = r.get<double>("grad_clip", o.grad_clip);
  if (!(o.lr > 0)) r.fail("lr", "must be positive");
  if (o.beta1 < 0 || o.beta1 >= 1) r.fail("beta1", "must be in [0, 1)");
  if (o.beta2 < 0 || o.beta2 >= 1) r.fail("beta2", "must be in [0, 1)");
  if (!(o.eps > 0)) r.fail("eps", "must be positive");
  if (o.weight_decay < 0) r.fail("weight_decay", "must be >= 0");
  if (o.grad_clip < 0) r.fail("grad_clip", "must be >= 0 (0 disables clipping)");
  if (o.momentum < 0 || o.momentum >= 1) r.fail("momentum", "must be in [0, 1)");
  if (o.initial_accumulator < 0) r.fail("initial_accumulator", "must be >= 0 (Adagrad divides by its square root)");
  return o;
}

namespace {
// Parameters from this size on (embedding tables) get their memory and their state's in huge
// pages (util::prefer_huge_pages): their rows are read and written at random.
constexpr int64_t kHugePageBytes = int64_t{4} << 20;
}  // namespace

Optimizer::Optimizer(std::vector<torch::Tensor> params, OptimizerOptions options)
    : params_(std::move(params)), options_(options), dense_seen_(params_.size(), 0) {
  for (auto& p : params_) {
    torch::Tensor s1, s2;
    switch (options_.kind) {
      case OptimizerKind::kAdam:
        s1 = torch::zeros_like(p);
        s2 = torch::zeros_like(p);
        break;
      case OptimizerKind::kAdagrad:
        s1 = torch::full_like(p, options_.initial_accumulator);
        break;
      case OptimizerKind::kSgd:
        if (options_.momentum > 0) s1 = torch::zeros_like(p);
        break;
    }
    state1_.push_back(s1);
    state2_.push_back(s2);
    if (p.numel() * p.element_size() >= kHugePageBytes)
      for (const auto& t : {p, s1, s2}) util::prefer_huge_pages(t);
  }
}

void Optimizer::zero_grad() {
  for (size_t i = 0; i < params_.size(); ++i) {
    auto& g = params_[i].mutable_grad();
    if (!g.defined()) continue;
    // Dropped, not zeroed: the next backward's gradient then becomes the parameter's gradient
    // as it is (AccumulateGrad takes it over) instead of being added to a zeroed tensor. A dense
    // parameter that had a gradient and gets none this step still steps with a zero gradient
    // (step() restores one), as if it had been zeroed.
    if (!g.is_sparse()) dense_seen_[i] = 1;
    g = torch::Tensor();
  }
}

void Optimizer::step() {
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < dense_seen_.size(); ++i)
    if (dense_seen_[i] && !params_[i].grad().defined())
      params_[i].mutable_grad() = torch::zeros_like(params_[i]);
  ++steps_;
  bool fused = options_.fused;
  for (size_t i = 0; fused && i < params_.size(); ++i)
    if (params_[i].grad().defined() && !fusable(i)) fused = false;
  if (fused) {
    try {
      step_fused();  // throws before updating anything (bad rows are found while grouping)
    } catch (...) {
      --steps_;
      throw;
    }
  } else
    step_plain();
}

void Optimizer::step_plain() {
  std::vector<torch::Tensor> grads(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const auto& g = params_[i].grad();
    if (!g.defined()) continue;
    grads[i] = g.is_sparse() ? g.coalesce() : g;
  }
  if (options_.grad_clip > 0) {
    torch::Tensor total;
    for (auto& g : grads) {
      if (!g.defined()) continue;
      auto sq = (g.is_sparse() ? g._values() : g).pow(2).sum();
      total = total.defined() ? total + sq : sq;
    }
    if (total.defined()) {
      double norm = std::sqrt(total.item<double>());
      if (norm > options_.grad_clip) {
        double scale = options_.grad_clip / (norm + 1e-6);
        for (auto& g : grads)
          if (g.defined()) g = g * scale;
      }
    }
  }
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!grads[i].defined()) continue;
    if (grads[i].is_sparse())
      update_sparse(i, params_[i], grads[i]);
    else
      update_dense(i, params_[i], grads[i]);
  }
}

void Optimizer::update_dense(size_t i, torch::Tensor& p, torch::Tensor g) {
  const auto& o = options_;
  if (o.weight_decay > 0) g = g.add(p, o.weight_decay);
  switch (o.kind) {
    case OptimizerKind::kAdam: {
      auto& m = state1_[i];
      auto& v = state2_[i];
      m.mul_(o.beta1).add_(g, 1 - o.beta1);
      v.mul_(o.beta2).addcmul_(g, g, 1 - o.beta2);
      const auto [bc1, bc2] = bias_corrections();
      auto denom = (v.sqrt() / std::sqrt(bc2)).add_(o.eps);
      p.addcdiv_(m, denom, -o.lr / bc1);
      break;
    }
    case OptimizerKind::kAdagrad: {
      auto& s = state1_[i];
      s.addcmul_(g, g, 1.0);
      p.addcdiv_(g, s.sqrt().add_(1e-10), -o.lr);
      break;
    }
    case OptimizerKind::kSgd: {
      if (o.momentum > 0) {
        auto& b = state1_[i];
        b.mul_(o.momentum).add_(g);
        p.add_(b, -o.lr);
      } else {
        p.add_(g, -o.lr);
      }
      break;
    }
  }
}

void Optimizer::update_sparse(size_t i, torch::Tensor& p, const torch::Tensor& g) {
  const auto& o = options_;
  auto rows = g._indices()[0];
  auto vals = g._values();
  if (rows.numel() == 0) return;
  auto prow = p.index_select(0, rows);
  if (o.weight_decay > 0) vals = vals + o.weight_decay * prow;
  switch (o.kind) {
    case OptimizerKind::kAdam: {
      auto m = state1_[i].index_select(0, rows).mul_(o.beta1).add_(vals, 1 - o.beta1);
      auto v = state2_[i].index_select(0, rows).mul_(o.beta2).addcmul_(vals, vals, 1 - o.beta2);
      state1_[i].index_copy_(0, rows, m);
      state2_[i].index_copy_(0, rows, v);
      const auto [bc1, bc2] = bias_corrections();
      auto denom = (v.sqrt_() / std::sqrt(bc2)).add_(o.eps);
      prow.addcdiv_(m, denom, -o.lr / bc1);
      break;
    }
    case OptimizerKind::kAdagrad: {
      auto s = state1_[i].index_select(0, rows).addcmul_(vals, vals, 1.0);
      state1_[i].index_copy_(0, rows, s);
      prow.addcdiv_(vals, s.sqrt().add_(1e-10), -o.lr);
      break;
    }
    case OptimizerKind::kSgd:
      prow.add_(vals, -o.lr);
      break;
  }
  p.index_copy_(0, rows, prow);
}

std::pair<double, double> Optimizer::bias_corrections() const {
  const double t = static_cast<double>(steps_);
  return {1 - std::pow(options_.beta1, t), 1 - std::pow(options_.beta2, t)};
}

bool Optimizer::fusable(size_t i) const {
  const auto& p = params_[i];
  const auto& g = p.grad();
  if (!p.device().is_cpu() || p.scalar_type() != torch::kFloat || !p.is_contiguous() ||
      g.scalar_type() != torch::kFloat || p.dim() == 0 || p.numel() == 0)
    return false;
  if (g.is_sparse()) return g.sparse_dim() == 1 && p.dim() >= 1;
  return g.layout() == torch::kStrided;
}

void Optimizer::group_rows(size_t i, const torch::Tensor& indices, RowGroups& out) {
  const int64_t num_rows = params_[i].size(0);
  auto ix_t = indices.select(0, 0).contiguous();
  const int64_t* ix = ix_t.data_ptr<int64_t>();
  const int64_t n = ix_t.numel();
  // Rows strictly ascending and in range (the fused lookups' gradients, and run_staged's merge
  // of such parts): every entry its own group, no grouping pass.
  bool ascending = n == 0 || (ix[0] >= 0 && ix[n - 1] < num_rows);
  for (int64_t k = 1; ascending && k < n; ++k) ascending = ix[k - 1] < ix[k];
  if (ascending) {
    out.rows.assign(ix, ix + n);
    out.start.resize(static_cast<size_t>(n) + 1);
    out.order.resize(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) out.start[static_cast<size_t>(k)] = out.order[static_cast<size_t>(k)] = k;
    out.start[static_cast<size_t>(n)] = n;
    return;
  }
  auto& slot = slot_[i];
  if (static_cast<int64_t>(slot.size()) != num_rows) slot.assign(num_rows, -1);
  int64_t bad = 0;
  TORCH_CHECK(util::group_ids(ix, n, /*skip=*/-1, slot, out, bad),
              "Optimizer: sparse gradient row ", bad, " is outside the parameter's ", num_rows,
              " rows");
}

namespace {

// The per-element rules of the fused path, in float as ATen's CPU kernels compute them. One loop
// per rule over a contiguous span (a row, or a dense parameter's chunk), built for AVX2 and
// AVX-512 as well as the baseline ISA; the loader picks the best the CPU has.
struct Rule {
  float lr, beta1, beta2, eps, one_minus_beta1, one_minus_beta2, inv_sqrt_bc2, step_size;
  float momentum, weight_decay, scale;
};

RECSYS_CLONES void adam_span(const Rule& r, const float* __restrict g, float* __restrict p,
                             float* __restrict m, float* __restrict v, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    float gi = g[c] * r.scale + r.weight_decay * p[c];
    float mi = m[c] * r.beta1 + gi * r.one_minus_beta1;
    float vi = v[c] * r.beta2 + r.one_minus_beta2 * gi * gi;
    m[c] = mi;
    v[c] = vi;
    p[c] += r.step_size * (mi / (std::sqrt(vi) * r.inv_sqrt_bc2 + r.eps));
  }
}

RECSYS_CLONES void adagrad_span(const Rule& r, const float* __restrict g, float* __restrict p,
                                float* __restrict s, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    float gi = g[c] * r.scale + r.weight_decay * p[c];
    float si = s[c] + gi * gi;
    s[c] = si;
    p[c] += -r.lr * (gi / (std::sqrt(si) + 1e-10f));
  }
}

RECSYS_CLONES void sgd_span(const Rule& r, const float* __restrict g, float* __restrict p,
                            float* __restrict b, int64_t n) {
  for (int64_t c = 0; c < n; ++c) {
    float gi = g[c] * r.scale + r.weight_decay * p[c];
    if (b) {
      gi = b[c] * r.momentum + gi;
      b[c] = gi;
    }
    p[c] += -r.lr * gi;
  }
}

RECSYS_CLONES void add_span(const float* __restrict src, float* __restrict dst, int64_t n) {
  for (int64_t c = 0; c < n; ++c) dst[c] += src[c];
}

void apply_span(OptimizerKind kind, const Rule& r, const float* g, float* p, float* s1, float* s2,
                int64_t n) {
  switch (kind) {
    case OptimizerKind::kAdam:
      adam_span(r, g, p, s1, s2, n);
      break;
    case OptimizerKind::kAdagrad:
      adagrad_span(r, g, p, s1, n);
      break;
    case OptimizerKind::kSgd:
      sgd_span(r, g, p, s1, n);
      break;
  }
}

}  // namespace

// Rows of a sparse update prefetched ahead.
constexpr int64_t kPrefetchAhead = 4;

namespace {

/// Runs work(k) for k = 0 .. count-1 on the intra-op threads, each thread taking the next k as
/// it finishes one (items of unequal cost; the result does not depend on which thread ran k).
template <typename F>
void for_each_dynamic(int64_t count, const F& work) {
  if (count <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), count);
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t k; (k = next.fetch_add(1)) < count;) work(k);
  });
}

}  // namespace

void Optimizer::step_fused() {
  const auto& o = options_;
  if (slot_.size() != params_.size()) slot_.resize(params_.size());
  const size_t n = params_.size();
  std::vector<RowGroups> groups(n);
  std::vector<torch::Tensor> grads(n);  // dense: the gradient; sparse: per-row sums [U, rowlen]
  // The sparse gradients' rows grouped, the tables spread over the threads (each table has its
  // own slot array), the largest first. A row outside its table throws before anything changes.
  std::vector<size_t> sparse;
  for (size_t i = 0; i < n; ++i) {
    const auto& g = params_[i].grad();
    if (!g.defined()) continue;
    if (g.is_sparse())
      sparse.push_back(i);
    else
      grads[i] = g.contiguous();
  }
  std::stable_sort(sparse.begin(), sparse.end(), [&](size_t x, size_t y) {
    return params_[x].grad()._nnz() > params_[y].grad()._nnz();
  });
  // A failure is kept per table and the first table's rethrown: the same error whichever
  // thread met it first.
  std::vector<std::exception_ptr> failed(n);
  for_each_dynamic(static_cast<int64_t>(sparse.size()), [&](int64_t k) {
    const size_t i = sparse[static_cast<size_t>(k)];
    try {
      group_rows(i, params_[i].grad()._indices(), groups[i]);
    } catch (...) {
      failed[i] = std::current_exception();
    }
  });
  for (const auto& e : failed)
    if (e) std::rethrow_exception(e);
  for (size_t i : sparse) {
    const auto& g = params_[i].grad();
    const int64_t row_len = params_[i].numel() / params_[i].size(0);
    auto values = g._values().contiguous().view({-1, row_len});
    const auto& gr = groups[i];
    if (static_cast<int64_t>(gr.rows.size()) == values.size(0)) {
      // Every entry a distinct row (the fused lookups' gradients), in order of appearance:
      // the values are already the per-row sums.
      grads[i] = values;
      continue;
    }
    auto sums = torch::empty({static_cast<int64_t>(gr.rows.size()), row_len}, values.options());
    const float* vp = values.data_ptr<float>();
    float* sp = sums.data_ptr<float>();
    at::parallel_for(0, static_cast<int64_t>(gr.rows.size()), 64, [&](int64_t b, int64_t e) {
      for (int64_t u = b; u < e; ++u) {
        float* out = sp + u * row_len;
        int64_t k = gr.start[u];
        std::copy(vp + gr.order[k] * row_len, vp + (gr.order[k] + 1) * row_len, out);
        for (++k; k < gr.start[u + 1]; ++k) add_span(vp + gr.order[k] * row_len, out, row_len);
      }
    });
    grads[i] = sums;
  }

  float scale = 1.0f;
  if (o.grad_clip > 0) {
    double total = 0;
    for (auto& g : grads)
      if (g.defined()) total += g.pow(2).sum().item<double>();
    double norm = std::sqrt(total);
    if (norm > o.grad_clip) scale = static_cast<float>(o.grad_clip / (norm + 1e-6));
  }

  const auto [bc1, bc2] = bias_corrections();
  Rule rule{static_cast<float>(o.lr),
            static_cast<float>(o.beta1),
            static_cast<float>(o.beta2),
            static_cast<float>(o.eps),
            static_cast<float>(1 - o.beta1),
            static_cast<float>(1 - o.beta2),
            static_cast<float>(1 / std::sqrt(bc2)),
            static_cast<float>(-o.lr / bc1),
            static_cast<float>(o.momentum),
            static_cast<float>(o.weight_decay),
            scale};

  // Every parameter's update cut into spans of about kSpanElements elements (whole rows of a
  // sparse update), all spans in one parallel region.
  constexpr int64_t kSpanElements = 16384;
  struct Span {
    size_t param;
    int64_t begin, end;  // rows of the sparse update, or elements of a dense parameter
  };
  std::vector<Span> spans;
  for (size_t i = 0; i < n; ++i) {
    if (!grads[i].defined()) continue;
    const bool is_sparse = params_[i].grad().is_sparse();
    const int64_t count = is_sparse ? static_cast<int64_t>(groups[i].rows.size()) : grads[i].numel();
    const int64_t step =
        is_sparse ? std::max<int64_t>(1, kSpanElements / std::max<int64_t>(1, grads[i].size(1))) : kSpanElements;
    for (int64_t b = 0; b < count; b += step) spans.push_back({i, b, std::min(count, b + step)});
  }
  for_each_dynamic(static_cast<int64_t>(spans.size()), [&](int64_t k) {
    const Span& sp = spans[static_cast<size_t>(k)];
    const size_t i = sp.param;
    float* p = params_[i].data_ptr<float>();
    float* s1 = state1_[i].defined() ? state1_[i].data_ptr<float>() : nullptr;
    float* s2 = state2_[i].defined() ? state2_[i].data_ptr<float>() : nullptr;
    const float* g = grads[i].data_ptr<float>();
    const int64_t b = sp.begin, e = sp.end;
    if (!params_[i].grad().is_sparse()) {
      apply_span(o.kind, rule, g + b, p + b, s1 ? s1 + b : nullptr, s2 ? s2 + b : nullptr, e - b);
      return;
    }
    if (o.kind == OptimizerKind::kSgd) s1 = nullptr;  // momentum is for dense parameters only
    const auto& rows = groups[i].rows;
    const int64_t row_len = grads[i].size(1);
    const int64_t row_bytes = row_len * static_cast<int64_t>(sizeof(float));
    for (int64_t u = b; u < e; ++u) {
      // The rows are random reads from large tables: ask for the parameter and state rows of a
      // row a few ahead while this one is updated.
      if (u + kPrefetchAhead < e) {
        const int64_t ahead = rows[u + kPrefetchAhead] * row_len;
        for (int64_t byte = 0; byte < row_bytes; byte += 64) {
          __builtin_prefetch(reinterpret_cast<const char*>(p + ahead) + byte, 1);
          if (s1) __builtin_prefetch(reinterpret_cast<const char*>(s1 + ahead) + byte, 1);
          if (s2) __builtin_prefetch(reinterpret_cast<const char*>(s2 + ahead) + byte, 1);
        }
      }
      const int64_t off = rows[u] * row_len;
      apply_span(o.kind, rule, g + u * row_len, p + off, s1 ? s1 + off : nullptr,
                 s2 ? s2 + off : nullptr, row_len);
    }
  });
}

void Optimizer::save(torch::serialize::OutputArchive& archive) const {
  archive.write("optimizer.steps", torch::tensor(steps_));
  for (size_t i = 0; i < params_.size(); ++i) {
    if (state1_[i].defined()) archive.write("optimizer.s1." + std::to_string(i), state1_[i]);
    if (state2_[i].defined()) archive.write("optimizer.s2." + std::to_string(i), state2_[i]);
  }
}

uint64_t Optimizer::checksum() const {
  util::Checksum sum;
  sum.add(&steps_, sizeof steps_);
  for (size_t i = 0; i < params_.size(); ++i) {
    if (state1_[i].defined()) sum.add("optimizer.s1." + std::to_string(i), state1_[i]);
    if (state2_[i].defined()) sum.add("optimizer.s2." + std::to_string(i), state2_[i]);
  }
  return sum.value();
}

void Optimizer::load(torch::serialize::InputArchive& archive) {
  // A fresh tensor per read: InputArchive::read set_()s a defined tensor onto the stored one,
  // which fails when dtype or size differ from the previous read.
  // Shapes are checked first: copy_ would broadcast a smaller saved state silently.
  auto read = [&](const std::string& key, const torch::Tensor& into) {
    torch::Tensor t;
    archive.read(key, t);
    TORCH_CHECK(t.sizes() == into.sizes(), "optimizer state '", key, "' has shape ", t.sizes(),
                ", the parameter's state has ", into.sizes(), ": the checkpoint is for another model");
    return t;
  };
  torch::Tensor steps;
  archive.read("optimizer.steps", steps);
  std::vector<torch::Tensor> s1(params_.size()), s2(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    if (state1_[i].defined()) s1[i] = read("optimizer.s1." + std::to_string(i), state1_[i]);
    if (state2_[i].defined()) s2[i] = read("optimizer.s2." + std::to_string(i), state2_[i]);
  }
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (s1[i].defined()) state1_[i].copy_(s1[i]);
    if (s2[i].defined()) state2_[i].copy_(s2[i]);
  }
  steps_ = steps.item<int64_t>();
}

std::vector<torch::Tensor> Optimizer::state_tensors() const {
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (state1_[i].defined()) out.push_back(state1_[i].clone());
    if (state2_[i].defined()) out.push_back(state2_[i].clone());
  }
  return out;
}

}  // namespace recsys::train

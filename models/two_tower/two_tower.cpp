#include "models/two_tower/two_tower.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "models/layers/linear.h"
#include "models/layers/mlp_fused.h"
#include "models/layers/rows.h"

namespace recsys::models {

namespace {

/// The table rows a batch of bags uses (sorted, padding row 0 always first), the bags' ids
/// renumbered into them, and the pooling weights (1 / non-padding count for mean, 1 for sum,
/// 0 for padding).
struct UsedRows {
  torch::Tensor rows, local, weights;
};

UsedRows used_rows(const torch::Tensor& ids_in, int64_t vocab, Pooling pooling,
                   torch::ScalarType dtype) {
  auto ids = ids_in.dim() == 1 ? ids_in.unsqueeze(1) : ids_in;
  TORCH_CHECK(ids.dim() == 2 && ids.scalar_type() == torch::kLong,
              "Tower: categorical inputs must be [B] or [B, L] int64, got ", ids_in.scalar_type(),
              " ", ids_in.sizes());
  UsedRows u;
  if (!ids.device().is_cpu()) {
    auto flat = torch::cat({torch::zeros({1}, ids.options()), ids.reshape({-1})});
    auto unique = torch::_unique2(flat, /*sorted=*/true, /*return_inverse=*/true, false);
    u.rows = std::get<0>(unique);
    u.local = std::get<1>(unique).narrow(0, 1, ids.numel()).reshape(ids.sizes());
    auto real = (ids != 0).to(dtype);
    u.weights = pooling == Pooling::kMean
                    ? real / real.sum(1, /*keepdim=*/true).clamp_min(1)
                    : real;
    return u;
  }
  ids = ids.contiguous();
  const int64_t B = ids.size(0), L = ids.size(1), n = ids.numel();
  const int64_t* ix = ids.data_ptr<int64_t>();
  std::vector<int64_t> slot(static_cast<size_t>(vocab), -1);
  for (int64_t k = 0; k < n; ++k) {
    TORCH_CHECK(ix[k] >= 0 && ix[k] < vocab, "Tower: id ", ix[k], " out of range [0, ", vocab, ")");
    slot[static_cast<size_t>(ix[k])] = 0;
  }
  slot[0] = 0;
  std::vector<int64_t> rows;
  for (int64_t v = 0; v < vocab; ++v)
    if (slot[static_cast<size_t>(v)] == 0) {
      slot[static_cast<size_t>(v)] = static_cast<int64_t>(rows.size());
      rows.push_back(v);
    }
  u.rows = torch::tensor(rows, ids.options());
  u.local = torch::empty_like(ids);
  int64_t* lx = u.local.data_ptr<int64_t>();
  // The weights in the tables' dtype where it is a floating one (1 / count computed in double,
  // then rounded once, as a conversion of the double weights would); double otherwise.
  const auto wtype = dtype == torch::kFloat || dtype == torch::kDouble ? dtype : torch::kDouble;
  u.weights = torch::empty({B, L}, ids.options().dtype(wtype));
  AT_DISPATCH_FLOATING_TYPES(wtype, "used_rows", [&] {
    scalar_t* w = u.weights.data_ptr<scalar_t>();
    for (int64_t b = 0; b < B; ++b) {
      int64_t real = 0;
      for (int64_t l = 0; l < L; ++l) real += ix[b * L + l] != 0;
      const auto each = static_cast<scalar_t>(
          pooling == Pooling::kMean ? 1.0 / static_cast<double>(std::max<int64_t>(real, 1)) : 1.0);
      for (int64_t l = 0; l < L; ++l) {
        lx[b * L + l] = slot[static_cast<size_t>(ix[b * L + l])];
        w[b * L + l] = ix[b * L + l] != 0 ? each : scalar_t(0);
      }
    }
  });
  if (wtype != dtype) u.weights = u.weights.to(dtype);
  return u;
}

/// Open-addressing hash of a bag's ids (a row of an int64 matrix).
uint64_t bag_hash(const int64_t* row, int64_t L) {
  uint64_t h = 0x9E3779B97F4A7C15ull;
  for (int64_t l = 0; l < L; ++l) {
    h ^= static_cast<uint64_t>(row[l]) + 0x9E3779B97F4A7C15ull + (h << 6) + (h >> 2);
    h *= 0xBF58476D1CE4E5B9ull;
  }
  return h ^ (h >> 31);
}

/// Whether a sample of rows spread evenly over `ids` ([B] or [B, L] int64, CPU) holds a bag
/// twice; every row where B is small. A batch whose bags are (nearly) all distinct, a user's
/// id or history, shows none in the sample, and the full pass of unique_bags (whose result
/// would be thrown away) is skipped; one where distinct bags could halve the rows shows
/// repeats in a sample of 64 with high probability (where a third of the rows share one bag,
/// as the SSL views' default bags do, about 21 sampled rows hold it). Only a choice of path:
/// both give the same values.
bool repeats_in_sample(const torch::Tensor& ids_in) {
  constexpr int64_t kSample = 64;
  auto ids = (ids_in.dim() == 1 ? ids_in.unsqueeze(1) : ids_in).contiguous();
  const int64_t B = ids.size(0), L = ids.size(1);
  if (B <= 2 * kSample) return true;
  const int64_t* ix = ids.data_ptr<int64_t>();
  std::vector<std::pair<uint64_t, int64_t>> sample;  // (hash, row)
  sample.reserve(kSample);
  for (int64_t j = 0; j < kSample; ++j) {
    const int64_t r = j * B / kSample;
    sample.emplace_back(bag_hash(ix + r * L, L), r);
  }
  std::sort(sample.begin(), sample.end());
  for (size_t j = 1; j < sample.size(); ++j)
    if (sample[j].first == sample[j - 1].first &&
        std::equal(ix + sample[j].second * L, ix + (sample[j].second + 1) * L, ix + sample[j - 1].second * L))
      return true;
  return false;
}

}  // namespace

UniqueBags unique_bags(const torch::Tensor& ids) {
  TORCH_CHECK((ids.dim() == 1 || ids.dim() == 2) && ids.scalar_type() == torch::kLong && ids.device().is_cpu(),
              "unique_bags: ids must be a CPU [B] or [B, L] int64 tensor, got ", ids.sizes());
  return unique_rows({ids});
}

UniqueBags unique_rows(const std::vector<torch::Tensor>& columns) {
  TORCH_CHECK(!columns.empty(), "unique_rows: no columns");
  const int64_t B = columns[0].size(0);
  std::vector<torch::Tensor> mats;
  std::vector<const int64_t*> data;
  std::vector<int64_t> widths;
  for (const auto& c : columns) {
    auto m = (c.dim() == 1 ? c.unsqueeze(1) : c).contiguous();
    TORCH_CHECK(m.dim() == 2 && m.size(0) == B && m.scalar_type() == torch::kLong && m.device().is_cpu(),
                "unique_rows: every column must be a CPU int64 [", B, "] or [", B, ", L], got ", c.sizes());
    data.push_back(m.data_ptr<int64_t>());
    widths.push_back(m.size(1));
    mats.push_back(std::move(m));
  }
  auto row_hash = [&](int64_t b) {
    uint64_t h = 0;
    for (size_t k = 0; k < data.size(); ++k) h = h * 0x9E3779B97F4A7C15ull + bag_hash(data[k] + b * widths[k], widths[k]);
    return h ^ (h >> 29);
  };
  auto equal = [&](int64_t x, int64_t y) {
    for (size_t k = 0; k < data.size(); ++k)
      if (!std::equal(data[k] + x * widths[k], data[k] + (x + 1) * widths[k], data[k] + y * widths[k])) return false;
    return true;
  };
  int64_t capacity = 16;
  while (capacity < 2 * B) capacity *= 2;
  const uint64_t mask = static_cast<uint64_t>(capacity - 1);
  std::vector<int64_t> table(static_cast<size_t>(capacity), -1);  // slot -> unique index
  std::vector<int64_t> first;
  UniqueBags u;
  u.inverse = torch::empty({B}, torch::kLong);
  int64_t* inv = u.inverse.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    for (uint64_t h = row_hash(b) & mask;; h = (h + 1) & mask) {
      const int64_t k = table[h];
      if (k < 0) {
        table[h] = static_cast<int64_t>(first.size());
        inv[b] = static_cast<int64_t>(first.size());
        first.push_back(b);
        break;
      }
      if (equal(b, first[static_cast<size_t>(k)])) {
        inv[b] = k;
        break;
      }
    }
  }
  u.first = torch::tensor(first, torch::kLong);
  return u;
}

namespace {

/// A column of a distinct-row key: int64 as is, floating point by its bit pattern; undefined for
/// other types.
torch::Tensor key_column(const torch::Tensor& t) {
  if (t.scalar_type() == torch::kInt64) return t;
  if (t.scalar_type() == torch::kFloat32) return t.contiguous().view(torch::kInt32).to(torch::kInt64);
  if (t.scalar_type() == torch::kFloat64) return t.contiguous().view(torch::kInt64);
  return {};
}

}  // namespace

std::optional<UniqueBags> distinct_positives(const std::vector<torch::Tensor>& features,
                                             const torch::Tensor& item_ids, const torch::Tensor& log_q) {
  std::vector<torch::Tensor> key;
  for (const auto& t : features) {
    key.push_back(key_column(t));
    if (!key.back().defined()) return std::nullopt;
  }
  key.push_back(item_ids);
  key.push_back(key_column(log_q));
  return unique_rows(key);
}

TowerImpl::TowerImpl(TowerOptions options) : options_(std::move(options)) {
  encoder_ = register_module("encoder", FeatureEncoder(FeatureEncoderOptions(options_.features())
                                                         .sparse(options_.sparse())
                                                         .fused_lookup(options_.fused_lookup())));
  mlp_ = register_module("mlp", Mlp(MlpOptions(encoder_->out_dim(), options_.hidden())
                                         .activation(options_.activation())
                                         .dropout(options_.dropout())));
}

std::vector<FirstLayerPath> TowerImpl::first_layer_paths(const std::vector<torch::Tensor>& inputs) {
  std::vector<FirstLayerPath> out;
  for (const auto& p : plan(inputs)) out.push_back(p.path);
  return out;
}

std::vector<TowerImpl::FeaturePlan> TowerImpl::plan(const std::vector<torch::Tensor>& inputs) const {
  const auto& feats = options_.features();
  std::vector<FeaturePlan> out(feats.size());
  if (!options_.project_small_vocabularies() || inputs.size() != feats.size()) return out;
  // Features whose distinct bags could beat the best other path, with that path's cost.
  std::vector<std::pair<size_t, double>> candidates;
  for (size_t i = 0; i < feats.size(); ++i) {
    const auto& f = feats[i];
    // Ids of another type than int64 (int32 takes the plain embedding path) stay direct.
    if (f.numeric || inputs[i].scalar_type() != torch::kLong || inputs[i].dim() < 1 ||
        inputs[i].size(0) == 0)
      continue;
    // Per first-layer output column, forward + backward, in multiply-adds: direct = 3 x rows x
    // dim (product, weight and input gradients). Projecting the rows the batch uses costs at
    // most 3 x min(vocab, ids + 1) x dim, plus gathering (forward) and scattering (backward)
    // rows x bag projected values; projecting each distinct bag once costs 3 x bags x dim plus
    // rows values gathered and scattered.
    const double rows = static_cast<double>(inputs[i].size(0));
    const double bag = inputs[i].dim() > 1 ? static_cast<double>(inputs[i].size(1)) : 1.0;
    const double dim = static_cast<double>(f.dim);
    const double used = std::min(static_cast<double>(f.vocab_size), rows * bag + 1);
    const double direct = 3.0 * rows * dim;
    const double via_rows = 3.0 * used * dim + 2.0 * rows * bag;
    auto& p = out[i];
    double best = direct;
    if (via_rows < best) {
      p.path = FirstLayerPath::kUsedRows;
      best = via_rows;
    }
    // Distinct bags need a pass over the ids (CPU): worth it only where they can win, i.e. when
    // a bag per 2 rows (an even split with duplicates) would.
    if (options_.distinct_bags() && inputs[i].device().is_cpu() &&
        3.0 * (rows / 2) * dim + 2.0 * rows < best && repeats_in_sample(inputs[i]))
      candidates.emplace_back(i, best);
  }
  // The candidates' distinct bags, one feature per thread (independent passes over the ids).
  std::vector<UniqueBags> bags(candidates.size());
  at::parallel_for(0, static_cast<int64_t>(candidates.size()), 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      bags[static_cast<size_t>(c)] = unique_bags(inputs[candidates[static_cast<size_t>(c)].first]);
  });
  for (size_t c = 0; c < candidates.size(); ++c) {
    const auto [i, best] = candidates[c];
    const double rows = static_cast<double>(inputs[i].size(0));
    const double via_bags = 3.0 * static_cast<double>(bags[c].first.size(0)) * static_cast<double>(feats[i].dim) + 2.0 * rows;
    if (via_bags < best) {
      out[i].path = FirstLayerPath::kUniqueBags;
      out[i].bags = std::move(bags[c]);
    }
  }
  return out;
}

torch::Tensor TowerImpl::first_layer_factored(const std::vector<torch::Tensor>& inputs,
                                              const std::vector<FeaturePlan>& plan) {
  const auto& feats = options_.features();
  auto& linear = mlp_->linears().front();
  const auto& w = linear->weight;  // [H, sum of dims]
  // The direct features' product, then every other feature's projected rows added by bags.
  std::vector<torch::Tensor> direct_x, direct_w, bag_tables, bag_ids, bag_weights;
  // Each feature's columns of W as one split: its backward concatenates the parts' gradients
  // into one [H, sum of dims] tensor (narrow's would zero-fill a full-size gradient per part and
  // add them up).
  std::vector<int64_t> dims;
  for (const auto& f : feats) dims.push_back(f.dim);
  const auto w_parts = w.split_with_sizes(dims, 1);
  for (size_t i = 0; i < feats.size(); ++i) {
    const auto& w_i = w_parts[i];
    switch (plan[i].path) {
      case FirstLayerPath::kDirect:
        direct_x.push_back(encoder_->encode(i, inputs[i]));
        direct_w.push_back(w_i);
        break;
      case FirstLayerPath::kUsedRows: {
        // The rows the batch uses, padding (0) always first: its table row is zero and gets no
        // gradient (padding_idx), and its weight is 0 in every bag.
        auto used = used_rows(inputs[i], feats[i].vocab_size, feats[i].pooling, w.scalar_type());
        // Sorted distinct rows: their sparse gradient needs no grouping (sorted_rows_sparse).
        const auto& table = encoder_->table(i);
        auto sub = options_.sparse() && options_.fused_lookup()
                       ? sorted_rows_sparse(table, used.rows)
                       : torch::embedding(table, used.rows, /*padding_idx=*/0,
                                          /*scale_grad_by_freq=*/false, options_.sparse());
        auto projection = models::linear(sub, w_i, torch::Tensor());  // [rows used, H]
        bag_tables.push_back(projection);
        bag_ids.push_back(used.local);  // [B, L], as the weights
        bag_weights.push_back(used.weights);
        break;
      }
      case FirstLayerPath::kUniqueBags: {
        // Each distinct bag embedded and projected once, then given to every row holding it.
        const auto& u = plan[i].bags;
        auto ids = inputs[i].dim() == 1 ? inputs[i].unsqueeze(1) : inputs[i];
        auto x = encoder_->encode(i, ids.index_select(0, u.first));
        auto projection = models::linear(x, w_i, torch::Tensor());  // [bags, H]
        const int64_t B = ids.size(0);
        bag_tables.push_back(projection);
        bag_ids.push_back(u.inverse.view({B, 1}));
        bag_weights.push_back(torch::ones({B, 1}, w.options()));
        break;
      }
    }
  }
  torch::Tensor base = linear->bias;
  if (!direct_x.empty()) {
    auto x = direct_x.size() == 1 ? direct_x.front() : torch::cat(direct_x, 1);
    auto wd = direct_w.size() == 1 ? direct_w.front() : torch::cat(direct_w, 1);
    base = models::linear(x, wd, linear->bias);
  }
  return add_bag_rows(base, bag_tables, bag_ids, bag_weights);
}

torch::Tensor TowerImpl::forward(const std::vector<torch::Tensor>& inputs) {
  auto p = plan(inputs);
  const bool any = std::any_of(p.begin(), p.end(), [](const FeaturePlan& f) {
    return f.path != FirstLayerPath::kDirect;
  });
  auto h = any ? first_layer_factored(inputs, p) : torch::Tensor();
  const auto& mo = mlp_->options();
  if (any && options_.fused_mlp() && mo.activation() == Activation::kRelu &&
      mo.dropout() == 0 && !mo.activate_last() && mlp_->linears().size() > 1) {
    std::vector<torch::Tensor> w, b;
    for (size_t k = 1; k < mlp_->linears().size(); ++k) {
      w.push_back(mlp_->linears()[k]->weight);
      b.push_back(mlp_->linears()[k]->bias);
    }
    if (mlp_tail_unsupported(h, w, b).empty())
      return mlp_tail_fused(h, w, b, options_.normalize(), 1e-8);
  }
  auto out = any ? mlp_->forward_from(h, 0) : mlp_->forward(encoder_->forward(inputs));
  if (options_.normalize()) out = torch::nn::functional::normalize(out, torch::nn::functional::NormalizeFuncOptions().dim(1).eps(1e-8));
  return out;
}

TwoTowerImpl::TwoTowerImpl(TwoTowerOptions options) {
  user_ = register_module("user_tower", Tower(options.user()));
  item_ = register_module("item_tower", Tower(options.item()));
}

}  // namespace recsys::models

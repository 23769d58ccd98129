#include "models/two_tower/two_tower.h"

#include "models/layers/linear.h"
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
  u.weights = torch::empty({B, L}, ids.options().dtype(torch::kDouble));
  int64_t* lx = u.local.data_ptr<int64_t>();
  double* w = u.weights.data_ptr<double>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t real = 0;
    for (int64_t l = 0; l < L; ++l) real += ix[b * L + l] != 0;
    const double each = pooling == Pooling::kMean ? 1.0 / static_cast<double>(std::max<int64_t>(real, 1)) : 1.0;
    for (int64_t l = 0; l < L; ++l) {
      lx[b * L + l] = slot[static_cast<size_t>(ix[b * L + l])];
      w[b * L + l] = ix[b * L + l] != 0 ? each : 0.0;
    }
  }
  u.weights = u.weights.to(dtype);
  return u;
}

}  // namespace

TowerImpl::TowerImpl(TowerOptions options) : options_(std::move(options)) {
  encoder_ = register_module("encoder", FeatureEncoder(FeatureEncoderOptions(options_.features()).sparse(options_.sparse())));
  mlp_ = register_module("mlp", Mlp(MlpOptions(encoder_->out_dim(), options_.hidden())
                                         .activation(options_.activation())
                                         .dropout(options_.dropout())));
}

std::vector<bool> TowerImpl::projected_features(const std::vector<torch::Tensor>& inputs) const {
  const auto& feats = options_.features();
  std::vector<bool> out(feats.size(), false);
  if (!options_.project_small_vocabularies() || inputs.size() != feats.size()) return out;
  for (size_t i = 0; i < feats.size(); ++i) {
    const auto& f = feats[i];
    if (f.numeric || inputs[i].dim() < 1) continue;
    const double rows = static_cast<double>(inputs[i].size(0));
    const double bag = inputs[i].dim() > 1 ? static_cast<double>(inputs[i].size(1)) : 1.0;
    // Per first-layer output column, forward + backward: direct = 3 x rows x dim multiply-adds
    // (product, weight and input gradients); projected = at most 3 x vocab x dim, plus
    // gathering (forward) and scattering (backward) rows x bag projected values.
    const double dim = static_cast<double>(f.dim);
    out[i] = 3.0 * static_cast<double>(f.vocab_size) * dim + 2.0 * rows * bag < 3.0 * rows * dim;
  }
  return out;
}

torch::Tensor TowerImpl::first_layer_factored(const std::vector<torch::Tensor>& inputs,
                                              const std::vector<bool>& projected) {
  const auto& feats = options_.features();
  auto& linear = mlp_->linears().front();
  const auto& w = linear->weight;  // [H, sum of dims]
  std::vector<torch::Tensor> direct_x, direct_w, projected_parts;
  int64_t offset = 0;
  for (size_t i = 0; i < feats.size(); ++i) {
    const int64_t d = feats[i].dim;
    auto w_i = w.narrow(1, offset, d);
    offset += d;
    if (!projected[i]) {
      direct_x.push_back(encoder_->encode(i, inputs[i]));
      direct_w.push_back(w_i);
      continue;
    }
    // The rows the batch uses, padding (0) always first: its table row is zero and gets no
    // gradient (padding_idx), and its weight is 0 in every bag.
    auto used = used_rows(inputs[i], feats[i].vocab_size, feats[i].pooling, w.scalar_type());
    auto sub = torch::embedding(encoder_->table(i), used.rows, /*padding_idx=*/0,
                                /*scale_grad_by_freq=*/false, options_.sparse());
    auto projection = models::linear(sub, w_i, torch::Tensor());  // [rows used, H]
    projected_parts.push_back(bag_rows(projection, used.local, used.weights));
  }
  torch::Tensor h;
  if (direct_x.empty()) {
    h = linear->bias.expand({inputs.front().size(0), w.size(0)});
  } else {
    auto x = direct_x.size() == 1 ? direct_x.front() : torch::cat(direct_x, 1);
    auto wd = direct_w.size() == 1 ? direct_w.front() : torch::cat(direct_w, 1);
    h = models::linear(x, wd, linear->bias);
  }
  for (size_t k = 0; k < projected_parts.size(); ++k)
    h = k == 0 ? h + projected_parts[k] : h.add_(projected_parts[k]);
  return h;
}

torch::Tensor TowerImpl::forward(const std::vector<torch::Tensor>& inputs) {
  auto projected = projected_features(inputs);
  const bool any = std::find(projected.begin(), projected.end(), true) != projected.end();
  auto out = any ? mlp_->forward_from(first_layer_factored(inputs, projected), 0)
                 : mlp_->forward(encoder_->forward(inputs));
  if (options_.normalize()) out = torch::nn::functional::normalize(out, torch::nn::functional::NormalizeFuncOptions().dim(1).eps(1e-8));
  return out;
}

TwoTowerImpl::TwoTowerImpl(TwoTowerOptions options) {
  user_ = register_module("user_tower", Tower(options.user()));
  item_ = register_module("item_tower", Tower(options.item()));
}

}  // namespace recsys::models

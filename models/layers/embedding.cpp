#include "models/layers/embedding.h"

#include <stdexcept>

#include "models/layers/rows.h"

namespace recsys::models {

Pooling parse_pooling(const std::string& name) {
  if (name == "mean") return Pooling::kMean;
  if (name == "sum") return Pooling::kSum;
  throw std::invalid_argument("unknown pooling '" + name + "' (known: mean, sum)");
}

torch::Tensor pooled_lookup(const torch::Tensor& table, const torch::Tensor& ids, Pooling pooling, bool sparse,
                            bool fused) {
  if (fused && sparse && table.device().is_cpu() && ids.device().is_cpu() &&
      (table.scalar_type() == torch::kFloat || table.scalar_type() == torch::kDouble) &&
      table.dim() == 2 && table.is_contiguous() && ids.scalar_type() == torch::kLong &&
      (ids.dim() == 1 || ids.dim() == 2))
    return pooled_rows_sparse(table, ids, pooling == Pooling::kMean);
  auto emb = torch::embedding(table, ids, /*padding_idx=*/0, /*scale_grad_by_freq=*/false, sparse);
  if (ids.dim() == 1) return emb;
  if (ids.size(1) == 1) return emb.squeeze(1);
  auto summed = emb.sum(1);  // padding rows are zero and receive no gradient
  if (pooling == Pooling::kSum) return summed;
  auto count = (ids != 0).sum(1, /*keepdim=*/true).clamp_min(1).to(emb.scalar_type());
  return summed / count;
}

FeatureEncoderImpl::FeatureEncoderImpl(FeatureEncoderOptions options) : options_(std::move(options)) {
  TORCH_CHECK(!options_.features().empty(), "FeatureEncoder: give at least one feature");
  for (size_t i = 0; i < options_.features().size(); ++i) {
    const auto& f = options_.features()[i];
    TORCH_CHECK(f.dim > 0, "FeatureEncoder: feature '", f.name, "' needs a positive dim");
    torch::Tensor t;
    if (f.numeric) {
      t = register_parameter("numeric_" + f.name, torch::randn({2, f.dim}) * options_.init_std());
    } else {
      TORCH_CHECK(f.vocab_size > 1, "FeatureEncoder: feature '", f.name, "' has an empty vocabulary");
      auto w = torch::randn({f.vocab_size, f.dim}).mul_(options_.init_std());  // in place
      w[0].zero_();  // padding
      t = register_parameter("emb_" + f.name, w);
    }
    tables_.push_back(t);
    out_dim_ += f.dim;
  }
}

torch::Tensor FeatureEncoderImpl::forward(const std::vector<torch::Tensor>& inputs) {
  const auto& feats = options_.features();
  TORCH_CHECK(inputs.size() == feats.size(), "FeatureEncoder: expected ", feats.size(),
              " inputs, got ", inputs.size());
  std::vector<torch::Tensor> parts;
  parts.reserve(feats.size());
  for (size_t i = 0; i < feats.size(); ++i) parts.push_back(encode(i, inputs[i]));
  return torch::cat(parts, 1);
}

torch::Tensor FeatureEncoderImpl::encode(size_t i, const torch::Tensor& input) {
  const auto& f = options_.features().at(i);
  if (f.numeric) {
    auto x = input.to(tables_[i].scalar_type()).reshape({-1, 1});
    return x * tables_[i][0] + tables_[i][1];
  }
  return pooled_lookup(tables_[i], input, f.pooling, options_.sparse(), options_.fused_lookup());
}

}  // namespace recsys::models

#include "models/din/ctr_embeddings.h"

#include <stdexcept>

#include "models/layers/regularization.h"

namespace recsys::models {

CtrRegularization parse_ctr_regularization(const std::string& name) {
  if (name == "none") return CtrRegularization::kNone;
  if (name == "mba") return CtrRegularization::kMba;
  if (name == "l2") return CtrRegularization::kL2;
  throw std::invalid_argument("unknown regularization '" + name + "' (known: none, mba, l2)");
}

CtrEmbeddingsImpl::CtrEmbeddingsImpl(CtrEmbeddingsOptions options) : options_(std::move(options)) {
  const auto& o = options_;
  TORCH_CHECK(o.num_items() >= 2 && o.num_categories() >= 2,
              "CtrEmbeddings: num_items and num_categories count the padding and unknown rows and "
              "must be >= 2, got ",
              o.num_items(), " and ", o.num_categories());
  TORCH_CHECK(o.item_dim() >= 1 && o.category_dim() >= 1,
              "CtrEmbeddings: item_dim and category_dim must be >= 1");
  TORCH_CHECK(o.lambda() >= 0, "CtrEmbeddings: lambda must be >= 0, got ", o.lambda());
  auto init = [&](int64_t rows, int64_t dim) {
    auto t = torch::randn({rows, dim}).mul_(o.init_std());  // in place: no second table-sized buffer
    t[0].zero_();
    return t;
  };
  item_table = register_parameter("item_table", init(o.num_items(), o.item_dim()));
  category_table = register_parameter("category_table", init(o.num_categories(), o.category_dim()));
  if (o.regularization() == CtrRegularization::kMba) {
    auto counts = [](const std::vector<int64_t>& c, int64_t rows, const char* what) {
      TORCH_CHECK(static_cast<int64_t>(c.size()) == rows, "CtrEmbeddings: ", what,
                  " must have one count per row (", rows, "), got ", c.size(),
                  "; pass CtrSplits::item_count / category_count");
      return inverse_counts(torch::tensor(c, torch::kLong));
    };
    item_inv_count =
        register_buffer("item_inv_count", counts(o.item_count(), o.num_items(), "item_count"));
    category_inv_count = register_buffer(
        "category_inv_count", counts(o.category_count(), o.num_categories(), "category_count"));
  }
}

torch::Tensor CtrEmbeddingsImpl::forward(const torch::Tensor& item, const torch::Tensor& category) {
  const bool sparse = options_.sparse();
  auto i = torch::embedding(item_table, item, /*padding_idx=*/0, false, sparse);
  auto c = torch::embedding(category_table, category, /*padding_idx=*/0, false, sparse);
  return torch::cat({i, c}, -1);
}

namespace {

/// 0.5 * sum over the distinct non-zero ids j of inv[j] * ||table[j]||^2, the rows gathered with
/// an embedding lookup so that the gradient has the same (sparse) layout as the model's lookups.
torch::Tensor mba_term(const torch::Tensor& table, const torch::Tensor& inv,
                       const std::vector<torch::Tensor>& ids, bool sparse) {
  std::vector<torch::Tensor> flat;
  for (auto& t : ids)
    if (t.defined()) flat.push_back(t.reshape(-1));
  auto distinct = std::get<0>(torch::_unique(torch::cat(flat), /*sorted=*/false));
  distinct = distinct.masked_select(distinct != 0);
  auto rows = torch::embedding(table, distinct, /*padding_idx=*/-1, false, sparse);
  return 0.5 * (inv.index_select(0, distinct) * rows.pow(2).sum(1)).sum();
}

}  // namespace

torch::Tensor CtrEmbeddingsImpl::regularization(const CtrModelInput& in) {
  if (options_.lambda() == 0) return {};
  switch (options_.regularization()) {
    case CtrRegularization::kNone:
      return {};
    case CtrRegularization::kL2:
      return options_.lambda() * (plain_l2(item_table) + plain_l2(category_table));
    case CtrRegularization::kMba: {
      const bool sparse = options_.sparse();
      auto items =
          mba_term(item_table, item_inv_count, {in.item, in.hist_item, in.neg_hist_item}, sparse);
      auto cats = mba_term(category_table, category_inv_count,
                           {in.category, in.hist_category, in.neg_hist_category}, sparse);
      return options_.lambda() * (items + cats);
    }
  }
  return {};
}

torch::Tensor masked_sum(const torch::Tensor& keys, const torch::Tensor& mask) {
  TORCH_CHECK(keys.dim() == 3 && mask.dim() == 2 && keys.size(0) == mask.size(0) &&
                  keys.size(1) == mask.size(1),
              "masked_sum: keys [B, T, D] and mask [B, T] must agree, got ", keys.sizes(), " and ",
              mask.sizes());
  return (keys * mask.unsqueeze(-1).to(keys.scalar_type())).sum(1);
}

Mlp make_ctr_mlp(int64_t in_dim, const CtrMlpOptions& options) {
  auto widths = options.hidden;
  widths.push_back(1);
  return Mlp(MlpOptions(in_dim, widths)
                 .activation(options.activation)
                 .activate_last(false)
                 .dropout(options.dropout)
                 .fused_dice(options.fused_dice));
}

}  // namespace recsys::models

#include "losses/retrieval.h"

#include <cmath>

#include "losses/cross_entropy.h"
#include "losses/softmax_fused.h"

namespace recsys::losses {

namespace {

/// An empty extra block counts as none.
torch::Tensor nonempty(const torch::Tensor& t) { return t.defined() && t.numel() > 0 ? t : torch::Tensor(); }

/// The rows, then the extra rows (after nonempty(): undefined = none).
torch::Tensor with_extra(const torch::Tensor& rows, const torch::Tensor& extra) {
  return extra.defined() ? torch::cat({rows, extra}, 0) : rows;
}

void check_views(const torch::Tensor& z1, const torch::Tensor& z2, const torch::Tensor& extra2,
                 const torch::Tensor& extra1, bool symmetric) {
  TORCH_CHECK(symmetric || !extra1.defined(), "contrastive: extra view-1 negatives need the symmetric loss");
  TORCH_CHECK(z1.dim() == 2 && z1.sizes() == z2.sizes(), "contrastive: views must both be [M, D]");
  TORCH_CHECK(!extra2.defined() || (extra2.dim() == 2 && extra2.size(1) == z1.size(1)),
              "contrastive: extra view-2 negatives must be [K, D]");
  TORCH_CHECK(!symmetric || extra1.defined() == extra2.defined(),
              "contrastive: the symmetric loss needs extra negatives for both views or neither");
  TORCH_CHECK(!extra1.defined() || (extra1.dim() == 2 && extra1.size(1) == z1.size(1)),
              "contrastive: extra view-1 negatives must be [K, D]");
}

}  // namespace

torch::Tensor positive_columns(const torch::Tensor& per_column, int64_t positives,
                                const torch::Tensor& index) {
  auto own = per_column.narrow(0, 0, positives).index_select(0, index);
  const int64_t rest = per_column.size(0) - positives;
  return rest > 0 ? torch::cat({own, per_column.narrow(0, positives, rest)}) : own;
}

torch::Tensor inbatch_softmax(const torch::Tensor& user, const torch::Tensor& item,
                              const torch::Tensor& log_q, const torch::Tensor& item_ids,
                              const InBatchSoftmaxOptions& options, const torch::Tensor& extra_item) {
  TORCH_CHECK(user.dim() == 2 && item.sizes() == user.sizes(),
              "inbatch_softmax: user and item embeddings must both be [B, D]");
  const int64_t B = user.size(0);
  auto columns = with_extra(item, nonempty(extra_item));
  TORCH_CHECK(log_q.dim() == 1 && log_q.size(0) == columns.size(0),
              "inbatch_softmax: log_q needs one entry per column (", columns.size(0), "), got ",
              log_q.sizes());
  // Subtracting log q_j removes the popularity bias of in-batch sampling. One addmm computes
  // u c^T / temperature - log q (the scale applied by the product, not by a pass over [B, C]).
  auto logits = torch::addmm(-log_q.unsqueeze(0).to(user.scalar_type()), user, columns.t(), 1.0,
                             1.0 / options.temperature());
  if (options.remove_accidental_hits()) {
    TORCH_CHECK(item_ids.defined() && item_ids.size(0) == columns.size(0),
                "inbatch_softmax: remove_accidental_hits needs the item id of every column");
    auto same = item_ids.slice(0, 0, B).unsqueeze(1) == item_ids.unsqueeze(0);  // [B, C]
    auto diag = torch::zeros_like(same);
    diag.slice(1, 0, B).fill_diagonal_(true);
    logits = logits.masked_fill(same & ~diag, -1e9);
  }
  auto targets = torch::arange(B, torch::TensorOptions().dtype(torch::kInt64).device(user.device()));
  return options.fused_kernel() ? rowwise_cross_entropy(logits, targets)
                                : rowwise_cross_entropy_reference(logits, targets);
}

torch::Tensor inbatch_softmax_mean(const torch::Tensor& user, const torch::Tensor& item,
                                   const torch::Tensor& log_q, const torch::Tensor& item_ids,
                                   const InBatchSoftmaxOptions& options,
                                   const torch::Tensor& extra_item) {
  if (options.fused_mean() && user.dim() == 2 && item.sizes() == user.sizes() &&
      log_q.dim() == 1) {
    auto columns = with_extra(item, nonempty(extra_item));
    auto bias = log_q.size(0) == columns.size(0) ? -log_q.to(user.scalar_type()) : torch::Tensor();
    torch::Tensor ids;
    if (options.remove_accidental_hits() && item_ids.defined() && item_ids.dim() == 1 &&
        item_ids.size(0) == columns.size(0))
      ids = item_ids.to(torch::kInt64);
    const bool ids_ok = !options.remove_accidental_hits() || ids.defined();
    if (bias.defined() && ids_ok && diagonal_softmax_unsupported(user, columns, bias, ids).empty())
      return diagonal_softmax_mean_fused(user, columns, 1.0 / options.temperature(), bias, ids);
  }
  // The composed path (also where the arguments are wrong: it names the problem).
  return inbatch_softmax(user, item, log_q, item_ids, options, extra_item).mean();
}

torch::Tensor inbatch_softmax_mean_distinct(const torch::Tensor& user, const torch::Tensor& item,
                                            const torch::Tensor& targets,
                                            const torch::Tensor& log_q,
                                            const torch::Tensor& item_ids,
                                            const InBatchSoftmaxOptions& options,
                                            const torch::Tensor& extra_item) {
  TORCH_CHECK(user.dim() == 2 && item.dim() == 2 && item.size(1) == user.size(1) && item.size(0) >= 1,
              "inbatch_softmax_mean_distinct: user must be [B, D] and item [U, D], got ",
              user.sizes(), " and ", item.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == user.size(0) &&
                  targets.scalar_type() == torch::kInt64,
              "inbatch_softmax_mean_distinct: targets must be int64 [", user.size(0), "], got ",
              targets.sizes());
  const int64_t U = item.size(0);
  const auto extra = nonempty(extra_item);
  const int64_t C = U + (extra.defined() ? extra.size(0) : 0);
  TORCH_CHECK(log_q.dim() == 1 && log_q.size(0) == C,
              "inbatch_softmax_mean_distinct: log_q needs one entry per distinct column (", C,
              "), got ", log_q.sizes());
  const bool ids_needed = options.remove_accidental_hits();
  TORCH_CHECK(!ids_needed || (item_ids.defined() && item_ids.dim() == 1 && item_ids.size(0) == C),
              "inbatch_softmax_mean_distinct: remove_accidental_hits needs the item id of every "
              "distinct column (", C, ")");
  if (options.fused_mean() && !log_q.requires_grad() && user.device().is_cpu() && item.device().is_cpu() &&
      targets.device().is_cpu()) {
    auto columns = with_extra(item, extra);
    auto counts = torch::bincount(targets, {}, U).to(torch::kFloat64);
    if (extra.defined()) counts = torch::cat({counts, torch::ones({C - U}, counts.options())});
    auto bias = -log_q.to(user.scalar_type());
    auto ids = ids_needed ? item_ids.to(torch::kInt64) : torch::Tensor();
    if (distinct_softmax_unsupported(user, columns, targets, counts, bias, ids).empty())
      return distinct_softmax_mean_fused(user, columns, 1.0 / options.temperature(), targets,
                                         counts, bias, ids);
  }
  // The expanded form: row i's positive in column i, each distinct column copied per row.
  return inbatch_softmax(user, item.index_select(0, targets), positive_columns(log_q, U, targets),
                         ids_needed ? positive_columns(item_ids, U, targets) : item_ids, options, extra)
      .mean();
}

torch::Tensor contrastive(const torch::Tensor& z1, const torch::Tensor& z2, double temperature,
                          bool symmetric, bool fused_kernel, const torch::Tensor& extra2_in,
                          const torch::Tensor& extra1_in) {
  const auto extra2 = nonempty(extra2_in), extra1 = nonempty(extra1_in);
  check_views(z1, z2, extra2, extra1, symmetric);
  // Scaling z1 [M, D] rather than the [M, C] logits: the same products, C / D times less work.
  auto logits = torch::mm(z1 * (1.0 / temperature), with_extra(z2, extra2).t());
  auto targets = torch::arange(z1.size(0), torch::TensorOptions().dtype(torch::kInt64).device(z1.device()));
  const auto ce = fused_kernel ? rowwise_cross_entropy : rowwise_cross_entropy_reference;
  auto loss = ce(logits, targets);
  if (symmetric) {
    // Without extra columns the other direction's scores are the transpose.
    auto back = extra1.defined() ? torch::mm(z2 * (1.0 / temperature), with_extra(z1, extra1).t()) : logits.t();
    loss = 0.5 * (loss + ce(back, targets));
  }
  return loss;
}

torch::Tensor contrastive_mean(const torch::Tensor& z1, const torch::Tensor& z2,
                               double temperature, bool symmetric, bool fused_kernel,
                               bool fused_mean, const torch::Tensor& extra2_in,
                               const torch::Tensor& extra1_in) {
  const auto extra2 = nonempty(extra2_in), extra1 = nonempty(extra1_in);
  check_views(z1, z2, extra2, extra1, symmetric);
  if (fused_mean && !symmetric) {
    auto columns = with_extra(z2, extra2);
    if (diagonal_softmax_unsupported(z1, columns, {}, {}).empty())
      return diagonal_softmax_mean_fused(z1, columns, 1.0 / temperature);
  }
  return contrastive(z1, z2, temperature, symmetric, fused_kernel, extra2, extra1).mean();
}

torch::Tensor spread_out(const torch::Tensor& q) {
  TORCH_CHECK(q.dim() == 2 && q.size(0) > 1, "spread_out: need at least two vectors [N, D]");
  const int64_t n = q.size(0), d = q.size(1);
  auto gram = torch::matmul(q, q.t());
  auto off = 1 - torch::eye(n, q.options());
  double pairs = static_cast<double>(n * (n - 1));
  auto m1 = (gram * off).sum() / pairs;
  auto m2 = (gram.pow(2) * off).sum() / pairs;
  return m1.pow(2) + torch::relu(m2 - 1.0 / static_cast<double>(d));
}

double log_expected_count(double per_step, double mixed, double num_items) {
  // A column that can only come from the uniform negatives (or from nowhere) keeps a finite
  // correction.
  return std::log(std::max(per_step + mixed / num_items, 1e-12));
}

StreamingFrequency::StreamingFrequency(int64_t buckets, double alpha, double initial_gap)
    : last_(static_cast<size_t>(buckets), -1.0), gap_(static_cast<size_t>(buckets), initial_gap), alpha_(alpha) {}

size_t StreamingFrequency::bucket(int64_t id) const {
  const auto H = static_cast<int64_t>(last_.size());
  return static_cast<size_t>(((id % H) + H) % H);
}

float StreamingFrequency::log_p(size_t h) const { return static_cast<float>(-std::log(std::max(gap_[h], 1.0))); }

std::vector<float> StreamingFrequency::update(const int64_t* ids, int64_t n, int64_t step) {
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    const size_t h = bucket(ids[i]);
    if (last_[h] >= 0) {
      double seen = static_cast<double>(step) - last_[h];
      if (seen > 0) gap_[h] = (1 - alpha_) * gap_[h] + alpha_ * seen;
    }
    last_[h] = static_cast<double>(step);
    out[static_cast<size_t>(i)] = log_p(h);
  }
  return out;
}

std::vector<float> StreamingFrequency::estimate(const int64_t* ids, int64_t n) const {
  std::vector<float> out(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = log_p(bucket(ids[i]));
  return out;
}

}  // namespace recsys::losses

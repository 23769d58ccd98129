// twotower_ssl: the retrieval model with the self-supervised item-tower objective (WORKLOADS.md),
// through models::TwoTower, losses::inbatch_softmax_mean / losses::contrastive_mean, the registered
// `complementary` augmentation and train::Optimizer.
#include <ATen/CPUGeneratorImpl.h>

#include <random>

#include "augment/augmentation.h"
#include "framework/bench/bench.h"
#include "framework/bench/workloads.h"
#include "framework/data/schema.h"
#include "framework/train/branches.h"
#include "framework/train/optimizer.h"
#include "losses/retrieval.h"
#include "models/two_tower/two_tower.h"

namespace recsys::bench {

namespace {

using models::EmbeddingFeature;
using models::Pooling;

/// Rows of every table: the vocabulary plus padding (0) and the default index (1).
int64_t rows_of(int64_t vocab) { return vocab + data::kFirstIndex; }

struct TwoTowerBatch {
  std::vector<torch::Tensor> user, item, ssl_item;
  torch::Tensor log_q, item_ids;
  /// The positives' features, ids and log q on the CPU (what models::distinct_positives reads).
  std::vector<torch::Tensor> item_host;
  torch::Tensor item_ids_host, log_q_host;
};

/// SplitMix64's finaliser: a well-mixed 64-bit hash.
uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

class TwoTowerSsl : public Workload {
 public:
  TwoTowerSsl(const TwoTowerShapes& s, torch::Device device, uint64_t seed, TwoTowerPaths paths)
      : s_(s),
        device_(device),
        paths_(paths),
        gen_(torch::make_generator<at::CPUGeneratorImpl>(seed)) {
    const int64_t d = s.dim;
    std::vector<EmbeddingFeature> user = {{"user_id", rows_of(s.users), d, Pooling::kMean, false},
                                          {"history", rows_of(s.items), d, Pooling::kMean, false},
                                          {"age", rows_of(s.ages), d, Pooling::kMean, false},
                                          {"gender", rows_of(s.genders), d, Pooling::kMean, false}};
    std::vector<EmbeddingFeature> item = {
        {"item_id", rows_of(s.items), d, Pooling::kMean, false},
        {"categories", rows_of(s.categories), d, Pooling::kMean, false},
        {"keywords", rows_of(s.keywords), d, Pooling::kMean, false},
        {"city", rows_of(s.cities), d, Pooling::kMean, false}};
    torch::manual_seed(seed);
    model_ = models::TwoTower(models::TwoTowerOptions(
        models::TowerOptions(user, s.hidden)
            .project_small_vocabularies(paths_.project_small_vocabularies)
            .distinct_bags(paths_.distinct_bags)
            .fused_mlp(paths_.fused_mlp)
            .fused_lookup(paths_.fused_lookup),
        models::TowerOptions(item, s.hidden)
            .project_small_vocabularies(paths_.project_small_vocabularies)
            .distinct_bags(paths_.distinct_bags)
            .fused_mlp(paths_.fused_mlp)
            .fused_lookup(paths_.fused_lookup)));
    model_->to(device);
    params_ = model_->parameters();
    train::OptimizerOptions opt;
    opt.fused = paths_.fused_optimizer;
    optimizer_ = std::make_unique<train::Optimizer>(params_, opt);

    augment::register_builtin_augmentations();
    config::Json cfg = config::Json::object();
    config::Reader reader(cfg);
    augment::AugmentContext ctx;
    for (auto& f : item)
      ctx.specs.push_back({f.name,
                           f.name == "categories" || f.name == "keywords"
                               ? data::FeatureKind::kMulti
                               : data::FeatureKind::kSingle,
                           f.vocab_size, 1});
    augmentation_ = augment::augmentations().get("complementary")(reader)(ctx);

    std::mt19937_64 rng(seed);
    ZipfSampler zipf(s.items, 1.1);
    auto uniform = [&](int64_t vocab) {
      return std::uniform_int_distribution<int64_t>(data::kFirstIndex, rows_of(vocab) - 1)(rng);
    };
    auto ids = [&](int64_t rows, int64_t cols, auto draw) {
      auto t = torch::empty({rows, cols}, torch::kInt64);
      auto* p = t.data_ptr<int64_t>();
      for (int64_t i = 0; i < rows * cols; ++i) p[i] = draw();
      return t;
    };
    // An item's categories, keywords and city are attributes of the item, as in a catalogue:
    // drawn uniformly, once per item id (from a hash of the id, so no table is stored), and the
    // same in every row that holds the item.
    auto item_features = [&](int64_t rows, torch::Tensor item_id) {
      const int64_t* id = item_id.data_ptr<int64_t>();
      auto attribute = [&](int64_t feature, int64_t width, int64_t vocab) {
        auto t = torch::empty({rows, width}, torch::kInt64);
        auto* p = t.data_ptr<int64_t>();
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t k = 0; k < width; ++k) {
            const uint64_t h = mix64(seed ^ mix64(static_cast<uint64_t>(id[r])) ^
                                     mix64((static_cast<uint64_t>(feature) << 32) + static_cast<uint64_t>(k)));
            p[r * width + k] = data::kFirstIndex + static_cast<int64_t>(h % static_cast<uint64_t>(vocab));
          }
        return t;
      };
      return std::vector<torch::Tensor>{item_id, attribute(1, s.category_bag, s.categories),
                                        attribute(2, s.keyword_bag, s.keywords),
                                        attribute(3, 1, s.cities)};
    };
    auto to_device = [&](std::vector<torch::Tensor> v) {
      for (auto& t : v) t = t.to(device);
      return v;
    };
    for (int k = 0; k < kBatches; ++k) {
      TwoTowerBatch b;
      const int64_t n = s.batch, m = s.ssl_batch;
      b.user = to_device({ids(n, 1, [&] { return uniform(s.users); }),
                          ids(n, s.history, [&] { return data::kFirstIndex + zipf(rng); }),
                          ids(n, 1, [&] { return uniform(s.ages); }),
                          ids(n, 1, [&] { return uniform(s.genders); })});
      auto item_id = torch::empty({n, 1}, torch::kInt64);
      auto log_q = torch::empty({n}, torch::kFloat32);
      for (int64_t i = 0; i < n; ++i) {
        int64_t rank = zipf(rng);
        item_id.data_ptr<int64_t>()[i] = data::kFirstIndex + rank;
        log_q.data_ptr<float>()[i] = static_cast<float>(zipf.log_prob(rank));
      }
      b.item_host = item_features(n, item_id);
      b.item_ids_host = item_id.reshape({n});
      b.log_q_host = log_q;
      b.item = to_device(b.item_host);
      b.item_ids = b.item_ids_host.to(device);
      b.log_q = log_q.to(device);
      // Kept on the CPU: the augmentation draws its masks from a CPU generator.
      b.ssl_item = item_features(m, ids(m, 1, [&] { return uniform(s.items); }));
      batches_.push_back(std::move(b));
    }
  }

  std::string name() const override { return "twotower_ssl"; }
  int64_t examples_per_step() const override { return s_.batch; }
  std::string step_structure() const override { return staged_ ? "staged" : "one graph"; }

  torch::Tensor step() override {
    const auto& b = batches_[next_++ % batches_.size()];
    begin_step();
    optimizer_->zero_grad();
    staged_ = paths_.parallel_branches && device_.is_cpu() && train::side_by_side_at(2);
    if (staged_) {
      // train::run_staged: the user tower with the positives on one thread and both SSL views
      // on the other; then both losses on both threads; then the towers' backwards side by
      // side. The phases overlap: the forward phase holds all three stages.
      Positives p;
      auto loss = train::run_staged(
          {[&] {
             p = positives(b);
             return std::vector<torch::Tensor>{model_->user(b.user), model_->item(p.features)};
           },
           [&] {
             auto views = ssl_views(b);
             return item_tower({&views.v1, &views.v2});
           }},
          [&](const std::vector<std::vector<torch::Tensor>>& out) {
            return main_loss(out[0][0], out[0][1], p) + s_.ssl_weight * ssl_loss(out[1][0], out[1][1]);
          },
          params_, /*side_by_side=*/true);
      end_phase(0);
      end_phase(1);
      optimizer_->step();
      end_phase(2);
      return loss;
    }
    auto views = ssl_views(b);
    Positives p = positives(b);
    auto a = model_->user(b.user);
    auto items = item_tower({&p.features, &views.v1, &views.v2});
    return finish_step(main_loss(a, items[0], p) + s_.ssl_weight * ssl_loss(items[1], items[2]),
                       *optimizer_);
  }

  struct SslViews {
    std::vector<torch::Tensor> v1, v2;
  };
  /// The batch's two SSL views (the augmentation draws its masks from gen_), on the device.
  SslViews ssl_views(const TwoTowerBatch& b) {
    auto [v1, v2] = augmentation_->views(b.ssl_item, gen_);
    if (!device_.is_cpu()) {
      for (auto& t : v1) t = t.to(device_, /*non_blocking=*/true);
      for (auto& t : v2) t = t.to(device_, /*non_blocking=*/true);
    }
    return {std::move(v1), std::move(v2)};
  }

  struct Positives {
    std::vector<torch::Tensor> features;
    torch::Tensor targets, log_q, item_ids;
  };
  /// The positives, once per distinct item (rows equal in every feature, id and log q) with
  /// paths_.distinct_items.
  Positives positives(const TwoTowerBatch& b) const {
    Positives p{b.item, {}, b.log_q, b.item_ids};
    if (paths_.distinct_items) {
      auto u = *models::distinct_positives(b.item_host, b.item_ids_host, b.log_q_host);
      auto first = u.first.to(device_), inverse = u.inverse.to(device_);
      for (auto& t : p.features) t = t.index_select(0, first);
      p.targets = inverse;
      p.log_q = p.log_q.index_select(0, first);
      p.item_ids = p.item_ids.index_select(0, first);
    }
    return p;
  }

  /// The item tower on each feature set. With paths_.batched_item_tower one pass over the sets'
  /// concatenated rows: the same function row by row, fewer (and larger) operations. One split
  /// gives the parts back (its backward concatenates their gradients; narrows would each
  /// zero-fill a full-size gradient and the engine would add them).
  std::vector<torch::Tensor> item_tower(const std::vector<const std::vector<torch::Tensor>*>& sets) {
    std::vector<torch::Tensor> out;
    if (!paths_.batched_item_tower) {
      for (const auto* set : sets) out.push_back(model_->item(*set));
      return out;
    }
    std::vector<torch::Tensor> all(sets.front()->size());
    std::vector<int64_t> rows;
    for (const auto* set : sets) rows.push_back(set->front().size(0));
    for (size_t f = 0; f < all.size(); ++f) {
      std::vector<torch::Tensor> parts;
      for (const auto* set : sets) parts.push_back((*set)[f]);
      all[f] = torch::cat(parts, 0);
    }
    auto parts = model_->item(all).split_with_sizes(rows, 0);
    return {parts.begin(), parts.end()};
  }

  /// The in-batch softmax loss of users `a` against the positives' item-tower output `pos`.
  torch::Tensor main_loss(const torch::Tensor& a, const torch::Tensor& pos, const Positives& p) const {
    const auto softmax = losses::InBatchSoftmaxOptions()
                             .temperature(s_.temperature)
                             .remove_accidental_hits(false)
                             .fused_kernel(paths_.cross_entropy_kernel)
                             .fused_mean(paths_.fused_softmax_mean);
    return p.targets.defined()
               ? losses::inbatch_softmax_mean_distinct(a, pos, p.targets, p.log_q, p.item_ids, softmax)
               : losses::inbatch_softmax_mean(a, pos, p.log_q, p.item_ids, softmax);
  }

  /// The SSL contrastive loss of the views' item-tower outputs.
  torch::Tensor ssl_loss(const torch::Tensor& z1, const torch::Tensor& z2) const {
    return losses::contrastive_mean(z1, z2, s_.temperature, /*symmetric=*/false,
                                    paths_.cross_entropy_kernel, paths_.fused_softmax_mean);
  }

  double flops_per_example() const override {
    const double n = static_cast<double>(s_.batch), m = static_cast<double>(s_.ssl_batch);
    const double D = static_cast<double>(s_.hidden.back());
    const int64_t in = 4 * s_.dim;
    double fwd = mlp_forward_flops(in, s_.hidden, n)            // user tower
                 + mlp_forward_flops(in, s_.hidden, n + 2 * m)  // item tower: positives + 2 views
                 + 2 * n * n * D + 2 * m * m * D;               // the two logit matrices
    return 3 * fwd / n;
  }
  double param_bytes() const override { return tensor_bytes(params_); }
  double optimizer_state_bytes() const override { return 2 * tensor_bytes(params_); }
  double activation_bytes_estimate() const override {
    // Saved for backward, float32: per tower row the gathered embeddings (the history bag at full
    // width), the concatenation, each layer's pre- and post-activation; plus the logit matrices
    // and their softmax.
    const double n = static_cast<double>(s_.batch), m = static_cast<double>(s_.ssl_batch);
    double widths = 4.0 * s_.dim;
    for (auto h : s_.hidden) widths += 2.0 * h;
    double user_rows = n * (widths + (s_.history + 3) * s_.dim);
    double item_rows = (n + 2 * m) * (widths + (s_.category_bag + s_.keyword_bag + 2) * s_.dim);
    return 4.0 * (user_rows + item_rows + 2 * n * n + 2 * m * m);
  }

 private:
  static constexpr int kBatches = 8;
  TwoTowerShapes s_;
  torch::Device device_;
  TwoTowerPaths paths_;
  torch::Generator gen_;
  models::TwoTower model_{nullptr};
  std::vector<torch::Tensor> params_;
  std::unique_ptr<train::Optimizer> optimizer_;
  std::shared_ptr<augment::Augmentation> augmentation_;
  std::vector<TwoTowerBatch> batches_;
  size_t next_ = 0;
  bool staged_ = false;  // the last step ran through train::run_staged
};

}  // namespace

std::unique_ptr<Workload> make_twotower_ssl(const TwoTowerShapes& s, torch::Device device,
                                            uint64_t seed, TwoTowerPaths paths) {
  return std::make_unique<TwoTowerSsl>(s, device, seed, paths);
}

std::unique_ptr<Workload> make_twotower_ssl(const TwoTowerShapes& s, torch::Device device,
                                            uint64_t seed) {
  return make_twotower_ssl(s, device, seed, TwoTowerPaths{});
}

}  // namespace recsys::bench

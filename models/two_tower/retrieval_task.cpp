#include "models/two_tower/retrieval_task.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "augment/augmentation.h"
#include "augment/masking.h"
#include "framework/data/retrieval_sources.h"
#include "framework/eval/ranking.h"
#include "framework/train/branches.h"
#include "framework/train/prefetch.h"
#include "losses/retrieval.h"
#include "models/two_tower/two_tower.h"

namespace recsys::models {
namespace {

using config::Reader;
using data::RetrievalData;
using torch::Tensor;

// ---------------------------------------------------------------- options

// Smallest temperature of either loss (see parse_options).
constexpr double kMinTemperature = 1e-6;

struct ModelOptions {
  std::vector<std::string> user_features;  // empty = every user feature plus the history
  std::vector<std::string> item_features;  // empty = every item feature
  int64_t embedding_dim = 32;
  std::vector<int64_t> hidden{128, 64};
  std::string activation = "relu";
  std::string pooling = "mean";
  double dropout = 0.0;
  int64_t history_length = 20;
  bool sparse = true;
  bool project_small_vocabularies = true;
  bool batch_item_passes = true;
  bool distinct_positives = true;
  bool staged_step = true;
};

enum class LogQ { kNone, kCounts, kStreaming };

struct LossOptions {
  losses::InBatchSoftmaxOptions softmax;
  LogQ logq = LogQ::kCounts;
  int64_t mixed_negatives = 0;
  int64_t streaming_buckets = 1 << 20;
  double streaming_alpha = 0.05;
  double spread_out = 0.0;  // weight of spread-out regularisation on in-batch item embeddings
  /// Data-parallel runs: every rank's in-batch items (and extra negatives) are negatives for every
  /// rank's users, so N ranks of batch B see the N x B candidates of one process with batch N x B.
  bool cross_rank_negatives = true;
};

enum class SslSampling { kUniform, kPopularity, kMixture };

struct SslOptions {
  double alpha = 0.0;
  double temperature = 0.1;
  int64_t batch_size = 0;  // 0 = the main batch size
  SslSampling sampling = SslSampling::kUniform;
  double mixture_uniform = 0.5;
  std::vector<int64_t> projection;  // optional projection head widths
  bool symmetric = false;
};

struct EvalOptions {
  std::vector<int64_t> ks{10, 50};
  double head_fraction = 0.2;
  int64_t batch_size = 512;
};

struct Options {
  std::string source_type;
  data::RetrievalSource source;
  data::SplitOptions split;
  ModelOptions model;
  LossOptions loss;
  SslOptions ssl;
  std::function<augment::Chain(const augment::AugmentContext&)> ssl_chain, main_chain;
  EvalOptions eval;
  /// train.evaluate_test: whether the run reports the test split (which then must not be empty).
  bool evaluate_test = true;
};

ModelOptions parse_model(const Reader& r) {
  ModelOptions m;
  r.choice("type", "two_tower", {"two_tower"});
  m.user_features = r.get<std::vector<std::string>>("user_features", m.user_features);
  m.item_features = r.get<std::vector<std::string>>("item_features", m.item_features);
  m.embedding_dim = r.get<int64_t>("embedding_dim", m.embedding_dim);
  m.hidden = r.get<std::vector<int64_t>>("hidden", m.hidden);
  m.activation = r.choice("activation", m.activation, {"relu", "tanh", "sigmoid", "prelu", "dice", "none"});
  m.pooling = r.choice("pooling", m.pooling, {"mean", "sum"});
  m.dropout = r.get<double>("dropout", m.dropout);
  m.history_length = r.get<int64_t>("history_length", m.history_length);
  m.sparse = r.get<bool>("sparse_embeddings", m.sparse);
  m.project_small_vocabularies =
      r.get<bool>("project_small_vocabularies", m.project_small_vocabularies);
  m.batch_item_passes = r.get<bool>("batch_item_passes", m.batch_item_passes);
  m.distinct_positives = r.get<bool>("distinct_positives", m.distinct_positives);
  m.staged_step = r.get<bool>("staged_step", m.staged_step);
  if (m.embedding_dim < 1) r.fail("embedding_dim", "must be at least 1");
  if (m.hidden.empty()) r.fail("hidden", "give at least one layer width");
  for (auto h : m.hidden)
    if (h < 1) r.fail("hidden", "layer widths must be positive");
  if (m.dropout < 0 || m.dropout >= 1) r.fail("dropout", "must be in [0, 1)");
  if (m.history_length < 1) r.fail("history_length", "must be at least 1");
  // Each feature owns an embedding table named after it: a repeated name would collide there.
  for (const char* key : {"user_features", "item_features"}) {
    const auto& names = std::string(key) == "user_features" ? m.user_features : m.item_features;
    for (size_t i = 0; i < names.size(); ++i)
      for (size_t j = 0; j < i; ++j)
        if (names[i] == names[j]) r.fail(key, "feature '" + names[i] + "' is listed twice");
  }
  return m;
}

Options parse_options(const Reader& root) {
  Options o;
  auto d = root.child("data");
  o.source_type = d.get<std::string>("type", "synthetic");
  o.source = data::retrieval_sources().get(o.source_type, d.path_of("type"))(d);
  o.split = data::parse_split(d.child("split"));
  o.model = parse_model(root.child("model"));

  auto l = root.child("loss");
  l.choice("type", "inbatch_softmax", {"inbatch_softmax"});
  o.loss.softmax.temperature(l.get<double>("temperature", 0.05));
  o.loss.softmax.remove_accidental_hits(l.get<bool>("remove_accidental_hits", true));
  std::string logq = l.choice("logq", "counts", {"none", "counts", "streaming"});
  o.loss.logq = logq == "none" ? LogQ::kNone : logq == "counts" ? LogQ::kCounts : LogQ::kStreaming;
  o.loss.mixed_negatives = l.get<int64_t>("mixed_negatives", 0);
  auto st = l.child("streaming");
  o.loss.streaming_buckets = st.get<int64_t>("buckets", o.loss.streaming_buckets);
  o.loss.streaming_alpha = st.get<double>("alpha", o.loss.streaming_alpha);
  o.loss.spread_out = l.get<double>("spread_out", 0.0);
  o.loss.cross_rank_negatives = l.get<bool>("cross_rank_negatives", o.loss.cross_rank_negatives);
  // Scores are cosines over the temperature; below 1e-6 they pass 1e6 in magnitude and would
  // approach the -1e9 that masks accidental hits.
  if (!(o.loss.softmax.temperature() >= kMinTemperature))
    l.fail("temperature", "must be at least 1e-6 (scores are cosines / temperature)");
  if (o.loss.mixed_negatives < 0) l.fail("mixed_negatives", "must be >= 0");
  if (o.loss.streaming_buckets < 1) st.fail("buckets", "must be at least 1");
  if (o.loss.streaming_alpha <= 0 || o.loss.streaming_alpha > 1) st.fail("alpha", "must be in (0, 1]");
  if (o.loss.spread_out < 0) l.fail("spread_out", "must be >= 0");
  o.main_chain = augment::parse_chain(l, "item_augment");

  auto s = root.child("ssl");
  o.ssl.alpha = s.get<double>("alpha", 0.0);
  o.ssl.temperature = s.get<double>("temperature", o.ssl.temperature);
  o.ssl.batch_size = s.get<int64_t>("batch_size", 0);
  std::string sampling = s.choice("sampling", "uniform", {"uniform", "popularity", "mixture"});
  o.ssl.sampling = sampling == "uniform" ? SslSampling::kUniform
                   : sampling == "popularity" ? SslSampling::kPopularity : SslSampling::kMixture;
  o.ssl.mixture_uniform = s.get<double>("mixture_uniform", o.ssl.mixture_uniform);
  o.ssl.projection = s.get<std::vector<int64_t>>("projection", {});
  o.ssl.symmetric = s.get<bool>("symmetric", false);
  o.ssl_chain = augment::parse_chain(s, "augment");
  if (o.ssl.alpha < 0) s.fail("alpha", "must be >= 0 (0 disables the SSL loss)");
  if (!(o.ssl.temperature >= kMinTemperature))
    s.fail("temperature", "must be at least 1e-6 (scores are cosines / temperature)");
  if (o.ssl.batch_size < 0 || o.ssl.batch_size == 1) s.fail("batch_size", "must be 0 (= train.batch_size) or at least 2");
  if (o.ssl.mixture_uniform < 0 || o.ssl.mixture_uniform > 1) s.fail("mixture_uniform", "must be in [0, 1]");
  if (o.ssl.alpha > 0 && s.children("augment").empty())
    s.fail("augment", "ssl.alpha > 0 needs a non-empty augmentation chain (an empty one gives two identical views)");
  for (auto w : o.ssl.projection)
    if (w < 1) s.fail("projection", "layer widths must be positive");

  auto e = root.child("eval");
  o.eval.ks = e.get<std::vector<int64_t>>("ks", o.eval.ks);
  o.eval.head_fraction = e.get<double>("head_fraction", o.eval.head_fraction);
  o.eval.batch_size = e.get<int64_t>("batch_size", o.eval.batch_size);
  if (o.eval.ks.empty()) e.fail("ks", "give at least one K");
  for (auto k : o.eval.ks)
    if (k < 1) e.fail("ks", "every K must be at least 1");
  if (o.eval.head_fraction <= 0 || o.eval.head_fraction >= 1) e.fail("head_fraction", "must be in (0, 1)");
  if (o.eval.batch_size < 1) e.fail("batch_size", "must be at least 1");
  // The trainer owns this key (and has validated it by now); the task reads it as well so that
  // it requires a non-empty test split only when the run evaluates one.
  o.evaluate_test =
      root.child("train").get<bool>("evaluate_test", train::TrainerOptions().evaluate_test);
  return o;
}

// ---------------------------------------------------------------- batches

struct RetrievalBatch : train::Batch {
  std::vector<Tensor> user_inputs, item_inputs, extra_inputs, ssl_view1, ssl_view2;
  Tensor item_ids, log_q;
  /// model.distinct_positives: row k's positive is distinct row targets[k] of item_inputs
  /// (item_ids and log_q then hold one entry per distinct column); undefined = one per row.
  Tensor targets;
  int64_t n = 0;
  int64_t size() const override { return n; }
};

void move_all(std::vector<Tensor>& ts, torch::Device device) {
  for (auto& t : ts) t = t.to(device, /*non_blocking=*/true);
}

class RetrievalTask : public train::Task {
 public:
  RetrievalTask(Options options, uint64_t seed) : o_(std::move(options)), seed_(seed) {
    data_ = o_.source();
    if (data_.num_items() < 2 || data_.num_users() < 1)
      throw DataError(o_.source_type, 0, "the corpus needs at least 2 items and 1 user");
    data::split_by_time(data_, o_.split);
    check_eval_splits();
    build_columns();
    build_examples();
    build_model();
    slices_ = eval::head_tail_slices(data_.item_clicks, o_.eval.head_fraction);
    total_clicks_ = std::accumulate(data_.item_clicks.begin(), data_.item_clicks.end(), int64_t{0});
    if (examples_.empty()) throw DataError(o_.source_type, 0, "no training positives after the split");
    augment::AugmentContext ctx;
    for (auto c : item_cols_) ctx.specs.push_back(data_.items.spec(c));
    ctx.table_columns = item_cols_;
    ctx.data = &data_;
    ssl_chain_ = o_.ssl_chain(ctx);
    main_chain_ = o_.main_chain(ctx);
    spdlog::info("retrieval data {}: {} users, {} items, {} training positives; ssl alpha {} ({}), item augment: {}",
                 data_.source, data_.num_users(), data_.num_items(), examples_.size(), o_.ssl.alpha,
                 ssl_chain_.describe(), main_chain_.describe());
  }

  torch::nn::Module& module() override { return *root_; }
  void to(torch::Device device) override {
    device_ = device;
    root_->to(device);
  }
  int64_t train_examples() const override { return static_cast<int64_t>(examples_.size()); }
  std::pair<std::string, bool> selection_metric() const override {
    auto k = *std::max_element(o_.eval.ks.begin(), o_.eval.ks.end());
    return {"recall@" + std::to_string(k), true};
  }
  void set_distributed(const dist::Context& ctx) override { dist_ = ctx; }
  std::vector<std::string> metric_names() const override {
    std::vector<std::string> out{"users", "test_points", "test_points/head", "test_points/tail"};
    for (auto k : o_.eval.ks)
      for (const char* m : {"recall@", "ndcg@"})
        for (const char* slice : {"", "/head", "/tail"}) out.push_back(m + std::to_string(k) + slice);
    return out;
  }

  std::unique_ptr<train::BatchStream> train_stream(const train::StreamOptions& so) override {
    auto order = std::make_shared<std::vector<int64_t>>(examples_.size());
    std::iota(order->begin(), order->end(), 0);
    auto rng = std::make_shared<std::mt19937_64>(so.seed * 1000003ULL + static_cast<uint64_t>(so.epoch) + 17);
    std::shuffle(order->begin(), order->end(), *rng);
    auto gen = std::make_shared<torch::Generator>(at::detail::createCPUGenerator(rng->operator()()));
    auto cursor = std::make_shared<size_t>(0);
    const int64_t B = so.batch_size;
    int64_t base_step = so.epoch * ((static_cast<int64_t>(examples_.size()) + B - 1) / B);
    auto step = std::make_shared<int64_t>(base_step);
    return std::make_unique<train::PrefetchStream>(
        [this, order, rng, gen, cursor, B, step]() -> std::unique_ptr<train::Batch> {
          // Drop a final batch too small to hold in-batch negatives.
          if (*cursor + 2 > order->size()) return nullptr;
          size_t end = std::min(order->size(), *cursor + static_cast<size_t>(B));
          std::vector<int64_t> rows(order->begin() + static_cast<long>(*cursor), order->begin() + static_cast<long>(end));
          *cursor = end;
          return make_batch(rows, *rng, *gen, (*step)++);
        },
        so.prefetch);
  }

  /// Whether the training loss sees each row of a tower pass alone: towers that are a function of
  /// each row (no dropout masks, no Dice batch statistics) and columns not shared across ranks.
  /// Then rows may be merged (distinct positives) or passes split (the staged step).
  bool rows_independent() const {
    return o_.model.dropout == 0 && o_.model.activation != "dice" &&
           !(o_.loss.cross_rank_negatives && dist_.active());
  }

  /// model.distinct_positives, applied while the batch is made (off the training thread): the
  /// batch's positives once per distinct item (equal features, id and log q), row k's positive
  /// becoming distinct row targets[k]; log_q and item_ids keep one entry per column (the
  /// distinct positives', then the extra negatives'). Applies where the item tower is a function
  /// of each row alone in training (no dropout, no Dice batch statistics) and the columns are
  /// not shared across ranks; leaves the batch as it is otherwise or when every positive is
  /// distinct.
  void make_positives_distinct(RetrievalBatch& b) const {
    if (!o_.model.distinct_positives || !rows_independent()) return;
    const int64_t n = b.n;
    auto u = models::distinct_positives(b.item_inputs, b.item_ids.narrow(0, 0, n), b.log_q.narrow(0, 0, n));
    if (!u || u->first.size(0) == n) return;
    for (auto& t : b.item_inputs) t = t.index_select(0, u->first);
    b.log_q = losses::positive_columns(b.log_q, n, u->first);
    b.item_ids = losses::positive_columns(b.item_ids, n, u->first);
    b.targets = u->inverse;
  }

  train::StepOutput forward(train::Batch& base, torch::Generator&) override {
    auto& b = static_cast<RetrievalBatch&>(base);
    move_all(b.user_inputs, device_);
    move_all(b.item_inputs, device_);
    auto u = model_->user(b.user_inputs);
    // Every item-tower input of the step: positives, extra negatives, both SSL views.
    std::vector<std::vector<Tensor>*> passes{&b.item_inputs};
    if (!b.extra_inputs.empty()) passes.push_back(&b.extra_inputs);
    const bool ssl = o_.ssl.alpha > 0;
    if (ssl) {
      passes.push_back(&b.ssl_view1);
      passes.push_back(&b.ssl_view2);
    }
    for (size_t k = 1; k < passes.size(); ++k) move_all(*passes[k], device_);
    auto outputs = item_passes(passes);
    Tensor extra = b.extra_inputs.empty() ? Tensor() : outputs[1];
    Tensor z1 = ssl ? outputs[outputs.size() - 2] : Tensor();
    Tensor z2 = ssl ? outputs[outputs.size() - 1] : Tensor();
    return losses_of(b, u, outputs[0], extra, z1, z2);
  }

  /// Whether forward_backward takes the step (model.staged_step): an SSL objective to put beside
  /// the main one, towers whose rows are independent and draw nothing random (no dropout, no
  /// Dice batch statistics), the CPU, no other ranks' rows inside the loss, and a thread count
  /// where train::run_staged goes side by side.
  bool staged() const {
    return o_.model.staged_step && o_.ssl.alpha > 0 && rows_independent() && device_.is_cpu() &&
           train::side_by_side_at(2);
  }

  /// The step through train::run_staged: the user tower with the positives (and extra
  /// negatives) on one thread, both SSL views on the other, then the losses on all threads,
  /// then the towers' backwards side by side. Same function and gradients as forward() +
  /// backward(), up to the order of floating-point additions.
  bool forward_backward(train::Batch& base, torch::Generator&, const std::vector<Tensor>& params,
                        train::StepOutput& out) override {
    if (!staged()) return false;
    auto& b = static_cast<RetrievalBatch&>(base);
    const bool has_extra = !b.extra_inputs.empty();
    auto loss = train::run_staged(
        {[&] {
           std::vector<std::vector<Tensor>*> sets{&b.item_inputs};
           if (has_extra) sets.push_back(&b.extra_inputs);
           auto items = item_passes(sets);
           std::vector<Tensor> o{model_->user(b.user_inputs)};
           o.insert(o.end(), items.begin(), items.end());
           return o;
         },
         [&] { return item_passes({&b.ssl_view1, &b.ssl_view2}); }},
        [&](const std::vector<std::vector<Tensor>>& o) {
          out = losses_of(b, o[0][0], o[0][1], has_extra ? o[0][2] : Tensor(), o[1][0], o[1][1]);
          return out.loss;
        },
        params, /*side_by_side=*/true);
    out.loss = loss;
    return true;
  }

  /// The step's loss and its named parts from the towers' outputs: users u, positives i, extra
  /// negatives (or undefined), the SSL views z1, z2 (undefined without SSL).
  train::StepOutput losses_of(RetrievalBatch& b, const Tensor& u, const Tensor& i, Tensor extra,
                              Tensor z1, Tensor z2) {
    Tensor log_q = b.log_q.to(device_), item_ids = b.item_ids.to(device_);
    Tensor targets = b.targets.defined() ? b.targets.to(device_) : Tensor();
    if (o_.loss.cross_rank_negatives && dist_.active()) {
      // The other ranks' candidates (positives, then extra negatives) appended as columns; this
      // rank's positives stay first, so row k's positive is still column k. Full batches only,
      // so every rank's block has the same shape.
      auto candidates = extra.defined() ? torch::cat({i, extra}) : i;
      const int64_t C = candidates.size(0);
      std::vector<Tensor> columns{}, columns_q{log_q}, columns_ids{item_ids};
      if (extra.defined()) columns.push_back(extra);
      columns.push_back(other_ranks(dist_.all_gather_rows(candidates), C));
      columns_q.push_back(other_ranks(dist_.all_gather_rows(log_q), C));
      columns_ids.push_back(other_ranks(dist_.all_gather_rows(item_ids), C));
      extra = torch::cat(columns);
      log_q = torch::cat(columns_q);
      item_ids = torch::cat(columns_ids);
    }
    auto main = targets.defined() ? losses::inbatch_softmax_mean_distinct(u, i, targets, log_q, item_ids,
                                                                          o_.loss.softmax, extra)
                                  : losses::inbatch_softmax_mean(u, i, log_q, item_ids, o_.loss.softmax, extra);
    train::StepOutput out;
    out.loss = main;
    out.parts["main"] = main.detach();
    if (z1.defined()) {
      if (projection_) {
        z1 = torch::nn::functional::normalize(projection_->forward(z1), torch::nn::functional::NormalizeFuncOptions().dim(1));
        z2 = torch::nn::functional::normalize(projection_->forward(z2), torch::nn::functional::NormalizeFuncOptions().dim(1));
      }
      Tensor extra2, extra1;
      if (o_.loss.cross_rank_negatives && dist_.active()) {
        // Every rank's SSL items are negatives for every rank's views too, so N ranks contrast
        // the N x m items of one process whose SSL batch is N x m.
        extra2 = other_ranks(dist_.all_gather_rows(z2), z2.size(0));
        if (o_.ssl.symmetric) extra1 = other_ranks(dist_.all_gather_rows(z1), z1.size(0));
      }
      auto ssl = losses::contrastive_mean(z1, z2, o_.ssl.temperature, o_.ssl.symmetric, true, true, extra2, extra1);
      out.loss = out.loss + o_.ssl.alpha * ssl;
      out.parts["ssl"] = ssl.detach();
    }
    if (o_.loss.spread_out > 0) {
      // Over the batch's positives row by row (repeats included), as without distinct positives.
      auto so = losses::spread_out(targets.defined() ? i.index_select(0, targets) : i);
      out.loss = out.loss + o_.loss.spread_out * so;
      out.parts["spread_out"] = so.detach();
    }
    return out;
  }

  /// The rows of every other rank in an all_gather_rows result of `rows` rows per rank, in rank
  /// order.
  Tensor other_ranks(const Tensor& all, int64_t rows) const {
    std::vector<Tensor> parts;
    for (int64_t r = 0; r < dist_.world(); ++r)
      if (r != dist_.rank()) parts.push_back(all.narrow(0, r * rows, rows));
    return torch::cat(parts);
  }

  /// The item tower on each input set. With model.batch_item_passes, when every set's features
  /// have the same widths and types as the first set's, all go through as one pass over their
  /// concatenated rows (the tower is row-wise: the same function, fewer and larger operations,
  /// and the first layer's distinct-bag rewrite sees the SSL views' shared bags together); the
  /// outputs are split back. Otherwise one pass per set.
  std::vector<Tensor> item_passes(const std::vector<std::vector<Tensor>*>& sets) {
    bool batch = o_.model.batch_item_passes && sets.size() > 1;
    for (size_t k = 1; batch && k < sets.size(); ++k) {
      const auto &a = *sets[0], &c = *sets[k];
      batch = a.size() == c.size();
      for (size_t f = 0; batch && f < a.size(); ++f)
        batch = a[f].dim() == c[f].dim() && a[f].scalar_type() == c[f].scalar_type() &&
                a[f].sizes().slice(1) == c[f].sizes().slice(1);
    }
    std::vector<Tensor> out;
    if (!batch) {
      for (auto* set : sets) out.push_back(model_->item(*set));
      return out;
    }
    std::vector<Tensor> all(sets[0]->size());
    std::vector<int64_t> rows;
    for (auto* set : sets) rows.push_back(set->front().size(0));
    for (size_t f = 0; f < all.size(); ++f) {
      std::vector<Tensor> parts;
      for (auto* set : sets) parts.push_back((*set)[f]);
      all[f] = torch::cat(parts, 0);
    }
    // One split: its backward concatenates the parts' gradients.
    auto parts = model_->item(all).split_with_sizes(rows, 0);
    return {parts.begin(), parts.end()};
  }

  train::Metrics evaluate(const std::string& split) override {
    torch::NoGradGuard no_grad;
    root_->eval();
    const bool test = split == "test";
    eval::RankingAccumulator acc(o_.eval.ks, slices_, {"head", "tail"});
    rank_split(test, acc.max_k(), false, [&](int64_t u, const int64_t* top, const float*, int64_t K) {
      acc.add(top, K, (test ? data_.test : data_.valid)[u]);
    });
    root_->train();
    return acc.result();
  }

  std::vector<train::ExportKind> export_kinds() const override {
    return {{"item_embeddings", "the item tower's output for every item of the catalogue", false},
            {"user_embeddings",
             "the user tower's output for every user, with the history known before the split", true},
            {"recommendations",
             "the top k items of each user with held-out items in the split (of every user with "
             "--all-users; known items excluded, as in evaluation; fewer where fewer remain), their "
             "scores and whether each is held out",
             true, true}};
  }

  train::ExportTable export_table(const train::ExportRequest& request) override {
    torch::NoGradGuard no_grad;
    root_->eval();
    const auto& kind = request.kind;
    const bool test = request.split == "test";
    train::ExportTable t;
    if (kind == "item_embeddings") {
      t.key_columns = {"item", "name"};
      for (int64_t i = 0; i < data_.num_items(); ++i) t.keys.push_back({item_key(i), data_.item_names[i]});
      t.values = item_embeddings().to(torch::kCPU).to(torch::kFloat32).contiguous();
    } else if (kind == "user_embeddings") {
      t.key_columns = {"user"};
      std::vector<Tensor> parts;
      const int64_t U = data_.num_users();
      for (int64_t s = 0; s < U; s += o_.eval.batch_size) {
        std::vector<int64_t> ub(static_cast<size_t>(std::min(U, s + o_.eval.batch_size) - s));
        std::iota(ub.begin(), ub.end(), s);
        parts.push_back(user_embeddings(ub, known_items(ub, test)).to(torch::kCPU));
      }
      for (int64_t u = 0; u < U; ++u) t.keys.push_back({user_key(u)});
      t.values = torch::cat(parts).to(torch::kFloat32).contiguous();
    } else if (kind == "recommendations") {
      t.key_columns = {"user", "rank", "item", "name"};
      t.value_columns = {"score", "held_out"};
      std::vector<float> values;
      const auto& targets = test ? data_.test : data_.valid;
      rank_split(test, request.k, request.all_users, [&](int64_t u, const int64_t* top, const float* score, int64_t K) {
        const auto& held = targets[u];
        // Known items score -inf and rank last: where k reaches them the list stops.
        for (int64_t r = 0; r < K && score[r] != -std::numeric_limits<float>::infinity(); ++r) {
          t.keys.push_back({user_key(u), std::to_string(r + 1), item_key(top[r]), data_.item_names[top[r]]});
          values.push_back(score[r]);
          values.push_back(std::find(held.begin(), held.end(), top[r]) != held.end() ? 1.0f : 0.0f);
        }
      });
      t.values = torch::tensor(values, torch::kFloat32).reshape({static_cast<int64_t>(t.keys.size()), 2});
    } else {
      throw std::logic_error("retrieval: no export '" + kind + "'");
    }
    if (kind != "recommendations")  // embeddings: one column per dimension
      for (int64_t c = 0; c < t.values.size(1); ++c) t.value_columns.push_back("e" + std::to_string(c));
    root_->train();
    return t;
  }

  nlohmann::json describe() const override {
    int64_t n_head = std::count(slices_.begin(), slices_.end(), 0);
    return {{"source", data_.source}, {"users", data_.num_users()}, {"items", data_.num_items()},
            {"train_positives", examples_.size()}, {"head_items", n_head},
            {"tail_items", data_.num_items() - n_head}, {"split", o_.split.protocol}};
  }

 private:
  /// An empty validation split scores every validation 0 (the best state and early stopping
  /// would be chosen on nothing) and an empty test split reports recall 0 as the result, both
  /// without a word: the split settings do not fit the corpus.
  void check_eval_splits() const {
    auto is_empty = [](const std::vector<std::vector<int64_t>>& per_user) {
      return std::all_of(per_user.begin(), per_user.end(), [](const auto& v) { return v.empty(); });
    };
    const auto& sp = o_.split;
    int64_t longest = 0;
    for (const auto& seq : data_.sequences)
      longest = std::max<int64_t>(longest, static_cast<int64_t>(seq.size()));
    auto fail = [&](const std::string& split) {
      const std::string test_hint = split == "test" ? ", or set train.evaluate_test to false" : "";
      if (longest < sp.min_positives)
        throw ConfigError("data.split.min_positives",
                          "the " + split + " split is empty: every user has fewer than " +
                              std::to_string(sp.min_positives) + " positives (the most is " +
                              std::to_string(longest) + "), so all of them stay in training; lower it" +
                              test_hint);
      if (split == "validation" && sp.protocol == "fraction" && sp.valid_fraction == 0)
        throw ConfigError("data.split.valid_fraction",
                          "the validation split is empty: valid_fraction is 0; training selects its "
                          "best state on the validation split, so give it a positive fraction");
      throw ConfigError("data.split", "the " + split +
                                          " split is empty: no user has enough positives "
                                          "for one (the most is " +
                                          std::to_string(longest) + ")" + test_hint);
    };
    if (is_empty(data_.valid)) fail("validation");
    if (o_.evaluate_test && is_empty(data_.test)) fail("test");
  }

  std::string item_key(int64_t row) const {
    return data_.item_keys.empty() ? std::to_string(row) : data_.item_keys[static_cast<size_t>(row)];
  }
  std::string user_key(int64_t row) const {
    return data_.user_keys.empty() ? std::to_string(row) : data_.user_keys[static_cast<size_t>(row)];
  }

  /// The item tower on the whole catalogue, in chunks: [num_items, D] on the device.
  Tensor item_embeddings() {
    const int64_t N = data_.num_items();
    std::vector<Tensor> chunks;
    for (int64_t s = 0; s < N; s += 4096) {
      std::vector<int64_t> rows(static_cast<size_t>(std::min(N, s + 4096) - s));
      std::iota(rows.begin(), rows.end(), s);
      auto inputs = item_inputs(rows);
      move_all(inputs, device_);
      chunks.push_back(model_->item(inputs));
    }
    return finite_outputs(torch::cat(chunks, 0), "item");
  }

  /// A tower's outputs, refused when any is NaN or infinite: a diverged model (parameters grown
  /// past float range make the normalisation overflow) would otherwise be ranked, reported and
  /// saved as if it were a model.
  static Tensor finite_outputs(Tensor out, const char* tower) {
    if (!torch::isfinite(out).all().item<bool>())
      throw NumericError(std::string("the ") + tower +
                         " tower's outputs hold NaN or infinite values: the model diverged (lower "
                         "train.optimizer.lr or set train.optimizer.grad_clip)");
    return out;
  }

  /// What each user is known to have clicked before the split: training positives, plus the
  /// validation ones before the test split. These are the history and are excluded from ranking.
  std::vector<std::vector<int64_t>> known_items(const std::vector<int64_t>& users, bool test) const {
    std::vector<std::vector<int64_t>> known(users.size());
    for (size_t j = 0; j < users.size(); ++j) {
      known[j] = data_.train[users[j]];
      if (test) known[j].insert(known[j].end(), data_.valid[users[j]].begin(), data_.valid[users[j]].end());
    }
    return known;
  }

  /// The user tower on `users` with `known` (known_items) as their histories.
  Tensor user_embeddings(const std::vector<int64_t>& users, const std::vector<std::vector<int64_t>>& known) {
    auto inputs = user_inputs(users, known);
    move_all(inputs, device_);
    return finite_outputs(model_->user(inputs), "user");
  }

  /// Ranks the catalogue for every user with held-out items in the split (every user with
  /// `all_users`), known items excluded, and calls visit(user, top item rows, their scores,
  /// count) with the best min(k, items) first.
  template <typename Visit>
  void rank_split(bool test, int64_t k, bool all_users, Visit visit) {
    const auto& targets = test ? data_.test : data_.valid;
    auto items = item_embeddings();
    const int64_t N = data_.num_items(), K = std::min<int64_t>(k, N);
    std::vector<int64_t> users;
    for (int64_t u = 0; u < data_.num_users(); ++u)
      if (all_users || !targets[u].empty()) users.push_back(u);
    for (size_t s = 0; s < users.size(); s += static_cast<size_t>(o_.eval.batch_size)) {
      size_t e = std::min(users.size(), s + static_cast<size_t>(o_.eval.batch_size));
      std::vector<int64_t> ub(users.begin() + static_cast<long>(s), users.begin() + static_cast<long>(e));
      const auto known = known_items(ub, test);
      auto scores = torch::matmul(user_embeddings(ub, known), items.t()).to(torch::kCPU).contiguous();
      float* sp = scores.data_ptr<float>();
      for (size_t j = 0; j < ub.size(); ++j)
        for (int64_t it : known[j]) sp[static_cast<int64_t>(j) * N + it] = -std::numeric_limits<float>::infinity();
      auto [top_scores, top] = scores.topk(K, 1);
      top = top.contiguous();
      top_scores = top_scores.contiguous();
      const int64_t* tp = top.data_ptr<int64_t>();
      const float* ts = top_scores.data_ptr<float>();
      for (size_t j = 0; j < ub.size(); ++j)
        visit(ub[j], tp + static_cast<int64_t>(j) * K, ts + static_cast<int64_t>(j) * K, K);
    }
  }

  void build_columns() {
    if (o_.model.user_features.empty()) {
      for (auto& s : data_.users.specs()) o_.model.user_features.push_back(s.name);
      o_.model.user_features.push_back("history");
    }
    for (auto& name : o_.model.user_features) {
      if (name == "history") {
        user_cols_.push_back(-1);
        continue;
      }
      int64_t c = data_.users.index_of(name);
      if (c < 0) {
        std::string known = "history";
        for (auto& s : data_.users.specs()) known += ", " + s.name;
        throw ConfigError("model.user_features", "unknown user feature '" + name + "' for " + data_.source + " (known: " + known + ")");
      }
      user_cols_.push_back(c);
    }
    if (o_.model.item_features.empty())
      for (auto& s : data_.items.specs()) o_.model.item_features.push_back(s.name);
    for (auto& name : o_.model.item_features) {
      int64_t c = data_.items.index_of(name);
      if (c < 0) {
        std::string known;
        for (auto& s : data_.items.specs()) known += (known.empty() ? "" : ", ") + s.name;
        throw ConfigError("model.item_features", "unknown item feature '" + name + "' for " + data_.source + " (known: " + known + ")");
      }
      item_cols_.push_back(c);
    }
  }

  void build_examples() {
    for (int64_t u = 0; u < data_.num_users(); ++u)
      for (size_t t = 0; t < data_.train[u].size(); ++t) examples_.push_back({u, static_cast<int64_t>(t)});
  }

  std::vector<EmbeddingFeature> tower_features(const data::FeatureTable& table, const std::vector<int64_t>& cols) const {
    std::vector<EmbeddingFeature> fs;
    Pooling pooling = parse_pooling(o_.model.pooling);
    for (auto c : cols) {
      EmbeddingFeature f;
      f.dim = o_.model.embedding_dim;
      f.pooling = pooling;
      if (c < 0) {
        f.name = "history";
        f.vocab_size = data_.num_items() + data::kFirstIndex;
      } else {
        const auto& spec = table.spec(c);
        f.name = spec.name;
        f.numeric = spec.kind == data::FeatureKind::kNumeric;
        f.vocab_size = spec.vocab_size;
      }
      fs.push_back(f);
    }
    return fs;
  }

  void build_model() {
    auto act = parse_activation(o_.model.activation);
    TowerOptions user(tower_features(data_.users, user_cols_), o_.model.hidden);
    user.activation(act).dropout(o_.model.dropout).sparse(o_.model.sparse)
        .project_small_vocabularies(o_.model.project_small_vocabularies);
    TowerOptions item(tower_features(data_.items, item_cols_), o_.model.hidden);
    item.activation(act).dropout(o_.model.dropout).sparse(o_.model.sparse)
        .project_small_vocabularies(o_.model.project_small_vocabularies);
    root_ = std::make_shared<torch::nn::Module>("RetrievalTask");
    model_ = root_->register_module("model", TwoTower(TwoTowerOptions(user, item)));
    if (!o_.ssl.projection.empty())
      projection_ = root_->register_module("ssl_projection", Mlp(MlpOptions(o_.model.hidden.back(), o_.ssl.projection)));
  }

  std::vector<Tensor> item_inputs(const std::vector<int64_t>& rows) const {
    auto all = data_.items.gather(rows.data(), static_cast<int64_t>(rows.size()));
    std::vector<Tensor> out;
    for (auto c : item_cols_) out.push_back(all[static_cast<size_t>(c)]);
    return out;
  }

  /// User features plus the history bag built from `histories` (the last H entries).
  std::vector<Tensor> user_inputs(const std::vector<int64_t>& users, const std::vector<std::vector<int64_t>>& histories) const {
    auto all = data_.users.gather(users.data(), static_cast<int64_t>(users.size()));
    std::vector<Tensor> out;
    for (auto c : user_cols_) {
      if (c >= 0) {
        out.push_back(all[static_cast<size_t>(c)]);
        continue;
      }
      const int64_t H = o_.model.history_length, n = static_cast<int64_t>(users.size());
      auto h = torch::zeros({n, H}, torch::kInt64);
      int64_t* p = h.data_ptr<int64_t>();
      for (int64_t j = 0; j < n; ++j) {
        const auto& hist = histories[static_cast<size_t>(j)];
        int64_t len = std::min<int64_t>(H, static_cast<int64_t>(hist.size()));
        if (len == 0) p[j * H] = data::kDefaultIndex;
        for (int64_t k = 0; k < len; ++k)
          p[j * H + k] = hist[hist.size() - static_cast<size_t>(len) + static_cast<size_t>(k)] + data::kFirstIndex;
      }
      out.push_back(h);
    }
    return out;
  }

  std::unique_ptr<RetrievalBatch> make_batch(const std::vector<int64_t>& rows, std::mt19937_64& rng,
                                             torch::Generator& gen, int64_t step) {
    auto b = std::make_unique<RetrievalBatch>();
    const int64_t n = static_cast<int64_t>(rows.size());
    b->n = n;
    std::vector<int64_t> users(static_cast<size_t>(n)), items(static_cast<size_t>(n));
    std::vector<std::vector<int64_t>> histories(static_cast<size_t>(n));
    const int64_t H = o_.model.history_length;
    for (int64_t j = 0; j < n; ++j) {
      auto [u, t] = examples_[static_cast<size_t>(rows[static_cast<size_t>(j)])];
      users[j] = u;
      items[j] = data_.train[u][static_cast<size_t>(t)];
      // Only behaviours before the target: the history never contains the future.
      int64_t start = std::max<int64_t>(0, t - H);
      histories[j].assign(data_.train[u].begin() + start, data_.train[u].begin() + t);
    }
    b->user_inputs = user_inputs(users, histories);
    b->item_inputs = item_inputs(items);
    if (!main_chain_.empty()) b->item_inputs = main_chain_.transform(b->item_inputs, gen);
    const int64_t M = o_.loss.mixed_negatives;
    std::vector<int64_t> extra;
    if (M > 0) {
      std::uniform_int_distribution<int64_t> uni(0, data_.num_items() - 1);
      for (int64_t j = 0; j < M; ++j) extra.push_back(uni(rng));
      b->extra_inputs = item_inputs(extra);
    }
    std::vector<int64_t> all_ids(items);
    all_ids.insert(all_ids.end(), extra.begin(), extra.end());
    b->item_ids = torch::tensor(all_ids, torch::kInt64);
    b->log_q = log_q(all_ids, n, step);
    make_positives_distinct(*b);
    if (o_.ssl.alpha > 0) {
      int64_t m = o_.ssl.batch_size > 0 ? o_.ssl.batch_size : n;
      auto ssl_items = sample_ssl_items(m, rng);
      auto v = ssl_chain_.views(item_inputs(ssl_items), gen);
      b->ssl_view1 = std::move(v.first);
      b->ssl_view2 = std::move(v.second);
    }
    return b;
  }

  Tensor log_q(const std::vector<int64_t>& ids, int64_t n_batch, int64_t step) {
    const int64_t C = static_cast<int64_t>(ids.size());
    auto out = torch::zeros({C}, torch::kFloat32);
    if (o_.loss.logq == LogQ::kNone) return out;
    float* p = out.data_ptr<float>();
    const double M = static_cast<double>(o_.loss.mixed_negatives), N = static_cast<double>(data_.num_items());
    // Expected count of item j among the candidates: B p_j from the batch's positives plus
    // M / N from the uniform negatives (losses::log_expected_count).
    if (o_.loss.logq == LogQ::kCounts) {
      for (int64_t j = 0; j < C; ++j) {
        double pj = static_cast<double>(std::max<int64_t>(data_.item_clicks[ids[j]], 1)) / static_cast<double>(total_clicks_);
        p[j] = static_cast<float>(losses::log_expected_count(static_cast<double>(n_batch) * pj, M, N));
      }
    } else {
      // The streaming estimate 1 / gap is already the expected count per step (about B p_j):
      // it starts at B / N, a uniform item's. The mixed negatives' columns read the estimate
      // without being counted as seen.
      if (!streaming_)
        streaming_ = std::make_unique<losses::StreamingFrequency>(o_.loss.streaming_buckets, o_.loss.streaming_alpha,
                                                                  static_cast<double>(data_.num_items()) / static_cast<double>(n_batch));
      auto est = streaming_->update(ids.data(), n_batch, step);
      auto extra = streaming_->estimate(ids.data() + n_batch, C - n_batch);
      est.insert(est.end(), extra.begin(), extra.end());
      for (int64_t j = 0; j < C; ++j)
        p[j] = static_cast<float>(losses::log_expected_count(std::exp(static_cast<double>(est[static_cast<size_t>(j)])), M, N));
    }
    return out;
  }

  std::vector<int64_t> sample_ssl_items(int64_t m, std::mt19937_64& rng) {
    const int64_t N = data_.num_items();
    if (pop_cdf_.empty()) {
      double acc = 0;
      for (auto c : data_.item_clicks) pop_cdf_.push_back(acc += static_cast<double>(c) + 1e-9);
    }
    std::uniform_int_distribution<int64_t> uni(0, N - 1);
    std::uniform_real_distribution<double> coin(0.0, 1.0);
    std::vector<int64_t> out(static_cast<size_t>(m));
    for (auto& x : out) {
      bool uniform = o_.ssl.sampling == SslSampling::kUniform ||
                     (o_.ssl.sampling == SslSampling::kMixture && coin(rng) < o_.ssl.mixture_uniform);
      if (uniform) {
        x = uni(rng);
      } else {
        double r = coin(rng) * pop_cdf_.back();
        x = std::min<int64_t>(N - 1, std::upper_bound(pop_cdf_.begin(), pop_cdf_.end(), r) - pop_cdf_.begin());
      }
    }
    return out;
  }

  Options o_;
  uint64_t seed_;
  RetrievalData data_;
  std::vector<int64_t> user_cols_, item_cols_;  // -1 = history
  std::vector<std::pair<int64_t, int64_t>> examples_;
  std::vector<uint8_t> slices_;
  dist::Context dist_;
  int64_t total_clicks_ = 0;
  std::shared_ptr<torch::nn::Module> root_;
  TwoTower model_{nullptr};
  Mlp projection_{nullptr};
  augment::Chain ssl_chain_, main_chain_;
  std::unique_ptr<losses::StreamingFrequency> streaming_;
  std::vector<double> pop_cdf_;
  torch::Device device_ = torch::kCPU;
};

}  // namespace


nlohmann::json item_feature_mutual_information(const nlohmann::json& config) {
  train::parse_experiment(config);  // full validation first
  if (config.value("task", std::string("retrieval")) != "retrieval")
    throw ConfigError("task", "mi reads the item features of a retrieval config, got task '" +
                                  config.value("task", std::string()) + "'");
  Reader root(config);
  Options o = parse_options(root);
  RetrievalData data = o.source();
  std::vector<std::string> names = o.model.item_features;
  if (names.empty())
    for (auto& s : data.items.specs()) names.push_back(s.name);
  std::vector<int64_t> cols;
  for (auto& n : names) {
    int64_t c = data.items.index_of(n);
    if (c < 0) throw ConfigError("model.item_features", "unknown item feature '" + n + "'");
    cols.push_back(c);
  }
  auto mi = augment::mutual_information(data.items, cols);
  int64_t half = std::max<int64_t>(1, static_cast<int64_t>(std::llround(0.5 * static_cast<double>(cols.size()))));
  auto groups = augment::correlated_groups(mi, half);
  nlohmann::json g = nlohmann::json::object();
  for (size_t f = 0; f < names.size(); ++f) {
    std::vector<std::string> members;
    for (auto m : groups[f]) members.push_back(names[static_cast<size_t>(m)]);
    g[names[f]] = members;
  }
  return {{"source", data.source}, {"items", data.num_items()}, {"features", names}, {"mi", mi},
          {"groups_at_fraction_0.5", g}, {"unit", "nats"}};
}

void register_retrieval_task() {
  if (train::tasks().contains("retrieval")) return;
  train::tasks().add("retrieval", [](const Reader& root) -> train::TaskBuilder {
    auto options = std::make_shared<Options>(parse_options(root));
    return [options](uint64_t seed) -> std::unique_ptr<train::Task> {
      return std::make_unique<RetrievalTask>(*options, seed);
    };
  }, "two-tower retrieval: in-batch softmax + logQ, SSL item tower, head/tail Recall/NDCG");
}

}  // namespace recsys::models

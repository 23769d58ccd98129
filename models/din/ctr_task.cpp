// The "ctr" task: (history, candidate) -> click, trained with BCE on the DIN/DIEN protocol and
// evaluated with AUC, GAUC and logloss.
#include "models/din/ctr_task.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <numeric>
#include <random>

#include "framework/data/ctr_negatives.h"
#include "framework/data/ctr_sources.h"
#include "framework/eval/ctr_metrics.h"
#include "framework/train/experiment.h"
#include "framework/train/prefetch.h"
#include "models/baselines/base_model.h"
#include "models/baselines/wide_deep.h"
#include "models/din/ctr_model_options.h"
#include "models/din/din.h"
#include "models/layers/dice.h"

namespace recsys::models {
namespace {

using config::Reader;
using torch::Tensor;

// ---------------------------------------------------------------- models

CtrModelBuilder din_factory(const Reader& r) {
  auto common = parse_common_model_options(r);
  auto hidden = parse_widths(r, "attention_hidden", {80, 40});
  auto activation = parse_activation_key(r, "attention_activation", "sigmoid");
  bool softmax = r.get<bool>("attention_softmax", false);
  return [=](const CtrDataInfo& data) -> std::shared_ptr<CtrModel> {
    DinOptions o(common.embeddings(data));
    o.attention_hidden(hidden)
        .attention_activation(activation)
        .attention_softmax(softmax)
        .mlp(common.mlp);
    return Din(o).ptr();
  };
}

CtrModelBuilder base_model_factory(const Reader& r) {
  auto common = parse_common_model_options(r);
  return [=](const CtrDataInfo& data) -> std::shared_ptr<CtrModel> {
    return BaseModel(BaseModelOptions(common.embeddings(data)).mlp(common.mlp)).ptr();
  };
}

CtrModelBuilder wide_deep_factory(const Reader& r) {
  auto common = parse_common_model_options(r);
  auto buckets = r.get<int64_t>("wide_buckets", int64_t{1} << 18);
  if (buckets < 2) r.fail("wide_buckets", "must be at least 2");
  return [=](const CtrDataInfo& data) -> std::shared_ptr<CtrModel> {
    auto deep = BaseModelOptions(common.embeddings(data)).mlp(common.mlp);
    return WideDeep(WideDeepOptions(deep).wide_buckets(buckets)).ptr();
  };
}

// ---------------------------------------------------------------- task options

struct Options {
  std::string source_type;
  std::string source_name;
  data::CtrSource source;
  data::CtrDataOptions data;
  std::string model_type;
  CtrModelBuilder model;
  int64_t eval_batch_size = 1024;
  /// model.sync_batch_stats: data-parallel runs take Dice's batch statistics over every rank.
  bool sync_batch_stats = true;
  /// train.evaluate_test: whether the run reports the test split (which then must not be empty).
  bool evaluate_test = true;
};

Options parse_options(const Reader& root) {
  Options o;
  auto d = root.child("data");
  o.source_type = d.get<std::string>("type", "synthetic");
  // Where the data comes from, for messages about it: the file, or the source's name.
  o.source_name = d.has("path") ? d.get<std::string>("path", "") : o.source_type;
  o.source = data::ctr_sources().get(o.source_type, d.path_of("type"))(d);
  o.data = data::parse_ctr_data_options(d);
  auto m = root.child("model");
  o.model_type = m.get<std::string>("type", "din");
  o.sync_batch_stats = m.get<bool>("sync_batch_stats", o.sync_batch_stats);
  o.model = ctr_models().get(o.model_type, m.path_of("type"))(m);
  auto e = root.child("eval");
  o.eval_batch_size = e.get<int64_t>("batch_size", o.eval_batch_size);
  if (o.eval_batch_size < 1) e.fail("batch_size", "must be at least 1");
  // The trainer owns this key (and has validated it by now); the task reads it as well so that
  // it requires a non-empty test split only when the run evaluates one.
  o.evaluate_test =
      root.child("train").get<bool>("evaluate_test", train::TrainerOptions().evaluate_test);
  return o;
}

// ---------------------------------------------------------------- the task

struct CtrTrainBatch : train::Batch {
  data::CtrBatch batch;
  Tensor neg_hist_item, neg_hist_category;
  int64_t size() const override { return batch.size(); }
};

class CtrTask : public train::Task {
 public:
  CtrTask(Options options, uint64_t seed) : o_(std::move(options)), seed_(seed) {
    log_ = o_.source();
    data::filter_min_count(log_, o_.data.min_user_length);
    try {
      splits_ = data::build_ctr_samples(log_, o_.data.samples);
    } catch (const ConfigError& e) {
      // build_ctr_samples names its options by their own keys: here they live under data.
      throw ConfigError(e.path().empty() ? "data" : "data." + e.path(), e.message());
    }
    if (splits_.train.size() == 0)
      throw DataError(o_.source_name, 0,
                      "no training samples: users need more than min_history + 2 behaviours "
                      "(lower data.min_history or data.min_user_length, or use more data)");
    check_eval_splits();
    CtrDataInfo info;
    info.num_items = log_.num_items;
    info.num_categories = log_.num_categories;
    info.item_count = splits_.item_count;
    info.category_count = splits_.category_count;
    info.item_category = log_.item_category;
    root_ = std::make_shared<torch::nn::Module>("CtrTask");
    model_ = o_.model(info);
    TORCH_CHECK(model_ != nullptr, "the '", o_.model_type, "' builder returned no model");
    root_->register_module("model", model_);
    needs_negatives_ = model_->needs_negative_history();
    // Said here, before training: fill_negative_history would fail on the prefetch thread with
    // an internal error, since a negative behaviour must differ from the true one.
    if (needs_negatives_ && log_.num_items - data::kFirstId < 2)
      throw ConfigError("model.type",
                        "'" + o_.model_type +
                            "' draws negative behaviours for its auxiliary loss, which needs at "
                            "least 2 items, but the data has " +
                            std::to_string(log_.num_items - data::kFirstId) +
                            " (use more items or disable the auxiliary loss, for dien "
                            "model.alpha_aux = 0)");
    spdlog::info(
        "ctr data {}: {} users, {} items, {} categories; samples train {} valid {} test {}; model "
        "{}",
        o_.source_type, log_.num_users - data::kFirstId, log_.num_items - data::kFirstId,
        log_.num_categories - data::kFirstId, splits_.train.size(), splits_.valid.size(),
        splits_.test.size(), o_.model_type);
  }

  torch::nn::Module& module() override { return *root_; }
  void to(torch::Device device) override {
    device_ = device;
    root_->to(device);
  }
  int64_t train_examples() const override { return splits_.train.size(); }
  std::pair<std::string, bool> selection_metric() const override { return {"auc", true}; }
  void set_distributed(const dist::Context& ctx) override {
    if (!o_.sync_batch_stats) return;
    dist_ = ctx;
    for (auto& m : root_->modules())
      if (auto* dice = dynamic_cast<DiceImpl*>(m.get())) dice->set_sync(ctx);
  }
  std::vector<std::string> metric_names() const override { return {"auc", "gauc", "logloss"}; }

  std::unique_ptr<train::BatchStream> train_stream(const train::StreamOptions& so) override {
    auto order = std::make_shared<std::vector<int64_t>>(splits_.train.size());
    std::iota(order->begin(), order->end(), 0);
    auto rng = std::make_shared<std::mt19937_64>(so.seed * 1000003ULL +
                                                 static_cast<uint64_t>(so.epoch) + 29);
    std::shuffle(order->begin(), order->end(), *rng);
    auto cursor = std::make_shared<size_t>(0);
    const size_t b = static_cast<size_t>(so.batch_size);
    return std::make_unique<train::PrefetchStream>(
        [this, order, rng, cursor, b]() -> std::unique_ptr<train::Batch> {
          // A last batch of one row would give Dice a zero variance: drop it.
          if (*cursor + 2 > order->size()) return nullptr;
          size_t end = std::min(order->size(), *cursor + b);
          std::vector<int64_t> rows(order->begin() + static_cast<long>(*cursor),
                                    order->begin() + static_cast<long>(end));
          *cursor = end;
          return make_batch(splits_.train, rows, *rng);
        },
        so.prefetch);
  }

  train::StepOutput forward(train::Batch& base, torch::Generator&) override {
    auto& b = static_cast<CtrTrainBatch&>(base);
    // Synchronised statistics: every rank's histories padded to the longest of the step, as one
    // process's batch would be (a Dice inside DIN's attention normalises the padded positions
    // too). Masked positions change nothing else.
    if (dist_.active()) pad_history(b, dist_.all_max(b.batch.hist_item.size(1)));
    auto out = model_->forward(input_of(b));
    auto label = b.batch.label.to(device_, /*non_blocking=*/true);
    auto bce = torch::binary_cross_entropy_with_logits(out.logits, label);
    train::StepOutput step;
    step.loss = bce;
    step.parts["bce"] = bce.detach();
    if (out.aux_loss.defined()) {
      step.loss = step.loss + out.aux_loss;
      step.parts["aux"] = out.aux_loss.detach();
    }
    if (out.regularization.defined()) {
      step.loss = step.loss + out.regularization;
      step.parts["reg"] = out.regularization.detach();
    }
    return step;
  }

  train::Metrics evaluate(const std::string& split) override {
    const Scores sc = score_split(split);
    if (sc.labels.empty()) spdlog::warn("ctr: the {} split is empty; its metrics are placeholders", split);
    // Rankings use the logits: the sigmoid of large logits rounds to ties in float32.
    return {{"auc", eval::auc(sc.logits, sc.labels)},
            {"gauc", eval::gauc(sc.logits, sc.labels, sc.users)},
            {"logloss", eval::logloss(sc.probs, sc.labels)}};
  }

  std::vector<train::ExportKind> export_kinds() const override {
    return {{"predictions",
             "every sample of the split: its index, user, candidate item and category (raw ids), label, "
             "logit and click probability, in the order evaluation scores them",
             true}};
  }

  train::ExportTable export_table(const train::ExportRequest& request) override {
    if (request.kind != "predictions") throw std::logic_error("ctr: no export '" + request.kind + "'");
    const Scores sc = score_split(request.split);
    train::ExportTable t;
    t.key_columns = {"sample", "user", "item", "category"};
    t.value_columns = {"label", "logit", "probability"};
    auto name = [](const std::vector<std::string>& names, int64_t id) {
      return id >= 0 && id < static_cast<int64_t>(names.size()) ? names[static_cast<size_t>(id)] : std::to_string(id);
    };
    const int64_t n = static_cast<int64_t>(sc.labels.size());
    t.values = torch::empty({n, 3}, torch::kFloat32);
    float* v = t.values.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      t.keys.push_back({std::to_string(i), name(log_.user_names, sc.users[i]), name(log_.item_names, sc.items[i]),
                        name(log_.category_names, sc.categories[i])});
      v[3 * i] = sc.labels[i];
      v[3 * i + 1] = sc.logits[i];
      v[3 * i + 2] = sc.probs[i];
    }
    return t;
  }

  nlohmann::json describe() const override {
    return {{"source", o_.source_type},
            {"model", o_.model_type},
            {"users", log_.num_users - data::kFirstId},
            {"items", log_.num_items - data::kFirstId},
            {"categories", log_.num_categories - data::kFirstId},
            {"behaviours", log_.num_interactions()},
            {"train_samples", splits_.train.size()},
            {"valid_samples", splits_.valid.size()},
            {"test_samples", splits_.test.size()},
            {"split", o_.data.samples.split},
            {"negatives", o_.data.samples.negatives}};
  }

 private:
  /// An empty validation split scores every validation as a constant (AUC 0.5, logloss 0), so
  /// the best state and early stopping would be chosen on nothing; an empty test split would be
  /// reported as the run's result. Both come from fractions too small for the users' lengths.
  void check_eval_splits() const {
    const auto& s = o_.data.samples;
    int64_t longest = 0;  // the most targets of any user
    for (const auto& items : log_.user_items)
      longest = std::max<int64_t>(longest, static_cast<int64_t>(items.size()) - s.min_history);
    const std::string targets = " (the longest user has " + std::to_string(longest) +
                                " targets after data.min_history); ";
    auto fail = [&](const std::string& split, const std::string& key, double fraction) {
      const std::string test_hint =
          split == "test" ? ", or set train.evaluate_test to false" : "";
      if (s.split == "fraction")
        throw ConfigError("data." + key, "the " + split + " split is empty: a fraction of " +
                                             fmt::format("{}", fraction) +
                                             " of each user's targets rounds to none" + targets +
                                             "raise data." + key +
                                             " or set data.split to \"last\"" + test_hint);
      throw ConfigError("data.split", "the " + split +
                                          " split is empty: no user has enough targets" + targets +
                                          "use users with more behaviours" + test_hint);
    };
    if (splits_.valid.size() == 0) fail("validation", "valid_fraction", s.valid_fraction);
    if (o_.evaluate_test && splits_.test.size() == 0)
      fail("test", "test_fraction", s.test_fraction);
  }

  /// Every sample of a split scored by the model, in order (eval mode, no gradients).
  struct Scores {
    std::vector<float> logits, probs, labels;
    std::vector<int64_t> users, items, categories;
  };
  Scores score_split(const std::string& split) {
    torch::NoGradGuard no_grad;
    root_->eval();
    const auto& samples = split == "test" ? splits_.test : splits_.valid;
    Scores sc;
    auto append = [](auto& out, const Tensor& t) {
      auto c = t.contiguous();
      using T = typename std::decay_t<decltype(out)>::value_type;
      out.insert(out.end(), c.template data_ptr<T>(), c.template data_ptr<T>() + c.numel());
    };
    std::mt19937_64 rng(seed_ ^ 0xe7a1ULL);  // negative histories, when a model needs them
    const int64_t n = samples.size();
    for (int64_t s = 0; s < n; s += o_.eval_batch_size) {
      std::vector<int64_t> rows(static_cast<size_t>(std::min(n, s + o_.eval_batch_size) - s));
      std::iota(rows.begin(), rows.end(), s);
      auto b = make_batch(samples, rows, rng);
      auto z = model_->forward(input_of(*b)).logits.to(torch::kCPU).to(torch::kFloat32);
      append(sc.logits, z);
      append(sc.probs, torch::sigmoid(z));
      append(sc.labels, b->batch.label);
      append(sc.users, b->batch.user);
      append(sc.items, b->batch.item);
      append(sc.categories, b->batch.category);
    }
    root_->train();
    return sc;
  }

  std::unique_ptr<CtrTrainBatch> make_batch(const data::CtrSamples& samples,
                                            const std::vector<int64_t>& rows,
                                            std::mt19937_64& rng) const {
    auto out = std::make_unique<CtrTrainBatch>();
    out->batch = data::make_ctr_batch(log_, samples, rows, o_.data.samples.max_history);
    // DIEN's auxiliary loss: a uniformly drawn item != the true one at every valid step.
    if (needs_negatives_)
      data::fill_negative_history(log_, samples, rows, out->batch.hist_item.size(1),
                                  out->neg_hist_item, out->neg_hist_category, rng);
    return out;
  }

  /// Pads the batch's history tensors with zeros (mask false) to `T` steps.
  static void pad_history(CtrTrainBatch& b, int64_t T) {
    const int64_t extra = T - b.batch.hist_item.size(1);
    if (extra <= 0) return;
    auto pad = [extra](torch::Tensor& t) {
      if (t.defined()) t = torch::constant_pad_nd(t, {0, extra});
    };
    pad(b.batch.hist_item);
    pad(b.batch.hist_category);
    pad(b.batch.hist_mask);
    pad(b.neg_hist_item);
    pad(b.neg_hist_category);
  }

  CtrModelInput input_of(CtrTrainBatch& b) const {
    auto dev = [this](const Tensor& t) {
      return t.defined() ? t.to(device_, /*non_blocking=*/true) : t;
    };
    CtrModelInput in;
    in.item = dev(b.batch.item);
    in.category = dev(b.batch.category);
    in.hist_item = dev(b.batch.hist_item);
    in.hist_category = dev(b.batch.hist_category);
    in.hist_mask = dev(b.batch.hist_mask);
    in.hist_length = dev(b.batch.hist_length);
    in.neg_hist_item = dev(b.neg_hist_item);
    in.neg_hist_category = dev(b.neg_hist_category);
    return in;
  }

  Options o_;
  uint64_t seed_;
  data::InteractionLog log_;
  data::CtrSplits splits_;
  std::shared_ptr<torch::nn::Module> root_;
  std::shared_ptr<CtrModel> model_;
  bool needs_negatives_ = false;
  torch::Device device_ = torch::kCPU;
  dist::Context dist_;  // set when data-parallel statistics are synchronised
};

}  // namespace

Registry<CtrModelFactory>& ctr_models() {
  static Registry<CtrModelFactory> registry("CTR model");
  return registry;
}

void register_builtin_ctr_models() {
  auto& reg = ctr_models();
  if (reg.contains("din")) return;
  reg.add("din", din_factory, "Deep Interest Network: candidate-aware attention over the history");
  reg.add("base_model", base_model_factory, "Embedding&MLP: sum-pooled history + candidate");
  reg.add("wide_deep", wide_deep_factory,
          "BaseModel + linear model over hashed (candidate x history category) crosses");
}

void register_ctr_task() {
  data::register_builtin_ctr_sources();
  register_builtin_ctr_models();
  if (train::tasks().contains("ctr")) return;
  train::tasks().add(
      "ctr",
      [](const Reader& root) -> train::TaskBuilder {
        auto options = std::make_shared<Options>(parse_options(root));
        return [options](uint64_t seed) -> std::unique_ptr<train::Task> {
          return std::make_unique<CtrTask>(*options, seed);
        };
      },
      "CTR ranking (din, base_model, wide_deep, ...): BCE, AUC / GAUC / logloss");
}

}  // namespace recsys::models

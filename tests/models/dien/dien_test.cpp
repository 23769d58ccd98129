#include "models/dien/dien.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "framework/config/config.h"
#include "framework/train/experiment.h"
#include "framework/train/optimizer.h"
#include "framework/util/errors.h"
#include "losses/dien_aux.h"
#include "support.h"

using namespace recsys::models;
using recsys::testing::require_close;

namespace {

constexpr int64_t kItems = 30, kCategories = 7;

/// A batch of histories with the given lengths, right-padded to T with `pad_id` (0 in real
/// batches; other values check that the mask, not the id, decides what is padding).
CtrModelInput make_input(const std::vector<int64_t>& lengths, int64_t T, uint64_t seed,
                         int64_t pad_id = 0) {
  torch::manual_seed(seed);  // (reseeds the global generator: build models before inputs)
  const int64_t B = static_cast<int64_t>(lengths.size());
  auto ids = [&](int64_t hi, std::vector<int64_t> shape) {
    return torch::randint(2, hi, shape, torch::kLong);
  };
  CtrModelInput in;
  in.item = ids(kItems, {B});
  in.category = ids(kCategories, {B});
  // Drawn at the longest T used by a test (12), then cut, so that every T sees the same steps.
  in.hist_item = ids(kItems, {B, 12}).narrow(1, 0, T).clone();
  in.hist_category = ids(kCategories, {B, 12}).narrow(1, 0, T).clone();
  in.neg_hist_item = ids(kItems, {B, 12}).narrow(1, 0, T).clone();
  in.neg_hist_category = ids(kCategories, {B, 12}).narrow(1, 0, T).clone();
  in.hist_length = torch::tensor(lengths, torch::kLong);
  in.hist_mask = torch::arange(T).unsqueeze(0) < in.hist_length.unsqueeze(1);
  for (auto* t : {&in.hist_item, &in.hist_category, &in.neg_hist_item, &in.neg_hist_category})
    t->masked_fill_(in.hist_mask.logical_not(), pad_id);
  return in;
}

DienOptions small_options(GruKind kind, bool fused = true) {
  CtrMlpOptions mlp;
  mlp.hidden = {8, 4};
  return DienOptions(CtrEmbeddingsOptions(kItems, kCategories).item_dim(4).category_dim(3))
      .extractor_hidden(5)
      .evolution_hidden(6)
      .mlp(mlp)
      .aux_hidden({6, 3})
      .evolution(kind)
      .fused(fused)
      .alpha_aux(0.5);
}

void copy_parameters(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard guard;
  auto dst = to.named_parameters();
  for (auto& p : from.named_parameters()) dst[p.key()].copy_(p.value());
  auto dst_buffers = to.named_buffers();
  for (auto& b : from.named_buffers()) dst_buffers[b.key()].copy_(b.value());
}

torch::Tensor dense(const torch::Tensor& g) { return g.is_sparse() ? g.to_dense() : g; }

const std::vector<GruKind> kAllKinds{GruKind::kGru, GruKind::kAigru, GruKind::kAgru,
                                     GruKind::kAugru};

}  // namespace

TEST_CASE("DIEN logits and aux loss do not depend on how far a batch is padded", "[dien]") {
  for (auto kind : kAllKinds) {
    INFO("evolution " << gru_kind_name(kind));
    recsys::testing::seed(1);
    Dien model(small_options(kind));
    model->to(torch::kFloat64);
    const std::vector<int64_t> lengths{1, 5, 3, 7, 2};
    auto tight = make_input(lengths, 7, 9);
    auto loose = make_input(lengths, 12, 9, /*pad_id=*/3);
    // Same valid steps in both batches.
    using torch::indexing::Slice;
    REQUIRE(torch::equal(tight.hist_item, loose.hist_item.index({Slice(), Slice(0, 7)})
                                              .masked_fill(tight.hist_mask.logical_not(), 0)));
    model->eval();
    {
      torch::NoGradGuard guard;
      auto a = model->forward_parts(tight), b = model->forward_parts(loose);
      require_close(b.logits, a.logits, 0, 1e-12);
      REQUIRE_FALSE(a.aux_loss.defined());  // evaluation skips the auxiliary loss
    }
    // In training mode Dice normalises over the batch (not over steps), so the logits stay
    // invariant there too; check the whole loss.
    model->train();
    auto a = model->forward(tight), b = model->forward(loose);
    require_close(b.logits, a.logits, 0, 1e-12);
    require_close(b.aux_loss, a.aux_loss, 0, 1e-12);
  }
}

TEST_CASE("DIEN fused and reference GRU paths give the same loss and gradients", "[dien]") {
  for (auto kind : kAllKinds) {
    INFO("evolution " << gru_kind_name(kind));
    recsys::testing::seed(2);
    Dien fused(small_options(kind, true));
    Dien reference(small_options(kind, false));
    fused->to(torch::kFloat64);
    reference->to(torch::kFloat64);
    copy_parameters(*fused, *reference);
    auto in = make_input({4, 1, 6, 3, 6, 2}, 6, 4);
    auto labels = torch::tensor({1.0, 0.0, 1.0, 1.0, 0.0, 0.0}, torch::kFloat64);
    auto loss_of = [&](Dien& m) {
      auto out = m->forward(in);
      auto loss = torch::binary_cross_entropy_with_logits(out.logits, labels) + out.aux_loss;
      loss.backward();
      return loss.detach();
    };
    auto lf = loss_of(fused), lr = loss_of(reference);
    require_close(lf, lr, 0, 1e-12);
    auto gr = reference->named_parameters();
    int64_t checked = 0;
    for (auto& p : fused->named_parameters()) {
      INFO("parameter " << p.key());
      const auto& g = p.value().grad();
      REQUIRE(g.defined());
      require_close(dense(g), dense(gr[p.key()].grad()), 1e-10, 1e-12);
      ++checked;
    }
    REQUIRE(checked > 10);
  }
}

TEST_CASE("DIEN builds and trains a step with every evolution kind", "[dien]") {
  for (auto kind : kAllKinds) {
    INFO("evolution " << gru_kind_name(kind));
    recsys::testing::seed(3);
    Dien model(small_options(kind));
    REQUIRE(model->evolution_kind() == kind);
    REQUIRE(model->needs_negative_history());
    auto in = make_input({3, 2, 5, 1}, 5, 6);
    auto parts = model->forward_parts(in);
    REQUIRE(parts.logits.sizes() == torch::IntArrayRef{4});
    REQUIRE(parts.attention.defined() == (kind != GruKind::kGru));
    if (parts.attention.defined()) {
      // Softmax over the valid steps only.
      require_close(parts.attention.sum(1), torch::ones({4}), 1e-6, 1e-6);
      REQUIRE(parts.attention.masked_select(in.hist_mask.logical_not()).abs().sum().item<float>() ==
              0.0f);
    }
    {
      // The model gathers the valid pairs on the CPU; the masked form over all pairs agrees.
      torch::NoGradGuard guard;
      auto e = model->embeddings->forward(in.hist_item, in.hist_category);
      auto neg = model->embeddings->forward(in.neg_hist_item, in.neg_hist_category);
      auto states = model->extractor->forward(e, in.hist_length).outputs;
      auto pairs = recsys::losses::auxiliary_pairs(states, e, neg, in.hist_mask);
      auto masked = recsys::losses::auxiliary_loss(
          model->aux->forward(pairs.states, pairs.positive),
          model->aux->forward(pairs.states, pairs.negative), pairs.mask);
      require_close(parts.aux_loss, masked, 1e-6, 1e-7);
    }
    auto out = model->forward(in);
    require_close(out.aux_loss, parts.aux_loss * 0.5, 1e-6, 1e-7);
    auto loss =
        torch::binary_cross_entropy_with_logits(out.logits, torch::ones({4})) + out.aux_loss;
    REQUIRE(std::isfinite(loss.item<float>()));
    loss.backward();
    // Every parameter receives a gradient (the attention exists only when it is used).
    for (auto& p : model->named_parameters()) {
      INFO("parameter " << p.key());
      REQUIRE(p.value().grad().defined());
    }
    REQUIRE(dense(model->embeddings->item_table.grad()).abs().sum().item<float>() > 0);
    REQUIRE(model->embeddings->item_table.grad().is_sparse());
  }
}

TEST_CASE("DIEN without negatives or with alpha_aux = 0 has no auxiliary loss", "[dien]") {
  recsys::testing::seed(4);
  auto in = make_input({3, 4}, 4, 1);
  Dien model(small_options(GruKind::kAugru));
  auto no_neg = in;
  no_neg.neg_hist_item = no_neg.neg_hist_category = torch::Tensor();
  REQUIRE_FALSE(model->forward(no_neg).aux_loss.defined());
  Dien off(small_options(GruKind::kAugru).alpha_aux(0.0));
  REQUIRE_FALSE(off->needs_negative_history());
  REQUIRE_FALSE(off->forward(in).aux_loss.defined());
  // T = 1: no (h_t, e_{t+1}) pair exists.
  REQUIRE_FALSE(model->forward(make_input({1, 1}, 1, 2)).aux_loss.defined());
}

TEST_CASE("DIEN accepts empty histories and an injected evolution layer", "[dien]") {
  recsys::testing::seed(5);
  auto o = small_options(GruKind::kAugru);
  // Extractor width 5, evolution 6: the injected layer must take 5 inputs.
  Dien injected(o, GruLayer(GruLayerOptions(5, 6).kind(GruKind::kAgru)));
  REQUIRE(injected->evolution_kind() == GruKind::kAgru);
  REQUIRE(injected->options().evolution() == GruKind::kAgru);
  REQUIRE_THROWS_WITH(Dien(o, GruLayer(GruLayerOptions(7, 6).kind(GruKind::kAgru))),
                      Catch::Contains("input_size must be the extractor's width 5"));

  auto in = make_input({0, 3}, 3, 8);
  torch::NoGradGuard guard;
  for (bool training : {true, false}) {
    injected->train(training);
    auto out = injected->forward_parts(in);
    REQUIRE(torch::isfinite(out.logits).all().item<bool>());
    REQUIRE(out.aux_loss.defined() == training);
    if (training) REQUIRE(torch::isfinite(out.aux_loss).item<bool>());
  }
}

// ---------------------------------------------------------------- timing
// Not run by default: `OMP_WAIT_POLICY=PASSIVE recsys_tests "[.dien-timing]"`.
// The full DIEN training step (forward, BCE + auxiliary loss, backward, row-wise Adam) with the
// fused and the per-step reference GRU paths, at the bench shapes of WORKLOADS.md's dien workload.
namespace {

constexpr int64_t kBenchItems = 100000, kBenchCategories = 1000, kBenchB = 128, kBenchT = 50;

std::vector<CtrModelInput> bench_batches(int n) {
  auto w = torch::arange(1, kBenchItems - 1, torch::kFloat64).pow(-1.1);  // Zipf(1.1) over real ids
  std::vector<CtrModelInput> out;
  for (int i = 0; i < n; ++i) {
    auto draw = [&](std::vector<int64_t> shape) {
      int64_t total = 1;
      for (auto s : shape) total *= s;
      return (torch::multinomial(w, total, true) + 2).view(shape);
    };
    CtrModelInput in;
    in.item = draw({kBenchB});
    in.category = in.item % kBenchCategories + 1;
    in.hist_length = torch::randint(5, kBenchT + 1, {kBenchB}, torch::kLong);
    in.hist_mask = torch::arange(kBenchT).unsqueeze(0) < in.hist_length.unsqueeze(1);
    auto pad = in.hist_mask.logical_not();
    in.hist_item = draw({kBenchB, kBenchT}).masked_fill(pad, 0);
    in.hist_category = (in.hist_item % kBenchCategories + 1).masked_fill(pad, 0);
    in.neg_hist_item = draw({kBenchB, kBenchT}).masked_fill(pad, 0);
    in.neg_hist_category = (in.neg_hist_item % kBenchCategories + 1).masked_fill(pad, 0);
    out.push_back(in);
  }
  return out;
}

}  // namespace

TEST_CASE("DIEN training step timing, fused vs reference GRU", "[.dien-timing]") {
  torch::set_num_threads(2);
  recsys::testing::seed(0);
  auto batches = bench_batches(8);
  auto labels = torch::randint(0, 2, {kBenchB}, torch::kFloat32);
  for (auto kind : {GruKind::kAugru, GruKind::kGru}) {
    std::vector<Dien> models;
    std::vector<std::unique_ptr<recsys::train::Optimizer>> opts;
    // fused, reference, and fused without the auxiliary loss (its share of the step).
    for (int k = 0; k < 3; ++k) {
      recsys::testing::seed(1);
      models.emplace_back(DienOptions(CtrEmbeddingsOptions(kBenchItems, kBenchCategories + 1))
                              .evolution(kind)
                              .fused(k != 1)
                              .alpha_aux(k == 2 ? 0.0 : 1.0));
      opts.push_back(std::make_unique<recsys::train::Optimizer>(models.back()->parameters(),
                                                                recsys::train::OptimizerOptions{}));
    }
    std::vector<std::vector<double>> ms(3);
    int step = 0;
    auto run = [&](size_t k) {
      auto& in = batches[step++ % batches.size()];
      auto t0 = std::chrono::steady_clock::now();
      opts[k]->zero_grad();
      auto out = models[k]->forward(in);
      auto loss = torch::binary_cross_entropy_with_logits(out.logits, labels);
      if (out.aux_loss.defined()) loss = loss + out.aux_loss;
      loss.backward();
      opts[k]->step();
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
          .count();
    };
    for (int i = 0; i < 5; ++i)
      for (size_t k = 0; k < 3; ++k) run(k);
    // Interleaved, so that load changes on the shared machine hit both paths alike.
    for (int i = 0; i < 30; ++i)
      for (size_t k = 0; k < 3; ++k) ms[k].push_back(run(k));
    auto median = [](std::vector<double> v) {
      std::sort(v.begin(), v.end());
      return v[v.size() / 2];
    };
    const double fused = median(ms[0]), ref = median(ms[1]), no_aux = median(ms[2]);
    std::cout << "dien step (" << gru_kind_name(kind) << " evolution) B=128 T=50 median ms: fused "
              << fused << " (" << 1000.0 * kBenchB / fused << " ex/s), reference " << ref << " ("
              << 1000.0 * kBenchB / ref << " ex/s), speedup " << ref / fused
              << "; fused without the auxiliary loss " << no_aux << "\n";
  }
}

// ---------------------------------------------------------------- through the ctr task

namespace {

recsys::train::Experiment parse_config(const std::string& path,
                                       const std::vector<std::string>& overrides = {}) {
  register_ctr_task();
  register_dien_model();
  return recsys::train::parse_experiment(recsys::config::resolve(path, overrides));
}

}  // namespace

TEST_CASE("DIEN trains through the ctr task on the tiny synthetic config", "[dien]") {
  auto e = parse_config("configs/tests/ctr_dien.json");
  torch::manual_seed(e.seed);
  torch::set_num_threads(1);
  auto task = e.build_task(e.seed);
  REQUIRE(task->train_examples() > 1000);
  auto mean_loss = [&](int64_t batches, bool check_parts) {
    torch::NoGradGuard g;
    recsys::train::StreamOptions so;
    so.batch_size = 64;
    so.seed = 99;
    so.prefetch = 0;
    auto stream = task->train_stream(so);
    torch::Generator gen = at::detail::createCPUGenerator(1);
    double sum = 0;
    for (int64_t k = 0; k < batches; ++k) {
      auto step = task->forward(*stream->next(), gen);
      // The task asked the model for negative histories and added the auxiliary loss.
      if (check_parts) {
        REQUIRE(step.parts.count("aux") == 1);
        REQUIRE(step.parts.at("aux").item<double>() > 0);
        require_close(step.loss.item<double>(),
                      step.parts.at("bce").item<double>() + step.parts.at("aux").item<double>(),
                      1e-6);
      }
      sum += step.loss.item<double>();
    }
    return sum / static_cast<double>(batches);
  };
  task->module().train();
  const double before = mean_loss(10, true);
  recsys::train::Trainer trainer(*task, e.trainer, recsys::train::RunDir(), e.config, e.seed);
  auto results = trainer.fit();
  task->module().train();
  const double after = mean_loss(10, false);
  INFO("loss " << before << " -> " << after << ", results " << results.dump());
  REQUIRE(after < before - 0.05);
  const double auc = results["metrics"]["auc"];
  REQUIRE(auc > 0.6);
  REQUIRE(auc <= 1.0);
}

TEST_CASE("DIEN experiment configs share the CTR presets and pick their evolution", "[dien]") {
  auto din = parse_config("configs/experiments/din_taobao.json");
  const std::map<std::string, std::string> kinds{{"dien_taobao", "augru"},
                                                 {"dien_agru_taobao", "agru"},
                                                 {"dien_aigru_taobao", "aigru"},
                                                 {"dien_gru_taobao", "gru"}};
  for (const auto& [name, kind] : kinds) {
    INFO(name);
    auto e = parse_config("configs/experiments/" + name + ".json");
    REQUIRE(e.task == "ctr");
    REQUIRE(e.config["model"]["type"] == "dien");
    REQUIRE(e.config["model"]["evolution"] == kind);
    REQUIRE(e.config["name"] == name);
    // Same data, samples and training schedule as DIN: only the model differs.
    REQUIRE(e.config["data"] == din.config["data"]);
    REQUIRE(e.config["train"] == din.config["train"]);
  }
  auto syn = parse_config("configs/experiments/dien_synthetic.json");
  REQUIRE(syn.config["data"] ==
          parse_config("configs/experiments/din_synthetic.json").config["data"]);
}

TEST_CASE("DIEN config errors name their key", "[dien]") {
  auto path_of = [](const std::vector<std::string>& overrides) -> std::string {
    try {
      parse_config("configs/tests/ctr_dien.json", overrides);
    } catch (const recsys::ConfigError& e) {
      INFO(e.what());
      return e.path();
    }
    return "";
  };
  REQUIRE(path_of({}) == "");
  REQUIRE(path_of({"model.evolution=lstm"}) == "model.evolution");
  REQUIRE(path_of({"model.alpha_aux=-1"}) == "model.alpha_aux");
  REQUIRE(path_of({"model.aux_hidden=[]"}) == "model.aux_hidden");
  REQUIRE(path_of({"model.extractor_hidden=-2"}) == "model.extractor_hidden");
  REQUIRE(path_of({"model.gru_kind=augru"}) == "model.gru_kind");  // unknown key
}

TEST_CASE("DIEN's packed path equals the padded one: logits, aux loss, attention, gradients",
          "[dien]") {
  for (auto kind : kAllKinds) {
    INFO("evolution " << gru_kind_name(kind));
    recsys::testing::seed(12);
    Dien packed(small_options(kind, true));
    Dien padded(small_options(kind, true).pack_valid(false));
    packed->to(torch::kFloat64);
    padded->to(torch::kFloat64);
    copy_parameters(*packed, *padded);
    // Garbage ids in the padding: only the lengths may decide what is a step.
    auto in = make_input({4, 1, 7, 3, 7, 2, 5}, 7, 9, /*pad_id=*/3);
    REQUIRE(packed->packs(in));
    REQUIRE_FALSE(padded->packs(in));
    auto labels = torch::tensor({1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0}, torch::kFloat64);
    auto run = [&](Dien& m) {
      auto out = m->forward_parts(in);
      auto loss = torch::binary_cross_entropy_with_logits(out.logits, labels) + out.aux_loss;
      loss.backward();
      return out;
    };
    auto a = run(packed), b = run(padded);
    require_close(a.logits, b.logits, 0, 1e-12);
    require_close(a.aux_loss, b.aux_loss, 0, 1e-12);
    if (kind != GruKind::kGru) require_close(a.attention, b.attention, 0, 1e-12);
    auto gb = padded->named_parameters();
    for (auto& p : packed->named_parameters()) {
      INFO("parameter " << p.key());
      REQUIRE(p.value().grad().defined());
      require_close(dense(p.value().grad()), dense(gb[p.key()].grad()), 1e-10, 1e-12);
    }
    // Inputs the packed path leaves to the padded one.
    auto empty = make_input({3, 0, 2}, 4, 5);
    CHECK_FALSE(packed->packs(empty));
    auto inconsistent = make_input({3, 2, 2}, 4, 5);
    inconsistent.hist_mask[1][3] = true;
    CHECK_FALSE(packed->packs(inconsistent));
  }
}

TEST_CASE("DIEN on a one-item catalogue is a config error naming the model", "[dien]") {
  // Without negatives the samples build, but the auxiliary loss still needs a negative behaviour
  // different from the true one: refused when the task is built, not on the prefetch thread.
  auto dir = recsys::testing::temp_dir("dien_one_item");
  auto path = (dir / "log.csv").string();
  {
    std::ofstream f(path);
    for (int u = 0; u < 10; ++u)
      for (int t = 0; t < 4; ++t) f << "u" << u << ",i0,c0," << t << "\n";
  }
  std::vector<std::string> overrides{"data.type=interactions_csv", "data.path=" + path, "data.header=false",
                                     R"(data.columns={"user":0,"item":1,"category":2,"timestamp":3})",
                                     "data.split=last", "data.negatives=0"};
  auto e = parse_config("configs/experiments/dien_taobao.json", overrides);
  try {
    e.build_task(e.seed);
    FAIL("expected a ConfigError");
  } catch (const recsys::ConfigError& err) {
    INFO(err.what());
    CHECK(err.path() == "model.type");
    CHECK(std::string(err.what()).find("at least 2 items, but the data has 1") != std::string::npos);
  }
  // Without the auxiliary loss no negative behaviour is drawn.
  overrides.push_back("model.alpha_aux=0");
  auto task = parse_config("configs/experiments/dien_taobao.json", overrides).build_task(e.seed);
  CHECK(task->train_examples() == 10 * 1);
}

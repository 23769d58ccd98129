#include "models/din/ctr_task.h"

#include <fstream>

#include "framework/config/config.h"
#include "framework/data/ctr_sources.h"
#include "framework/train/experiment.h"
#include "framework/util/errors.h"
#include "support.h"

using namespace recsys;
using nlohmann::json;

namespace {

train::Experiment parse(const std::string& path, const std::vector<std::string>& overrides = {}) {
  models::register_ctr_task();
  return train::parse_experiment(config::resolve(path, overrides));
}

/// The ConfigError path thrown by parsing `config`, or "" when it parses.
std::string error_path(const json& config) {
  models::register_ctr_task();
  try {
    train::parse_experiment(config);
  } catch (const ConfigError& e) {
    INFO(e.what());
    return e.path();
  }
  return "";
}

json tiny_csv_config(const std::string& path) {
  return {{"task", "ctr"},
          {"data",
           {{"type", "interactions_csv"},
            {"path", path},
            {"header", false},
            {"columns", {{"user", 0}, {"item", 1}, {"category", 2}, {"timestamp", 3}}}}},
          {"model", {{"type", "base_model"}}}};
}

}  // namespace

TEST_CASE("ctr task trains each model on the tiny synthetic configs", "[ctr][din]") {
  for (std::string type : {"din", "base_model", "wide_deep"}) {
    DYNAMIC_SECTION(type) {
      auto e = parse("configs/tests/ctr_" + type + ".json");
      REQUIRE(e.task == "ctr");
      torch::manual_seed(e.seed);
      torch::set_num_threads(1);
      auto task = e.build_task(e.seed);
      REQUIRE(task->train_examples() > 1000);
      REQUIRE(task->selection_metric() == std::make_pair(std::string("auc"), true));
      auto d = task->describe();
      REQUIRE(d["train_samples"].get<int64_t>() == task->train_examples());
      REQUIRE(d["valid_samples"].get<int64_t>() == 2 * 300);  // split last, 1 negative per positive

      // The loss of the first batches, then after training.
      auto mean_loss = [&](int64_t batches) {
        torch::NoGradGuard g;
        train::StreamOptions so;
        so.batch_size = 64;
        so.seed = 99;
        so.prefetch = 0;
        auto stream = task->train_stream(so);
        torch::Generator gen = at::detail::createCPUGenerator(1);
        double sum = 0;
        for (int64_t k = 0; k < batches; ++k)
          sum += task->forward(*stream->next(), gen).loss.item<double>();
        return sum / static_cast<double>(batches);
      };
      task->module().train();
      double before = mean_loss(10);
      auto before_valid = task->evaluate("valid");
      train::Trainer trainer(*task, e.trainer, train::RunDir(), e.config, e.seed);
      auto results = trainer.fit();
      task->module().train();
      double after = mean_loss(10);
      INFO(type << ": loss " << before << " -> " << after << ", results " << results.dump());
      REQUIRE(after < before - 0.05);
      const auto& m = results["metrics"];
      REQUIRE(m.size() == 3);
      for (auto key : {"auc", "gauc", "logloss"}) REQUIRE(m.contains(key));
      double auc = m["auc"], gauc = m["gauc"], logloss = m["logloss"];
      REQUIRE(auc > 0.6);
      REQUIRE(auc <= 1.0);
      REQUIRE(gauc > 0.55);
      REQUIRE(gauc <= 1.0);
      REQUIRE(logloss > 0);
      REQUIRE(logloss < 0.69);
      REQUIRE(results["valid_metrics"]["auc"].get<double>() > before_valid["auc"]);
    }
  }
}

TEST_CASE("ctr data type can be switched with --set overrides", "[ctr]") {
  auto dir = testing::temp_dir("ctr_csv");
  auto path = (dir / "log.csv").string();
  {
    std::ofstream f(path);
    for (int u = 0; u < 20; ++u)
      for (int t = 0; t < 6; ++t)
        f << "u" << u << "," << (u * 7 + t) % 15 << ",c" << t % 3 << "," << t << "\n";
  }
  auto e =
      parse("configs/experiments/din_taobao.json",
            {"data.type=interactions_csv", "data.path=" + path, "data.header=false",
             R"(data.columns={"user":0,"item":1,"category":2,"timestamp":3})", "data.split=last"});
  auto task = e.build_task(0);
  auto d = task->describe();
  REQUIRE(d["users"] == 20);
  REQUIRE(d["items"] == 15);
  REQUIRE(d["categories"] == 3);
  // 6 behaviours: targets 1..5 -> 3 train, 1 valid, 1 test positives, each with 1 negative.
  REQUIRE(d["train_samples"] == 20 * 3 * 2);
  REQUIRE(d["test_samples"] == 20 * 2);
  auto m = task->evaluate("test");
  REQUIRE(m.size() == 3);
  REQUIRE(m.count("auc") == 1);
}

TEST_CASE("ctr config errors name their JSON path", "[ctr]") {
  auto csv = tiny_csv_config("unused.csv");
  SECTION("misspelt data.columns") {
    auto c = csv;
    c["data"]["colums"] = c["data"]["columns"];
    c["data"].erase("columns");
    REQUIRE(error_path(c) == "data.colums");
  }
  SECTION("unknown column role") {
    auto c = csv;
    c["data"]["columns"]["usr"] = 0;
    c["data"]["columns"].erase("user");
    REQUIRE(error_path(c) == "data.columns.user");
  }
  SECTION("extra key inside columns") {
    auto c = csv;
    c["data"]["columns"]["rating"] = 4;
    REQUIRE(error_path(c) == "data.columns.rating");
  }
  SECTION("column name without a header") {
    auto c = csv;
    c["data"]["columns"]["item"] = "item_id";
    REQUIRE(error_path(c) == "data.columns.item");
  }
  SECTION("delimiter of two characters") {
    auto c = csv;
    c["data"]["delimiter"] = ";;";
    REQUIRE(error_path(c) == "data.delimiter");
  }
  SECTION("common sample keys") {
    auto c = csv;
    c["data"]["max_history"] = 0;
    REQUIRE(error_path(c) == "data.max_history");
    c = csv;
    c["data"]["split"] = "random";
    REQUIRE(error_path(c) == "data.split");
    c = csv;
    c["data"]["test_fraction"] = 0.7;
    c["data"]["valid_fraction"] = 0.4;
    REQUIRE(error_path(c) == "data.valid_fraction");
    c = csv;
    c["data"]["min_user_length"] = 0;
    REQUIRE(error_path(c) == "data.min_user_length");
  }
  SECTION("model keys") {
    auto c = csv;
    c["model"]["type"] = "dinn";
    REQUIRE(error_path(c) == "model.type");
    c = csv;
    c["model"]["attention_softmax"] = true;  // a DIN key on base_model
    REQUIRE(error_path(c) == "model.attention_softmax");
    c = csv;
    c["model"]["regularization"] = "mba";
    REQUIRE(error_path(c) == "model.reg_lambda");
    c = csv;
    c["model"]["hidden"] = json::array();
    REQUIRE(error_path(c) == "model.hidden");
  }
  SECTION("source keys") {
    json c = {{"task", "ctr"}, {"data", {{"type", "taobao"}}}};
    REQUIRE(error_path(c) == "data.path");
    c["data"]["path"] = "x.csv";
    c["data"]["behaviors"] = {"pv", "click"};
    REQUIRE(error_path(c) == "data.behaviors");
    c = {{"task", "ctr"}, {"data", {{"type", "synthetic"}, {"drift", 1.5}}}};
    REQUIRE(error_path(c) == "data.drift");
    c = {{"task", "ctr"}, {"data", {{"type", "tabao"}}}};
    REQUIRE(error_path(c) == "data.type");
  }
}

TEST_CASE("the synthetic CTR generator is seeded and follows its interests", "[ctr]") {
  data::SyntheticCtrOptions o;
  o.num_users = 200;
  o.num_items = 400;
  o.num_categories = 40;
  o.seed = 7;
  auto a = data::make_synthetic_ctr(o);
  auto b = data::make_synthetic_ctr(o);
  REQUIRE(a.user_items == b.user_items);
  REQUIRE(a.num_users == 202);
  REQUIRE(a.num_items == 402);
  REQUIRE(a.num_categories == 42);
  // The next behaviour's category repeats one of the previous 5 categories far more often than
  // the 5/40 a history-blind draw would give.
  int64_t hits = 0, total = 0;
  for (int64_t u = 2; u < a.num_users; ++u) {
    const auto& s = a.user_items[u];
    for (size_t t = 5; t < s.size(); ++t) {
      bool hit = false;
      for (size_t k = t - 5; k < t; ++k) hit |= a.item_category[s[k]] == a.item_category[s[t]];
      hits += hit;
      ++total;
    }
  }
  REQUIRE(static_cast<double>(hits) / static_cast<double>(total) > 0.6);
  o.seed = 8;
  REQUIRE(data::make_synthetic_ctr(o).user_items != a.user_items);
}

TEST_CASE("ctr task: the sample builder's errors name data.* paths and the data file", "[ctr]") {
  // One item only: no negative can be drawn (data.negatives); 2 behaviours per user: no
  // training samples, named by the file they came from.
  auto dir = testing::temp_dir("ctr_sample_errors");
  auto write = [&](const std::string& name, int behaviours, int items) {
    auto path = (dir / name).string();
    std::ofstream f(path);
    for (int u = 0; u < 4; ++u)
      for (int t = 0; t < behaviours; ++t) f << u << "," << 5 + t % items << ",7,pv," << 100 + t << "\n";
    return path;
  };
  auto one_item = parse("configs/experiments/din_taobao.json", {"data.path=" + write("one.csv", 6, 1)});
  try {
    one_item.build_task(0);
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    CHECK(e.path() == "data.negatives");
    CHECK(std::string(e.what()).rfind("data.negatives: negative sampling needs", 0) == 0);
  }
  const auto short_path = write("short.csv", 2, 3);
  auto short_log = parse("configs/experiments/din_taobao.json", {"data.path=" + short_path, "data.split=\"last\""});
  try {
    short_log.build_task(0);
    FAIL("expected a DataError");
  } catch (const DataError& e) {
    CHECK(e.file() == short_path);
    CHECK(std::string(e.what()).find("no training samples") != std::string::npos);
  }
}

TEST_CASE("ctr task: empty validation or test splits name the fraction that emptied them", "[ctr]") {
  // 20 users of 4 behaviours: 3 targets each, so the preset's valid_fraction 0.1 rounds to none.
  auto dir = testing::temp_dir("ctr_empty_split");
  auto path = (dir / "log.csv").string();
  {
    std::ofstream f(path);
    for (int u = 0; u < 20; ++u)
      for (int t = 0; t < 4; ++t) f << "u" << u << "," << (u + t) % 9 << ",c" << t % 2 << "," << t << "\n";
  }
  const std::vector<std::string> csv{"data.type=interactions_csv", "data.path=" + path, "data.header=false",
                                     R"(data.columns={"user":0,"item":1,"category":2,"timestamp":3})",
                                     "data.split=fraction"};
  auto build_error = [&](std::vector<std::string> overrides) -> std::string {
    overrides.insert(overrides.begin(), csv.begin(), csv.end());
    auto e = parse("configs/experiments/din_taobao.json", overrides);
    try {
      e.build_task(0);
    } catch (const ConfigError& err) {
      INFO(err.what());
      CHECK(std::string(err.what()).find("split is empty") != std::string::npos);
      return err.path();
    }
    return "";
  };
  REQUIRE(build_error({}) == "data.valid_fraction");
  REQUIRE(build_error({"data.valid_fraction=0.3", "data.test_fraction=0"}) == "data.test_fraction");
  // Without a test evaluation an empty test split is fine.
  REQUIRE(build_error({"data.valid_fraction=0.3", "data.test_fraction=0", "train.evaluate_test=false"}) ==
          "");
  REQUIRE(build_error({"data.valid_fraction=0.3"}) == "");
}

// recsys eval / export: a trained model rebuilt from its checkpoint evaluates to the run's own
// results, the exports agree with each other and with evaluation, and the writers' files read
// back exactly.
#include <spdlog/spdlog.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "framework/cli/commands.h"
#include "framework/config/config.h"
#include "framework/eval/ctr_metrics.h"
#include "framework/train/experiment.h"
#include "framework/train/saved_run.h"
#include "framework/util/errors.h"
#include "support.h"

using Json = nlohmann::json;
namespace fs = std::filesystem;
using recsys::train::ExportTable;
using recsys::train::load_saved_run;

namespace {

struct QuietLogs {
  QuietLogs() { spdlog::set_level(spdlog::level::warn); }
  ~QuietLogs() { spdlog::set_level(spdlog::level::info); }
};

/// Trains `config_path` into dir/run, checkpoints on unless the overrides say otherwise; returns
/// results.json.
Json train(const fs::path& dir, const std::string& config_path, std::vector<std::string> overrides) {
  recsys::cli::register_builtins();
  overrides.insert(overrides.begin(), "train.checkpoints=true");
  auto config = recsys::config::resolve(config_path, overrides);
  return recsys::train::run_experiment(recsys::train::parse_experiment(config),
                                       recsys::train::RunDir(dir / "run"));
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// Reads tab-separated text with Python csv's quoting: a field that starts with a double quote
/// runs to the closing one (tabs and line breaks inside), "" standing for one quote.
std::vector<std::vector<std::string>> read_tsv(const fs::path& p) {
  const std::string text = slurp(p);
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false, any = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') {
        field.push_back('"');
        ++i;
      } else if (c == '"') {
        quoted = false;
      } else {
        field.push_back(c);
      }
    } else if (c == '"' && field.empty()) {
      quoted = any = true;
    } else if (c == '\t' || c == '\n') {
      row.push_back(field);
      field.clear();
      if (c == '\n') {
        rows.push_back(row);
        row.clear();
      }
    } else {
      field.push_back(c);
    }
  }
  REQUIRE(!quoted);
  (void)any;
  return rows;
}

void require_same_metrics(const recsys::train::Metrics& got, const Json& expected) {
  REQUIRE(got.size() == expected.size());
  for (const auto& [name, value] : got) {
    INFO(name);
    REQUIRE(expected.contains(name));
    CHECK(value == expected[name].get<double>());  // the same computation on the same parameters
  }
}

}  // namespace

TEST_CASE("saved run: the best checkpoint evaluates to the run's test results", "[saved_run]") {
  QuietLogs quiet;
  auto dir = recsys::testing::temp_dir("saved_run_eval");
  SECTION("retrieval") {
    auto results = train(dir, "configs/tests/twotower_tiny.json", {"train.epochs=2"});
    auto run = load_saved_run((dir / "run").string(), "best", {}, "test");
    CHECK(run.step == results["best_step"].get<int64_t>());
    CHECK(run.checkpoint == dir / "run" / "checkpoints" / "best.pt");
    require_same_metrics(run.task->evaluate("test"), results["metrics"]);
    // The last checkpoint is the last validation's state: its validation metrics are the last
    // record of metrics.jsonl.
    auto last = load_saved_run((dir / "run").string(), "last", {}, "valid");
    std::ifstream in(dir / "run" / "metrics.jsonl");
    Json last_valid;
    for (std::string line; std::getline(in, line);) {
      auto rec = Json::parse(line);
      if (rec.value("split", "") == "valid") last_valid = rec["metrics"];
    }
    REQUIRE(!last_valid.is_null());
    require_same_metrics(last.task->evaluate("valid"), last_valid);
  }
  SECTION("dien (negative histories drawn from the run's seed)") {
    auto results = train(dir, "configs/tests/ctr_dien.json", {"train.epochs=1"});
    auto run = load_saved_run((dir / "run").string(), "best", {}, "test");
    require_same_metrics(run.task->evaluate("test"), results["metrics"]);
  }
}

TEST_CASE("saved run: retrieval exports agree with each other and with evaluation", "[saved_run]") {
  QuietLogs quiet;
  auto dir = recsys::testing::temp_dir("saved_run_export");
  // Users with fewer than 12 positives keep them all in training: they have no held-out items.
  train(dir, "configs/tests/twotower_tiny.json", {"train.epochs=1", "data.split.min_positives=12"});
  auto run = load_saved_run((dir / "run").string(), "best", {}, "test");
  const int64_t K = 20;  // one of the config's eval.ks
  auto items = run.task->export_table({"item_embeddings", "test", K});
  auto users = run.task->export_table({"user_embeddings", "test", K});
  auto recs = run.task->export_table({"recommendations", "test", K});
  auto metrics = run.task->evaluate("test");

  REQUIRE(items.values.size(0) == 300);
  REQUIRE(users.values.size(0) == 200);
  CHECK(items.key_columns == std::vector<std::string>{"item", "name"});
  recsys::testing::require_close(items.values.norm(2, 1), torch::ones({300}), 1e-5, 1e-5);  // L2-normalised tower

  std::map<std::string, int64_t> item_row, user_row;
  for (size_t r = 0; r < items.keys.size(); ++r) item_row[items.keys[r][0]] = static_cast<int64_t>(r);
  for (size_t r = 0; r < users.keys.size(); ++r) user_row[users.keys[r][0]] = static_cast<int64_t>(r);
  REQUIRE(recs.key_columns == std::vector<std::string>{"user", "rank", "item", "name"});
  REQUIRE(recs.value_columns == std::vector<std::string>{"score", "held_out"});
  const float* v = recs.values.data_ptr<float>();
  double hits = 0;
  std::map<std::string, int64_t> per_user;
  float previous = 0;
  for (size_t r = 0; r < recs.keys.size(); ++r) {
    const auto& key = recs.keys[r];
    const int64_t rank = std::stoll(key[1]);
    CHECK(rank == ++per_user[key[0]]);
    // Each score is the dot product of the exported user and item embeddings, best first.
    const double dot = users.values[user_row.at(key[0])].dot(items.values[item_row.at(key[2])]).item<double>();
    CHECK(std::abs(v[2 * r] - dot) < 1e-5);
    if (rank > 1) CHECK(v[2 * r] <= previous);
    previous = v[2 * r];
    CHECK((v[2 * r + 1] == 0.0f || v[2 * r + 1] == 1.0f));
    hits += v[2 * r + 1];
  }
  for (const auto& [user, count] : per_user) CHECK(count == K);
  CHECK(static_cast<double>(per_user.size()) == metrics.at("users"));
  // Recall@K from the held-out flags is evaluation's.
  CHECK(hits / metrics.at("test_points") == metrics.at("recall@20"));

  // A k beyond the items a user has not seen: the list holds only those (no known item, no -inf).
  auto all = run.task->export_table({"recommendations", "test", 1000});
  std::map<std::string, int64_t> listed;
  for (size_t r = 0; r < all.keys.size(); ++r) {
    ++listed[all.keys[r][0]];
    CHECK(std::isfinite(all.values[static_cast<int64_t>(r)][0].item<float>()));
  }
  for (const auto& [user, count] : listed) {
    CHECK(count < 300);
    CHECK(count > 200);  // tiny histories: most of the 300 items remain
  }

  // Every user: those without held-out items too, and the same lists for the others.
  auto everyone = run.task->export_table({"recommendations", "test", K, true});
  std::map<std::string, int64_t> listed_all;
  for (const auto& key : everyone.keys) ++listed_all[key[0]];
  CHECK(static_cast<int64_t>(listed_all.size()) == 200);
  CHECK(per_user.size() < 200);
  int64_t matched = 0;
  for (size_t r = 0, e = 0; r < recs.keys.size(); ++r) {
    while (e < everyone.keys.size() && everyone.keys[e] != recs.keys[r]) ++e;
    matched += e < everyone.keys.size();
  }
  CHECK(matched == static_cast<int64_t>(recs.keys.size()));

  // The user embeddings for the validation split use a shorter history: they differ.
  auto valid_users = run.task->export_table({"user_embeddings", "valid", K});
  CHECK(!torch::equal(valid_users.values, users.values));
}

TEST_CASE("saved run: CTR predictions give evaluation's AUC", "[saved_run]") {
  QuietLogs quiet;
  auto dir = recsys::testing::temp_dir("saved_run_ctr");
  auto results = train(dir, "configs/tests/ctr_din.json", {"train.epochs=1"});
  auto run = load_saved_run((dir / "run").string(), "best", {}, "test");
  auto kinds = run.task->export_kinds();
  REQUIRE(kinds.size() == 1);
  CHECK(kinds[0].name == "predictions");
  auto t = run.task->export_table({"predictions", "test", 1});
  REQUIRE(t.values.size(0) == results["data"]["test_samples"].get<int64_t>());
  std::vector<float> logits, labels, probs;
  for (int64_t i = 0; i < t.values.size(0); ++i) {
    labels.push_back(t.values[i][0].item<float>());
    logits.push_back(t.values[i][1].item<float>());
    probs.push_back(t.values[i][2].item<float>());
    CHECK(std::abs(probs.back() - 1.0f / (1.0f + std::exp(-logits.back()))) < 1e-6);
  }
  CHECK(recsys::eval::auc(logits, labels) == results["metrics"]["auc"].get<double>());
  CHECK(recsys::eval::logloss(probs, labels) == results["metrics"]["logloss"].get<double>());
  CHECK(t.key_columns == std::vector<std::string>{"sample", "user", "item", "category"});
  CHECK(t.keys[0][0] == "0");
  CHECK(t.keys.back()[0] == std::to_string(t.keys.size() - 1));
  CHECK(t.keys[0][1].rfind("u", 0) == 0);  // raw user ids of the synthetic log
}

TEST_CASE("saved run: bad targets, overrides and checkpoints are named", "[saved_run]") {
  QuietLogs quiet;
  auto dir = recsys::testing::temp_dir("saved_run_bad");
  train(dir, "configs/tests/twotower_tiny.json", {"train.epochs=1"});
  const std::string run_dir = (dir / "run").string();
  CHECK_THROWS_AS(load_saved_run((dir / "nothing").string(), "best", {}, "test"), recsys::UsageError);
  CHECK_THROWS_AS(load_saved_run(run_dir, "middle", {}, "test"), recsys::UsageError);
  CHECK_THROWS_AS(load_saved_run(run_dir, "best", {}, "train"), recsys::UsageError);
  // Only evaluation settings may change: the model and its data are the checkpoint's.
  try {
    load_saved_run(run_dir, "best", {"model.hidden=[32,8]"}, "test");
    FAIL("a model override was accepted");
  } catch (const recsys::ConfigError& e) {
    CHECK(e.path() == "model.hidden");
  }
  auto run = load_saved_run(run_dir, "best", {"eval.ks=[3]", "train.threads=2"}, "test");
  CHECK(run.task->evaluate("test").count("recall@3") == 1);

  // A truncated checkpoint is named, and the original is untouched by the attempt.
  const auto best = dir / "run" / "checkpoints" / "best.pt";
  const auto bytes = slurp(best);
  const auto cut = dir / "cut.pt";
  {
    std::ofstream out(cut, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  try {
    load_saved_run(cut.string(), "best", {}, "test");
    FAIL("a truncated checkpoint loaded");
  } catch (const recsys::DataError& e) {
    CHECK(e.file() == cut.string());
  }
  CHECK(slurp(best) == bytes);

  // Damaged tensor data inside an intact archive: the stored checksum catches it. The first bytes
  // of the largest parameter are found in the file and one of them is changed.
  {
    torch::Tensor largest;
    for (const auto& p : run.task->module().parameters())
      if (!largest.defined() || p.numel() > largest.numel()) largest = p.detach().contiguous();
    // From the tensor's middle: its first row is the zero padding row.
    const std::string pattern(static_cast<const char*>(largest.data_ptr()) + largest.nbytes() / 2, 32);
    auto damaged = bytes;
    const auto at = damaged.find(pattern);
    REQUIRE(at != std::string::npos);
    REQUIRE(damaged.find(pattern, at + 1) == std::string::npos);
    damaged[at + 5] = static_cast<char>(damaged[at + 5] ^ 0x10);
    const auto flipped = dir / "flipped.pt";
    std::ofstream(flipped, std::ios::binary).write(damaged.data(), static_cast<std::streamsize>(damaged.size()));
    try {
      load_saved_run(flipped.string(), "best", {}, "test");
      FAIL("a damaged checkpoint loaded");
    } catch (const recsys::DataError& e) {
      CHECK(e.file() == flipped.string());
      CHECK(std::string(e.what()).find("damaged") != std::string::npos);
    }
  }
  // A run without checkpoints says why it has none.
  train(dir / "plain", "configs/tests/twotower_tiny.json", {"train.epochs=1", "train.checkpoints=false"});
  try {
    load_saved_run((dir / "plain" / "run").string(), "best", {}, "test");
    FAIL("a run without checkpoints loaded");
  } catch (const recsys::DataError& e) {
    CHECK(std::string(e.what()).find("train.checkpoints") != std::string::npos);
  }
}

TEST_CASE("export writers: TSV reads back exactly, NPY has numpy's layout", "[saved_run]") {
  auto dir = recsys::testing::temp_dir("export_writers");
  ExportTable t;
  t.key_columns = {"item", "name"};
  t.keys = {{"7", "Tab\there"}, {"9", "Line\nbreak"}, {"11", "\"Great\" \"Films\""}};
  t.value_columns = {"a", "b"};
  t.values = torch::tensor({0.1f, -3.0e-8f, 1.0f / 3.0f, 123456789.0f, -0.0f, 7.25f}).reshape({3, 2});

  recsys::train::write_table_tsv(t, dir / "t.tsv");
  auto rows = read_tsv(dir / "t.tsv");
  REQUIRE(rows.size() == 4);
  CHECK(rows[0] == std::vector<std::string>{"item", "name", "a", "b"});
  // Keys with tabs, line breaks and quotes come back whole.
  CHECK(rows[1][1] == "Tab\there");
  CHECK(rows[2][1] == "Line\nbreak");
  CHECK(rows[3][1] == "\"Great\" \"Films\"");
  CHECK(slurp(dir / "t.tsv").find("\t\"\"\"Great\"\" \"\"Films\"\"\"\t") != std::string::npos);
  CHECK(slurp(dir / "t.tsv").find("\n7\t\"Tab\there\"\t") != std::string::npos);
  for (int64_t r = 0; r < 3; ++r)
    for (int64_t c = 0; c < 2; ++c) {
      const float expected = t.values[r][c].item<float>();
      const float parsed = std::strtof(rows[static_cast<size_t>(r + 1)][static_cast<size_t>(c + 2)].c_str(), nullptr);
      CHECK(std::memcmp(&parsed, &expected, sizeof(float)) == 0);  // bit for bit, -0 included
    }

  recsys::train::write_table_npy(t, dir / "t.npy");
  const auto npy = slurp(dir / "t.npy");
  REQUIRE(npy.size() > 10);
  CHECK(npy.compare(0, 8, std::string("\x93NUMPY\x01\x00", 8)) == 0);
  const size_t header_len = static_cast<unsigned char>(npy[8]) | (static_cast<unsigned char>(npy[9]) << 8);
  CHECK((10 + header_len) % 64 == 0);
  const std::string header = npy.substr(10, header_len);
  CHECK(header.find("'descr': '<f4'") != std::string::npos);
  CHECK(header.find("'fortran_order': False") != std::string::npos);
  CHECK(header.find("'shape': (3, 2)") != std::string::npos);
  CHECK(header.back() == '\n');
  REQUIRE(npy.size() == 10 + header_len + 6 * sizeof(float));
  CHECK(std::memcmp(npy.data() + 10 + header_len, t.values.data_ptr<float>(), 6 * sizeof(float)) == 0);
  auto keys = read_tsv(dir / "t.keys.tsv");
  REQUIRE(keys.size() == 4);
  CHECK(keys[0] == std::vector<std::string>{"item", "name"});
  CHECK(keys[1] == std::vector<std::string>{"7", "Tab\there"});
  CHECK(slurp(dir / "t.columns.txt") == "a\nb\n");
}

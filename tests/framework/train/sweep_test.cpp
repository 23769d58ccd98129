// Sweep expansion, rerun safety and the summary. Finished runs are written by hand (config.json +
// results.json, as RunDir leaves them), so the cases run in milliseconds; only the busy-run case
// trains one tiny run.
#include "framework/train/sweep.h"
#include "framework/train/run_dir.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "framework/cli/commands.h"
#include "framework/config/config.h"
#include "support.h"

using namespace recsys;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const char* kBase = "configs/tests/twotower_tiny.json";

void write(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p) << text;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

/// A sweep over the tiny two-tower config, with its base given as an absolute path so that the
/// sweep file can live in a temporary directory.
json tiny_sweep(json extra) {
  json sweep = {{"base", fs::absolute(kBase).string()}, {"set", {{"train.epochs", 1}}}};
  sweep.update(extra);
  return sweep;
}

/// The config run_sweep resolves for `run`: the sweep's "set", the run's overrides, then `cli`.
json resolved(const json& sweep, const train::SweepRun& run, const std::vector<std::string>& cli = {}) {
  std::vector<std::string> ov;
  for (auto it = sweep["set"].begin(); it != sweep["set"].end(); ++it) ov.push_back(it.key() + "=" + it.value().dump());
  ov.insert(ov.end(), run.overrides.begin(), run.overrides.end());
  ov.insert(ov.end(), cli.begin(), cli.end());
  return config::resolve(sweep["base"].get<std::string>(), ov);
}

/// A finished run as RunDir leaves it: config.json, then results.json.
void finish(const fs::path& out, const std::string& name, const json& config, const json& metrics) {
  write(out / "runs" / name / "config.json", config.dump(2) + "\n");
  write(out / "runs" / name / "results.json", json{{"metrics", metrics}, {"valid_metrics", metrics}}.dump(2) + "\n");
}

/// The first line of `text` after `marker` that starts with `prefix` ("" when there is none).
std::string line_after(const std::string& text, const std::string& marker, const std::string& prefix) {
  auto at = text.find(marker);
  if (at == std::string::npos) return "";
  std::istringstream in(text.substr(at));
  for (std::string line; std::getline(in, line);)
    if (line.rfind(prefix, 0) == 0) return line;
  return "";
}

train::SweepOptions options_for(const fs::path& dir, const json& sweep) {
  write(dir / "sweep.json", sweep.dump(2));
  train::SweepOptions o;
  o.sweep_path = (dir / "sweep.json").string();
  o.out_dir = (dir / "out").string();
  o.log_level = "warn";
  return o;
}

/// The JSON path of the ConfigError `f` throws ("<none>" when it throws nothing).
template <class F>
std::string error_path(F f, std::string* message = nullptr) {
  try {
    f();
  } catch (const ConfigError& e) {
    if (message) *message = e.what();
    return e.path();
  }
  return "<none>";
}

}  // namespace

TEST_CASE("sweep: a rerun whose config differs from a finished run's stops before training", "[sweep]") {
  cli::register_builtins();
  auto dir = testing::temp_dir("sweep_changed_config");
  json sweep = tiny_sweep({{"seeds", {1}}, {"variants", json::array({{{"name", "adam"}}})}});
  auto o = options_for(dir, sweep);
  auto runs = train::expand_sweep(sweep, {});
  REQUIRE(runs.size() == 1);
  fs::path run = fs::path(o.out_dir) / "runs" / runs[0].name;
  finish(o.out_dir, runs[0].name, resolved(sweep, runs[0], {"train.optimizer.lr=0.001"}), {{"auc", 0.7}});
  const std::string results = slurp(run / "results.json");

  SECTION("the same config: the run is skipped and summarised") {
    o.overrides = {"train.optimizer.lr=0.001"};  // survives the round trip through config.json
    REQUIRE(train::run_sweep(o) == 0);
    REQUIRE(slurp(run / "results.json") == results);
    REQUIRE(slurp(fs::path(o.out_dir) / "results.md").find("| adam | 1 |") != std::string::npos);
  }
  SECTION("another --set: ConfigError at the first differing path, naming the run") {
    o.overrides = {"train.optimizer.lr=0.5"};
    std::string message;
    REQUIRE(error_path([&] { train::run_sweep(o); }, &message) == "train.optimizer.lr");
    INFO(message);
    REQUIRE(message.find("'" + runs[0].name + "'") != std::string::npos);
    REQUIRE(message.find("0.001") != std::string::npos);
    REQUIRE(message.find("--out") != std::string::npos);
    // Nothing saved is touched, and nothing is started.
    REQUIRE(slurp(run / "results.json") == results);
    REQUIRE_FALSE(fs::exists(fs::path(o.out_dir) / "sweep.json"));
    REQUIRE_FALSE(fs::exists(fs::path(o.out_dir) / "results.md"));
  }
  SECTION("results without config.json cannot be matched to the sweep") {
    fs::remove(run / "config.json");
    o.overrides = {"train.optimizer.lr=0.001"};
    std::string message;
    REQUIRE(error_path([&] { train::run_sweep(o); }, &message) == "");
    REQUIRE(message.find("config.json") != std::string::npos);
    REQUIRE(slurp(run / "results.json") == results);
  }
}

TEST_CASE("sweep: --only still summarises every finished variant", "[sweep]") {
  cli::register_builtins();
  auto dir = testing::temp_dir("sweep_only_summary");
  json sweep = tiny_sweep({{"seeds", {1}},
                           {"baseline", "a"},
                           {"variants", json::array({{{"name", "a"}}, {{"name", "b"}, {"set", {{"train.batch_size", 32}}}}})}});
  auto o = options_for(dir, sweep);
  for (auto& r : train::expand_sweep(sweep, {}))
    finish(o.out_dir, r.name, resolved(sweep, r), {{"auc", r.variant == "a" ? 0.7 : 0.8}});
  o.only = {"b"};
  REQUIRE(train::run_sweep(o) == 0);  // both finished: nothing trains
  std::string csv = slurp(fs::path(o.out_dir) / "results.csv");
  INFO(csv);
  REQUIRE(csv.find("\"a\",auc,0.7,") != std::string::npos);
  REQUIRE(csv.find("\"b\",auc,0.8,") != std::string::npos);
  std::string md = slurp(fs::path(o.out_dir) / "results.md");
  REQUIRE(line_after(md, "RelaImpr against", "| b |") == "| b | +50.00% |");
}

TEST_CASE("sweep: a summary file that cannot be written is an error, not a silent loss", "[sweep]") {
  auto dir = testing::temp_dir("sweep_write_error");
  json sweep = {{"variants", json::array({{{"name", "a"}}})}};
  auto runs = train::expand_sweep(sweep, {});
  finish(dir, runs[0].name, json::object(), {{"auc", 0.7}});
  fs::create_directories(dir / "results.md");  // in the way of the file
  REQUIRE_THROWS(train::summarize_sweep(sweep, runs, dir.string()));
  // results.csv, written before, is whole.
  REQUIRE(slurp(dir / "results.csv") == "variant,metric,mean,std,n\n\"a\",auc,0.7,0,1\n");
}

TEST_CASE("sweep: runs that would share a directory are rejected naming both variants", "[sweep]") {
  std::string message;
  SECTION("names equal after safe_name") {
    json sweep = {{"variants", json::array({{{"name", "no aug"}}, {{"name", "no_aug"}}})}};
    REQUIRE(error_path([&] { train::expand_sweep(sweep, {}); }, &message) == "variants[1]");
    REQUIRE(message.find("variants[0]") != std::string::npos);
    REQUIRE(message.find("'no_aug'") != std::string::npos);
  }
  SECTION("the same name twice, also under --only") {
    json sweep = {{"variants", json::array({{{"name", "a"}}, {{"name", "b"}}, {{"name", "a"}}})}};
    REQUIRE(error_path([&] { train::expand_sweep(sweep, {"b"}); }, &message) == "variants[2]");
    REQUIRE(message.find("variants[0]") != std::string::npos);
  }
  SECTION("object form") {
    json sweep = {{"variants", {{"x y", json::object()}, {"x_y", json::object()}}}};
    REQUIRE(error_path([&] { train::expand_sweep(sweep, {}); }, &message) == "variants.x_y");
    REQUIRE(message.find("variants.x y") != std::string::npos);
  }
  SECTION("grid values") {
    json sweep = {{"grid", {{"data.tag", {"a b", "a_b"}}}}};
    REQUIRE(error_path([&] { train::expand_sweep(sweep, {}); }, &message) == "grid");
    REQUIRE(message.find("data.tag=\"a_b\"") != std::string::npos);
  }
  SECTION("a name that is no directory") {
    json sweep = {{"variants", json::array({{{"name", ".."}}})}};
    REQUIRE(error_path([&] { train::expand_sweep(sweep, {}); }) == "variants[0]");
  }
  SECTION("distinct names pass") {
    json sweep = {{"variants", json::array({{{"name", "no aug"}}, {{"name", "aug"}}})}, {"seeds", {1, 2}}};
    REQUIRE(train::expand_sweep(sweep, {}).size() == 4);
  }
}

TEST_CASE("sweep: summary keys are type-checked at expansion, before any training", "[sweep]") {
  json variants = json::array({{{"name", "a"}}, {{"name", "b"}}});
  auto path_of = [&](const json& extra, std::string* message = nullptr) {
    json sweep = {{"variants", variants}};
    sweep.update(extra);
    return error_path([&] { train::expand_sweep(sweep, {}); }, message);
  };
  std::string message;
  CHECK(path_of({{"metrics", "auc"}}) == "metrics");
  CHECK(path_of({{"metrics", json::array()}}) == "metrics");
  CHECK(path_of({{"metrics", {"auc", 3}}}) == "metrics[1]");
  CHECK(path_of({{"baseline", 1}}) == "baseline");
  CHECK(path_of({{"baseline", "c"}}, &message) == "baseline");
  CHECK(message.find("known: a, b") != std::string::npos);
  CHECK(path_of({{"name", 5}}) == "name");
  CHECK(path_of({{"description", {"x"}}}) == "description");
  CHECK(path_of({{"grid", {{"seed", {1, "two"}}}}}) == "grid.seed");
  CHECK(path_of({{"baseline", "b"}, {"metrics", {"auc"}}, {"name", "n"}, {"description", "d"}}) == "<none>");
  // run_sweep stops before anything is written.
  cli::register_builtins();
  auto dir = testing::temp_dir("sweep_bad_metrics");
  auto o = options_for(dir, tiny_sweep({{"variants", variants}, {"metrics", json::array({"auc", 1})}}));
  CHECK(error_path([&] { train::run_sweep(o); }) == "metrics[1]");
  CHECK_FALSE(fs::exists(o.out_dir));
}

TEST_CASE("sweep: RelaImpr is '-' when undefined, and no baseline comes from other grid values", "[sweep]") {
  auto dir = testing::temp_dir("sweep_relaimpr");
  json sweep = {{"variants", json::array({{{"name", "base"}}, {{"name", "v"}}})},
                {"grid", {{"x", {1, 2, 3, 4}}}},
                {"seeds", {1, 2}},
                {"baseline", "base"},
                {"metrics", {"auc"}}};
  auto runs = train::expand_sweep(sweep, {});
  // base: AUC 0.5 at x=1 (random: no ratio), no results at x=2 (failed), 0.6 at x=3, NaN (saved as
  // null) at x=4; v: 0.6 at x=1, 0.7 elsewhere.
  for (auto& r : runs) {
    json auc;
    if (r.variant == "base") {
      if (r.group == "base[x=2]") continue;
      auc = r.group == "base[x=1]" ? json(0.5) : r.group == "base[x=3]" ? json(0.6) : json(nullptr);
    } else {
      auc = r.group == "v[x=1]" ? 0.6 : 0.7;
    }
    finish(dir, r.name, json::object(), {{"auc", auc}});
  }
  train::summarize_sweep(sweep, runs, dir.string());
  std::string md = slurp(dir / "results.md");
  INFO(md);
  // Differences: x=2 has no baseline at its grid values; x=4's baseline has no number.
  CHECK(line_after(md, "Difference to", "| v[x=2] |") == "| v[x=2] | 0 | - |");
  CHECK(line_after(md, "Difference to", "| v[x=3] |") == "| v[x=3] | 2 | +0.1000 [+0.1000, +0.1000] |");
  CHECK(line_after(md, "Difference to", "| v[x=4] |") == "| v[x=4] | 2 | - |");
  CHECK(line_after(md, "RelaImpr against", "| v[x=1] |") == "| v[x=1] | - |");
  CHECK(line_after(md, "RelaImpr against", "| v[x=2] |") == "| v[x=2] | - |");
  CHECK(line_after(md, "RelaImpr against", "| v[x=3] |") == "| v[x=3] | +100.00% |");
  CHECK(line_after(md, "RelaImpr against", "| v[x=4] |") == "| v[x=4] | - |");
  CHECK(md.find("inf") == std::string::npos);
  CHECK(md.find("nan") == std::string::npos);
}

TEST_CASE("sweep: a run held by another process is skipped, not failed, and trained once free", "[sweep]") {
  cli::register_builtins();
  auto dir = testing::temp_dir("sweep_busy_run");
  json sweep = tiny_sweep({{"seeds", {1}}, {"baseline", "a"}, {"variants", json::array({{{"name", "a"}}})}});
  auto o = options_for(dir, sweep);
  const auto run = fs::path(o.out_dir) / "runs" / train::expand_sweep(sweep, {})[0].name;
  fs::create_directories(run);
  {
    const train::DirectoryLock held(run);  // a concurrent sweep (or train --out) on this run
    REQUIRE(train::run_sweep(o) == 0);
    CHECK(!fs::exists(run / "error.txt"));
    CHECK(!fs::exists(run / "results.json"));
    // The same hold refuses a second one.
    CHECK_THROWS_AS(train::DirectoryLock(run), train::DirectoryBusy);
  }
  REQUIRE(train::run_sweep(o) == 0);
  CHECK(fs::exists(run / "results.json"));
}

TEST_CASE("sweep: a data error every run shares, or a metric no run reports, ends it before training",
          "[sweep]") {
  cli::register_builtins();
  auto trained_nothing = [](const fs::path& out) {
    std::error_code ec;
    for (auto& f : fs::recursive_directory_iterator(out / "runs", ec)) {
      INFO(f.path().string());
      CHECK(f.path().filename() != "error.txt");
      CHECK(f.path().filename() != "results.json");
    }
  };
  json variants = json::array({{{"name", "a"}}, {{"name", "b"}, {"set", {{"train.optimizer.lr", 0.01}}}}});
  {
    // Every run reads the same (missing) MovieLens directory: the first one's data load fails,
    // and the sweep stops there with the DataError (exit 2) instead of failing each run in turn.
    auto dir = testing::temp_dir("sweep_shared_data_error");
    json sweep = {{"base", fs::absolute("configs/experiments/twotower_movielens.json").string()},
                  {"variants", variants}};
    auto o = options_for(dir, sweep);
    o.overrides = {"data.path=\"" + (dir / "nowhere").string() + "\""};
    CHECK_THROWS_AS(train::run_sweep(o), DataError);
    trained_nothing(o.out_dir);
  }
  {
    // A metric the task does not report (recal@5): named by its path before anything trains.
    auto dir = testing::temp_dir("sweep_unknown_metric");
    auto o = options_for(dir, tiny_sweep({{"variants", variants}, {"metrics", {"recall@20", "recal@5"}}}));
    std::string message;
    CHECK(error_path([&] { train::run_sweep(o); }, &message) == "metrics[1]");
    CHECK(message.find("recall@5") != std::string::npos);  // the known names are listed
    trained_nothing(o.out_dir);
    // Known names pass.
    auto ok = options_for(testing::temp_dir("sweep_known_metric"),
                          tiny_sweep({{"variants", json::array({{{"name", "a"}}})}, {"metrics", {"recall@20/tail"}}}));
    CHECK(train::run_sweep(ok) == 0);
  }
}

TEST_CASE("sweep: exit status 2 when every failed run failed on its input", "[sweep]") {
  cli::register_builtins();
  // The second variant's loss diverges (NumericError): the sweep ends with 2, like `recsys train`,
  // and the first variant's results are summarised.
  auto dir = testing::temp_dir("sweep_input_failure");
  json variants = json::array({{{"name", "ok"}}, {{"name", "bad"}, {"set", {{"train.optimizer.lr", 1e30}}}}});
  auto o = options_for(dir, tiny_sweep({{"variants", variants}}));
  CHECK(train::run_sweep(o) == 2);
  const auto runs = train::expand_sweep(tiny_sweep({{"variants", variants}}), {});
  REQUIRE(runs.size() == 2);
  CHECK(fs::exists(fs::path(o.out_dir) / "runs" / runs[0].name / "results.json"));
  CHECK(fs::exists(fs::path(o.out_dir) / "runs" / runs[1].name / "error.txt"));
  CHECK(fs::exists(fs::path(o.out_dir) / "results.md"));
}

TEST_CASE("sweep: a run's config error names its path once, and the run", "[sweep]") {
  cli::register_builtins();
  auto dir = testing::temp_dir("sweep_run_config_error");
  auto o = options_for(dir, tiny_sweep({{"variants", json::array({{{"name", "x"}, {"set", {{"train.lrr", 1}}}}})}}));
  std::string message;
  CHECK(error_path([&] { train::run_sweep(o); }, &message) == "train.lrr");
  INFO(message);
  CHECK(message.rfind("train.lrr: ", 0) == 0);
  CHECK(message.find("train.lrr: train.lrr") == std::string::npos);
  CHECK(message.find("(in sweep run 'x") != std::string::npos);
}

TEST_CASE("sweep: --report valid writes its own summary and leaves the test summary", "[sweep]") {
  auto dir = testing::temp_dir("sweep_report_valid");
  json sweep = {{"variants", json::array({{{"name", "a"}}})}, {"metrics", {"auc"}}};
  auto runs = train::expand_sweep(sweep, {});
  finish(dir, runs[0].name, json::object(), {{"auc", 0.7}});
  train::summarize_sweep(sweep, runs, dir.string());
  const std::string test_md = slurp(dir / "results.md"), test_csv = slurp(dir / "results.csv");
  train::summarize_sweep(sweep, runs, dir.string(), "valid");
  CHECK(slurp(dir / "results.md") == test_md);
  CHECK(slurp(dir / "results.csv") == test_csv);
  REQUIRE(fs::exists(dir / "results_valid.md"));
  CHECK(slurp(dir / "results_valid.md").find("VALIDATION") != std::string::npos);
  CHECK(fs::exists(dir / "results_valid.csv"));
}


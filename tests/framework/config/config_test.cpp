// Config loading (extends, overrides, parse errors), the strict Reader, and experiment parsing.
#include "framework/config/config.h"

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <sstream>
#include <utility>

#include "framework/cli/commands.h"
#include "framework/train/experiment.h"
#include "support.h"

using recsys::ConfigError;
using recsys::DataError;
using recsys::config::Json;
using recsys::config::Reader;
namespace fs = std::filesystem;

namespace {

std::ostringstream& captured_log() {
  static std::ostringstream out;
  return out;
}

void write_file(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream out(path);
  out << text;
}

/// Loads `name` in a fresh directory for `test` holding `text`; requires a DataError and
/// returns it with the file's path.
std::pair<DataError, std::string> load_error(const std::string& test, const std::string& name,
                                             const std::string& text) {
  const auto path = recsys::testing::temp_dir(test) / name;
  write_file(path, text);
  try {
    recsys::config::load_file(path.string());
  } catch (const DataError& e) {
    return {e, path.string()};
  }
  FAIL("expected a DataError");
  throw std::logic_error("unreachable");
}

/// Runs `fn`, requires a ConfigError and returns it.
template <class F>
ConfigError config_error(F&& fn) {
  try {
    fn();
  } catch (const ConfigError& e) {
    return e;
  }
  FAIL("expected a ConfigError");
  throw std::logic_error("unreachable");
}

bool contains(const std::string& text, const std::string& part) {
  INFO("'" << text << "' should contain '" << part << "'");
  return text.find(part) != std::string::npos;
}

const char* kExperiment = "configs/experiments/twotower_synthetic.json";

/// `base` with `overrides` applied, as --set would.
Json with_overrides(Json base, const std::vector<std::string>& overrides) {
  for (auto& o : overrides) recsys::config::apply_override(base, o);
  return base;
}

}  // namespace

TEST_CASE("extends deep-merges parents relative to the including file", "[config]") {
  auto dir = recsys::testing::temp_dir("config_extends");
  write_file(dir / "base" / "root.json",
             R"({"train": {"epochs": 5, "optimizer": {"type": "adam", "lr": 0.1}}, "seed": 1})");
  write_file(dir / "base" / "mid.json",
             R"({"extends": "root.json", "train": {"optimizer": {"lr": 0.01}}, "name": "mid"})");
  write_file(dir / "other.json", R"({"train": {"batch_size": 64}, "name": "other", "seed": 2})");
  write_file(dir / "exp" / "child.json",
             R"({"extends": ["../base/mid.json", "../other.json"], "train": {"epochs": 7}})");
  Json j = recsys::config::load_file((dir / "exp" / "child.json").string());
  CHECK(j["train"]["epochs"] == 7);                     // the file itself wins
  CHECK(j["train"]["optimizer"]["type"] == "adam");     // kept from the grandparent
  CHECK(j["train"]["optimizer"]["lr"] == 0.01);         // overridden by mid
  CHECK(j["train"]["batch_size"] == 64);                // from the second parent
  CHECK(j["name"] == "other");                          // later parents win over earlier ones
  CHECK(j["seed"] == 2);
  CHECK_FALSE(j.contains("extends"));
}

TEST_CASE("deep_merge merges objects and replaces everything else", "[config]") {
  Json base = {{"a", {{"b", 1}, {"c", {1, 2}}}}, {"d", 1}};
  recsys::config::deep_merge(base, {{"a", {{"c", {3}}, {"e", "x"}}}, {"d", {{"f", 1}}}});
  CHECK(base["a"]["b"] == 1);
  CHECK(base["a"]["c"] == Json::array({3}));
  CHECK(base["a"]["e"] == "x");
  CHECK(base["d"] == Json({{"f", 1}}));
}

TEST_CASE("an extends cycle is rejected naming the chain", "[config]") {
  auto dir = recsys::testing::temp_dir("config_cycle");
  write_file(dir / "a.json", R"({"extends": "b.json", "x": 1})");
  write_file(dir / "b.json", R"({"extends": "c.json"})");
  write_file(dir / "c.json", R"({"extends": "a.json"})");
  auto e = config_error([&] { recsys::config::load_file((dir / "a.json").string()); });
  std::string msg = e.what();
  CHECK(contains(msg, "cycle"));
  CHECK(contains(msg, "a.json -> "));
  CHECK(contains(msg, "b.json -> "));
  CHECK(contains(msg, "c.json -> "));
  // The chain closes on the file that started it.
  CHECK(msg.rfind("a.json") > msg.find("c.json"));
}

TEST_CASE("a JSON syntax error names file and line", "[config]") {
  auto [e, path] = load_error("config_parse_error", "bad.json", "{\n  \"a\": 1,\n  \"b\": ,\n  \"c\": 2\n}\n");
  CHECK(e.file() == path);
  CHECK(e.line() == 3);
  CHECK(contains(e.what(), path + ":3"));
}

TEST_CASE("a number beyond a double's range names the file or the --set key", "[config]") {
  auto [data_error, path] = load_error("config_overflow", "big.json", "{\"train\": {\"optimizer\": {\"lr\": 1e400}}}\n");
  CHECK(data_error.file() == path);
  CHECK(contains(data_error.what(), "number overflow"));
  Json j = Json::object();
  auto e = config_error([&] { recsys::config::apply_override(j, "train.optimizer.lr=-1e400"); });
  CHECK(e.path() == "train.optimizer.lr");
  CHECK(contains(e.what(), "beyond a double's range"));
  CHECK(j.empty());
}

TEST_CASE("an object given to --set replaces its section whole, and says which keys it drops", "[config]") {
  // Captured through a sink on the default logger (restored afterwards).
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(captured_log());
  auto logger = spdlog::default_logger();
  logger->sinks().push_back(sink);
  Json j = {{"train", {{"epochs", 5}, {"batch_size", 64}, {"threads", 2}}}};
  recsys::config::apply_override(j, R"(train={"epochs": 1, "threads": 2})");
  logger->sinks().pop_back();
  CHECK(j["train"] == Json({{"epochs", 1}, {"threads", 2}}));
  const std::string text = captured_log().str();
  INFO(text);
  CHECK(contains(text, "train: the object given replaces the whole section, dropping batch_size"));
  CHECK(contains(text, "train.KEY=VALUE"));
}

TEST_CASE("a missing config file is a ConfigError", "[config]") {
  auto e = config_error([] { recsys::config::load_file("does/not/exist.json"); });
  CHECK(contains(e.what(), "does/not/exist.json"));
}

TEST_CASE("--set overrides parse JSON, fall back to strings and create objects", "[config]") {
  Json j = {{"train", {{"epochs", 5}}}, {"a", 3}};
  using recsys::config::apply_override;
  apply_override(j, "train.epochs=9");
  apply_override(j, "train.optimizer.lr=0.5");
  apply_override(j, "model.hidden=[4, 2]");
  apply_override(j, "name=plain words");
  apply_override(j, "flag=true");
  apply_override(j, "quoted=\"7\"");
  CHECK(j["train"]["epochs"] == 9);
  CHECK(j["train"]["epochs"].is_number_integer());
  CHECK(j["train"]["optimizer"]["lr"] == 0.5);
  CHECK(j["model"]["hidden"] == Json::array({4, 2}));
  CHECK(j["name"] == "plain words");
  CHECK(j["flag"] == true);
  CHECK(j["quoted"] == "7");

  auto e = config_error([&] { apply_override(j, "a.b=1"); });
  CHECK(e.path() == "a.b");
  CHECK(contains(e.what(), "non-object"));
  CHECK(j["a"] == 3);  // untouched
  CHECK(config_error([&] { apply_override(j, "no_equals_sign"); }).path() == "");
  CHECK(config_error([&] { apply_override(j, "a..b=1"); }).path() == "a..b");

  auto dir = recsys::testing::temp_dir("config_resolve");
  write_file(dir / "c.json", R"({"x": {"y": 1}})");
  Json r = recsys::config::resolve((dir / "c.json").string(), {"x.y=2", "x.y=3", "x.z=abc"});
  CHECK(r["x"]["y"] == 3);  // applied in order
  CHECK(r["x"]["z"] == "abc");
}

TEST_CASE("Reader rejects unknown keys with their path and a hint", "[config]") {
  Json j = {{"train", {{"epochs", 3}, {"optimizer", {{"lr", 0.1}, {"betaa1", 0.9}}}}}};
  Reader r(j);
  auto t = r.child("train");
  CHECK(t.get<int64_t>("epochs", 1) == 3);
  auto o = t.child("optimizer");
  CHECK(o.get<double>("lr", 1.0) == 0.1);
  CHECK(o.get<double>("beta1", 0.5) == 0.5);
  CHECK(o.get<double>("beta2", 0.5) == 0.5);
  auto e = config_error([&] { r.check_unknown(); });
  CHECK(e.path() == "train.optimizer.betaa1");
  CHECK(contains(e.what(), "did you mean 'beta1'"));
  CHECK(contains(e.what(), "known keys here"));

  // Once read, nothing is left over.
  Json ok = {{"a", 1}, {"b", {{"c", 2}}}};
  Reader r2(ok);
  r2.get<int64_t>("a", 0);
  r2.child("b").get<int64_t>("c", 0);
  r2.check_unknown();

  // An unread whole section is reported at its own path.
  Json extra = {{"a", 1}, {"zzz", {{"c", 2}}}};
  Reader r3(extra);
  r3.get<int64_t>("a", 0);
  CHECK(config_error([&] { r3.check_unknown(); }).path() == "zzz");

  // raw() consumes a subtree wholesale.
  Reader r4(extra);
  r4.get<int64_t>("a", 0);
  CHECK(r4.raw("zzz")["c"] == 2);
  r4.check_unknown();
}

TEST_CASE("Reader rejects dotted keys in a config file", "[config]") {
  // "train.epochs" builds the same path as the nested key the reader looked up (and marked seen
  // while absent): without the check its value would be ignored silently.
  Json top = {{"train.epochs", 50}};
  Reader r(top);
  CHECK(r.child("train").get<int64_t>("epochs", 1) == 1);
  auto e = config_error([&] { r.check_unknown(); });
  CHECK(e.path() == "train.epochs");
  CHECK(contains(e.what(), "nest objects"));

  Json nested = {{"train", {{"optimizer.lr", 0.5}}}};
  Reader r2(nested);
  CHECK(r2.child("train").child("optimizer").get<double>("lr", 0.1) == 0.1);
  CHECK(config_error([&] { r2.check_unknown(); }).path() == "train.optimizer.lr");
}

TEST_CASE("Reader names wrong types with their path", "[config]") {
  Json j = {{"m", {{"lr", "fast"}, {"epochs", 2.5}, {"whole", 4.0}, {"flag", 1}, {"name", 3},
                   {"ks", {1, "x"}}, {"obj", 5}}}};
  Reader r(j);
  auto m = r.child("m");
  auto e1 = config_error([&] { m.get<double>("lr", 0.1); });
  CHECK(e1.path() == "m.lr");
  CHECK(contains(e1.what(), "expected a number"));
  auto e2 = config_error([&] { m.get<int64_t>("epochs", 1); });
  CHECK(e2.path() == "m.epochs");
  CHECK(contains(e2.what(), "expected an integer"));
  CHECK(m.get<int64_t>("whole", 1) == 4);  // an integral float is accepted
  CHECK(config_error([&] { m.get<bool>("flag", false); }).path() == "m.flag");
  CHECK(config_error([&] { m.get<std::string>("name", ""); }).path() == "m.name");
  CHECK(config_error([&] { m.get<std::vector<int64_t>>("ks", {}); }).path() == "m.ks[1]");
  CHECK(config_error([&] { m.child("obj"); }).path() == "m.obj");
  CHECK(config_error([&] { m.require<int64_t>("missing"); }).path() == "m.missing");
  CHECK(config_error([&] { Reader bad(Json::array()); }).path() == "");
}

TEST_CASE("Reader::choice lists the allowed values", "[config]") {
  Json j = {{"type", "adamw"}};
  Reader r(j);
  auto e = config_error([&] { r.choice("type", "adam", {"adam", "adagrad", "sgd"}); });
  CHECK(e.path() == "type");
  CHECK(contains(e.what(), "'adamw'"));
  CHECK(contains(e.what(), "adam, adagrad, sgd"));
  CHECK(r.choice("other", "sgd", {"adam", "sgd"}) == "sgd");
}

TEST_CASE("Reader::children gives element paths with [i]", "[config]") {
  Json j = {{"aug", Json::array({{{"type", "a"}}, {{"type", "b"}, {"pp", 1}}})}, {"bad", {1}}};
  Reader r(j);
  auto items = r.children("aug");
  REQUIRE(items.size() == 2);
  CHECK(items[0].path() == "aug[0]");
  CHECK(items[1].path() == "aug[1]");
  CHECK(items[1].path_of("p") == "aug[1].p");
  CHECK(items[0].get<std::string>("type", "") == "a");
  CHECK(items[1].get<std::string>("type", "") == "b");
  items[1].get<double>("p", 0.5);
  CHECK(config_error([&] { r.children("bad"); }).path() == "bad[0]");
  auto e = config_error([&] { r.check_unknown(); });
  CHECK(e.path() == "aug[1].pp");
  CHECK(contains(e.what(), "did you mean 'p'"));
  CHECK(r.children("absent").empty());
}

// ---------------------------------------------------------------- experiments

TEST_CASE("parse_experiment accepts the synthetic two-tower config", "[config]") {
  recsys::cli::register_builtins();
  Json j = recsys::config::load_file(kExperiment);
  auto e = recsys::train::parse_experiment(j);
  CHECK(e.task == "retrieval");
  CHECK(e.seed == 1);
  CHECK(e.trainer.batch_size == 256);
  CHECK(e.trainer.optimizer.lr == 0.002);
  CHECK(e.trainer.early_stopping.metric == "recall@50");
  CHECK(static_cast<bool>(e.build_task));
}

TEST_CASE("first_setting_difference compares settings with defaults filled in", "[config]") {
  recsys::cli::register_builtins();
  Json base = recsys::config::load_file(kExperiment);
  auto with = [&](const std::vector<std::string>& overrides) { return with_overrides(base, overrides); };
  auto differ = [&](const Json& saved, const Json& now, std::string* path = nullptr) {
    recsys::config::Difference d;
    const bool out = recsys::train::first_setting_difference(
        saved, recsys::train::parse_experiment(now), [](const std::string& p) { return p == "name"; }, d);
    if (path) *path = d.path;
    return out;
  };
  auto e = recsys::train::parse_experiment(base);
  CHECK(e.settings.contains("train.optimizer.lr"));
  CHECK(e.settings["train.optimizer.type"] == "adam");  // a default the file does not write
  // Writing out a default, or reordering keys, changes no setting.
  CHECK_FALSE(differ(base, with({"train.optimizer.type=\"adam\"", "model.dropout=0"})));
  CHECK_FALSE(differ(with({"train.optimizer.type=\"adam\""}), base));
  // A real change is named by its path; an ignored path is not.
  std::string path;
  CHECK(differ(base, with({"train.optimizer.lr=0.5"}), &path));
  CHECK(path == "train.optimizer.lr");
  CHECK(differ(base, with({"model.dropout=0.25"}), &path));
  CHECK(path == "model.dropout");
  CHECK_FALSE(differ(base, with({"name=\"other\""})));
  // A saved config this build no longer parses falls back to the raw comparison.
  Json old = with({"train.retired_key=1"});
  CHECK(differ(old, base, &path));
  CHECK(path == "train.retired_key");
}

TEST_CASE("parse_experiment rejects misspelt and invalid keys by path", "[config]") {
  recsys::cli::register_builtins();
  Json base = recsys::config::load_file(kExperiment);
  auto path_of_error = [&](const std::vector<std::string>& overrides) {
    Json j = with_overrides(base, overrides);
    auto err = config_error([&] { recsys::train::parse_experiment(j); });
    INFO(err.what());
    return err.path();
  };
  CHECK(path_of_error({"train.lrr=1"}) == "train.lrr");
  CHECK(path_of_error({"model.embeding_dim=8"}) == "model.embeding_dim");
  CHECK(path_of_error({"train.optimizer.lrr=1"}) == "train.optimizer.lrr");
  CHECK(path_of_error({"colour=1"}) == "colour");
  CHECK(path_of_error({"train.epochs=\"five\""}) == "train.epochs");
  CHECK(path_of_error({"train.epochs=2.5"}) == "train.epochs");
  CHECK(path_of_error({"train.optimizer.type=adamw"}) == "train.optimizer.type");
  CHECK(path_of_error({"task=ranking"}) == "task");
  CHECK(path_of_error({"data.type=imagenet"}) == "data.type");
  // Cross-field rules.
  CHECK(path_of_error({"ssl.alpha=0.5"}) == "ssl.augment");
  CHECK(path_of_error({"eval.head_fraction=1.5"}) == "eval.head_fraction");
  CHECK(path_of_error({"eval.head_fraction=0"}) == "eval.head_fraction");
  CHECK(path_of_error({"data.split.valid_fraction=0.5", "data.split.test_fraction=0.5"}) ==
        "data.split.test_fraction");
  CHECK(path_of_error({"data.split.protocol=random"}) == "data.split.protocol");
  CHECK(path_of_error({"train.optimizer.lr=-1"}) == "train.optimizer.lr");
  CHECK(path_of_error({"train.batch_size=1"}) == "train.batch_size");
  CHECK(path_of_error({"train.prefetch=-1"}) == "train.prefetch");
  CHECK(path_of_error({"train.collective_timeout_s=0"}) == "train.collective_timeout_s");
  CHECK(path_of_error({"train.collective_timeout_s=\"soon\""}) == "train.collective_timeout_s");
  CHECK(path_of_error({"loss.temperature=0"}) == "loss.temperature");
  CHECK(path_of_error({"model.hidden=[]"}) == "model.hidden");
  CHECK(path_of_error({"ssl.augment=[{\"type\": \"dropout\", \"pp\": 0.3}]", "ssl.alpha=0.5"}) ==
        "ssl.augment[0].pp");
  CHECK(path_of_error({"ssl.augment=[{\"type\": \"nope\"}]", "ssl.alpha=0.5"}) ==
        "ssl.augment[0].type");

  // A valid SSL section parses.
  Json j = base;
  recsys::config::apply_override(j, "ssl.alpha=0.5");
  recsys::config::apply_override(j, "ssl.augment=[{\"type\": \"dropout\", \"p\": 0.3}]");
  recsys::train::parse_experiment(j);
}

TEST_CASE("first_difference names the first differing path", "[config]") {
  using recsys::config::Difference;
  using recsys::config::first_difference;
  Difference d;
  Json a = {{"train", {{"epochs", 2}, {"optimizer", {{"lr", 0.1}}}}}, {"seed", 1}};
  CHECK_FALSE(first_difference(a, a, d));
  Json same_number = {{"train", {{"epochs", 2.0}, {"optimizer", {{"lr", 0.1}}}}}, {"seed", 1}};
  CHECK_FALSE(first_difference(a, same_number, d));  // 2 == 2.0 after a round trip
  Json lr = a;
  lr["train"]["optimizer"]["lr"] = 0.5;
  REQUIRE(first_difference(a, lr, d));
  CHECK(d.path == "train.optimizer.lr");
  CHECK(d.before == "0.1");
  CHECK(d.after == "0.5");
  // A section present on one side only is reported at its first key.
  Json added = a;
  added["ssl"] = {{"alpha", 0.5}};
  REQUIRE(first_difference(a, added, d));
  CHECK(d.path == "ssl.alpha");
  CHECK(d.before == "(absent)");
  // Arrays: element by element, or at the array when the lengths differ.
  Json l1 = {{"ks", {5, 20}}}, l2 = {{"ks", {5, 50}}}, l3 = {{"ks", {5}}};
  REQUIRE(first_difference(l1, l2, d));
  CHECK(d.path == "ks[1]");
  REQUIRE(first_difference(l1, l3, d));
  CHECK(d.path == "ks");
}

#include "framework/train/sweep.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>

#include <unistd.h>

#include "framework/config/config.h"
#include "framework/eval/ctr_metrics.h"
#include "framework/train/experiment.h"
#include "framework/train/run_dir.h"
#include "framework/util/errors.h"
#include "framework/util/logging.h"

namespace recsys::train {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string safe_name(const std::string& s) {
  std::string out;
  for (char c : s) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_') ? c : '_';
  return out;
}

std::string value_text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

/// Overrides from a {"dotted.key": value} object, validated as a whole at `path`.
std::vector<std::string> overrides_of(const json& set, const std::string& path) {
  std::vector<std::string> out;
  if (set.is_null()) return out;
  if (!set.is_object()) throw ConfigError(path, "expected an object {\"dotted.key\": value}");
  for (auto it = set.begin(); it != set.end(); ++it) out.push_back(it.key() + "=" + it.value().dump());
  return out;
}

json read_json(const fs::path& p) {
  std::ifstream in(p);
  return json::parse(in);
}

/// The summary of the test split is results.md / results.csv; `--report valid` writes
/// results_valid.md / .csv beside it (the test summary stays).
std::string summary_file(const std::string& report, const char* extension) {
  return std::string(report == "valid" ? "results_valid." : "results.") + extension;
}

bool summary_has_recall(const std::string& out) {
  std::ifstream in(fs::path(out) / "results.csv");
  std::string line;
  while (std::getline(in, line))
    if (line.find(",recall@") != std::string::npos) return true;
  return false;
}

/// A finished run is skipped on a rerun and its results are summarised as those of the config the
/// sweep gives it now, so that must be the config it was trained with (a rerun with another --set
/// into the same directory would otherwise report the old results under the new settings).
void check_finished_run(const fs::path& dir, const SweepRun& r, const json& resolved) {
  const std::string advice = "; choose another --out directory for the changed sweep (or restore the sweep file and "
                             "--set options this directory was run with)";
  json saved;
  try {
    saved = read_json(dir / "config.json");
  } catch (const json::exception&) {
    // Missing or unreadable: nothing shows which config the results belong to.
    throw ConfigError("", "sweep run '" + r.name + "' finished earlier (" + (dir / "results.json").string() +
                              ") but has no readable config.json to confirm it was trained with the config this "
                              "sweep gives it" + advice);
  }
  // Setting by setting with defaults filled in (a default written out is no change); a run's
  // name and description do not change what it learns.
  config::Difference d;
  if (first_setting_difference(saved, parse_experiment(resolved),
                               [](const std::string& p) { return p == "name" || p == "description"; }, d))
    throw ConfigError(d.path, "sweep run '" + r.name + "' finished earlier in " + dir.string() + " with " +
                                  (d.path.empty() ? "config" : d.path) + " = " + d.before +
                                  ", but this sweep now gives it " + d.after +
                                  ", and its results would be reported for the new config" + advice);
}

}  // namespace

double t_quantile_975(int64_t dof) {
  static const double table[] = {0, 12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                                 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086};
  if (dof < 1) return NAN;
  if (dof <= 20) return table[dof];
  if (dof <= 30) return 2.042 + (30 - dof) * (2.086 - 2.042) / 10.0;
  return 1.96 + 2.4 / static_cast<double>(dof);  // within 0.005 of the exact value beyond 30
}

std::vector<SweepRun> expand_sweep(const json& sweep, const std::vector<std::string>& only) {
  static const std::set<std::string> known{"base", "set", "variants", "grid", "seeds", "baseline", "metrics", "name", "description"};
  if (!sweep.is_object()) throw ConfigError("", "a sweep file must hold a JSON object");
  for (auto it = sweep.begin(); it != sweep.end(); ++it)
    if (!known.count(it.key()))
      throw ConfigError(it.key(), "unknown sweep key (known: base, set, variants, grid, seeds, baseline, metrics, name, description)");
  // The summary's keys are checked here, before any training: a wrong type found only by the
  // summary would end the sweep after every run has trained.
  for (const char* k : {"name", "description"})
    if (sweep.contains(k) && !sweep[k].is_string()) throw ConfigError(k, "expected a string, got " + config::brief(sweep[k]));
  if (sweep.contains("metrics")) {
    const json& ms = sweep["metrics"];
    if (!ms.is_array() || ms.empty())
      throw ConfigError("metrics", "expected a non-empty list of metric names, got " + config::brief(ms));
    for (size_t i = 0; i < ms.size(); ++i)
      if (!ms[i].is_string())
        throw ConfigError("metrics[" + std::to_string(i) + "]", "expected a metric name (string), got " + config::brief(ms[i]));
  }
  // Variants, in file order when given as a list, each with the JSON path it came from.
  struct Variant {
    std::string name, path;
    std::vector<std::string> set;
  };
  std::vector<Variant> variants;
  const json& vs = sweep.contains("variants") ? sweep["variants"] : json();
  if (vs.is_null()) {
    variants.push_back({"default", "variants", {}});
  } else if (vs.is_array()) {
    for (size_t i = 0; i < vs.size(); ++i) {
      std::string p = "variants[" + std::to_string(i) + "]";
      if (!vs[i].is_object() || !vs[i].contains("name") || !vs[i]["name"].is_string())
        throw ConfigError(p, "each variant needs a \"name\" (string) and optional \"set\" object");
      for (auto it = vs[i].begin(); it != vs[i].end(); ++it)
        if (it.key() != "name" && it.key() != "set" && it.key() != "description")
          throw ConfigError(p + "." + it.key(), "unknown variant key (known: name, set, description)");
      if (vs[i].contains("description") && !vs[i]["description"].is_string())
        throw ConfigError(p + ".description", "expected a string, got " + config::brief(vs[i]["description"]));
      variants.push_back({vs[i]["name"].get<std::string>(), p, overrides_of(vs[i].value("set", json()), p + ".set")});
    }
  } else if (vs.is_object()) {
    for (auto it = vs.begin(); it != vs.end(); ++it)
      variants.push_back({it.key(), "variants." + it.key(), overrides_of(it.value(), "variants." + it.key())});
  } else {
    throw ConfigError("variants", "expected a list of {name, set} objects or an object {name: {key: value}}");
  }
  std::string known_v;
  for (auto& v : variants) known_v += (known_v.empty() ? "" : ", ") + v.name;
  auto is_variant = [&](const std::string& name) {
    return std::any_of(variants.begin(), variants.end(), [&](const Variant& v) { return v.name == name; });
  };
  for (auto& o : only)
    if (!is_variant(o)) throw ConfigError("--only", "unknown variant '" + o + "' (known: " + known_v + ")");
  if (sweep.contains("baseline")) {
    if (!sweep["baseline"].is_string())
      throw ConfigError("baseline", "expected the name of a variant (string), got " + config::brief(sweep["baseline"]));
    if (!is_variant(sweep["baseline"].get<std::string>()))
      throw ConfigError("baseline", "unknown variant '" + sweep["baseline"].get<std::string>() + "' (known: " + known_v + ")");
  }
  // Grid: cartesian product; "seeds" is shorthand for a grid over "seed".
  std::vector<std::pair<std::string, std::vector<json>>> grid;
  if (sweep.contains("grid")) {
    if (!sweep["grid"].is_object()) throw ConfigError("grid", "expected an object {\"dotted.key\": [values]}");
    for (auto it = sweep["grid"].begin(); it != sweep["grid"].end(); ++it) {
      if (!it.value().is_array() || it.value().empty())
        throw ConfigError("grid." + it.key(), "expected a non-empty list of values");
      if (it.key() == "seed") {
        // Seeds pair the runs in the summary: they are read as integers below.
        if (sweep.contains("seeds")) throw ConfigError("grid.seed", "seeds are given twice (\"seeds\" and grid.seed)");
        for (auto& s : it.value())
          if (!s.is_number_integer()) throw ConfigError("grid.seed", "seeds must be integers, got " + config::brief(s));
      }
      grid.push_back({it.key(), std::vector<json>(it.value().begin(), it.value().end())});
    }
  }
  if (sweep.contains("seeds")) {
    if (!sweep["seeds"].is_array() || sweep["seeds"].empty()) throw ConfigError("seeds", "expected a non-empty list of integers");
    for (auto& s : sweep["seeds"])
      if (!s.is_number_integer()) throw ConfigError("seeds", "seeds must be integers");
    grid.push_back({"seed", std::vector<json>(sweep["seeds"].begin(), sweep["seeds"].end())});
  }
  std::vector<std::vector<std::pair<std::string, json>>> points{{}};
  for (auto& [key, values] : grid) {
    std::vector<std::vector<std::pair<std::string, json>>> next;
    for (auto& p : points)
      for (auto& v : values) {
        auto q = p;
        q.push_back({key, v});
        next.push_back(q);
      }
    points = next;
  }
  // Every variant is expanded, selected by --only or not, so that run directories are checked
  // against all the others: a filtered run shares the directory tree with the rest.
  std::vector<SweepRun> runs;
  std::vector<std::string> origin;  // per run: which variant and grid point made it, for errors
  std::vector<std::string> origin_path;
  for (auto& v : variants) {
    for (auto& p : points) {
      SweepRun r;
      r.variant = v.name;
      r.overrides = v.set;
      std::string gridtxt, pointtxt, name = v.name;
      for (auto& [k, val] : p) {
        r.overrides.push_back(k + "=" + val.dump());
        if (k == "seed") {
          r.seed = val.get<int64_t>();
        } else {
          gridtxt += (gridtxt.empty() ? "" : ",") + k + "=" + value_text(val);
        }
        pointtxt += (pointtxt.empty() ? "" : ", ") + k + "=" + val.dump();
        name += "_" + k + "=" + value_text(val);
      }
      r.group = gridtxt.empty() ? v.name : v.name + "[" + gridtxt + "]";
      r.name = safe_name(name);
      if (r.name.empty() || r.name == "." || r.name == "..")
        throw ConfigError(v.path, "variant name '" + v.name + "' cannot name a run directory");
      runs.push_back(r);
      origin.push_back("variant '" + v.name + "' (" + v.path + ")" + (pointtxt.empty() ? "" : " at " + pointtxt));
      origin_path.push_back(v.path);
    }
  }
  // One directory per run: two runs sharing one would skip or overwrite each other's results. The
  // summary's rows (group and seed) must be distinct too, or it would merge two variants. Two runs
  // of one variant entry can only collide through their grid values.
  std::map<std::string, size_t> by_dir, by_row;
  auto clash = [&](size_t i, size_t j, const std::string& what) {
    return ConfigError(origin_path[i] == origin_path[j] ? std::string("grid") : origin_path[i],
                       origin[i] + " and " + origin[j] + " both " + what);
  };
  for (size_t i = 0; i < runs.size(); ++i) {
    auto dir = by_dir.emplace(runs[i].name, i);
    if (!dir.second)
      throw clash(i, dir.first->second, "map to run directory '" + runs[i].name + "'; variant names and grid values "
                                        "must stay distinct once characters other than letters, digits, '-', '.' "
                                        "and '_' become '_'");
    auto row = by_row.emplace(runs[i].group + "\n" + std::to_string(runs[i].seed), i);
    if (!row.second)
      throw clash(i, row.first->second, "make summary row '" + runs[i].group + "' with seed " +
                                            std::to_string(runs[i].seed) + "; rename one of the variants");
  }
  if (only.empty()) return runs;
  std::vector<SweepRun> selected;
  for (auto& r : runs)
    if (std::find(only.begin(), only.end(), r.variant) != only.end()) selected.push_back(r);
  return selected;
}

namespace {

/// Before any run trains: the first selected run still to train has its task built (its data loaded). A data error
/// there ends the sweep at once (exit 2) when every selected run reads the same data (each would
/// fail alike); the sweep's "metrics" must be names the task reports (a misspelt one would give
/// an empty column after every run has trained).
void preflight(const json& sweep, const std::vector<SweepRun>& runs, const std::map<std::string, json>& configs,
               const fs::path& out) {
  // The first run still to train (none: everything finished earlier, nothing to check).
  auto next = std::find_if(runs.begin(), runs.end(), [&](const SweepRun& r) {
    return !fs::exists(out / "runs" / r.name / "results.json");
  });
  if (next == runs.end()) return;
  const json& first = configs.at(next->name);
  std::unique_ptr<Task> task;
  try {
    auto e = parse_experiment(first);
    task = e.build_task(e.seed);
  } catch (const DataError&) {
    const json data = first.value("data", json());
    const bool shared = std::all_of(runs.begin(), runs.end(), [&](const SweepRun& r) {
      return configs.at(r.name).value("data", json()) == data;
    });
    if (shared) throw;  // every run reads this data: none could train
    return;             // the runs that read other data go on; this one fails in its turn
  } catch (const std::exception&) {
    return;  // reported by the run itself, with the others
  }
  const auto names = task->metric_names();
  if (!sweep.contains("metrics") || names.empty()) return;
  const json& ms = sweep["metrics"];
  for (size_t i = 0; i < ms.size(); ++i) {
    const auto m = ms[i].get<std::string>();
    if (std::find(names.begin(), names.end(), m) != names.end()) continue;
    std::string known;
    for (auto& n : names) known += (known.empty() ? "" : ", ") + n;
    throw ConfigError("metrics[" + std::to_string(i) + "]",
                      "metric '" + m + "' is not reported by the runs' task (known: " + known + ")");
  }
}

/// A run that failed on its input (config, data, usage, a diverging loss): what the user fixes.
bool input_error(const std::exception& e) {
  return dynamic_cast<const ConfigError*>(&e) || dynamic_cast<const DataError*>(&e) ||
         dynamic_cast<const UsageError*>(&e) || dynamic_cast<const NumericError*>(&e);
}

}  // namespace

int run_sweep(const SweepOptions& options) {
  json sweep = config::load_file(options.sweep_path);
  // All runs, whatever --only selects: finished ones are checked and summarised with the rest.
  auto all = expand_sweep(sweep, {});
  auto runs = expand_sweep(sweep, options.only);
  if (!sweep.contains("base") || !sweep["base"].is_string())
    throw ConfigError("base", "the sweep needs \"base\": the experiment config file (relative to the sweep file)");
  fs::path base = fs::path(options.sweep_path).parent_path() / sweep["base"].get<std::string>();
  std::vector<std::string> common = overrides_of(sweep.value("set", json()), "set");
  std::string out = options.out_dir.empty() ? "runs/" + fs::path(options.sweep_path).stem().string() : options.out_dir;
  // Before training anything: validate the config of every run to train, and make sure every run
  // that finished earlier (it will be skipped and summarised) was trained with the config it gets now.
  std::map<std::string, json> configs;  // by run name, the runs selected by --only
  for (auto& r : all) {
    std::vector<std::string> ov = common;
    ov.insert(ov.end(), r.overrides.begin(), r.overrides.end());
    ov.insert(ov.end(), options.overrides.begin(), options.overrides.end());
    json cfg = config::resolve(base.string(), ov);
    bool selected = std::any_of(runs.begin(), runs.end(), [&](const SweepRun& s) { return s.name == r.name; });
    if (selected) {
      try {
        parse_experiment(cfg);
      } catch (const ConfigError& e) {
        throw ConfigError(e.path(), e.message() + " (in sweep run '" + r.name + "')");
      }
    }
    fs::path dir = fs::path(out) / "runs" / r.name;
    if (fs::exists(dir / "results.json")) check_finished_run(dir, r, cfg);
    if (selected) configs[r.name] = cfg;
  }
  try {
    fs::create_directories(fs::path(out) / "runs");
  } catch (const fs::filesystem_error& e) {
    throw UsageError("--out '" + out + "': cannot create the sweep directory: " + e.what());
  }
  preflight(sweep, runs, configs, out);
  json record = sweep;
  record["resolved_base"] = base.string();
  record["cli_overrides"] = options.overrides;
  write_atomic(fs::path(out) / "sweep.json", record.dump(2) + "\n");
  int failed = 0, skipped = 0, done = 0, busy = 0, input_failures = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& r = runs[i];
    fs::path dir = fs::path(out) / "runs" / r.name;
    // Each run directory is held while it trains: another sweep into the same directory (another
    // --only selection) or a `recsys train --out` there leaves it alone, and this one it.
    DirectoryLock hold;
    try {
      fs::create_directories(dir);
      hold = DirectoryLock(dir);
    } catch (const DirectoryBusy& ex) {
      ++busy;
      std::printf("[%zu/%zu] %-40s being trained by another process, skipped\n", i + 1, runs.size(), r.name.c_str());
      continue;
    } catch (const std::exception&) {
      // Reported with the run's other failures below (RunDir names the problem).
    }
    if (fs::exists(dir / "results.json")) {  // by an earlier sweep, or another process meanwhile
      ++skipped;
      std::printf("[%zu/%zu] %-40s finished earlier, skipped\n", i + 1, runs.size(), r.name.c_str());
      continue;
    }
    try {
      auto e = parse_experiment(configs.at(r.name));
      e.trainer.progress = "none";
      RunDir rd(dir);
      setup_logging((dir / "log.txt").string(), "warn", options.log_level);
      auto res = run_experiment(e, rd);
      ++done;
      std::error_code ec;
      fs::remove(dir / "error.txt", ec);  // an earlier attempt's failure no longer describes this run
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::string shown;
      for (const char* k : {"recall@50/head", "recall@50/tail", "auc", "gauc"})
        if (res["metrics"].contains(k) && res["metrics"][k].is_number())
          shown += fmt::format(" {}={:.4f}", k, res["metrics"][k].get<double>());
      std::printf("[%zu/%zu] %-40s%s (%.0f s elapsed)\n", i + 1, runs.size(), r.name.c_str(), shown.c_str(), secs);
      std::fflush(stdout);
    } catch (const std::exception& ex) {
      ++failed;
      if (input_error(ex)) ++input_failures;
      std::printf("[%zu/%zu] %-40s FAILED: %s\n", i + 1, runs.size(), r.name.c_str(), ex.what());
      // Failing to save the reason must not end the sweep: the other runs go on.
      try {
        write_atomic(dir / "error.txt", std::string(ex.what()) + "\n");
      } catch (const std::exception& wex) {
        std::printf("    could not save %s: %s\n", (dir / "error.txt").string().c_str(), wex.what());
      }
      std::fflush(stdout);
    }
  }
  setup_logging("", "info");
  summarize_sweep(sweep, all, out, options.report);
  const std::string summary_md = summary_file(options.report, "md");
  const bool summary = fs::exists(fs::path(out) / summary_md);
  std::printf("sweep: %d trained, %d skipped (finished earlier), %d failed%s; %s\n", done, skipped, failed,
              busy ? fmt::format(", {} being trained elsewhere", busy).c_str() : "",
              summary ? ("results in " + out + "/" + summary_md).c_str() : "no run has results to summarise");
  // The chart is optional: it needs python3 with matplotlib.
  char exe[4096] = {0};
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    fs::path script = fs::path(exe).parent_path().parent_path() / "scripts" / "plot_sweep.py";
    bool retrieval = options.report != "valid" && summary_has_recall(out);  // the chart is of test metrics
    if (fs::exists(script) && retrieval) {
      std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
      std::string cmd = python + " '" + script.string() + "' '" + out + "' >/dev/null 2>&1";
      if (std::system(cmd.c_str()) != 0) spdlog::warn("no chart from {} (needs python3 with matplotlib and recall@K/head|tail metrics)", script.string());
    }
  }
  // 2 when every failure was the input's (as `recsys train` exits), 1 when any was internal.
  if (failed == 0) return 0;
  return input_failures == failed ? 2 : 1;
}

void summarize_sweep(const json& sweep, const std::vector<SweepRun>& runs, const std::string& out,
                     const std::string& report) {
  // The summary is public: its keys are checked (as run_sweep does before training) rather than
  // trusted, so that a bad one is a ConfigError at its path, not a JSON type error.
  expand_sweep(sweep, {});
  const std::string field = report == "valid" ? "valid_metrics" : "metrics";
  // group -> seed -> metrics
  std::vector<std::string> groups;
  std::map<std::string, std::map<int64_t, json>> values;
  std::map<std::string, std::string> group_variant;
  for (auto& r : runs) {
    fs::path res = fs::path(out) / "runs" / r.name / "results.json";
    if (!fs::exists(res)) continue;
    json results;
    try {
      results = read_json(res);
    } catch (const json::exception& e) {
      spdlog::warn("{} left out of the summary: {}", res.string(), e.what());
      continue;
    }
    if (!results.is_object() || !results.contains(field) || !results[field].is_object()) {
      spdlog::warn("{} left out of the summary: no \"{}\" object", res.string(), field);
      continue;
    }
    if (!values.count(r.group)) groups.push_back(r.group);
    values[r.group][r.seed] = results[field];
    group_variant[r.group] = r.variant;
  }
  if (groups.empty()) return;
  std::vector<std::string> metrics;
  if (sweep.contains("metrics")) {
    for (auto& m : sweep["metrics"]) metrics.push_back(m.get<std::string>());
  } else {
    const json& first = values[groups[0]].begin()->second;
    for (auto it = first.begin(); it != first.end(); ++it) metrics.push_back(it.key());
  }
  // A metric saved as null (NaN does not survive JSON) or missing counts as absent for that seed.
  auto number = [](const json& mj, const std::string& m, double& x) {
    if (!mj.contains(m) || !mj.at(m).is_number()) return false;
    x = mj.at(m).get<double>();
    return true;
  };
  // Lookups never insert: a group without results (a missing baseline) stays absent.
  static const std::map<int64_t, json> kNone;
  auto seeds_of = [&](const std::string& g) -> const std::map<int64_t, json>& {
    auto it = values.find(g);
    return it == values.end() ? kNone : it->second;
  };
  auto stats = [&](const std::string& g, const std::string& m, double& mean, double& sd, int64_t& n) {
    std::vector<double> xs;
    double x;
    for (auto& [seed, mj] : seeds_of(g))
      if (number(mj, m, x)) xs.push_back(x);
    n = static_cast<int64_t>(xs.size());
    mean = sd = NAN;
    if (xs.empty()) return;
    mean = 0;
    for (double v : xs) mean += v;
    mean /= static_cast<double>(n);
    sd = 0;
    for (double v : xs) sd += (v - mean) * (v - mean);
    sd = n > 1 ? std::sqrt(sd / static_cast<double>(n - 1)) : 0.0;
  };
  // Long-form CSV of every metric.
  std::set<std::string> all_metrics;
  for (auto& g : groups)
    for (auto& [seed, mj] : values[g])
      for (auto it = mj.begin(); it != mj.end(); ++it) all_metrics.insert(it.key());
  std::ostringstream csv;
  csv << "variant,metric,mean,std,n\n";
  for (auto& g : groups)
    for (auto& m : all_metrics) {
      double mean, sd;
      int64_t n;
      stats(g, m, mean, sd, n);
      if (n > 0) csv << '"' << g << "\"," << m << "," << mean << "," << sd << "," << n << "\n";
    }
  // Atomic writes: a reader (or a crash) never sees half a file, and a failed write is an error
  // rather than a silently truncated summary.
  write_atomic(fs::path(out) / summary_file(report, "csv"), csv.str());

  std::string baseline = sweep.value("baseline", std::string());
  std::ostringstream md;
  md << "# " << sweep.value("name", fs::path(out).filename().string()) << "\n\n";
  if (sweep.contains("description")) md << sweep["description"].get<std::string>() << "\n\n";
  md << (report == "valid" ? "VALIDATION" : "Test") << " metrics at the best validation step; mean ± std over seeds (n = seeds).\n\n| variant | n |";
  for (auto& m : metrics) md << " " << m << " |";
  md << "\n|---|---|";
  for (size_t i = 0; i < metrics.size(); ++i) md << "---|";
  md << "\n";
  for (auto& g : groups) {
    md << "| " << g << " | " << values[g].size() << " |";
    for (auto& m : metrics) {
      double mean, sd;
      int64_t n;
      stats(g, m, mean, sd, n);
      if (n == 0)
        md << " - |";
      else if (m.rfind("test_points", 0) == 0)
        md << fmt::format(" {:.0f} |", mean);  // counts, identical across seeds of one split
      else
        md << fmt::format(" {:.4f} ± {:.4f} |", mean, sd);
    }
    md << "\n";
  }
  // Paired differences to the baseline variant at the same grid values. When that baseline run is
  // missing (failed, or not run yet) the row shows "-": a baseline at other grid values would
  // compare different settings.
  auto baseline_for = [&](const std::string& g) -> std::string {
    if (baseline.empty() || group_variant[g] == baseline) return "";
    return baseline + g.substr(group_variant[g].size());
  };
  bool any = false;
  std::vector<std::string> scored;
  for (auto& m : metrics)
    if (m.rfind("test_points", 0) != 0 && m != "users") scored.push_back(m);
  std::ostringstream diff;
  diff << "\nDifference to `" << baseline << "`, paired by seed: mean [95% CI] (t distribution, n pairs).\n\n| variant | pairs |";
  for (auto& m : scored) diff << " Δ " << m << " |";
  diff << "\n|---|---|";
  for (size_t i = 0; i < scored.size(); ++i) diff << "---|";
  diff << "\n";
  for (auto& g : groups) {
    std::string b = baseline_for(g);
    if (b.empty()) continue;
    any = true;
    const auto& base_seeds = seeds_of(b);
    int64_t pairs = 0;
    for (auto& [seed, mj] : values[g]) pairs += static_cast<int64_t>(base_seeds.count(seed));
    diff << "| " << g << " | " << pairs << " |";
    for (auto& m : scored) {
      std::vector<double> d;
      double x, y;
      for (auto& [seed, mj] : values[g]) {
        auto bs = base_seeds.find(seed);
        if (bs != base_seeds.end() && number(mj, m, x) && number(bs->second, m, y)) d.push_back(x - y);
      }
      if (d.empty()) {
        diff << " - |";
        continue;
      }
      double mean = 0, sd = 0;
      for (double v : d) mean += v;
      mean /= static_cast<double>(d.size());
      for (double v : d) sd += (v - mean) * (v - mean);
      if (d.size() > 1) {
        sd = std::sqrt(sd / static_cast<double>(d.size() - 1));
        double h = t_quantile_975(static_cast<int64_t>(d.size()) - 1) * sd / std::sqrt(static_cast<double>(d.size()));
        diff << fmt::format(" {:+.4f} [{:+.4f}, {:+.4f}] |", mean, mean - h, mean + h);
      } else {
        diff << fmt::format(" {:+.4f} |", mean);
      }
    }
    diff << "\n";
  }
  if (any) md << diff.str();
  // RelaImpr (DIN eq. 11) for AUC-like metrics, on the means.
  std::vector<std::string> auc_metrics;
  for (auto& m : metrics)
    if (m == "auc" || m == "gauc") auc_metrics.push_back(m);
  if (!auc_metrics.empty() && any) {
    md << "\nRelaImpr against `" << baseline << "` = ((metric - 0.5) / (baseline - 0.5) - 1), on the means.\n\n| variant |";
    for (auto& m : auc_metrics) md << " RelaImpr " << m << " |";
    md << "\n|---|";
    for (size_t i = 0; i < auc_metrics.size(); ++i) md << "---|";
    md << "\n";
    for (auto& g : groups) {
      std::string b = baseline_for(g);
      if (b.empty()) continue;
      md << "| " << g << " |";
      for (auto& m : auc_metrics) {
        double a, sa, bb, sb;
        int64_t na, nb;
        stats(g, m, a, sa, na);
        stats(b, m, bb, sb, nb);
        // Undefined ("-") without both means, or against a random baseline (AUC 0.5: no ratio).
        std::string cell = "-";
        if (na > 0 && nb > 0 && std::isfinite(a) && std::isfinite(bb)) {
          try {
            double r = eval::rela_impr(a, bb);
            if (std::isfinite(r)) cell = fmt::format("{:+.2f}%", 100.0 * r);
          } catch (const std::invalid_argument&) {
            // rela_impr refuses a baseline of exactly 0.5: the cell stays "-"
          }
        }
        md << " " << cell << " |";
      }
      md << "\n";
    }
  }
  write_atomic(fs::path(out) / summary_file(report, "md"), md.str());
}

}  // namespace recsys::train

#include "framework/train/sweep.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include <unistd.h>

#include "framework/config/config.h"
#include "framework/train/experiment.h"
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

bool summary_has_recall(const std::string& out) {
  std::ifstream in(fs::path(out) / "results.csv");
  std::string line;
  while (std::getline(in, line))
    if (line.find(",recall@") != std::string::npos) return true;
  return false;
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
  for (auto it = sweep.begin(); it != sweep.end(); ++it)
    if (!known.count(it.key()))
      throw ConfigError(it.key(), "unknown sweep key (known: base, set, variants, grid, seeds, baseline, metrics, name, description)");
  // Variants, in file order when given as a list.
  std::vector<std::pair<std::string, std::vector<std::string>>> variants;
  const json& vs = sweep.contains("variants") ? sweep["variants"] : json();
  if (vs.is_null()) {
    variants.push_back({"default", {}});
  } else if (vs.is_array()) {
    for (size_t i = 0; i < vs.size(); ++i) {
      std::string p = "variants[" + std::to_string(i) + "]";
      if (!vs[i].is_object() || !vs[i].contains("name") || !vs[i]["name"].is_string())
        throw ConfigError(p, "each variant needs a \"name\" (string) and optional \"set\" object");
      for (auto it = vs[i].begin(); it != vs[i].end(); ++it)
        if (it.key() != "name" && it.key() != "set" && it.key() != "description")
          throw ConfigError(p + "." + it.key(), "unknown variant key (known: name, set, description)");
      variants.push_back({vs[i]["name"].get<std::string>(), overrides_of(vs[i].value("set", json()), p + ".set")});
    }
  } else if (vs.is_object()) {
    for (auto it = vs.begin(); it != vs.end(); ++it) variants.push_back({it.key(), overrides_of(it.value(), "variants." + it.key())});
  } else {
    throw ConfigError("variants", "expected a list of {name, set} objects or an object {name: {key: value}}");
  }
  for (auto& o : only) {
    bool found = std::any_of(variants.begin(), variants.end(), [&](auto& v) { return v.first == o; });
    if (!found) {
      std::string known_v;
      for (auto& v : variants) known_v += (known_v.empty() ? "" : ", ") + v.first;
      throw ConfigError("--only", "unknown variant '" + o + "' (known: " + known_v + ")");
    }
  }
  // Grid: cartesian product; "seeds" is shorthand for a grid over "seed".
  std::vector<std::pair<std::string, std::vector<json>>> grid;
  if (sweep.contains("grid")) {
    if (!sweep["grid"].is_object()) throw ConfigError("grid", "expected an object {\"dotted.key\": [values]}");
    for (auto it = sweep["grid"].begin(); it != sweep["grid"].end(); ++it) {
      if (!it.value().is_array() || it.value().empty())
        throw ConfigError("grid." + it.key(), "expected a non-empty list of values");
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
  std::vector<SweepRun> runs;
  for (auto& [vname, vset] : variants) {
    if (!only.empty() && std::find(only.begin(), only.end(), vname) == only.end()) continue;
    for (auto& p : points) {
      SweepRun r;
      r.variant = vname;
      r.overrides = vset;
      std::string gridtxt, name = vname;
      for (auto& [k, v] : p) {
        r.overrides.push_back(k + "=" + v.dump());
        if (k == "seed") {
          r.seed = v.get<int64_t>();
        } else {
          gridtxt += (gridtxt.empty() ? "" : ",") + k + "=" + value_text(v);
        }
        name += "_" + k + "=" + value_text(v);
      }
      r.group = gridtxt.empty() ? vname : vname + "[" + gridtxt + "]";
      r.name = safe_name(name);
      runs.push_back(r);
    }
  }
  return runs;
}

int run_sweep(const SweepOptions& options) {
  json sweep = config::load_file(options.sweep_path);
  auto runs = expand_sweep(sweep, options.only);
  if (!sweep.contains("base") || !sweep["base"].is_string())
    throw ConfigError("base", "the sweep needs \"base\": the experiment config file (relative to the sweep file)");
  fs::path base = fs::path(options.sweep_path).parent_path() / sweep["base"].get<std::string>();
  std::vector<std::string> common = overrides_of(sweep.value("set", json()), "set");
  std::string out = options.out_dir.empty() ? "runs/" + fs::path(options.sweep_path).stem().string() : options.out_dir;
  fs::create_directories(fs::path(out) / "runs");
  // Validate every run's config before training anything.
  std::vector<json> configs;
  for (auto& r : runs) {
    std::vector<std::string> ov = common;
    ov.insert(ov.end(), r.overrides.begin(), r.overrides.end());
    ov.insert(ov.end(), options.overrides.begin(), options.overrides.end());
    json cfg = config::resolve(base.string(), ov);
    try {
      parse_experiment(cfg);
    } catch (const ConfigError& e) {
      throw ConfigError(e.path(), std::string(e.what()) + " (in sweep run '" + r.name + "')");
    }
    configs.push_back(cfg);
  }
  json record = sweep;
  record["resolved_base"] = base.string();
  record["cli_overrides"] = options.overrides;
  std::ofstream(fs::path(out) / "sweep.json") << record.dump(2) << "\n";
  int failed = 0, skipped = 0, done = 0;
  auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < runs.size(); ++i) {
    const auto& r = runs[i];
    fs::path dir = fs::path(out) / "runs" / r.name;
    if (fs::exists(dir / "results.json")) {
      ++skipped;
      std::printf("[%zu/%zu] %-40s finished earlier, skipped\n", i + 1, runs.size(), r.name.c_str());
      continue;
    }
    try {
      auto e = parse_experiment(configs[i]);
      e.trainer.progress = "none";
      RunDir rd(dir);
      setup_logging((dir / "log.txt").string(), "warn", options.log_level);
      auto res = run_experiment(e, rd);
      ++done;
      double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::string shown;
      for (const char* k : {"recall@50/head", "recall@50/tail", "auc", "gauc"})
        if (res["metrics"].contains(k)) shown += fmt::format(" {}={:.4f}", k, res["metrics"][k].get<double>());
      std::printf("[%zu/%zu] %-40s%s (%.0f s elapsed)\n", i + 1, runs.size(), r.name.c_str(), shown.c_str(), secs);
      std::fflush(stdout);
    } catch (const std::exception& ex) {
      ++failed;
      std::ofstream(dir / "error.txt") << ex.what() << "\n";
      std::printf("[%zu/%zu] %-40s FAILED: %s\n", i + 1, runs.size(), r.name.c_str(), ex.what());
    }
  }
  setup_logging("", "info");
  summarize_sweep(sweep, runs, out, options.report);
  std::printf("sweep: %d trained, %d skipped (finished earlier), %d failed; results in %s/results.md\n", done,
              skipped, failed, out.c_str());
  // The chart is optional: it needs python3 with matplotlib.
  char exe[4096] = {0};
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    fs::path script = fs::path(exe).parent_path().parent_path() / "scripts" / "plot_sweep.py";
    bool retrieval = summary_has_recall(out);
    if (fs::exists(script) && retrieval) {
      std::string python = fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
      std::string cmd = python + " '" + script.string() + "' '" + out + "' >/dev/null 2>&1";
      if (std::system(cmd.c_str()) != 0) spdlog::warn("no chart from {} (needs python3 with matplotlib and recall@K/head|tail metrics)", script.string());
    }
  }
  return failed == 0 ? 0 : 1;
}

void summarize_sweep(const json& sweep, const std::vector<SweepRun>& runs, const std::string& out,
                     const std::string& report) {
  const std::string field = report == "valid" ? "valid_metrics" : "metrics";
  // group -> seed -> metrics
  std::vector<std::string> groups;
  std::map<std::string, std::map<int64_t, json>> values;
  std::map<std::string, std::string> group_variant;
  for (auto& r : runs) {
    fs::path res = fs::path(out) / "runs" / r.name / "results.json";
    if (!fs::exists(res)) continue;
    if (!values.count(r.group)) groups.push_back(r.group);
    values[r.group][r.seed] = read_json(res)[field];
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
  auto stats = [&](const std::string& g, const std::string& m, double& mean, double& sd, int64_t& n) {
    std::vector<double> xs;
    for (auto& [seed, mj] : values[g])
      if (mj.contains(m)) xs.push_back(mj[m].get<double>());
    n = static_cast<int64_t>(xs.size());
    mean = sd = NAN;
    if (xs.empty()) return;
    mean = 0;
    for (double x : xs) mean += x;
    mean /= static_cast<double>(n);
    sd = 0;
    for (double x : xs) sd += (x - mean) * (x - mean);
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
  std::ofstream(fs::path(out) / "results.csv") << csv.str();

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
  // Paired differences to the baseline variant (same grid values when it has them).
  auto baseline_for = [&](const std::string& g) -> std::string {
    if (baseline.empty() || group_variant[g] == baseline) return "";
    std::string suffix = g.substr(group_variant[g].size());
    if (values.count(baseline + suffix)) return baseline + suffix;
    for (auto& h : groups)
      if (group_variant[h] == baseline) return h;
    return "";
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
    int64_t pairs = 0;
    for (auto& [seed, mj] : values[g]) pairs += values[b].count(seed);
    diff << "| " << g << " | " << pairs << " |";
    for (auto& m : scored) {
      std::vector<double> d;
      for (auto& [seed, mj] : values[g])
        if (values[b].count(seed) && mj.contains(m) && values[b][seed].contains(m))
          d.push_back(mj[m].get<double>() - values[b][seed][m].get<double>());
      if (d.empty()) {
        diff << " - |";
        continue;
      }
      double mean = 0, sd = 0;
      for (double x : d) mean += x;
      mean /= static_cast<double>(d.size());
      for (double x : d) sd += (x - mean) * (x - mean);
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
        md << fmt::format(" {:+.2f}% |", 100.0 * ((a - 0.5) / (bb - 0.5) - 1.0));
      }
      md << "\n";
    }
  }
  std::ofstream(fs::path(out) / "results.md") << md.str();
}

}  // namespace recsys::train

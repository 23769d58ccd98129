#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

namespace recsys::train {

struct SweepOptions {
  std::string sweep_path;
  std::string out_dir;                 ///< default runs/<sweep stem>
  std::vector<std::string> overrides;  ///< --set, applied to every run (after the sweep's own)
  std::vector<std::string> only;       ///< --only: run just these variants
  std::string log_level = "info";
  std::string report = "test";         ///< split summarised in results.md: "test" or "valid" (for tuning)
};

/// One run of a sweep: a variant, a point of the grid, and the overrides that make it.
struct SweepRun {
  std::string variant;      ///< variant name
  std::string group;        ///< variant plus non-seed grid values: what seeds are averaged over
  std::string name;         ///< unique, filesystem-safe run directory name
  int64_t seed = 0;
  std::vector<std::string> overrides;
};

/// Expands a sweep file: {"base": CONFIG, "set": {k: v}, "variants": {name: {k: v}} or
/// [{"name": .., "set": {..}}], "grid": {k: [values]}, "seeds": [..], "baseline": name,
/// "metrics": [..]}. Keys of "set" objects are dotted config paths. Every key the summary reads
/// (name, description, metrics, baseline) is checked here, before any training; two runs that
/// would share a run directory (or a summary row) are rejected. Throws ConfigError at the JSON path.
/// With `only` non-empty, returns just the runs of those variants (all are checked).
std::vector<SweepRun> expand_sweep(const nlohmann::json& sweep, const std::vector<std::string>& only);

/// Runs every run not finished yet (results.json present = finished), continues after a failed
/// run, then writes results.csv, results.md and (when python3 with matplotlib is present) a
/// PNG chart. Before training anything, each finished run's saved config.json must equal the
/// config the sweep gives it now (else ConfigError at the first differing path). The summary
/// covers every finished run of the sweep, also those --only leaves out. Returns 0 when every
/// run succeeded, 1 otherwise.
int run_sweep(const SweepOptions& options);

/// Aggregates finished runs under `out_dir` into results.csv and results.md (written atomically).
/// Differences and RelaImpr pair a group with the baseline at the same grid values only; "-" where
/// that baseline has no results or RelaImpr is undefined (baseline AUC 0.5).
void summarize_sweep(const nlohmann::json& sweep, const std::vector<SweepRun>& runs, const std::string& out_dir,
                     const std::string& report = "test");

/// Student t quantile for a two-sided 95% interval with `dof` degrees of freedom.
double t_quantile_975(int64_t dof);

}  // namespace recsys::train

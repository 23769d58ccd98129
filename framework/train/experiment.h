#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>
#include <memory>
#include <string>

#include "framework/config/config.h"
#include "framework/registry/registry.h"
#include "framework/train/task.h"
#include "framework/train/trainer.h"

namespace recsys::train {

/// Builds the task once validation has passed (data is loaded and tensors allocated only here).
using TaskBuilder = std::function<std::unique_ptr<Task>(uint64_t seed)>;
/// Parses and validates every task-specific section of the config (data, model, loss, ssl, eval).
using TaskFactory = std::function<TaskBuilder(const config::Reader& root)>;

Registry<TaskFactory>& tasks();

/// A validated experiment: nothing has been allocated yet.
struct Experiment {
  nlohmann::json config;  ///< resolved config
  /// Every setting the config's parsers read, by full path, with the value in effect (defaults
  /// filled in): what --resume and sweep reruns compare (config::Reader::settings).
  nlohmann::json settings;
  uint64_t seed = 0;
  std::string task;
  TrainerOptions trainer;
  TaskBuilder build_task;
};

/// One validation pass over the resolved config: every section parsed into typed options,
/// unknown keys rejected with their JSON path, cross-field rules checked.
Experiment parse_experiment(const nlohmann::json& config);

/// The first setting (by full path, defaults filled in) in which the experiments of two resolved
/// configs differ, skipping paths for which `ignore` is true: a default written out is no
/// difference. Where `saved` no longer parses (written by an older recsys), the raw configs are
/// compared instead. False when they agree.
bool first_setting_difference(const nlohmann::json& saved, const Experiment& now,
                              const std::function<bool(const std::string&)>& ignore,
                              config::Difference& d);

/// Seeds torch, builds the task and trains into `run_dir`; returns results.json. With `resume`,
/// continues the run in `run_dir` (or `resume_from`: the other ranks of a data-parallel run read
/// rank 0's directory and write nothing) from its last checkpoint (Trainer::resume).
nlohmann::json run_experiment(const Experiment& experiment, const RunDir& run_dir, bool resume = false,
                              dist::Context dist = dist::Context(),
                              const std::filesystem::path& resume_from = {});

}  // namespace recsys::train

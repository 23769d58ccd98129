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
  uint64_t seed = 0;
  std::string task;
  TrainerOptions trainer;
  TaskBuilder build_task;
};

/// One validation pass over the resolved config: every section parsed into typed options,
/// unknown keys rejected with their JSON path, cross-field rules checked.
Experiment parse_experiment(const nlohmann::json& config);

/// Seeds torch, builds the task and trains into `run_dir`; returns results.json. With `resume`,
/// continues the run in `run_dir` (or `resume_from`: the other ranks of a data-parallel run read
/// rank 0's directory and write nothing) from its last checkpoint (Trainer::resume).
nlohmann::json run_experiment(const Experiment& experiment, const RunDir& run_dir, bool resume = false,
                              dist::Context dist = dist::Context(),
                              const std::filesystem::path& resume_from = {});

}  // namespace recsys::train

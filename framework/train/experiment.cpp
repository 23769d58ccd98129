#include "framework/train/experiment.h"

#include <spdlog/spdlog.h>

namespace recsys::train {

Registry<TaskFactory>& tasks() {
  static Registry<TaskFactory> registry("task");
  return registry;
}

Experiment parse_experiment(const nlohmann::json& config) {
  Experiment e;
  e.config = config;
  config::Reader root(e.config);
  e.seed = static_cast<uint64_t>(root.get<int64_t>("seed", 0));
  root.get<std::string>("name", "");
  root.get<std::string>("description", "");
  e.task = root.get<std::string>("task", "retrieval");
  const TaskFactory& factory = tasks().get(e.task, "task");
  e.trainer = TrainerOptions::from_config(root.child("train"));
  e.build_task = factory(root);
  root.check_unknown();
  return e;
}

nlohmann::json run_experiment(const Experiment& e, const RunDir& run_dir, bool resume, dist::Context dist,
                              const std::filesystem::path& resume_from) {
  torch::manual_seed(e.seed);
  torch::set_num_threads(static_cast<int>(e.trainer.threads));
  auto task = e.build_task(e.seed);
  // Data parallel: the model is built alike everywhere (rank 0's parameters are broadcast
  // anyway), then each rank draws its own random numbers (dropout masks), as separate processes
  // of one big batch would.
  if (dist.active() && dist.rank() > 0)
    torch::manual_seed(dist.seed_for_rank(e.seed));
  Trainer trainer(*task, e.trainer, run_dir, e.config, e.seed, std::move(dist));
  if (resume) trainer.resume(resume_from);
  // Part of results.json, which fit() writes once.
  trainer.add_result("seed", e.seed);
  trainer.add_result("task", e.task);
  return trainer.fit();
}

}  // namespace recsys::train

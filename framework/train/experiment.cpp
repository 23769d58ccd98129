#include "framework/train/experiment.h"

#include <functional>

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
  e.settings = root.settings();
  return e;
}

bool first_setting_difference(const nlohmann::json& saved, const Experiment& now,
                              const std::function<bool(const std::string&)>& ignore,
                              config::Difference& d) {
  auto kept = [&](const nlohmann::json& flat) {
    nlohmann::json out = nlohmann::json::object();
    for (auto it = flat.begin(); it != flat.end(); ++it)
      if (!ignore(it.key())) out[it.key()] = it.value();
    return out;
  };
  nlohmann::json before;
  try {
    before = parse_experiment(saved).settings;
  } catch (const std::exception&) {
    // Not a config this build parses: the raw configs, less the ignored top-level paths.
    auto strip = [&](nlohmann::json c) {
      std::function<void(nlohmann::json&, const std::string&)> walk = [&](nlohmann::json& j, const std::string& path) {
        if (!j.is_object()) return;
        for (auto it = j.begin(); it != j.end();) {
          const std::string p = path.empty() ? it.key() : path + "." + it.key();
          if (ignore(p)) {
            it = j.erase(it);
          } else {
            walk(it.value(), p);
            ++it;
          }
        }
      };
      walk(c, "");
      return c;
    };
    return config::first_difference(strip(saved), strip(now.config), d);
  }
  return config::first_difference(kept(before), kept(now.settings), d);
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

// The recsys binary: train, list, bench (more subcommands register themselves below).
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <thread>

#include "augment/augmentation.h"
#include "framework/bench/bench.h"
#include "framework/cli/commands.h"
#include "framework/data/ctr_sources.h"
#include "framework/data/retrieval_sources.h"
#include "framework/dist/dist.h"
#include "framework/train/experiment.h"
#include "framework/train/saved_run.h"
#include "framework/train/sweep.h"
#include "models/two_tower/retrieval_task.h"
#include "framework/util/allocator.h"
#include "framework/util/errors.h"
#include "framework/util/logging.h"
#include "models/din/ctr_task.h"

namespace fs = std::filesystem;
using namespace recsys;

namespace {

/// runs/<config stem>-<time>, claimed by creating it: runs started in the same second (a seed
/// loop in the background) each get their own directory (-2, -3, ... appended), since
/// create_directory fails for all but the first.
std::string default_run_dir(const std::string& config_path) {
  auto stem = fs::path(config_path).stem().string();
  auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%d-%H%M%S", std::localtime(&now));
  const std::string base = "runs/" + stem + "-" + buf;
  try {
    fs::create_directories("runs");
    for (int k = 1;; ++k) {
      std::string dir = k == 1 ? base : base + "-" + std::to_string(k);
      if (fs::create_directory(dir)) return dir;
    }
  } catch (const fs::filesystem_error& e) {
    throw UsageError("cannot create the run directory under runs/: " + std::string(e.what()) + "; pass --out");
  }
}

void print_table(const nlohmann::json& metrics) {
  std::vector<std::string> names;
  for (auto it = metrics.begin(); it != metrics.end(); ++it)
    if (it.key().find('@') != std::string::npos && it.key().find('/') == std::string::npos) names.push_back(it.key());
  std::printf("%-12s %10s %10s %10s\n", "metric", "all", "head", "tail");
  for (auto& n : names) {
    auto get = [&](const std::string& k) { return metrics.contains(k) ? metrics[k].get<double>() : NAN; };
    std::printf("%-12s %10.4f %10.4f %10.4f\n", n.c_str(), get(n), get(n + "/head"), get(n + "/tail"));
  }
  if (metrics.contains("test_points"))
    std::printf("%-12s %10.0f %10.0f %10.0f\n", "test points", metrics["test_points"].get<double>(),
                metrics.value("test_points/head", 0.0), metrics.value("test_points/tail", 0.0));
  for (auto it = metrics.begin(); it != metrics.end(); ++it)
    if (it.key().find('@') == std::string::npos && it.key().find("test_points") == std::string::npos && it.key() != "users")
      std::printf("%-12s %10.4f\n", it.key().c_str(), it.value().get<double>());
}

/// A resumed run must continue the config it started with. Settings that change neither the
/// model, the data nor the order of updates may differ: the length of training (epochs,
/// max_steps, to extend a run), threads, prefetching, logging and the device.
void check_resumed_config(const fs::path& dir, const train::Experiment& experiment) {
  nlohmann::json saved;
  try {
    std::ifstream in(dir / "config.json");
    saved = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception&) {
    throw DataError((dir / "config.json").string(), 0, "missing or unreadable: nothing shows which config the run used");
  }
  // The train.* keys a resumed run may change: how long and how it runs, not what it learns.
  static const std::vector<std::string> may_change = {"epochs",   "max_steps", "threads",       "prefetch",
                                                      "progress", "log_every", "device",        "evaluate_test",
                                                      "collective_timeout_s"};
  // Compared setting by setting with defaults filled in: a default written out is no change.
  // The run's name and description do not change what it learns either.
  auto ignore = [](const std::string& path) {
    if (path == "name" || path == "description") return true;
    for (const auto& k : may_change)
      if (path == "train." + k) return true;
    return false;
  };
  config::Difference d;
  if (train::first_setting_difference(saved, experiment, ignore, d)) {
    std::string keys = "train." + may_change.front();
    for (size_t i = 1; i < may_change.size(); ++i)
      keys += (i + 1 == may_change.size() ? " and " : ", ") + may_change[i];
    throw ConfigError(d.path, "the run in " + dir.string() + " was trained with " + d.path + " = " + d.before +
                                  ", this config gives " + d.after + "; --resume continues the same config (only " +
                                  keys + " may change)");
  }
}

int cmd_train(const std::string& config_path, const std::vector<std::string>& overrides, std::string out,
              bool dump, bool overwrite, bool resume, int nproc, char** argv, const std::string& log_level) {
  auto config = config::resolve(config_path, overrides);
  auto experiment = train::parse_experiment(config);
  if (dump) {
    std::cout << experiment.config.dump(2) << std::endl;
    return 0;
  }
  if (nproc < 1) throw UsageError("--nproc must be at least 1");
  auto ctx = dist::Context::from_env(std::chrono::milliseconds(
      static_cast<int64_t>(experiment.trainer.collective_timeout_s * 1000)));
  if (ctx.active() && !ctx.leader()) {
    // The other ranks write nothing: rank 0 owns the run directory and the log.
    setup_logging("", "warn");
    train::run_experiment(experiment, train::RunDir(), resume, ctx, out);
    return 0;
  }
  if (resume) {
    if (out.empty()) throw UsageError("--resume needs --out: the run directory to continue");
    if (overwrite) throw UsageError("--resume continues a run, --overwrite replaces it: pass one");
    check_resumed_config(out, experiment);
  }
  const bool out_given = !out.empty();
  if (!out_given) out = default_run_dir(config_path);
  // One process writes a run directory at a time (a data-parallel launcher holds it for its
  // ranks, which are started under its hold; a rank 0 started by hand takes it itself).
  train::DirectoryLock lock;
  if (!ctx.active() || !dist::launched_by_launcher()) {
    try {
      fs::create_directories(out);
    } catch (const fs::filesystem_error& e) {
      throw UsageError("--out '" + out + "': cannot create the run directory: " + e.what());
    }
    lock = train::DirectoryLock(out);
  }
  // An overwrite interrupted before its new run saved anything gave the old run back.
  if (train::ReplacedRun::recover(out))
    spdlog::warn("{}: an interrupted --overwrite had set its run aside; it is back", out);
  const bool holds = train::RunDir::holds_run(out);
  if (holds && !overwrite && !resume)
    throw UsageError("run directory '" + out + "' already holds a run; choose another --out, pass --resume to "
                     "continue it or --overwrite to replace it");
  if (nproc > 1 && !ctx.active()) {
    // The launcher: the run directory is settled (created and held) above; every rank uses this
    // one, and the ranks' FileStore lives in it. This command then runs once per rank with the
    // rank in its environment; rank 0 takes it from there (clearing an overwritten run).
    std::vector<std::string> extra;
    if (!out_given) extra = {"--out", out};
    return dist::launch(nproc, argv, extra, (fs::path(out) / ".dist_store").string());
  }
  // Replaced as a whole (a failing new run must not leave its config next to the old results
  // and checkpoints), the old run set aside until the new one has saved something of its own.
  std::optional<train::ReplacedRun> replaced;
  if (holds && overwrite) {
    try {
      replaced.emplace(out);
    } catch (const fs::filesystem_error& e) {
      throw UsageError("--out '" + out + "': cannot set the old run aside: " + e.what());
    }
  }
  nlohmann::json results;
  try {
    train::RunDir run_dir;
    try {
      run_dir = train::RunDir(out);
      setup_logging((run_dir.dir() / "log.txt").string(), log_level);
    } catch (const fs::filesystem_error& e) {
      throw UsageError("--out '" + out + "': cannot create the run directory: " + e.what());
    } catch (const spdlog::spdlog_ex& e) {
      throw UsageError("--out '" + out + "': cannot write its log.txt: " + e.what());
    }
    spdlog::info("run directory {}", out);
    if (ctx.active()) spdlog::info("data-parallel rank 0 of {} (c10d, Gloo)", ctx.world());
    results = train::run_experiment(experiment, run_dir, resume, ctx);
  } catch (...) {
    if (replaced) replaced->settle_failed();
    throw;
  }
  if (replaced) replaced->keep_new();
  std::printf("\nTest metrics at the best validation step (%lld), %s:\n",
              static_cast<long long>(results["best_step"].get<int64_t>()), out.c_str());
  print_table(results["metrics"]);
  return 0;
}

int cmd_mi(const std::string& config_path, const std::vector<std::string>& overrides, const std::string& out) {
  auto config = config::resolve(config_path, overrides);
  auto result = models::item_feature_mutual_information(config);
  const auto& names = result["features"];
  std::printf("mutual information between item features (nats; diagonal = entropy), %s:\n%-12s", result["source"].get<std::string>().c_str(), "");
  for (auto& n : names) std::printf(" %11s", n.get<std::string>().substr(0, 11).c_str());
  std::printf("\n");
  for (size_t i = 0; i < names.size(); ++i) {
    std::printf("%-12s", names[i].get<std::string>().substr(0, 12).c_str());
    for (size_t j = 0; j < names.size(); ++j) std::printf(" %11.4f", result["mi"][i][j].get<double>());
    std::printf("\n");
  }
  std::printf("correlated masking groups (seed -> masked together, fraction 0.5):\n");
  for (auto it = result["groups_at_fraction_0.5"].begin(); it != result["groups_at_fraction_0.5"].end(); ++it)
    std::printf("  %-12s -> %s\n", it.key().c_str(), it.value().dump().c_str());
  std::string path = out.empty() ? "mi.json" : out;
  try {
    train::write_atomic(path, result.dump(2) + "\n");
  } catch (const std::exception& e) {  // a missing or unwritable directory, or a directory named
    throw UsageError("--out '" + path + "': " + e.what());
  }
  std::printf("saved %s\n", path.c_str());
  return 0;
}

/// Creates the parent directory of an output file (UsageError naming it when it cannot).
void make_parent(const fs::path& path) {
  if (!path.has_parent_path()) return;
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (ec) throw UsageError("cannot create '" + path.parent_path().string() + "': " + ec.message());
}

int cmd_eval(const std::string& target, const std::string& which, const std::string& split,
             const std::vector<std::string>& overrides, bool json, const std::string& out) {
  auto run = train::load_saved_run(target, which, overrides, split);
  if (!out.empty()) {  // settled before the evaluation runs
    train::check_output_path(out, run.checkpoint);
    make_parent(out);
  }
  auto metrics = run.task->evaluate(split);
  nlohmann::json result = {{"checkpoint", run.checkpoint.string()}, {"step", run.step}, {"split", split},
                           {"task", run.experiment.task}, {"overrides", overrides}, {"metrics", metrics}};
  if (json) {
    std::cout << result.dump() << std::endl;
  } else {
    std::printf("%s metrics of %s (step %lld):\n", split.c_str(), run.checkpoint.string().c_str(),
                static_cast<long long>(run.step));
    print_table(result["metrics"]);
  }
  if (!out.empty()) {
    try {
      train::write_atomic(out, result.dump(2) + "\n");
    } catch (const std::exception& e) {
      throw UsageError("--out '" + out + "': " + e.what());
    }
  }
  return 0;
}

struct ExportArgs {
  std::string target, what, which = "best", split = "test", format = "tsv", out;
  int64_t k = 50;
  bool all_users = false;
  std::vector<std::string> overrides;
};

int cmd_export(const ExportArgs& a) {
  if (a.k < 1) throw UsageError("--k must be at least 1");
  auto run = train::load_saved_run(a.target, a.which, a.overrides, a.split);
  const auto kinds = run.task->export_kinds();
  auto kind = std::find_if(kinds.begin(), kinds.end(), [&](const auto& k) { return k.name == a.what; });
  if (kind == kinds.end()) {
    std::string known;
    for (const auto& k : kinds) known += (known.empty() ? "" : ", ") + k.name;
    throw UsageError("--what '" + a.what + "': the " + run.experiment.task + " task exports " +
                     (known.empty() ? std::string("nothing") : known));
  }
  if (a.all_users && !kind->uses_k) throw UsageError("--all-users applies to ranked exports (recommendations)");
  fs::path path = a.out;
  if (path.empty()) {
    const std::string name = a.what + (kind->uses_split ? "-" + a.split : "") + "-" +
                             run.checkpoint.stem().string() + (kind->uses_k ? "-k" + std::to_string(a.k) : "") +
                             (a.all_users ? "-all" : "") + "." + a.format;
    path = train::default_export_dir(a.target, run.checkpoint) / name;
  }
  train::check_output_path(path, run.checkpoint);
  if (a.format == "npy")  // the keys and column names go beside the values
    for (const auto& beside : train::npy_companions(path)) train::check_output_path(beside, run.checkpoint);
  make_parent(path);
  train::ExportRequest request;
  request.kind = a.what;
  request.split = a.split;
  request.k = a.k;
  request.all_users = a.all_users;
  auto table = run.task->export_table(request);
  if (a.format == "npy")
    train::write_table_npy(table, path);
  else
    train::write_table_tsv(table, path);
  std::printf("wrote %s: %lld rows, %zu key and %zu value columns (%s, step %lld)\n", path.string().c_str(),
              static_cast<long long>(table.keys.size()), table.key_columns.size(), table.value_columns.size(),
              run.checkpoint.string().c_str(), static_cast<long long>(run.step));
  return 0;
}

int cmd_list() {
  auto show = [](const std::string& title, const auto& registry) {
    std::printf("%s:\n", title.c_str());
    for (auto& [name, help] : registry.list()) std::printf("  %-20s %s\n", name.c_str(), help.c_str());
  };
  show("tasks", train::tasks());
  show("retrieval datasets", data::retrieval_sources());
  show("augmentations", augment::augmentations());
  show("CTR datasets", data::ctr_sources());
  show("CTR models", models::ctr_models());
  std::printf("optimizers:\n  adam, adagrad, sgd   (embedding tables updated row-wise)\n");
  std::printf("retrieval metrics:\n  recall@K, ndcg@K   (overall, /head, /tail)\n");
  std::printf("CTR metrics:\n  auc, gauc, logloss\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"recsys: config-driven recommender experiments on LibTorch"};
  app.require_subcommand(1);
  std::string log_level = "info";
  // spdlog reads an unknown level name as "off", which would hide every error message.
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error, critical, off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "warning", "err", "error", "critical", "off"}));

  std::string config_path, out;
  std::vector<std::string> overrides;
  bool dump = false;
  auto* train_cmd = app.add_subcommand("train", "train one experiment into a run directory");
  train_cmd->add_option("config", config_path, "experiment JSON")->required();
  train_cmd->add_option("--set", overrides, "override a.b.c=VALUE (JSON, else string); repeatable");
  train_cmd->add_option("--out", out, "run directory (default runs/<config>-<time>)");
  train_cmd->add_flag("--dump-config", dump, "print the resolved config and exit");
  bool overwrite = false, resume = false;
  train_cmd->add_flag("--overwrite", overwrite, "train into a directory that already holds a run");
  int nproc = 1;
  train_cmd->add_option("--nproc", nproc,
                        "data-parallel processes on this machine (c10d, Gloo): each trains on its share of "
                        "every global batch of nproc x train.batch_size examples");
  train_cmd->add_flag("--resume", resume,
                      "continue the run in --out from its last checkpoint (same config; epochs and max_steps may grow)");

  auto* list_cmd = app.add_subcommand("list", "print every registry");

  train::SweepOptions sweep;
  auto* sweep_cmd = app.add_subcommand("sweep", "run a grid / list of variants x seeds and summarise");
  sweep_cmd->add_option("sweep", sweep.sweep_path, "sweep JSON")->required();
  sweep_cmd->add_option("--out", sweep.out_dir, "sweep directory (default runs/<sweep>)");
  sweep_cmd->add_option("--set", sweep.overrides, "override applied to every run; repeatable");
  sweep_cmd->add_option("--report", sweep.report, "split summarised in results.md: test (default) or valid (for tuning)")
      ->check(CLI::IsMember({"test", "valid"}));
  sweep_cmd->add_option("--only", sweep.only, "run just these variants (comma-separated)")->delimiter(',');

  std::string eval_target, eval_which = "best", eval_split = "test", eval_out;
  std::vector<std::string> eval_overrides;
  bool eval_json = false;
  auto* eval_cmd = app.add_subcommand("eval", "evaluate a trained model from its checkpoint");
  eval_cmd->add_option("run", eval_target, "run directory, or a checkpoint file")->required();
  eval_cmd->add_option("--checkpoint", eval_which, "best (default) or last, in a run directory")
      ->check(CLI::IsMember({"best", "last"}));
  eval_cmd->add_option("--split", eval_split, "test (default) or valid")->check(CLI::IsMember({"test", "valid"}));
  eval_cmd->add_option("--set", eval_overrides,
                       "eval.*=VALUE, train.device, train.threads, data.path (data.reviews, data.meta); repeatable");
  eval_cmd->add_flag("--json", eval_json, "print one JSON line");
  eval_cmd->add_option("--out", eval_out, "also write the result as JSON to this file");

  ExportArgs export_args;
  auto* export_cmd = app.add_subcommand("export", "write embeddings, recommendations or predictions of a trained model");
  export_cmd->add_option("run", export_args.target, "run directory, or a checkpoint file")->required();
  export_cmd->add_option("--what", export_args.what,
                         "retrieval: item_embeddings, user_embeddings, recommendations; ctr: predictions")
      ->required();
  export_cmd->add_option("--checkpoint", export_args.which, "best (default) or last, in a run directory")
      ->check(CLI::IsMember({"best", "last"}));
  export_cmd->add_option("--split", export_args.split, "test (default) or valid")
      ->check(CLI::IsMember({"test", "valid"}));
  export_cmd->add_option("--k", export_args.k, "recommendations per user (default 50)");
  export_cmd->add_flag("--all-users", export_args.all_users,
                       "recommendations for every user (default: users with held-out items in the split)");
  export_cmd->add_option("--format", export_args.format, "tsv (default) or npy (values; keys in .keys.tsv)")
      ->check(CLI::IsMember({"tsv", "npy"}));
  export_cmd->add_option("--out", export_args.out,
                         "output file (default RUN/exports/<what>[-<split>]-<checkpoint>[-k<k>].<format>)");
  export_cmd->add_option("--set", export_args.overrides,
                         "eval.*=VALUE, train.device, train.threads, data.path (data.reviews, data.meta); repeatable");

  std::string mi_config, mi_out;
  std::vector<std::string> mi_overrides;
  auto* mi_cmd = app.add_subcommand("mi", "print and save the item features' mutual information matrix");
  mi_cmd->add_option("config", mi_config, "experiment JSON")->required();
  mi_cmd->add_option("--set", mi_overrides, "override a.b.c=VALUE; repeatable");
  mi_cmd->add_option("--out", mi_out, "output JSON (default mi.json)");
  bench::BenchOptions bench_options;
  std::string bench_workloads = "twotower_ssl,din,dien";
  auto* bench_cmd = app.add_subcommand("bench", "time the canonical training workloads (shared/bench/WORKLOADS.md)");
  bench_cmd->add_option("--workloads", bench_workloads, "comma-separated: twotower_ssl, din, dien, pipeline");
  bench_cmd->add_option("--threads", bench_options.threads, "LibTorch intra-op threads");
  bench_cmd->add_option("--device", bench_options.device, "cpu or cuda");
  bench_cmd->add_flag("--json", bench_options.json, "one JSON line per workload");
  bench_cmd->add_flag("--peak", bench_options.peak, "measure the matmul rate and report FLOP-bound fractions");
  bench_cmd->add_option("--steps", bench_options.steps, "timed steps after 5 warm-up steps");
  bench_cmd->add_option("--batch-scale", bench_options.batch_scale,
                        "every workload's batch multiplied by this (larger-batch variants, e.g. on a GPU)");
  bench_cmd->add_flag("--plain", bench_options.plain, "run every workload's plain (unoptimised) path");
  bench_cmd->add_option("--disable", bench_options.disable,
                        "optimisations to switch off (comma-separated): " +
                            bench::optimisation_list())
      ->delimiter(',');
  bench_cmd->add_option("--profile", bench_options.profile,
                        "write a Chrome trace of each workload's timed steps to PREFIX.WORKLOAD.json");
  bench_cmd->add_option("--paired", bench_options.paired,
                        "alternate steps with this optimisation on and off and report the paired "
                        "step-time ratio (a process-wide one, " + bench::paired_switch_list() +
                            ", switched between steps; a workload path through a second workload "
                            "without it; not allocator or huge_pages)");
  bench_cmd->add_option("--pipeline-lines", bench_options.pipeline_lines, "lines of the generated log (pipeline)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  setup_logging("", log_level);
  cli::register_builtins();
  try {
    // Training on a loaded machine with spinning OpenMP workers is many times slower; pick the
    // wait policy from the current load as the bench does (a no-op when the user set one).
    // Training also reuses its freed step buffers instead of page-faulting them back in every
    // step.
    if (*train_cmd || *sweep_cmd) {
      bench::ensure_omp_wait_policy(argv, static_cast<int>(std::thread::hardware_concurrency()));
      util::retain_freed_memory();
    }
    if (*train_cmd) return cmd_train(config_path, overrides, out, dump, overwrite, resume, nproc, argv, log_level);
    if (*list_cmd) return cmd_list();
    if (*eval_cmd) return cmd_eval(eval_target, eval_which, eval_split, eval_overrides, eval_json, eval_out);
    if (*export_cmd) return cmd_export(export_args);
    if (*sweep_cmd) {
      sweep.log_level = log_level;
      return train::run_sweep(sweep);
    }
    if (*mi_cmd) return cmd_mi(mi_config, mi_overrides, mi_out);
    if (*bench_cmd) {
      // `--disable huge_pages` (or --plain) also keeps malloc's heap in 4 KiB pages.
      const bool heap = !bench_options.plain &&
                        std::find(bench_options.disable.begin(), bench_options.disable.end(),
                                  "huge_pages") == bench_options.disable.end();
      bench::ensure_omp_wait_policy(argv, bench_options.threads, heap);
      bench_options.workloads.clear();
      std::stringstream ss(bench_workloads);
      for (std::string w; std::getline(ss, w, ',');)
        if (!w.empty()) bench_options.workloads.push_back(w);
      return bench::run_bench(bench_options);
    }
  } catch (const ConfigError& e) {
    spdlog::error("config error: {}", e.what());
    return 2;
  } catch (const DataError& e) {
    spdlog::error("data error: {}", e.what());
    return 2;
  } catch (const UsageError& e) {
    spdlog::error("usage: {}", e.what());
    return 2;
  } catch (const NumericError& e) {
    spdlog::error("numeric error: {}", e.what());
    return 2;
  } catch (const std::exception& e) {
    spdlog::error("internal error: {}", e.what());
    return 1;
  }
  return 0;
}

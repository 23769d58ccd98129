// The recsys binary: exit codes and messages (runs ./build/recsys from the repository root).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "framework/config/config.h"
#include "framework/train/run_dir.h"
#include "support.h"

namespace fs = std::filesystem;

namespace {

const char* kBinary = "./build/recsys";
const char* kConfig = "configs/experiments/twotower_synthetic.json";

struct Result {
  int code = -1;
  std::string out, err;
};

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Result run(const std::string& args) {
  auto dir = recsys::testing::temp_dir("cli");
  std::string cmd = std::string(kBinary) + " " + args + " >" + (dir / "out").string() + " 2>" +
                    (dir / "err").string();
  int status = std::system(cmd.c_str());
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(dir / "out");
  r.err = slurp(dir / "err");
  return r;
}

bool have_binary() {
  if (fs::exists(kBinary)) return true;
  WARN("skipped: " << kBinary << " is not built");
  return false;
}

}  // namespace

TEST_CASE("cli: a misspelt --set key exits 2 naming the key", "[cli]") {
  if (!have_binary()) return;
  auto r = run(std::string("train ") + kConfig + " --set train.lrr=1");
  INFO("stderr: " << r.err);
  CHECK(r.code == 2);
  CHECK(r.err.find("train.lrr") != std::string::npos);
}

TEST_CASE("cli: --dump-config prints the resolved JSON", "[cli]") {
  if (!have_binary()) return;
  auto r = run(std::string("train ") + kConfig + " --dump-config --set train.epochs=3");
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  auto printed = nlohmann::json::parse(r.out);
  CHECK(printed == recsys::config::resolve(kConfig, {"train.epochs=3"}));
  CHECK(printed["train"]["epochs"] == 3);
}

TEST_CASE("cli: a missing config file exits 2", "[cli]") {
  if (!have_binary()) return;
  auto r = run("train configs/experiments/no_such_file.json");
  CHECK(r.code == 2);
  CHECK(r.err.find("no_such_file.json") != std::string::npos);
}

TEST_CASE("cli: list names the registered tasks", "[cli]") {
  if (!have_binary()) return;
  auto r = run("list");
  CHECK(r.code == 0);
  CHECK(r.out.find("retrieval") != std::string::npos);
  CHECK(r.out.find("synthetic") != std::string::npos);
  CHECK(run("no_such_command").code == 2);
}

TEST_CASE("cli: mi prints and saves the item features' mutual information", "[cli]") {
  if (!have_binary()) return;
  auto dir = recsys::testing::temp_dir("cli_mi");
  auto out = dir / "mi.json";
  auto r = run("mi configs/tests/twotower_tiny.json --out " + out.string());
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("categories") != std::string::npos);
  auto j = recsys::config::Json::parse(slurp(out));
  auto n = j["features"].size();
  REQUIRE(n == 5);
  for (size_t a = 0; a < n; ++a)
    for (size_t b = 0; b < n; ++b) {
      CHECK(j["mi"][a][b].get<double>() == Approx(j["mi"][b][a].get<double>()));
      CHECK(j["mi"][a][b].get<double>() <= j["mi"][a][a].get<double>() + 1e-9);  // MI <= entropy
    }
}

TEST_CASE("cli: a sweep with an unknown --only variant exits 2", "[cli]") {
  if (!have_binary()) return;
  auto r = run("sweep configs/tests/ssl_sweep_tiny.json --only rfn --out " +
               recsys::testing::temp_dir("cli_sweep").string());
  INFO("stderr: " << r.err);
  CHECK(r.code == 2);
  CHECK(r.err.find("rfn") != std::string::npos);
}

TEST_CASE("cli: a sweep rerun with a changed --set exits 2 naming the run and the path", "[cli][sweep]") {
  if (!have_binary()) return;
  // A finished run (config.json + results.json, as a sweep leaves it) trained with another lr.
  auto dir = recsys::testing::temp_dir("cli_sweep_changed");
  auto base = fs::absolute("configs/tests/twotower_tiny.json").string();
  std::ofstream(dir / "sweep.json") << nlohmann::json{{"base", base}, {"seeds", {1}}}.dump();
  auto run_dir = dir / "out" / "runs" / "default_seed_1";
  fs::create_directories(run_dir);
  std::ofstream(run_dir / "config.json") << recsys::config::resolve(base, {"seed=1", "train.optimizer.lr=0.001"}).dump(2);
  std::ofstream(run_dir / "results.json") << R"({"metrics": {"auc": 0.7}})";
  auto r = run("sweep " + (dir / "sweep.json").string() + " --out " + (dir / "out").string() +
               " --set train.optimizer.lr=0.5");
  INFO("stderr: " << r.err);
  CHECK(r.code == 2);
  CHECK(r.err.find("default_seed_1") != std::string::npos);
  CHECK(r.err.find("train.optimizer.lr") != std::string::npos);
  CHECK(slurp(run_dir / "results.json") == R"({"metrics": {"auc": 0.7}})");
}

TEST_CASE("cli: bad option values exit 2 naming the option", "[cli]") {
  if (!have_binary()) return;
  // spdlog would read an unknown level as "off" and hide every later message.
  auto level = run(std::string("--log-level INFO train ") + kConfig + " --dump-config");
  CHECK(level.code == 2);
  CHECK(level.err.find("--log-level") != std::string::npos);

  // An --out that is a regular file, and an mi --out in a missing directory.
  auto dir = recsys::testing::temp_dir("cli_out");
  { std::ofstream(dir / "taken") << "x"; }
  auto train_out = run(std::string("train ") + kConfig + " --out " + (dir / "taken").string() +
                       " --set train.epochs=1");
  INFO("stderr: " << train_out.err);
  CHECK(train_out.code == 2);
  CHECK(train_out.err.find("--out") != std::string::npos);
  auto mi_out = run("mi configs/tests/twotower_tiny.json --out " + (dir / "missing" / "mi.json").string());
  CHECK(mi_out.code == 2);
  CHECK(mi_out.err.find("--out") != std::string::npos);
}

TEST_CASE("cli: malformed device names and a mode without a metric exit 2", "[cli]") {
  if (!have_binary()) return;
  for (const char* device : {"cuda:abc", "cudax", "cuda:", "gpu"}) {
    auto r = run(std::string("train ") + kConfig + " --dump-config --set train.device=" + device);
    INFO(device << " stderr: " << r.err);
    CHECK(r.code == 2);
    CHECK(r.err.find("train.device") != std::string::npos);
  }
  CHECK(run(std::string("train ") + kConfig + " --dump-config --set train.device=cpu").code == 0);
  auto mode = run(std::string("train ") + kConfig + " --dump-config --set 'train.early_stopping={\"mode\":\"min\"}'");
  CHECK(mode.code == 2);
  CHECK(mode.err.find("train.early_stopping.mode") != std::string::npos);
  auto acc = run(std::string("train ") + kConfig +
                 " --dump-config --set train.optimizer.type=adagrad --set train.optimizer.initial_accumulator=-1");
  CHECK(acc.code == 2);
  CHECK(acc.err.find("train.optimizer.initial_accumulator") != std::string::npos);
}

TEST_CASE("cli: mi on a CTR config exits 2 naming the task", "[cli]") {
  if (!have_binary()) return;
  auto r = run("mi configs/presets/ctr_base.json");
  INFO("stderr: " << r.err);
  CHECK(r.code == 2);
  CHECK(r.err.find("task") != std::string::npos);
}

TEST_CASE("cli: --resume continues a run with its own config and refuses another", "[cli][resume]") {
  if (!have_binary()) return;
  auto dir = recsys::testing::temp_dir("cli_resume");
  const std::string run_dir = (dir / "run").string();
  const std::string cmd = "train configs/tests/twotower_tiny.json --out " + run_dir + " --set train.checkpoints=true";
  auto first = run(cmd + " --set train.epochs=1");
  INFO("stderr: " << first.err);
  REQUIRE(first.code == 0);
  const auto steps = recsys::config::Json::parse(slurp(dir / "run" / "results.json"))["steps"].get<int64_t>();

  auto again = run(cmd + " --set train.epochs=1");
  CHECK(again.code == 2);
  CHECK(again.err.find("--resume") != std::string::npos);
  auto changed = run(cmd + " --resume --set train.epochs=2 --set train.optimizer.lr=0.5");
  CHECK(changed.code == 2);
  CHECK(changed.err.find("train.optimizer.lr") != std::string::npos);
  CHECK(run("train configs/tests/twotower_tiny.json --resume").code == 2);  // no --out

  // A longer run: the second epoch is trained on top of the first.
  auto longer = run(cmd + " --resume --set train.epochs=2");
  INFO("stderr: " << longer.err);
  REQUIRE(longer.code == 0);
  auto results = recsys::config::Json::parse(slurp(dir / "run" / "results.json"));
  CHECK(results["steps"].get<int64_t>() == 2 * steps);
  CHECK(recsys::config::Json::parse(slurp(dir / "run" / "config.json"))["train"]["epochs"] == 2);
}

TEST_CASE("cli: --nproc 2 trains data-parallel replicas that stay identical", "[cli][dist]") {
  if (!have_binary()) return;
  auto dir = recsys::testing::temp_dir("cli_nproc");
  // The trainer compares the ranks' parameters at the end (exit 1 when they differ).
  auto r = run("train configs/tests/twotower_tiny.json --nproc 2 --out " + (dir / "run").string() +
               " --set train.threads=1");
  INFO("stderr: " << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.err.find("rank 0 of 2") != std::string::npos);
  auto results = recsys::config::Json::parse(slurp(dir / "run" / "results.json"));
  CHECK(results["world_size"] == 2);
  // 2,346 training positives in batches of 64: 36 full batches, 18 per rank, per epoch.
  CHECK(results["steps"] == 2 * 18);
  CHECK(std::isfinite(results["metrics"]["recall@20"].get<double>()));

  // A failing rank ends the run with its status instead of leaving the other waiting.
  auto bad = run("train configs/tests/twotower_tiny.json --nproc 2 --out " + (dir / "nan").string() +
                 " --set train.threads=1 --set train.optimizer.lr=1e30");
  CHECK(bad.code == 2);
  CHECK(bad.err.find("non-finite") != std::string::npos);
  CHECK(run("train configs/tests/twotower_tiny.json --nproc 0").code == 2);
}

namespace {

/// The largest difference between the float tensors two checkpoints hold under the same names
/// (module children are nested archives; trainer bookkeeping and the config are left out).
double max_checkpoint_difference(torch::serialize::InputArchive& a, torch::serialize::InputArchive& b,
                                 const std::string& prefix, int& compared) {
  double worst = 0;
  for (const auto& key : a.keys()) {
    if (key.rfind("trainer.", 0) == 0 || key == "config") continue;
    torch::Tensor ta, tb;
    if (a.try_read(key, ta)) {
      INFO(prefix + key);
      REQUIRE(b.try_read(key, tb));
      REQUIRE(ta.sizes() == tb.sizes());
      if (ta.is_floating_point()) {
        worst = std::max(worst, (ta.to(torch::kFloat64) - tb.to(torch::kFloat64)).abs().max().item<double>());
        ++compared;
      }
      continue;
    }
    torch::serialize::InputArchive na, nb;
    REQUIRE(a.try_read(key, na));
    REQUIRE(b.try_read(key, nb));
    worst = std::max(worst, max_checkpoint_difference(na, nb, prefix + key + ".", compared));
  }
  return worst;
}

double checkpoint_difference(const fs::path& x, const fs::path& y, int& compared) {
  torch::serialize::InputArchive a, b;
  a.load_from(x.string());
  b.load_from(y.string());
  return max_checkpoint_difference(a, b, "", compared);
}

}  // namespace

namespace {

/// `common` (a train command of 12 steps with checkpoints) run as one process of batch 64, as two
/// ranks of batch 32, and as two ranks with `off` (the cross-rank option under test) set: the
/// pair must end within 1e-4 of the single process in every saved tensor (parameters, Adam
/// moments, buffers), and the ranks without the option visibly further away.
void check_two_ranks_match_one(const fs::path& dir, const std::string& common, const std::string& off) {
  auto single = run(common + " --set train.batch_size=64 --out " + (dir / "single").string());
  INFO("stderr: " << single.err);
  REQUIRE(single.code == 0);
  auto pair = run(common + " --nproc 2 --set train.batch_size=32 --out " + (dir / "pair").string());
  INFO("stderr: " << pair.err);
  REQUIRE(pair.code == 0);
  auto apart = run(common + " --nproc 2 --set train.batch_size=32 --set " + off + " --out " + (dir / "apart").string());
  REQUIRE(apart.code == 0);
  int compared = 0;
  const double same = checkpoint_difference(dir / "single" / "checkpoints" / "last.pt",
                                            dir / "pair" / "checkpoints" / "last.pt", compared);
  CHECK(compared > 10);
  INFO("max difference: two ranks " << same);
  CHECK(same < 1e-4);
  int compared_apart = 0;
  const double different = checkpoint_difference(dir / "single" / "checkpoints" / "last.pt",
                                                 dir / "apart" / "checkpoints" / "last.pt", compared_apart);
  INFO("max difference: two ranks with " << off << ": " << different);
  CHECK(different > 20 * same);
}

const char* const kTwelveSteps =
    " --set train.checkpoints=true --set train.epochs=1 --set train.max_steps=12 --set train.eval_every=12 "
    "--set train.threads=1";

}  // namespace

TEST_CASE("cli: two ranks of batch 32 with cross-rank negatives train as one process of batch 64", "[cli][dist]") {
  if (!have_binary()) return;
  // The same 64 examples and 64 candidates per step, up to the order of float sums; each rank's
  // 32 candidates alone are a different objective.
  check_two_ranks_match_one(recsys::testing::temp_dir("cli_nproc_equivalence"),
                            std::string("train configs/tests/twotower_tiny.json") + kTwelveSteps,
                            "loss.cross_rank_negatives=false");
}

TEST_CASE("cli: two ranks of SSL batch 32 contrast their views across ranks as one process of 64", "[cli][dist]") {
  if (!have_binary()) return;
  // The SSL batch follows the training batch (ssl.batch_size 0): 32 items per rank, 64 in one
  // process, drawn from the same stream in the same order. Correlated masking draws one seed
  // feature per row, so the two halves of a 64-row draw are the two 32-row draws (value dropout
  // draws per feature, which would interleave differently).
  const std::string symmetric = GENERATE(std::string("false"), std::string("true"));
  check_two_ranks_match_one(recsys::testing::temp_dir("cli_nproc_ssl"),
                            std::string("train configs/tests/twotower_tiny.json") + kTwelveSteps +
                                " --set ssl.alpha=0.5 --set ssl.batch_size=0 --set ssl.temperature=0.1 "
                                "--set 'ssl.augment=[{\"type\":\"correlated_mask\",\"fraction\":0.5}]' "
                                "--set ssl.symmetric=" + symmetric,
                            "loss.cross_rank_negatives=false");
}

TEST_CASE("cli: two DIN ranks of batch 32 with synchronised Dice train as one process of batch 64", "[cli][dist]") {
  if (!have_binary()) return;
  // Dice in the output MLP, and in the attention unit over padded histories of up to 200 steps
  // (each rank's batch is padded to the step's longest history, as one process's would be).
  const std::string attention =
      GENERATE(std::string(""), std::string(" --set model.attention_activation=dice --set data.max_history=200"));
  check_two_ranks_match_one(recsys::testing::temp_dir("cli_nproc_dice"),
                            std::string("train configs/tests/ctr_din.json") + kTwelveSteps + attention,
                            "model.sync_batch_stats=false");
}

TEST_CASE("cli: a data-parallel run resumed mid-epoch ends bit for bit like an uninterrupted one", "[cli][dist][resume]") {
  if (!have_binary()) return;
  auto dir = recsys::testing::temp_dir("cli_nproc_resume");
  // Dropout draws from each rank's own generator: the checkpoint must carry every rank's.
  const std::string common = "train configs/tests/ctr_din.json --nproc 2 --set train.checkpoints=true "
                             "--set train.epochs=1 --set train.eval_every=8 --set train.threads=1 "
                             "--set train.batch_size=32 --set model.dropout=0.3";
  const std::string full = (dir / "full").string(), part = (dir / "part").string();
  auto whole = run(common + " --set train.max_steps=24 --out " + full);
  INFO("stderr: " << whole.err);
  REQUIRE(whole.code == 0);
  auto first = run(common + " --set train.max_steps=16 --out " + part);
  INFO("stderr: " << first.err);
  REQUIRE(first.code == 0);
  auto resumed = run(common + " --set train.max_steps=24 --resume --out " + part);
  INFO("stderr: " << resumed.err);
  REQUIRE(resumed.code == 0);
  CHECK(slurp(dir / "full" / "metrics.jsonl") == slurp(dir / "part" / "metrics.jsonl"));
  int compared = 0;
  CHECK(checkpoint_difference(dir / "full" / "checkpoints" / "last.pt", dir / "part" / "checkpoints" / "last.pt",
                              compared) == 0.0);
  CHECK(compared > 10);
  // The ranks' generators differ (each draws its own dropout masks).
  torch::serialize::InputArchive archive;
  archive.load_from((dir / "part" / "checkpoints" / "last.pt").string());
  torch::Tensor rows;
  REQUIRE(archive.try_read("trainer.rank_generators", rows));
  REQUIRE(rows.size(0) == 2);
  CHECK(!torch::equal(rows[0], rows[1]));
  // Resumed mid-epoch and run to the epoch's end: batch 30 leaves an odd number of full batches
  // (471 in all, 235 per rank); the ranks stop at the uninterrupted count, not at the stream's end.
  const std::string to_end = "train configs/tests/ctr_din.json --nproc 2 --set train.checkpoints=true "
                             "--set train.epochs=1 --set train.eval_every=0 --set train.threads=1 "
                             "--set train.batch_size=30 --set model.dropout=0.3";
  auto whole_epoch = run(to_end + " --out " + (dir / "epoch_full").string());
  REQUIRE(whole_epoch.code == 0);
  auto stopped = run(to_end + " --set train.max_steps=100 --out " + (dir / "epoch_part").string());
  REQUIRE(stopped.code == 0);
  auto finished = run(to_end + " --set train.max_steps=0 --resume --out " + (dir / "epoch_part").string());
  INFO("stderr: " << finished.err);
  REQUIRE(finished.code == 0);
  auto steps_of = [&](const char* name) {
    return recsys::config::Json::parse(slurp(dir / name / "results.json"))["steps"].get<int64_t>();
  };
  CHECK(steps_of("epoch_full") == 235);
  CHECK(steps_of("epoch_part") == 235);
  int compared_epoch = 0;
  CHECK(checkpoint_difference(dir / "epoch_full" / "checkpoints" / "last.pt",
                              dir / "epoch_part" / "checkpoints" / "last.pt", compared_epoch) == 0.0);

  // Another world size cannot continue it.
  auto other = run("train configs/tests/ctr_din.json --nproc 3 --set train.checkpoints=true --set train.epochs=1 "
                   "--set train.eval_every=8 --set train.threads=1 --set train.batch_size=32 --set model.dropout=0.3 "
                   "--set train.max_steps=32 --resume --out " + part);
  CHECK(other.code == 2);
}

TEST_CASE("cli: a run directory held by a running process is refused", "[cli]") {
  if (!have_binary()) return;
  auto dir = recsys::testing::temp_dir("cli_lock");
  const std::string out = (dir / "run").string();
  // A long run in the background holds the directory; a second run into it exits 2 at once and
  // leaves the first one's files alone.
  const std::string first = std::string(kBinary) + " train configs/tests/twotower_tiny.json --set train.epochs=100000 --set train.early_stopping.patience=0 "
                            "--set train.progress=none --out " + out + " >/dev/null 2>&1 & echo $!";
  FILE* p = ::popen(first.c_str(), "r");
  REQUIRE(p != nullptr);
  long pid = 0;
  REQUIRE(std::fscanf(p, "%ld", &pid) == 1);
  ::pclose(p);
  for (int i = 0; i < 200 && !fs::exists(dir / "run" / "config.json"); ++i) ::usleep(50000);
  auto second = run("train configs/tests/twotower_tiny.json --set train.epochs=1 --overwrite --out " + out);
  ::kill(static_cast<pid_t>(pid), SIGTERM);
  // Not this process's child (the shell started it): wait until it is gone.
  for (int i = 0; i < 200 && ::kill(static_cast<pid_t>(pid), 0) == 0; ++i) ::usleep(50000);
  INFO("stderr: " << second.err);
  CHECK(second.code == 2);
  CHECK(second.err.find("in use by another recsys process") != std::string::npos);
  // Once the holder has ended, the directory can be taken again.
  auto third = run("train configs/tests/twotower_tiny.json --set train.epochs=1 --overwrite --out " + out);
  INFO("stderr: " << third.err);
  CHECK(third.code == 0);
}

TEST_CASE("cli: --overwrite keeps the old run until the new one has saved something", "[cli]") {
  if (!have_binary()) return;
  auto dir = recsys::testing::temp_dir("cli_overwrite");
  const std::string out = (dir / "run").string();
  const auto run_dir = dir / "run";
  auto slurp = [](const fs::path& f) {
    std::ifstream in(f, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const std::string train = "train configs/tests/twotower_tiny.json --set train.epochs=1 --set train.progress=none ";
  auto first = run(train + "--set train.checkpoints=true --out " + out);
  REQUIRE(first.code == 0);
  const auto results = slurp(run_dir / "results.json"), config = slurp(run_dir / "config.json");
  const auto best = slurp(run_dir / "checkpoints" / "best.pt");
  REQUIRE(!best.empty());
  auto unchanged = [&] {
    CHECK(slurp(run_dir / "results.json") == results);
    CHECK(slurp(run_dir / "config.json") == config);
    CHECK(slurp(run_dir / "checkpoints" / "best.pt") == best);
    CHECK(fs::exists(run_dir / "metrics.jsonl"));
    CHECK_FALSE(fs::exists(run_dir / ".replaced"));
  };
  // A new run that fails on its data before saving anything (a split that leaves validation
  // empty, found while the task is built): exit 2, the old run is back whole.
  auto bad = run(train + "--set data.split.min_positives=1000 --overwrite --out " + out);
  INFO("stderr: " << bad.err);
  CHECK(bad.code == 2);
  unchanged();
  // An overwrite killed after setting the old run aside (the state it leaves): the next command
  // in the directory gives it back, and refuses to overwrite nothing by accident.
  fs::create_directories(run_dir / ".replaced");
  for (const char* f : {"config.json", "log.txt", "metrics.jsonl", "results.json", "checkpoints"})
    fs::rename(run_dir / f, run_dir / ".replaced" / f);
  auto again = run(train + "--out " + out);
  CHECK(again.code == 2);  // the directory holds the old run again: neither --resume nor --overwrite
  CHECK(again.err.find("already holds a run") != std::string::npos);
  unchanged();
  // A new run that succeeds replaces the old one; nothing is left aside.
  auto good = run(train + "--set train.checkpoints=true --set seed=5 --overwrite --out " + out);
  CHECK(good.code == 0);
  CHECK(slurp(run_dir / "config.json") != config);
  CHECK(fs::exists(run_dir / "results.json"));
  CHECK_FALSE(fs::exists(run_dir / ".replaced"));
}

TEST_CASE("cli: a data-parallel rank 0 started by hand takes the run directory's lock", "[cli][dist]") {
  if (!have_binary()) return;
  // Ranks started with RECSYS_RANK / RECSYS_WORLD_SIZE / RECSYS_STORE set by hand (no launcher
  // holding the directory for them): rank 0 locks the run directory itself.
  auto ranks = [&](const fs::path& dir) {
    std::string cmd;
    for (int rank : {1, 0}) {
      const std::string tag = std::to_string(rank);
      cmd += "(RECSYS_WORLD_SIZE=2 RECSYS_RANK=" + tag + " RECSYS_STORE=" + (dir / "store").string() + " " +
             kBinary + " train configs/tests/twotower_tiny.json --set train.max_steps=4 --set train.threads=1 "
             "--set train.progress=none --set train.collective_timeout_s=20 --out " + (dir / "run").string() +
             " >" + (dir / ("r" + tag + ".err")).string() + " 2>&1; echo $? >" + (dir / ("r" + tag + ".code")).string() +
             ")" + (rank == 1 ? " & " : "; wait");
    }
    REQUIRE(std::system(cmd.c_str()) == 0);
    return std::make_pair(std::stoi(slurp(dir / "r0.code")), std::stoi(slurp(dir / "r1.code")));
  };
  auto free_dir = recsys::testing::temp_dir("cli_hand_ranks");
  auto [ok0, ok1] = ranks(free_dir);
  INFO("rank 0: " << slurp(free_dir / "r0.err") << "\nrank 1: " << slurp(free_dir / "r1.err"));
  CHECK(ok0 == 0);
  CHECK(ok1 == 0);
  CHECK(fs::exists(free_dir / "run" / "results.json"));

  auto held_dir = recsys::testing::temp_dir("cli_hand_ranks_held");
  fs::create_directories(held_dir / "run");
  const recsys::train::DirectoryLock held(held_dir / "run");  // another process's run
  auto [busy0, busy1] = ranks(held_dir);
  INFO("rank 0: " << slurp(held_dir / "r0.err"));
  CHECK(busy0 == 2);
  CHECK(slurp(held_dir / "r0.err").find("in use by another recsys process") != std::string::npos);
  CHECK(busy1 != 0);  // its rank 0 is gone
  CHECK_FALSE(fs::exists(held_dir / "run" / "config.json"));
}

TEST_CASE("cli: a run stopped between a validation's two checkpoint renames resumes exactly", "[cli][resume]") {
  if (!have_binary()) return;
  auto dir = recsys::testing::temp_dir("cli_resume_renames");
  const std::string common = "train configs/tests/twotower_tiny.json --set train.checkpoints=true --set train.epochs=1 "
                             "--set train.eval_every=8 --set train.early_stopping.patience=0 --set train.threads=1 "
                             "--set train.optimizer.lr=0.01";  // improving at every validation
  const std::string full = (dir / "full").string(), part = (dir / "part").string();
  auto whole = run(common + " --set train.max_steps=24 --out " + full);
  INFO("stderr: " << whole.err);
  REQUIRE(whole.code == 0);
  auto first = run(common + " --set train.max_steps=16 --out " + part);
  REQUIRE(first.code == 0);
  // The validation at step 24 improved, so it wrote best.pt and then last.pt. The crash comes
  // between the two: best.pt is step 24's, last.pt still step 16's.
  auto metrics = recsys::config::Json::parse(slurp(dir / "full" / "results.json"));
  REQUIRE(metrics["best_step"] == 24);
  fs::copy_file(dir / "full" / "checkpoints" / "best.pt", dir / "part" / "checkpoints" / "best.pt",
                fs::copy_options::overwrite_existing);
  auto resumed = run(common + " --set train.max_steps=24 --resume --out " + part);
  INFO("stderr: " << resumed.err);
  REQUIRE(resumed.code == 0);
  CHECK(resumed.err.find("snapshot is dropped") != std::string::npos);
  CHECK(slurp(dir / "full" / "metrics.jsonl") == slurp(dir / "part" / "metrics.jsonl"));
  CHECK(recsys::config::Json::parse(slurp(dir / "part" / "results.json"))["metrics"] == metrics["metrics"]);
  CHECK(slurp(dir / "full" / "checkpoints" / "last.pt") == slurp(dir / "part" / "checkpoints" / "last.pt"));
  CHECK(slurp(dir / "full" / "checkpoints" / "best.pt") == slurp(dir / "part" / "checkpoints" / "best.pt"));
}

TEST_CASE("cli: --resume refuses a checkpoint whose optimizer state was damaged", "[cli][resume]") {
  if (!have_binary()) return;
  auto dir = recsys::testing::temp_dir("cli_resume_damaged");
  const std::string out = (dir / "run").string();
  const std::string cmd = "train configs/tests/twotower_tiny.json --set train.checkpoints=true --out " + out;
  REQUIRE(run(cmd + " --set train.epochs=1").code == 0);
  const auto last = dir / "run" / "checkpoints" / "last.pt";
  // The middle of the largest Adam moment, found in the file, one byte changed.
  torch::Tensor largest;
  {
    torch::serialize::InputArchive archive;
    archive.load_from(last.string());
    for (const auto& key : archive.keys()) {
      torch::Tensor t;
      if (key.rfind("optimizer.s1.", 0) == 0 && archive.try_read(key, t) && (!largest.defined() || t.numel() > largest.numel()))
        largest = t.contiguous();
    }
  }
  REQUIRE(largest.defined());
  auto bytes = slurp(last);
  const std::string pattern(static_cast<const char*>(largest.data_ptr()) + largest.nbytes() / 2, 32);
  const auto at = bytes.find(pattern);
  REQUIRE(at != std::string::npos);
  bytes[at + 3] = static_cast<char>(bytes[at + 3] ^ 0x08);
  std::ofstream(last, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  auto resumed = run(cmd + " --set train.epochs=2 --resume");
  INFO("stderr: " << resumed.err);
  CHECK(resumed.code == 2);
  CHECK(resumed.err.find("optimizer state does not match") != std::string::npos);
}

TEST_CASE("cli: eval and export read a trained run from its checkpoint", "[cli][saved_run]") {
  if (!have_binary()) return;
  auto dir = recsys::testing::temp_dir("cli_eval");
  const std::string run_dir = (dir / "run").string();
  auto trained = run("train configs/tests/twotower_tiny.json --set train.epochs=1 --set train.checkpoints=true --out " +
                     run_dir);
  INFO("stderr: " << trained.err);
  REQUIRE(trained.code == 0);
  auto results = recsys::config::Json::parse(slurp(dir / "run" / "results.json"));

  auto evaluated = run("eval " + run_dir + " --json --out " + (dir / "eval.json").string());
  INFO("stderr: " << evaluated.err);
  REQUIRE(evaluated.code == 0);
  auto printed = recsys::config::Json::parse(evaluated.out);
  CHECK(printed["metrics"] == results["metrics"]);
  CHECK(printed["split"] == "test");
  CHECK(printed["step"] == results["best_step"]);
  CHECK(recsys::config::Json::parse(slurp(dir / "eval.json")) == printed);

  auto exported = run("export " + run_dir + " --what recommendations --k 3");
  INFO("stderr: " << exported.err);
  REQUIRE(exported.code == 0);
  const auto file = dir / "run" / "exports" / "recommendations-test-best-k3.tsv";
  REQUIRE(fs::exists(file));
  std::ifstream in(file);
  int64_t lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  CHECK(lines == 1 + 3 * static_cast<int64_t>(printed["metrics"]["users"].get<double>()));

  auto unknown = run("export " + run_dir + " --what predictions");
  CHECK(unknown.code == 2);
  CHECK(unknown.err.find("item_embeddings, user_embeddings, recommendations") != std::string::npos);
  auto not_a_run = run("eval " + (dir / "missing").string());
  CHECK(not_a_run.code == 2);
  auto model_change = run("eval " + run_dir + " --set model.embedding_dim=4");
  CHECK(model_change.code == 2);
  CHECK(model_change.err.find("model.embedding_dim") != std::string::npos);

  // Nothing the run saved can be replaced by an output.
  const auto saved_results = slurp(dir / "run" / "results.json");
  const auto saved_best = slurp(dir / "run" / "checkpoints" / "best.pt");
  CHECK(run("eval " + run_dir + " --out " + run_dir + "/results.json").code == 2);
  CHECK(run("export " + run_dir + " --what item_embeddings --out " + run_dir + "/checkpoints/best.pt").code == 2);
  CHECK(run("export " + run_dir + "/checkpoints/last.pt --what item_embeddings --out " + run_dir +
            "/checkpoints/last.pt").code == 2);
  CHECK(slurp(dir / "run" / "results.json") == saved_results);
  CHECK(slurp(dir / "run" / "checkpoints" / "best.pt") == saved_best);
  // A checkpoint file inside a run exports into that run's exports/.
  auto from_file = run("export " + run_dir + "/checkpoints/last.pt --what item_embeddings --format npy");
  INFO("stderr: " << from_file.err);
  CHECK(from_file.code == 0);
  CHECK(fs::exists(dir / "run" / "exports" / "item_embeddings-last.npy"));
  CHECK(fs::exists(dir / "run" / "exports" / "item_embeddings-last.keys.tsv"));

  // A run trained without a test split says how to evaluate it.
  auto no_test = run("train configs/tests/ctr_din.json --set train.epochs=1 --set train.checkpoints=true "
                     "--set train.evaluate_test=false --set data.split=fraction --set data.test_fraction=0 --out " +
                     (dir / "no_test").string());
  INFO("stderr: " << no_test.err);
  REQUIRE(no_test.code == 0);
  auto eval_test = run("eval " + (dir / "no_test").string());
  CHECK(eval_test.code == 2);
  CHECK(eval_test.err.find("--split valid") != std::string::npos);
  CHECK(run("eval " + (dir / "no_test").string() + " --split valid").code == 0);
}

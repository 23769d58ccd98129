#include "framework/train/trainer.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include <unistd.h>

#include "framework/util/checksum.h"
#include "framework/util/errors.h"

namespace recsys::train {

TrainerOptions TrainerOptions::from_config(const config::Reader& r) {
  TrainerOptions o;
  o.epochs = r.get<int64_t>("epochs", o.epochs);
  o.max_steps = r.get<int64_t>("max_steps", o.max_steps);
  o.batch_size = r.get<int64_t>("batch_size", o.batch_size);
  o.optimizer = OptimizerOptions::from_config(r.child("optimizer"));
  o.eval_every = r.get<int64_t>("eval_every", o.eval_every);
  auto es = r.child("early_stopping");
  o.early_stopping.metric = es.get<std::string>("metric", "");
  o.early_stopping.maximize = es.choice("mode", "max", {"max", "min"}) == "max";
  // Without a metric the task's default selection metric and its own direction are used; a mode
  // given alone would be dropped silently.
  if (o.early_stopping.metric.empty() && es.has("mode"))
    es.fail("mode", "set early_stopping.metric too (the task's default metric comes with its own mode)");
  o.early_stopping.patience = es.get<int64_t>("patience", o.early_stopping.patience);
  o.checkpoints = r.get<bool>("checkpoints", o.checkpoints);
  o.log_every = r.get<int64_t>("log_every", o.log_every);
  o.prefetch = r.get<int64_t>("prefetch", o.prefetch);
  o.device = r.get<std::string>("device", o.device);
  o.threads = r.get<int64_t>("threads", o.threads);
  o.progress = r.choice("progress", o.progress, {"auto", "bar", "lines", "none"});
  o.evaluate_test = r.get<bool>("evaluate_test", o.evaluate_test);
  o.collective_timeout_s = r.get<double>("collective_timeout_s", o.collective_timeout_s);
  if (o.epochs < 1) r.fail("epochs", "must be at least 1");
  if (o.max_steps < 0) r.fail("max_steps", "must be >= 0 (0 = no limit)");
  if (o.batch_size < 2) r.fail("batch_size", "must be at least 2 (in-batch negatives need company)");
  if (o.eval_every < 0) r.fail("eval_every", "must be >= 0 (0 = every epoch)");
  if (o.early_stopping.patience < 0) r.fail("early_stopping.patience", "must be >= 0");
  if (o.log_every < 1) r.fail("log_every", "must be at least 1");
  if (o.prefetch < 0 || o.prefetch > 1024) r.fail("prefetch", "must be between 0 (inline) and 1024 batches");
  if (o.threads < 1 || o.threads > 4096) r.fail("threads", "must be between 1 and 4096");
  if (!(o.collective_timeout_s >= 1 && o.collective_timeout_s <= 7 * 86400))
    r.fail("collective_timeout_s", "must be between 1 and 604800 seconds (7 days)");
  const bool cuda_index = o.device.size() > 5 && o.device.rfind("cuda:", 0) == 0 &&
                          o.device.size() <= 8 &&
                          std::all_of(o.device.begin() + 5, o.device.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (o.device != "auto" && o.device != "cpu" && o.device != "cuda" && !cuda_index)
    r.fail("device", "'" + o.device + "' must be auto, cpu, cuda or cuda:N");
  return o;
}

torch::Device resolve_device(const std::string& name) {
  if (name == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  if (name.rfind("cuda", 0) == 0 && !torch::cuda::is_available())
    throw ConfigError("train.device", "'" + name + "' requested but this LibTorch build sees no CUDA device");
  torch::Device device(name);
  if (device.is_cuda() && device.has_index() && device.index() >= static_cast<int>(torch::cuda::device_count()))
    throw ConfigError("train.device", "'" + name + "': this machine has " +
                                          std::to_string(torch::cuda::device_count()) + " CUDA device(s)");
  return device;
}

namespace {

bool stderr_is_terminal() { return ::isatty(2) != 0; }

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int s = static_cast<int>(seconds);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%d:%02d", s / 60, s % 60);
  return buf;
}

/// A progress bar on a terminal, plain log lines otherwise.
class ProgressHook : public Hook {
 public:
  explicit ProgressHook(bool bar) : bar_(bar) {}
  void on_train_begin(Trainer& t) override {
    start_ = last_ = std::chrono::steady_clock::now();
    const auto& o = t.options();
    total_steps_ = t.steps_per_epoch() * o.epochs;
    if (o.max_steps > 0) total_steps_ = std::min(total_steps_, o.max_steps);
  }
  void on_step_end(Trainer& t) override {
    auto& s = t.state();
    if (s.step % t.options().log_every != 0) return;
    auto now = std::chrono::steady_clock::now();
    double elapsed = std::chrono::duration<double>(now - start_).count();
    double rate = s.examples / std::max(elapsed, 1e-9);
    double eta = elapsed / s.step * (total_steps_ - s.step);
    if (bar_) {
      int width = 30;
      int filled = total_steps_ > 0 ? static_cast<int>(width * s.step / total_steps_) : 0;
      std::string b(static_cast<size_t>(std::min(filled, width)), '#');
      b.resize(static_cast<size_t>(width), '.');
      std::fprintf(stderr, "\r[%s] step %lld/%lld epoch %lld loss %.4f %.0f ex/s ETA %s   ", b.c_str(),
                   static_cast<long long>(s.step), static_cast<long long>(total_steps_),
                   static_cast<long long>(s.epoch + 1), s.last_loss, rate, format_duration(eta).c_str());
      std::fflush(stderr);
    } else {
      std::string parts;
      for (auto& [k, v] : s.last_parts) parts += fmt::format(" {}={:.4f}", k, v);
      spdlog::info("step {}/{} epoch {} loss {:.4f}{} {:.0f} ex/s ETA {}", s.step, total_steps_,
                   s.epoch + 1, s.last_loss, parts, rate, format_duration(eta));
    }
  }
  void on_epoch_end(Trainer&) override {
    if (bar_) std::fprintf(stderr, "\n");
  }

 private:
  bool bar_;
  int64_t total_steps_ = 0;
  std::chrono::steady_clock::time_point start_, last_;
};

class EvalHook : public Hook {
 public:
  void on_step_end(Trainer& t) override {
    if (t.options().eval_every > 0 && t.state().step % t.options().eval_every == 0) t.validate();
  }
  void on_epoch_end(Trainer& t) override {
    if (t.options().eval_every == 0) t.validate();
  }
};

}  // namespace

Trainer::Trainer(Task& task, TrainerOptions options, RunDir run_dir, nlohmann::json config,
                 uint64_t seed, dist::Context dist)
    : task_(task), options_(std::move(options)), run_dir_(std::move(run_dir)),
      config_(std::move(config)), seed_(seed), device_(resolve_device(options_.device)),
      dist_(std::move(dist)),
      gen_(at::detail::createCPUGenerator(dist_.seed_for_rank(seed ^ 0x5eedULL))) {
  if (dist_.active() && !device_.is_cpu())
    throw ConfigError("train.device", "data-parallel runs (--nproc) average gradients with Gloo on the CPU; "
                                      "set train.device=cpu");
  torch::set_num_threads(static_cast<int>(options_.threads));
  task_.set_distributed(dist_);
  task_.to(device_);
  optimizer_ = std::make_unique<Optimizer>(task_.module().parameters(), options_.optimizer);
  if (options_.early_stopping.metric.empty()) {
    auto [metric, maximize] = task_.selection_metric();
    options_.early_stopping.metric = metric;
    options_.early_stopping.maximize = maximize;
  }
  // A misspelt metric is reported now, not after the first epoch's validation.
  const auto names = task_.metric_names();
  if (!names.empty() && std::find(names.begin(), names.end(), options_.early_stopping.metric) == names.end()) {
    std::string known;
    for (auto& n : names) known += (known.empty() ? "" : ", ") + n;
    throw ConfigError("train.early_stopping.metric",
                      "metric '" + options_.early_stopping.metric + "' is not reported (known: " + known + ")");
  }
  bool bar = options_.progress == "bar" || (options_.progress == "auto" && stderr_is_terminal());
  if (options_.progress != "none" && dist_.leader()) add_hook(std::make_shared<ProgressHook>(bar));
  add_hook(std::make_shared<EvalHook>());
}

std::string Trainer::default_metric() const { return options_.early_stopping.metric; }

void Trainer::snapshot_best() {
  torch::NoGradGuard g;
  best_params_.clear();
  for (auto& p : task_.module().parameters()) best_params_.push_back(p.detach().clone());
  for (auto& b : task_.module().buffers()) best_params_.push_back(b.detach().clone());
}

void Trainer::restore_best() {
  if (best_params_.empty()) return;
  torch::NoGradGuard g;
  size_t i = 0;
  for (auto& p : task_.module().parameters()) p.copy_(best_params_[i++]);
  for (auto& b : task_.module().buffers()) b.copy_(best_params_[i++]);
}

namespace {
const char* const kDivergedAdvice = "; lower train.optimizer.lr or set train.optimizer.grad_clip";
}  // namespace

void Trainer::check_loss(const torch::Tensor& loss) {
  if (loss.device().is_cpu()) {
    const double v = loss.item<double>();
    if (!std::isfinite(v))
      throw NumericError("non-finite training loss (" + std::to_string(v) + ") at step " +
                         std::to_string(state_.step) + kDivergedAdvice);
    checked_through_ = state_.step;
    return;
  }
  auto bad = torch::logical_not(torch::isfinite(loss.detach()));
  nonfinite_ = nonfinite_.defined() ? torch::logical_or(nonfinite_, bad) : bad;
}

void Trainer::check_pending_loss() {
  if (nonfinite_.defined()) {
    const bool bad = nonfinite_.item<bool>();
    nonfinite_ = torch::Tensor();
    if (bad)
      throw NumericError("non-finite training loss at a step in " + std::to_string(checked_through_ + 1) +
                         ".." + std::to_string(state_.step) + kDivergedAdvice);
  }
  checked_through_ = state_.step;
}

namespace {

/// LibTorch's default CPU generator (shared by every module: dropout, torch::rand) read and set
/// under its lock.
torch::Tensor default_generator_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_default_generator_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

/// A checkpoint entry that must be there (an older recsys's checkpoint cannot be resumed exactly).
torch::Tensor read_entry(torch::serialize::InputArchive& a, const std::string& file, const std::string& key) {
  torch::Tensor t;
  if (!a.try_read(key, t))
    throw DataError(file, 0, "checkpoint lacks '" + key + "': written by an older recsys, it cannot be resumed exactly");
  return t;
}

/// The best state's bookkeeping and the early-stopping counters under `prefix`: "trainer." for
/// the state a checkpoint was written in, "trainer.cut." for the state before a cut's validation.
void write_bookkeeping(torch::serialize::OutputArchive& a, const std::string& prefix, const TrainerState& s) {
  a.write(prefix + "best_value", torch::tensor(s.best_value, torch::kFloat64));
  a.write(prefix + "best_step", torch::tensor(s.best_step));
  a.write(prefix + "best_epoch", torch::tensor(s.best_epoch));
  a.write(prefix + "evals_since_best", torch::tensor(s.evals_since_best));
  a.write(prefix + "early_stopped", torch::tensor(static_cast<int64_t>(s.early_stopped)));
  a.write(prefix + "best_valid", c10::IValue(nlohmann::json(s.best_valid).dump()));
}

void read_bookkeeping(torch::serialize::InputArchive& a, const std::string& file, const std::string& prefix,
                      TrainerState& s) {
  s.best_value = read_entry(a, file, prefix + "best_value").item<double>();
  s.best_step = read_entry(a, file, prefix + "best_step").item<int64_t>();
  s.best_epoch = read_entry(a, file, prefix + "best_epoch").item<int64_t>();
  s.evals_since_best = read_entry(a, file, prefix + "evals_since_best").item<int64_t>();
  s.early_stopped = read_entry(a, file, prefix + "early_stopped").item<int64_t>() != 0;
  c10::IValue best_valid;
  if (!a.try_read(prefix + "best_valid", best_valid))
    throw DataError(file, 0, "checkpoint lacks '" + prefix + "best_valid'");
  s.best_valid = nlohmann::json::parse(best_valid.toStringRef()).get<Metrics>();
}

/// This process's forward and default CPU generator states, as one row of int32 (Gloo gathers
/// them; a byte per entry).
torch::Tensor generator_row(const torch::Generator& forward) {
  auto def = default_generator_state();
  auto fwd = forward.get_state();
  return torch::cat({torch::tensor({fwd.numel(), def.numel()}, torch::kInt32), fwd.to(torch::kInt32),
                     def.to(torch::kInt32)});
}

}  // namespace

void Trainer::check_parameters() const {
  torch::NoGradGuard no_grad;
  for (const auto& item : task_.module().named_parameters()) {
    if (!torch::isfinite(item.value()).all().item<bool>())
      throw NumericError("parameter " + item.key() + " holds NaN or infinite values after step " +
                         std::to_string(state_.step) + " (the model diverged)" + kDivergedAdvice);
  }
}

void Trainer::validate() {
  check_pending_loss();
  // Every rank holds the same parameters, so every rank stops alike.
  check_parameters();
  auto& s = state_;
  // Once per step: a run resumed from a checkpoint written at an epoch's last step would
  // otherwise validate that step again at the epoch's end.
  if (s.step == last_validated_step_) return;
  last_validated_step_ = s.step;
  // Every rank's generators travel to rank 0's checkpoints: a resumed data-parallel run restores
  // each rank's own (their streams differ by rank).
  if (dist_.active() && options_.checkpoints)
    rank_generators_ = dist_.all_gather_rows(generator_row(gen_).unsqueeze(0));
  if (!dist_.leader()) {  // rank 0 validates; the others learn whether it stopped the run
    s.stop = dist_.broadcast_flag(false);
    s.early_stopped = s.stop;
    return;
  }
  // Eval at the end of an epoch that max_steps cut short: what the run had before it is kept for
  // a resumed run (see cut_validation_).
  cut_validation_ = options_.eval_every == 0 && epoch_cut_short_ && !fallback_validation_;
  if (cut_validation_) before_cut_ = s;
  Metrics m = task_.evaluate("valid");
  task_.module().train();
  nlohmann::json rec = {{"step", s.step}, {"epoch", s.epoch + 1}, {"split", "valid"},
                        {"metrics", m}, {"train_loss", s.last_loss}};
  run_dir_.append_metrics(rec);
  const auto& es = options_.early_stopping;
  auto it = m.find(es.metric);
  if (it == m.end()) {
    std::string known;
    for (auto& [k, v] : m) known += (known.empty() ? "" : ", ") + k;
    throw ConfigError("train.early_stopping.metric",
                      "metric '" + es.metric + "' is not reported (known: " + known + ")");
  }
  double v = it->second;
  bool better = s.best_step < 0 || (es.maximize ? v > s.best_value : v < s.best_value);
  std::string shown;
  for (auto& [k, val] : m)
    if (k.find('/') == std::string::npos) shown += fmt::format(" {}={:.4f}", k, val);
  spdlog::info("valid @ step {} (epoch {}):{}{}", s.step, s.epoch + 1, shown, better ? " *" : "");
  if (better) {
    s.best_value = v;
    s.best_step = s.step;
    s.best_epoch = s.epoch + 1;
    s.best_valid = m;
    s.evals_since_best = 0;
    snapshot_best();
    if (options_.checkpoints && run_dir_.enabled()) {
      // The best.pt before a cut's validation is what a resumed run goes back to.
      const auto best = run_dir_.checkpoints() / "best.pt";
      if (cut_validation_ && std::filesystem::exists(best))
        std::filesystem::rename(best, run_dir_.checkpoints() / "best_before_cut.pt");
      save_checkpoint("best.pt");
    }
  } else if (++s.evals_since_best >= es.patience && es.patience > 0) {
    spdlog::info("early stopping: {} did not improve for {} evaluations", es.metric, es.patience);
    s.stop = true;
    s.early_stopped = true;
  }
  if (options_.checkpoints && run_dir_.enabled()) save_checkpoint("last.pt");
  cut_validation_ = false;
  dist_.broadcast_flag(s.stop);
}

void Trainer::save_checkpoint(const std::string& name) const {
  torch::serialize::OutputArchive archive;
  task_.module().save(archive);
  optimizer_->save(archive);
  const auto& s = state_;
  archive.write("trainer.model_checksum", torch::tensor(static_cast<int64_t>(module_checksum(task_.module()))));
  archive.write("trainer.optimizer_checksum", torch::tensor(static_cast<int64_t>(optimizer_->checksum())));
  archive.write("trainer.step", torch::tensor(s.step));
  archive.write("trainer.epoch", torch::tensor(s.epoch));
  archive.write("trainer.examples", torch::tensor(s.examples));
  // Data parallel: rank 0 writes while the other ranks' batches of its global step lie after its
  // own in the stream; the position is the whole global step (a multiple of the world size), so
  // that no rank trains one of them again after a resume.
  const int64_t world = dist_.world();
  archive.write("trainer.epoch_batches", torch::tensor((s.epoch_batches + world - 1) / world * world));
  archive.write("trainer.epoch_complete", torch::tensor(static_cast<int64_t>(s.epoch_complete)));
  archive.write("trainer.world_size", torch::tensor(static_cast<int64_t>(dist_.world())));
  archive.write("trainer.fallback", torch::tensor(static_cast<int64_t>(fallback_validation_)));
  archive.write("trainer.cut", torch::tensor(static_cast<int64_t>(cut_validation_)));
  // The loss of the last logged step: the next validation record reports it, resumed or not.
  archive.write("trainer.last_loss", torch::tensor(s.last_loss, torch::kFloat64));
  if (cut_validation_) write_bookkeeping(archive, "trainer.cut.", before_cut_);
  write_bookkeeping(archive, "trainer.", s);
  // The generators: the forward pass's own, and LibTorch's default one (initialisation is over,
  // but dropout and any torch::rand in a forward pass draw from it).
  archive.write("trainer.gen_state", gen_.get_state());
  archive.write("trainer.default_gen_state", default_generator_state());
  if (rank_generators_.defined()) archive.write("trainer.rank_generators", rank_generators_);
  if (device_.is_cuda()) {  // dropout masks on the device draw from its own generator
    auto device_gen = at::globalContext().defaultGenerator(device_);
    std::lock_guard<std::mutex> lock(device_gen.mutex());
    archive.write("trainer.device_gen_state", device_gen.get_state());
  }
  archive.write("config", c10::IValue(config_.dump()));
  // Serialised into memory, then written by write_atomic (a temporary beside it, renamed): a
  // write that fails (a full disk) throws here with the file named, leaves no partial file and
  // the previous checkpoint intact. (LibTorch's own file writer aborts the process when a write
  // fails: its destructor throws again.)
  std::string bytes;
  archive.save_to([&bytes](const void* data, size_t n) {
    bytes.append(static_cast<const char*>(data), n);
    return n;
  });
  auto path = run_dir_.checkpoints() / name;
  try {
    write_atomic(path, bytes);
  } catch (const std::exception& e) {
    throw DataError(path.string(), 0, std::string("cannot write the checkpoint: ") + e.what());
  }
}

namespace {

/// Module::save's layout: a module's own parameters and buffers by name, each child module in a
/// nested archive under its name. Read into the existing tensors, each shape checked first.
void load_into(torch::nn::Module& module, torch::serialize::InputArchive& archive, const std::string& file,
               const std::string& prefix) {
  torch::NoGradGuard no_grad;
  auto load = [&](const std::string& name, torch::Tensor& target) {
    torch::Tensor t;
    if (!archive.try_read(name, t))
      throw DataError(file, 0, "checkpoint lacks '" + prefix + name + "': it was written for another model");
    if (t.sizes() != target.sizes())
      throw DataError(file, 0, "checkpoint tensor '" + prefix + name + "' has shape " + c10::str(t.sizes()) +
                                   ", the model's has " + c10::str(target.sizes()));
    target.copy_(t);
  };
  for (auto& item : module.named_parameters(/*recurse=*/false)) load(item.key(), item.value());
  for (auto& item : module.named_buffers(/*recurse=*/false)) load(item.key(), item.value());
  for (auto& child : module.named_children()) {
    torch::serialize::InputArchive nested;
    if (!archive.try_read(child.key(), nested))
      throw DataError(file, 0, "checkpoint lacks module '" + prefix + child.key() + "': it was written for another model");
    load_into(*child.value(), nested, file, prefix + child.key() + ".");
  }
}

/// Compares a checksum stored under `key` (absent in checkpoints written before checksums) with
/// the loaded state's.
void check_stored_checksum(torch::serialize::InputArchive& archive, const std::string& key, uint64_t loaded,
                           const std::string& file, const std::string& what) {
  torch::Tensor stored;
  if (archive.try_read(key, stored) && static_cast<uint64_t>(stored.item<int64_t>()) != loaded)
    throw DataError(file, 0, what + " does not match the checksum stored with it: the file is damaged");
}

}  // namespace

uint64_t module_checksum(torch::nn::Module& module) {
  util::Checksum sum;
  for (const auto& p : module.named_parameters()) sum.add(p.key(), p.value());
  for (const auto& b : module.named_buffers()) sum.add(b.key(), b.value());
  return sum.value();
}

void load_module_state(torch::nn::Module& module, torch::serialize::InputArchive& archive,
                       const std::string& file) {
  load_into(module, archive, file, "");
  check_stored_checksum(archive, "trainer.model_checksum", module_checksum(module), file, "the model's tensors");
}

void open_checkpoint(torch::serialize::InputArchive& archive, const std::filesystem::path& file,
                     torch::Device device) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec))
    throw DataError(file.string(), 0, std::filesystem::exists(file, ec) ? "not a checkpoint file" : "no such checkpoint");
  try {
    archive.load_from(file.string(), device);
  } catch (const c10::Error& e) {
    throw DataError(file.string(), 0, std::string("not a readable checkpoint (truncated or another format): ") +
                                          e.what_without_backtrace());
  }
}

void Trainer::resume(const std::filesystem::path& from) {
  namespace fs = std::filesystem;
  const fs::path dir = from.empty() ? run_dir_.dir() : from;
  const auto last = dir / "checkpoints" / "last.pt";
  const auto best = dir / "checkpoints" / "best.pt";
  if (dir.empty() || !fs::exists(last))
    throw DataError(last.string(), 0, "no checkpoint to resume from (runs write it at each validation)");
  auto& s = state_;
  const std::string file = last.string();
  // last.pt read once: first its cut flag (before best.pt is touched), then the rest.
  torch::serialize::InputArchive archive;
  open_checkpoint(archive, last, device_);
  // last.pt written by the validation at the end of an epoch that max_steps cut short: a run
  // that goes on past that step would not have made that validation, so it goes back to the
  // bookkeeping and the best.pt from before it (kept as best_before_cut.pt when it replaced one).
  // A run resumed at the same limit keeps it (it ends where the cut run ended).
  bool undo_cut = false;
  torch::Tensor cut;
  if (archive.try_read("trainer.cut", cut) && cut.item<int64_t>() != 0) {
    const int64_t at = read_entry(archive, file, "trainer.step").item<int64_t>();
    undo_cut = options_.max_steps == 0 || options_.max_steps > at;
    if (undo_cut && dist_.leader()) {  // rank 0 owns the run directory's files
      const auto kept = dir / "checkpoints" / "best_before_cut.pt";
      if (fs::exists(kept))
        fs::rename(kept, best);
      else if (read_entry(archive, file, "trainer.cut.best_step").item<int64_t>() < 0)
        fs::remove(best);  // the cut's validation made the run's first best state
    }
  }
  // The best state first (kept in memory for the end of training), then the last one.
  int64_t best_file_step = -1;
  if (fs::exists(best)) {
    torch::serialize::InputArchive best_archive;
    open_checkpoint(best_archive, best, device_);
    load_module_state(task_.module(), best_archive, best.string());
    snapshot_best();
    best_file_step = read_entry(best_archive, best.string(), "trainer.step").item<int64_t>();
  }
  load_module_state(task_.module(), archive, last.string());
  try {
    optimizer_->load(archive);
  } catch (const c10::Error& e) {
    throw DataError(last.string(), 0, e.what_without_backtrace());
  }
  check_stored_checksum(archive, "trainer.optimizer_checksum", optimizer_->checksum(), last.string(),
                        "the optimizer state");
  s.step = read_entry(archive, file, "trainer.step").item<int64_t>();
  s.epoch = read_entry(archive, file, "trainer.epoch").item<int64_t>();
  s.examples = read_entry(archive, file, "trainer.examples").item<int64_t>();
  s.epoch_batches = read_entry(archive, file, "trainer.epoch_batches").item<int64_t>();
  s.epoch_complete = read_entry(archive, file, "trainer.epoch_complete").item<int64_t>() != 0;
  // The bookkeeping of the state it was written in, or, undoing a cut's validation, of the
  // state before it.
  read_bookkeeping(archive, file, undo_cut ? "trainer.cut." : "trainer.", s);
  torch::Tensor last_loss;
  if (archive.try_read("trainer.last_loss", last_loss)) s.last_loss = last_loss.item<double>();
  if (undo_cut) {
    if (s.best_step < 0) best_params_.clear();
    forget_valid_at_ = s.step;
  }
  gen_.set_state(read_entry(archive, file, "trainer.gen_state"));
  set_default_generator_state(read_entry(archive, file, "trainer.default_gen_state"));
  if (device_.is_cuda()) {
    torch::Tensor state;
    if (archive.try_read("trainer.device_gen_state", state)) {
      auto device_gen = at::globalContext().defaultGenerator(device_);
      std::lock_guard<std::mutex> lock(device_gen.mutex());
      device_gen.set_state(state);
    }
  }
  const int64_t world = read_entry(archive, file, "trainer.world_size").item<int64_t>();
  if (world != dist_.world())
    throw DataError(file, 0, "written by a run of " + std::to_string(world) + " data-parallel ranks; it resumes only "
                             "with as many (its position in the epoch counts their batches)");
  if (dist_.active()) {
    // The other ranks' own generators, gathered at the validation that wrote the checkpoint (rank
    // 0's are the plain keys above, written after its evaluation).
    torch::Tensor all;
    if (!archive.try_read("trainer.rank_generators", all) || all.dim() != 2 || all.size(0) != world)
      throw DataError(file, 0, "checkpoint lacks every rank's generators ('trainer.rank_generators'): it cannot be "
                               "resumed exactly");
    auto row = all[dist_.rank()];
    const int64_t nf = row[0].item<int64_t>(), nd = row[1].item<int64_t>();
    if (nf < 0 || nd < 0 || 2 + nf + nd > row.numel())
      throw DataError(file, 0, "checkpoint's 'trainer.rank_generators' is malformed");
    if (!dist_.leader()) {
      gen_.set_state(row.narrow(0, 2, nf).to(torch::kUInt8));
      set_default_generator_state(row.narrow(0, 2 + nf, nd).to(torch::kUInt8));
    }
  }
  if (s.best_step >= 0 && !fs::exists(best) && options_.checkpoints)
    throw DataError(best.string(), 0, "missing: the run's best state cannot be restored at its end");
  if (best_file_step >= 0 && best_file_step != s.best_step) {
    // Interrupted between the two renames of one validation: best.pt is already that
    // validation's, last.pt still the one before. The resumed run replays up to that validation
    // and writes both again; until then the snapshot would not match the bookkeeping.
    spdlog::warn("{} is from step {} but {} names step {} as the best: the snapshot is dropped until "
                 "the next validation", best.string(), best_file_step, last.string(), s.best_step);
    best_params_.clear();
  }
  s.stop = s.early_stopped;
  checked_through_ = s.step;
  last_validated_step_ = s.step;  // last.pt is written by a validation
  // Written by the validation a run makes at its end when none came before (eval_every beyond
  // its steps): a longer run would not have made it, so the resumed one forgets it and
  // validates at its own end.
  torch::Tensor fallback;
  if (archive.try_read("trainer.fallback", fallback) && fallback.item<int64_t>() != 0) {
    s.best_step = s.best_epoch = -1;
    s.best_value = 0;
    s.best_valid.clear();
    s.evals_since_best = 0;
    best_params_.clear();
    last_validated_step_ = -1;
    forget_from_step_ = s.step;
  }
  resumed_ = true;
  spdlog::info("resuming {} at step {} (epoch {}, {} batches into it{})", run_dir_.dir().string(), s.step,
               s.epoch + 1, s.epoch_batches, s.early_stopped ? "; early stopping had ended it" : "");
}

nlohmann::json Trainer::fit() {
  auto& s = state_;
  run_dir_.write_config(config_);
  if (resumed_)  // records written after the checkpoint are redone
    run_dir_.truncate_metrics(forget_from_step_ >= 0 ? forget_from_step_ - 1 : s.step, forget_valid_at_);
  else
    run_dir_.reset_metrics();
  task_.module().train();
  for (auto& h : hooks_) h->on_train_begin(*this);
  auto start = std::chrono::steady_clock::now();
  const int64_t examples_before = s.examples;  // a resumed run times only its own part
  // A resumed run starts inside the checkpoint's epoch (or after it, if its end had passed).
  int64_t skip = 0;
  if (resumed_) {
    if (s.epoch_complete) {
      ++s.epoch;
    } else {
      skip = s.epoch_batches;
    }
  } else {
    s.epoch = 0;
  }
  if (options_.max_steps > 0 && s.step >= options_.max_steps) s.stop = true;  // resumed at the limit
  const auto params = task_.module().parameters();
  // Data parallel: every rank starts from rank 0's parameters and steps through the same number
  // of its own batches per epoch (full batches only, so that no rank runs out first).
  int64_t per_rank = -1;
  if (dist_.active()) {
    std::vector<torch::Tensor> state = params;
    for (auto& b : task_.module().buffers()) state.push_back(b);
    dist_.broadcast(state);
    per_rank = steps_per_epoch();
    if (per_rank < 1)
      throw ConfigError("train.batch_size", "gives fewer full batches than the " + std::to_string(dist_.world()) +
                                                " ranks of this run");
  }
  for (; s.epoch < options_.epochs && !s.stop; ++s.epoch) {
    StreamOptions so;
    so.batch_size = options_.batch_size;
    so.seed = seed_;
    so.epoch = s.epoch;
    so.prefetch = options_.prefetch;
    auto stream = task_.train_stream(so);
    s.epoch_batches = 0;
    s.epoch_complete = false;
    // The batches trained before the checkpoint: drawn again (the stream's order and sampling
    // depend only on the seed and the epoch), not trained.
    for (; skip > 0; --skip, ++s.epoch_batches)
      if (!stream->next()) break;
    skip = 0;
    // This rank's batches of the epoch trained so far (a resumed run's position is a whole number
    // of global steps): every rank stops at the same per-rank count as an uninterrupted run.
    int64_t own = dist_.active() ? s.epoch_batches / dist_.world() : 0;
    while (auto batch = stream->next()) {
      const int64_t index = s.epoch_batches++;
      if (dist_.active()) {
        if (own == per_rank) break;
        if (index % dist_.world() != dist_.rank()) continue;
        ++own;
      }
      optimizer_->zero_grad();
      StepOutput out;
      if (!task_.forward_backward(*batch, gen_, params, out)) {
        out = task_.forward(*batch, gen_);
        out.loss.backward();
      }
      ++s.step;
      check_loss(out.loss);
      dist_.average_gradients(params);
      optimizer_->step();
      s.examples += batch->size();
      if (s.step % options_.log_every == 0 || (options_.eval_every > 0 && s.step % options_.eval_every == 0)) {
        check_pending_loss();
        s.last_loss = out.loss.item<double>();  // one host sync per log interval
        s.last_parts.clear();
        for (auto& [k, v] : out.parts) s.last_parts[k] = v.item<double>();
      }
      for (auto& h : hooks_) h->on_step_end(*this);
      if (s.stop || (options_.max_steps > 0 && s.step >= options_.max_steps)) {
        s.stop = true;
        break;
      }
    }
    s.epoch_complete = !s.stop;  // a checkpoint written by the epoch-end validation resumes after it
    // Whether the epoch still had batches when the loop stopped (max_steps inside it): its
    // end-of-epoch validation is then one that a longer run would not make (cut_validation_).
    epoch_cut_short_ = false;
    if (s.stop) epoch_cut_short_ = dist_.active() ? own < per_rank : stream->next() != nullptr;
    // Validate at the end of a truncated epoch too, so max_steps runs still pick a best state.
    for (auto& h : hooks_) h->on_epoch_end(*this);
    epoch_cut_short_ = false;
  }
  check_pending_loss();
  double train_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  for (auto& h : hooks_) h->on_train_end(*this);
  if (s.best_step < 0 && last_validated_step_ < 0) {
    // The loop has already counted past the last epoch it trained; the checkpoint this
    // validation writes must name that epoch (and whether its end passed) to resume from it.
    const int64_t after = s.epoch;
    if (s.epoch > 0) --s.epoch;
    fallback_validation_ = true;
    validate();
    fallback_validation_ = false;
    s.epoch = after;
  }
  // The replicas applied the same averaged updates: their parameters must agree exactly.
  if (dist_.active()) {
    util::Checksum sum;
    for (auto& p : task_.module().named_parameters()) sum.add(p.key(), p.value());
    // The hash's top 53 bits: exactly representable, as all_equal compares doubles.
    if (!dist_.all_equal(static_cast<double>(sum.value() >> 11)))
      throw std::runtime_error("data-parallel replicas diverged: their parameters differ after training");
  }
  restore_best();
  nlohmann::json results = {{"best_step", s.best_step}, {"best_epoch", s.best_epoch},
                            {"steps", s.step}, {"train_seconds", train_seconds},
                            {"examples_per_second", (s.examples - examples_before) * dist_.world() / std::max(train_seconds, 1e-9)},
                            {"world_size", dist_.world()},
                            {"selection_metric", options_.early_stopping.metric},
                            {"valid_metrics", s.best_valid}, {"data", task_.describe()}};
  results.update(result_extras_);
  if (!dist_.leader()) return results;  // rank 0 reports the run
  if (options_.evaluate_test) {
    Metrics test = task_.evaluate("test");
    results["metrics"] = test;
    run_dir_.append_metrics({{"step", s.best_step}, {"epoch", s.best_epoch}, {"split", "test"}, {"metrics", test}});
  } else {
    results["metrics"] = s.best_valid;
  }
  run_dir_.write_results(results);
  return results;
}

}  // namespace recsys::train

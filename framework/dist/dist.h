#pragma once
// Data-parallel training over LibTorch's own distributed engine (c10d, Gloo backend): N processes
// on one machine, each training on its share of every global batch, gradients averaged before
// each optimizer step so that every replica applies the same update.
#include <torch/torch.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace recsys::dist {

/// This process's place in a data-parallel run. world == 1 (the default) is a plain run: every
/// collective below is then a no-op.
class Context {
 public:
  Context() = default;
  /// Joins the group described by RECSYS_RANK, RECSYS_WORLD_SIZE and RECSYS_STORE (a file both
  /// ranks can reach, set by launch()); a plain context when they are unset. Collectives give up
  /// after `timeout`, which must cover rank 0's validation (the others wait for its decision); a
  /// rank that dies is caught sooner by the launcher, which stops the others.
  static Context from_env(std::chrono::milliseconds timeout = std::chrono::minutes(30));
  /// Joins a group directly (tests): a c10d FileStore at `store_path`, Gloo over loopback.
  static Context join(int rank, int world, const std::string& store_path,
                      std::chrono::milliseconds timeout = std::chrono::minutes(30));

  int rank() const { return rank_; }
  int world() const { return world_; }
  bool active() const { return world_ > 1; }
  bool leader() const { return rank_ == 0; }
  /// A seed for this rank's own random stream, derived from the run's: `seed` itself on rank 0
  /// (and in a single process).
  uint64_t seed_for_rank(uint64_t seed) const {
    return seed + 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(rank_);
  }

  /// Replaces each parameter's gradient by the mean over the ranks. Dense gradients travel in one
  /// flattened all-reduce per dtype; sparse (embedding) gradients are all-gathered, indices and
  /// values, and their values divided by the world size, so each rank holds the rows every rank
  /// touched. A gradient missing on some rank counts as zero there.
  void average_gradients(const std::vector<torch::Tensor>& params);
  /// Every rank's `x` (the same shape on each), concatenated in rank order along dim 0. The
  /// gradient flows back to each rank's own rows summed over the ranks (each rank's loss may use
  /// every rank's rows; with average_gradients this is the gradient of the ranks' mean loss).
  /// A plain context returns `x`.
  torch::Tensor all_gather_rows(const torch::Tensor& x);
  /// Copies rank 0's values into every rank's tensors (in place).
  void broadcast(const std::vector<torch::Tensor>& tensors);
  /// Rank 0's value of a flag, on every rank.
  bool broadcast_flag(bool value);
  /// Whether every rank holds the same value (compared exactly).
  bool all_equal(double value);
  /// The largest of the ranks' values, on every rank.
  int64_t all_max(int64_t value);
  void barrier();

 private:
  struct Group;  // the c10d process group (its headers stay out of this one)
  int rank_ = 0, world_ = 1;
  std::shared_ptr<Group> group_;
};

/// Runs this program `nproc` times as the ranks of one data-parallel run: the same arguments,
/// with RECSYS_RANK / RECSYS_WORLD_SIZE / RECSYS_STORE set, and `extra_args` appended. Waits for
/// all of them; when one fails the others are stopped, and SIGINT / SIGTERM sent to the launcher
/// reach every rank (which also end if the launcher dies). Returns the first failure's exit
/// status (0 when all succeed).
int launch(int nproc, char** argv, const std::vector<std::string>& extra_args, const std::string& store_path);

/// Whether this process is a rank started by launch() (whose launcher, its parent, holds the run
/// directory's lock), rather than one started by hand with RECSYS_RANK / RECSYS_WORLD_SIZE /
/// RECSYS_STORE set.
bool launched_by_launcher();

}  // namespace recsys::dist

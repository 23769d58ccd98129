#pragma once
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

#include "framework/util/errors.h"

namespace recsys::train {

/// Writes `text` to `path` atomically: a temporary file beside it, then rename.
void write_atomic(const std::filesystem::path& path, const std::string& text);

/// Thrown by DirectoryLock when another process holds the directory (a UsageError: exit 2).
class DirectoryBusy : public UsageError {
 public:
  using UsageError::UsageError;
};

/// An exclusive hold on a directory for one process's lifetime (flock on DIR/.lock, released when
/// the process ends however it ends), so that two processes never write one run directory at
/// once. Throws DirectoryBusy naming the directory (and the holder's process id) when another
/// process holds it, UsageError when the lock file cannot be opened; on a file system without
/// flock it warns and holds nothing.
class DirectoryLock {
 public:
  DirectoryLock() = default;
  explicit DirectoryLock(const std::filesystem::path& dir);
  DirectoryLock(DirectoryLock&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  DirectoryLock& operator=(DirectoryLock&& other) noexcept;
  DirectoryLock(const DirectoryLock&) = delete;
  DirectoryLock& operator=(const DirectoryLock&) = delete;
  ~DirectoryLock();

 private:
  int fd_ = -1;
};

/// The run directory layout other tools rely on: config.json, log.txt, metrics.jsonl,
/// results.json, checkpoints/.
class RunDir {
 public:
  RunDir() = default;  ///< no directory: nothing is written
  explicit RunDir(std::filesystem::path dir);
  bool enabled() const { return !dir_.empty(); }
  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path checkpoints() const { return dir_ / "checkpoints"; }
  void write_config(const nlohmann::json& config) const;
  void append_metrics(const nlohmann::json& record) const;
  /// Starts metrics.jsonl afresh (a new run in an overwritten directory).
  void reset_metrics() const;
  /// Keeps the records of metrics.jsonl up to `step` (a resumed run redoes what came later; the
  /// test record of an earlier end goes too); rewritten atomically.
  /// `drop_valid_at` >= 0: the validation record of that step goes too (a validation a
  /// resumed run forgets).
  void truncate_metrics(int64_t step, int64_t drop_valid_at = -1) const;
  /// True when `dir` already holds a finished run or checkpoints.
  static bool holds_run(const std::filesystem::path& dir);
  void write_results(const nlohmann::json& results) const;

 private:
  std::filesystem::path dir_;
};

/// `--overwrite` without losing the old run to a new one that fails: the old run's files
/// (config.json, log.txt, metrics.jsonl, results.json, checkpoints/) are moved into
/// DIR/.replaced/ before the new run starts. keep_new() deletes them once the new run has
/// finished; on failure, settle_failed() gives them back when the new run saved nothing of its
/// own (no checkpoint, no results), and otherwise keeps the new run's checkpoints (for --resume)
/// and deletes the old. A process killed in between leaves DIR/.replaced/: recover() (called
/// before any run starts in DIR) moves it back when DIR holds no run, or deletes it when the new
/// run had saved something.
class ReplacedRun {
 public:
  explicit ReplacedRun(std::filesystem::path dir);
  void keep_new();
  void settle_failed();
  /// Returns true when it gave an interrupted overwrite's old run back.
  static bool recover(const std::filesystem::path& dir);

 private:
  std::filesystem::path dir_;
};

}  // namespace recsys::train

#include "framework/train/run_dir.h"

#include <fstream>
#include <stdexcept>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "framework/util/errors.h"

namespace recsys::train {
namespace fs = std::filesystem;

void write_atomic(const fs::path& path, const std::string& text) {
  fs::path tmp = path;
  tmp += ".tmp" + std::to_string(::getpid());
  int fd = -1;
  // Throws naming the step and errno's reason, the descriptor closed first.
  auto fail = [&](const char* what) {
    const std::string reason = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    throw std::runtime_error(std::string(what) + " " + tmp.string() + ": " + reason);
  };
  try {
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) fail("cannot write");
    size_t off = 0;
    while (off < text.size()) {
      const ssize_t n = ::write(fd, text.data() + off, text.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) fail("failed writing");
      off += static_cast<size_t>(n);
    }
    // On disk before the rename makes it the file: a crash (or power loss) leaves the old file
    // or the new one, never a renamed empty one.
    if (::fsync(fd) != 0) fail("failed syncing");
    const int closing = fd;
    fd = -1;
    if (::close(closing) != 0) fail("failed closing");
    fs::rename(tmp, path);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);  // the target is untouched; leave no half-written file beside it
    throw;
  }
  // The rename itself, recorded in the directory (best effort: some file systems refuse).
  const int dir = ::open(path.has_parent_path() ? path.parent_path().c_str() : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

DirectoryLock::DirectoryLock(const fs::path& dir) {
  const auto path = dir / ".lock";
  // Close-on-exec: the ranks a data-parallel launcher starts run under its hold, not their own.
  // Created 0666 (the umask decides); read-only where another user created it: flock works on
  // any descriptor, the pid written for the message is optional.
  bool writable = true;
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0666);
  if (fd_ < 0 && errno == EACCES) {
    writable = false;
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  }
  if (fd_ < 0)
    throw UsageError("cannot open " + path.string() + " (the directory's lock): " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    if (err == EOPNOTSUPP || err == ENOLCK) {  // file systems without flock: no protection, no refusal
      spdlog::warn("{}: this file system cannot lock files; nothing stops another process writing {} too",
                   path.string(), dir.string());
      return;
    }
    char holder[32] = {0};
    const auto n = ::pread(fd_, holder, sizeof holder - 1, 0);
    ::close(fd_);
    fd_ = -1;
    if (err == EWOULDBLOCK)
      throw DirectoryBusy("directory '" + dir.string() + "' is in use by another recsys process" +
                          (n > 0 ? " (pid " + std::string(holder, static_cast<size_t>(n)) + ")" : std::string()) +
                          ": wait for it to finish or use another directory");
    throw UsageError("cannot lock " + path.string() + ": " + std::strerror(err));
  }
  const std::string pid = std::to_string(::getpid());
  if (writable && ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
    // The pid only improves the message a second process gets; the hold is what matters.
  }
}

DirectoryLock& DirectoryLock::operator=(DirectoryLock&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

DirectoryLock::~DirectoryLock() {
  if (fd_ >= 0) ::close(fd_);
}

RunDir::RunDir(fs::path dir) : dir_(std::move(dir)) {
  fs::create_directories(dir_ / "checkpoints");
}

void RunDir::write_config(const nlohmann::json& config) const {
  if (enabled()) write_atomic(dir_ / "config.json", config.dump(2) + "\n");
}

void RunDir::append_metrics(const nlohmann::json& record) const {
  if (!enabled()) return;
  std::ofstream out(dir_ / "metrics.jsonl", std::ios::app);
  out << record.dump() << "\n";
  out.flush();
  if (!out)
    throw DataError((dir_ / "metrics.jsonl").string(), 0,
                    std::string("cannot append the record: ") + std::strerror(errno));
}

void RunDir::reset_metrics() const {
  if (enabled()) std::ofstream(dir_ / "metrics.jsonl", std::ios::trunc);
}

void RunDir::truncate_metrics(int64_t step, int64_t drop_valid_at) const {
  if (!enabled() || !fs::exists(dir_ / "metrics.jsonl")) return;
  std::ifstream in(dir_ / "metrics.jsonl");
  std::string kept, line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json record;
    try {
      record = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception&) {
      break;  // a line cut short by the interruption: nothing after it is kept
    }
    if (record.value("split", "") == "test" || record.value("step", int64_t{0}) > step) continue;
    if (drop_valid_at >= 0 && record.value("split", "") == "valid" &&
        record.value("step", int64_t{0}) == drop_valid_at)
      continue;
    kept += line + "\n";
  }
  write_atomic(dir_ / "metrics.jsonl", kept);
}

bool RunDir::holds_run(const fs::path& dir) {
  if (dir.empty()) return false;
  if (fs::exists(dir / "results.json")) return true;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir / "checkpoints", ec))
    if (e.path().extension() == ".pt") return true;
  return false;
}

void RunDir::write_results(const nlohmann::json& results) const {
  if (enabled()) write_atomic(dir_ / "results.json", results.dump(2) + "\n");
}

namespace {

// What a run writes into its directory (the rest of DIR, exports for instance, stays).
const char* const kRunFiles[] = {"config.json", "log.txt", "metrics.jsonl", "results.json", "checkpoints"};

fs::path replaced_dir(const fs::path& dir) { return dir / ".replaced"; }

// Moves the run files of `from` that exist into `to` (created), replacing what is there.
void move_run_files(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  for (const char* name : kRunFiles) {
    std::error_code ec;
    if (!fs::exists(from / name, ec)) continue;
    fs::remove_all(to / name);
    fs::rename(from / name, to / name);
  }
}

// The new run's files, gone (before the old run's come back).
void remove_run_files(const fs::path& dir) {
  for (const char* name : kRunFiles) fs::remove_all(dir / name);
}

}  // namespace

ReplacedRun::ReplacedRun(fs::path dir) : dir_(std::move(dir)) {
  fs::remove_all(replaced_dir(dir_));  // a stale one: recover() found the new run had saved
  move_run_files(dir_, replaced_dir(dir_));
}

void ReplacedRun::keep_new() {
  std::error_code ec;
  fs::remove_all(replaced_dir(dir_), ec);
}

void ReplacedRun::settle_failed() {
  try {
    // The same decision as after a killed process: back when the new run saved nothing.
    if (recover(dir_))
      spdlog::warn("the new run failed before saving anything: the run it was to replace in {} is back", dir_.string());
  } catch (const std::exception& e) {
    spdlog::error("could not give the replaced run back into {}: {}; its files are in {}", dir_.string(), e.what(),
                  replaced_dir(dir_).string());
  }
}

bool ReplacedRun::recover(const fs::path& dir) {
  std::error_code ec;
  if (dir.empty() || !fs::is_directory(replaced_dir(dir), ec)) return false;
  if (RunDir::holds_run(dir)) {
    fs::remove_all(replaced_dir(dir));
    return false;
  }
  remove_run_files(dir);
  move_run_files(replaced_dir(dir), dir);
  fs::remove_all(replaced_dir(dir));
  return true;
}

}  // namespace recsys::train

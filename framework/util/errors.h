#pragma once
#include <stdexcept>
#include <string>

namespace recsys {

/// Bad configuration: carries the JSON path of the offending value ("train.lr").
class ConfigError : public std::runtime_error {
 public:
  ConfigError(std::string path, const std::string& message)
      : std::runtime_error((path.empty() ? std::string("config") : path) + ": " + message),
        path_(std::move(path)),
        message_(message) {}
  const std::string& path() const { return path_; }
  /// The message without the path in front (for an error re-raised at another path).
  const std::string& message() const { return message_; }

 private:
  std::string path_, message_;
};

/// Bad input data: carries file and line (line 0 when the problem is not tied to a line).
class DataError : public std::runtime_error {
 public:
  DataError(std::string file, long line, const std::string& message)
      : std::runtime_error(file + (line > 0 ? ":" + std::to_string(line) : std::string()) + ": " +
                           message),
        file_(std::move(file)),
        line_(line) {}
  const std::string& file() const { return file_; }
  long line() const { return line_; }

 private:
  std::string file_;
  long line_;
};

/// Bad command-line usage (unknown subcommand, missing file argument, ...).
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// A numeric failure during training (non-finite loss) that the user can fix by configuration.
class NumericError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace recsys

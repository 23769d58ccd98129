#pragma once
#include <string>

namespace recsys {

/// Sets up the default spdlog logger: console (stderr) at `console_level`, plus `log_file` at
/// `file_level` when not empty.
void setup_logging(const std::string& log_file, const std::string& console_level,
                   const std::string& file_level = "info");

}  // namespace recsys

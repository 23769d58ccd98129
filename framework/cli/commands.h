#pragma once
#include <string>
#include <vector>

namespace recsys::cli {

/// Fills every registry (explicit calls: static initialisers in a static library get dropped).
void register_builtins();

/// Sets up spdlog: console on stderr, plus `log_file` when not empty.
void setup_logging(const std::string& log_file, const std::string& level);

}  // namespace recsys::cli

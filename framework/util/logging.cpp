#include "framework/util/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace recsys {

void setup_logging(const std::string& log_file, const std::string& console_level, const std::string& file_level) {
  std::vector<spdlog::sink_ptr> sinks;
  auto console = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
  console->set_level(spdlog::level::from_str(console_level));
  sinks.push_back(console);
  auto level = spdlog::level::from_str(console_level);
  if (!log_file.empty()) {
    auto file = std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file, false);
    file->set_level(spdlog::level::from_str(file_level));
    sinks.push_back(file);
    level = std::min(level, spdlog::level::from_str(file_level));
  }
  auto logger = std::make_shared<spdlog::logger>("recsys", sinks.begin(), sinks.end());
  logger->set_pattern("[%H:%M:%S] %^%l%$ %v");
  logger->set_level(level);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace recsys

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "augment/augmentation.h"
#include "framework/cli/commands.h"
#include "framework/data/retrieval_sources.h"
#include "models/dien/dien.h"
#include "models/din/ctr_task.h"
#include "models/two_tower/retrieval_task.h"

namespace recsys::cli {

void register_builtins() {
  data::register_builtin_retrieval_sources();
  augment::register_builtin_augmentations();
  models::register_retrieval_task();
  models::register_ctr_task();
  models::register_dien_model();
}

void setup_logging(const std::string& log_file, const std::string& level) {
  std::vector<spdlog::sink_ptr> sinks;
  sinks.push_back(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  if (!log_file.empty()) sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file, false));
  auto logger = std::make_shared<spdlog::logger>("recsys", sinks.begin(), sinks.end());
  logger->set_pattern("[%H:%M:%S] %^%l%$ %v");
  logger->set_level(spdlog::level::from_str(level));
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace recsys::cli

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

}  // namespace recsys::cli

#pragma once
#include <string>
#include <vector>

namespace recsys::cli {

/// Fills every registry (explicit calls: static initialisers in a static library get dropped).
void register_builtins();

}  // namespace recsys::cli

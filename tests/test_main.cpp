// Catch2's runner, then this process's scratch directories are removed (tests/support.h).
#define CATCH_CONFIG_RUNNER
#include <catch.hpp>

#include "support.h"

int main(int argc, char* argv[]) {
  const int result = Catch::Session().run(argc, argv);
  recsys::testing::remove_temp_dirs();
  return result;
}

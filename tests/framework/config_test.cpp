#include "framework/config/config.h"
#include "support.h"
TEST_CASE("placeholder config", "[config]") {
  recsys::config::Json j = {{"a", 1}};
  recsys::config::apply_override(j, "b.c=2");
  REQUIRE(j["b"]["c"] == 2);
}

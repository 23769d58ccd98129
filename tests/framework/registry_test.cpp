// The named factory tables behind every "type" key.
#include "framework/registry/registry.h"

#include <functional>

#include "support.h"

using recsys::ConfigError;
using recsys::Registry;

TEST_CASE("Registry returns registered factories and lists them", "[registry]") {
  Registry<std::function<int()>> reg("widget");
  reg.add("one", [] { return 1; }, "the first");
  reg.add("two", [] { return 2; });
  CHECK(reg.kind() == "widget");
  CHECK(reg.contains("one"));
  CHECK_FALSE(reg.contains("three"));
  CHECK(reg.get("one")() == 1);
  CHECK(reg.get("two", "model.type")() == 2);
  auto list = reg.list();
  REQUIRE(list.size() == 2);
  CHECK(list[0].first == "one");
  CHECK(list[0].second == "the first");
  CHECK(list[1].first == "two");
}

TEST_CASE("Registry: an unknown name lists the known ones at the given path", "[registry]") {
  Registry<std::function<int()>> reg("widget");
  reg.add("beta", [] { return 1; });
  reg.add("alpha", [] { return 2; });
  try {
    reg.get("gamma", "model.widget");
    FAIL("expected a ConfigError");
  } catch (const ConfigError& e) {
    CHECK(e.path() == "model.widget");
    std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("unknown widget 'gamma'") != std::string::npos);
    CHECK(msg.find("alpha, beta") != std::string::npos);
    CHECK(msg.rfind("model.widget", 0) == 0);
  }
}

TEST_CASE("Registry: registering a name twice throws", "[registry]") {
  Registry<std::function<int()>> reg("widget");
  reg.add("one", [] { return 1; });
  CHECK_THROWS_WITH(reg.add("one", [] { return 5; }), Catch::Contains("registered twice"));
  CHECK(reg.get("one")() == 1);  // the first registration stays
}

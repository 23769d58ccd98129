// recsys::fast::exp / sigmoid / tanh against float64 std:: functions.
#include "framework/util/fast_math.h"

#include <cmath>
#include <limits>

#include "support.h"

TEST_CASE("fast::exp is within 2 ulp of e^x over the float range", "[kernels]") {
  double worst = 0;
  for (float x = -87.0f; x < 88.0f; x += 0.00731f) {
    const double e = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(recsys::fast::exp(x) - e) / e);
  }
  CHECK(worst < 2.5e-7);  // float32 ulp is 1.19e-7 relative at worst
  CHECK(recsys::fast::exp(0.0f) == 1.0f);
  CHECK(recsys::fast::exp(-100.0f) == 0.0f);
  CHECK(recsys::fast::exp(-std::numeric_limits<float>::infinity()) == 0.0f);
  CHECK(std::isnan(recsys::fast::exp(std::numeric_limits<float>::quiet_NaN())));
  CHECK(std::isfinite(recsys::fast::exp(1000.0f)));
}

TEST_CASE("fast::sigmoid and fast::tanh agree with float64", "[kernels]") {
  double worst_s = 0, worst_t = 0;
  for (float x = -30.0f; x < 30.0f; x += 0.0037f) {
    const double s = 1.0 / (1.0 + std::exp(-static_cast<double>(x)));
    worst_s = std::max(worst_s, std::fabs(recsys::fast::sigmoid(x) - s));
    worst_t = std::max(worst_t, std::fabs(recsys::fast::tanh(x) - std::tanh(static_cast<double>(x))));
  }
  CHECK(worst_s < 1e-7);
  CHECK(worst_t < 3e-7);
  CHECK(recsys::fast::sigmoid(-200.0f) < 1e-37f);
  CHECK(recsys::fast::sigmoid(-200.0f) >= 0.0f);
  CHECK(recsys::fast::tanh(200.0f) == 1.0f);
  CHECK(recsys::fast::tanh(-200.0f) == -1.0f);
}

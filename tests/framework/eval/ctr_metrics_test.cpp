#include "framework/eval/ctr_metrics.h"

#include <cmath>
#include <stdexcept>

#include "framework/util/errors.h"
#include "support.h"

using namespace recsys::eval;
using recsys::testing::require_close;

TEST_CASE("auc counts correctly ordered pairs", "[ctr]") {
  // Positives 0.35 (beats 0.1, loses to 0.4) and 0.8 (beats both): 3 of 4 pairs.
  require_close(auc({0.1f, 0.4f, 0.35f, 0.8f}, {0, 0, 1, 1}), 0.75);
  require_close(auc({0.9f, 0.8f, 0.1f}, {1, 1, 0}), 1.0);
  require_close(auc({0.9f, 0.8f, 0.1f}, {0, 0, 1}), 0.0);
}

TEST_CASE("auc gives tied pairs one half (average ranks)", "[ctr]") {
  // Positive 0.5 ties both negatives (2 x 1/2), positive 0.9 beats both (2): 3 / 4.
  require_close(auc({0.5f, 0.5f, 0.5f, 0.9f}, {1, 0, 0, 1}), 0.75);
  // Everything tied: 0.5 whatever the labels.
  require_close(auc({0.3f, 0.3f, 0.3f, 0.3f, 0.3f}, {1, 0, 1, 0, 0}), 0.5);
  // A tie block in the middle: ranks 1, {2,3,4} -> 3 each, 5. Positives at 0.2 (tied) and 0.9.
  // Pairs: tied positive vs negatives {0.1: win, 0.2: 1/2, 0.2: 1/2}; 0.9 beats all 3 -> 5 / 6.
  require_close(auc({0.1f, 0.2f, 0.2f, 0.2f, 0.9f}, {0, 1, 0, 0, 1}), 5.0 / 6.0);
}

TEST_CASE("auc with a single class is 0.5", "[ctr]") {
  require_close(auc({0.1f, 0.7f}, {1, 1}), 0.5);
  require_close(auc({0.1f, 0.7f}, {0, 0}), 0.5);
  require_close(auc({}, {}), 0.5);
}

TEST_CASE("gauc weights per-user AUC by impressions and skips single-class users", "[ctr]") {
  // User 7: scores {0.9+, 0.1-, 0.5-} -> AUC 1, 3 impressions.
  // User 3: scores {0.2+, 0.6-} -> AUC 0, 2 impressions.
  // User 5: only positives -> skipped. Interleaved on purpose.
  std::vector<float> s{0.9f, 0.2f, 0.3f, 0.1f, 0.6f, 0.4f, 0.5f};
  std::vector<float> y{1, 1, 1, 0, 0, 1, 0};
  std::vector<int64_t> u{7, 3, 5, 7, 3, 5, 7};
  require_close(gauc(s, y, u), (3 * 1.0 + 2 * 0.0) / 5.0);
  // The global AUC of the same impressions differs (it compares across users): 6 of 12 pairs.
  require_close(auc(s, y), 0.5);
  // Ties inside a user count one half.
  require_close(gauc({0.5f, 0.5f, 0.7f, 0.1f}, {1, 0, 1, 0}, {1, 1, 2, 2}),
                (2 * 0.5 + 2 * 1.0) / 4);
  // No user with both classes.
  require_close(gauc({0.5f, 0.6f}, {1, 0}, {1, 2}), 0.5);
}

TEST_CASE("logloss is the mean BCE with clipping at 1e-7", "[ctr]") {
  require_close(logloss({0.8f, 0.3f}, {1, 0}), -(std::log(0.8) + std::log(0.7)) / 2, 1e-7);
  // p = 0 for a positive and p = 1 for a negative are clipped: -log(1e-7) each.
  require_close(logloss({0.0f, 1.0f}, {1, 0}), -std::log(1e-7), 1e-4);
  require_close(logloss({}, {}), 0.0);
}

TEST_CASE("rela_impr follows DIN eq. 11", "[ctr]") {
  require_close(rela_impr(0.7, 0.6), 1.0);
  require_close(rela_impr(0.55, 0.6), -0.5);
  require_close(rela_impr(0.6, 0.6), 0.0);
  REQUIRE_THROWS_AS(rela_impr(0.7, 0.5), std::invalid_argument);
}

TEST_CASE("ctr metrics reject mismatched lengths", "[ctr]") {
  REQUIRE_THROWS_AS(auc({0.1f, 0.2f}, {1}), std::invalid_argument);
  REQUIRE_THROWS_AS(gauc({0.1f}, {1}, {1, 2}), std::invalid_argument);
  REQUIRE_THROWS_AS(logloss({0.1f}, {}), std::invalid_argument);
}

TEST_CASE("ctr metrics reject non-finite model outputs", "[ctr]") {
  // A NaN among the scores would otherwise break the sort's ordering and stall the tie scan.
  const std::vector<float> labels = {0, 1, 0, 1};
  const std::vector<float> nan_scores = {0.1f, std::nanf(""), 0.3f, 0.4f};
  const std::vector<float> inf_scores = {0.1f, 0.2f, INFINITY, 0.4f};
  CHECK_THROWS_AS(recsys::eval::auc(nan_scores, labels), recsys::NumericError);
  CHECK_THROWS_AS(recsys::eval::auc(inf_scores, labels), recsys::NumericError);
  CHECK_THROWS_AS(recsys::eval::gauc(nan_scores, labels, {1, 1, 2, 2}), recsys::NumericError);
  CHECK_THROWS_AS(recsys::eval::logloss(nan_scores, labels), recsys::NumericError);
  CHECK_THROWS_WITH(recsys::eval::auc(nan_scores, labels), Catch::Contains("impression 1"));
}

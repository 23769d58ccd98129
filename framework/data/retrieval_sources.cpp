#include "framework/data/retrieval_sources.h"

namespace recsys::data {

Registry<RetrievalSourceFactory>& retrieval_sources() {
  static Registry<RetrievalSourceFactory> registry("retrieval dataset");
  return registry;
}

SplitOptions parse_split(const config::Reader& r) {
  SplitOptions o;
  o.protocol = r.choice("protocol", o.protocol, {"leave_last", "fraction"});
  o.valid_fraction = r.get<double>("valid_fraction", o.valid_fraction);
  o.test_fraction = r.get<double>("test_fraction", o.test_fraction);
  o.min_positives = r.get<int64_t>("min_positives", o.min_positives);
  if (o.valid_fraction < 0 || o.valid_fraction >= 1) r.fail("valid_fraction", "must be in [0, 1)");
  if (o.test_fraction <= 0 || o.test_fraction >= 1) r.fail("test_fraction", "must be in (0, 1)");
  if (o.valid_fraction + o.test_fraction >= 1) r.fail("test_fraction", "valid_fraction + test_fraction must be < 1");
  if (o.min_positives < 1) r.fail("min_positives", "must be at least 1");
  return o;
}

void register_builtin_retrieval_sources() {
  auto& reg = retrieval_sources();
  if (reg.contains("synthetic")) return;
  reg.add("synthetic", [](const config::Reader& r) -> RetrievalSource {
    SyntheticOptions o;
    o.num_users = r.get<int64_t>("num_users", o.num_users);
    o.num_items = r.get<int64_t>("num_items", o.num_items);
    o.num_topics = r.get<int64_t>("num_topics", o.num_topics);
    o.num_categories = r.get<int64_t>("num_categories", o.num_categories);
    o.num_keywords = r.get<int64_t>("num_keywords", o.num_keywords);
    o.num_cities = r.get<int64_t>("num_cities", o.num_cities);
    o.min_interactions = r.get<int64_t>("min_interactions", o.min_interactions);
    o.max_interactions = r.get<int64_t>("max_interactions", o.max_interactions);
    o.zipf_exponent = r.get<double>("zipf_exponent", o.zipf_exponent);
    o.topic_focus = r.get<double>("topic_focus", o.topic_focus);
    o.seed = static_cast<uint64_t>(r.get<int64_t>("seed", static_cast<int64_t>(o.seed)));
    if (o.num_users < 1) r.fail("num_users", "must be at least 1");
    if (o.num_items < 2) r.fail("num_items", "must be at least 2");
    if (o.num_topics < 1) r.fail("num_topics", "must be at least 1");
    if (o.num_categories < o.num_topics) r.fail("num_categories", "must be >= num_topics");
    if (o.num_keywords < o.num_topics) r.fail("num_keywords", "must be >= num_topics");
    if (o.num_cities < 1) r.fail("num_cities", "must be at least 1");
    if (o.min_interactions < 1) r.fail("min_interactions", "must be at least 1");
    if (o.max_interactions < o.min_interactions) r.fail("max_interactions", "must be >= min_interactions");
    if (o.topic_focus < 0 || o.topic_focus > 1) r.fail("topic_focus", "must be in [0, 1]");
    return [o] { return make_synthetic(o); };
  }, "seeded synthetic corpus: power-law items with topic-correlated features");
  reg.add("movielens", [](const config::Reader& r) -> RetrievalSource {
    MovieLensOptions o;
    o.path = r.require<std::string>("path");
    o.min_rating = r.get<double>("min_rating", o.min_rating);
    o.year_bucket = r.get<int64_t>("year_bucket", o.year_bucket);
    if (o.year_bucket < 1) r.fail("year_bucket", "must be at least 1");
    return [o] { return load_movielens(o); };
  }, "MovieLens ml-100k / ml-1m / ml-latest(-small) / ml-20m / ml-25m from data.path");
}

}  // namespace recsys::data

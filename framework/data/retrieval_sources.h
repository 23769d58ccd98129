#pragma once
#include <functional>

#include "framework/config/config.h"
#include "framework/data/retrieval_data.h"
#include "framework/registry/registry.h"

namespace recsys::data {

/// Loads or generates the corpus (called after validation).
using RetrievalSource = std::function<RetrievalData()>;
/// Parses the `data` section (minus the keys common to every source: type, split).
using RetrievalSourceFactory = std::function<RetrievalSource(const config::Reader&)>;

Registry<RetrievalSourceFactory>& retrieval_sources();
void register_builtin_retrieval_sources();

SplitOptions parse_split(const config::Reader& r);

}  // namespace recsys::data

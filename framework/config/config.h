#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <set>
#include <string>
#include <vector>

#include "framework/util/errors.h"

namespace recsys::config {

using Json = nlohmann::json;

/// Reads a JSON config file and resolves its "extends" chain (a path or a list of paths, relative
/// to the including file; later entries and the file itself win). Cycles are rejected.
Json load_file(const std::string& path);

/// Deep merge: objects merge key by key, everything else in `over` replaces `base`.
void deep_merge(Json& base, const Json& over);

/// Applies "a.b.c=VALUE": VALUE parsed as JSON, else taken as a string. Creates missing objects.
void apply_override(Json& config, const std::string& assignment);

/// Loads a file (may be empty: then `{}`) and applies overrides in order.
Json resolve(const std::string& path, const std::vector<std::string>& overrides);

/// A JSON value in an error message, cut short: a whole config section would bury the point.
std::string brief(const Json& v);

/// Where two configs first differ, as a config path ("train.optimizer.lr", "ssl.augment[0]").
struct Difference {
  std::string path;
  std::string before, after;  // brief value texts; "(absent)" for a key missing on that side
};

/// The first difference between two configs, depth first with object keys in sorted order; arrays
/// of unequal length differ at the array itself. Numbers compare by value (1 == 1.0), as they do
/// after a round trip through a saved config.json. False when they are equal.
bool first_difference(const Json& before, const Json& after, Difference& d, const std::string& path = "");

/// Strict, path-aware reader over a JSON object. Every key read is recorded in a set shared by all
/// readers made from the same root, so `check_unknown()` on the root can reject every key that no
/// parser asked for, naming its full JSON path and the closest known key.
class Reader {
 public:
  explicit Reader(const Json& root);

  const std::string& path() const { return path_; }
  std::string path_of(const std::string& key) const;
  bool has(const std::string& key) const;
  const Json& node() const { return *node_; }

  template <class T>
  T get(const std::string& key, const T& fallback) const;
  template <class T>
  T require(const std::string& key) const;
  /// The raw JSON below `key` (marked as consumed wholesale); null when absent.
  Json raw(const std::string& key) const;
  /// A reader for the object at `key`; an empty object when absent.
  Reader child(const std::string& key) const;
  /// Readers for each element of the array at `key` (objects), in order.
  std::vector<Reader> children(const std::string& key) const;
  /// Throws ConfigError if the value is not one of `allowed`.
  std::string choice(const std::string& key, const std::string& fallback,
                     const std::vector<std::string>& allowed) const;

  /// Throws ConfigError naming the first key (depth-first) that no reader consumed.
  void check_unknown() const;
  /// Every setting read so far through this reader or its children, by full path ("train.lr"),
  /// with the value in effect: the config's, or the default where it gave none. Two configs
  /// with the same settings configure the same experiment, however they were written.
  const Json& settings() const { return shared_->settings; }

  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

 private:
  struct Shared {
    Json empty = Json::object();
    std::set<std::string> seen;      // consumed paths
    std::set<std::string> opaque;    // consumed subtrees
    Json settings = Json::object();  // full path -> value in effect
  };
  void record(const std::string& key, Json value) const { shared_->settings[path_of(key)] = std::move(value); }
  Reader(std::shared_ptr<Shared> shared, const Json* node, std::string path);
  const Json* lookup(const std::string& key) const;
  void mark(const std::string& key) const;
  void check_node(const Json& node, const std::string& path) const;

  std::shared_ptr<Shared> shared_;
  const Json* node_;
  std::string path_;
};

/// Type-checked conversion of one JSON value; `path` names it in the error.
template <class T>
T convert(const Json& value, const std::string& path);

template <> bool convert<bool>(const Json&, const std::string&);
template <> double convert<double>(const Json&, const std::string&);
template <> float convert<float>(const Json&, const std::string&);
template <> int64_t convert<int64_t>(const Json&, const std::string&);
template <> int convert<int>(const Json&, const std::string&);
template <> std::string convert<std::string>(const Json&, const std::string&);
template <> std::vector<int64_t> convert<std::vector<int64_t>>(const Json&, const std::string&);
template <> std::vector<double> convert<std::vector<double>>(const Json&, const std::string&);
template <> std::vector<std::string> convert<std::vector<std::string>>(const Json&, const std::string&);

// ---- template definitions ----
template <class T>
T Reader::get(const std::string& key, const T& fallback) const {
  mark(key);
  const Json* v = lookup(key);
  T out = v == nullptr || v->is_null() ? fallback : convert<T>(*v, path_of(key));
  record(key, Json(out));
  return out;
}

template <class T>
T Reader::require(const std::string& key) const {
  mark(key);
  const Json* v = lookup(key);
  if (v == nullptr || v->is_null()) fail(key, "required key is missing");
  T out = convert<T>(*v, path_of(key));
  record(key, Json(out));
  return out;
}

}  // namespace recsys::config

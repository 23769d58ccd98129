#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "framework/util/errors.h"

namespace recsys {

/// A named table of factories (the shape of c10/util/Registry.h, without static registration:
/// entries are added by explicit register_builtin_*() calls so that a static library keeps them).
template <class Factory>
class Registry {
 public:
  explicit Registry(std::string kind) : kind_(std::move(kind)) {}

  void add(const std::string& name, Factory factory, std::string help = "") {
    if (entries_.count(name)) throw std::logic_error(kind_ + " '" + name + "' registered twice");
    entries_.emplace(name, Entry{std::move(factory), std::move(help)});
  }
  bool contains(const std::string& name) const { return entries_.count(name) > 0; }

  /// Throws ConfigError at `path` listing the known names when `name` is unknown.
  const Factory& get(const std::string& name, const std::string& path = "") const {
    auto it = entries_.find(name);
    if (it == entries_.end()) {
      std::string known;
      for (auto& e : entries_) known += (known.empty() ? "" : ", ") + e.first;
      throw ConfigError(path, "unknown " + kind_ + " '" + name + "' (known: " + known + ")");
    }
    return it->second.factory;
  }
  std::vector<std::pair<std::string, std::string>> list() const {
    std::vector<std::pair<std::string, std::string>> out;
    for (auto& e : entries_) out.emplace_back(e.first, e.second.help);
    return out;
  }
  const std::string& kind() const { return kind_; }

 private:
  struct Entry {
    Factory factory;
    std::string help;
  };
  std::string kind_;
  std::map<std::string, Entry> entries_;
};

}  // namespace recsys

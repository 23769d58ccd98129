#include "framework/config/config.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace recsys::config {
namespace fs = std::filesystem;

namespace {

long line_of_offset(const std::string& text, size_t offset) {
  offset = std::min(offset, text.size());
  return 1 + static_cast<long>(std::count(text.begin(), text.begin() + offset, '\n'));
}

Json parse_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError("", "cannot open config file '" + path + "'");
  std::stringstream ss;
  ss << in.rdbuf();
  std::string text = ss.str();
  try {
    return Json::parse(text);
  } catch (const Json::parse_error& e) {
    std::string what = e.what();
    auto pos = what.find("]: ");
    if (pos != std::string::npos) what = what.substr(pos + 3);
    throw DataError(path, line_of_offset(text, e.byte > 0 ? e.byte - 1 : 0),
                    "invalid JSON: " + what);
  } catch (const Json::out_of_range& e) {
    // A number beyond a double's range (1e400): the parser reports no position.
    std::string what = e.what();
    auto pos = what.find("] ");
    if (pos != std::string::npos) what = what.substr(pos + 2);
    throw DataError(path, 0, "invalid JSON: " + what);
  }
}

Json load_rec(const std::string& path, std::vector<std::string>& stack) {
  std::string canon = fs::weakly_canonical(fs::path(path)).string();
  if (std::find(stack.begin(), stack.end(), canon) != stack.end()) {
    std::string chain;
    for (auto& s : stack) chain += s + " -> ";
    throw ConfigError("extends", "cycle in extends chain: " + chain + canon);
  }
  stack.push_back(canon);
  Json self = parse_file(path);
  if (!self.is_object()) throw ConfigError("", "config file '" + path + "' must hold a JSON object");
  Json result = Json::object();
  if (self.contains("extends")) {
    Json ext = self["extends"];
    std::vector<std::string> parents;
    if (ext.is_string()) {
      parents.push_back(ext.get<std::string>());
    } else if (ext.is_array()) {
      for (auto& e : ext) {
        if (!e.is_string()) throw ConfigError("extends", "entries must be file paths (strings)");
        parents.push_back(e.get<std::string>());
      }
    } else {
      throw ConfigError("extends", "must be a path or a list of paths in '" + path + "'");
    }
    fs::path dir = fs::path(path).parent_path();
    for (auto& p : parents) {
      fs::path full = fs::path(p).is_absolute() ? fs::path(p) : dir / p;
      deep_merge(result, load_rec(full.string(), stack));
    }
    self.erase("extends");
  }
  deep_merge(result, self);
  stack.pop_back();
  return result;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1])});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string type_name(const Json& v) {
  return v.type_name();
}

}  // namespace

Json load_file(const std::string& path) {
  std::vector<std::string> stack;
  return load_rec(path, stack);
}

void deep_merge(Json& base, const Json& over) {
  if (!base.is_object() || !over.is_object()) {
    base = over;
    return;
  }
  for (auto it = over.begin(); it != over.end(); ++it) {
    if (base.contains(it.key()) && base[it.key()].is_object() && it.value().is_object())
      deep_merge(base[it.key()], it.value());
    else
      base[it.key()] = it.value();
  }
}

void apply_override(Json& config, const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("", "override '" + assignment + "' must look like key.path=VALUE");
  std::string key = assignment.substr(0, eq);
  std::string text = assignment.substr(eq + 1);
  Json value;
  try {
    value = Json::parse(text);
  } catch (const Json::parse_error&) {
    value = text;
  } catch (const Json::out_of_range&) {
    throw ConfigError(key, "'" + text + "' is a number beyond a double's range");
  }
  Json* node = &config;
  std::string path;
  size_t start = 0;
  while (true) {
    size_t dot = key.find('.', start);
    std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (part.empty()) throw ConfigError(key, "empty component in override key");
    path += (path.empty() ? "" : ".") + part;
    if (!node->is_object()) throw ConfigError(path, "cannot set a key inside a non-object value");
    if (dot == std::string::npos) {
      // An object replaces an object whole: the keys it leaves out are gone, not kept. Said
      // once, because `--set train={"epochs": 1}` reads like a change of one key.
      if (node->contains(part) && (*node)[part].is_object() && value.is_object()) {
        std::string dropped;
        for (auto it = (*node)[part].begin(); it != (*node)[part].end(); ++it)
          if (!value.contains(it.key())) dropped += (dropped.empty() ? "" : ", ") + it.key();
        if (!dropped.empty())
          spdlog::warn("{}: the object given replaces the whole section, dropping {} (set one key with {}.KEY=VALUE)",
                       path, dropped, path);
      }
      (*node)[part] = value;
      return;
    }
    if (!node->contains(part) || (*node)[part].is_null()) (*node)[part] = Json::object();
    node = &(*node)[part];
    start = dot + 1;
  }
}

Json resolve(const std::string& path, const std::vector<std::string>& overrides) {
  Json config = path.empty() ? Json::object() : load_file(path);
  for (auto& o : overrides) apply_override(config, o);
  return config;
}

// ---------------- Reader ----------------

Reader::Reader(const Json& root) : shared_(std::make_shared<Shared>()), node_(&root), path_() {
  if (!root.is_object()) throw ConfigError("", "the config must be a JSON object");
}

Reader::Reader(std::shared_ptr<Shared> shared, const Json* node, std::string path)
    : shared_(std::move(shared)), node_(node), path_(std::move(path)) {}

std::string Reader::path_of(const std::string& key) const {
  return path_.empty() ? key : path_ + "." + key;
}

bool Reader::has(const std::string& key) const {
  const Json* v = lookup(key);
  return v != nullptr && !v->is_null();
}

const Json* Reader::lookup(const std::string& key) const {
  if (!node_->is_object()) return nullptr;
  auto it = node_->find(key);
  return it == node_->end() ? nullptr : &*it;
}

void Reader::mark(const std::string& key) const { shared_->seen.insert(path_of(key)); }

void Reader::fail(const std::string& key, const std::string& message) const {
  throw ConfigError(key.empty() ? path_ : path_of(key), message);
}

Json Reader::raw(const std::string& key) const {
  mark(key);
  shared_->opaque.insert(path_of(key));
  const Json* v = lookup(key);
  Json out = v == nullptr ? Json() : *v;
  record(key, out);
  return out;
}

Reader Reader::child(const std::string& key) const {
  mark(key);
  const Json* v = lookup(key);
  if (v == nullptr || v->is_null()) return Reader(shared_, &shared_->empty, path_of(key));
  if (!v->is_object()) fail(key, "expected an object, got " + type_name(*v));
  return Reader(shared_, v, path_of(key));
}

std::vector<Reader> Reader::children(const std::string& key) const {
  mark(key);
  std::vector<Reader> out;
  const Json* v = lookup(key);
  if (v == nullptr || v->is_null()) return out;
  if (!v->is_array()) fail(key, "expected an array, got " + type_name(*v));
  for (size_t i = 0; i < v->size(); ++i) {
    std::string p = path_of(key) + "[" + std::to_string(i) + "]";
    if (!(*v)[i].is_object()) throw ConfigError(p, "expected an object, got " + type_name((*v)[i]));
    shared_->seen.insert(p);
    out.push_back(Reader(shared_, &(*v)[i], p));
  }
  return out;
}

std::string Reader::choice(const std::string& key, const std::string& fallback,
                           const std::vector<std::string>& allowed) const {
  std::string v = get<std::string>(key, fallback);
  if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
    std::string list;
    for (auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    fail(key, "'" + v + "' is not one of: " + list);
  }
  return v;
}

void Reader::check_node(const Json& node, const std::string& path) const {
  if (shared_->opaque.count(path)) return;
  if (node.is_object()) {
    for (auto it = node.begin(); it != node.end(); ++it) {
      std::string p = path.empty() ? it.key() : path + "." + it.key();
      // A dotted key ("train.epochs": 5) would build the same path as the nested key the
      // reader looked up, and pass as seen while its value is never read.
      if (it.key().find('.') != std::string::npos)
        throw ConfigError(p, "a key may not contain '.': nest objects instead (\"train\": {\"epochs\": ...}); "
                             "dotted paths are for --set and a sweep's \"set\"");
      if (!shared_->seen.count(p)) {
        std::string best;
        size_t best_d = 1000;
        std::string known;
        for (auto& s : shared_->seen) {
          auto dot = s.rfind('.');
          std::string parent = dot == std::string::npos ? "" : s.substr(0, dot);
          if (parent != path || s.find('[', path.size()) != std::string::npos) continue;
          std::string leaf = dot == std::string::npos ? s : s.substr(dot + 1);
          known += (known.empty() ? "" : ", ") + leaf;
          size_t d = edit_distance(leaf, it.key());
          if (d < best_d) best_d = d, best = leaf;
        }
        std::string msg = "unknown key";
        if (!best.empty() && best_d <= 3) msg += "; did you mean '" + best + "'?";
        if (!known.empty()) msg += " (known keys here: " + known + ")";
        throw ConfigError(p, msg);
      }
      check_node(it.value(), p);
    }
  } else if (node.is_array()) {
    for (size_t i = 0; i < node.size(); ++i) {
      std::string p = path + "[" + std::to_string(i) + "]";
      if (shared_->seen.count(p)) check_node(node[i], p);
    }
  }
}

void Reader::check_unknown() const { check_node(*node_, path_); }

std::string brief(const Json& v) {
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

bool first_difference(const Json& before, const Json& after, Difference& d, const std::string& path) {
  if (before.is_object() && after.is_object()) {
    std::set<std::string> keys;
    for (auto it = before.begin(); it != before.end(); ++it) keys.insert(it.key());
    for (auto it = after.begin(); it != after.end(); ++it) keys.insert(it.key());
    for (auto& k : keys) {
      std::string p = path.empty() ? k : path + "." + k;
      if (!before.contains(k) || !after.contains(k)) {
        // An object present on one side only: its first key names the place more precisely
        // ("train.optimizer.lr" rather than "train.optimizer").
        const Json& there = before.contains(k) ? before.at(k) : after.at(k);
        if (there.is_object() && !there.empty()) {
          const Json empty = Json::object();
          return before.contains(k) ? first_difference(there, empty, d, p) : first_difference(empty, there, d, p);
        }
        d = {p, before.contains(k) ? brief(before.at(k)) : "(absent)",
             after.contains(k) ? brief(after.at(k)) : "(absent)"};
        return true;
      }
      if (first_difference(before.at(k), after.at(k), d, p)) return true;
    }
    return false;
  }
  if (before.is_array() && after.is_array() && before.size() == after.size()) {
    for (size_t i = 0; i < before.size(); ++i)
      if (first_difference(before[i], after[i], d, path + "[" + std::to_string(i) + "]")) return true;
    return false;
  }
  if (before == after) return false;
  d = {path, brief(before), brief(after)};
  return true;
}

// ---------------- convert ----------------

namespace {
[[noreturn]] void wrong(const Json& v, const std::string& path, const char* want) {
  throw ConfigError(path, std::string("expected ") + want + ", got " + v.type_name() + " " + v.dump());
}
}  // namespace

template <>
bool convert<bool>(const Json& v, const std::string& path) {
  if (!v.is_boolean()) wrong(v, path, "a boolean");
  return v.get<bool>();
}
template <>
double convert<double>(const Json& v, const std::string& path) {
  if (!v.is_number()) wrong(v, path, "a number");
  return v.get<double>();
}
template <>
float convert<float>(const Json& v, const std::string& path) {
  return static_cast<float>(convert<double>(v, path));
}
template <>
int64_t convert<int64_t>(const Json& v, const std::string& path) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::floor(d) == d && std::abs(d) < 9e15) return static_cast<int64_t>(d);
  }
  wrong(v, path, "an integer");
}
template <>
int convert<int>(const Json& v, const std::string& path) {
  return static_cast<int>(convert<int64_t>(v, path));
}
template <>
std::string convert<std::string>(const Json& v, const std::string& path) {
  if (!v.is_string()) wrong(v, path, "a string");
  return v.get<std::string>();
}
template <>
std::vector<int64_t> convert<std::vector<int64_t>>(const Json& v, const std::string& path) {
  if (!v.is_array()) wrong(v, path, "an array of integers");
  std::vector<int64_t> out;
  for (size_t i = 0; i < v.size(); ++i)
    out.push_back(convert<int64_t>(v[i], path + "[" + std::to_string(i) + "]"));
  return out;
}
template <>
std::vector<double> convert<std::vector<double>>(const Json& v, const std::string& path) {
  if (!v.is_array()) wrong(v, path, "an array of numbers");
  std::vector<double> out;
  for (size_t i = 0; i < v.size(); ++i)
    out.push_back(convert<double>(v[i], path + "[" + std::to_string(i) + "]"));
  return out;
}
template <>
std::vector<std::string> convert<std::vector<std::string>>(const Json& v, const std::string& path) {
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array()) wrong(v, path, "an array of strings");
  std::vector<std::string> out;
  for (size_t i = 0; i < v.size(); ++i)
    out.push_back(convert<std::string>(v[i], path + "[" + std::to_string(i) + "]"));
  return out;
}

}  // namespace recsys::config

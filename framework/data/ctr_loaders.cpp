// Loaders that turn raw behaviour logs into an InteractionLog.
#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "framework/data/ctr_data.h"
#include "framework/util/errors.h"

namespace recsys::data {

namespace {

const char* const kPadName = "<pad>";
const char* const kUnkName = "<unk>";

/// Reads a file line by line (strips a trailing '\r' and a UTF-8 BOM before the first line),
/// numbering lines from 1.
class LineReader {
 public:
  explicit LineReader(std::string path) : path_(std::move(path)) {
    // An ifstream opens a directory without complaint and then reads nothing, which would be
    // reported as an empty file.
    std::error_code ec;
    const auto status = std::filesystem::status(path_, ec);
    if (!ec && std::filesystem::exists(status) && !std::filesystem::is_regular_file(status))
      throw DataError(path_, 0,
                      std::filesystem::is_directory(status)
                          ? "is a directory, not a regular file (give the path of the data file)"
                          : "not a regular file");
    in_.open(path_, std::ios::binary);
    if (!in_) throw DataError(path_, 0, "cannot open file (check the path and permissions)");
  }
  bool next(std::string& line) {
    if (!std::getline(in_, line)) {
      // A failing read is not the end of the file: the rest of the data would be dropped.
      if (in_.bad())
        throw DataError(path_, line_no_ + 1, std::string("read error: ") + std::strerror(errno));
      return false;
    }
    ++line_no_;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    // Editors and spreadsheet exports may start a UTF-8 file with a byte order mark, which would
    // otherwise become part of the first user id or column name.
    if (line_no_ == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);
    return true;
  }
  long line_no() const { return line_no_; }
  const std::string& path() const { return path_; }
  [[noreturn]] void fail(const std::string& message) const {
    throw DataError(path_, line_no_, message);
  }

 private:
  std::string path_;
  std::ifstream in_;
  long line_no_ = 0;
};

bool is_blank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t'; });
}

/// An id with blanks or quotes around it would be another id than the same value written bare
/// (" 1" is not "1"): refused, naming the line.
void check_id(const LineReader& reader, std::string_view id, const char* what) {
  auto odd = [](char c) { return c == ' ' || c == '\t' || c == '"' || c == '\''; };
  if (!id.empty() && (odd(id.front()) || odd(id.back())))
    reader.fail(std::string(what) + " '" + std::string(id) +
                "' has blanks or quotes around it (write ids bare; a quoted CSV field is unquoted only by "
                "the interactions_csv loader)");
}

bool parse_int64(std::string_view s, int64_t& out) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  if (s.empty()) return false;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && ptr == s.data() + s.size();
}

/// Maps raw ids to dense indices starting at kFirstId.
class Vocabulary {
 public:
  Vocabulary() : names_{kPadName, kUnkName} {}
  int64_t index(std::string_view name) {
    // Look up before inserting: emplace would allocate a node (and a key copy) for every row.
    key_.assign(name.data(), name.size());
    auto it = map_.find(key_);
    if (it != map_.end()) return it->second;
    const auto id = static_cast<int64_t>(names_.size());
    map_.emplace(key_, id);
    names_.push_back(key_);
    return id;
  }
  int64_t find(const std::string& name) const {
    auto it = map_.find(name);
    return it == map_.end() ? kUnknownId : it->second;
  }
  int64_t size() const { return static_cast<int64_t>(names_.size()); }
  std::vector<std::string>& names() { return names_; }

 private:
  std::unordered_map<std::string, int64_t> map_;
  std::vector<std::string> names_;
  std::string key_;  // reused lookup buffer
};

/// Accumulates behaviours, then sorts each user's sequence by time.
class LogBuilder {
 public:
  /// Records one behaviour; an item keeps the first category it was seen with.
  void add(std::string_view user, std::string_view item, int64_t category, int64_t time) {
    int64_t u = users_.index(user);
    int64_t i = items_.index(item);
    if (static_cast<int64_t>(user_items_.size()) <= u) {
      user_items_.resize(u + 1);
      user_times_.resize(u + 1);
    }
    if (static_cast<int64_t>(item_category_.size()) <= i) item_category_.resize(i + 1, -1);
    if (item_category_[i] < 0) item_category_[i] = category;
    user_items_[u].push_back(i);
    user_times_[u].push_back(time);
  }
  Vocabulary& items() { return items_; }
  Vocabulary& categories() { return categories_; }
  std::vector<int64_t>& item_category() { return item_category_; }

  InteractionLog finish(const std::string& path) {
    if (users_.size() == kFirstId) throw DataError(path, 0, "no interactions were read");
    InteractionLog log;
    log.num_users = users_.size();
    log.num_items = items_.size();
    log.num_categories = categories_.size();
    user_items_.resize(log.num_users);
    user_times_.resize(log.num_users);
    item_category_.resize(log.num_items, -1);
    item_category_[kPaddingId] = kPaddingId;
    item_category_[kUnknownId] = kUnknownId;
    for (auto& c : item_category_)
      if (c < 0) c = kUnknownId;
    for (int64_t u = 0; u < log.num_users; ++u) {
      auto& items = user_items_[u];
      auto& times = user_times_[u];
      std::vector<size_t> order(items.size());
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return times[a] < times[b]; });
      std::vector<int64_t> sorted_items(items.size()), sorted_times(items.size());
      for (size_t k = 0; k < order.size(); ++k) {
        sorted_items[k] = items[order[k]];
        sorted_times[k] = times[order[k]];
      }
      items.swap(sorted_items);
      times.swap(sorted_times);
    }
    log.item_category = std::move(item_category_);
    log.user_items = std::move(user_items_);
    log.user_times = std::move(user_times_);
    log.item_names = std::move(items_.names());
    log.user_names = std::move(users_.names());
    log.category_names = std::move(categories_.names());
    return log;
  }

 private:
  Vocabulary users_, items_, categories_;
  std::vector<int64_t> item_category_;
  std::vector<std::vector<int64_t>> user_items_, user_times_;
};

/// Splits `line` at every `delimiter` into `fields` (reused between lines: no allocation once
/// its capacity suffices).
void split(std::string_view line, char delimiter, std::vector<std::string_view>& fields) {
  fields.clear();
  size_t start = 0;
  while (true) {
    size_t end = line.find(delimiter, start);
    if (end == std::string_view::npos) {
      fields.push_back(line.substr(start));
      return;
    }
    fields.push_back(line.substr(start, end - start));
    start = end + 1;
  }
}

/// Splits one CSV record into `fields` (reused between lines: the strings keep their capacity):
/// fields may be double-quoted, with "" standing for a quote.
void split_csv(const std::string& line, char delimiter, const LineReader& reader,
               std::vector<std::string>& fields) {
  size_t count = 0;
  size_t i = 0;
  const size_t n = line.size();
  auto next_field = [&]() -> std::string& {
    if (count == fields.size()) fields.emplace_back();
    auto& f = fields[count++];
    f.clear();
    return f;
  };
  while (true) {
    std::string& field = next_field();
    if (i < n && line[i] == '"') {
      ++i;
      bool closed = false;
      while (i < n) {
        if (line[i] == '"') {
          if (i + 1 < n && line[i + 1] == '"') {
            field += '"';
            i += 2;
          } else {
            ++i;
            closed = true;
            break;
          }
        } else {
          field += line[i++];
        }
      }
      if (!closed)
        reader.fail("unterminated quoted field (a quoted field must close on the same line)");
      if (i < n && line[i] != delimiter)
        reader.fail(std::string("unexpected character after a closing quote (expected '") +
                    delimiter + "' or the end of the line)");
    } else {
      size_t end = line.find(delimiter, i);
      if (end == std::string::npos) end = n;
      field.assign(line, i, end - i);
      i = end;
    }
    if (i >= n) break;
    ++i;  // skip the delimiter; a trailing delimiter yields a last empty field
    if (i == n) {
      next_field();
      break;
    }
  }
  fields.resize(count);
}

std::vector<std::string> split_csv(const std::string& line, char delimiter,
                                   const LineReader& reader) {
  std::vector<std::string> fields;
  split_csv(line, delimiter, reader, fields);
  return fields;
}

/// Converts a python literal (single-quoted strings, True/False/None) into JSON text.
std::string python_literal_to_json(const std::string& s) {
  std::string out;
  out.reserve(s.size() + 16);
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    char c = s[i];
    if (c == '\'' || c == '"') {
      const char quote = c;
      out += '"';
      ++i;
      while (i < n && s[i] != quote) {
        if (s[i] == '\\' && i + 1 < n) {
          char e = s[i + 1];
          if (e == '\'')
            out += '\'';                     // \' is not a JSON escape
          else if (e == 'x' && i + 3 < n) {  // \xNN -> \u00NN
            out += "\\u00";
            out += s[i + 2];
            out += s[i + 3];
            i += 4;
            continue;
          } else {
            out += '\\';
            out += e;
          }
          i += 2;
        } else if (s[i] == '"') {  // a double quote inside a single-quoted string
          out += "\\\"";
          ++i;
        } else {
          out += s[i++];
        }
      }
      out += '"';
      ++i;  // closing quote
    } else if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
      size_t j = i;
      while (j < n && (std::isalnum(static_cast<unsigned char>(s[j])) || s[j] == '_')) ++j;
      std::string word = s.substr(i, j - i);
      if (word == "True")
        out += "true";
      else if (word == "False")
        out += "false";
      else if (word == "None")
        out += "null";
      else
        out += word;
      i = j;
    } else {
      out += c;
      ++i;
    }
  }
  return out;
}

nlohmann::json parse_json_or_python(const std::string& line, const LineReader& reader) {
  auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) j = nlohmann::json::parse(python_literal_to_json(line), nullptr, false);
  if (j.is_discarded()) reader.fail("not a JSON object nor a python dict literal");
  if (!j.is_object()) reader.fail("expected one object per line");
  return j;
}

std::string json_string(const nlohmann::json& obj, const char* key, const LineReader& reader) {
  auto it = obj.find(key);
  if (it == obj.end() || !it->is_string())
    reader.fail(std::string("missing string field '") + key + "'");
  return it->get<std::string>();
}

int64_t json_int(const nlohmann::json& obj, const char* key, const LineReader& reader) {
  auto it = obj.find(key);
  if (it == obj.end()) reader.fail(std::string("missing field '") + key + "'");
  // nlohmann keeps integers above INT64_MAX as unsigned, and get<int64_t> would wrap them.
  if (it->is_number_unsigned() &&
      it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    reader.fail(std::string("field '") + key + "' is out of range: " + it->dump());
  if (it->is_number_integer()) return it->get<int64_t>();
  int64_t v = 0;
  if (it->is_string() && parse_int64(it->get<std::string>(), v)) return v;
  reader.fail(std::string("field '") + key + "' must be an integer, got " + it->dump());
}

}  // namespace

int64_t InteractionLog::num_interactions() const {
  int64_t n = 0;
  for (const auto& items : user_items) n += static_cast<int64_t>(items.size());
  return n;
}

InteractionLog load_taobao(const std::string& path, const std::vector<std::string>& behaviors) {
  static const std::unordered_set<std::string_view> kKnown{"pv", "buy", "cart", "fav"};
  std::unordered_set<std::string_view> keep(behaviors.begin(), behaviors.end());
  LineReader reader(path);
  LogBuilder builder;
  std::string line;
  bool any_line = false;
  std::vector<std::string_view> f;
  while (reader.next(line)) {
    if (is_blank(line)) continue;
    any_line = true;
    split(line, ',', f);
    if (f.size() != 5)
      reader.fail("expected 5 columns user,item,category,behavior,timestamp, got " +
                  std::to_string(f.size()));
    int64_t time = 0;
    if (!parse_int64(f[4], time))
      reader.fail("timestamp '" + std::string(f[4]) + "' is not an integer");
    if (f[0].empty() || f[1].empty() || f[2].empty())
      reader.fail("empty user, item or category id");
    check_id(reader, f[0], "user id");
    check_id(reader, f[1], "item id");
    check_id(reader, f[2], "category id");
    // Checked before the filter: a misspelt or shifted behavior column would otherwise drop its
    // rows silently.
    if (!kKnown.count(f[3]))
      reader.fail("behavior '" + std::string(f[3]) + "' is not one of pv, buy, cart, fav");
    if (!keep.count(f[3])) continue;
    int64_t category = builder.categories().index(f[2]);
    builder.add(f[0], f[1], category, time);
  }
  if (!any_line) throw DataError(path, 0, "empty file");
  std::string kept;
  for (const auto& b : behaviors) kept += (kept.empty() ? "" : ", ") + b;
  try {
    return builder.finish(path);
  } catch (const DataError&) {
    throw DataError(path, 0, "no row has a behavior in {" + kept + "}");
  }
}

InteractionLog load_amazon(const std::string& reviews_path, const std::string& meta_path) {
  // Meta first: asin -> category name.
  std::unordered_map<std::string, std::string> asin_category;
  {
    LineReader reader(meta_path);
    std::string line;
    bool any_line = false;
    while (reader.next(line)) {
      if (is_blank(line)) continue;
      any_line = true;
      auto obj = parse_json_or_python(line, reader);
      auto asin = json_string(obj, "asin", reader);
      auto it = obj.find("categories");
      if (it == obj.end() || it->is_null()) continue;
      if (!it->is_array()) reader.fail("'categories' must be a list of lists of strings");
      if (it->empty()) continue;
      const auto& first = (*it)[0];
      if (!first.is_array()) reader.fail("'categories' must be a list of lists of strings");
      if (first.empty()) continue;
      if (!first.back().is_string()) reader.fail("'categories' must be a list of lists of strings");
      asin_category.emplace(asin, first.back().get<std::string>());
    }
    if (!any_line) throw DataError(meta_path, 0, "empty file");
  }

  LineReader reader(reviews_path);
  LogBuilder builder;
  std::string line;
  bool any_line = false;
  int64_t matched = 0, reviews = 0;
  while (reader.next(line)) {
    if (is_blank(line)) continue;
    any_line = true;
    auto obj = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (obj.is_discarded() || !obj.is_object()) reader.fail("not a JSON object");
    auto user = json_string(obj, "reviewerID", reader);
    auto item = json_string(obj, "asin", reader);
    if (user.empty()) reader.fail("empty 'reviewerID'");
    if (item.empty()) reader.fail("empty 'asin'");
    int64_t time = json_int(obj, "unixReviewTime", reader);
    auto it = asin_category.find(item);
    int64_t category =
        it == asin_category.end() ? kUnknownId : builder.categories().index(it->second);
    matched += it != asin_category.end();
    ++reviews;
    builder.add(user, item, category, time);
  }
  if (!any_line) throw DataError(reviews_path, 0, "empty file");
  // Not one reviewed item with a category: the meta file of another category or release.
  if (matched == 0)
    throw DataError(meta_path, 0,
                    "none of the " + std::to_string(reviews) + " reviews in " + reviews_path +
                        " is of an item this file gives a category (" + std::to_string(asin_category.size()) +
                        " items with categories): is it the meta file of the same category?");
  return builder.finish(reviews_path);
}

InteractionLog load_interactions_csv(const CsvOptions& options) {
  if (options.user.empty() || options.item.empty())
    throw DataError(options.path, 0, "CsvOptions: set the 'user' and 'item' columns");
  LineReader reader(options.path);
  std::string line;
  std::vector<std::string> fields;
  size_t num_columns = 0;
  bool first_row_is_data = false;

  // Resolves the four columns (-1 = absent).
  int64_t col[4] = {-1, -1, -1, -1};
  const std::string* names[4] = {&options.user, &options.item, &options.category,
                                 &options.timestamp};
  const char* roles[4] = {"user", "item", "category", "timestamp"};
  bool got_line = false;
  while (reader.next(line)) {
    if (!is_blank(line)) {
      got_line = true;
      break;
    }
  }
  if (!got_line) throw DataError(options.path, 0, "empty file");
  fields = split_csv(line, options.delimiter, reader);
  num_columns = fields.size();
  const long first_line = reader.line_no();  // the row that sets the column count
  if (options.header) {
    std::string known;
    for (const auto& f : fields) known += (known.empty() ? "'" : ", '") + f + "'";
    for (int k = 0; k < 4; ++k) {
      if (names[k]->empty()) continue;
      auto it = std::find(fields.begin(), fields.end(), *names[k]);
      if (it == fields.end())
        reader.fail(std::string(roles[k]) + " column '" + *names[k] +
                    "' is not in the header; known columns: " + known);
      auto again = std::find(it + 1, fields.end(), *names[k]);
      if (again != fields.end())
        reader.fail(std::string(roles[k]) + " column '" + *names[k] + "' appears twice in the header (columns " +
                    std::to_string(it - fields.begin()) + " and " + std::to_string(again - fields.begin()) +
                    ", 0-based): rename one or give the column by index with header false");
      col[k] = it - fields.begin();
    }
  } else {
    first_row_is_data = true;
    for (int k = 0; k < 4; ++k) {
      if (names[k]->empty()) continue;
      int64_t index = -1;
      if (!parse_int64(*names[k], index) || index < 0)
        throw DataError(options.path, 0,
                        std::string(roles[k]) + " column '" + *names[k] +
                            "' must be a 0-based column index (the file has no header)");
      if (index >= static_cast<int64_t>(num_columns))
        reader.fail(std::string(roles[k]) + " column " + *names[k] +
                    " is out of range: the row has " + std::to_string(num_columns) + " columns");
      col[k] = index;
    }
  }
  if (col[0] == col[1]) throw DataError(options.path, 0, "the user and item columns are the same");

  LogBuilder builder;
  const bool has_category = col[2] >= 0;
  const bool has_time = col[3] >= 0;
  const int64_t none_category = has_category ? -1 : builder.categories().index("none");
  int64_t order = 0;
  const std::vector<std::string> header = options.header ? fields : std::vector<std::string>();
  auto consume = [&](const std::vector<std::string>& f) {
    if (f.size() != num_columns)
      reader.fail("expected " + std::to_string(num_columns) + " columns, got " + std::to_string(f.size()) +
                  " (line " + std::to_string(first_line) + (options.header ? ", the header" : ", the first row") +
                  ", has " + std::to_string(num_columns) + ")");
    // Two files concatenated: the second one's header would be read as an interaction.
    if (!header.empty() && f == header)
      reader.fail("a second header line (files concatenated?): remove it");
    const auto& user = f[col[0]];
    const auto& item = f[col[1]];
    if (user.empty()) reader.fail("empty user id");
    if (item.empty()) reader.fail("empty item id");
    check_id(reader, user, "user id");
    check_id(reader, item, "item id");
    int64_t time = order++;
    if (has_time && !parse_int64(f[col[3]], time))
      reader.fail("timestamp '" + f[col[3]] + "' is not an integer");
    int64_t category = none_category;
    if (has_category)
      category = f[col[2]].empty() ? kUnknownId : builder.categories().index(f[col[2]]);
    builder.add(user, item, category, time);
  };
  if (first_row_is_data) consume(fields);
  std::vector<std::string> row;
  while (reader.next(line)) {
    if (is_blank(line)) continue;
    split_csv(line, options.delimiter, reader, row);
    consume(row);
  }
  return builder.finish(options.path);
}

}  // namespace recsys::data

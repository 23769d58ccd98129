// MovieLens loader for the official GroupLens layouts (ml-100k, ml-1m, ml-latest*/ml-20m/ml-25m).
//
// Row assignment: users and items get rows in ascending order of their raw numeric id, counting
// only ids that occur in the ratings file (at any rating, so users without positives keep a row
// with an empty sequence). Sorting by id rather than by first appearance makes rows independent
// of the ratings file's order.
//
// Files are read whole and split by hand: ml-25m has 25M rating lines, and std::regex or an
// istream per field would take minutes instead of seconds.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "framework/data/retrieval_data.h"
#include "framework/util/errors.h"

namespace recsys::data {
namespace {

namespace fs = std::filesystem;

// Raw ids index dense lookup tables (a few bytes per id up to the largest id), so one malformed
// id would size them: ids at or above this limit are a DataError. Real MovieLens releases use ids
// below about 300,000, far under it; at the limit the tables take about 300 MiB in all.
constexpr int64_t kMaxRawId = int64_t{1} << 24;

struct FileBuffer {
  std::unique_ptr<char[]> data;
  size_t size = 0;
};

FileBuffer read_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw DataError(path, 0, "cannot open file");
  FileBuffer buf;
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  if (ec) {
    std::fclose(f);
    throw DataError(path, 0, "cannot read file size: " + ec.message());
  }
  buf.data.reset(new char[size + 1]);
  buf.size = std::fread(buf.data.get(), 1, size, f);
  bool failed = std::ferror(f) != 0 || buf.size != size;
  std::fclose(f);
  if (failed) throw DataError(path, 0, "cannot read file");
  return buf;
}

/// Iterates lines (without '\n' and a trailing '\r'), counting from 1; skips blank lines.
class LineReader {
 public:
  explicit LineReader(const FileBuffer& buf) : pos_(buf.data.get()), end_(pos_ + buf.size) {}

  bool next(std::string_view& line) {
    while (pos_ < end_) {
      const char* nl = static_cast<const char*>(std::memchr(pos_, '\n', end_ - pos_));
      const char* stop = nl ? nl : end_;
      const char* b = pos_;
      const char* e = stop;
      if (e > b && e[-1] == '\r') --e;
      pos_ = nl ? nl + 1 : end_;
      ++line_;
      // A UTF-8 byte order mark (spreadsheet exports) is not part of the first field.
      if (line_ == 1 && e - b >= 3 && std::memcmp(b, "\xEF\xBB\xBF", 3) == 0) b += 3;
      if (e == b) continue;
      line = std::string_view(b, e - b);
      return true;
    }
    return false;
  }
  long line_number() const { return line_; }

 private:
  const char* pos_;
  const char* end_;
  long line_ = 0;
};

/// Splits `line` on `sep` into `out`; returns the number of fields (which may exceed
/// out.size(), in which case the extra fields are not stored).
size_t split(std::string_view line, std::string_view sep, std::vector<std::string_view>& out) {
  size_t n = 0, start = 0;
  const size_t cap = out.size();
  while (true) {
    size_t p = sep.size() == 1 ? line.find(sep[0], start) : line.find(sep, start);
    std::string_view field = line.substr(start, p == std::string_view::npos ? p : p - start);
    if (n < cap) out[n] = field;
    ++n;
    if (p == std::string_view::npos) break;
    start = p + sep.size();
  }
  return n;
}

/// Splits one CSV record with RFC 4180 quoting ("a, b" and "" inside quotes); false when a
/// quote is unterminated or followed by something other than a separator.
bool split_csv(std::string_view line, std::vector<std::string>& out) {
  out.clear();
  size_t i = 0;
  while (true) {
    std::string field;
    if (i < line.size() && line[i] == '"') {
      ++i;
      while (true) {
        if (i >= line.size()) return false;
        if (line[i] == '"') {
          if (i + 1 < line.size() && line[i + 1] == '"') {
            field += '"';
            i += 2;
          } else {
            ++i;
            break;
          }
        } else {
          field += line[i++];
        }
      }
      if (i < line.size() && line[i] != ',') return false;
    } else {
      size_t p = line.find(',', i);
      size_t stop = p == std::string_view::npos ? line.size() : p;
      field.assign(line.substr(i, stop - i));
      i = stop;
    }
    out.push_back(std::move(field));
    if (i >= line.size()) return true;
    ++i;  // the comma
    if (i == line.size()) {
      out.emplace_back();
      return true;
    }
  }
}

std::string quoted(std::string_view s) { return "'" + std::string(s) + "'"; }

/// Parses a non-negative integer id that indexes the dense tables.
int64_t parse_id(std::string_view s, const char* what, const std::string& file, long line) {
  int64_t v = -1;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size())
    throw DataError(file, line, std::string(what) + " " + quoted(s) + " is not an integer");
  if (v < 0 || v >= kMaxRawId)
    throw DataError(file, line,
                    std::string(what) + " " + quoted(s) + " is outside [0, " +
                        std::to_string(kMaxRawId) + "), the loader's limit for MovieLens ids");
  return v;
}

int64_t parse_int(std::string_view s, const char* what, const std::string& file, long line) {
  int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size())
    throw DataError(file, line, std::string(what) + " " + quoted(s) + " is not an integer");
  return v;
}

double parse_double(std::string_view s, const char* what, const std::string& file, long line) {
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || p != s.data() + s.size())
    throw DataError(file, line, std::string(what) + " " + quoted(s) + " is not a number");
  if (!std::isfinite(v))
    throw DataError(file, line, std::string(what) + " " + quoted(s) + " is not finite");
  return v;
}

std::string latin1_to_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 8);
  for (unsigned char c : s) {
    if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      out += static_cast<char>(0xC0 | (c >> 6));
      out += static_cast<char>(0x80 | (c & 0x3F));
    }
  }
  return out;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

/// The year of a title ending in "(yyyy)" (trailing spaces allowed), or -1.
int64_t year_from_title(std::string_view title) {
  while (!title.empty() && (title.back() == ' ' || title.back() == '\t')) title.remove_suffix(1);
  if (title.size() < 6 || title.back() != ')') return -1;
  std::string_view y = title.substr(title.size() - 5, 4);
  if (title[title.size() - 6] != '(') return -1;
  for (char c : y)
    if (!is_digit(c)) return -1;
  return (y[0] - '0') * 1000 + (y[1] - '0') * 100 + (y[2] - '0') * 10 + (y[3] - '0');
}

struct Movie {
  std::string title;
  std::vector<std::string> genres;
  int64_t year = -1;  ///< -1 when unknown
};

struct User {
  int64_t age_group = -1;  ///< 0..6 in the ml-1m groups
  std::string gender, occupation;
};

/// A positive rating, in file order.
struct Positive {
  int32_t user;  ///< raw id
  int32_t item;  ///< raw id
  int64_t timestamp;
};

// ml-1m age codes, which also serve as the buckets for ml-100k's ages.
constexpr int64_t kAgeCodes[] = {1, 18, 25, 35, 45, 50, 56};
constexpr int64_t kNumAgeGroups = 7;

int64_t age_group_of_years(int64_t age) {
  int64_t g = 0;
  for (int64_t i = 1; i < kNumAgeGroups; ++i)
    if (age >= kAgeCodes[i]) g = i;
  return g;
}

int64_t age_group_of_code(int64_t code) {
  for (int64_t i = 0; i < kNumAgeGroups; ++i)
    if (kAgeCodes[i] == code) return i;
  return -1;
}

/// The entry of raw id `id` (< kMaxRawId), growing the table with `fill` to reach it.
template <typename T>
T& slot(std::vector<T>& table, int64_t id, T fill = T()) {
  if (id >= static_cast<int64_t>(table.size())) table.resize(static_cast<size_t>(id) + 1, fill);
  return table[static_cast<size_t>(id)];
}

constexpr int32_t kAbsent = -1;

/// The position of raw id `id` in its entry table, or kAbsent.
int32_t position_of(const std::vector<int32_t>& at, int64_t id) {
  return id < static_cast<int64_t>(at.size()) ? at[static_cast<size_t>(id)] : kAbsent;
}

/// The entry for a newly declared id, appended to `table` with its position recorded in `at`;
/// a second declaration of the same id is a data error. Entries are kept compact (only the
/// index by raw id spans the id range) so that a sparse id range costs 4 bytes per id, not a
/// whole entry.
template <typename T>
T& declare(std::vector<T>& table, std::vector<int32_t>& at, int64_t id, const char* what,
           const std::string& path, long ln) {
  int32_t& position = slot(at, id, kAbsent);
  if (position != kAbsent)
    throw DataError(path, ln, std::string("duplicate ") + what + " id " + std::to_string(id));
  position = static_cast<int32_t>(table.size());
  table.emplace_back();
  return table.back();
}

struct Parsed {
  std::string source;
  bool has_user_features = false;
  std::vector<Movie> movies;               ///< in file order
  std::vector<int32_t> movie_at;           ///< by raw id: position in movies, or kAbsent
  std::vector<User> users;                 ///< in file order (empty for the csv layout)
  std::vector<int32_t> user_at;            ///< by raw id: position in users, or kAbsent
  std::vector<char> user_seen, item_seen;  ///< by raw id: occurs in the ratings file
  std::vector<Positive> positives;
};

/// Calls `fn(fields, line_number)` for every line of a headerless file of `n_fields` fields
/// separated by `sep`; a line with another field count is a DataError naming file:line.
template <typename Fn>
void for_each_record(const std::string& path, std::string_view sep, size_t n_fields, Fn fn) {
  FileBuffer buf = read_file(path);
  LineReader lines(buf);
  std::string_view line;
  std::vector<std::string_view> f(n_fields);
  while (lines.next(line)) {
    const long ln = lines.line_number();
    size_t n = split(line, sep, f);
    if (n != n_fields)
      throw DataError(path, ln, "expected " + std::to_string(n_fields) + " '" + std::string(sep) +
                                    "'-separated fields, got " + std::to_string(n));
    fn(f, ln);
  }
}

// ---- item files ---------------------------------------------------------------------------

const char* const k100kGenres[] = {
    "unknown",     "Action", "Adventure", "Animation", "Children's", "Comedy",  "Crime",
    "Documentary", "Drama",  "Fantasy",   "Film-Noir", "Horror",     "Musical", "Mystery",
    "Romance",     "Sci-Fi", "Thriller",  "War",       "Western"};

void read_100k_items(const std::string& path, Parsed& out) {
  for_each_record(path, "|", 24, [&](const std::vector<std::string_view>& f, long ln) {
    int64_t id = parse_id(f[0], "movie id", path, ln);
    Movie& m = declare(out.movies, out.movie_at, id, "movie", path, ln);
    m.title = latin1_to_utf8(f[1]);
    // Release dates look like "01-Jan-1995" or "4-Feb-1971"; empty for one movie.
    std::string_view date = f[2];
    if (!date.empty()) {
      bool ok = date.size() >= 4;
      for (size_t i = 0; ok && i < 4; ++i) ok = is_digit(date[date.size() - 4 + i]);
      if (!ok)
        throw DataError(path, ln, "release date " + quoted(date) + " does not end in a year");
      m.year = parse_int(date.substr(date.size() - 4), "release year", path, ln);
    } else {
      m.year = year_from_title(m.title);
    }
    // Flag 0 ("unknown") means no genre; such movies get the default index, like ml-latest's
    // "(no genres listed)".
    for (int g = 0; g < 19; ++g) {
      std::string_view flag = f[5 + g];
      if (flag == "1") {
        if (g > 0) m.genres.emplace_back(k100kGenres[g]);
      } else if (flag != "0") {
        throw DataError(path, ln,
                        std::string("genre flag ") + k100kGenres[g] + " is " + quoted(flag) +
                            ", expected 0 or 1");
      }
    }
  });
}

void add_genres(std::string_view genres, Movie& m) {
  if (genres.empty() || genres == "(no genres listed)") return;
  size_t start = 0;
  while (true) {
    size_t p = genres.find('|', start);
    std::string_view g = genres.substr(start, p == std::string_view::npos ? p : p - start);
    if (!g.empty()) m.genres.emplace_back(g);
    if (p == std::string_view::npos) break;
    start = p + 1;
  }
}

void read_1m_items(const std::string& path, Parsed& out) {
  for_each_record(path, "::", 3, [&](const std::vector<std::string_view>& f, long ln) {
    int64_t id = parse_id(f[0], "movie id", path, ln);
    Movie& m = declare(out.movies, out.movie_at, id, "movie", path, ln);
    m.title = latin1_to_utf8(f[1]);
    m.year = year_from_title(m.title);
    add_genres(f[2], m);
  });
}

void read_csv_items(const std::string& path, Parsed& out) {
  FileBuffer buf = read_file(path);
  LineReader lines(buf);
  std::string_view line;
  std::vector<std::string> f;
  bool header = true;
  while (lines.next(line)) {
    const long ln = lines.line_number();
    if (header) {
      if (line.substr(0, 3) == "\xEF\xBB\xBF") line.remove_prefix(3);  // UTF-8 BOM
      if (line != "movieId,title,genres")
        throw DataError(path, ln,
                        "bad header " + quoted(line) + ", expected 'movieId,title,genres'");
      header = false;
      continue;
    }
    if (!split_csv(line, f)) throw DataError(path, ln, "unterminated or misplaced quote");
    if (f.size() != 3)
      throw DataError(path, ln,
                      "expected 3 comma-separated fields, got " + std::to_string(f.size()));
    int64_t id = parse_id(f[0], "movie id", path, ln);
    Movie& m = declare(out.movies, out.movie_at, id, "movie", path, ln);
    m.title = std::move(f[1]);
    m.year = year_from_title(m.title);
    add_genres(f[2], m);
  }
  if (header) throw DataError(path, 0, "empty file, expected header 'movieId,title,genres'");
}

// ---- user files ---------------------------------------------------------------------------

void read_100k_users(const std::string& path, Parsed& out) {
  for_each_record(path, "|", 5, [&](const std::vector<std::string_view>& f, long ln) {
    int64_t id = parse_id(f[0], "user id", path, ln);
    User& u = declare(out.users, out.user_at, id, "user", path, ln);
    const int64_t age = parse_int(f[1], "age", path, ln);
    if (age < 0) throw DataError(path, ln, "age " + quoted(f[1]) + " is negative");
    u.age_group = age_group_of_years(age);
    u.gender = latin1_to_utf8(f[2]);
    u.occupation = latin1_to_utf8(f[3]);
  });
}

void read_1m_users(const std::string& path, Parsed& out) {
  for_each_record(path, "::", 5, [&](const std::vector<std::string_view>& f, long ln) {
    int64_t id = parse_id(f[0], "user id", path, ln);
    User& u = declare(out.users, out.user_at, id, "user", path, ln);
    u.gender = latin1_to_utf8(f[1]);
    u.age_group = age_group_of_code(parse_int(f[2], "age code", path, ln));
    // Every ml-1m user has one of the 7 codes; another value means a shifted or corrupt row.
    if (u.age_group < 0)
      throw DataError(path, ln,
                      "age code " + quoted(f[2]) + " is not one of 1, 18, 25, 35, 45, 50, 56");
    parse_int(f[3], "occupation code", path, ln);
    u.occupation = std::string(f[3]);
  });
}

// ---- ratings ------------------------------------------------------------------------------

/// Parses the ratings file; `sep` is "\t", "::" or "," and `header` the expected first line
/// (empty when there is none).
void read_ratings(const std::string& path, std::string_view sep, std::string_view header,
                  double min_rating, Parsed& out) {
  FileBuffer buf = read_file(path);
  LineReader lines(buf);
  std::string_view line;
  std::vector<std::string_view> f(4);
  const bool check_users = out.has_user_features;
  const std::string sep_name = sep == "\t" ? "tab" : "'" + std::string(sep) + "'";
  bool expect_header = !header.empty();
  long header_line = 0;
  bool any_row = false;
  while (lines.next(line)) {
    const long ln = lines.line_number();
    if (expect_header) {
      if (line.substr(0, 3) == "\xEF\xBB\xBF") line.remove_prefix(3);
      if (line != header)
        throw DataError(path, ln, "bad header " + quoted(line) + ", expected " + quoted(header));
      expect_header = false;
      header_line = ln;
      continue;
    }
    any_row = true;
    size_t n = split(line, sep, f);
    if (n != 4)
      throw DataError(path, ln,
                      "expected 4 " + sep_name + "-separated fields, got " + std::to_string(n));
    int64_t user = parse_id(f[0], "user id", path, ln);
    int64_t item = parse_id(f[1], "movie id", path, ln);
    double rating = parse_double(f[2], "rating", path, ln);
    int64_t ts = parse_int(f[3], "timestamp", path, ln);
    // Releases rate 1..5 stars (ml-latest and later in half stars from 0.5); anything outside
    // [0, 5] is a shifted column or a corrupt row that min_rating would silently absorb.
    if (rating < 0 || rating > 5)
      throw DataError(path, ln, "rating " + quoted(f[2]) + " is outside [0, 5]");
    if (position_of(out.movie_at, item) == kAbsent)
      throw DataError(path, ln,
                      "unknown movie id " + std::to_string(item) + " (not in the movies file)");
    if (check_users && position_of(out.user_at, user) == kAbsent)
      throw DataError(path, ln,
                      "unknown user id " + std::to_string(user) + " (not in the users file)");
    slot(out.user_seen, user) = 1;
    slot(out.item_seen, item) = 1;
    if (rating >= min_rating)
      out.positives.push_back({static_cast<int32_t>(user), static_cast<int32_t>(item), ts});
  }
  if (expect_header) throw DataError(path, 0, "empty file, expected header " + quoted(header));
  // Said here, where the file is known: an empty corpus would otherwise fail later, in the task,
  // without naming it.
  if (!any_row) throw DataError(path, header_line, "no ratings (the file has no data rows)");
  // A (user, movie) pair rated twice (releases never repeat one; appended or merged files do)
  // would put one click in two places of the user's sequence, and possibly in training and test
  // at once. Found by sorting the positives' pairs; the line is looked up only then.
  std::vector<uint64_t> pairs(out.positives.size());
  for (size_t k = 0; k < pairs.size(); ++k)
    pairs[k] = (static_cast<uint64_t>(out.positives[k].user) << 32) | static_cast<uint32_t>(out.positives[k].item);
  std::sort(pairs.begin(), pairs.end());
  auto dup = std::adjacent_find(pairs.begin(), pairs.end());
  if (dup != pairs.end()) {
    const int64_t user = static_cast<int64_t>(*dup >> 32), item = static_cast<int64_t>(*dup & 0xffffffffu);
    // Every data row passed the checks above: the ids parse as they did then.
    LineReader again(buf);
    long seen = 0, second = 0;
    while (again.next(line) && second == 0) {
      const long ln = again.line_number();
      if (ln == header_line) continue;
      split(line, sep, f);
      if (parse_id(f[0], "user id", path, ln) == user && parse_id(f[1], "movie id", path, ln) == item &&
          ++seen == 2)
        second = ln;
    }
    throw DataError(path, second, "user " + std::to_string(user) + " rated movie " + std::to_string(item) +
                                      " more than once (a repeated or merged ratings file?)");
  }
}

// ---- assembly -----------------------------------------------------------------------------

/// Rows for the seen raw ids, ascending; returns raw id -> row (-1 when unseen) and fills `ids`.
/// (Rows are below kMaxRawId, so 4 bytes per raw id suffice.)
std::vector<int32_t> assign_rows(const std::vector<char>& seen, std::vector<int64_t>& ids) {
  std::vector<int32_t> row_of(seen.size(), -1);
  for (size_t id = 0; id < seen.size(); ++id)
    if (seen[id]) {
      row_of[id] = static_cast<int32_t>(ids.size());
      ids.push_back(static_cast<int64_t>(id));
    }
  return row_of;
}

FeatureSpec single(std::string name, int64_t vocab) {
  return FeatureSpec{std::move(name), FeatureKind::kSingle, vocab, 1};
}

RetrievalData assemble(Parsed& p, const MovieLensOptions& options) {
  RetrievalData data;
  data.source = p.source;

  std::vector<int64_t> user_ids, item_ids;
  std::vector<int32_t> user_row = assign_rows(p.user_seen, user_ids);
  std::vector<int32_t> item_row = assign_rows(p.item_seen, item_ids);
  const int64_t nu = static_cast<int64_t>(user_ids.size());
  const int64_t ni = static_cast<int64_t>(item_ids.size());

  // Users.
  data.users = FeatureTable(nu);
  for (int64_t r = 0; r < nu; ++r) data.user_keys.push_back(std::to_string(user_ids[r]));
  for (int64_t r = 0; r < ni; ++r) data.item_keys.push_back(std::to_string(item_ids[r]));
  {
    std::vector<std::vector<int64_t>> bags(nu);
    for (int64_t r = 0; r < nu; ++r) bags[r] = {r + kFirstIndex};
    data.users.add_categorical(single("user_id", nu + kFirstIndex), bags);
  }
  if (p.has_user_features) {
    std::vector<std::vector<int64_t>> age(nu), gender(nu), occupation(nu);
    Vocabulary gender_vocab, occupation_vocab;
    for (int64_t r = 0; r < nu; ++r) {
      const User& u = p.users[static_cast<size_t>(p.user_at[user_ids[r]])];
      age[r] = {u.age_group < 0 ? kDefaultIndex : u.age_group + kFirstIndex};
      gender[r] = {gender_vocab.add(u.gender)};
      occupation[r] = {occupation_vocab.add(u.occupation)};
    }
    data.users.add_categorical(single("age", kNumAgeGroups + kFirstIndex), age);
    data.users.add_categorical(single("gender", gender_vocab.size()), gender);
    data.users.add_categorical(single("occupation", occupation_vocab.size()), occupation);
  }

  // Items.
  data.items = FeatureTable(ni);
  data.item_names.resize(ni);
  {
    std::vector<std::vector<int64_t>> ids(ni), genres(ni), year(ni);
    Vocabulary genre_vocab;
    // ml-100k has a fixed genre list: index genres in its order rather than first appearance.
    if (p.source == "movielens:ml-100k")
      for (int g = 1; g < 19; ++g) genre_vocab.add(k100kGenres[g]);
    const int64_t bucket = options.year_bucket;
    int64_t min_b = 0, max_b = -1;
    bool any_year = false;
    int64_t longest = 1;
    for (int64_t r = 0; r < ni; ++r) {
      Movie& m = p.movies[static_cast<size_t>(p.movie_at[item_ids[r]])];
      ids[r] = {r + kFirstIndex};
      for (auto& g : m.genres) genres[r].push_back(genre_vocab.add(g));
      longest = std::max<int64_t>(longest, static_cast<int64_t>(m.genres.size()));
      if (m.year >= 0) {
        int64_t b = m.year / bucket;
        if (!any_year || b < min_b) min_b = b;
        if (!any_year || b > max_b) max_b = b;
        any_year = true;
      }
      data.item_names[r] = std::move(m.title);
    }
    // Buckets are contiguous from the earliest one, so neighbouring indices are neighbouring
    // periods even where a period has no movie.
    for (int64_t r = 0; r < ni; ++r) {
      const Movie& m = p.movies[static_cast<size_t>(p.movie_at[item_ids[r]])];
      year[r] = {m.year >= 0 ? m.year / bucket - min_b + kFirstIndex : kDefaultIndex};
    }
    data.items.add_categorical(single("item_id", ni + kFirstIndex), ids);
    data.items.add_categorical(
        FeatureSpec{"genres", FeatureKind::kMulti, genre_vocab.size(), longest}, genres);
    data.items.add_categorical(single("year", kFirstIndex + (any_year ? max_b - min_b + 1 : 0)),
                               year);
  }

  // Sequences: a stable counting sort by user keeps file order, then a stable sort by time.
  std::vector<int64_t> count(nu + 1, 0);
  for (const auto& pos : p.positives) ++count[user_row[pos.user] + 1];
  for (int64_t r = 0; r < nu; ++r) count[r + 1] += count[r];
  std::vector<int64_t> order(p.positives.size());
  {
    std::vector<int64_t> fill(count.begin(), count.end() - 1);
    for (size_t i = 0; i < p.positives.size(); ++i)
      order[fill[user_row[p.positives[i].user]]++] = static_cast<int64_t>(i);
  }
  data.sequences.resize(nu);
  for (int64_t r = 0; r < nu; ++r) {
    auto b = order.begin() + count[r], e = order.begin() + count[r + 1];
    std::stable_sort(b, e, [&](int64_t x, int64_t y) {
      return p.positives[x].timestamp < p.positives[y].timestamp;
    });
    auto& seq = data.sequences[r];
    seq.reserve(e - b);
    for (auto it = b; it != e; ++it) seq.push_back(item_row[p.positives[*it].item]);
  }
  return data;
}

std::string join(const fs::path& dir, const char* name) { return (dir / name).string(); }

void require_files(const fs::path& dir, std::initializer_list<const char*> names,
                   const char* layout) {
  for (const char* name : names)
    if (!fs::is_regular_file(dir / name)) {
      std::string all;
      for (const char* n : names) all += (all.empty() ? "" : ", ") + std::string(n);
      std::error_code ec;
      const char* what = fs::is_directory(dir / name, ec) ? "is a directory, not a file"
                         : fs::exists(dir / name, ec)     ? "is not a regular file"
                                                          : "missing file";
      throw DataError(join(dir, name), 0,
                      std::string(what) + " (the " + layout + " layout needs the files " + all + ")");
    }
}

}  // namespace

RetrievalData load_movielens(const MovieLensOptions& options) {
  if (options.year_bucket < 1)
    throw ConfigError("year_bucket",
                      "must be at least 1, got " + std::to_string(options.year_bucket));
  const fs::path dir(options.path);
  if (!fs::is_directory(dir)) {
    std::error_code ec;
    throw DataError(options.path, 0,
                    fs::exists(dir, ec) ? "is a file: data.path names the MovieLens directory (the one holding "
                                          "u.data, ratings.dat or ratings.csv)"
                                        : "MovieLens directory does not exist");
  }

  Parsed p;
  if (fs::exists(dir / "u.data")) {
    require_files(dir, {"u.data", "u.item", "u.user"}, "ml-100k");
    p.source = "movielens:ml-100k";
    p.has_user_features = true;
    read_100k_items(join(dir, "u.item"), p);
    read_100k_users(join(dir, "u.user"), p);
    read_ratings(join(dir, "u.data"), "\t", "", options.min_rating, p);
  } else if (fs::exists(dir / "ratings.dat")) {
    require_files(dir, {"ratings.dat", "movies.dat", "users.dat"}, "ml-1m");
    p.source = "movielens:ml-1m";
    p.has_user_features = true;
    read_1m_items(join(dir, "movies.dat"), p);
    read_1m_users(join(dir, "users.dat"), p);
    read_ratings(join(dir, "ratings.dat"), "::", "", options.min_rating, p);
  } else if (fs::exists(dir / "ratings.csv")) {
    require_files(dir, {"ratings.csv", "movies.csv"}, "ml-latest");
    p.source = "movielens:csv";
    read_csv_items(join(dir, "movies.csv"), p);
    read_ratings(join(dir, "ratings.csv"), ",", "userId,movieId,rating,timestamp",
                 options.min_rating, p);
  } else {
    throw DataError(options.path, 0,
                    "no MovieLens files found (expected u.data, ratings.dat or ratings.csv)");
  }
  return assemble(p, options);
}

}  // namespace recsys::data

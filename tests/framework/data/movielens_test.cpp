#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "framework/data/retrieval_data.h"
#include "framework/util/errors.h"
#include "support.h"

namespace {

using recsys::DataError;
using recsys::data::FeatureKind;
using recsys::data::FeatureTable;
using recsys::data::kDefaultIndex;
using recsys::data::load_movielens;
using recsys::data::MovieLensOptions;
using recsys::data::RetrievalData;
namespace fs = std::filesystem;

const std::string kFixtures = "tests/fixtures/movielens/";

RetrievalData load(const std::string& path, double min_rating = 4.0, int64_t year_bucket = 5) {
  MovieLensOptions o;
  o.path = path;
  o.min_rating = min_rating;
  o.year_bucket = year_bucket;
  return load_movielens(o);
}

std::vector<int64_t> bag(const FeatureTable& t, const std::string& name, int64_t row) {
  int64_t f = t.index_of(name);
  REQUIRE(f >= 0);
  auto [p, n] = t.bag(f, row);
  return std::vector<int64_t>(p, p + n);
}

int64_t vocab(const FeatureTable& t, const std::string& name) {
  int64_t f = t.index_of(name);
  REQUIRE(f >= 0);
  return t.spec(f).vocab_size;
}

using Seq = std::vector<int64_t>;

/// Copies a fixture layout into a fresh temp dir under the official file names. The committed
/// ml-100k files carry a ".fixture" suffix so that no file in the repository bears the name of a
/// licensed GroupLens file; they are hand-written.
fs::path fixture_copy(const std::string& layout, const std::string& test) {
  fs::path dir = recsys::testing::temp_dir("movielens_" + test);
  for (auto& entry : fs::directory_iterator(kFixtures + layout)) {
    fs::path name = entry.path().filename();
    if (name.extension() == ".fixture") name = name.stem();
    fs::copy_file(entry.path(), dir / name);
  }
  return dir;
}

std::string layout_dir(const std::string& layout) { return fixture_copy(layout, "layout_" + layout).string(); }

/// Copies a fixture layout into a fresh temp dir and overwrites one file with `content`.
fs::path broken_copy(const std::string& layout, const std::string& test, const std::string& file,
                     const std::string& content) {
  fs::path dir = fixture_copy(layout, test);
  std::ofstream(dir / file, std::ios::binary | std::ios::trunc) << content;
  return dir;
}

/// Loads `dir`, expecting a DataError at `file`:`line` whose message contains `text`.
void require_data_error(const fs::path& dir, const std::string& file, long line,
                        const std::string& text) {
  try {
    load(dir.string());
    FAIL("expected a DataError");
  } catch (const DataError& e) {
    INFO(e.what());
    CHECK(fs::path(e.file()).filename() == file);
    CHECK(e.line() == line);
    std::string expect_prefix =
        (dir / file).string() + (line > 0 ? ":" + std::to_string(line) : "");
    CHECK(std::string(e.what()).rfind(expect_prefix, 0) == 0);
    CHECK(std::string(e.what()).find(text) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("ml-100k fixture: tables, vocabularies and features", "[movielens]") {
  auto d = load(layout_dir("ml-100k"));
  CHECK(d.source == "movielens:ml-100k");
  // User 4 and movie 5 have no rating and are dropped.
  REQUIRE(d.num_users() == 3);
  REQUIRE(d.num_items() == 4);

  REQUIRE(d.users.num_features() == 4);
  CHECK(d.users.spec(0).name == "user_id");
  CHECK(d.users.spec(0).vocab_size == 5);
  CHECK(bag(d.users, "user_id", 2) == Seq{4});
  // Rows follow raw ids although user 2 is rated first: row 0 is user 1 (24, M, technician).
  CHECK(vocab(d.users, "age") == 9);
  CHECK(bag(d.users, "age", 0) == Seq{3});  // 24 -> 18-24
  CHECK(bag(d.users, "age", 1) == Seq{7});  // 53 -> 50-55
  CHECK(bag(d.users, "age", 2) == Seq{2});  // 17 -> under 18
  CHECK(vocab(d.users, "gender") == 4);
  CHECK(bag(d.users, "gender", 0) == Seq{2});
  CHECK(bag(d.users, "gender", 1) == Seq{3});
  CHECK(bag(d.users, "gender", 2) == Seq{2});
  CHECK(vocab(d.users, "occupation") == 5);
  CHECK(bag(d.users, "occupation", 2) == Seq{4});

  REQUIRE(d.items.num_features() == 3);
  CHECK(d.items.spec(0).name == "item_id");
  CHECK(d.items.spec(0).vocab_size == 6);
  CHECK(bag(d.items, "item_id", 3) == Seq{5});
  // Genres index the 18 real genres in the file's order: Action 2, Adventure 3 ... Western 19.
  int64_t g = d.items.index_of("genres");
  CHECK(d.items.spec(g).kind == FeatureKind::kMulti);
  CHECK(d.items.spec(g).vocab_size == 20);
  CHECK(d.items.spec(g).max_len == 3);
  CHECK(bag(d.items, "genres", 0) == Seq{2, 3});           // Action, Adventure
  CHECK(bag(d.items, "genres", 1) == Seq{6, 9});           // Comedy, Drama
  CHECK(bag(d.items, "genres", 2) == Seq{2, 16, 17});      // Action, Sci-Fi, Thriller
  CHECK(bag(d.items, "genres", 3) == Seq{kDefaultIndex});  // only the "unknown" flag
  // Years 1995, 1987 ("4-Feb-1987"), 1996, none; 5-year buckets from 1985-89: 1995-99 is index 4.
  CHECK(vocab(d.items, "year") == 5);
  CHECK(bag(d.items, "year", 0) == Seq{4});
  CHECK(bag(d.items, "year", 1) == Seq{2});
  CHECK(bag(d.items, "year", 2) == Seq{4});
  CHECK(bag(d.items, "year", 3) == Seq{kDefaultIndex});

  REQUIRE(d.item_names.size() == 4);
  CHECK(d.item_names[0] == "Alpha Film (1995)");
  CHECK(d.item_names[1] == "Caf\xC3\xA9 Story (1987)");  // latin-1 0xE9 -> UTF-8 "é"
}

TEST_CASE("ml-100k fixture: positives threshold and time order with ties", "[movielens]") {
  auto d = load(layout_dir("ml-100k"));
  REQUIRE(d.sequences.size() == 3);
  CHECK(d.sequences[0] == Seq{1, 0});  // movie 3 rated 3 is below 4
  // Movies 2 and 1 share timestamp 200: file order (2 before 1) is kept.
  CHECK(d.sequences[1] == Seq{3, 1, 0});
  CHECK(d.sequences[2].empty());  // user 3 only rated 2, still has a row

  auto all = load(layout_dir("ml-100k"), 0.0);
  CHECK(all.sequences[0] == Seq{1, 2, 0});
  CHECK(all.sequences[2] == Seq{2});
  auto fives = load(layout_dir("ml-100k"), 5.0);
  CHECK(fives.sequences[0] == Seq{0});
  CHECK(fives.sequences[1] == Seq{1});
}

TEST_CASE("ml-100k fixture: year bucket width", "[movielens]") {
  auto d = load(layout_dir("ml-100k"), 4.0, 10);  // 1980-89 -> 2, 1990-99 -> 3
  CHECK(vocab(d.items, "year") == 4);
  CHECK(bag(d.items, "year", 0) == Seq{3});
  CHECK(bag(d.items, "year", 1) == Seq{2});
  auto one = load(layout_dir("ml-100k"), 4.0, 1);  // 1987 .. 1996
  CHECK(vocab(one.items, "year") == 12);
  CHECK(bag(one.items, "year", 0) == Seq{10});
  CHECK_THROWS_AS(load(layout_dir("ml-100k"), 4.0, 0), recsys::ConfigError);
}

TEST_CASE("ml-1m fixture: tables, features and sequences", "[movielens]") {
  auto d = load(kFixtures + "ml-1m");
  CHECK(d.source == "movielens:ml-1m");
  REQUIRE(d.num_users() == 3);
  REQUIRE(d.num_items() == 4);  // movie 11 unrated
  CHECK(vocab(d.users, "user_id") == 5);
  CHECK(vocab(d.users, "age") == 9);
  CHECK(bag(d.users, "age", 0) == Seq{2});  // code 1
  CHECK(bag(d.users, "age", 1) == Seq{8});  // code 56
  CHECK(bag(d.users, "age", 2) == Seq{4});  // code 25
  CHECK(vocab(d.users, "gender") == 4);
  CHECK(bag(d.users, "gender", 0) == Seq{2});  // F
  CHECK(bag(d.users, "gender", 1) == Seq{3});  // M
  CHECK(vocab(d.users, "occupation") == 5);
  CHECK(bag(d.users, "occupation", 1) == Seq{3});

  // Movies 1, 2, 3, 10 -> rows 0..3; genres indexed in order of first appearance by row.
  CHECK(vocab(d.items, "item_id") == 6);
  CHECK(vocab(d.items, "genres") == 9);
  CHECK(d.items.spec(d.items.index_of("genres")).max_len == 3);
  CHECK(bag(d.items, "genres", 0) == Seq{2, 3, 4});  // Animation, Children's, Comedy
  CHECK(bag(d.items, "genres", 1) == Seq{5, 3, 6});  // Adventure, Children's, Fantasy
  CHECK(bag(d.items, "genres", 3) == Seq{8});        // Film-Noir
  // 1995, 1995, 1970, 1949 in 5-year buckets from 1945-49.
  CHECK(vocab(d.items, "year") == 13);
  CHECK(bag(d.items, "year", 0) == Seq{12});
  CHECK(bag(d.items, "year", 2) == Seq{7});
  CHECK(bag(d.items, "year", 3) == Seq{2});
  CHECK(d.item_names[3] == "Caf\xC3\xA9 Noir (1949)");

  CHECK(d.sequences[0] == Seq{1});        // movie 1 rated 3 excluded
  CHECK(d.sequences[1] == Seq{2, 3, 0});  // 3 @700, then 10 and 1 tied @800 in file order
  CHECK(d.sequences[2] == Seq{2});
}

TEST_CASE("ml-latest csv fixture: quoted titles, no-genre movies, sequences", "[movielens]") {
  auto d = load(kFixtures + "ml-latest-small");
  CHECK(d.source == "movielens:csv");
  REQUIRE(d.num_users() == 3);
  REQUIRE(d.num_items() == 4);  // movie 40 unrated
  REQUIRE(d.users.num_features() == 1);
  CHECK(d.users.spec(0).name == "user_id");
  CHECK(d.users.spec(0).vocab_size == 5);

  REQUIRE(d.item_names.size() == 4);
  CHECK(d.item_names[0] == "Toy Box (1995)");
  CHECK(d.item_names[1] == "American President, The (1995)");
  CHECK(d.item_names[2] == "Say \"Hello\", Again (2001)");
  CHECK(d.item_names[3] == "Untitled Thing");

  CHECK(vocab(d.items, "genres") == 9);
  CHECK(d.items.spec(d.items.index_of("genres")).max_len == 5);
  CHECK(bag(d.items, "genres", 0) == Seq{2, 3, 4, 5, 6});
  CHECK(bag(d.items, "genres", 1) == Seq{5, 7, 8});        // Comedy, Drama, Romance
  CHECK(bag(d.items, "genres", 3) == Seq{kDefaultIndex});  // (no genres listed)
  CHECK(vocab(d.items, "year") == 4);
  CHECK(bag(d.items, "year", 1) == Seq{2});
  CHECK(bag(d.items, "year", 2) == Seq{3});
  CHECK(bag(d.items, "year", 3) == Seq{kDefaultIndex});

  CHECK(d.sequences[0] == Seq{0, 1});  // half-star 4.5 counts; ordered by time, not file
  CHECK(d.sequences[1] == Seq{3, 0});  // 3.5 excluded; tie kept in file order
  CHECK(d.sequences[2].empty());
  auto lower = load(kFixtures + "ml-latest-small", 3.5);
  CHECK(lower.sequences[1] == Seq{2, 3, 0});
}

TEST_CASE("movielens csv accepts CRLF line endings", "[movielens]") {
  auto dir = broken_copy("ml-latest-small", "crlf", "ratings.csv",
                         "userId,movieId,rating,timestamp\r\n5,11,4.5,20\r\n5,1,4.0,10\r\n");
  auto d = load(dir.string());
  REQUIRE(d.num_users() == 1);
  CHECK(d.sequences[0] == Seq{0, 1});
}

TEST_CASE("movielens error: wrong field count names file and line", "[movielens]") {
  auto dir = broken_copy("ml-100k", "fields", "u.data", "1\t1\t5\t100\n1\t2\t4\t50\n2\t1\t4\n");
  require_data_error(dir, "u.data", 3, "expected 4 tab-separated fields, got 3");
}

TEST_CASE("movielens error: truncated last line", "[movielens]") {
  auto dir = broken_copy("ml-1m", "truncated", "ratings.dat", "1::2::5::978300760\n2::10::4");
  require_data_error(dir, "ratings.dat", 2, "expected 4 '::'-separated fields, got 3");
}

TEST_CASE("movielens error: wrong field count in the movies file", "[movielens]") {
  auto dir = broken_copy("ml-1m", "movie_fields", "movies.dat",
                         "1::Toy Box (1995)::Comedy\n2::Jumanji Two (1995)\n");
  require_data_error(dir, "movies.dat", 2, "expected 3 '::'-separated fields, got 2");
}

TEST_CASE("movielens error: non-numeric rating", "[movielens]") {
  auto dir =
      broken_copy("ml-latest-small", "rating", "ratings.csv",
                  "userId,movieId,rating,timestamp\n5,11,4.5,964982703\n5,1,good,964981247\n");
  require_data_error(dir, "ratings.csv", 3, "rating 'good' is not a number");
}

TEST_CASE("movielens error: non-numeric user id and timestamp", "[movielens]") {
  auto user = broken_copy("ml-100k", "user_id", "u.data", "1\t1\t5\t100\nx1\t2\t4\t50\n");
  require_data_error(user, "u.data", 2, "user id 'x1' is not an integer");
  auto ts = broken_copy("ml-100k", "timestamp", "u.data", "1\t1\t5\t100.5\n");
  require_data_error(ts, "u.data", 1, "timestamp '100.5' is not an integer");
}

TEST_CASE("movielens error: a (user, movie) pair rated twice names its second line", "[movielens]") {
  // Appended or merged files: one click would sit twice in the sequence (and could land in
  // training and test at once).
  auto dir = broken_copy("ml-100k", "duplicate_pair", "u.data", "1\t1\t5\t100\n1\t2\t4\t50\n1\t1\t5\t100\n");
  require_data_error(dir, "u.data", 3, "user 1 rated movie 1 more than once");
  // A pair rated twice below the positive threshold is no positive at all: accepted.
  auto low = broken_copy("ml-100k", "duplicate_low", "u.data", "1\t1\t1\t100\n1\t2\t4\t50\n1\t1\t1\t100\n");
  CHECK_NOTHROW(load(low.string()));
}

TEST_CASE("movielens headerless layouts strip a UTF-8 byte order mark", "[movielens]") {
  auto dir = broken_copy("ml-100k", "bom", "u.data", "\xEF\xBB\xBF" "1\t1\t5\t100\n1\t2\t4\t50\n");
  CHECK_NOTHROW(load(dir.string()));
}

TEST_CASE("movielens error: unknown movie id", "[movielens]") {
  auto dir = broken_copy("ml-1m", "unknown_movie", "ratings.dat",
                         "1::2::5::978300760\n1::99::3::978300700\n");
  require_data_error(dir, "ratings.dat", 2, "unknown movie id 99");
}

TEST_CASE("movielens error: unknown user id", "[movielens]") {
  auto dir = broken_copy("ml-100k", "unknown_user", "u.data", "1\t1\t5\t100\n8\t1\t5\t100\n");
  require_data_error(dir, "u.data", 2, "unknown user id 8");
}

TEST_CASE("movielens error: bad csv header", "[movielens]") {
  auto dir = broken_copy("ml-latest-small", "header", "ratings.csv", "5,11,4.5,964982703\n");
  require_data_error(dir, "ratings.csv", 1, "bad header '5,11,4.5,964982703'");
}

TEST_CASE("movielens error: unterminated quote in movies.csv", "[movielens]") {
  auto dir = broken_copy("ml-latest-small", "quote", "movies.csv",
                         "movieId,title,genres\n1,\"Toy Box (1995),Comedy\n");
  require_data_error(dir, "movies.csv", 2, "quote");
}

TEST_CASE("movielens error: bad genre flag in u.item", "[movielens]") {
  auto dir = broken_copy("ml-100k", "flag", "u.item",
                         "1|A (1995)|01-Jan-1995||u|0|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|x\n");
  require_data_error(dir, "u.item", 1, "genre flag Western is 'x'");
}

TEST_CASE("movielens error: missing directory", "[movielens]") {
  fs::path dir = recsys::testing::temp_dir("movielens_missing") / "nowhere";
  try {
    load(dir.string());
    FAIL("expected a DataError");
  } catch (const DataError& e) {
    CHECK(e.file() == dir.string());
    CHECK(e.line() == 0);
    CHECK(std::string(e.what()).find("does not exist") != std::string::npos);
  }
}

TEST_CASE("movielens error: directory without MovieLens files", "[movielens]") {
  fs::path dir = recsys::testing::temp_dir("movielens_empty");
  try {
    load(dir.string());
    FAIL("expected a DataError");
  } catch (const DataError& e) {
    CHECK(e.line() == 0);
    CHECK(std::string(e.what()) ==
          dir.string() +
              ": no MovieLens files found (expected u.data, ratings.dat or ratings.csv)");
  }
}

TEST_CASE("movielens error: missing companion file", "[movielens]") {
  fs::path dir = recsys::testing::temp_dir("movielens_companion");
  fs::copy_file(kFixtures + "ml-1m/ratings.dat", dir / "ratings.dat");
  fs::copy_file(kFixtures + "ml-1m/users.dat", dir / "users.dat");
  require_data_error(dir, "movies.dat", 0, "missing file");
  // A directory where the file should be, and a file given as data.path, are named as such.
  fs::create_directories(dir / "movies.dat");
  require_data_error(dir, "movies.dat", 0, "is a directory, not a file");
  try {
    load((dir / "ratings.dat").string());
    FAIL("expected a DataError");
  } catch (const DataError& e) {
    CHECK(std::string(e.what()).find("is a file: data.path names the MovieLens directory") != std::string::npos);
  }
}

TEST_CASE("movielens real ml-100k", "[movielens]") {
  std::string dir = recsys::testing::shared_data("movielens-100k");
  if (!fs::exists(fs::path(dir) / "u.data")) {
    WARN("skipped: " << dir << " absent");
    return;
  }
  auto t0 = std::chrono::steady_clock::now();
  auto all = load(dir, 0.0);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN("ml-100k loaded in " << secs * 1000 << " ms");
  CHECK(all.num_users() == 943);
  CHECK(all.num_items() == 1682);
  CHECK(all.users.num_features() == 4);
  int64_t total = 0;
  for (auto& s : all.sequences) total += static_cast<int64_t>(s.size());
  CHECK(total == 100000);
  // Every user of ml-100k rated at least 20 movies.
  for (auto& s : all.sequences) CHECK(s.size() >= 20);

  auto pos = load(dir, 4.0);
  total = 0;
  for (auto& s : pos.sequences) total += static_cast<int64_t>(s.size());
  CHECK(total == 55375);  // ratings of 4 or 5 in u.data
  // Row 0 is movie id 1; movie 267 has no date and title "unknown" -> default year.
  CHECK(pos.item_names[0] == "Toy Story (1995)");
  CHECK(bag(pos.items, "year", 266) == Seq{kDefaultIndex});
}

TEST_CASE("movielens error: an id at the loader's limit names file and line", "[movielens]") {
  // The dense lookup tables span the id range: an id at 2^24 or above is refused before anything
  // is sized by it (the old limit of 2^30 let one line allocate tens of GB).
  auto dir = broken_copy("ml-latest-small", "id_limit", "ratings.csv",
                         "userId,movieId,rating,timestamp\n5,11,4.5,10\n16777216,1,4.0,20\n");
  require_data_error(dir, "ratings.csv", 3, "user id '16777216' is outside [0, 16777216)");
  auto movies = broken_copy("ml-1m", "id_limit_movie", "ratings.dat",
                            "1::2::5::978300760\n1::99999999::3::978300700\n");
  require_data_error(movies, "ratings.dat", 2, "movie id '99999999' is outside [0, 16777216)");
  // Just below the limit is still an id.
  auto below = broken_copy("ml-latest-small", "id_below_limit", "ratings.csv",
                           "userId,movieId,rating,timestamp\n16777215,1,4.0,20\n");
  auto d = load(below.string());
  REQUIRE(d.num_users() == 1);
  CHECK(bag(d.users, "user_id", 0) == Seq{2});
  CHECK(d.sequences[0] == Seq{0});
}

TEST_CASE("movielens error: a ratings file without ratings names the file", "[movielens]") {
  auto empty = broken_copy("ml-100k", "no_ratings", "u.data", "");
  require_data_error(empty, "u.data", 0, "no ratings");
  auto blank = broken_copy("ml-1m", "no_ratings_blank", "ratings.dat", "\n\n");
  require_data_error(blank, "ratings.dat", 0, "no ratings");
  auto header_only = broken_copy("ml-latest-small", "no_ratings_header", "ratings.csv",
                                 "userId,movieId,rating,timestamp\n");
  require_data_error(header_only, "ratings.csv", 1, "no ratings");
}

TEST_CASE("movielens error: ages and ratings out of range", "[movielens]") {
  auto code = broken_copy("ml-1m", "age_code", "users.dat",
                          "1::F::1::10::48067\n2::M::30::16::70072\n3::M::25::15::55117\n");
  require_data_error(code, "users.dat", 2, "age code '30' is not one of 1, 18, 25, 35, 45, 50, 56");
  auto age = broken_copy("ml-100k", "negative_age", "u.user",
                         "1|24|M|technician|85711\n2|-3|F|other|94043\n3|17|M|student|32067\n");
  require_data_error(age, "u.user", 2, "age '-3' is negative");
  auto rating = broken_copy("ml-100k", "rating_range", "u.data", "1\t1\t5\t100\n1\t2\t45\t50\n");
  require_data_error(rating, "u.data", 2, "rating '45' is outside [0, 5]");
  auto negative = broken_copy("ml-latest-small", "rating_negative", "ratings.csv",
                              "userId,movieId,rating,timestamp\n5,11,-0.5,10\n");
  require_data_error(negative, "ratings.csv", 2, "rating '-0.5' is outside [0, 5]");
  // The ends of the range are ratings.
  auto ends = broken_copy("ml-latest-small", "rating_ends", "ratings.csv",
                          "userId,movieId,rating,timestamp\n5,11,0,10\n5,1,5,20\n");
  auto d = load(ends.string());
  CHECK(d.sequences[0] == Seq{0});
}

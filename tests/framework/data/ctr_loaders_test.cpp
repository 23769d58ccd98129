#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "framework/data/ctr_data.h"
#include "framework/util/errors.h"
#include "support.h"

using namespace recsys::data;

namespace {

const std::string kDir = "tests/fixtures/ctr/";

/// The raw item ids of user `name`'s sequence, in time order.
std::vector<std::string> items_of(const InteractionLog& log, const std::string& name) {
  for (int64_t u = 0; u < log.num_users; ++u)
    if (log.user_names[u] == name) {
      std::vector<std::string> out;
      for (auto i : log.user_items[u]) out.push_back(log.item_names[i]);
      return out;
    }
  FAIL("no user " << name);
  return {};
}

std::string category_of(const InteractionLog& log, const std::string& item) {
  for (int64_t i = 0; i < log.num_items; ++i)
    if (log.item_names[i] == item) return log.category_names[log.item_category[i]];
  FAIL("no item " << item);
  return {};
}

template <class F>
std::string data_error_of(F&& f) {
  try {
    f();
  } catch (const recsys::DataError& e) {
    return e.what();
  }
  return "<no DataError thrown>";
}

void require_contains(const std::string& text, const std::string& part) {
  INFO("message: " << text << "\nexpected to contain: " << part);
  REQUIRE(text.find(part) != std::string::npos);
}

/// Writes `content` (bytes as given) to `name` in a fresh temp dir for `test`; returns its path.
std::string write_temp(const std::string& test, const std::string& name, const std::string& content) {
  auto path = recsys::testing::temp_dir("ctr_loaders_" + test) / name;
  std::ofstream(path, std::ios::binary) << content;
  return path.string();
}

void check_shapes(const InteractionLog& log) {
  REQUIRE(static_cast<int64_t>(log.item_category.size()) == log.num_items);
  REQUIRE(static_cast<int64_t>(log.item_names.size()) == log.num_items);
  REQUIRE(static_cast<int64_t>(log.category_names.size()) == log.num_categories);
  REQUIRE(static_cast<int64_t>(log.user_items.size()) == log.num_users);
  REQUIRE(static_cast<int64_t>(log.user_names.size()) == log.num_users);
  REQUIRE(log.user_items[0].empty());
  REQUIRE(log.user_items[1].empty());
  REQUIRE(log.item_category[0] == 0);
  for (int64_t u = 0; u < log.num_users; ++u) {
    REQUIRE(log.user_times[u].size() == log.user_items[u].size());
    REQUIRE(std::is_sorted(log.user_times[u].begin(), log.user_times[u].end()));
    for (auto i : log.user_items[u]) REQUIRE((i >= kFirstId && i < log.num_items));
  }
}

}  // namespace

TEST_CASE("load_taobao reads, maps and time-sorts every behaviour", "[ctr]") {
  auto log = load_taobao(kDir + "taobao.csv");
  check_shapes(log);
  REQUIRE(log.num_users == 3 + 2);
  REQUIRE(log.num_items == 6 + 2);
  REQUIRE(log.num_categories == 4 + 2);
  REQUIRE(log.num_interactions() == 7);
  REQUIRE(items_of(log, "1") == std::vector<std::string>{"101", "100", "102"});  // by timestamp
  REQUIRE(items_of(log, "2") == std::vector<std::string>{"100", "103", "104"});  // stable on ties
  REQUIRE(log.user_names[2] == "1");  // users are numbered in order of first appearance
  REQUIRE(log.user_times[2] == std::vector<int64_t>{999, 1000, 1002});
  REQUIRE(category_of(log, "102") == "11");
  REQUIRE(log.item_names[0] == "<pad>");
  REQUIRE(log.item_names[1] == "<unk>");
}

TEST_CASE("load_taobao keeps only the listed behaviours", "[ctr]") {
  auto log = load_taobao(kDir + "taobao.csv", {"pv"});
  check_shapes(log);
  REQUIRE(log.num_interactions() == 4);
  REQUIRE(log.num_items == 3 + 2);
  REQUIRE(items_of(log, "2") == std::vector<std::string>{"100", "104"});
  require_contains(data_error_of([] { load_taobao(kDir + "taobao.csv", {"click"}); }),
                   "no row has a behavior in {click}");
}

TEST_CASE("load_taobao reports malformed rows with file:line", "[ctr]") {
  require_contains(data_error_of([] { load_taobao(kDir + "taobao_bad_columns.csv"); }),
                   "taobao_bad_columns.csv:2: expected 5 columns");
  require_contains(data_error_of([] { load_taobao(kDir + "taobao_bad_time.csv"); }),
                   "taobao_bad_time.csv:3: timestamp '12x' is not an integer");
  require_contains(data_error_of([] { load_taobao(kDir + "empty.csv"); }), "empty.csv: empty file");
  require_contains(data_error_of([] { load_taobao(kDir + "does_not_exist.csv"); }),
                   "cannot open file");
}

TEST_CASE("load_amazon with JSON meta", "[ctr]") {
  auto log = load_amazon(kDir + "amazon_reviews.json", kDir + "amazon_meta.json");
  check_shapes(log);
  REQUIRE(log.num_users == 2 + 2);
  REQUIRE(log.num_items == 3 + 2);  // B99 appears only in meta
  REQUIRE(items_of(log, "A1") == std::vector<std::string>{"B02", "B01"});
  REQUIRE(items_of(log, "A2") == std::vector<std::string>{"B01", "B03"});
  REQUIRE(category_of(log, "B01") == "Mystery");  // last of the first list
  REQUIRE(category_of(log, "B02") == "Nonfiction");
  REQUIRE(category_of(log, "B03") == "<unk>");  // no categories in meta
}

TEST_CASE("load_amazon with python-literal meta", "[ctr]") {
  auto log = load_amazon(kDir + "amazon_reviews.json", kDir + "amazon_meta_python.txt");
  check_shapes(log);
  REQUIRE(category_of(log, "B01") == "Mystery");
  REQUIRE(category_of(log, "B02") == "Kids' \"Nonfiction\"");
  REQUIRE(category_of(log, "B03") == "<unk>");  // empty first list
}

TEST_CASE("load_amazon reports malformed rows with file:line", "[ctr]") {
  require_contains(data_error_of([] {
                     load_amazon(kDir + "amazon_reviews_bad.json", kDir + "amazon_meta.json");
                   }),
                   "amazon_reviews_bad.json:2: field 'unixReviewTime' must be an integer");
  require_contains(
      data_error_of([] { load_amazon(kDir + "taobao.csv", kDir + "amazon_meta.json"); }),
      "taobao.csv:1: not a JSON object");
  require_contains(
      data_error_of([] { load_amazon(kDir + "amazon_reviews.json", kDir + "taobao.csv"); }),
      "taobao.csv:1: not a JSON object nor a python dict literal");
  require_contains(
      data_error_of([] { load_amazon(kDir + "empty.csv", kDir + "amazon_meta.json"); }),
      "empty file");
  // A meta file that gives none of the reviewed items a category: another category's file.
  const auto other_meta =
      write_temp("amazon_other_meta", "meta.json", "{\"asin\": \"ZZZ1\", \"categories\": [[\"Books\"]]}\n");
  require_contains(data_error_of([&] { load_amazon(kDir + "amazon_reviews.json", other_meta); }),
                   "meta.json: none of the");
}

TEST_CASE("load_interactions_csv with a header and column names", "[ctr]") {
  CsvOptions o;
  o.path = kDir + "csv_header.csv";
  o.user = "user_id";
  o.item = "movie";
  o.category = "genre";
  o.timestamp = "ts";
  auto log = load_interactions_csv(o);
  check_shapes(log);
  REQUIRE(log.num_users == 2 + 2);
  REQUIRE(log.num_items == 2 + 2);
  REQUIRE(log.num_categories == 2 + 2);
  REQUIRE(items_of(log, "u1") == std::vector<std::string>{"m2", "m1"});
  REQUIRE(category_of(log, "m2") == "g2");
}

TEST_CASE("load_interactions_csv without a header, by column index", "[ctr]") {
  CsvOptions o;
  o.path = kDir + "csv_noheader.csv";
  o.delimiter = ';';
  o.header = false;
  o.timestamp = "0";
  o.user = "1";
  o.item = "2";
  auto log = load_interactions_csv(o);
  check_shapes(log);
  REQUIRE(log.num_interactions() == 4);
  REQUIRE(items_of(log, "u1") == std::vector<std::string>{"m2", "m1"});
  REQUIRE(items_of(log, "u2") == std::vector<std::string>{"m1", "m3"});
  REQUIRE(log.num_categories == 3);
  for (int64_t i = kFirstId; i < log.num_items; ++i) REQUIRE(log.item_category[i] == 2);
  o.item = "x";
  require_contains(data_error_of([&] { load_interactions_csv(o); }),
                   "must be a 0-based column index");
  o.item = "3";
  require_contains(data_error_of([&] { load_interactions_csv(o); }),
                   "csv_noheader.csv:1: item column 3 is out of range");
}

TEST_CASE("load_interactions_csv handles quoted fields and CRLF", "[ctr]") {
  CsvOptions o;
  o.path = kDir + "csv_quoted.csv";
  o.user = "user";
  o.item = "item";
  o.category = "category";
  o.timestamp = "time";
  auto log = load_interactions_csv(o);
  check_shapes(log);
  REQUIRE(items_of(log, "Smith, J.") == std::vector<std::string>{"i,2", "i1"});
  REQUIRE(items_of(log, "bob") == std::vector<std::string>{"i1"});
  REQUIRE(category_of(log, "i1") == "cat \"a\"");
  REQUIRE(category_of(log, "i,2") == "cat b");
}

TEST_CASE("load_interactions_csv without timestamp and category keeps file order", "[ctr]") {
  CsvOptions o;
  o.path = kDir + "csv_minimal.csv";
  o.user = "user";
  o.item = "item";
  auto log = load_interactions_csv(o);
  check_shapes(log);
  REQUIRE(items_of(log, "u1") == std::vector<std::string>{"i3", "i1", "i2"});
  REQUIRE(log.num_categories == 3);
  REQUIRE(log.category_names[2] == "none");
  for (int64_t i = kFirstId; i < log.num_items; ++i) REQUIRE(log.item_category[i] == 2);
}

TEST_CASE("load_interactions_csv errors name the file, line and fix", "[ctr]") {
  CsvOptions o;
  o.path = kDir + "csv_header.csv";
  o.user = "user_id";
  o.item = "item";
  auto msg = data_error_of([&] { load_interactions_csv(o); });
  require_contains(msg, "csv_header.csv:1: item column 'item' is not in the header");
  require_contains(msg, "known columns: 'user_id', 'movie', 'genre', 'ts', 'rating'");

  o.path = kDir + "csv_bad_row.csv";
  o.user = "user";
  o.item = "item";
  o.timestamp = "time";
  require_contains(data_error_of([&] { load_interactions_csv(o); }),
                   "csv_bad_row.csv:3: expected 3 columns, got 2 (line 1, the header, has 3)");
  // Without a header the first row sets the count: a short first row is named as the reference.
  CsvOptions by_index;
  by_index.header = false;
  by_index.user = "0";
  by_index.item = "1";
  by_index.path = write_temp("csv_short_first", "c.csv", "u1,i1\nu2,i2,c2\n");
  require_contains(data_error_of([&] { load_interactions_csv(by_index); }),
                   "c.csv:2: expected 2 columns, got 3 (line 1, the first row, has 2)");
  o.path = kDir + "empty.csv";
  require_contains(data_error_of([&] { load_interactions_csv(o); }), "empty.csv: empty file");
}

TEST_CASE("ids with blanks or quotes, repeated headers and twice-named columns are refused", "[ctr]") {
  // " 1" and "1" would be two users, a concatenated file's second header an interaction, and a
  // column named twice resolved to either silently.
  require_contains(data_error_of([] {
                     load_taobao(write_temp("spaced_id", "t.csv", "1,2,3,pv,100\n 1,2,3,pv,101\n"));
                   }),
                   "t.csv:2: user id ' 1' has blanks or quotes around it");
  require_contains(data_error_of([] {
                     load_taobao(write_temp("quoted_id", "t.csv", "1,2,3,pv,100\n1,\"2\",3,pv,101\n"));
                   }),
                   "t.csv:2: item id '\"2\"' has blanks or quotes around it");
  CsvOptions o;
  o.user = "user";
  o.item = "item";
  o.category = "cat";
  o.path = write_temp("csv_second_header", "c.csv", "user,item,cat\nu1,i1,c1\nuser,item,cat\nu2,i2,c2\n");
  require_contains(data_error_of([&] { load_interactions_csv(o); }), "c.csv:3: a second header line");
  o.path = write_temp("csv_twice_named", "c.csv", "user,item,cat,cat\nu1,i1,c1,c2\n");
  require_contains(data_error_of([&] { load_interactions_csv(o); }),
                   "c.csv:1: category column 'cat' appears twice in the header (columns 2 and 3");
  o.path = write_temp("csv_spaced", "c.csv", "user,item,cat\nu1, i1,c1\n");
  require_contains(data_error_of([&] { load_interactions_csv(o); }), "c.csv:2: item id ' i1' has blanks");
  // A quoted field is unquoted by the CSV reader: the id inside is bare.
  o.path = write_temp("csv_quoted", "c.csv", "user,item,cat\n\"u1\",i1,c1\nu1,i2,c1\n");
  auto log = load_interactions_csv(o);
  CHECK(log.num_users == kFirstId + 1);
}

TEST_CASE("filter_min_count drops short users and renumbers the rest", "[ctr]") {
  auto log = load_taobao(kDir + "taobao.csv");
  filter_min_count(log, 2);
  check_shapes(log);
  REQUIRE(log.num_users == 2 + 2);
  REQUIRE(log.user_names[2] == "1");
  REQUIRE(log.user_names[3] == "2");
  REQUIRE(log.num_interactions() == 6);
  REQUIRE(log.num_items == 6 + 2);  // item vocabulary unchanged
}

TEST_CASE("load_taobao on the shared UserBehavior sample", "[ctr]") {
  auto path = recsys::testing::shared_data("taobao-userbehavior-sample/UserBehavior_head.csv");
  if (!std::filesystem::exists(path)) {
    WARN("skipped: " << path << " absent");
    return;
  }
  auto log = load_taobao(path);
  check_shapes(log);
  // Figures of "This copy" in SOURCE.md (the first 490 users of the 814-user file).
  REQUIRE(log.num_interactions() == 52322);
  REQUIRE(log.num_users == 490 + 2);
  REQUIRE(log.num_items == 35711 + 2);
  REQUIRE(log.num_categories == 2362 + 2);
  auto buys = load_taobao(path, {"buy"});
  REQUIRE(buys.num_interactions() == 1107);
  int64_t shortest = 1 << 30, longest = 0;
  for (int64_t u = kFirstId; u < log.num_users; ++u) {
    shortest = std::min<int64_t>(shortest, log.user_items[u].size());
    longest = std::max<int64_t>(longest, log.user_items[u].size());
  }
  REQUIRE(shortest == 4);
  REQUIRE(longest == 539);
}

TEST_CASE("load_taobao rejects an unknown behavior before filtering, with file:line", "[ctr]") {
  // Upper case, empty, and swapped columns (the category where the behavior belongs).
  const std::vector<std::pair<std::string, std::string>> rows{
      {"1,101,10,PV,1001", "'PV'"}, {"1,101,10,,1001", "''"}, {"1,101,pv,10,1001", "'10'"}};
  for (const auto& [row, shown] : rows) {
    INFO(row);
    auto path = write_temp("behavior", "log.csv", "1,100,10,pv,1000\n" + row + "\n");
    const std::string expected = "log.csv:2: behavior " + shown + " is not one of pv, buy, cart, fav";
    require_contains(data_error_of([&] { load_taobao(path); }), expected);
    // Also when the user's filter would have dropped the row anyway.
    require_contains(data_error_of([&] { load_taobao(path, {"buy"}); }), expected);
  }
}

TEST_CASE("the line reader strips a UTF-8 BOM from the first line", "[ctr]") {
  const std::string bom = "\xEF\xBB\xBF";
  auto taobao = write_temp("bom_taobao", "log.csv", bom + "1,100,10,pv,1000\n1,101,10,pv,1001\n");
  auto log = load_taobao(taobao);
  REQUIRE(log.num_users == 1 + 2);  // the BOM is not part of the first user id
  REQUIRE(items_of(log, "1") == std::vector<std::string>{"100", "101"});

  CsvOptions o;
  o.path = write_temp("bom_csv", "log.csv", bom + "user,item\r\nu1,i1\r\nu1,i2\r\n");
  o.user = "user";
  o.item = "item";
  REQUIRE(items_of(load_interactions_csv(o), "u1") == std::vector<std::string>{"i1", "i2"});

  auto reviews = write_temp("bom_amazon", "reviews.json",
                            bom + R"({"reviewerID": "A1", "asin": "B01", "unixReviewTime": 1})" + "\n");
  REQUIRE(items_of(load_amazon(reviews, kDir + "amazon_meta.json"), "A1") == std::vector<std::string>{"B01"});
}

TEST_CASE("load_amazon rejects out-of-range times and empty ids with file:line", "[ctr]") {
  const std::string good = R"({"reviewerID": "A1", "asin": "B01", "unixReviewTime": 1300000000})";
  auto huge = write_temp(
      "amazon_time", "reviews.json",
      good + "\n" + R"({"reviewerID": "A2", "asin": "B01", "unixReviewTime": 18446744073709551615})" + "\n");
  require_contains(data_error_of([&] { load_amazon(huge, kDir + "amazon_meta.json"); }),
                   "reviews.json:2: field 'unixReviewTime' is out of range");
  auto user = write_temp("amazon_user", "reviews.json",
                         good + "\n" + R"({"reviewerID": "", "asin": "B01", "unixReviewTime": 1})" + "\n");
  require_contains(data_error_of([&] { load_amazon(user, kDir + "amazon_meta.json"); }),
                   "reviews.json:2: empty 'reviewerID'");
  auto item = write_temp("amazon_item", "reviews.json",
                         R"({"reviewerID": "A1", "asin": "", "unixReviewTime": 1})"
                         "\n");
  require_contains(data_error_of([&] { load_amazon(item, kDir + "amazon_meta.json"); }),
                   "reviews.json:1: empty 'asin'");
  // INT64_MAX itself is still a time.
  auto max = write_temp("amazon_time_max", "reviews.json",
                        R"({"reviewerID": "A1", "asin": "B01", "unixReviewTime": 9223372036854775807})"
                        "\n");
  auto log = load_amazon(max, kDir + "amazon_meta.json");
  REQUIRE(log.user_times[2] == std::vector<int64_t>{INT64_MAX});
}

TEST_CASE("a directory given as a data file is named as such", "[ctr]") {
  auto dir = recsys::testing::temp_dir("ctr_loaders_directory").string();
  const std::string expected = dir + ": is a directory, not a regular file";
  require_contains(data_error_of([&] { load_taobao(dir); }), expected);
  require_contains(data_error_of([&] { load_amazon(dir, kDir + "amazon_meta.json"); }), expected);
  require_contains(data_error_of([&] { load_amazon(kDir + "amazon_reviews.json", dir); }), expected);
  CsvOptions o;
  o.path = dir;
  o.user = "user";
  o.item = "item";
  require_contains(data_error_of([&] { load_interactions_csv(o); }), expected);
}

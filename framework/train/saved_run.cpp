#include "framework/train/saved_run.h"

#include <spdlog/spdlog.h>

#include <charconv>
#include <cstring>
#include <fstream>

#include "framework/config/config.h"
#include "framework/train/run_dir.h"
#include "framework/train/trainer.h"
#include "framework/util/errors.h"

namespace recsys::train {

namespace fs = std::filesystem;

namespace {

/// The part of "a.b.c=VALUE" before the '='.
std::string override_key(const std::string& assignment) {
  const auto eq = assignment.find('=');
  return eq == std::string::npos ? assignment : assignment.substr(0, eq);
}

/// Keys an evaluation may change: none of them touches the split or the model. The data files
/// may have moved (relative paths, another machine); a different corpus in their place would
/// fail the checkpoint's shape checks unless its vocabularies had the very same sizes.
bool may_change(const std::string& key) {
  return key.rfind("eval.", 0) == 0 || key == "train.device" || key == "train.threads" ||
         key == "data.path" || key == "data.reviews" || key == "data.meta";
}

}  // namespace

void check_split(const std::string& split) {
  if (split != "valid" && split != "test")
    throw UsageError("--split must be 'valid' or 'test', got '" + split + "'");
}

void check_output_path(const fs::path& out, const fs::path& checkpoint) {
  std::error_code ec;
  const auto target = fs::weakly_canonical(fs::absolute(out), ec);
  if (fs::equivalent(out, checkpoint, ec))
    throw UsageError("--out '" + out.string() + "' is the checkpoint being read");
  const auto parent = target.parent_path();
  if (parent.filename() == "checkpoints")
    throw UsageError("--out '" + out.string() + "' lies in a checkpoints directory: choose another path");
  const auto name = target.filename().string();
  for (const char* saved : {"config.json", "results.json", "metrics.jsonl", "log.txt"})
    if (name == saved && RunDir::holds_run(parent))
      throw UsageError("--out '" + out.string() + "' would replace the " + name + " of the run in " +
                       parent.string() + ": choose another path");
}

fs::path default_export_dir(const std::string& target, const fs::path& checkpoint) {
  std::error_code ec;
  if (fs::is_directory(target, ec)) return fs::path(target) / "exports";
  const auto dir = fs::absolute(checkpoint, ec).parent_path();
  if (dir.filename() == "checkpoints") return dir.parent_path() / "exports";
  return dir;
}

SavedRun load_saved_run(const std::string& target, const std::string& which,
                        const std::vector<std::string>& overrides, const std::string& split) {
  check_split(split);
  if (which != "best" && which != "last")
    throw UsageError("--checkpoint must be 'best' or 'last', got '" + which + "'");
  SavedRun run;
  std::error_code ec;
  if (fs::is_directory(target, ec)) {
    run.checkpoint = fs::path(target) / "checkpoints" / (which + ".pt");
    if (!fs::exists(run.checkpoint, ec)) {
      std::string why = "no such checkpoint: is '" + target + "' the directory of a run that validated?";
      try {
        std::ifstream in(fs::path(target) / "config.json");
        auto saved = nlohmann::json::parse(in);
        if (saved.contains("train") && saved["train"].value("checkpoints", true) == false)
          why = "no such checkpoint: the run was trained with train.checkpoints = false, so it saved no model";
      } catch (const std::exception&) {
        // No readable config.json: the generic message stands.
      }
      throw DataError(run.checkpoint.string(), 0, why);
    }
  } else if (fs::exists(target, ec)) {
    run.checkpoint = target;
  } else {
    throw UsageError("'" + target + "' is neither a run directory nor a checkpoint file");
  }
  const std::string file = run.checkpoint.string();
  torch::serialize::InputArchive archive;
  open_checkpoint(archive, run.checkpoint, torch::kCPU);
  c10::IValue saved_config;
  if (!archive.try_read("config", saved_config) || !saved_config.isString())
    throw DataError(file, 0, "checkpoint lacks its config: written by something other than recsys train");
  nlohmann::json config;
  try {
    config = nlohmann::json::parse(saved_config.toStringRef());
  } catch (const nlohmann::json::exception& e) {
    throw DataError(file, 0, std::string("the checkpoint's config is not valid JSON: ") + e.what());
  }
  for (const auto& assignment : overrides) {
    const auto key = override_key(assignment);
    if (!may_change(key))
      throw ConfigError(key, "evaluating a trained model may change only eval.*, train.device, train.threads and "
                             "the data files' paths (the rest defines the model and its data)");
    config::apply_override(config, assignment);
  }
  // The tasks require a non-empty test split only where the run reports one.
  const bool trained_with_test =
      !(config.contains("train") && config["train"].is_object() && config["train"].value("evaluate_test", true) == false);
  if (split == "test") config::apply_override(config, "train.evaluate_test=true");
  run.experiment = parse_experiment(config);
  torch::manual_seed(run.experiment.seed);
  torch::set_num_threads(static_cast<int>(run.experiment.trainer.threads));
  const auto device = resolve_device(run.experiment.trainer.device);
  try {
    run.task = run.experiment.build_task(run.experiment.seed);
  } catch (const ConfigError& e) {
    if (split != "test" || trained_with_test) throw;
    throw ConfigError(e.path(), "the run has no test split (it was trained with train.evaluate_test = false and "
                                "this split setting leaves test empty): evaluate it with --split valid");
  }
  run.task->to(device);
  load_module_state(run.task->module(), archive, file);
  torch::Tensor step;
  if (archive.try_read("trainer.step", step)) run.step = step.item<int64_t>();
  return run;
}

namespace {

/// A key as one TSV field. One holding a tab, a line break or a double quote is quoted, with its
/// quotes doubled (what Python's csv module and pandas read with sep="\t").
void append_field(std::string& out, const std::string& key) {
  if (key.find_first_of("\t\n\r\"") == std::string::npos) {
    out += key;
    return;
  }
  out.push_back('"');
  for (char c : key) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
}

void append_float(std::string& out, float v) {
  char buf[32];
  // Shortest text that reads back as the same float.
  auto r = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, r.ptr);
}

/// Text fields separated by tabs (no line end).
void append_fields(std::string& out, const std::vector<std::string>& fields) {
  for (size_t c = 0; c < fields.size(); ++c) {
    if (c) out.push_back('\t');
    append_field(out, fields[c]);
  }
}

void append_row(std::string& out, const std::vector<std::string>& fields) {
  append_fields(out, fields);
  out.push_back('\n');
}

void check_table(const ExportTable& t) {
  TORCH_CHECK(t.values.defined() && t.values.dim() == 2 &&
                  t.values.size(0) == static_cast<int64_t>(t.keys.size()) &&
                  t.values.size(1) == static_cast<int64_t>(t.value_columns.size()),
              "export table: values must be [rows, value columns]");
  for (const auto& row : t.keys)
    TORCH_CHECK(row.size() == t.key_columns.size(), "export table: a row has the wrong number of keys");
}

void write_file(const fs::path& path, const std::string& bytes) {
  try {
    write_atomic(path, bytes);
  } catch (const std::exception& e) {
    throw UsageError("cannot write '" + path.string() + "': " + e.what());
  }
}

}  // namespace

void write_table_tsv(const ExportTable& table, const fs::path& path) {
  check_table(table);
  auto values = table.values.to(torch::kFloat32).contiguous();
  const float* v = values.data_ptr<float>();
  const int64_t cols = values.size(1);
  std::vector<std::string> header = table.key_columns;
  header.insert(header.end(), table.value_columns.begin(), table.value_columns.end());
  std::string out;
  append_row(out, header);
  for (size_t r = 0; r < table.keys.size(); ++r) {
    append_fields(out, table.keys[r]);
    for (int64_t c = 0; c < cols; ++c) {
      if (c > 0 || !table.keys[r].empty()) out.push_back('\t');
      append_float(out, v[static_cast<int64_t>(r) * cols + c]);
    }
    out.push_back('\n');
  }
  write_file(path, out);
}

void write_table_npy(const ExportTable& table, const fs::path& path) {
  check_table(table);
  auto values = table.values.to(torch::kFloat32).contiguous();
  // NPY 1.0: magic, version, little-endian header length, then a Python dict literal padded with
  // spaces to a multiple of 64 bytes and ended by a newline; the data follows in C order.
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(values.size(0)) +
                       ", " + std::to_string(values.size(1)) + "), }";
  const size_t preamble = 10;
  while ((preamble + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::string out("\x93NUMPY\x01\x00", 8);
  const auto len = static_cast<uint16_t>(header.size());
  out.push_back(static_cast<char>(len & 0xff));
  out.push_back(static_cast<char>(len >> 8));
  out += header;
  const size_t bytes = static_cast<size_t>(values.numel()) * sizeof(float);
  const size_t at = out.size();
  out.resize(at + bytes);
  static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the .npy header says little-endian '<f4'");
  if (bytes) std::memcpy(&out[at], values.data_ptr<float>(), bytes);
  std::string keys;
  append_row(keys, table.key_columns);
  for (const auto& row : table.keys) append_row(keys, row);
  std::string columns;
  for (const auto& c : table.value_columns) columns += c + "\n";
  const auto beside = npy_companions(path);
  write_file(path, out);
  write_file(beside[0], keys);
  write_file(beside[1], columns);
}

std::vector<fs::path> npy_companions(const fs::path& path) {
  auto stem = path;
  stem.replace_extension();
  return {stem.string() + ".keys.tsv", stem.string() + ".columns.txt"};
}

}  // namespace recsys::train

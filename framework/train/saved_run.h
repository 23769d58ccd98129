#pragma once
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "framework/train/experiment.h"
#include "framework/train/task.h"

// A trained model brought back from its checkpoint for `recsys eval` and `recsys export`: the
// task rebuilt from the config saved in the checkpoint (same data, same split, same model) and
// the checkpoint's parameters and buffers loaded into it.
namespace recsys::train {

struct SavedRun {
  std::filesystem::path checkpoint;
  Experiment experiment;
  std::unique_ptr<Task> task;  ///< on the config's train.device
  int64_t step = -1;  ///< the training step the checkpoint was written at (-1: not recorded)
};

/// `target` is a run directory (its checkpoints/`which`.pt, `which` = best or last) or a
/// checkpoint file. `overrides` ("a.b=VALUE") may change only what leaves the trained function
/// and its data alone: eval.* (list lengths, batch sizes, head fraction), train.device,
/// train.threads and the data files' paths (data.path, data.reviews, data.meta: moved data);
/// anything else is a ConfigError naming the key. A missing, truncated or foreign
/// checkpoint is a DataError naming the file. `split` ("valid" or "test") is the split that will
/// be evaluated: an empty one is a ConfigError, as in training.
SavedRun load_saved_run(const std::string& target, const std::string& which,
                        const std::vector<std::string>& overrides, const std::string& split);

/// The split argument of eval / export: "valid" or "test" (UsageError otherwise).
void check_split(const std::string& split);

/// Refuses (UsageError) an output path that would replace something a run saved: the checkpoint
/// being read, anything in a checkpoints/ directory, or a run's config.json, results.json,
/// metrics.jsonl or log.txt.
void check_output_path(const std::filesystem::path& out, const std::filesystem::path& checkpoint);

/// Where an export goes by default: the run's exports/ directory (the run of a checkpoint file
/// inside RUN/checkpoints/ too), else beside the checkpoint file.
std::filesystem::path default_export_dir(const std::string& target, const std::filesystem::path& checkpoint);

/// Writes an export as tab-separated text: a header of the key and value columns, then one line
/// per row (each value as the shortest text that reads back as the same float32). A key holding
/// a tab, a line break or a double quote is quoted, its quotes doubled (Python's csv dialect).
/// Atomic (temporary file, then rename).
void write_table_tsv(const ExportTable& table, const std::filesystem::path& path);

/// Writes the values as a NumPy .npy file (float32, C order, [rows, columns]) at `path` and the
/// keys beside it as `<path without .npy>.keys.tsv` (header = key columns; the value columns'
/// names in `<...>.columns.txt`). Atomic per file.
void write_table_npy(const ExportTable& table, const std::filesystem::path& path);

/// The files write_table_npy writes beside `path`: the keys, then the value column names.
std::vector<std::filesystem::path> npy_companions(const std::filesystem::path& path);

}  // namespace recsys::train

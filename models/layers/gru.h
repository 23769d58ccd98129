#pragma once
#include <torch/torch.h>

#include <string>

namespace recsys::models {

/// The recurrent cell of DIEN (Zhou et al., AAAI 2019). kGru is the interest extractor; the other
/// three are the interest-evolution variants driven by a per-step attention score a_t in [0, 1].
enum class GruKind { kGru, kAigru, kAgru, kAugru };

/// Parses "gru", "aigru", "agru", "augru"; throws std::invalid_argument listing the known names.
GruKind parse_gru_kind(const std::string& name);

/// The lowercase name parse_gru_kind accepts.
const char* gru_kind_name(GruKind kind);

struct GruOutput {
  /// [B, T, H]: the state after each step, zero at padded steps (t >= lengths[b]).
  torch::Tensor outputs;
  /// [B, H]: the state after step lengths[b] - 1.
  torch::Tensor final_state;
};

// Gate math (PyTorch convention, gate order r, z, n in the weight rows):
//   r = sigmoid(x W_ir^T + b_ir + h W_hr^T + b_hr)
//   z = sigmoid(x W_iz^T + b_iz + h W_hz^T + b_hz)
//   n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
//   kGru:   h' = (1 - z) * n + z * h
//   kAigru: x_t <- a_t * x_t, then kGru
//   kAgru:  h' = (1 - a_t) * h + a_t * n                    (z unused)
//   kAugru: h' = (1 - u~) * h + u~ * n,  u~ = a_t * (1 - z)
// DIEN writes AUGRU with an update gate u that weighs the NEW candidate; PyTorch's z weighs the OLD
// state, so DIEN's u is 1 - z here. Hence a_t = 1 gives exactly kGru and a_t = 0 keeps h.
// Padding: at steps t >= lengths[b] the state of sequence b passes through unchanged and the output
// is zero, so the same sequence padded to any T gives identical results.
//
// Arguments shared by gru_reference and gru_fused:
//   x [B, T, I] float32/float64; lengths [B] integral, 1 <= lengths[b] <= T (checked when lengths
//   lives on the CPU; on an accelerator the check would cost a host-device sync, so it is skipped
//   and out-of-range lengths are clamped by the mask); attention [B, T] of x's dtype, required for
//   every kind except kGru and rejected for kGru; h0 [B, H] or undefined for zeros;
//   weight_ih [3H, I], weight_hh [3H, H], bias_ih [3H], bias_hh [3H].

/// The oracle: a per-step loop of plain autograd ops.
GruOutput gru_reference(GruKind kind, const torch::Tensor& x, const torch::Tensor& lengths,
                        const torch::Tensor& attention, const torch::Tensor& h0,
                        const torch::Tensor& weight_ih, const torch::Tensor& weight_hh,
                        const torch::Tensor& bias_ih, const torch::Tensor& bias_hh);

/// The same math as one autograd node over the whole sequence with a hand-written BPTT backward:
/// one input-projection matmul, one [B,H]x[H,3H] matmul per step into preallocated buffers, and the
/// weight gradients as one matmul each after the backward loop. Not twice differentiable.
GruOutput gru_fused(GruKind kind, const torch::Tensor& x, const torch::Tensor& lengths,
                    const torch::Tensor& attention, const torch::Tensor& h0,
                    const torch::Tensor& weight_ih, const torch::Tensor& weight_hh,
                    const torch::Tensor& bias_ih, const torch::Tensor& bias_hh);

/// The same math on the CPU with the valid steps packed (sequences sorted by length, the steps
/// still running at time t as one block, padded steps skipped entirely) and each step's gate
/// math as one loop: one autograd node, hand-written BPTT, float32 or float64.
GruOutput gru_packed(GruKind kind, const torch::Tensor& x, const torch::Tensor& lengths,
                     const torch::Tensor& attention, const torch::Tensor& h0,
                     const torch::Tensor& weight_ih, const torch::Tensor& weight_hh,
                     const torch::Tensor& bias_ih, const torch::Tensor& bias_hh);

/// A batch of padded sequences packed time-major by decreasing length (PackedSequence's layout):
/// sequences sorted longest first (stable), packed row off[t] + j is step t of the j-th longest
/// sequence, and the sequences still running at step t are the first bt[t] of the sorted order.
struct PackedLayout {
  int64_t batch = 0;    ///< B
  int64_t max_len = 0;  ///< T of the padded [B, T] batch
  std::vector<int64_t> perm, bt, off;  ///< sorted j -> row b; running at t; first packed row of t
  torch::Tensor index;        ///< [N] int64: b * T + t of each packed row
  torch::Tensor row;          ///< [N] int64: b of each packed row
  torch::Tensor final_index;  ///< [B] int64: packed row of each sequence's last step
  /// [N - B] int64 each: packed rows (t, j) and (t + 1, j), for every step with a successor.
  torch::Tensor pair_first, pair_next;

  int64_t size() const { return off.empty() ? 0 : off.back(); }
  int64_t steps() const { return static_cast<int64_t>(bt.size()); }
  /// lengths [B] (CPU, each in [1, T]).
  static PackedLayout from_lengths(const torch::Tensor& lengths, int64_t T);
};

/// Process-wide switch (default on): gru_packed's recurrences run each thread's range of
/// sequences on its own thread; off keeps them on the calling thread (same results). For A/B
/// measurements (`recsys bench --disable gru_threads`) and tests.
void set_gru_recurrence_threads(bool on);
bool gru_recurrence_threads_enabled();

/// gru_packed on inputs already in a PackedLayout: x [N, I], attention [N] (or undefined), h0
/// [B, H] in the original order (or undefined). Returns outputs [N, H] in the packed order and
/// final_state [B, H] in the original order. CPU; float32 or float64.
GruOutput gru_packed_sequences(GruKind kind, const PackedLayout& layout, const torch::Tensor& x,
                               const torch::Tensor& attention, const torch::Tensor& h0,
                               const torch::Tensor& weight_ih, const torch::Tensor& weight_hh,
                               const torch::Tensor& bias_ih, const torch::Tensor& bias_hh);

struct GruLayerOptions {
  GruLayerOptions(int64_t input_size, int64_t hidden_size)
      : input_size_(input_size), hidden_size_(hidden_size) {}
  /// Width I of each input step.
  TORCH_ARG(int64_t, input_size);
  /// Width H of the state.
  TORCH_ARG(int64_t, hidden_size);
  /// Which cell: plain GRU or one of DIEN's attention-driven variants.
  TORCH_ARG(GruKind, kind) = GruKind::kGru;
  /// Whether forward uses gru_fused (fast) or gru_reference (the oracle); same results.
  TORCH_ARG(bool, fused) = true;
  /// With fused: on the CPU take gru_packed rather than gru_fused (same results).
  TORCH_ARG(bool, packed) = true;
};

/// A single-layer, unidirectional GRU over padded batches, with DIEN's AIGRU/AGRU/AUGRU variants.
class GruLayerImpl : public torch::nn::Module {
 public:
  explicit GruLayerImpl(GruLayerOptions options);

  /// x [B, T, I]; lengths [B]; attention [B, T] (undefined for kGru); h0 [B, H] or undefined.
  GruOutput forward(const torch::Tensor& x, const torch::Tensor& lengths,
                    const torch::Tensor& attention = {}, const torch::Tensor& h0 = {});

  /// gru_packed_sequences with this layer's weights (any options().fused / packed).
  GruOutput forward_packed(const PackedLayout& layout, const torch::Tensor& x,
                           const torch::Tensor& attention = {}, const torch::Tensor& h0 = {});

  /// Uniform(-1/sqrt(H), 1/sqrt(H)) for every parameter, as torch::nn::GRU.
  void reset_parameters();

  const GruLayerOptions& options() const { return options_; }

  torch::Tensor weight_ih, weight_hh, bias_ih, bias_hh;

 private:
  GruLayerOptions options_;
};
TORCH_MODULE(GruLayer);

/// Median wall time in ms of one forward + backward (gradients for x, attention and all weights)
/// over iters timed runs after two warm-up runs, on random float32 data with full-length sequences.
double time_gru_ms(bool fused, GruKind kind, int64_t B, int64_t T, int64_t I, int64_t H, int iters,
                   torch::Device device = torch::kCPU);

}  // namespace recsys::models

#pragma once
#include <torch/torch.h>

#include <functional>
#include <vector>

namespace recsys::train {

/// One branch of a staged step: computes some outputs (tower representations) from the model.
using OutputBranch = std::function<std::vector<torch::Tensor>()>;
/// The loss of a staged step (a scalar) from every branch's outputs (branch by branch, in order).
using StagedLoss = std::function<torch::Tensor(const std::vector<std::vector<torch::Tensor>>&)>;

/// A training step in three stages, for a loss built on the outputs of independent sub-networks
/// (a two-tower model's user and item towers): (1) the branches' forwards; (2) the loss on their
/// outputs (cut from the branches' graphs) and its gradients with respect to those outputs and
/// to the parameters it uses directly; (3) each branch's backward from its outputs' gradients.
/// With `side_by_side`, the branches of stages 1 and 3 each run on their own intra-op thread,
/// every operator inside a branch on that thread alone: the threads meet twice per stage
/// instead of at every operator. Stage 2 runs on the calling thread, its operators split over
/// all intra-op threads as usual. Without, the branches run one after the other on the calling
/// thread.
///
/// The gradients are added to the parameters' gradients in a fixed order (stage 2's, then
/// branch 0's, branch 1's, ...), whichever thread finishes first: dense ones summed, sparse ones
/// merged or concatenated (combine_gradients). The result equals loss.backward() through the
/// uncut graph up to the order of floating-point additions, and does not depend on the threads'
/// timing.
/// Every graph is freed. An exception in a branch is rethrown once all branches have stopped,
/// with no gradient changed. Returns the loss, detached.
///
/// The branches must not share graph nodes other than leaves (parameters): two branches using
/// one tensor computed before run_staged, or one branch's output, would run their backwards
/// through the same nodes at once. A parameter listed twice gets its gradient once; a leaf the
/// branches use that is not in `params` gets none.
torch::Tensor run_staged(const std::vector<OutputBranch>& branches, const StagedLoss& loss,
                         const std::vector<torch::Tensor>& params, bool side_by_side);

/// Whether run_staged should run side by side at the current intra-op thread count: from 2
/// threads up to one thread per branch (with more threads, each operator's own split uses the
/// cores better), outside a parallel region, and with a BLAS whose calls from a thread run on
/// that thread.
bool side_by_side_at(size_t branches);

/// Gradients of one parameter from several branches, in branch order (undefined = none), as one
/// gradient: dense parts summed; sparse parts whose rows each ascend strictly (the fused
/// lookups' gradients) merged into one coalesced gradient, a row held by several parts summed
/// in part order (the values the optimizer would sum from their concatenation, so it skips its
/// grouping pass); other sparse parts concatenated (uncoalesced); a mix densified.
torch::Tensor combine_gradients(const std::vector<torch::Tensor>& parts);

}  // namespace recsys::train

// The feedback solve on CUDA (sessa/feedback.cu), in sessa::cuda with every CUDA entry
// point; layer::feedback_solve_forward and layer::feedback_solve_backward dispatch here
// for CUDA tensors after their checks.
// For bfloat16 inputs, ctx and lse come back in float32 (the solve is sensitive
// to rounding) while s has the input dtype; the backward expects saved tensors
// of exactly these dtypes. alpha is kept only in panels of a bounded workspace.
#pragma once
#include "sessa/feedback.h"

namespace sessa::cuda {

layer::FeedbackOut feedback_solve(const Tensor& q, const Tensor& k, const Tensor& gamma, const Tensor& f);
layer::FeedbackGrads feedback_solve_backward(const Tensor& ds, const Tensor& q, const Tensor& k, const Tensor& gamma,
                                             const layer::FeedbackOut& saved);

// Tests: force panels of `rows` rows/columns (a multiple of 64), so that small T crosses
// panel boundaries; 0 (the default) sizes panels from the workspace budget.
void set_feedback_panel_rows(int rows);
// Tests: force leaves of 2 or 4 row blocks (the kernel shapes of wide and narrow grids);
// 0 (the default) picks by the grid.
void set_feedback_leaf_blocks(int blocks);

}  // namespace sessa::cuda

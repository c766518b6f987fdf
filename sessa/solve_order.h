// The order in which the blocked triangular solves of the feedback op (sessa/feedback.cpp
// on the CPU, sessa/feedback.cu on CUDA) visit their 64-row blocks: in halves, the recursion
// of a blocked triangular solve (TRSM). Host code only, shared so that the float64 CPU
// reference checks the order the GPU runs (docs/sessa.md "Blocked forward substitution").
#pragma once

namespace sessa::layer {

// Blocks per leaf of the CPU reference. The CUDA kernels solve 2 or 4 blocks in one launch
// (sessa/feedback.cu, LeafConfig: 2 for grids wider than the multiprocessors, else 4); the
// recursion above the leaves is the same.
constexpr int kLeafBlocks = 2;

// Solves the blocks [lo, hi) of a lower-triangular system: the first half, then what it
// contributes to the second half as one product, `couple(lo, mid, hi)`, then the second half,
// down to leaves of at most leaf_blocks blocks; `leaf(lo, hi)` solves the blocks [lo, hi)
// once everything before them has arrived. Every pair of blocks is coupled exactly once
// (across leaves here, inside a leaf by `leaf`), as in the block-by-block order, but most of
// the work is in a few large products instead of one skinny product per block. Backward (the
// transposed, upper-triangular solve) runs in reverse: [mid, hi) first, then
// couple(lo, mid, hi) into [lo, mid), then [lo, mid).
template <bool Backward, class Leaf, class Couple>
void solve_in_halves(int lo, int hi, int leaf_blocks, const Leaf& leaf, const Couple& couple) {
  if (hi - lo <= leaf_blocks) return leaf(lo, hi);
  const int mid = lo + (hi - lo + 1) / 2;
  solve_in_halves<Backward>(Backward ? mid : lo, Backward ? hi : mid, leaf_blocks, leaf, couple);
  couple(lo, mid, hi);
  solve_in_halves<Backward>(Backward ? lo : mid, Backward ? mid : hi, leaf_blocks, leaf, couple);
}

}  // namespace sessa::layer

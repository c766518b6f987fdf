// The lanes of a CUDA device (one stream each). Every op runs on its device's main lane. An
// op whose work holds a latency-bound chain of small kernels beside independent bulk work
// (the feedback solve, sessa/feedback.cu) may run the chain on the priority lane, a second
// stream that the block scheduler serves first, so that the bulk work fills the
// multiprocessors the chain leaves idle. Such an op forks from the main lane (LaneFork,
// runtime.h) after allocating what both lanes use and joins back to it before returning, so
// for the caching allocator and for every other op all work stays ordered on the main lane.
// No CUDA header here: tensor/cuda/blas.h is included by the core.
#pragma once

namespace sessa::cuda {

enum class Lane { main, priority };

}  // namespace sessa::cuda

// Collectives over the ranks of a World, on tensors of one device: NCCL for CUDA
// tensors (dist/nccl_communicator.cpp), MPI for CPU tensors (dist/mpi_communicator.cpp),
// chosen by make_communicator. Every rank must issue the same collectives in the
// same order. A collective starts after the device work issued before it and may run
// asynchronously (NCCL: on a communication stream beside the compute stream; MPI: a
// nonblocking call); wait() makes everything issued afterwards see its results.
#pragma once
#include <memory>

#include "dist/world.h"
#include "tensor/tensor.h"

namespace sessa::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // t (contiguous) becomes its sum over the ranks.
  virtual void all_reduce_sum_(const Tensor& t) = 0;
  // t (contiguous, numel divisible by size()) splits into size() equal parts; part
  // rank() becomes that part's sum over the ranks. The other parts are left unspecified.
  virtual void reduce_scatter_sum_(const Tensor& t) = 0;
  // out (contiguous, size() x part.numel() elements) receives every rank's `part`,
  // in rank order; `part` may be out's own slice (in place).
  virtual void all_gather(const Tensor& part, const Tensor& out) = 0;
  virtual void broadcast_(const Tensor& t, int root) = 0;
  virtual void wait() = 0;
};

// The communicator for tensors on `device` over every rank of `world`. NCCL for
// CUDA (one GPU per rank, chosen by the caller), MPI for the CPU; errors say what
// this build lacks.
std::unique_ptr<Communicator> make_communicator(World& world, Device device);

// Implementations (defined only when the build has them).
std::unique_ptr<Communicator> make_mpi_communicator(World& world);
std::unique_ptr<Communicator> make_nccl_communicator(World& world, int device);

}  // namespace sessa::dist

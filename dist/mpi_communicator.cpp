// Communicator over MPI for CPU tensors: nonblocking collectives on MPI_COMM_WORLD,
// completed together by wait(). (Built only when MPI is found.)
#include <mpi.h>

#include <exception>
#include <vector>

#include "dist/communicator.h"
#include "tensor/error.h"

namespace sessa::dist {

namespace {

MPI_Datatype mpi_type(const Tensor& t, const char* op) {
  SESSA_CHECK(!t.is_cuda(), op, "MPI collectives take CPU tensors, got " << t.str());
  SESSA_CHECK(t.is_contiguous(), op, "needs a contiguous tensor, got " << t.str());
  switch (t.dtype()) {
    case DType::F32:
      return MPI_FLOAT;
    case DType::F64:
      return MPI_DOUBLE;
    case DType::I32:
      return MPI_INT;
    default:
      SESSA_FAIL(op, "no MPI type for " << t.str());
  }
}

int count_of(int64_t n, const char* op) {
  SESSA_CHECK(n <= INT32_MAX, op, n << " elements exceed MPI's int count");
  return int(n);
}

class MpiCommunicator : public Communicator {
 public:
  explicit MpiCommunicator(World& world) : world_(world) {}
  ~MpiCommunicator() override {  // not while an error unwinds towards World::abort: peers may never answer
    if (!pending_.empty() && std::uncaught_exceptions() == 0)
      MPI_Waitall(int(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE);
  }
  int rank() const override { return world_.rank(); }
  int size() const override { return world_.size(); }

  void all_reduce_sum_(const Tensor& t) override {
    issue("MPI_Iallreduce", MPI_Iallreduce(MPI_IN_PLACE, t.raw_data(), count_of(t.numel(), "all_reduce_sum_"),
                                           mpi_type(t, "all_reduce_sum_"), MPI_SUM, MPI_COMM_WORLD, next()));
  }
  // MPI's in-place reduce-scatter leaves the result at the front of the buffer, not
  // at this rank's part; on the CPU the simpler full all-reduce is good enough.
  void reduce_scatter_sum_(const Tensor& t) override {
    SESSA_CHECK(t.numel() % size() == 0, "reduce_scatter_sum_",
                t.str() << " does not split into " << size() << " parts");
    all_reduce_sum_(t);
  }
  void all_gather(const Tensor& part, const Tensor& out) override {
    SESSA_CHECK(out.numel() == part.numel() * size() && out.dtype() == part.dtype(), "all_gather",
                "out " << out.str() << " must hold " << size() << " x " << part.str());
    const int n = count_of(part.numel(), "all_gather");
    const MPI_Datatype type = mpi_type(out, "all_gather");
    const bool in_place = static_cast<const char*>(part.raw_data()) ==
                          static_cast<const char*>(out.raw_data()) + size_t(rank() * n) * dtype_size(out.dtype());
    issue("MPI_Iallgather", MPI_Iallgather(in_place ? MPI_IN_PLACE : part.raw_data(), n, type, out.raw_data(), n, type,
                                           MPI_COMM_WORLD, next()));
  }
  void broadcast_(const Tensor& t, int root) override {
    issue("MPI_Ibcast", MPI_Ibcast(t.raw_data(), count_of(t.numel(), "broadcast_"), mpi_type(t, "broadcast_"), root,
                                   MPI_COMM_WORLD, next()));
  }
  void wait() override {
    if (pending_.empty()) return;
    const int rc = MPI_Waitall(int(pending_.size()), pending_.data(), MPI_STATUSES_IGNORE);
    pending_.clear();
    SESSA_CHECK(rc == MPI_SUCCESS, "mpi", "MPI_Waitall failed with code " << rc);
  }

 private:
  MPI_Request* next() { return &pending_.emplace_back(MPI_REQUEST_NULL); }
  void issue(const char* call, int rc) { SESSA_CHECK(rc == MPI_SUCCESS, "mpi", call << " failed with code " << rc); }

  World& world_;
  std::vector<MPI_Request> pending_;
};

}  // namespace

std::unique_ptr<Communicator> make_mpi_communicator(World& world) { return std::make_unique<MpiCommunicator>(world); }

}  // namespace sessa::dist

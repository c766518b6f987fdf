// Communicator over NCCL for CUDA tensors, one GPU per rank. Rank 0 creates the
// NCCL unique id and broadcasts it over MPI. Collectives run on a communication
// stream that first waits for the compute stream (cuda::stream), so they overlap
// with the kernels issued after them; wait() makes the compute stream wait in turn.
// Nothing here blocks the host. (Built only when NCCL and MPI are found.)
#include <cuda_runtime.h>
#include <nccl.h>

#include <exception>
#include <memory>

#include "dist/communicator.h"
#include "tensor/cuda/check.h"
#include "tensor/cuda/runtime.h"
#include "tensor/error.h"

#define SESSA_NCCL_CHECK(call)                                                                                    \
  do {                                                                                                            \
    ncclResult_t sessa_rc_ = (call);                                                                              \
    if (sessa_rc_ != ncclSuccess)                                                                                 \
      SESSA_FAIL("nccl",                                                                                          \
                 #call << " failed: " << ncclGetErrorString(sessa_rc_) << " at " << __FILE__ << ":" << __LINE__); \
  } while (0)

namespace sessa::dist {

namespace {

ncclDataType_t nccl_type(const Tensor& t, int device, const char* op) {
  SESSA_CHECK(t.is_cuda() && t.device().index == device, op,
              "NCCL collectives here take tensors on cuda:" << device << ", got " << t.str());
  SESSA_CHECK(t.is_contiguous(), op, "needs a contiguous tensor, got " << t.str());
  switch (t.dtype()) {
    case DType::F32:
      return ncclFloat32;
    case DType::F64:
      return ncclFloat64;
    case DType::BF16:
      return ncclBfloat16;
    case DType::I32:
      return ncclInt32;
    default:
      SESSA_FAIL(op, "no NCCL type for " << t.str());
  }
}

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(World& world, int device) : rank_(world.rank()), size_(world.size()), device_(device) {
    ncclUniqueId id;
    if (rank_ == 0) SESSA_NCCL_CHECK(ncclGetUniqueId(&id));
    world.broadcast(&id, sizeof id, 0);
    compute_ = cuda::stream(device);  // also makes `device` current
    SESSA_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking), "nccl");
    SESSA_CUDA_CHECK(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming), "nccl");
    SESSA_CUDA_CHECK(cudaEventCreateWithFlags(&comm_done_, cudaEventDisableTiming), "nccl");
    SESSA_NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
    *abortable_ = comm_;
    world.on_abort([comm = abortable_] {
      if (*comm) ncclCommAbort(*comm);
    });
  }
  ~NcclCommunicator() override {
    // While an error unwinds towards World::abort, leave everything to the abort:
    // ncclCommDestroy waits for the other ranks, which may be blocked in a collective.
    if (std::uncaught_exceptions() > 0) return;
    *abortable_ = nullptr;
    cudaStreamSynchronize(comm_stream_);
    ncclCommDestroy(comm_);
    cudaEventDestroy(compute_done_);
    cudaEventDestroy(comm_done_);
    cudaStreamDestroy(comm_stream_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }

  void all_reduce_sum_(const Tensor& t) override {
    const ncclDataType_t type = nccl_type(t, device_, "all_reduce_sum_");
    after_compute();
    SESSA_NCCL_CHECK(ncclAllReduce(t.raw_data(), t.raw_data(), size_t(t.numel()), type, ncclSum, comm_, comm_stream_));
  }
  void reduce_scatter_sum_(const Tensor& t) override {
    const ncclDataType_t type = nccl_type(t, device_, "reduce_scatter_sum_");
    SESSA_CHECK(t.numel() % size_ == 0, "reduce_scatter_sum_", t.str() << " does not split into " << size_ << " parts");
    const size_t part = size_t(t.numel() / size_);
    after_compute();
    char* base = static_cast<char*>(t.raw_data());  // in place: the result lands on this rank's part
    SESSA_NCCL_CHECK(ncclReduceScatter(base, base + part * size_t(rank_) * dtype_size(t.dtype()), part, type, ncclSum,
                                       comm_, comm_stream_));
  }
  void all_gather(const Tensor& part, const Tensor& out) override {
    const ncclDataType_t type = nccl_type(out, device_, "all_gather");
    nccl_type(part, device_, "all_gather");
    SESSA_CHECK(out.numel() == part.numel() * size_ && out.dtype() == part.dtype(), "all_gather",
                "out " << out.str() << " must hold " << size_ << " x " << part.str());
    after_compute();
    SESSA_NCCL_CHECK(ncclAllGather(part.raw_data(), out.raw_data(), size_t(part.numel()), type, comm_, comm_stream_));
  }
  void broadcast_(const Tensor& t, int root) override {
    const ncclDataType_t type = nccl_type(t, device_, "broadcast_");
    after_compute();
    SESSA_NCCL_CHECK(ncclBroadcast(t.raw_data(), t.raw_data(), size_t(t.numel()), type, root, comm_, comm_stream_));
  }
  void wait() override {
    SESSA_CUDA_CHECK(cudaEventRecord(comm_done_, comm_stream_), "nccl");
    SESSA_CUDA_CHECK(cudaStreamWaitEvent(compute_, comm_done_, 0), "nccl");
  }

 private:
  void after_compute() {  // the communication stream waits for the kernels issued so far
    SESSA_CUDA_CHECK(cudaEventRecord(compute_done_, compute_), "nccl");
    SESSA_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, compute_done_, 0), "nccl");
  }

  int rank_, size_, device_;
  ncclComm_t comm_ = nullptr;
  std::shared_ptr<ncclComm_t> abortable_ = std::make_shared<ncclComm_t>(nullptr);  // null once destroyed
  cudaStream_t compute_ = nullptr, comm_stream_ = nullptr;
  cudaEvent_t compute_done_ = nullptr, comm_done_ = nullptr;
};

}  // namespace

std::unique_ptr<Communicator> make_nccl_communicator(World& world, int device) {
  return std::make_unique<NcclCommunicator>(world, device);
}

}  // namespace sessa::dist

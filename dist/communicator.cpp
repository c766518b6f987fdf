#include "dist/communicator.h"

#include "tensor/error.h"

namespace sessa::dist {

std::unique_ptr<Communicator> make_communicator(World& world, Device device) {
  if (device.is_cuda()) {
#if SESSA_HAS_NCCL
    return make_nccl_communicator(world, device.index);
#else
    SESSA_FAIL("dist", "data parallelism on CUDA needs NCCL, and this build has none (install NCCL and rebuild)");
#endif
  }
#if SESSA_HAS_MPI
  return make_mpi_communicator(world);
#else
  (void)world;
  SESSA_FAIL("dist",
             "data parallelism on the CPU needs MPI, and this build has none (install libopenmpi-dev and rebuild)");
#endif
}

}  // namespace sessa::dist

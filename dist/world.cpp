#include "dist/world.h"

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "tensor/cuda_hooks.h"
#include "tensor/error.h"

#if SESSA_HAS_MPI
#include <mpi.h>
#endif

namespace sessa::dist {

bool launched_by_mpi() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS"})
    if (std::getenv(var)) return true;
  return false;
}

int run_reporting_errors(World& world, const char* app, const std::function<int()>& body) {
  try {
    return body();
  } catch (const std::exception& e) {
    const std::string message = std::string(app) + ": error: " + e.what();
    if (world.distributed()) world.abort(message);  // never leave the other ranks in a collective
    std::fprintf(stderr, "%s\n", message.c_str());
    return 1;
  }
}

// Recent NCCL versions synchronise the ranks of a node inside ncclCommAbort, so
// the failing rank alone can wait there for ranks blocked in a collective, and
// MPI_Abort may run exit handlers of libraries in the same state. Whatever hangs,
// the alarm's default action ends this process within five seconds, and mpirun
// then ends the others.
void World::run_abort_hooks() {
  std::signal(SIGALRM, SIG_DFL);
  alarm(5);
  for (const auto& hook : abort_hooks_) hook();
}

Device device_for_rank(const World& world, const std::string& spec) {
  const Device device = parse_device(spec);
  if (!device.is_cuda() || world.local_size() == 1) return device;
  SESSA_CHECK(spec == "cuda" || spec == "auto", "--device",
              "'" << spec << "' names one GPU, but " << world.local_size()
                  << " ranks run on this node; give --device cuda and each rank takes the GPU of its local rank");
  int gpus = 0;
  SESSA_CUDA_CALL(gpus = cuda::device_count());
  SESSA_CHECK(world.local_rank() < gpus, "--device",
              world.local_size() << " ranks run on this node, which has only " << gpus << " GPU(s): one GPU per rank");
  return Device::cuda(world.local_rank());
}

#if SESSA_HAS_MPI

namespace {
void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  SESSA_FAIL("mpi", call << " failed: " << std::string(text, size_t(length)));
}
}  // namespace

World::World(int* argc, char*** argv) {
  if (!launched_by_mpi()) return;
  int provided = 0;
  check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
  mpi_ = true;
  // Errors come back as codes (and become exceptions) instead of killing the job silently.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
  MPI_Comm node;
  check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
            "MPI_Comm_split_type");
  MPI_Comm_rank(node, &local_rank_);
  MPI_Comm_size(node, &local_size_);
  MPI_Comm_free(&node);
}

World::~World() {
  if (mpi_) MPI_Finalize();
}

double World::sum(double value) const {
  if (!mpi_) return value;
  double total = 0;
  check_mpi(MPI_Allreduce(&value, &total, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
  return total;
}

bool World::any(bool flag) const {
  if (!mpi_) return flag;
  int local = flag, result = 0;
  check_mpi(MPI_Allreduce(&local, &result, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  return result != 0;
}

void World::broadcast(void* bytes, size_t count, int root) const {
  if (!mpi_) return;
  check_mpi(MPI_Bcast(bytes, int(count), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
}

#else  // built without MPI: a world of one process

World::World(int*, char***) {
  SESSA_CHECK(!launched_by_mpi(), "mpi",
              "started by an MPI launcher, but this build has no MPI (install libopenmpi-dev and rebuild)");
}
World::~World() = default;
double World::sum(double value) const { return value; }
bool World::any(bool flag) const { return flag; }
void World::broadcast(void*, size_t, int) const {}

#endif

void World::abort(const std::string& message, int code) {
  std::fprintf(stderr, "rank %d: %s\n", rank_, message.c_str());
  std::fflush(stderr);
  run_abort_hooks();
#if SESSA_HAS_MPI
  if (mpi_) MPI_Abort(MPI_COMM_WORLD, code);
#endif
  std::_Exit(code);
}

}  // namespace sessa::dist

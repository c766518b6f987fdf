// The processes of one training job. Launched by mpirun (or another MPI launcher,
// recognised from its environment variables), World initialises MPI and spans
// MPI_COMM_WORLD; otherwise it is a world of one process and MPI is never touched.
// It also carries the small host-side collectives the apps need (a loss to average,
// a stop flag to agree on) and the job-wide abort that turns one rank's failure into
// every rank's exit instead of a hang inside a collective.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "tensor/device.h"

namespace sessa::dist {

class World {
 public:
  // Call once, first thing in main (MPI may rewrite argc/argv).
  World(int* argc, char*** argv);
  ~World();  // MPI_Finalize
  World(const World&) = delete;
  World& operator=(const World&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  int local_rank() const { return local_rank_; }  // rank among the processes on this node
  int local_size() const { return local_size_; }
  bool distributed() const { return size_ > 1; }

  double sum(double value) const;  // over all ranks
  bool any(bool flag) const;       // true on every rank when true on one
  void broadcast(void* bytes, size_t count, int root) const;

  // Runs `fn` before an abort (an NCCL communicator registers its own abort).
  void on_abort(std::function<void()> fn) { abort_hooks_.push_back(std::move(fn)); }
  // Prints "rank R: <message>" to stderr and ends the whole job with exit code
  // `code`: MPI_Abort tells mpirun to stop every rank.
  [[noreturn]] void abort(const std::string& message, int code = 1);

 private:
  void run_abort_hooks();

  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  bool mpi_ = false;
  std::vector<std::function<void()>> abort_hooks_;
};

// True when an MPI launcher started this process (its environment says so).
bool launched_by_mpi();

// Runs an app's `body`. An exception prints "<app>: error: <what>" and returns 1;
// with several ranks it ends every rank instead (World::abort), naming this one.
int run_reporting_errors(World& world, const char* app, const std::function<int()>& body);

// The device of this rank from a --device flag: with several ranks, "cuda" (or
// "auto" on a GPU machine) means the GPU numbered by the local rank.
Device device_for_rank(const World& world, const std::string& spec);

}  // namespace sessa::dist

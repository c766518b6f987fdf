#include "dist/data_parallel.h"

#include "tensor/ops.h"

namespace sessa::dist {

DataParallel::DataParallel(World& world, std::unique_ptr<Communicator> comm, nn::ParameterBuffer& params, bool zero1)
    : world_(world), comm_(std::move(comm)), params_(params), zero1_(zero1) {
  SESSA_CHECK(!zero1 || params.shards() == comm_->size(), "DataParallel",
              "ZeRO-1 needs the parameter buffer laid out in " << comm_->size() << " shards, not " << params.shards());
  comm_->broadcast_(params.data(), 0);
  comm_->wait();
}

Tensor DataParallel::bucket(const Tensor& flat, size_t b) const {
  const nn::Range& r = params_.buckets()[b];
  return ops::narrow(flat, 0, r.begin, r.size());
}

std::vector<nn::Range> DataParallel::owned_ranges() const {
  if (!zero1_) return {{0, params_.numel()}};
  std::vector<nn::Range> owned;  // part `rank` of every bucket, in buffer order (buckets() runs backwards)
  for (auto b = params_.buckets().rbegin(); b != params_.buckets().rend(); ++b) {
    const int64_t part = b->size() / comm_->size(), begin = b->begin + part * comm_->rank();
    owned.push_back({begin, begin + part});
  }
  return owned;
}

autograd::LeafReadyHook DataParallel::on_gradient_ready() {
  const size_t n = params_.buckets().size();
  waiting_for_.assign(n, 0);
  for (const auto& e : params_.entries()) ++waiting_for_[size_t(params_.bucket_of(*e.param.tensor))];
  ready_.assign(n, false);
  next_to_reduce_ = 0;
  return [this](const Tensor& leaf) {
    const int b = params_.bucket_of(leaf);
    if (b >= 0 && --waiting_for_[size_t(b)] == 0) bucket_ready(size_t(b));
  };
}

void DataParallel::bucket_ready(size_t b) {
  ready_[b] = true;
  for (; next_to_reduce_ < ready_.size() && ready_[next_to_reduce_]; ++next_to_reduce_) {
    const Tensor grad = bucket(params_.grad(), next_to_reduce_);
    if (zero1_)
      comm_->reduce_scatter_sum_(grad);
    else
      comm_->all_reduce_sum_(grad);
  }
}

void DataParallel::finish_gradients() {
  // Buckets holding a parameter that got no gradient this step were never reported.
  for (size_t b = 0; b < ready_.size(); ++b)
    if (!ready_[b]) bucket_ready(b);
  comm_->wait();
}

void DataParallel::sum_over_shards_(const Tensor& value) {
  if (!zero1_) return;
  comm_->all_reduce_sum_(value);
  comm_->wait();
}

void DataParallel::after_step() {
  if (!zero1_) return;
  const int64_t ranks = comm_->size();
  for (size_t b = 0; b < params_.buckets().size(); ++b) {
    const Tensor all = bucket(params_.data(), b);
    comm_->all_gather(ops::narrow(all, 0, all.numel() / ranks * comm_->rank(), all.numel() / ranks), all);
  }
  comm_->wait();
}

Tensor DataParallel::gather_owned(const Tensor& owned) {
  if (!zero1_) return owned;
  Tensor full = zeros({params_.numel()}, owned.options());
  int64_t offset = 0;  // `owned` holds this rank's parts in buffer order (owned_ranges)
  for (size_t b = params_.buckets().size(); b-- > 0;) {
    const int64_t part = params_.buckets()[b].size() / comm_->size();
    comm_->all_gather(ops::narrow(owned, 0, offset, part), bucket(full, b));
    offset += part;
  }
  comm_->wait();
  return full;
}

void enable_data_parallel(nn::TrainerOptions& options, World& world, Device device, bool zero1) {
  if (!world.distributed()) return;
  options.layout.shards = zero1 ? world.size() : 1;
  options.data_parallel = [&world, device, zero1](nn::ParameterBuffer& params) {
    return std::make_unique<DataParallel>(world, make_communicator(world, device), params, zero1);
  };
}

}  // namespace sessa::dist

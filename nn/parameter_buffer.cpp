#include "nn/parameter_buffer.h"

#include <algorithm>

#include "tensor/ops.h"

namespace sessa::nn {

namespace {
constexpr int64_t kAlign = 64;  // elements: 256 bytes in float32, enough for any vector load
int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
}  // namespace

ParameterBuffer::ParameterBuffer(std::vector<NamedParameter> params, ParameterLayout layout) : layout_(layout) {
  SESSA_CHECK(!params.empty(), "ParameterBuffer", "no parameters");
  SESSA_CHECK(layout.shards >= 1 && layout.bucket_bytes > 0, "ParameterBuffer",
              "needs shards >= 1 and bucket_bytes > 0, got " << layout.shards << " and " << layout.bucket_bytes);
  const TensorOptions opt = params.front().tensor->options();
  for (const auto& p : params)
    SESSA_CHECK(p.tensor->options().dtype == opt.dtype && p.tensor->device() == opt.device, "ParameterBuffer",
                "parameter " << p.name << " is " << p.tensor->str() << "; all must be " << dtype_name(opt.dtype)
                             << " on " << opt.device.str());
  std::stable_partition(params.begin(), params.end(), [](const NamedParameter& p) { return p.weight_decay; });

  // Buckets from the end: parameters are added until a bucket reaches bucket_bytes.
  std::vector<std::vector<size_t>> groups;  // parameter indices, last bucket first
  int64_t bytes = 0;
  for (size_t i = params.size(); i-- > 0;) {
    if (groups.empty() || bytes >= layout.bucket_bytes) groups.emplace_back(), bytes = 0;
    groups.back().push_back(i);
    bytes += params[i].tensor->numel() * int64_t(dtype_size(opt.dtype));
  }
  // Offsets from the front: walk the buckets in buffer order.
  const int64_t bucket_multiple = kAlign * layout.shards;
  std::vector<Range> ranges(params.size());
  std::vector<Range> bucket_ranges(groups.size());
  int64_t cursor = 0;
  for (size_t b = groups.size(); b-- > 0;) {
    const int64_t start = cursor;
    for (auto it = groups[b].rbegin(); it != groups[b].rend(); ++it) {
      ranges[*it] = {cursor, cursor + params[*it].tensor->numel()};
      cursor = round_up(ranges[*it].end, kAlign);
    }
    cursor = start + round_up(std::max<int64_t>(cursor - start, 1), bucket_multiple);
    bucket_ranges[b] = {start, cursor};
  }
  buckets_ = std::move(bucket_ranges);
  decay_end_ = cursor;
  for (size_t i = 0; i < params.size(); ++i)
    if (!params[i].weight_decay) {
      decay_end_ = ranges[i].begin;
      break;
    }

  data_ = zeros({cursor}, opt);
  grad_ = zeros({cursor}, opt);
  for (size_t i = 0; i < params.size(); ++i) {
    Tensor& member = *params[i].tensor;
    const Shape shape = member.shape();
    Tensor view = ops::view(ops::narrow(data_, 0, ranges[i].begin, ranges[i].size()), shape);
    ops::copy_(view, member.detach());
    member = view;
    member.set_requires_grad(true);
    member.set_grad(ops::view(ops::narrow(grad_, 0, ranges[i].begin, ranges[i].size()), shape));
    entries_.push_back({params[i], ranges[i]});
  }
  for (size_t b = 0; b < buckets_.size(); ++b)
    for (const Entry& e : entries_)
      if (e.range.begin >= buckets_[b].begin && e.range.end <= buckets_[b].end)
        bucket_of_leaf_[e.param.tensor->identity()] = int(b);
}

int ParameterBuffer::bucket_of(const Tensor& leaf) const {
  auto it = bucket_of_leaf_.find(leaf.identity());
  return it == bucket_of_leaf_.end() ? -1 : it->second;
}

void ParameterBuffer::zero_grad() { ops::fill_(grad_, 0.0); }

const ComputeCopies& ParameterBuffer::refresh_compute_copies(DType dtype) {
  if (!compute_.defined() || compute_.dtype() != dtype)
    compute_ = Tensor::empty(data_.shape(), {dtype, data_.device()});
  ops::copy_(compute_, data_);  // (converting)
  // Rebuilt every time: only members that still view this buffer (one replaced since, e.g.
  // by Module::to, is converted where it is used), keyed by the handles alive now.
  compute_copies_.clear();
  for (const Entry& e : entries_) {
    const Tensor& member = *e.param.tensor;
    if (member.shares_storage(data_) && member.offset() == data_.offset() + e.range.begin)
      compute_copies_[member.identity()] =
          ops::view(ops::narrow(compute_, 0, e.range.begin, e.range.size()), member.shape());
  }
  return compute_copies_;
}

std::vector<std::pair<std::string, Tensor>> ParameterBuffer::views(const Tensor& flat) const {
  SESSA_CHECK(flat.dim() == 1 && flat.numel() == numel() && flat.is_contiguous(), "ParameterBuffer::views",
              "expected a contiguous flat tensor of " << numel() << " elements, got " << flat.str());
  std::vector<std::pair<std::string, Tensor>> out;
  for (const Entry& e : entries_)
    out.emplace_back(e.param.name,
                     ops::view(ops::narrow(flat, 0, e.range.begin, e.range.size()), e.param.tensor->shape()));
  return out;
}

}  // namespace sessa::nn

// Inference timing: the latency of one call and the throughput of a batch, after warm-up.
#pragma once

#include "model.hpp"

#include <cstddef>

namespace digitflow {

struct Latency {
  double median_ms = 0;
  double p99_ms = 0;  // nearest rank: the ceil(0.99 n)-th fastest call
  std::size_t calls = 0;
};

struct Throughput {
  double images_per_s = 0;  // batch size / median seconds per pass
  std::size_t passes = 0;
};

// `warmup` untimed calls, then `calls` calls timed one by one, on `images` (the same tensor each time).
Latency time_latency(Classifier& model, const at::Tensor& images, std::size_t warmup, std::size_t calls);

// `warmup` untimed passes, then `passes` timed passes of the whole batch `images`.
Throughput time_throughput(Classifier& model, const at::Tensor& images, std::size_t warmup, std::size_t passes);

}  // namespace digitflow

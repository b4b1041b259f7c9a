#include "bench.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <vector>

namespace digitflow {
namespace {

// Seconds of each of `calls` calls of the model on `images`, after `warmup` untimed ones, sorted.
std::vector<double> timed_calls(Classifier& model, const at::Tensor& images, std::size_t warmup, std::size_t calls) {
  for (std::size_t i = 0; i < warmup; ++i) model.logits(images);
  std::vector<double> seconds;
  seconds.reserve(calls);
  for (std::size_t i = 0; i < calls; ++i) {
    const auto start = std::chrono::steady_clock::now();
    model.logits(images);
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(seconds.begin(), seconds.end());
  return seconds;
}

double median(const std::vector<double>& sorted) {
  const std::size_t n = sorted.size();
  return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

}  // namespace

Latency time_latency(Classifier& model, const at::Tensor& images, std::size_t warmup, std::size_t calls) {
  const auto seconds = timed_calls(model, images, warmup, std::max<std::size_t>(calls, 1));
  const auto rank = static_cast<std::size_t>(std::ceil(0.99 * static_cast<double>(seconds.size())));
  return {median(seconds) * 1e3, seconds[std::max<std::size_t>(rank, 1) - 1] * 1e3, seconds.size()};
}

Throughput time_throughput(Classifier& model, const at::Tensor& images, std::size_t warmup, std::size_t passes) {
  const auto seconds = timed_calls(model, images, warmup, std::max<std::size_t>(passes, 1));
  return {static_cast<double>(images.size(0)) / median(seconds), seconds.size()};
}

}  // namespace digitflow

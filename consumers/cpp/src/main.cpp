// digitflow-classify: classify the images of an MNIST-format IDX file with a model digitflow exported,
// without Python. See usage() below and docs/cpp.md.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench.hpp"
#include "idx.hpp"
#include "model.hpp"

namespace {

constexpr const char* kUsage = R"USAGE(usage: digitflow-classify [options] MODEL IMAGES [LABELS]

Classify the images of an MNIST-format IDX file with a model exported by digitflow, without Python.

  MODEL   lenet.pt, the TorchScript file (torch::jit::load), or lenet.aoti.pt2, the AOTInductor
          package (torch::inductor::AOTIModelPackageLoader; digitflow run --export-formats
          torchscript,export,aoti writes it). lenet.pt2 (torch.export) loads in Python only.
  IMAGES  IDX image file (idx3-ubyte), gzip or not: unsigned bytes 0-255, a white digit on black,
          28x28, as MNIST's t10k-images-idx3-ubyte.gz.
  LABELS  IDX label file (idx1-ubyte): adds each image's label and the accuracy.

Input: the model is given float32 images (N, 1, 28, 28) = bytes / 255, pixels in [0, 1]; it
normalises them itself (the preprocessing travels inside the exported file).
Output: a line per image, "INDEX PREDICTED" (then its LABEL, then its logits with --logits), and
with LABELS a last line "accuracy A (CORRECT/N)".

options:
  --limit N     the first N images only
  --batch N     images per forward pass (default 256)
  --logits      print each image's logits too
  --quiet       no line per image
  --threads N   intra-op threads (default: libtorch's, one per physical core)
  --bench       time the model instead of classifying: one image (median and p99 latency over
                --calls calls after 100 warm-up calls) and the throughput at batch 256 (the first
                256 images, median of --passes passes after 10 warm-up passes)
  --calls N     timed calls of one image for --bench (default 1000)
  --passes N    timed passes of the batch of 256 for --bench (default 50)
  -h, --help    this help
)USAGE";

struct Options {
  std::string model, images, labels;
  long limit = -1, batch = 256, threads = 0, calls = 1000, passes = 50;
  bool logits = false, quiet = false, bench = false;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

long positive(const std::string& flag, const std::string& text) {
  std::size_t used = 0;
  long value = 0;
  try {
    value = std::stol(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != text.size() || value < 1) throw UsageError(flag + " takes a whole number of at least 1, got '" + text + "'");
  return value;
}

Options parse(int argc, char** argv) {
  Options options;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UsageError(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (arg == "--limit") {
      options.limit = positive(arg, value());
    } else if (arg == "--batch") {
      options.batch = positive(arg, value());
    } else if (arg == "--threads") {
      options.threads = positive(arg, value());
    } else if (arg == "--calls") {
      options.calls = positive(arg, value());
    } else if (arg == "--passes") {
      options.passes = positive(arg, value());
    } else if (arg == "--logits") {
      options.logits = true;
    } else if (arg == "--quiet") {
      options.quiet = true;
    } else if (arg == "--bench") {
      options.bench = true;
    } else if (arg.size() > 1 && arg[0] == '-') {
      throw UsageError("unknown option " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() < 2 || positional.size() > 3) throw UsageError("give MODEL IMAGES [LABELS]");
  options.model = positional[0];
  options.images = positional[1];
  if (positional.size() == 3) options.labels = positional[2];
  return options;
}

// Images (N, rows, cols) bytes -> float32 (N, 1, rows, cols) in [0, 1]: the same division by 255 as
// digitflow's own loader (digitflow.data.framing), so the model sees bit-identical pixels.
at::Tensor to_pixels(digitflow::IdxFile& idx, std::size_t count) {
  const auto rows = static_cast<int64_t>(idx.dims[1]), cols = static_cast<int64_t>(idx.dims[2]);
  const at::Tensor bytes = at::from_blob(idx.data.data(), {static_cast<int64_t>(count), 1, rows, cols}, at::kByte);
  return bytes.to(at::kFloat).div_(255.0);
}

void bench(digitflow::Classifier& model, const at::Tensor& pixels, const Options& options) {
  const int64_t n = pixels.size(0);
  const at::Tensor one = pixels.slice(0, 0, 1).contiguous();
  const at::Tensor batch = pixels.index_select(0, at::arange(256, at::kLong).remainder(n)).contiguous();
  const auto latency = digitflow::time_latency(model, one, 100, static_cast<std::size_t>(options.calls));
  const auto throughput = digitflow::time_throughput(model, batch, 10, static_cast<std::size_t>(options.passes));
  std::printf("model %s (%s), %d thread(s)\n", options.model.c_str(), model.format().c_str(), at::get_num_threads());
  std::printf("latency batch 1: median %.4f ms, p99 %.4f ms over %zu calls\n", latency.median_ms, latency.p99_ms,
              latency.calls);
  std::printf("throughput batch 256: %.0f images/s (median of %zu passes)\n", throughput.images_per_s,
              throughput.passes);
}

int classify(digitflow::Classifier& model, const at::Tensor& pixels, const std::vector<std::uint8_t>* labels,
             const Options& options) {
  const int64_t n = pixels.size(0);
  int64_t correct = 0;
  std::string out;
  for (int64_t start = 0; start < n; start += options.batch) {
    const at::Tensor logits = model.logits(pixels.slice(0, start, std::min(n, start + options.batch)).contiguous());
    const at::Tensor predicted = logits.argmax(1).contiguous();
    const at::Tensor values = logits.to(at::kFloat).contiguous();
    const auto* classes = predicted.data_ptr<int64_t>();
    for (int64_t i = 0; i < predicted.size(0); ++i) {
      const int64_t index = start + i;
      if (labels != nullptr) correct += classes[i] == (*labels)[static_cast<std::size_t>(index)];
      if (options.quiet) continue;
      out += std::to_string(index) + ' ' + std::to_string(classes[i]);
      if (labels != nullptr) out += ' ' + std::to_string((*labels)[static_cast<std::size_t>(index)]);
      if (options.logits) {
        const float* row = values.data_ptr<float>() + i * values.size(1);
        for (int64_t c = 0; c < values.size(1); ++c) {
          char number[32];
          std::snprintf(number, sizeof number, " %.9g", static_cast<double>(row[c]));  // round-trips a float32
          out += number;
        }
      }
      out += '\n';
    }
    std::fputs(out.c_str(), stdout);
    out.clear();
  }
  if (labels != nullptr) {
    std::printf("accuracy %.4f (%lld/%lld)\n", static_cast<double>(correct) / static_cast<double>(n),
                static_cast<long long>(correct), static_cast<long long>(n));
  }
  return 0;
}

int run(const Options& options) {
  if (options.threads > 0) at::set_num_threads(static_cast<int>(options.threads));
  auto images = digitflow::read_idx(options.images, 3);
  std::size_t count = images.dims[0];
  if (options.limit > 0) count = std::min(count, static_cast<std::size_t>(options.limit));
  if (count == 0) throw std::runtime_error(options.images + " holds no images");
  digitflow::IdxFile labels;
  if (!options.labels.empty() && !options.bench) {
    labels = digitflow::read_idx(options.labels, 1);
    if (labels.dims[0] != images.dims[0]) {
      throw std::runtime_error(options.labels + " holds " + std::to_string(labels.dims[0]) + " labels for the " +
                               std::to_string(images.dims[0]) + " images of " + options.images);
    }
  }
  const auto model = digitflow::load_classifier(options.model);
  c10::InferenceMode inference;
  const at::Tensor pixels = to_pixels(images, count);
  try {
    if (options.bench) {
      bench(*model, pixels, options);
      return 0;
    }
    return classify(*model, pixels, options.labels.empty() ? nullptr : &labels.data, options);
  } catch (const std::exception& error) {
    throw std::runtime_error(options.model + " failed on the images of " + options.images + ": " +
                             digitflow::first_line(error));
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const UsageError& error) {
    std::fprintf(stderr, "digitflow-classify: error: %s (--help for usage)\n", error.what());
    return 2;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "digitflow-classify: error: %s\n", digitflow::first_line(error).c_str());
    return 1;
  }
}

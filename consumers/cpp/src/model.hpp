// A model exported by digitflow, loaded from its file: TorchScript or an AOTInductor package.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

namespace digitflow {

// Images in, logits out: float32 (N, 1, 28, 28) pixels in [0, 1] -> (N, classes) float32.
// The exported model normalises the pixels itself, so nothing but the /255 scaling happens here.
class Classifier {
 public:
  virtual ~Classifier() = default;
  virtual at::Tensor logits(const at::Tensor& images) = 0;
  // "torchscript" or "aoti": which loader read the file.
  virtual std::string format() const = 0;
};

// Loads `path` by its name: *.aoti.pt2 with torch::inductor::AOTIModelPackageLoader, *.pt with
// torch::jit::load. Throws std::runtime_error (one line) for a torch.export program (*.pt2, which
// only Python loads), another suffix, or a file libtorch cannot load.
std::unique_ptr<Classifier> load_classifier(const std::string& path);

// The first line of an exception's message: c10::Error's without its C++ backtrace.
std::string first_line(const std::exception& error);

}  // namespace digitflow

#include "model.hpp"

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <sstream>
#include <stdexcept>
#include <vector>

namespace digitflow {
namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

class TorchScriptClassifier final : public Classifier {
 public:
  explicit TorchScriptClassifier(const std::string& path) : module_(torch::jit::load(path, torch::kCPU)) {
    module_.eval();  // batch norm on its running statistics
  }
  at::Tensor logits(const at::Tensor& images) override { return module_.forward({images}).toTensor(); }
  std::string format() const override { return "torchscript"; }

 private:
  torch::jit::Module module_;
};

class AotiClassifier final : public Classifier {
 public:
  explicit AotiClassifier(const std::string& path) : loader_(path) {}
  at::Tensor logits(const at::Tensor& images) override { return loader_.run({images}).at(0); }
  std::string format() const override { return "aoti"; }

 private:
  torch::inductor::AOTIModelPackageLoader loader_;
};

}  // namespace

std::string first_line(const std::exception& error) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&error);
  std::string text = c10_error != nullptr ? c10_error->what_without_backtrace() : error.what();
  std::vector<std::string> lines;
  std::istringstream stream(text);
  for (std::string line; std::getline(stream, line);) {
    const auto start = line.find_first_not_of(" \t\r");
    if (start != std::string::npos) lines.push_back(line.substr(start));
  }
  if (lines.empty()) return "unknown error";
  // An exception raised inside a TorchScript model (PixelInput's "this model takes ...") comes as
  // "The following operation failed in the TorchScript interpreter.", the model's traceback, and then,
  // last, "builtins.ValueError: <its message>": that last line is the one that says what went wrong.
  if (lines.front().rfind("The following operation failed in the TorchScript interpreter", 0) == 0) {
    std::string last = lines.back();
    return last.rfind("builtins.", 0) == 0 ? last.substr(9) : last;
  }
  return lines.front();
}

std::unique_ptr<Classifier> load_classifier(const std::string& path) {
  const bool aoti = ends_with(path, ".aoti.pt2");
  if (!aoti && ends_with(path, ".pt2")) {
    throw std::runtime_error(path + " is a torch.export program, which only Python loads; give lenet.pt (TorchScript) "
                                    "or an AOTInductor package (lenet.aoti.pt2: digitflow run --export-formats "
                                    "torchscript,export,aoti)");
  }
  if (!aoti && !ends_with(path, ".pt")) {
    throw std::runtime_error(path + ": a model file must end in .pt (TorchScript) or .aoti.pt2 (AOTInductor)");
  }
  try {
    if (aoti) return std::make_unique<AotiClassifier>(path);
    return std::make_unique<TorchScriptClassifier>(path);
  } catch (const std::exception& error) {
    throw std::runtime_error("cannot load " + path + ": " + first_line(error));
  }
}

}  // namespace digitflow

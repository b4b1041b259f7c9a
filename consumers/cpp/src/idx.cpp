#include "idx.hpp"

#include <zlib.h>

#include <algorithm>
#include <array>
#include <memory>
#include <stdexcept>

namespace digitflow {
namespace {

// An IDX file holds at most a few GB; the header's dimensions are checked against this before
// anything is allocated, so a corrupt header is an error, not an allocation of its product.
constexpr std::size_t kMaxBytes = std::size_t{1} << 34;

struct GzCloser {
  void operator()(gzFile_s* file) const { gzclose(file); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

[[noreturn]] void fail(const std::string& path, const std::string& why) {
  throw std::runtime_error(path + ": " + why);
}

// Reads exactly `size` bytes, or fewer at the end of the file; a zlib error (a corrupt .gz) throws.
std::size_t read_some(gzFile_s* file, const std::string& path, std::uint8_t* out, std::size_t size) {
  std::size_t done = 0;
  while (done < size) {
    const auto chunk = static_cast<unsigned>(std::min<std::size_t>(size - done, 1u << 30));
    const int got = gzread(file, out + done, chunk);
    if (got < 0) {
      int code = 0;
      fail(path, std::string("cannot decompress: ") + gzerror(file, &code));
    }
    if (got == 0) break;
    done += static_cast<std::size_t>(got);
  }
  return done;
}

}  // namespace

IdxFile read_idx(const std::string& path, std::size_t expected_dims) {
  GzFile file(gzopen(path.c_str(), "rb"));
  if (!file) fail(path, "cannot open the file");
  std::array<std::uint8_t, 4> magic{};
  if (read_some(file.get(), path, magic.data(), magic.size()) != magic.size() || magic[0] != 0 || magic[1] != 0) {
    fail(path, "not an IDX file (its first bytes are not an IDX header)");
  }
  if (magic[2] != 0x08) fail(path, "not an IDX file of unsigned bytes (type 0x08)");
  if (magic[3] != expected_dims) {
    fail(path, "has " + std::to_string(magic[3]) + " dimensions, expected " + std::to_string(expected_dims) +
                   (expected_dims == 3 ? " (images: count, rows, columns)" : " (labels: count)"));
  }
  IdxFile idx;
  std::size_t total = 1;
  for (std::size_t d = 0; d < expected_dims; ++d) {
    std::array<std::uint8_t, 4> be{};
    if (read_some(file.get(), path, be.data(), be.size()) != be.size()) fail(path, "truncated IDX header");
    const std::size_t size = (std::size_t{be[0]} << 24) | (std::size_t{be[1]} << 16) | (std::size_t{be[2]} << 8) | be[3];
    idx.dims.push_back(size);
    total = size == 0 ? 0 : (total > kMaxBytes / size ? kMaxBytes + 1 : total * size);
  }
  if (total > kMaxBytes) fail(path, "its header declares more than 16 GiB of data");
  idx.data.resize(total);
  if (read_some(file.get(), path, idx.data.data(), total) != total) {
    fail(path, "truncated: shorter than the " + std::to_string(total) + " bytes its header declares");
  }
  std::uint8_t extra = 0;
  if (read_some(file.get(), path, &extra, 1) != 0) fail(path, "longer than its header declares");
  return idx;
}

}  // namespace digitflow

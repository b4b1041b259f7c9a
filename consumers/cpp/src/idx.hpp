// IDX files (MNIST's format): a big-endian header, then unsigned bytes. No libtorch here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace digitflow {

// The content of an IDX file of unsigned bytes: its dimensions and its values, row-major.
struct IdxFile {
  std::vector<std::size_t> dims;  // images: (N, rows, cols); labels: (N)
  std::vector<std::uint8_t> data;
};

// Reads an IDX file of unsigned bytes (type 0x08) with `expected_dims` dimensions, gzip-compressed or
// not (zlib reads both). Throws std::runtime_error, one line naming the file, for a file that is
// missing, of another type or shape, truncated or longer than its header says.
IdxFile read_idx(const std::string& path, std::size_t expected_dims);

}  // namespace digitflow

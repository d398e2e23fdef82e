#include "io/gguf.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/checked_math.h"
#include "core/dtype.h"
#include "core/quant.h"
#include "test_util.h"

namespace kiln {
namespace {

using test::TempDir;

// ---- A small GGUF writer of the test's own, able to write wrong files on purpose ----

std::string le(uint64_t v, int bytes) {
  std::string s(bytes, '\0');
  for (int i = 0; i < bytes; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}
std::string gstr(std::string_view s) { return le(s.size(), 8) + std::string(s); }
std::string f32_bytes(float f) { return le(std::bit_cast<uint32_t>(f), 4); }
std::string f64_bytes(double f) { return le(std::bit_cast<uint64_t>(f), 8); }
uint32_t tid(GgufType t) { return static_cast<uint32_t>(t); }

// An array payload: element type, count, then the already encoded elements.
std::string garray(GgufType elem, const std::vector<std::string>& elems) {
  std::string s = le(tid(elem), 4) + le(elems.size(), 8);
  for (const auto& e : elems) s += e;
  return s;
}

struct Kv {
  std::string key;
  uint32_t type;
  std::string payload;  // the encoded value
};

struct TensorSpec {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type;
  std::string data;                     // written at the offset
  std::optional<uint64_t> offset = {};  // relative to the data section; default: packed and aligned
  std::optional<uint32_t> n_dims = {};  // default: dims.size()
};

struct Image {
  std::string bytes;
  size_t kv_start = 0, info_start = 0, data_start = 0;
};

struct GgufBuilder {
  uint32_t version = 3;
  std::optional<uint64_t> tensor_count, kv_count;  // what the header claims, if not the truth
  uint64_t alignment = 32;                         // for the layout; general.alignment is just another kv
  std::vector<Kv> kvs;
  std::vector<TensorSpec> tensors;

  GgufBuilder& kv(std::string key, GgufType t, std::string payload) {
    kvs.push_back({std::move(key), tid(t), std::move(payload)});
    return *this;
  }
  GgufBuilder& tensor(TensorSpec t) {
    tensors.push_back(std::move(t));
    return *this;
  }

  Image build() const {
    Image img;
    std::string& s = img.bytes;
    s = "GGUF" + le(version, 4) + le(tensor_count.value_or(tensors.size()), 8) + le(kv_count.value_or(kvs.size()), 8);
    img.kv_start = s.size();
    for (const auto& k : kvs) s += gstr(k.key) + le(k.type, 4) + k.payload;
    img.info_start = s.size();
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const auto& t : tensors) {
      const uint64_t off = t.offset.value_or(round_up(next, alignment));
      offsets.push_back(off);
      next = std::max(next, off + t.data.size());
      s += gstr(t.name) + le(t.n_dims.value_or(static_cast<uint32_t>(t.dims.size())), 4);
      for (uint64_t d : t.dims) s += le(d, 8);
      s += le(t.type, 4) + le(off, 8);
    }
    s.resize(round_up(s.size(), alignment), '\0');
    img.data_start = s.size();
    for (size_t i = 0; i < tensors.size(); ++i) {
      const size_t at = img.data_start + offsets[i];
      if (tensors[i].data.empty()) continue;
      if (s.size() < at + tensors[i].data.size()) s.resize(at + tensors[i].data.size(), '\0');
      std::memcpy(s.data() + at, tensors[i].data.data(), tensors[i].data.size());
    }
    return img;
  }
};

std::string pattern(size_t n, uint8_t seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + 7 * i);
  return s;
}

// A tensor of the given type and dims whose data is a byte pattern of the right size.
TensorSpec make_tensor(std::string name, GgmlType t, std::vector<uint64_t> dims, uint8_t seed = 1) {
  uint64_t rows = 1;
  for (size_t i = 1; i < dims.size(); ++i) rows *= dims[i];
  const uint64_t nbytes = *ggml_row_bytes(t, static_cast<int64_t>(dims[0])) * rows;
  return {std::move(name), std::move(dims), static_cast<uint32_t>(t), pattern(nbytes, seed)};
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

// Opens a file made of `bytes` and expects `code` with a message holding the path and every needle.
void expect_refused(const TempDir& dir, const std::string& bytes, const std::vector<std::string>& needles,
                    StatusCode code = StatusCode::kDataLoss) {
  const std::string path = dir.sub("bad.gguf");
  write_bytes(path, bytes);
  auto r = GgufFile::open(path);
  ASSERT_FALSE(r.ok()) << "accepted a bad file; needles[0]=" << (needles.empty() ? "" : needles[0]);
  EXPECT_EQ(r.status().code(), code) << r.status().to_string();
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
  for (const auto& n : needles) {
    EXPECT_NE(r.status().message().find(n), std::string::npos) << "no \"" << n << "\" in: " << r.status().message();
  }
}

// A valid file with every value type, nested arrays and tensors of several types.
GgufBuilder full_builder(uint32_t version, uint64_t alignment) {
  GgufBuilder b;
  b.version = version;
  b.alignment = alignment;
  b.kv("general.architecture", GgufType::kString, gstr("llama"))
      .kv("general.alignment", GgufType::kU32, le(alignment, 4))
      .kv("v.u8", GgufType::kU8, le(200, 1))
      .kv("v.i8", GgufType::kI8, le(static_cast<uint8_t>(-5), 1))
      .kv("v.u16", GgufType::kU16, le(60000, 2))
      .kv("v.i16", GgufType::kI16, le(static_cast<uint16_t>(-300), 2))
      .kv("v.u32", GgufType::kU32, le(4000000000u, 4))
      .kv("v.i32", GgufType::kI32, le(static_cast<uint32_t>(-70000), 4))
      .kv("v.u64", GgufType::kU64, le(0xfedcba9876543210ull, 8))
      .kv("v.i64", GgufType::kI64, le(static_cast<uint64_t>(int64_t{-1} << 40), 8))
      .kv("v.i64pos", GgufType::kI64, le(123456789012345ull, 8))
      .kv("v.f32", GgufType::kF32, f32_bytes(1e-5f))
      .kv("v.f64", GgufType::kF64, f64_bytes(500000.25))
      .kv("v.true", GgufType::kBool, le(1, 1))
      .kv("v.false", GgufType::kBool, le(0, 1))
      .kv("v.empty", GgufType::kString, gstr(""))
      .kv("v.utf8", GgufType::kString, gstr("h\xc3\xa9llo \xe2\x96\x81world"))
      .kv("a.str", GgufType::kArray, garray(GgufType::kString, {gstr("<s>"), gstr(""), gstr("\xe2\x96\x81the")}))
      .kv("a.f32", GgufType::kArray, garray(GgufType::kF32, {f32_bytes(0.5f), f32_bytes(-1.25f)}))
      .kv("a.f64", GgufType::kArray, garray(GgufType::kF64, {f64_bytes(0.1)}))
      .kv("a.i32", GgufType::kArray, garray(GgufType::kI32, {le(1, 4), le(static_cast<uint32_t>(-2), 4), le(3, 4)}))
      .kv("a.u64", GgufType::kArray, garray(GgufType::kU64, {le(7, 8), le(1ull << 62, 8)}))
      .kv("a.u64big", GgufType::kArray, garray(GgufType::kU64, {le(~0ull, 8)}))
      .kv("a.u8", GgufType::kArray, garray(GgufType::kU8, {le(1, 1), le(255, 1)}))
      .kv("a.i16", GgufType::kArray, garray(GgufType::kI16, {le(static_cast<uint16_t>(-1), 2)}))
      .kv("a.bool", GgufType::kArray, garray(GgufType::kBool, {le(1, 1), le(0, 1), le(1, 1)}))
      .kv("a.empty", GgufType::kArray, garray(GgufType::kI32, {}))
      .kv("a.nested", GgufType::kArray,
          garray(GgufType::kArray, {garray(GgufType::kI32, {le(1, 4), le(2, 4)}), garray(GgufType::kI32, {le(3, 4)})}));
  b.tensor(make_tensor("token_embd.weight", GgmlType::kQ8_0, {64, 3}, 1))
      .tensor(make_tensor("norm.weight", GgmlType::kF32, {5}, 2))  // 20 bytes: the next offset is padded
      .tensor(make_tensor("h.f16", GgmlType::kF16, {3, 2}, 3))
      .tensor(make_tensor("h.bf16", GgmlType::kBF16, {2, 2, 2}, 4))
      .tensor(make_tensor("h.q4_0", GgmlType::kQ4_0, {32, 2, 1, 2}, 5))
      .tensor(make_tensor("h.q4_1", GgmlType::kQ4_1, {64}, 6))
      .tensor(make_tensor("h.q5_0", GgmlType::kQ5_0, {32}, 7))
      .tensor(make_tensor("h.q5_1", GgmlType::kQ5_1, {32}, 8))
      .tensor(make_tensor("h.q4_k", GgmlType::kQ4_K, {256, 2}, 9))
      .tensor(make_tensor("h.q5_k", GgmlType::kQ5_K, {256}, 10))
      .tensor(make_tensor("h.q6_k", GgmlType::kQ6_K, {512}, 11));
  return b;
}

void check_full_file(const GgufFile& f, const GgufBuilder& b, const Image& img) {
  EXPECT_EQ(f.version(), b.version);
  EXPECT_EQ(f.alignment(), b.alignment);
  EXPECT_EQ(f.data_offset(), img.data_start);
  EXPECT_EQ(f.data_offset() % b.alignment, 0u);
  ASSERT_EQ(f.metadata().size(), b.kvs.size());
  for (size_t i = 0; i < b.kvs.size(); ++i) EXPECT_EQ(f.metadata()[i].first, b.kvs[i].key);

  EXPECT_EQ(*f.get_string("general.architecture"), "llama");
  EXPECT_EQ(*f.get_uint("general.alignment"), b.alignment);
  EXPECT_EQ(*f.get_uint("v.u8"), 200u);
  EXPECT_EQ(f.find("v.i8")->i, -5);
  EXPECT_EQ(f.find("v.i8")->type, GgufType::kI8);
  EXPECT_EQ(*f.get_uint("v.u16"), 60000u);
  EXPECT_EQ(f.find("v.i16")->i, -300);
  EXPECT_EQ(*f.get_uint("v.u32"), 4000000000u);
  EXPECT_EQ(f.find("v.i32")->i, -70000);
  EXPECT_EQ(*f.get_uint("v.u64"), 0xfedcba9876543210ull);
  EXPECT_EQ(f.find("v.i64")->i, int64_t{-1} << 40);
  EXPECT_EQ(*f.get_uint("v.i64pos"), 123456789012345ull);
  EXPECT_EQ(*f.get_float("v.f32"), static_cast<double>(1e-5f));  // widened exactly
  EXPECT_EQ(*f.get_float("v.f64"), 500000.25);
  EXPECT_EQ(*f.get_float("v.u16"), 60000.0);
  EXPECT_EQ(*f.get_float("v.i32"), -70000.0);
  EXPECT_TRUE(*f.get_bool("v.true"));
  EXPECT_FALSE(*f.get_bool("v.false"));
  EXPECT_EQ(*f.get_string("v.empty"), "");
  EXPECT_EQ(*f.get_string("v.utf8"), "h\xc3\xa9llo \xe2\x96\x81world");
  EXPECT_EQ(*f.get_string_array("a.str"), (std::vector<std::string>{"<s>", "", "\xe2\x96\x81the"}));
  EXPECT_EQ(*f.get_float_array("a.f32"), (std::vector<float>{0.5f, -1.25f}));
  EXPECT_EQ(*f.get_float_array("a.f64"), (std::vector<float>{0.1f}));
  EXPECT_EQ(*f.get_int_array("a.i32"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(*f.get_int_array("a.u64"), (std::vector<int64_t>{7, int64_t{1} << 62}));
  EXPECT_EQ(*f.get_int_array("a.u8"), (std::vector<int64_t>{1, 255}));
  EXPECT_EQ(*f.get_int_array("a.i16"), (std::vector<int64_t>{-1}));
  EXPECT_EQ(f.find("a.bool")->uints, (std::vector<uint64_t>{1, 0, 1}));
  EXPECT_EQ(f.find("a.bool")->type_description(), "array of bool");
  EXPECT_TRUE(f.get_int_array("a.empty")->empty());
  const GgufValue* nested = f.find("a.nested");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->type_description(), "array of array of i32");
  ASSERT_EQ(nested->array_size(), 2u);
  EXPECT_EQ(nested->arrays[0].ints, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(nested->arrays[1].ints, (std::vector<int64_t>{3}));

  ASSERT_EQ(f.tensors().size(), b.tensors.size());
  for (size_t i = 0; i < b.tensors.size(); ++i) {
    const TensorSpec& want = b.tensors[i];
    const GgufTensorInfo& t = f.tensors()[i];
    EXPECT_EQ(t.name, want.name);
    EXPECT_EQ(static_cast<uint32_t>(t.type), want.type) << t.name;
    ASSERT_EQ(t.dims.size(), want.dims.size()) << t.name;
    for (size_t d = 0; d < want.dims.size(); ++d) EXPECT_EQ(static_cast<uint64_t>(t.dims[d]), want.dims[d]);
    EXPECT_EQ(t.nbytes, want.data.size()) << t.name;
    EXPECT_EQ(t.offset % b.alignment, 0u) << t.name;
    EXPECT_GE(t.offset, f.data_offset());
    // The mapping is page-aligned, so the file's alignment holds in memory too.
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.data) % b.alignment, 0u) << t.name;
    ASSERT_EQ(std::string(static_cast<const char*>(t.data), t.nbytes), want.data) << t.name;
    ASSERT_EQ(std::string(img.bytes.data() + t.offset, t.nbytes), want.data) << t.name;
    EXPECT_EQ(f.find_tensor(want.name), &t);
  }
  EXPECT_EQ(f.find_tensor("h.q6_k")->numel(), 512);
  EXPECT_EQ(f.find_tensor("h.q4_0")->numel(), 128);
  EXPECT_EQ(f.find_tensor("nope"), nullptr);
  EXPECT_EQ(f.find("nope"), nullptr);
}

TEST(GgufReader, RoundTripV3AndV2EveryValueType) {
  TempDir dir;
  for (uint32_t version : {3u, 2u}) {
    for (uint64_t alignment : {32u, 64u, 8u, 1u}) {
      SCOPED_TRACE("version " + std::to_string(version) + " alignment " + std::to_string(alignment));
      GgufBuilder b = full_builder(version, alignment);
      Image img = b.build();
      const std::string path = dir.sub("full.gguf");
      write_bytes(path, img.bytes);
      auto r = GgufFile::open(path);
      ASSERT_TRUE(r.ok()) << r.status().to_string();
      EXPECT_EQ((*r)->path(), path);
      check_full_file(**r, b, img);
    }
  }
}

TEST(GgufReader, DefaultAlignmentNoTensorsAndTensorData) {
  TempDir dir;
  // Header only: no metadata, no tensors, and no padding after it.
  GgufBuilder empty;
  std::string bytes = empty.build().bytes;
  bytes.resize(24);
  write_bytes(dir.sub("e.gguf"), bytes);
  auto e = GgufFile::open(dir.sub("e.gguf"));
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  EXPECT_EQ((*e)->alignment(), 32u);
  EXPECT_TRUE((*e)->tensors().empty());
  EXPECT_TRUE((*e)->metadata().empty());

  // Without general.alignment tensors sit at multiples of 32; real values survive.
  std::vector<float> w = {1.5f, -2.0f, 0.25f};
  GgufBuilder b;
  b.kv("general.name", GgufType::kString, gstr("tiny"));
  b.tensor({"a", {3}, 0, std::string(reinterpret_cast<const char*>(w.data()), 12)});
  b.tensor({"b", {3}, 0, std::string(reinterpret_cast<const char*>(w.data()), 12)});
  write_bytes(dir.sub("t.gguf"), b.build().bytes);
  auto t = GgufFile::open(dir.sub("t.gguf"));
  ASSERT_TRUE(t.ok()) << t.status().to_string();
  EXPECT_EQ((*t)->alignment(), 32u);
  const GgufTensorInfo* a = (*t)->find_tensor("a");
  const GgufTensorInfo* bb = (*t)->find_tensor("b");
  ASSERT_TRUE(a && bb);
  EXPECT_EQ(bb->offset - a->offset, 32u);
  std::vector<float> got(3);
  dequantize_row(a->type, a->data, got.data(), 3);
  EXPECT_EQ(got, w);
}

TEST(GgufReader, TypedGettersNameKeyAndTypes) {
  TempDir dir;
  GgufBuilder b = full_builder(3, 32);
  write_bytes(dir.sub("g.gguf"), b.build().bytes);
  auto r = GgufFile::open(dir.sub("g.gguf"));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const GgufFile& f = **r;

  auto missing = f.get_string("general.nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("'general.nope'"), std::string::npos) << missing.status().message();

  auto expect_wrong = [&](const Status& s, const std::vector<std::string>& needles) {
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    EXPECT_NE(s.message().find(dir.sub("g.gguf")), std::string::npos) << s.message();
    for (const auto& n : needles) {
      EXPECT_NE(s.message().find(n), std::string::npos) << "no \"" << n << "\" in: " << s.message();
    }
  };
  expect_wrong(f.get_string("v.u32").status(), {"'v.u32'", "is u32", "expected string"});
  expect_wrong(f.get_uint("v.f32").status(), {"'v.f32'", "is f32", "expected an integer"});
  expect_wrong(f.get_uint("v.i32").status(), {"'v.i32'", "-70000", "non-negative"});
  expect_wrong(f.get_uint("v.true").status(), {"'v.true'", "is bool"});
  expect_wrong(f.get_float("v.empty").status(), {"'v.empty'", "is string", "f32 or f64"});
  expect_wrong(f.get_bool("v.u8").status(), {"'v.u8'", "is u8", "expected bool"});
  expect_wrong(f.get_string_array("a.i32").status(), {"'a.i32'", "is array of i32", "expected array of string"});
  expect_wrong(f.get_string_array("general.architecture").status(), {"is string", "expected array of string"});
  expect_wrong(f.get_float_array("a.str").status(), {"'a.str'", "array of string", "array of f32 or f64"});
  expect_wrong(f.get_int_array("a.f32").status(), {"'a.f32'", "array of f32", "array of integers"});
  expect_wrong(f.get_int_array("a.bool").status(), {"'a.bool'", "array of bool"});
  expect_wrong(f.get_int_array("a.u64big").status(), {"'a.u64big'", "element 0", "18446744073709551615"});
  expect_wrong(f.get_int_array("a.nested").status(), {"array of array of i32"});
}

// ---- Files that must be refused ----

GgufBuilder small_builder() {
  GgufBuilder b;
  b.kv("general.architecture", GgufType::kString, gstr("llama"))
      .kv("llama.block_count", GgufType::kU32, le(2, 4));
  b.tensor(make_tensor("w", GgmlType::kF32, {8, 2}));
  b.tensor(make_tensor("q", GgmlType::kQ4_0, {64}));
  return b;
}

TEST(GgufRefuses, TruncatedHeader) {
  TempDir dir;
  const std::string full = small_builder().build().bytes;
  expect_refused(dir, "", {"0 bytes", "too short"});
  expect_refused(dir, full.substr(0, 6), {"6 bytes", "too short"});
  expect_refused(dir, full.substr(0, 12), {"truncated", "tensor count"});
  expect_refused(dir, full.substr(0, 20), {"truncated", "key/value count"});
  expect_refused(dir, "GGML" + full.substr(4), {"not a GGUF file", "GGML"});
}

TEST(GgufRefuses, TruncatedInsideStrings) {
  TempDir dir;
  // A long value first, so that the cuts below leave enough bytes for the header's counts to be possible
  // (a cut earlier than that is reported as counts the rest of the file cannot hold).
  GgufBuilder b;
  b.kv("general.description", GgufType::kString, gstr(std::string(300, 'd')))
      .kv("general.architecture", GgufType::kString, gstr("llama"));
  b.tensor(make_tensor("w", GgmlType::kF32, {8, 2}));
  const Image img = b.build();
  const size_t kv1 = img.kv_start + 8 + 19 + 4 + 8 + 300;
  // Inside the string value of the first pair.
  expect_refused(dir, img.bytes.substr(0, img.kv_start + 8 + 19 + 4 + 8 + 150),
                 {"key 'general.description'", "string value length 300 runs past the end", "150 bytes left"});
  // Inside the second key, and inside its length.
  expect_refused(dir, img.bytes.substr(0, kv1 + 8 + 5), {"key/value pair 1", "the key length 20 runs past the end"});
  expect_refused(dir, img.bytes.substr(0, kv1 + 3), {"key/value pair 1", "truncated", "length of the key"});
  // Right after the key, inside its value type.
  expect_refused(dir, img.bytes.substr(0, kv1 + 8 + 20 + 2), {"key 'general.architecture'", "truncated", "value type"});
  // Cut so early that the header's counts cannot fit.
  expect_refused(dir, img.bytes.substr(0, img.kv_start + 8 + 5), {"2 key/value pairs", "truncated or corrupt"});
}

TEST(GgufRefuses, TruncatedInsideTensorInfos) {
  TempDir dir;
  Image img = small_builder().build();
  // Tensor "w": name (8 + 1), n_dims 4, dims 16, type 4, offset 8.
  expect_refused(dir, img.bytes.substr(0, img.info_start + 9 + 4 + 12), {"tensor 'w'", "truncated", "dims"});
  expect_refused(dir, img.bytes.substr(0, img.info_start + 9 + 4 + 16 + 4 + 3), {"tensor 'w'", "truncated", "offset"});
  expect_refused(dir, img.bytes.substr(0, img.info_start + 4), {"tensor info 0", "truncated", "the name"});
  // Cut in the data section: the last tensor no longer fits.
  expect_refused(dir, img.bytes.substr(0, img.bytes.size() - 1),
                 {"tensor 'q'", "36 bytes of Q4_0 at offset 64", "run past the end"});
}

TEST(GgufRefuses, LyingCounts) {
  TempDir dir;
  GgufBuilder b = small_builder();
  b.kv_count = 1'000'000;
  expect_refused(dir, b.build().bytes, {"1000000 key/value pairs", "hold at most"});
  b = small_builder();
  b.kv_count = ~0ull;
  expect_refused(dir, b.build().bytes, {"18446744073709551615 key/value pairs"});
  b = small_builder();
  b.tensor_count = 1ull << 40;
  expect_refused(dir, b.build().bytes, {"1099511627776 tensors", "hold at most"});
  // Plausible but wrong: one tensor more than there are infos.
  b = small_builder();
  b.tensor_count = 3;
  expect_refused(dir, b.build().bytes, {"tensor"});
  // One key/value pair more than written: the first tensor info is read as a key/value pair, and the
  // rest of it as the tensor infos.
  b = small_builder();
  b.kv_count = 3;
  expect_refused(dir, b.build().bytes, {"tensor info 0", "length"});
}

TEST(GgufRefuses, LyingStringAndArrayLengths) {
  TempDir dir;
  GgufBuilder b = small_builder();
  b.kv("general.name", GgufType::kString, le(1'000'000'000, 8) + "abc");
  expect_refused(dir, b.build().bytes, {"key 'general.name'", "length 1000000000 runs past the end"});

  b = small_builder();
  b.kv("tokenizer.ggml.tokens", GgufType::kArray, le(tid(GgufType::kString), 4) + le(1ull << 60, 8));
  expect_refused(dir, b.build().bytes, {"key 'tokenizer.ggml.tokens'", "array length 1152921504606846976", "string"});
  b = small_builder();
  b.kv("a", GgufType::kArray, le(tid(GgufType::kU64), 4) + le(~0ull / 4, 8));
  expect_refused(dir, b.build().bytes, {"key 'a'", "array length 4611686018427387903", "needs at least"});
  // A string inside an array that runs out.
  b = small_builder();
  b.kv("s", GgufType::kArray, garray(GgufType::kString, {gstr("ok"), le(999, 8) + "x"}));
  expect_refused(dir, b.build().bytes, {"key 's'", "string 1 of an array", "length 999"});
  // A key longer than GGUF allows.
  b = small_builder();
  b.kv(std::string(70000, 'k'), GgufType::kU8, le(1, 1));
  expect_refused(dir, b.build().bytes, {"key/value pair 2", "length 70000 exceeds the limit of 65535"});
}

TEST(GgufRefuses, BadValues) {
  TempDir dir;
  GgufBuilder b = small_builder();
  b.kv("x.flag", GgufType::kBool, le(2, 1));
  expect_refused(dir, b.build().bytes, {"key 'x.flag'", "bool value 2"});
  b = small_builder();
  b.kv("x.bad", static_cast<GgufType>(13), le(0, 4));
  expect_refused(dir, b.build().bytes, {"key 'x.bad'", "value type 13"});
  b = small_builder();
  b.kv("x.arr", GgufType::kArray, le(77, 4) + le(0, 8));
  expect_refused(dir, b.build().bytes, {"key 'x.arr'", "element type 77"});
  b = small_builder();
  b.kv("x.bools", GgufType::kArray, garray(GgufType::kBool, {le(1, 1), le(9, 1)}));
  expect_refused(dir, b.build().bytes, {"key 'x.bools'", "element 1", "bool value 9"});
  b = small_builder();
  b.kv("general.architecture", GgufType::kString, gstr("again"));
  expect_refused(dir, b.build().bytes, {"key 'general.architecture'", "appears twice"});
  b = small_builder();
  b.kv("", GgufType::kU8, le(1, 1));
  expect_refused(dir, b.build().bytes, {"key/value pair 2", "empty key"});

  // Nesting: kMaxGgufArrayDepth levels are fine, one more is refused.
  auto nested = [](int depth) {
    std::string v = garray(GgufType::kU8, {le(1, 1)});
    for (int d = 1; d < depth; ++d) v = garray(GgufType::kArray, {v});
    return v;
  };
  b = small_builder();
  b.kv("deep.ok", GgufType::kArray, nested(kMaxGgufArrayDepth));
  write_bytes(dir.sub("deep.gguf"), b.build().bytes);
  auto ok = GgufFile::open(dir.sub("deep.gguf"));
  ASSERT_TRUE(ok.ok()) << ok.status().to_string();
  b = small_builder();
  b.kv("deep.bad", GgufType::kArray, nested(kMaxGgufArrayDepth + 1));
  expect_refused(dir, b.build().bytes, {"key 'deep.bad'", "deeper than 8"});
  // A huge nested count is bounded like any other.
  b = small_builder();
  b.kv("deep.lie", GgufType::kArray, le(tid(GgufType::kArray), 4) + le(1ull << 50, 8));
  expect_refused(dir, b.build().bytes, {"key 'deep.lie'", "array length 1125899906842624"});
}

TEST(GgufRefuses, BadAlignment) {
  TempDir dir;
  for (uint64_t a : {0u, 48u, 3u}) {
    GgufBuilder b = small_builder();
    b.kv("general.alignment", GgufType::kU32, le(a, 4));
    expect_refused(dir, b.build().bytes, {"'general.alignment'", "is " + std::to_string(a), "power of two"});
  }
  GgufBuilder b = small_builder();
  b.kv("general.alignment", GgufType::kU64, le(32, 8));
  expect_refused(dir, b.build().bytes, {"'general.alignment'", "is u64", "must be u32"});
  b = small_builder();
  b.kv("general.alignment", GgufType::kI32, le(32, 4));
  expect_refused(dir, b.build().bytes, {"'general.alignment'", "is i32", "must be u32"});
}

TEST(GgufRefuses, TensorPlacement) {
  TempDir dir;
  // Past the end of the file.
  GgufBuilder b = small_builder();
  TensorSpec big = make_tensor("big", GgmlType::kF32, {4});
  big.offset = 1 << 20;
  big.data.clear();
  b.tensor(big);
  expect_refused(dir, b.build().bytes, {"tensor 'big'", "offset 1048576", "run past the end of the"});
  // Offset near 2^64: the sum overflows.
  b = small_builder();
  big.offset = ~0ull - 31;
  b.tensor(big);
  expect_refused(dir, b.build().bytes, {"tensor 'big'", "past the end"});
  // Misaligned offset.
  b = small_builder();
  TensorSpec odd = make_tensor("odd", GgmlType::kF32, {2});
  odd.offset = 4;
  b.tensors.insert(b.tensors.begin(), odd);
  expect_refused(dir, b.build().bytes, {"tensor 'odd'", "offset 4", "not a multiple of the alignment 32"});
  // Two tensors over the same bytes.
  b = small_builder();
  TensorSpec twin = make_tensor("twin", GgmlType::kF32, {8});
  twin.offset = 32;  // "w" is [0, 64)
  b.tensor(twin);
  expect_refused(dir, b.build().bytes, {"tensors 'w'", "'twin'", "overlap"});
  // The same name twice.
  b = small_builder();
  b.tensor(make_tensor("w", GgmlType::kF32, {4}));
  expect_refused(dir, b.build().bytes, {"tensor 'w'", "used by two tensors"});
}

TEST(GgufRefuses, BadTensorShapesAndTypes) {
  TempDir dir;
  auto with = [](TensorSpec t) {
    GgufBuilder b = small_builder();
    b.tensor(std::move(t));
    return b.build().bytes;
  };
  TensorSpec t = make_tensor("bad", GgmlType::kF32, {4});
  t.type = 99;
  expect_refused(dir, with(t), {"tensor 'bad'", "unknown ggml type id 99"});
  t.type = 10;
  expect_refused(dir, with(t), {"tensor 'bad'", "Q2_K", "id 10"}, StatusCode::kUnimplemented);

  expect_refused(dir, with({"zero", {4, 0}, 0, ""}), {"tensor 'zero'", "dim 1 is 0"});
  expect_refused(dir, with({"huge_dim", {1ull << 63}, 0, ""}), {"tensor 'huge_dim'", "dim 0 is 9223372036854775808"});
  expect_refused(dir, with({"overflow", {1ull << 32, 1ull << 32, 1ull << 32}, 0, ""}),
                 {"tensor 'overflow'", "[4294967296, 4294967296, 4294967296]", "more than 2^63 - 1 elements"});
  expect_refused(dir, with({"bytes_overflow", {1ull << 62}, 0, ""}), {"tensor 'bytes_overflow'", "too large"});
  expect_refused(dir, with({"rows", {33, 2}, static_cast<uint32_t>(GgmlType::kQ4_0), ""}),
                 {"tensor 'rows'", "row length 33", "Q4_0 block of 32"});
  expect_refused(dir, with({"rows_k", {512 + 32}, static_cast<uint32_t>(GgmlType::kQ6_K), ""}),
                 {"tensor 'rows_k'", "row length 544", "Q6_K block of 256"});
  TensorSpec five = make_tensor("five", GgmlType::kF32, {1, 1, 1, 1, 1});
  expect_refused(dir, with(five), {"tensor 'five'", "n_dims is 5"});
  expect_refused(dir, with({"none", {}, 0, ""}), {"tensor 'none'", "n_dims is 0"});
}

TEST(GgufRefuses, VersionsAndByteOrder) {
  TempDir dir;
  GgufBuilder b = small_builder();
  b.version = 1;
  expect_refused(dir, b.build().bytes, {"version 1", "not supported"}, StatusCode::kUnimplemented);
  b.version = 4;
  expect_refused(dir, b.build().bytes, {"version 4"}, StatusCode::kUnimplemented);
  b.version = 0;
  expect_refused(dir, b.build().bytes, {"unknown GGUF version 0"});
  // A big-endian file: the magic reads the same, the version and everything after it byte-swapped.
  std::string be = "GGUF" + std::string("\x00\x00\x00\x03", 4);
  for (int i = 7; i >= 0; --i) be += static_cast<char>(i == 0 ? 2 : 0);  // tensor count 2, big-endian
  for (int i = 7; i >= 0; --i) be += static_cast<char>(i == 0 ? 2 : 0);
  be += std::string(64, '\0');
  expect_refused(dir, be, {"50331648", "big-endian"}, StatusCode::kUnimplemented);
  be[7] = 2;
  expect_refused(dir, be, {"33554432", "big-endian"}, StatusCode::kUnimplemented);
}

// Random damage to a valid file: open() must succeed or fail cleanly, never crash or read out of bounds
// (the sanitizer build checks the latter); when it succeeds, everything it hands out must be usable.
TEST(GgufFuzz, RandomFlipsAndTruncations) {
  TempDir dir;
  GgufBuilder base = full_builder(3, 32);
  // Small tensors, so that most damage lands in the header, the metadata and the tensor infos.
  base.tensors.resize(4);
  const std::string good = base.build().bytes;
  std::mt19937_64 rng(20240611);
  const std::string path = dir.sub("fuzz.gguf");
  int opened = 0, refused = 0;
  const uint64_t interesting[] = {0, 1, 2, 3, 4, 31, 32, 33, 255, 0xffff, 0x10000, 0x7fffffff, 0xffffffff,
                                  1ull << 32, 1ull << 62, 1ull << 63, ~0ull};
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes = good;
    const int mode = static_cast<int>(rng() % 4);
    if (mode == 0) {  // flip a few random bits
      for (int k = 0, n = 1 + static_cast<int>(rng() % 4); k < n; ++k) {
        bytes[rng() % bytes.size()] ^= static_cast<char>(1u << (rng() % 8));
      }
    } else if (mode == 1) {  // random bytes
      for (int k = 0, n = 1 + static_cast<int>(rng() % 8); k < n; ++k) {
        bytes[rng() % bytes.size()] = static_cast<char>(rng());
      }
    } else if (mode == 2) {  // a count or length replaced by an interesting value
      const size_t at = rng() % (bytes.size() - 8);
      const uint64_t v = interesting[rng() % std::size(interesting)];
      const int width = (rng() % 2) ? 8 : 4;
      for (int i = 0; i < width; ++i) bytes[at + i] = static_cast<char>(v >> (8 * i));
    } else {  // truncate, sometimes after damage
      bytes.resize(rng() % bytes.size());
      if (!bytes.empty() && rng() % 2) bytes[rng() % bytes.size()] ^= 0x40;
    }
    write_bytes(path, bytes);
    auto r = GgufFile::open(path);
    if (!r.ok()) {
      ++refused;
      ASSERT_FALSE(r.status().message().empty());
      ASSERT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
      ASSERT_TRUE(r.status().code() == StatusCode::kDataLoss || r.status().code() == StatusCode::kUnimplemented)
          << r.status().to_string();
      continue;
    }
    ++opened;
    const GgufFile& f = **r;
    uint64_t sum = 0;
    for (const auto& t : f.tensors()) {
      ASSERT_LE(t.offset + t.nbytes, bytes.size()) << t.name;
      const auto* p = static_cast<const uint8_t*>(t.data);
      for (uint64_t k = 0; k < t.nbytes; ++k) sum += p[k];
      if (t.nbytes <= (1u << 20)) {
        std::vector<float> row(static_cast<size_t>(t.dims[0]));
        dequantize_row(t.type, t.data, row.data(), t.dims[0]);
      }
    }
    for (const auto& [key, v] : f.metadata()) {
      sum += v.type_description().size() + v.array_size();
      (void)f.get_string(key);
      (void)f.get_uint(key);
      (void)f.get_float(key);
      (void)f.get_string_array(key);
      (void)f.get_int_array(key);
      (void)f.get_float_array(key);
    }
    EXPECT_GE(sum, 0u);
  }
  // Both outcomes happen: the damage is neither always fatal nor always harmless.
  EXPECT_GT(opened, 50);
  EXPECT_GT(refused, 500);
}

// The real SmolLM2-135M-Instruct Q4_1 GGUF, when KILN_SMOLLM2_GGUF names it.
TEST(GgufReader, RealSmolLM2File) {
  const char* path = std::getenv("KILN_SMOLLM2_GGUF");
  if (path == nullptr || *path == '\0') {
    GTEST_SKIP() << "set KILN_SMOLLM2_GGUF to SmolLM2-135M-Instruct.Q4_1.gguf to run this test";
  }
  auto r = GgufFile::open(path);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const GgufFile& f = **r;
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.tensors().size(), 272u);
  EXPECT_EQ(*f.get_string("general.architecture"), "llama");
  EXPECT_EQ(*f.get_uint("llama.block_count"), 30u);
  EXPECT_EQ(*f.get_uint("llama.embedding_length"), 576u);
  const GgufTensorInfo* embd = f.find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->type, GgmlType::kQ8_0);
  EXPECT_EQ(embd->dims, (std::vector<int64_t>{576, 49152}));
  EXPECT_EQ(embd->nbytes, 576u / 32 * 34 * 49152);
  auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok()) << tokens.status().to_string();
  EXPECT_EQ(tokens->size(), 49152u);
  EXPECT_EQ(f.get_int_array("tokenizer.ggml.token_type")->size(), 49152u);
  int q4_1 = 0;
  for (const auto& t : f.tensors()) q4_1 += t.type == GgmlType::kQ4_1 ? 1 : 0;
  EXPECT_EQ(q4_1, 210);
  // Every tensor's first row dequantizes to finite values.
  for (const auto& t : f.tensors()) {
    std::vector<float> row(static_cast<size_t>(t.dims[0]));
    dequantize_row(t.type, t.data, row.data(), t.dims[0]);
    for (float v : row) ASSERT_TRUE(std::isfinite(v)) << t.name;
  }
}

}  // namespace
}  // namespace kiln

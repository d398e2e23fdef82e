#include "io/safetensors.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "test_util.h"
#include <random>
#include <string>
#include <vector>

#include "io/mapped_file.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;

using test::TempDir;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A safetensors image with the given header text and `data_bytes` bytes of data.
std::string image(const std::string& header, size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\x5a');
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Opens a file made of `bytes` and expects DataLoss whose message holds the path and every `needles`.
void expect_refused(const TempDir& dir, const std::string& bytes, const std::vector<std::string>& needles) {
  const std::string path = dir.sub("bad.safetensors");
  write_bytes(path, bytes);
  auto r = SafetensorsFile::open(path);
  ASSERT_FALSE(r.ok()) << "accepted a bad file; needles[0]=" << (needles.empty() ? "" : needles[0]);
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().to_string();
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status().message();
  for (const auto& n : needles) EXPECT_NE(r.status().message().find(n), std::string::npos) << r.status().message();
}

TEST(MappedFileTest, MapsFileAndEmptyFile) {
  TempDir dir;
  write_bytes(dir.sub("a"), "hello");
  auto m = MappedFile::open(dir.sub("a"));
  ASSERT_TRUE(m.ok()) << m.status().to_string();
  ASSERT_EQ(m->size(), 5u);
  EXPECT_EQ(std::memcmp(m->data(), "hello", 5), 0);
  EXPECT_EQ(m->path(), dir.sub("a"));
  MappedFile moved = std::move(m.value());
  EXPECT_EQ(moved.size(), 5u);
  EXPECT_EQ(std::memcmp(moved.data(), "hello", 5), 0);

  write_bytes(dir.sub("empty"), "");
  auto e = MappedFile::open(dir.sub("empty"));
  ASSERT_TRUE(e.ok()) << e.status().to_string();
  EXPECT_EQ(e->size(), 0u);

  auto missing = MappedFile::open(dir.sub("nope"));
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("nope"), std::string::npos);

  auto folder = MappedFile::open(dir.path());
  ASSERT_FALSE(folder.ok());
  EXPECT_EQ(folder.status().code(), StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, RoundTrip) {
  TempDir dir;
  std::vector<float> f32 = {1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f};
  std::vector<uint16_t> bf16 = {0x3f80, 0x4000, 0xc040, 0x0000};
  int64_t scalar = -1234567890123LL;
  std::vector<uint8_t> u8 = {1, 2, 3};
  std::vector<uint8_t> flags = {1, 0};
  std::vector<double> f64 = {3.141592653589793};
  std::vector<SafetensorsTensorToWrite> tensors = {
      {"w.f32", DType::kF32, Shape{2, 3}, f32.data()},
      {"b.bf16", DType::kBF16, Shape{4}, bf16.data()},
      {"scalar", DType::kI64, Shape{}, &scalar},
      {"empty", DType::kF16, Shape{0, 5}, nullptr},
      {"a.u8", DType::kU8, Shape{3}, u8.data()},  // odd size: later tensors are unaligned, which is legal
      {"flags", DType::kBool, Shape{2}, flags.data()},
      {"z.f64", DType::kF64, Shape{1, 1}, f64.data()},
  };
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "héllo \"quoted\""}};
  const std::string path = dir.sub("model.safetensors");
  ASSERT_TRUE(write_safetensors(path, tensors, meta).ok());
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  // Layout: 8-byte length, header padded with spaces to a multiple of 8, data in name order.
  std::string raw = read_all(path);
  ASSERT_GE(raw.size(), 8u);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<uint8_t>(raw[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(raw[8], '{');
  size_t expected_data = 24 + 8 + 8 + 0 + 3 + 2 + 8;
  EXPECT_EQ(raw.size(), 8 + n + expected_data);

  auto r = SafetensorsFile::open(path);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const SafetensorsFile& f = r.value();
  EXPECT_EQ(f.path(), path);
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.entries().size(), tensors.size());
  // Entries come in offset order, which for a file we wrote is name order.
  for (size_t i = 1; i < f.entries().size(); ++i) {
    EXPECT_LT(f.entries()[i - 1].name, f.entries()[i].name);
    EXPECT_LE(static_cast<const uint8_t*>(f.entries()[i - 1].data) + f.entries()[i - 1].nbytes,
              static_cast<const uint8_t*>(f.entries()[i].data));
  }
  for (const auto& t : tensors) {
    const SafetensorsEntry* e = f.find(t.name);
    ASSERT_NE(e, nullptr) << t.name;
    EXPECT_EQ(e->name, t.name);
    EXPECT_EQ(e->dtype, t.dtype) << t.name;
    EXPECT_EQ(e->shape, t.shape) << t.name << " " << e->shape.to_string();
    size_t nbytes = static_cast<size_t>(t.shape.numel()) * dtype_size(t.dtype);
    ASSERT_EQ(e->nbytes, nbytes) << t.name;
    if (nbytes) {
      EXPECT_EQ(std::memcmp(e->data, t.data, nbytes), 0) << t.name;
    }
  }
  EXPECT_EQ(f.find("scalar")->shape.ndim, 0);
  EXPECT_EQ(f.find("empty")->nbytes, 0u);
  EXPECT_EQ(f.find("missing"), nullptr);

  // The in-memory parser agrees with the file reader.
  auto c = parse_safetensors(reinterpret_cast<const uint8_t*>(raw.data()), raw.size(), "mem");
  ASSERT_TRUE(c.ok()) << c.status().to_string();
  EXPECT_EQ(c->header_size, n);
  EXPECT_EQ(c->entries.size(), tensors.size());

  // Rewriting replaces the file; no metadata -> no "__metadata__" key.
  ASSERT_TRUE(write_safetensors(path, {tensors[0]}).ok());
  auto r2 = SafetensorsFile::open(path);
  ASSERT_TRUE(r2.ok()) << r2.status().to_string();
  EXPECT_EQ(r2->entries().size(), 1u);
  EXPECT_TRUE(r2->metadata().empty());
  EXPECT_EQ(read_all(path).find("__metadata__"), std::string::npos);
}

TEST(SafetensorsTest, EmptyTensorList) {
  TempDir dir;
  ASSERT_TRUE(write_safetensors(dir.sub("e.safetensors"), {}).ok());
  auto r = SafetensorsFile::open(dir.sub("e.safetensors"));
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  EXPECT_TRUE(r->entries().empty());
}

TEST(SafetensorsTest, WriterRefusesBadInput) {
  TempDir dir;
  float x[2] = {1, 2};
  auto w = [&](std::vector<SafetensorsTensorToWrite> t) { return write_safetensors(dir.sub("w.safetensors"), t); };
  Status dup = w({{"a", DType::kF32, Shape{2}, x}, {"a", DType::kF32, Shape{1}, x}});
  EXPECT_EQ(dup.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(dup.message().find("'a'"), std::string::npos) << dup.message();
  EXPECT_EQ(w({{"__metadata__", DType::kF32, Shape{2}, x}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w({{"n", DType::kF32, Shape{2}, nullptr}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w({{"neg", DType::kF32, Shape{-2}, x}}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(w({{"big", DType::kF32, Shape{int64_t{1} << 40, int64_t{1} << 40}, x}}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(w({{"bad\xff", DType::kF32, Shape{2}, x}}).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(dir.sub("w.safetensors")));
  EXPECT_FALSE(fs::exists(dir.sub("w.safetensors.tmp")));
  // A folder that does not exist.
  Status missing = write_safetensors(dir.sub("no/such/x.safetensors"), {{"a", DType::kF32, Shape{2}, x}});
  EXPECT_EQ(missing.code(), StatusCode::kNotFound);
}

TEST(SafetensorsTest, RefusesShortFiles) {
  TempDir dir;
  expect_refused(dir, "", {"too short"});
  expect_refused(dir, "\x01\x02\x03\x04\x05", {"5 bytes", "too short"});
}

TEST(SafetensorsTest, RefusesHeaderLengthPastEnd) {
  TempDir dir;
  expect_refused(dir, le64(100) + "{}", {"header length 100", "past the end"});
  expect_refused(dir, le64(1), {"header length 1", "past the end"});
}

TEST(SafetensorsTest, RefusesHugeHeaderLength) {
  TempDir dir;
  expect_refused(dir, le64(uint64_t{1} << 63) + "{}", {"9223372036854775808", "limit"});
  expect_refused(dir, le64(~uint64_t{0}) + "{}", {"limit"});
  expect_refused(dir, le64(kMaxSafetensorsHeaderBytes + 1) + "{}", {"limit"});
}

TEST(SafetensorsTest, RefusesHeaderThatIsNotAJsonObject) {
  TempDir dir;
  expect_refused(dir, image("{not json", 0), {"not valid JSON"});
  expect_refused(dir, image("", 0), {"not valid JSON"});
  expect_refused(dir, image("{} trailing", 0), {"not valid JSON"});
  expect_refused(dir, image("[1, 2]", 0), {"array", "not an object"});
  expect_refused(dir, image("\"str\"", 0), {"not an object"});
  expect_refused(dir, image("{\"a\": \"\xff\xfe\"}", 0), {"not valid JSON"});  // invalid UTF-8
  expect_refused(dir, image(std::string(100, '[') + std::string(100, ']'), 0), {"deeper"});
}

TEST(SafetensorsTest, RefusesBadEntries) {
  TempDir dir;
  expect_refused(dir, image(R"({"t": 5})", 0), {"tensor 't'", "not an object"});
  expect_refused(dir, image(R"({"t": {"shape": [1], "data_offsets": [0, 4]}})", 4), {"tensor 't'", "dtype"});
  expect_refused(dir, image(R"({"t": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}})", 16),
                 {"tensor 't'", "unknown dtype 'F128'"});
  expect_refused(dir, image(R"({"t": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}})", 4),
                 {"tensor 't'", "dtype"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "data_offsets": [0, 4]}})", 4), {"tensor 't'", "shape"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": 4, "data_offsets": [0, 4]}})", 4),
                 {"tensor 't'", "shape", "not an array"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [1]}})", 4), {"tensor 't'", "data_offsets"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}})", 4),
                 {"tensor 't'", "data_offsets"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 8),
                 {"tensor 't'", "data_offsets"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 8),
                 {"tensor 't'", "data_offsets"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4]}})", 8),
                 {"tensor 't'", "data_offsets"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 8),
                 {"tensor 't'", "[8, 4]"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [1,1,1,1,1,1,1], "data_offsets": [0, 4]}})", 4),
                 {"tensor 't'", "7 dimensions"});
}

TEST(SafetensorsTest, RefusesNegativeOrNonIntegerShape) {
  TempDir dir;
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}})", 16),
                 {"tensor 't'", "negative"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 8]}})", 8),
                 {"tensor 't'", "non-integer"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", 8),
                 {"tensor 't'", "non-integer"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}})", 8),
                 {"tensor 't'", "non-integer"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [null], "data_offsets": [0, 8]}})", 8),
                 {"tensor 't'", "non-integer"});
}

TEST(SafetensorsTest, RefusesOffsetsPastTheEnd) {
  TempDir dir;
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 12),
                 {"tensor 't'", "[0, 16]", "past the end", "12 bytes"});
  expect_refused(dir,
                 image(R"({"t": {"dtype": "U8", "shape": [1], "data_offsets": [18446744073709551615, 18446744073709551615]}})", 8),
                 {"tensor 't'", "data_offsets"});
}

TEST(SafetensorsTest, RefusesOffsetsThatLieAboutSize) {
  TempDir dir;
  const std::string path = dir.sub("model.safetensors");
  write_bytes(path, image(R"({"lm_head.weight": {"dtype": "F32", "shape": [64, 32], "data_offsets": [0, 4096]}})", 4096));
  auto r = SafetensorsFile::open(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(r.status().message(), path + ": tensor 'lm_head.weight': data_offsets [0, 4096] do not match shape "
                                         "[64, 32] of F32 (8192 bytes)");
  // Too many bytes is as wrong as too few.
  expect_refused(dir, image(R"({"t": {"dtype": "F16", "shape": [2], "data_offsets": [0, 8]}})", 8),
                 {"tensor 't'", "do not match shape [2] of F16 (4 bytes)"});
  // A scalar holds one element.
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [], "data_offsets": [0, 0]}})", 8),
                 {"tensor 't'", "shape [] of F32 (4 bytes)"});
}

TEST(SafetensorsTest, RefusesOverlappingEntries) {
  TempDir dir;
  expect_refused(dir,
                 image(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})", 16),
                 {"'a'", "'b'", "overlap"});
  expect_refused(dir,
                 image(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                           "b": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}})", 4),
                 {"overlap"});
}

TEST(SafetensorsTest, AcceptsEmptyTensorsAnywhereAndGaps) {
  TempDir dir;
  const std::string path = dir.sub("ok.safetensors");
  // An empty tensor owns no bytes, so it cannot overlap; the gap [16, 20) is tolerated.
  write_bytes(path, image(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                              "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [8, 8]},
                              "c": {"dtype": "U8", "shape": [4], "data_offsets": [20, 24]}})", 24));
  auto r = SafetensorsFile::open(path);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  ASSERT_EQ(r->entries().size(), 3u);
  EXPECT_EQ(r->entries()[0].name, "a");
  EXPECT_EQ(r->entries()[1].name, "e");
  EXPECT_EQ(r->entries()[2].name, "c");
}

TEST(SafetensorsTest, RefusesShapeWhoseProductOverflows) {
  TempDir dir;
  expect_refused(dir,
                 image(R"({"t": {"dtype": "F32", "shape": [4294967296, 4294967296, 2], "data_offsets": [0, 0]}})", 0),
                 {"tensor 't'", "too large"});
  // 2^62 elements of 4 bytes overflow even though 2^62 itself fits.
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [4611686018427387904], "data_offsets": [0, 0]}})", 0),
                 {"tensor 't'", "too large"});
  // A zero dim does not excuse the others from fitting in 64 bits.
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [0, 4294967296, 4294967296], "data_offsets": [0, 0]}})", 0),
                 {"tensor 't'", "too large"});
  expect_refused(dir, image(R"({"t": {"dtype": "F32", "shape": [18446744073709551615], "data_offsets": [0, 0]}})", 0),
                 {"tensor 't'"});
}

TEST(SafetensorsTest, RefusesBadMetadataAndDuplicateKeys) {
  TempDir dir;
  expect_refused(dir, image(R"({"__metadata__": {"format": 1}})", 0), {"__metadata__", "'format'", "not a string"});
  expect_refused(dir, image(R"({"__metadata__": ["x"]})", 0), {"__metadata__", "not an object"});
  expect_refused(dir,
                 image(R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                           "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})", 2),
                 {"'a'", "twice"});
  expect_refused(dir, image(R"({"a": {"dtype": "U8", "dtype": "F32", "shape": [1], "data_offsets": [0, 1]}})", 4),
                 {"'dtype'", "twice"});
}

TEST(SafetensorsTest, HeaderParserWorksOnBytes) {
  auto h = parse_safetensors_header(R"({"__metadata__": {"k": "v"}, "x": {"dtype": "BF16", "shape": [3],
                                      "data_offsets": [2, 8]}, "y": {"dtype": "BOOL", "shape": [2],
                                      "data_offsets": [0, 2]}})",
                                    8, "hdr");
  ASSERT_TRUE(h.ok()) << h.status().to_string();
  ASSERT_EQ(h->entries.size(), 2u);
  EXPECT_EQ(h->entries[0].name, "y");
  EXPECT_EQ(h->entries[1].name, "x");
  EXPECT_EQ(h->entries[1].begin, 2u);
  EXPECT_EQ(h->entries[1].end, 8u);
  EXPECT_EQ(h->metadata.at("k"), "v");
  auto bad = parse_safetensors_header(R"({"x": {"dtype": "BF16", "shape": [3], "data_offsets": [2, 8]}})", 7, "hdr");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message().rfind("hdr: tensor 'x'", 0), 0u) << bad.status().message();
}

TEST(SafetensorsTest, ErrorMessagesAreValidUtf8) {
  EXPECT_EQ(printable_for_message("abc"), "abc");
  EXPECT_EQ(printable_for_message("h\xc3\xa9!"), "h\xc3\xa9!");  // valid UTF-8 stays
  EXPECT_EQ(printable_for_message("a\xff\n"), "a\\xff\\x0a");
  EXPECT_EQ(printable_for_message("\xc3\xa9", 1), "\\xc3...");  // a cut sequence is escaped
  EXPECT_EQ(printable_for_message(std::string(300, 'x')).size(), 203u);
  auto r = parse_safetensors_header("{\"a\": \"\xff\"}", 0, "f");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message().find('\xff'), std::string::npos) << r.status().message();
}

// Random corruption of a valid image must yield a clean error or a self-consistent result, never a crash.
TEST(SafetensorsTest, SurvivesCorruptedImages) {
  TempDir dir;
  std::vector<float> a(10, 1.0f);
  std::vector<uint16_t> b(7, 2);
  ASSERT_TRUE(write_safetensors(dir.sub("v.safetensors"),
                                {{"alpha", DType::kF32, Shape{2, 5}, a.data()}, {"beta", DType::kBF16, Shape{7}, b.data()}},
                                {{"format", "pt"}})
                  .ok());
  const std::string good = read_all(dir.sub("v.safetensors"));
  auto check = [](const std::string& img) {
    auto r = parse_safetensors(reinterpret_cast<const uint8_t*>(img.data()), img.size(), "fuzz");
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
      return;
    }
    const auto* lo = reinterpret_cast<const uint8_t*>(img.data());
    for (const auto& e : r->entries) {
      const auto* p = static_cast<const uint8_t*>(e.data);
      EXPECT_GE(p, lo + 8 + r->header_size);
      EXPECT_LE(p + e.nbytes, lo + img.size());
      EXPECT_EQ(e.nbytes, static_cast<size_t>(e.shape.numel()) * dtype_size(e.dtype));
    }
  };
  for (size_t len = 0; len <= good.size(); ++len) check(good.substr(0, len));
  std::mt19937 rng(12345);
  const char kInteresting[] = {'0', '1', '9', '-', '[', ']', '{', '}', ',', '"', ':', '.', 'e', ' ', '\0', '\xff'};
  for (int iter = 0; iter < 3000; ++iter) {
    std::string img = good;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits; ++k) {
      size_t pos = rng() % img.size();
      img[pos] = (rng() % 2) ? static_cast<char>(rng() & 0xff) : kInteresting[rng() % sizeof kInteresting];
    }
    check(img);
  }
}

TEST(SafetensorsTest, OpensRealFixture) {
  const std::string path = std::string(KILN_TEST_DATA_DIR) + "/models/llama/model.safetensors";
  auto r = SafetensorsFile::open(path);
  ASSERT_TRUE(r.ok()) << r.status().to_string();
  const SafetensorsEntry* e = r->find("model.embed_tokens.weight");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->dtype, DType::kF32);
  EXPECT_EQ(e->shape, (Shape{512, 64}));
  EXPECT_EQ(e->nbytes, 512u * 64u * 4u);
  EXPECT_GT(r->entries().size(), 2u);
}

}  // namespace
}  // namespace kiln

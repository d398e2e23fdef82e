#include "server/http_json.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/util/json_util.h>

#include <charconv>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>

#include "core/dtype.h"
#include "io/safetensors.h"  // printable_for_message
#include "io/strict_json.h"
#include "model_config.pb.h"

namespace kiln::server {

namespace {

std::string clip(std::string_view s, size_t max = 120) { return printable_for_message(s, max); }
std::string in_quotes(std::string_view s) { return "'" + clip(s) + "'"; }
std::string brief(const json& v) { return clip(v.dump(-1, ' ', false, json::error_handler_t::replace), 60); }
// Replies may carry model-produced bytes that are not UTF-8: replace rather than throw.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

template <typename T>
void append_raw(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

template <typename T>
T read_raw(const std::string& data, size_t i) {
  T v;
  std::memcpy(&v, data.data() + i * sizeof(T), sizeof(T));
  return v;
}

// JSON integers only (1.0 is not an integer for an INT32 input, as in Triton).
std::optional<int64_t> as_int64(const json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  return std::nullopt;
}
std::optional<uint64_t> as_uint64(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

Status bad_element(const std::string& input, TensorType type, const json& v, const std::string& expected) {
  return invalid_argument("input " + in_quotes(input) + " of datatype " + tensor_type_name(type) + " takes " +
                          expected + "; got " + brief(v));
}

template <typename T>
Status append_signed(const json& v, TensorType type, const std::string& input, std::string& out) {
  auto x = as_int64(v);
  if (!x || *x < std::numeric_limits<T>::min() || *x > std::numeric_limits<T>::max())
    return bad_element(input, type, v,
                       "integers in [" + std::to_string(std::numeric_limits<T>::min()) + ", " +
                           std::to_string(std::numeric_limits<T>::max()) + "]");
  append_raw<T>(out, static_cast<T>(*x));
  return {};
}

template <typename T>
Status append_unsigned(const json& v, TensorType type, const std::string& input, std::string& out) {
  auto x = as_uint64(v);
  if (!x || *x > std::numeric_limits<T>::max())
    return bad_element(input, type, v,
                       "integers in [0, " + std::to_string(std::numeric_limits<T>::max()) + "]");
  append_raw<T>(out, static_cast<T>(*x));
  return {};
}

// A finite number that stays finite in `type` (1e300 is not an FP32 value).
Result<double> float_value(const json& v, TensorType type, const std::string& input, double max) {
  if (!v.is_number()) return bad_element(input, type, v, "numbers");
  const double d = v.get<double>();
  if (std::isfinite(d) && std::fabs(d) > max) return bad_element(input, type, v, "numbers within its range");
  return d;
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + v[i];
  return s;
}

Result<std::string> string_field(const json& v, const std::string& what) {
  if (!v.is_string()) return invalid_argument(what + " must be a string; got " + brief(v));
  return v.get<std::string>();
}

// Fills t.data from the (flat or nested) JSON array `data`, which must hold exactly the shape's elements.
Status fill_from_json(const json& data, InferTensor& t) {
  KILN_ASSIGN_OR_RETURN(int64_t n, t.num_elements());
  if (!data.is_array())
    return invalid_argument("input " + in_quotes(t.name) + ": 'data' must be a JSON array; got " +
                            brief(data));
  const size_t elem = tensor_type_size(t.type);
  if (elem) t.data.reserve(static_cast<size_t>(std::min<int64_t>(n, 1 << 20)) * elem);
  int64_t count = 0;
  // Iterative walk over nested arrays (their depth is already bounded by the parser's cap).
  std::vector<std::pair<const json*, size_t>> stack{{&data, 0}};
  while (!stack.empty()) {
    auto& [arr, i] = stack.back();
    if (i == arr->size()) {
      stack.pop_back();
      continue;
    }
    const json& v = (*arr)[i++];
    if (v.is_array()) {
      stack.emplace_back(&v, 0);
      continue;
    }
    if (count == n) break;  // too many: reported below
    KILN_RETURN_IF_ERROR(append_json_element(v, t.type, t.name, t.data));
    ++count;
  }
  if (count != n || !stack.empty())
    return invalid_argument("input " + in_quotes(t.name) + ": 'data' holds " +
                            (stack.empty() ? "" : "more than ") + std::to_string(count) +
                            " elements; shape " + shape_string(t.shape) + " needs " + std::to_string(n));
  return {};
}

Status unsupported_shared_memory(const json& params, const std::string& what) {
  for (const char* key : {"shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"})
    if (params.contains(key))
      return unimplemented(what + ": shared memory is not supported by kiln; send the tensor in the request");
  return {};
}

Result<HttpInferRequest> parse_infer_json(const json& j, std::string_view binary, bool has_binary) {
  if (!j.is_object()) return invalid_argument("the infer request must be a JSON object; got " + brief(j));
  HttpInferRequest r;
  size_t binary_used = 0;
  bool saw_inputs = false;
  for (const auto& [key, v] : j.items()) {
    if (key == "id") {
      KILN_ASSIGN_OR_RETURN(r.call.id, string_field(v, "'id'"));
    } else if (key == "parameters") {
      if (!v.is_object()) return invalid_argument("'parameters' must be a JSON object; got " + brief(v));
      KILN_RETURN_IF_ERROR(unsupported_shared_memory(v, "the request"));
      if (auto it = v.find("binary_data_output"); it != v.end()) {
        if (!it->is_boolean())
          return invalid_argument("'binary_data_output' must be a boolean; got " + brief(*it));
        r.binary_output_default = it->get<bool>();
      }
      for (const auto& [pk, pv] : v.items()) {
        if (pk == "binary_data_output") continue;
        RequestParameter p;
        if (pv.is_boolean()) p = pv.get<bool>();
        else if (pv.is_number_unsigned()) p = pv.get<uint64_t>();
        else if (pv.is_number_integer()) p = pv.get<int64_t>();
        else if (pv.is_number_float()) p = pv.get<double>();
        else if (pv.is_string()) p = pv.get<std::string>();
        else return invalid_argument("request parameter '" + pk + "' must be a boolean, number or string; got " + brief(pv));
        KILN_RETURN_IF_ERROR(apply_request_parameter(r.call, pk, p));
      }
    } else if (key == "inputs") {
      saw_inputs = true;
      if (!v.is_array()) return invalid_argument("'inputs' must be a JSON array; got " + brief(v));
      std::set<std::string> names;
      for (const json& in : v) {
        if (!in.is_object()) return invalid_argument("each input must be a JSON object; got " + brief(in));
        InferTensor t;
        const json* data = nullptr;
        std::optional<uint64_t> binary_size;
        bool has_name = false, has_type = false, has_shape = false;
        for (const auto& [ik, iv] : in.items()) {
          if (ik == "name") {
            KILN_ASSIGN_OR_RETURN(t.name, string_field(iv, "an input's 'name'"));
            has_name = true;
          } else if (ik == "datatype") {
            KILN_ASSIGN_OR_RETURN(std::string dt, string_field(iv, "an input's 'datatype'"));
            auto type = tensor_type_from_name(dt);
            if (!type)
              return invalid_argument("unknown datatype " + in_quotes(dt) +
                                      " (BOOL, UINT8..UINT64, INT8..INT64, FP16, BF16, FP32, FP64, BYTES)");
            t.type = *type;
            has_type = true;
          } else if (ik == "shape") {
            if (!iv.is_array())
              return invalid_argument("an input's 'shape' must be an array; got " + brief(iv));
            for (const json& d : iv) {
              auto x = as_int64(d);
              if (!x || *x < 0)
                return invalid_argument("an input's 'shape' holds non-negative integers; got " + brief(iv));
              t.shape.push_back(*x);
            }
            has_shape = true;
          } else if (ik == "data") {
            data = &iv;
          } else if (ik == "parameters") {
            if (!iv.is_object()) return invalid_argument("an input's 'parameters' must be an object");
            KILN_RETURN_IF_ERROR(unsupported_shared_memory(iv, "input " + in_quotes(t.name)));
            if (auto it = iv.find("binary_data_size"); it != iv.end()) {
              binary_size = as_uint64(*it);
              if (!binary_size) return invalid_argument("'binary_data_size' must be a non-negative integer");
            }
          } else {
            return invalid_argument("unknown field " + in_quotes(ik) +
                                    " in an input (expected name, datatype, shape, data, parameters)");
          }
        }
        if (!has_name || !has_type || !has_shape)
          return invalid_argument("an input needs 'name', 'datatype' and 'shape'" +
                                  (has_name ? " (input " + in_quotes(t.name) + ")" : std::string()));
        if (!names.insert(t.name).second)
          return invalid_argument("input " + in_quotes(t.name) + " is given twice");
        if (binary_size) {
          if (data)
            return invalid_argument("input " + in_quotes(t.name) + " has both 'data' and 'binary_data_size'");
          if (!has_binary)
            return invalid_argument(
                "input " + in_quotes(t.name) +
                " has 'binary_data_size' but the request has no Inference-Header-Content-Length");
          if (*binary_size > binary.size() - binary_used)
            return invalid_argument("input " + in_quotes(t.name) + ": binary_data_size " +
                                    std::to_string(*binary_size) + " runs past the " +
                                    std::to_string(binary.size()) + " bytes of binary data in the request");
          t.data.assign(binary.substr(binary_used, *binary_size));
          binary_used += *binary_size;
          KILN_RETURN_IF_ERROR(t.validate());
        } else {
          if (!data)
            return invalid_argument("input " + in_quotes(t.name) +
                                    " has neither 'data' nor 'binary_data_size'");
          KILN_RETURN_IF_ERROR(fill_from_json(*data, t));
        }
        r.call.inputs.push_back(std::move(t));
      }
    } else if (key == "outputs") {
      if (!v.is_array()) return invalid_argument("'outputs' must be a JSON array; got " + brief(v));
      for (const json& out : v) {
        if (!out.is_object()) return invalid_argument("each requested output must be a JSON object");
        std::string name;
        bool has_name = false;
        std::optional<bool> binary_flag;
        for (const auto& [ok, ov] : out.items()) {
          if (ok == "name") {
            KILN_ASSIGN_OR_RETURN(name, string_field(ov, "an output's 'name'"));
            has_name = true;
          } else if (ok == "parameters") {
            if (!ov.is_object()) return invalid_argument("an output's 'parameters' must be an object");
            KILN_RETURN_IF_ERROR(unsupported_shared_memory(ov, "output " + in_quotes(name)));
            if (ov.contains("classification"))
              return unimplemented("classification outputs are not supported");
            if (auto it = ov.find("binary_data"); it != ov.end()) {
              if (!it->is_boolean())
                return invalid_argument("'binary_data' must be a boolean; got " + brief(*it));
              binary_flag = it->get<bool>();
            }
          } else {
            return invalid_argument("unknown field " + in_quotes(ok) +
                                    " in a requested output (expected name, parameters)");
          }
        }
        if (!has_name) return invalid_argument("a requested output needs a 'name'");
        if (!r.call.requested_outputs.insert(name).second)
          return invalid_argument("output " + in_quotes(name) + " is requested twice");
        if (binary_flag) r.binary_output[name] = *binary_flag;
      }
    } else {
      return invalid_argument("unknown field " + in_quotes(key) +
                              " in the infer request (expected id, inputs, outputs, parameters)");
    }
  }
  if (!saw_inputs) return invalid_argument("the infer request has no 'inputs'");
  if (has_binary && binary_used != binary.size())
    return invalid_argument(std::to_string(binary.size()) +
                            " bytes of binary data follow the JSON, but the inputs' "
                            "binary_data_size add up to " +
                            std::to_string(binary_used));
  return r;
}

// Triton's generate shaping: fixed dims divide the element count, the innermost variable dim takes what is
// left, other variable dims are 1.
Result<std::vector<int64_t>> generate_shape(const TensorMetadata& md, uint64_t count) {
  std::vector<int64_t> shape = md.shape;
  for (auto it = shape.rbegin(); it != shape.rend(); ++it) {
    if (*it == -1) continue;
    if (*it <= 0 || count % static_cast<uint64_t>(*it) != 0)
      return invalid_argument("input " + in_quotes(md.name) + ": " + std::to_string(count) +
                              " value(s) do not fit its shape " + shape_string(md.shape));
    count /= static_cast<uint64_t>(*it);
  }
  for (auto it = shape.rbegin(); it != shape.rend(); ++it) {
    if (*it != -1) continue;
    *it = static_cast<int64_t>(count);
    count = 1;
  }
  if (count != 1)
    return invalid_argument("input " + in_quotes(md.name) + ": the values do not fit its shape " +
                            shape_string(md.shape));
  return shape;
}

Result<InferTensor> generate_tensor(const TensorMetadata& md, const json& v) {
  auto type = tensor_type_from_name(md.datatype);
  if (!type) return internal_error("input " + in_quotes(md.name) + " has an unknown datatype " + md.datatype);
  InferTensor t;
  t.name = md.name;
  t.type = *type;
  const auto scalar = [](const json& x) { return x.is_string() || x.is_number() || x.is_boolean(); };
  uint64_t count = 0;
  if (v.is_array()) {
    for (const json& x : v) {
      if (!scalar(x))
        return invalid_argument("input " + in_quotes(md.name) +
                                " takes a value or a flat array of values; got " + brief(v));
      KILN_RETURN_IF_ERROR(append_json_element(x, t.type, t.name, t.data));
      ++count;
    }
  } else if (scalar(v)) {
    KILN_RETURN_IF_ERROR(append_json_element(v, t.type, t.name, t.data));
    count = 1;
  } else {
    return invalid_argument("input " + in_quotes(md.name) + " takes a value or a flat array of values; got " +
                            brief(v));
  }
  KILN_ASSIGN_OR_RETURN(t.shape, generate_shape(md, count));
  return t;
}

void set_number_from_string(json& v, bool is_signed) {
  if (!v.is_string()) return;
  const std::string& s = v.get_ref<const std::string&>();
  if (is_signed) {
    int64_t x = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), x);
    if (ec == std::errc() && p == s.data() + s.size()) v = x;
  } else {
    uint64_t x = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), x);
    if (ec == std::errc() && p == s.data() + s.size()) v = x;
  }
}

void int64_as_numbers(const google::protobuf::Descriptor* d, json& j);

void int64_value_as_number(const google::protobuf::FieldDescriptor* f, json& v) {
  using FD = google::protobuf::FieldDescriptor;
  switch (f->cpp_type()) {
    case FD::CPPTYPE_INT64:
      set_number_from_string(v, true);
      break;
    case FD::CPPTYPE_UINT64:
      set_number_from_string(v, false);
      break;
    case FD::CPPTYPE_MESSAGE:
      int64_as_numbers(f->message_type(), v);
      break;
    default:
      break;
  }
}

// Protobuf's JSON writes 64-bit integers as strings; Triton's config JSON has numbers ("dims": [-1, 1]), and
// clients (perf_analyzer, tritonclient users) read them as such.
void int64_as_numbers(const google::protobuf::Descriptor* d, json& j) {
  if (!j.is_object()) return;
  for (int i = 0; i < d->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* f = d->field(i);
    auto it = j.find(f->name());
    if (it == j.end()) continue;
    if (f->is_map()) {
      const google::protobuf::FieldDescriptor* value = f->message_type()->map_value();
      if (it->is_object())
        for (auto& [k, v] : it->items()) int64_value_as_number(value, v);
    } else if (f->is_repeated()) {
      if (it->is_array())
        for (json& v : *it) int64_value_as_number(f, v);
    } else {
      int64_value_as_number(f, *it);
    }
  }
}

json counter(uint64_t count, uint64_t ns) { return {{"count", count}, {"ns", ns}}; }

}  // namespace

Result<json> parse_request_json(std::string_view text, int max_depth) {
  json out;
  auto problem = parse_json_strict(text, max_depth, out);
  if (!problem) return out;
  switch (problem->kind) {
    case JsonProblem::Kind::kTooDeep:
      return invalid_argument("the request JSON nests deeper than " + std::to_string(max_depth) + " levels");
    case JsonProblem::Kind::kDuplicateKey:
      return invalid_argument("the request JSON has the key " + in_quotes(problem->detail) + " twice in one object");
    case JsonProblem::Kind::kMalformed:
      break;
  }
  return invalid_argument("malformed JSON in the request: " + clip(problem->detail, 300));
}

Status append_json_element(const json& v, TensorType type, const std::string& input, std::string& out) {
  switch (type) {
    case TensorType::kBool:
      if (!v.is_boolean()) return bad_element(input, type, v, "true or false");
      out.push_back(v.get<bool>() ? 1 : 0);
      return {};
    case TensorType::kInt8:
      return append_signed<int8_t>(v, type, input, out);
    case TensorType::kInt16:
      return append_signed<int16_t>(v, type, input, out);
    case TensorType::kInt32:
      return append_signed<int32_t>(v, type, input, out);
    case TensorType::kInt64:
      return append_signed<int64_t>(v, type, input, out);
    case TensorType::kUint8:
      return append_unsigned<uint8_t>(v, type, input, out);
    case TensorType::kUint16:
      return append_unsigned<uint16_t>(v, type, input, out);
    case TensorType::kUint32:
      return append_unsigned<uint32_t>(v, type, input, out);
    case TensorType::kUint64:
      return append_unsigned<uint64_t>(v, type, input, out);
    case TensorType::kFp16: {
      KILN_ASSIGN_OR_RETURN(double d, float_value(v, type, input, 65504.0));
      append_raw<uint16_t>(out, f32_to_f16(static_cast<float>(d)));
      return {};
    }
    case TensorType::kBf16: {
      KILN_ASSIGN_OR_RETURN(double d, float_value(v, type, input, std::numeric_limits<float>::max()));
      append_raw<uint16_t>(out, f32_to_bf16(static_cast<float>(d)));
      return {};
    }
    case TensorType::kFp32: {
      KILN_ASSIGN_OR_RETURN(double d, float_value(v, type, input, std::numeric_limits<float>::max()));
      append_raw<float>(out, static_cast<float>(d));
      return {};
    }
    case TensorType::kFp64: {
      KILN_ASSIGN_OR_RETURN(double d, float_value(v, type, input, std::numeric_limits<double>::max()));
      append_raw<double>(out, d);
      return {};
    }
    case TensorType::kBytes: {
      if (!v.is_string()) return bad_element(input, type, v, "strings");
      const std::string& s = v.get_ref<const std::string&>();
      if (s.size() > UINT32_MAX) return bad_element(input, type, v, "strings under 4 GiB");
      append_raw<uint32_t>(out, static_cast<uint32_t>(s.size()));
      out += s;
      return {};
    }
  }
  return internal_error("unhandled tensor type");
}

json tensor_data_json(const InferTensor& t) {
  json a = json::array();
  const size_t size = tensor_type_size(t.type);
  const size_t n = size ? t.data.size() / size : 0;
  switch (t.type) {
    case TensorType::kBool:
      for (size_t i = 0; i < n; ++i) a.push_back(t.data[i] != 0);
      break;
    case TensorType::kUint8:
      for (size_t i = 0; i < n; ++i) a.push_back(read_raw<uint8_t>(t.data, i));
      break;
    case TensorType::kUint16:
      for (size_t i = 0; i < n; ++i) a.push_back(read_raw<uint16_t>(t.data, i));
      break;
    case TensorType::kUint32:
      for (size_t i = 0; i < n; ++i) a.push_back(read_raw<uint32_t>(t.data, i));
      break;
    case TensorType::kUint64:
      for (size_t i = 0; i < n; ++i) a.push_back(read_raw<uint64_t>(t.data, i));
      break;
    case TensorType::kInt8:
      for (size_t i = 0; i < n; ++i) a.push_back(read_raw<int8_t>(t.data, i));
      break;
    case TensorType::kInt16:
      for (size_t i = 0; i < n; ++i) a.push_back(read_raw<int16_t>(t.data, i));
      break;
    case TensorType::kInt32:
      for (size_t i = 0; i < n; ++i) a.push_back(read_raw<int32_t>(t.data, i));
      break;
    case TensorType::kInt64:
      for (size_t i = 0; i < n; ++i) a.push_back(read_raw<int64_t>(t.data, i));
      break;
    case TensorType::kFp16:
      for (size_t i = 0; i < n; ++i) a.push_back(f16_to_f32(read_raw<uint16_t>(t.data, i)));
      break;
    case TensorType::kBf16:
      for (size_t i = 0; i < n; ++i) a.push_back(bf16_to_f32(read_raw<uint16_t>(t.data, i)));
      break;
    case TensorType::kFp32:
      for (size_t i = 0; i < n; ++i) a.push_back(read_raw<float>(t.data, i));
      break;
    case TensorType::kFp64:
      for (size_t i = 0; i < n; ++i) a.push_back(read_raw<double>(t.data, i));
      break;
    case TensorType::kBytes: {
      auto strings = t.strings();
      if (strings.ok())
        for (std::string& s : *strings) a.push_back(std::move(s));
      break;
    }
  }
  return a;
}

Result<HttpInferRequest> parse_infer_request(std::string_view body, std::optional<uint64_t> json_length,
                                             int max_depth) {
  std::string_view head = body, binary;
  if (json_length) {
    if (*json_length > body.size())
      return invalid_argument("Inference-Header-Content-Length " + std::to_string(*json_length) +
                              " is larger than the request body (" + std::to_string(body.size()) + " bytes)");
    head = body.substr(0, *json_length);
    binary = body.substr(*json_length);
  }
  if (head.empty()) return invalid_argument("the infer request has no JSON body");
  KILN_ASSIGN_OR_RETURN(json j, parse_request_json(head, max_depth));
  return parse_infer_json(j, binary, json_length.has_value());
}

HttpBody infer_response_body(const InferReply& reply, const HttpInferRequest& request) {
  json j = {{"model_name", reply.model}, {"model_version", reply.version}};
  if (!reply.id.empty()) j["id"] = reply.id;
  json outputs = json::array();
  std::string binary;
  bool any_binary = false;
  for (const InferTensor& t : reply.outputs) {
    json o = {{"name", t.name}, {"datatype", tensor_type_name(t.type)}, {"shape", t.shape}};
    bool as_binary = request.binary_output_default;
    if (auto it = request.binary_output.find(t.name); it != request.binary_output.end())
      as_binary = it->second;
    if (as_binary) {
      o["parameters"] = {{"binary_data_size", t.data.size()}};
      binary += t.data;
      any_binary = true;
    } else {
      o["data"] = tensor_data_json(t);
    }
    outputs.push_back(std::move(o));
  }
  j["outputs"] = std::move(outputs);
  HttpBody b;
  b.body = dump(j);
  // Unlike Triton, the header is also set when every binary output is empty: tritonclient.http then still
  // reads them as (empty) binary outputs instead of failing to find their data.
  if (any_binary) {
    b.json_length = b.body.size();
    b.body += binary;
  }
  return b;
}

Result<InferCall> parse_generate_request(std::string_view body, const ModelMetadata& metadata,
                                         int max_depth) {
  json j = json::object();
  if (!body.empty()) {
    KILN_ASSIGN_OR_RETURN(j, parse_request_json(body, max_depth));
  }
  if (!j.is_object()) return invalid_argument("the generate request must be a JSON object; got " + brief(j));
  InferCall call;
  call.model = metadata.name;
  std::set<std::string> seen;
  auto add = [&](const std::string& key, const json& v) -> Status {
    const TensorMetadata* md = nullptr;
    for (const TensorMetadata& in : metadata.inputs)
      if (in.name == key) md = &in;
    if (!md) {
      std::vector<std::string> names;
      for (const TensorMetadata& in : metadata.inputs) names.push_back(in.name);
      return invalid_argument(in_quotes(key) + " is not an input of model " + in_quotes(metadata.name) +
                              " (its inputs: " + join(names) + ")");
    }
    if (!seen.insert(key).second) return invalid_argument("input " + in_quotes(key) + " is given twice");
    KILN_ASSIGN_OR_RETURN(InferTensor t, generate_tensor(*md, v));
    call.inputs.push_back(std::move(t));
    return {};
  };
  for (const auto& [key, v] : j.items()) {
    if (key == "id") {
      KILN_ASSIGN_OR_RETURN(call.id, string_field(v, "'id'"));
    } else if (key == "parameters") {
      if (!v.is_object()) return invalid_argument("'parameters' must be a JSON object; got " + brief(v));
      for (const auto& [pk, pv] : v.items()) KILN_RETURN_IF_ERROR(add(pk, pv));
    } else {
      KILN_RETURN_IF_ERROR(add(key, v));
    }
  }
  return call;
}

std::string generate_response_json(const InferReply& reply) {
  json j = {{"model_name", reply.model}, {"model_version", reply.version}};
  if (!reply.id.empty()) j["id"] = reply.id;
  for (const InferTensor& t : reply.outputs) {
    json data = tensor_data_json(t);
    j[t.name] = data.size() == 1 ? std::move(data[0]) : std::move(data);
  }
  return dump(j);
}

std::string error_json(const std::string& message) { return dump(json{{"error", message}}); }

std::string server_metadata_json(const ServerCore& core) {
  return dump(json{{"name", core.name()}, {"version", core.version()}, {"extensions", core.extensions()}});
}

std::string model_metadata_json(const ModelMetadata& m) {
  auto tensors = [](const std::vector<TensorMetadata>& v) {
    json a = json::array();
    for (const TensorMetadata& t : v)
      a.push_back({{"name", t.name}, {"datatype", t.datatype}, {"shape", t.shape}});
    return a;
  };
  return dump(json{{"name", m.name},
                   {"versions", m.versions},
                   {"platform", m.platform},
                   {"inputs", tensors(m.inputs)},
                   {"outputs", tensors(m.outputs)}});
}

std::string model_stats_json(const std::vector<ModelStats>& stats) {
  json a = json::array();
  for (const ModelStats& s : stats) {
    a.push_back({{"name", s.name},
                 {"version", s.version},
                 {"last_inference", s.last_inference_ms},
                 {"inference_count", s.inference_count},
                 {"execution_count", s.execution_count},
                 {"inference_stats",
                  {{"success", counter(s.success_count, s.success_ns)},
                   {"fail", counter(s.fail_count, s.fail_ns)},
                   {"queue", counter(s.success_count, s.queue_ns)},
                   {"compute_input", counter(s.success_count, 0)},
                   {"compute_infer", counter(s.success_count, s.compute_ns)},
                   {"compute_output", counter(s.success_count, 0)},
                   {"cache_hit", counter(0, 0)},
                   {"cache_miss", counter(0, 0)}}},
                 {"batch_stats", json::array()}});
  }
  return dump(json{{"model_stats", std::move(a)}});
}

std::string repository_index_json(const std::vector<ModelStatus>& models) {
  json a = json::array();
  for (const ModelStatus& m : models) {
    json o = {{"name", m.name}};
    if (!m.version.empty()) o["version"] = m.version;
    o["state"] = m.state;
    if (!m.reason.empty()) o["reason"] = m.reason;
    a.push_back(std::move(o));
  }
  return dump(a);
}

Result<std::string> model_config_json(const inference::ModelConfig& config) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.always_print_primitive_fields = true;
  std::string text;
  auto status = google::protobuf::util::MessageToJsonString(config, &text, options);
  if (!status.ok()) return internal_error("model config as JSON: " + std::string(status.message()));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return internal_error("model config as JSON: protobuf wrote invalid JSON");
  int64_as_numbers(inference::ModelConfig::descriptor(), j);
  return dump(j);
}

std::string log_settings_json(int verbose_level) {
  return dump(json{{"log_file", ""},
                   {"log_info", true},
                   {"log_warning", true},
                   {"log_error", true},
                   {"log_verbose_level", verbose_level},
                   {"log_format", "default"}});
}

Result<int> apply_log_settings(const json& body, int verbose_level) {
  if (!body.is_object())
    return invalid_argument("the log settings must be a JSON object; got " + brief(body));
  const std::string only = "; only log_verbose_level can be changed";
  for (const auto& [key, v] : body.items()) {
    if (v.is_null()) continue;  // Triton: null means "leave as is"
    if (key == "log_verbose_level") {
      auto level = as_uint64(v);
      if (!level || *level > INT_MAX)
        return invalid_argument("log_verbose_level must be a non-negative integer; got " + brief(v));
      verbose_level = static_cast<int>(*level);
    } else if (key == "log_file") {
      if (!v.is_string() || !v.get_ref<const std::string&>().empty())
        return invalid_argument("the log file can not be set through the network protocol");
    } else if (key == "log_info" || key == "log_warning" || key == "log_error") {
      if (!v.is_boolean()) return invalid_argument(key + " must be a boolean; got " + brief(v));
      if (!v.get<bool>()) return invalid_argument(key + " can not be turned off" + only);
    } else if (key == "log_format") {
      if (v != "default") return invalid_argument("log_format can not be changed from \"default\"" + only);
    } else {
      return invalid_argument("unknown log setting " + in_quotes(key) + only);
    }
  }
  return verbose_level;
}

}  // namespace kiln::server

#include <cctype>
#include <cstdio>
#include <thread>
#include <sstream>

#include "backend/backend_factory.h"
#include "server/model.h"
#include "server/model_config_loader.h"

namespace kiln::server {

namespace {

using Clock = std::chrono::steady_clock;

// The parameters of the tensorrt_llm model that kiln reads; others are reported once at load.
const std::set<std::string> kUsedParameters = {
    "gpt_model_path",          "gpt_model_type",           "max_beam_width",
    "batch_scheduler_policy",  "kv_cache_free_gpu_mem_fraction", "max_tokens_in_paged_kv_cache",
    "enable_kv_cache_reuse",   "enable_chunked_context",   "exclude_input_in_output",
    "max_attention_window_size", "max_queue_size"};

// A parameter's value, or nullopt when unset or a template placeholder ("${...}") left unfilled.
std::optional<std::string> param(const inference::ModelConfig& c, const std::string& key) {
  auto v = model_parameter(c, key);
  if (!v || v->empty() || v->find("${") != std::string::npos) return std::nullopt;
  return v;
}

Result<bool> bool_param(const inference::ModelConfig& c, const std::string& key, bool fallback) {
  auto v = param(c, key);
  if (!v) return fallback;
  if (*v == "true" || *v == "True" || *v == "1") return true;
  if (*v == "false" || *v == "False" || *v == "0") return false;
  return invalid_argument("parameter " + key + "='" + *v + "': expected true or false");
}

Result<double> number_param(const inference::ModelConfig& c, const std::string& key) {
  auto v = param(c, key);
  try {
    size_t used = 0;
    double d = std::stod(*v, &used);
    if (used != v->size()) throw std::invalid_argument("trailing");
    return d;
  } catch (const std::exception&) {
    return invalid_argument("parameter " + key + "='" + *v + "': expected a number");
  }
}

Result<ExecutorConfig> executor_config(const inference::ModelConfig& c) {
  ExecutorConfig e;
  if (auto p = param(c, "batch_scheduler_policy")) {
    if (*p == "guaranteed_no_evict") e.scheduler.policy = CapacityPolicy::kGuaranteedNoEvict;
    else if (*p == "max_utilization") e.scheduler.policy = CapacityPolicy::kMaxUtilization;
    else return invalid_argument("parameter batch_scheduler_policy='" + *p + "': expected guaranteed_no_evict or max_utilization");
  }
  if (auto t = param(c, "gpt_model_type"); t && *t != "V1" && *t != "inflight_fused_batching" && *t != "inflight_batching")
    return invalid_argument("parameter gpt_model_type='" + *t + "': expected V1, inflight_batching or inflight_fused_batching");
  if (param(c, "kv_cache_free_gpu_mem_fraction")) {
    KILN_ASSIGN_OR_RETURN(e.kv_cache.free_mem_fraction, number_param(c, "kv_cache_free_gpu_mem_fraction"));
  }
  if (param(c, "max_tokens_in_paged_kv_cache")) {
    KILN_ASSIGN_OR_RETURN(double t, number_param(c, "max_tokens_in_paged_kv_cache"));
    e.kv_cache.max_tokens = static_cast<int64_t>(t);
  }
  if (param(c, "max_attention_window_size")) {
    KILN_ASSIGN_OR_RETURN(double w, number_param(c, "max_attention_window_size"));
    e.kv_cache.max_attention_window = static_cast<int32_t>(std::min(w, 1e9));
  }
  if (param(c, "max_queue_size")) {
    KILN_ASSIGN_OR_RETURN(double q, number_param(c, "max_queue_size"));
    e.scheduler.max_queue_size = static_cast<int64_t>(q);
  }
  KILN_ASSIGN_OR_RETURN(e.kv_cache.enable_reuse, bool_param(c, "enable_kv_cache_reuse", false));
  KILN_ASSIGN_OR_RETURN(e.scheduler.enable_chunked_context, bool_param(c, "enable_chunked_context", true));
  KILN_RETURN_IF_ERROR(e.validate().with_context("model parameters"));
  return e;
}

// Triton's request priority as the executor's: levels 1 (highest) .. priority_levels (lowest) of the model's
// dynamic_batching spread over [1, 0]; 0 means the config's default_priority_level (the middle, 0.5,
// when the config sets no levels). A priority without configured levels is refused, not ignored.
Result<float> executor_priority(const inference::ModelConfig& c, uint64_t p) {
  const uint64_t levels = c.dynamic_batching().priority_levels();
  if (p == 0) p = c.dynamic_batching().default_priority_level();
  if (p == 0) return 0.5f;
  if (levels == 0)
    return invalid_argument("priority " + std::to_string(p) +
                            ": the model's config sets no dynamic_batching { priority_levels }");
  if (p > levels)
    return invalid_argument("priority " + std::to_string(p) + " is outside the model's levels 1.." +
                            std::to_string(levels));
  return levels == 1 ? 0.5f : 1.0f - static_cast<float>(p - 1) / static_cast<float>(levels - 1);
}

// The queue timeout of a call: its own, else the config's default_queue_policy (Triton's REJECT action).
Result<std::optional<std::chrono::microseconds>> queue_timeout(const inference::ModelConfig& c,
                                                                std::optional<uint64_t> requested) {
  const auto& policy = c.dynamic_batching().default_queue_policy();
  if (requested && policy.default_timeout_microseconds() > 0 && !policy.allow_timeout_override())
    return invalid_argument("timeout: the model's queue policy does not allow a request to override its timeout");
  const uint64_t us = requested ? *requested : policy.default_timeout_microseconds();
  if (us == 0) return std::optional<std::chrono::microseconds>();
  if (us > (1ull << 40)) return invalid_argument("timeout " + std::to_string(us) + "us is too large");
  return std::optional<std::chrono::microseconds>(std::chrono::microseconds(static_cast<int64_t>(us)));
}

// What one generate() call tracks while its rows run (shared with the executor's callbacks).
struct GenerateState {
  TrtllmModel::ChunkFn on_chunk;
  std::string client_id;
  std::mutex mu;
  std::vector<RequestId> ids;  // executor ids of the rows queued so far
  std::vector<Clock::time_point> last_chunk;
  std::vector<bool> got_token;
  Clock::time_point start = Clock::now();
  size_t remaining = 0;
  bool refused = false;    // a row could not be queued: the call failed at once, chunks are dropped
  bool failed = false;     // a row failed: the others are cancelled
  bool cancelled = false;  // a row ended by cancellation (client gone or `stop`): counted as a failure
};

// What infer() collects for its reply: the tensor call over generate().
struct CallState {
  InferCall call;
  ReplyFn reply;
  std::vector<Request> requests;    // as parsed (the client's streaming flag, echo, pad ids)
  std::vector<Response> responses;  // merged chunks, per row
  std::mutex mu;
  size_t remaining = 0;
  bool failed = false;
};

bool was_cancelled(const Response& r) {
  return std::find(r.finish_reasons.begin(), r.finish_reasons.end(), FinishReason::kCancelled) != r.finish_reasons.end();
}

}  // namespace

Result<std::shared_ptr<TrtllmModel>> TrtllmModel::load(const std::string& model_dir, const std::string& name,
                                                       std::shared_ptr<inference::ModelConfig> config) {
  std::shared_ptr<TrtllmModel> m(new TrtllmModel(name, config));
  const inference::ModelConfig& c = *config;
  const std::string engine_dir = resolve_engine_dir(model_dir, name, model_parameter(c, "gpt_model_path"));
  KILN_ASSIGN_OR_RETURN(m->loaded_, load_model(engine_dir));  // one rank, or every rank of a tp/pp engine
  m->engine_ = m->loaded_.engine;
  KILN_ASSIGN_OR_RETURN(ExecutorConfig ec, executor_config(c));
  const BuildConfig& b = m->engine_.build;
  if (auto w = param(c, "max_beam_width")) {
    KILN_ASSIGN_OR_RETURN(double bw, number_param(c, "max_beam_width"));
    if (bw < 1 || bw > static_cast<double>(b.max_beam_width))
      return invalid_argument("parameter max_beam_width=" + *w + " exceeds the engine's max_beam_width=" +
                              std::to_string(b.max_beam_width) + " (rebuild with kiln build --max_beam_width)");
  }
  if (c.max_batch_size() < 0) return invalid_argument("max_batch_size must not be negative");
  m->limits_.max_batch_size = c.max_batch_size();
  m->limits_.vocab_size = m->engine_.model.vocab_size;
  m->limits_.max_input_len = b.max_input_len;
  m->limits_.max_seq_len = b.max_seq_len;
  m->limits_.max_beam_width = b.max_beam_width;
  KILN_ASSIGN_OR_RETURN(m->limits_.exclude_input_in_output, bool_param(c, "exclude_input_in_output", false));
  m->decoupled_ = c.model_transaction_policy().decoupled();
  if (c.has_dynamic_batching()) {
    const auto& db = c.dynamic_batching();
    if (db.default_queue_policy().timeout_action() == inference::ModelQueuePolicy::DELAY)
      return unimplemented("dynamic_batching: timeout_action DELAY is not supported (use REJECT)");
    if (!db.priority_queue_policy().empty())
      return unimplemented("dynamic_batching: priority_queue_policy is not supported (one queue policy for all levels)");
    if (db.priority_levels() > 0 && db.default_priority_level() > db.priority_levels())
      return invalid_argument("dynamic_batching: default_priority_level exceeds priority_levels");
    if (db.default_queue_policy().max_queue_size() > 0 && !param(c, "max_queue_size"))
      ec.scheduler.max_queue_size = db.default_queue_policy().max_queue_size();
  }
  KILN_ASSIGN_OR_RETURN(m->executor_, Executor::create(*m->loaded_.runner, ec));
  std::fprintf(stderr, "kiln serve: model '%s': engine %s (%s, max_batch_size %lld, max_input_len %lld, max_seq_len %lld)\n",
               name.c_str(), engine_dir.c_str(), dtype_name(b.dtype),
               static_cast<long long>(b.max_batch_size), static_cast<long long>(b.max_input_len),
               static_cast<long long>(b.max_seq_len));
  std::fprintf(stderr, "kiln serve: model '%s': %s\n", name.c_str(), m->executor_->kv_plan().c_str());
  for (const std::string& p : unused_parameters(c, kUsedParameters))
    std::fprintf(stderr, "kiln serve: model '%s': parameter '%s' is not used by kiln\n", name.c_str(), p.c_str());
  return m;
}

TrtllmModel::~TrtllmModel() {
  if (executor_) executor_->shutdown(false);
  replies_.stop();  // delivers what the executor's last callbacks posted
}

void TrtllmModel::forget_client_id(const std::string& client_id, RequestId id) {
  if (client_id.empty()) return;
  std::lock_guard<std::mutex> lock(calls_mu_);
  auto [a, b] = by_client_id_.equal_range(client_id);
  for (auto it = a; it != b; ++it)
    if (it->second == id) {
      by_client_id_.erase(it);
      return;
    }
}

void TrtllmModel::shutdown(std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (pending_ > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  executor_->shutdown(/*drain=*/false);  // cancels whatever is still running
  replies_.stop();                        // and delivers every reply before the frontends stop
}

ModelMetadata TrtllmModel::metadata() const {
  ModelMetadata md;
  md.name = name_;
  md.versions = {version_};
  md.platform = config_->backend().empty() ? "tensorrtllm" : config_->backend();  // as Triton: the backend
  const inference::ModelConfig& c = *config_;
  auto dims = [&](const google::protobuf::RepeatedField<int64_t>& d) {
    std::vector<int64_t> v(d.begin(), d.end());
    if (c.max_batch_size() > 0) v.insert(v.begin(), -1);
    return v;
  };
  for (const auto& in : c.input())
    md.inputs.push_back({in.name(), inference::DataType_Name(in.data_type()).substr(5), dims(in.dims()), in.optional()});
  for (const auto& out : c.output())
    md.outputs.push_back({out.name(), inference::DataType_Name(out.data_type()).substr(5), dims(out.dims()), false});
  return md;
}

Result<CancelFn> TrtllmModel::infer(InferCall call, ReplyFn on_reply) {
  const auto t0 = Clock::now();
  auto fail_now = [&](Status s) -> Result<CancelFn> {
    record(false, static_cast<uint64_t>((Clock::now() - t0).count()), 0, 0);
    return s;
  };
  auto parsed = parse_trtllm_inputs(call.inputs, limits_);
  if (!parsed.ok()) return fail_now(parsed.status());
  for (const std::string& note : parsed->notes) {  // each kind of note once (the numbers vary)
    std::string kind;
    for (char ch : note)
      if (!std::isdigit(static_cast<unsigned char>(ch))) kind += ch;
    std::lock_guard<std::mutex> lock(calls_mu_);
    if (noted_.insert(kind).second)
      std::fprintf(stderr, "kiln serve: model '%s': %s (said once)\n", name_.c_str(), note.c_str());
  }
  if (parsed->stop) {  // cancel the call in flight under this request id
    std::lock_guard<std::mutex> lock(calls_mu_);
    auto [a, b] = by_client_id_.equal_range(call.id);
    for (auto it = a; it != b; ++it) executor_->cancel(it->second);
    InferReply r{call.model, version_, call.id, {}, {}, true};
    on_reply(std::move(r));
    return CancelFn([] {});
  }
  const bool streaming = std::any_of(parsed->requests.begin(), parsed->requests.end(), [](const Request& r) { return r.streaming; });
  if (streaming && !decoupled_)
    return fail_now(invalid_argument("streaming=true needs a decoupled model (model_transaction_policy { decoupled: true })"));
  if (streaming && parsed->requests.size() > 1)
    return fail_now(invalid_argument("streaming takes one request per call (batch size 1)"));
  if (decoupled_ && !call.stream)
    return fail_now(invalid_argument("model '" + name_ + "' is decoupled: use ModelStreamInfer (gRPC) or generate_stream (HTTP)"));

  auto st = std::make_shared<CallState>();
  st->call = std::move(call);
  st->call.inputs.clear();  // not needed any more
  st->reply = std::move(on_reply);
  st->requests = parsed->requests;
  st->responses.resize(st->requests.size());
  st->remaining = st->requests.size();
  const GenerateOptions options{st->call.id, st->call.priority, st->call.timeout_us};
  // Runs on the reply worker, in the order the engine produced the chunks.
  auto on_chunk = [this, st](size_t row, const Response& chunk) {
    std::unique_lock<std::mutex> lock(st->mu);
    if (st->failed) return;
    if (!chunk.error.ok()) {
      st->failed = true;
      lock.unlock();
      st->reply(InferReply{st->call.model, version_, st->call.id, chunk.error, {}, true});
      return;
    }
    if (st->requests[row].streaming) {
      // A reply per chunk: this step's tokens; the last one flagged final.
      std::vector<InferTensor> outs = trtllm_outputs(std::span<const Response>(&chunk, 1),
                                                     std::span<const Request>(&st->requests[row], 1), limits_,
                                                     st->call.requested_outputs);
      lock.unlock();
      st->reply(InferReply{st->call.model, version_, st->call.id, {}, std::move(outs), chunk.is_final});
      return;
    }
    Response copy = chunk;
    merge_response(st->responses[row], copy);
    if (!chunk.is_final || --st->remaining > 0) return;
    // Every row is done: one reply for the batch.
    for (size_t i = 0; i < st->responses.size(); ++i) {
      const Request& q = st->requests[i];
      if (q.output.exclude_input_from_output) continue;  // the model's exclude_input_in_output
      Response& r = st->responses[i];
      for (size_t b = 0; b < r.output_ids.size(); ++b) {
        r.output_ids[b].insert(r.output_ids[b].begin(), q.input_ids.begin(), q.input_ids.end());
        if (b < r.sequence_lengths.size()) r.sequence_lengths[b] += static_cast<int32_t>(q.input_ids.size());
      }
    }
    std::vector<InferTensor> outs = trtllm_outputs(st->responses, st->requests, limits_, st->call.requested_outputs);
    lock.unlock();
    st->reply(InferReply{st->call.model, version_, st->call.id, {}, std::move(outs), true});
  };
  auto cancel = generate(std::move(parsed->requests), options, std::move(on_chunk));
  if (!cancel.ok()) return cancel.status();  // counted by generate()
  return CancelFn([c = std::move(*cancel)] { c(std::nullopt); });
}

Result<TrtllmModel::RowCancelFn> TrtllmModel::generate(std::vector<Request> requests, const GenerateOptions& options,
                                                       ChunkFn on_chunk) {
  const auto t0 = Clock::now();
  auto fail_now = [&](Status s) -> Result<RowCancelFn> {
    record(false, static_cast<uint64_t>((Clock::now() - t0).count()), 0, 0);
    return s;
  };
  if (requests.empty()) return fail_now(invalid_argument("no request to run"));
  auto priority = executor_priority(*config_, options.priority);
  if (!priority.ok()) return fail_now(priority.status());
  auto timeout = queue_timeout(*config_, options.timeout_us);
  if (!timeout.ok()) return fail_now(timeout.status());

  auto st = std::make_shared<GenerateState>();
  st->on_chunk = std::move(on_chunk);
  st->client_id = options.client_id;
  const size_t rows = requests.size();
  st->last_chunk.resize(rows, t0);
  st->got_token.resize(rows, false);
  st->remaining = rows;
  st->start = t0;
  std::weak_ptr<Model> weak = weak_from_this();
  Executor* ex = executor_.get();
  ++pending_;  // one per call, until its last row's final chunk
  for (size_t row = 0; row < rows; ++row) {
    Request req = std::move(requests[row]);
    req.priority = *priority;
    req.queue_timeout = *timeout;
    req.streaming = req.sampling.beam_width == 1;  // chunks per step even when the client gets one reply: TTFT/ITL
    req.output.exclude_input_from_output = true;    // callers put the prompt in front themselves
    // Runs on the reply worker, in the order the engine produced the chunks.
    auto handle = [this, st, row, rows, ex](const Response& chunk, Clock::time_point now) {
      if (chunk.is_final) forget_client_id(st->client_id, chunk.id);
      std::vector<RequestId> cancel_others;
      bool call_done = false;
      {
        std::lock_guard<std::mutex> lock(st->mu);
        if (st->refused) return;
        if (!chunk.error.ok()) {
          if (!st->failed)
            for (RequestId id : st->ids)
              if (id != chunk.id) cancel_others.push_back(id);
          st->failed = true;
        } else {
          const size_t tokens = chunk.output_ids.empty() ? 0 : chunk.output_ids[0].size();
          if (tokens > 0) {
            const double ms = std::chrono::duration<double, std::milli>(now - st->last_chunk[row]).count();
            if (!st->got_token[row]) ttft_ms_.observe(std::chrono::duration<double, std::milli>(now - st->start).count());
            else if (chunk.is_delta) itl_ms_.observe(ms / static_cast<double>(tokens));
            st->got_token[row] = true;
            st->last_chunk[row] = now;
          }
          if (chunk.is_final) {
            st->cancelled = st->cancelled || was_cancelled(chunk);
            output_tokens_.observe(chunk.sequence_lengths.empty() ? 0 : chunk.sequence_lengths[0]);
          }
        }
        // The statistics see the call end before its last chunk reaches the caller (a client that reads its
        // reply then the statistics finds it counted).
        if (chunk.is_final && --st->remaining == 0) {
          call_done = true;
          --pending_;
          const bool ok = !st->failed && !st->cancelled;
          record(ok, static_cast<uint64_t>((now - st->start).count()), ok ? chunk.queue_ns : 0,
                 ok && chunk.total_ns > chunk.queue_ns ? chunk.total_ns - chunk.queue_ns : 0, rows);
        }
      }
      for (RequestId id : cancel_others) ex->cancel(id);
      st->on_chunk(row, chunk);
      if (call_done) st->on_chunk = nullptr;  // (only the reply worker touches it) what it holds can go now
    };
    // On the engine thread: note the time, hand the chunk over, return to the forward pass.
    req.on_response = [this, weak, handle](const Response& chunk) {
      if (!weak.lock()) return;
      replies_.post([handle, chunk, now = Clock::now()] { handle(chunk, now); });
    };
    input_tokens_.observe(static_cast<double>(req.input_ids.size()));
    Result<RequestId> id = unavailable("");
    {
      // Registered for `stop` before its final chunk can be handled (that handler takes calls_mu_ too), and in
      // st->ids before any chunk of it is handled (that handler takes st->mu).
      std::lock_guard<std::mutex> lock(calls_mu_);
      std::lock_guard<std::mutex> call_lock(st->mu);
      id = executor_->enqueue(std::move(req));
      if (id.ok()) {
        if (!st->client_id.empty()) by_client_id_.emplace(st->client_id, *id);
        st->ids.push_back(*id);
      } else {
        st->refused = true;  // chunks of rows already queued are dropped; they are cancelled here
      }
    }
    if (!id.ok()) {
      std::vector<RequestId> queued;
      {
        std::lock_guard<std::mutex> lock(st->mu);
        queued = st->ids;
      }
      for (RequestId prev : queued) executor_->cancel(prev);
      --pending_;
      return fail_now(id.status());
    }
  }
  return RowCancelFn([weak, ex, st](std::optional<size_t> row) {
    auto alive = weak.lock();
    if (!alive) return;
    std::vector<RequestId> ids;
    {
      std::lock_guard<std::mutex> lock(st->mu);
      if (row && *row < st->ids.size()) ids.push_back(st->ids[*row]);
      if (!row) ids = st->ids;
    }
    for (RequestId id : ids) ex->cancel(id);
  });
}

void TrtllmModel::metrics(MetricsText& out) const {
  Model::metrics(out);
  using T = MetricsText::Type;
  const ExecutorStats s = executor_->stats();
  const std::string l = labels();
  auto gauge = [&](const char* family, const char* help, const char* kind, const char* type, double v) {
    out.sample(family, T::kGauge, help, l + "," + kind + "=\"" + type + "\"", v);
  };
  const char* req = "TRT LLM request metrics";
  gauge("nv_trt_llm_request_metrics", req, "request_type", "active", static_cast<double>(s.active_requests));
  gauge("nv_trt_llm_request_metrics", req, "request_type", "max", static_cast<double>(s.max_active_requests));
  gauge("nv_trt_llm_request_metrics", req, "request_type", "scheduled", static_cast<double>(s.scheduled_requests));
  gauge("nv_trt_llm_request_metrics", req, "request_type", "context", static_cast<double>(s.context_requests));
  gauge("nv_trt_llm_request_metrics", req, "request_type", "waiting", static_cast<double>(s.queued_requests));
  const char* kv = "TRT LLM KV cache block metrics";
  gauge("nv_trt_llm_kv_cache_block_metrics", kv, "kv_cache_block_type", "max", static_cast<double>(s.kv.max_blocks));
  gauge("nv_trt_llm_kv_cache_block_metrics", kv, "kv_cache_block_type", "free", static_cast<double>(s.kv.free_blocks));
  gauge("nv_trt_llm_kv_cache_block_metrics", kv, "kv_cache_block_type", "used", static_cast<double>(s.kv.used_blocks));
  gauge("nv_trt_llm_kv_cache_block_metrics", kv, "kv_cache_block_type", "tokens_per",
        static_cast<double>(s.kv.tokens_per_block));
  gauge("nv_trt_llm_kv_cache_block_metrics", kv, "kv_cache_block_type", "reused", static_cast<double>(s.kv.reused_blocks));
  gauge("nv_trt_llm_kv_cache_block_metrics", kv, "kv_cache_block_type", "fraction",
        s.kv.max_blocks ? static_cast<double>(s.kv.used_blocks) / static_cast<double>(s.kv.max_blocks) : 0.0);
  const char* ifb = "TRT LLM inflight batcher metrics";
  const char* ifb_kind = "inflight_batcher_specific_metric";
  gauge("nv_trt_llm_inflight_batcher_metrics", ifb, ifb_kind, "total_context_tokens", static_cast<double>(s.context_tokens));
  gauge("nv_trt_llm_inflight_batcher_metrics", ifb, ifb_kind, "generation_requests",
        static_cast<double>(s.generation_requests));
  gauge("nv_trt_llm_inflight_batcher_metrics", ifb, ifb_kind, "micro_batch_id", 0.0);
  gauge("nv_trt_llm_inflight_batcher_metrics", ifb, ifb_kind, "paused_requests", static_cast<double>(s.paused_requests));
  const char* gen = "General TRT LLM metrics";
  gauge("nv_trt_llm_general_metrics", gen, "general_type", "iteration_counter", static_cast<double>(s.iterations));
  gauge("nv_trt_llm_general_metrics", gen, "general_type", "timestamp",
        static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(
                                std::chrono::system_clock::now().time_since_epoch()).count()));
  input_tokens_.write(out, "nv_llm_input_token_len", "Distribution of input token lengths", l);
  output_tokens_.write(out, "nv_llm_output_token_len", "Distribution of output token lengths", l);
  ttft_ms_.write(out, "kiln_time_to_first_token_ms",
                 "Time from a request's arrival to its first generated token, in milliseconds", l);
  itl_ms_.write(out, "kiln_inter_token_latency_ms", "Time between generated tokens of a request, in milliseconds", l);
}

}  // namespace kiln::server

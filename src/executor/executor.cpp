#include "executor/executor.h"

#include <algorithm>
#include <cstdlib>
#include <random>
#include <sstream>

#include "executor/decoding.h"

namespace kiln {

namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

void merge_response(Response& into, Response& more) {
  std::vector<float> context = std::move(into.context_logits);
  std::vector<float> generation = std::move(into.generation_logits);
  if (more.is_delta && !into.output_ids.empty()) {
    for (size_t b = 0; b < more.output_ids.size() && b < into.output_ids.size(); ++b) {
      more.output_ids[b].insert(more.output_ids[b].begin(), into.output_ids[b].begin(), into.output_ids[b].end());
      if (b < more.output_log_probs.size() && b < into.output_log_probs.size())
        more.output_log_probs[b].insert(more.output_log_probs[b].begin(), into.output_log_probs[b].begin(),
                                        into.output_log_probs[b].end());
      if (b < more.top_log_probs.size() && b < into.top_log_probs.size())
        more.top_log_probs[b].insert(more.top_log_probs[b].begin(), into.top_log_probs[b].begin(),
                                     into.top_log_probs[b].end());
    }
    generation.insert(generation.end(), more.generation_logits.begin(), more.generation_logits.end());
    more.generation_logits = std::move(generation);
  }
  if (more.context_logits.empty()) more.context_logits = std::move(context);
  into = std::move(more);
  into.is_delta = false;
}

Status ExecutorConfig::validate() const {
  KILN_RETURN_IF_ERROR(scheduler.validate());
  return kv_cache.validate();
}

Executor::Executor(ModelRunner& model, ExecutorConfig config) : model_(model), config_(std::move(config)) {}

Result<std::unique_ptr<Executor>> Executor::create(LlamaModel& model, Backend& backend, ExecutorConfig config) {
  auto runner = std::make_unique<SingleRankRunner>(model, backend);
  KILN_ASSIGN_OR_RETURN(std::unique_ptr<Executor> ex, create(*runner, std::move(config)));
  ex->owned_runner_ = std::move(runner);
  return ex;
}

Result<std::unique_ptr<Executor>> Executor::create(ModelRunner& model, ExecutorConfig config) {
  KILN_RETURN_IF_ERROR(config.validate());
  std::unique_ptr<Executor> ex(new Executor(model, std::move(config)));
  const ExecutorConfig& c = ex->config_;
  const BuildConfig& b = model.build();
  const int32_t block = b.tokens_per_block;

  // KV blocks: what a full batch can use, limited by the byte budget and max_tokens_in_paged_kv_cache.
  const uint64_t block_bytes = model.kv_bytes_per_block();  // on the rank that holds the most
  const int64_t full_batch = b.max_batch_size * b.max_beam_width * kv_blocks_for(b.max_seq_len, block);
  std::ostringstream why;
  uint64_t budget;
  if (c.kv_cache.max_bytes) {
    budget = *c.kv_cache.max_bytes;
    why << "byte budget " << human_bytes(budget);
  } else {
    // The activation workspace for a full step (taken below in any case) comes first, so the KV cache gets
    // what is left.
    KILN_RETURN_IF_ERROR(model.reserve_workspace());
    const uint64_t free = model.free_memory();
    budget = static_cast<uint64_t>(static_cast<double>(free) * c.kv_cache.free_mem_fraction);
    why << "kv_cache_free_gpu_mem_fraction " << c.kv_cache.free_mem_fraction << " of " << human_bytes(free) << " free "
        << (model.backend_name() == "cpu" ? "host" : model.backend_name()) << " memory"
        << (model.num_ranks() > 1 ? " per rank" : "") << " = " << human_bytes(budget);
  }
  // Always whole: a forward in flight must not see its buffers move when a larger one is launched.
  KILN_RETURN_IF_ERROR(model.reserve_workspace());
  int64_t blocks = static_cast<int64_t>(budget / block_bytes);
  if (c.kv_cache.max_tokens) {
    blocks = std::min(blocks, kv_blocks_for(*c.kv_cache.max_tokens, block));
    why << ", max_tokens_in_paged_kv_cache " << *c.kv_cache.max_tokens;
  } else if (blocks > full_batch) {
    blocks = full_batch;
    why << ", capped at what a full batch can use (max_batch_size x max_beam_width x max_seq_len)";
  }
  blocks = std::min<int64_t>(blocks, 1 << 24);
  if (blocks < 1)
    return resource_exhausted("the KV cache budget (" + why.str() + ") holds no block of " + human_bytes(block_bytes));
  KILN_RETURN_IF_ERROR(model.create_kv_cache(static_cast<int>(blocks)));
  ex->kv_ = std::make_unique<KvCacheManager>(static_cast<int32_t>(blocks), block, c.kv_cache.enable_reuse);
  ex->scheduler_ = std::make_unique<Scheduler>(c.scheduler, b.max_batch_size, b.max_num_tokens, *ex->kv_);

  // Sliding windows (the model's, capped by max_attention_window_size): when every layer has one, a
  // sequence keeps only the blocks its widest window can still see.
  model.set_attention_window_cap(c.kv_cache.max_attention_window.value_or(0));
  int32_t widest = 0;
  for (int64_t l = 0; l < model.config().num_layers; ++l) {
    const int32_t w = model.attention_window(l);
    widest = w == 0 ? -1 : (widest < 0 ? -1 : std::max(widest, w));
  }
  ex->drop_window_ = std::max(widest, 0);

  std::ostringstream plan;
  plan << "KV cache: " << blocks << " blocks x " << block << " tokens = " << blocks * block << " tokens, "
       << human_bytes(blocks * block_bytes) << " (" << block_bytes / block << " bytes per token; " << why.str()
       << "); a full batch needs " << full_batch << " blocks"
       << (blocks >= full_batch ? "" : ": requests wait for blocks") << "; prefix reuse "
       << (c.kv_cache.enable_reuse ? "on" : "off")
       << (ex->drop_window_ ? "; sliding window " + std::to_string(ex->drop_window_) + " tokens" : "");
  ex->kv_plan_ = plan.str();
  if (const char* o = std::getenv("KILN_OVERLAP"); o && std::string(o) == "0") ex->config_.overlap = false;
  if (const char* d = std::getenv("KILN_DEVICE_SAMPLING"); d && std::string(d) == "0") ex->config_.device_sampling = false;
  ex->seed_base_ = c.seed ? *c.seed : std::random_device{}() * 0x100000001ull ^ std::random_device{}();
  ex->stats_.max_active_requests = b.max_batch_size;
  ex->stats_.kv = ex->kv_->stats();
  ex->thread_ = std::thread([e = ex.get()] { e->loop(); });
  return ex;
}

Executor::~Executor() { shutdown(false); }

Status Executor::validate_request(const Request& r) const {
  const ModelConfig& m = model_.config();
  const BuildConfig& b = model_.build();
  if (r.lora_task_id) return unimplemented("lora_task_id: LoRA adapters are not supported yet");
  if (!r.draft_input_ids.empty()) return unimplemented("draft_input_ids: speculative decoding is not supported yet");
  if (!r.prompt_embedding_table.empty())
    return unimplemented("prompt_embedding_table: prompt tuning is not supported yet");
  const int64_t n = static_cast<int64_t>(r.input_ids.size());
  if (n == 0) return invalid_argument("input_ids is empty");
  if (n > b.max_input_len)
    return invalid_argument("input length " + std::to_string(n) + " exceeds max_input_len=" +
                            std::to_string(b.max_input_len) + " set at build");
  for (size_t i = 0; i < r.input_ids.size(); ++i)
    if (r.input_ids[i] < 0 || r.input_ids[i] >= m.vocab_size)
      return invalid_argument("input_ids[" + std::to_string(i) + "]=" + std::to_string(r.input_ids[i]) +
                              " is outside the vocabulary [0, " + std::to_string(m.vocab_size) + ")");
  if (!(r.priority >= 0.0f && r.priority <= 1.0f))
    return invalid_argument("priority=" + std::to_string(r.priority) + " must be in [0, 1]");
  if (r.queue_timeout && r.queue_timeout->count() <= 0)
    return invalid_argument("timeout=" + std::to_string(r.queue_timeout->count()) + "us must be positive");
  if (r.max_new_tokens < 1)
    return invalid_argument("request_output_len=" + std::to_string(r.max_new_tokens) + " must be at least 1");
  if (n + r.max_new_tokens > b.max_seq_len)
    return invalid_argument("input length " + std::to_string(n) + " + request_output_len " +
                            std::to_string(r.max_new_tokens) + " exceeds max_seq_len=" + std::to_string(b.max_seq_len) +
                            " set at build");
  if (n > b.max_num_tokens && !config_.scheduler.enable_chunked_context)
    return invalid_argument("input length " + std::to_string(n) + " exceeds max_num_tokens=" +
                            std::to_string(b.max_num_tokens) + " and enable_chunked_context is off");
  KILN_RETURN_IF_ERROR(r.sampling.validate(m.vocab_size, static_cast<int>(b.max_beam_width)));
  KILN_RETURN_IF_ERROR(LogitsProcessor::validate(r, m.vocab_size));
  auto in_vocab = [&](int32_t id, const char* what) -> Status {
    if (id < 0 || id >= m.vocab_size)
      return invalid_argument(std::string(what) + "=" + std::to_string(id) + " is outside the vocabulary [0, " +
                              std::to_string(m.vocab_size) + ")");
    return {};
  };
  if (r.end_ids)
    for (int32_t id : *r.end_ids) KILN_RETURN_IF_ERROR(in_vocab(id, "end_id"));
  if (r.pad_id) KILN_RETURN_IF_ERROR(in_vocab(*r.pad_id, "pad_id"));
  if (r.output.top_log_probs < 0 || r.output.top_log_probs > kMaxTopLogProbs)
    return invalid_argument("top_log_probs=" + std::to_string(r.output.top_log_probs) + " is outside [0, " +
                            std::to_string(kMaxTopLogProbs) + "]");
  if (r.sampling.beam_width > 1) {
    if (!r.stop_words.empty()) return unimplemented("stop_words_list with beam_width > 1 is not supported");
    if (r.output.top_log_probs > 0) return unimplemented("top_log_probs with beam_width > 1 is not supported");
    if (r.output.return_generation_logits)
      return unimplemented("return_generation_logits with beam_width > 1 is not supported");
  }
  // The pool must be able to hold the request alone, or it could never finish.
  const int64_t need = r.sampling.beam_width * kv_blocks_for(n + r.max_new_tokens, kv_->block_size());
  if (need > kv_->num_blocks())
    return resource_exhausted("the request needs up to " + std::to_string(need) + " KV blocks but the cache holds " +
                              std::to_string(kv_->num_blocks()) + "; shorten it or give the KV cache more memory");
  return {};
}

Result<RequestId> Executor::enqueue(Request request) {
  KILN_RETURN_IF_ERROR(validate_request(request));
  std::vector<int32_t> end_ids = request.end_ids ? *request.end_ids : std::vector<int32_t>{};
  if (!request.end_ids)
    for (int64_t id : model_.config().eos_token_ids) end_ids.push_back(static_cast<int32_t>(id));
  std::lock_guard<std::mutex> lock(mu_);
  if (!accepting_) return unavailable("the executor is shutting down");
  if (queued_ >= config_.scheduler.max_queue_size)
    return unavailable("overloaded: " + std::to_string(queued_) + " requests are queued (max_queue_size=" +
                       std::to_string(config_.scheduler.max_queue_size) + "); retry later");
  const RequestId id = next_id_++;
  const uint64_t seed = request.sampling.random_seed.value_or(splitmix64(seed_base_ + id));
  const int64_t vocab = model_.config().vocab_size;
  const bool mailbox = !request.on_response;
  auto st = std::make_unique<RequestState>(id, std::move(request), std::move(end_ids), vocab, seed);
  st->arrival = std::chrono::steady_clock::now();
  Sequence s;
  s.tokens = st->req.input_ids;
  st->seqs.push_back(std::move(s));
  st->worst_case_blocks = st->req.sampling.beam_width *
                          kv_blocks_for(st->prompt_len + st->req.max_new_tokens, model_.build().tokens_per_block);
  if (mailbox) mailboxes_[id];
  incoming_.push_back(std::move(st));
  ++queued_;
  wake_.notify_one();
  return id;
}

std::vector<Response> Executor::await_responses(RequestId id, std::optional<std::chrono::milliseconds> timeout) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = mailboxes_.find(id);
  if (it == mailboxes_.end()) {
    Response r;
    r.id = id;
    r.error = not_found("no pending responses for request " + std::to_string(id));
    r.is_final = true;
    return {r};
  }
  auto ready = [&] { return !it->second.responses.empty(); };
  if (timeout) responded_.wait_for(lock, *timeout, ready);
  else responded_.wait(lock, ready);
  std::vector<Response> out(std::make_move_iterator(it->second.responses.begin()),
                            std::make_move_iterator(it->second.responses.end()));
  it->second.responses.clear();
  if (!out.empty() && out.back().is_final) mailboxes_.erase(it);
  return out;
}

Result<Response> Executor::await_final(RequestId id) {
  Response all;
  for (;;) {
    for (Response& r : await_responses(id)) {
      if (!r.error.ok()) return r.error;
      merge_response(all, r);
    }
    if (all.is_final) return all;
  }
}

void Executor::cancel(RequestId id) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.insert(id);
  wake_.notify_one();
}

void Executor::shutdown(bool drain) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    accepting_ = false;
    stopping_ = true;
    drain_ = drain && drain_;
    wake_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

ExecutorStats Executor::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

void Executor::respond(RequestState& r, Response resp) {
  if (r.req.on_response) {
    r.req.on_response(resp);
    return;
  }
  std::lock_guard<std::mutex> lock(mu_);
  mailboxes_[r.id].responses.push_back(std::move(resp));
  responded_.notify_all();
}

// Detaches a request from the scheduler, returns its blocks and publishes the stats before its final
// response goes out, so that whoever reads that response sees the blocks back.
void Executor::retire(RequestState* r, Response final, int64_t ExecutorStats::*counter) {
  for (Sequence& s : r->seqs) kv_->release(s.kv);
  auto run = std::find(running_.begin(), running_.end(), r);
  if (run != running_.end()) {
    running_.erase(run);
    scheduler_->on_finished(*r);
  }
  auto wait = std::find(waiting_.begin(), waiting_.end(), r);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (wait != waiting_.end()) {
      waiting_.erase(wait);
      --queued_;
    }
    ++(stats_.*counter);
    stats_.kv = kv_->stats();
    stats_.active_requests = static_cast<int64_t>(running_.size());
    stats_.queued_requests = static_cast<int64_t>(waiting_.size() + incoming_.size());
  }
  respond(*r, std::move(final));
  requests_.erase(r->id);
}

void Executor::finish(RequestState* r, FinishReason forced) {
  Response resp = final_response(*r, model_.config().vocab_size, forced);
  const auto now = std::chrono::steady_clock::now();
  auto ns = [](auto d) { return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()); };
  resp.total_ns = ns(now - r->arrival);
  resp.queue_ns = r->scheduled ? ns(*r->scheduled - r->arrival) : resp.total_ns;
  retire(r, std::move(resp), forced == FinishReason::kCancelled ? &ExecutorStats::cancelled : &ExecutorStats::completed);
}

void Executor::fail(RequestState* r, const Status& error) {
  Response resp;
  resp.id = r->id;
  resp.error = error;
  resp.is_final = true;
  retire(r, std::move(resp), &ExecutorStats::failed);
}

void Executor::handle_cancels(const std::set<RequestId>& ids) {
  for (RequestId id : ids) {
    auto it = requests_.find(id);
    if (it != requests_.end()) finish(it->second.get(), FinishReason::kCancelled);
  }
}

// Requests that waited past their queue timeout without ever being scheduled fail (a paused request was
// scheduled before, so it keeps its place).
void Executor::expire_waiting() {
  const auto now = std::chrono::steady_clock::now();
  std::vector<RequestState*> expired;
  for (RequestState* r : waiting_)
    if (!r->scheduled && r->req.queue_timeout && now - r->arrival >= *r->req.queue_timeout) expired.push_back(r);
  for (RequestState* r : expired)
    fail(r, deadline_exceeded("the request waited " +
                              std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(now - r->arrival).count()) +
                              "us in the queue, past its timeout of " + std::to_string(r->req.queue_timeout->count()) +
                              "us"));
}

void Executor::loop() {
  for (;;) {
    std::set<RequestId> cancels;
    {
      std::unique_lock<std::mutex> lock(mu_);
      wake_.wait(lock, [&] { return !incoming_.empty() || !cancels_.empty() || !requests_.empty() || stopping_; });
      for (auto& st : incoming_) {
        waiting_.insert(std::upper_bound(waiting_.begin(), waiting_.end(), st.get(), admitted_before), st.get());
        requests_[st->id] = std::move(st);
      }
      incoming_.clear();
      cancels.swap(cancels_);
      if (stopping_ && !drain_)
        for (auto& [id, st] : requests_) cancels.insert(id);
      if (stopping_ && requests_.empty() && cancels.empty()) {
        lock.unlock();
        if (in_flight_) collect_in_flight();  // leaves the model with nothing queued
        return;
      }
    }
    handle_cancels(cancels);
    expire_waiting();
    if (in_flight_ && requests_.empty()) collect_in_flight();
    if (!requests_.empty()) step();
  }
}

bool Executor::step() {
  const ModelConfig& m = model_.config();
  const int64_t vocab = m.vocab_size;
  const size_t waiting_before = waiting_.size();
  ScheduleResult plan = scheduler_->schedule(running_, waiting_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued_ -= static_cast<int64_t>(waiting_before) - static_cast<int64_t>(waiting_.size());
    stats_.preemptions += plan.paused;
  }
  if (plan.chunks.empty()) {
    if (in_flight_) {
      collect_in_flight();
      return true;
    }
    if (running_.empty() && !waiting_.empty())  // cannot happen with validated requests; never spin on it
      fail(waiting_.front(), internal_error("the scheduler could not place this request"));
    return false;
  }

  // How this step's tokens get picked, and whether it may be launched before the step in flight is collected:
  // only when every row is picked on the device without needing the last token's value.
  const bool device_sampling = config_.device_sampling && model_.samples_on_device();
  auto rows_of = [&](bool& device, bool& ahead) {
    device = true;
    ahead = config_.overlap && model_.accepts_previous_tokens();
    for (const ScheduledChunk& c : plan.chunks) {
      const RequestState& r = *c.request;
      const Sequence& s = r.seqs[c.seq];
      const bool context_logits = r.req.output.return_context_logits && s.computed < r.prompt_len;
      const bool samples = s.computed + c.num_tokens == static_cast<int32_t>(s.tokens.size()) + s.pending;
      if (context_logits || (samples && token_pick(r, device_sampling) == TokenPick::kHost)) device = false;
      if (samples && s.pending > 0 && !picks_without_last_token(r)) ahead = false;
    }
    ahead = ahead && device;
  };
  bool device = false, ahead = false;
  rows_of(device, ahead);
  if (in_flight_ && !ahead) {
    // Collect first; requests it finishes leave the plan (their blocks are back already).
    std::vector<RequestId> ids;
    for (const ScheduledChunk& c : plan.chunks) ids.push_back(c.request->id);
    collect_in_flight();
    std::vector<ScheduledChunk> kept;
    for (size_t i = 0; i < plan.chunks.size(); ++i)
      if (requests_.count(ids[i])) kept.push_back(plan.chunks[i]);
    plan.chunks = std::move(kept);
    if (plan.chunks.empty()) return true;
    rows_of(device, ahead);
  }
  if (!plan.block_copies.empty()) model_.copy_kv_blocks(plan.block_copies);
  const auto started = std::chrono::steady_clock::now();
  for (const ScheduledChunk& c : plan.chunks)
    if (!c.request->scheduled) c.request->scheduled = started;

  // Flatten the chunks into one forward. Logit rows: each sequence that reaches its last token, plus
  // prompt positions whose context logits were asked for. A token still pending is the last one of its
  // sequence and comes from the previous forward's pick on the device.
  ForwardBatch fb;
  fb.attention.block_size = kv_->block_size();
  struct RowUse {
    size_t chunk;
    int32_t position;
    bool sample;
  };
  std::vector<RowUse> rows;
  int64_t context_tokens = 0, context_requests = 0;
  for (size_t ci = 0; ci < plan.chunks.size(); ++ci) {
    const ScheduledChunk& c = plan.chunks[ci];
    RequestState& r = *c.request;
    Sequence& s = r.seqs[c.seq];
    const int32_t first = static_cast<int32_t>(fb.token_ids.size());
    const int32_t known = static_cast<int32_t>(s.tokens.size());
    const int32_t end = s.computed + c.num_tokens;
    fb.token_ids.insert(fb.token_ids.end(), s.tokens.begin() + s.computed, s.tokens.begin() + std::min(end, known));
    if (end > known) {  // (only a pick of the forward in flight is pending here: one token)
      fb.previous_tokens.emplace_back(static_cast<int32_t>(fb.token_ids.size()), s.pending_row);
      fb.token_ids.push_back(0);
    }
    fb.attention.seqs.push_back({first, c.num_tokens, end, s.kv.blocks});
    fb.rope_seq_len.push_back(r.prompt_len);
    if (s.computed < r.prompt_len) {
      context_tokens += std::min(end, r.prompt_len) - s.computed;
      ++context_requests;
    }
    if (r.req.output.return_context_logits)
      for (int32_t p = std::max(s.computed, r.context_logits_rows); p < std::min(end, r.prompt_len); ++p) {
        fb.logit_rows.push_back(first + p - s.computed);
        rows.push_back({ci, p, false});
      }
    if (end == known + s.pending) {
      const int32_t last = first + c.num_tokens - 1;
      if (!fb.logit_rows.empty() && fb.logit_rows.back() == last && rows.back().chunk == ci) {
        rows.back().sample = true;  // the last prompt position: a context logit and the first sample
      } else {
        fb.logit_rows.push_back(last);
        rows.push_back({ci, -1, true});
      }
    }
  }
  fb.attention.num_tokens = static_cast<int32_t>(fb.token_ids.size());

  // The output: ids when every row is picked on the device (argmax alone when all are plain greedy picks;
  // otherwise the backend's sampler), the logits otherwise.
  ForwardOutput output = ForwardOutput::kLogits;
  SamplingBatch sampling;
  if (device && !rows.empty()) {
    output = ForwardOutput::kArgmax;
    for (const RowUse& u : rows)
      if (token_pick(*plan.chunks[u.chunk].request, device_sampling) != TokenPick::kArgmax) output = ForwardOutput::kSample;
    if (output == ForwardOutput::kSample)
      for (const RowUse& u : rows) {
        const RequestState& r = *plan.chunks[u.chunk].request;
        sampling.rows.push_back(sampling_row(r, r.seqs[0].pending, sampling.penalties));
        sampling.log_probs = sampling.log_probs || r.req.output.return_log_probs;
      }
  }
  Status st = model_.launch(fb, output, output == ForwardOutput::kSample ? &sampling : nullptr);
  if (!st.ok()) {
    std::vector<RequestState*> hit;
    for (const ScheduledChunk& c : plan.chunks)
      if (std::find(hit.begin(), hit.end(), c.request) == hit.end()) hit.push_back(c.request);
    for (RequestState* r : hit) fail(r, st.with_context("forward"));
    return true;
  }

  // Launched: tokens now queued into the cache; picks made on the device become pending.
  InFlight launched;
  for (const ScheduledChunk& c : plan.chunks) {
    Sequence& s = c.request->seqs[c.seq];
    s.computed += c.num_tokens;
    launched.chunks.push_back({c.request->id, c.seq, s.computed, c.request->preemptions});
  }
  if (output != ForwardOutput::kLogits) {
    for (size_t i = 0; i < rows.size(); ++i) {
      RequestState* r = plan.chunks[rows[i].chunk].request;
      ++r->seqs[0].pending;
      r->seqs[0].pending_row = static_cast<int32_t>(i);
      launched.rows.push_back(r->id);
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.iterations;
    std::vector<const RequestState*> scheduled;
    for (const ScheduledChunk& c : plan.chunks)
      if (std::find(scheduled.begin(), scheduled.end(), c.request) == scheduled.end()) scheduled.push_back(c.request);
    stats_.scheduled_requests = static_cast<int64_t>(scheduled.size());
    stats_.context_requests = context_requests;
    stats_.generation_requests = stats_.scheduled_requests - context_requests;
    stats_.context_tokens = context_tokens;
    stats_.prompt_tokens += context_tokens;
  }
  if (output != ForwardOutput::kLogits) {
    // The step before this one (if still in flight) is collected now, while this one runs; this one is
    // collected by the next step.
    if (in_flight_) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++stats_.launched_ahead;
      }
      collect_in_flight();
    }
    in_flight_ = std::move(launched);
    return true;
  }

  // Host picks: the logits are here now.
  if (Status cs = model_.collect(out_); !cs.ok()) {
    for (const InFlight::Chunk& c : launched.chunks)
      if (auto it = requests_.find(c.id); it != requests_.end()) fail(it->second.get(), cs.with_context("forward"));
    return true;
  }
  for (const ScheduledChunk& c : plan.chunks) {
    Sequence& s = c.request->seqs[c.seq];
    kv_->commit(s.kv, s.tokens, s.computed);
    if (drop_window_ > 0) kv_->drop_outside_window(s.kv, s.computed, drop_window_);
  }
  int64_t generated = 0;
  std::vector<std::pair<RequestState*, std::vector<const float*>>> to_decode;  // request -> sample rows per seq
  for (size_t i = 0; i < rows.size(); ++i) {
    const float* row = out_.logits.data() + i * vocab;
    RequestState* r = plan.chunks[rows[i].chunk].request;
    if (rows[i].position >= 0) {
      r->context_logits.insert(r->context_logits.end(), row, row + vocab);
      r->context_logits_rows = rows[i].position + 1;
    }
    if (!rows[i].sample) continue;
    auto it = std::find_if(to_decode.begin(), to_decode.end(), [&](auto& e) { return e.first == r; });
    if (it == to_decode.end()) it = to_decode.insert(to_decode.end(), {r, {}});
    it->second.push_back(row);
  }

  for (auto& [r, seq_rows] : to_decode) {
    if (r->is_beam_search()) {
      std::vector<float> beam_rows(seq_rows.size() * vocab);
      for (size_t b = 0; b < seq_rows.size(); ++b) std::copy_n(seq_rows[b], vocab, beam_rows.data() + b * vocab);
      beam_step(*r, beam_rows.data(), vocab, *kv_, scratch_);
      generated += static_cast<int64_t>(seq_rows.size());
    } else {
      sample_next_token(*r, seq_rows[0], vocab, scratch_);
      ++generated;
    }
    if (request_done(*r)) finish(r);
    else if (r->req.streaming) respond(*r, stream_chunk(*r, vocab));
  }
  publish_stats(generated);
  return true;
}

void Executor::collect_in_flight() {
  InFlight done = std::move(*in_flight_);
  in_flight_.reset();
  auto alive = [&](RequestId id) -> RequestState* {
    auto it = requests_.find(id);
    return it == requests_.end() ? nullptr : it->second.get();
  };
  Status st = model_.collect(out_);
  if (!st.ok()) {
    for (const InFlight::Chunk& c : done.chunks)
      if (RequestState* r = alive(c.id)) fail(r, st.with_context("forward"));
    return;
  }
  // Bookkeeping first: blocks for reuse (their tokens are all known now), windows.
  for (const InFlight::Chunk& c : done.chunks) {
    RequestState* r = alive(c.id);
    if (!r || r->preemptions != c.preemptions || c.seq >= static_cast<int>(r->seqs.size())) continue;
    Sequence& s = r->seqs[c.seq];
    kv_->commit(s.kv, s.tokens, c.computed);
    if (drop_window_ > 0) kv_->drop_outside_window(s.kv, c.computed, drop_window_);
  }
  const int64_t vocab = model_.config().vocab_size;
  int64_t generated = 0;
  for (size_t i = 0; i < done.rows.size(); ++i) {
    RequestState* r = alive(done.rows[i]);
    if (!r) continue;  // cancelled, or finished by an earlier pick: this one is past its end
    Sequence& s = r->seqs[0];
    --s.pending;
    append_device_token(*r, out_.ids[i], out_.log_probs.empty() ? 0.0f : out_.log_probs[i]);
    ++generated;
    if (request_done(*r)) {
      s.pending = 0;  // picks after the last one are dropped
      finish(r);
    } else if (r->req.streaming) {
      respond(*r, stream_chunk(*r, vocab));
    }
  }
  publish_stats(generated);
}

void Executor::publish_stats(int64_t generated) {
  std::lock_guard<std::mutex> lock(mu_);
  stats_.active_requests = static_cast<int64_t>(running_.size());
  stats_.queued_requests = static_cast<int64_t>(waiting_.size() + incoming_.size());
  stats_.paused_requests = std::count_if(waiting_.begin(), waiting_.end(), [](const RequestState* r) {
    return r->preemptions > 0;
  });
  stats_.generated_tokens += generated;
  stats_.kv = kv_->stats();
}

}  // namespace kiln

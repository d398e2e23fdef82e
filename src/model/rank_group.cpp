#include "model/rank_group.h"

#include <algorithm>
#include <cstdint>
#include <map>

#include "backend/backend_factory.h"

namespace kiln {

Result<std::unique_ptr<RankGroup>> RankGroup::load(const std::string& dir) {
  KILN_ASSIGN_OR_RETURN(Engine first, load_engine(dir, 0));
  std::unique_ptr<RankGroup> g(new RankGroup());
  g->config_ = first.model;
  g->build_ = first.build;
  const int tp = first.build.tp_size, pp = first.build.pp_size, world = tp * pp;
  g->micro_batches_ = 2 * pp;
  for (int r = 0; r < world; ++r) {
    auto rank = std::make_unique<Rank>();
    if (r == 0) {
      rank->engine = std::move(first);
    } else {
      KILN_ASSIGN_OR_RETURN(rank->engine, load_engine(dir, r));
    }
    g->ranks_.push_back(std::move(rank));
  }
  for (auto& r : g->ranks_) r->thread = std::thread([self = g.get(), rank = r.get()] { self->serve(*rank); });
  // Backends on their ranks' threads (a GPU's context is per thread), then the communicators, then the models.
  KILN_RETURN_IF_ERROR(g->on_every_rank([&](Rank& r) -> Status {
    Result<std::unique_ptr<Backend>> b = make_backend(r.engine.build.backend, r.engine.layout.rank(), world);
    if (!b.ok())
      return b.status().with_context(r.engine.layout.to_string() + " (a rank per GPU: tp_size x pp_size = " +
                                     std::to_string(world) + " GPUs)");
    r.backend = std::move(*b);
    return {};
  }));
  std::vector<Backend*> backends;
  for (auto& r : g->ranks_) backends.push_back(r->backend.get());
  KILN_ASSIGN_OR_RETURN(g->comms_, make_communicators(backends, tp, pp));
  KILN_RETURN_IF_ERROR(g->on_every_rank([&](Rank& r) -> Status {
    KILN_ASSIGN_OR_RETURN(r.model, LlamaModel::load(r.engine, *r.backend, g->comms_.ranks[r.engine.layout.rank()]));
    return {};
  }));
  g->samples_on_device_ = pp == 1 && g->ranks_[0]->backend->samples_on_device();
  return g;
}

RankGroup::~RankGroup() {
  // Each rank's model, KV cache and backend go on its own thread (a GPU's context), the communicators in between.
  if (ranks_.empty() || !ranks_.back()->thread.joinable()) return;  // load failed before the threads started
  (void)on_every_rank([](Rank& r) -> Status {
    r.kv.reset();
    r.model.reset();
    return {};
  });
  comms_ = {};
  (void)on_every_rank([](Rank& r) -> Status {
    r.backend.reset();
    return {};
  });
  for (auto& r : ranks_) {
    {
      std::lock_guard<std::mutex> lock(r->mu);
      r->stop = true;
    }
    r->cv.notify_one();
  }
  for (auto& r : ranks_)
    if (r->thread.joinable()) r->thread.join();
}

void RankGroup::serve(Rank& r) {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(r.mu);
      r.cv.wait(lock, [&] { return r.stop || !r.tasks.empty(); });
      if (r.tasks.empty()) return;  // stopping, nothing left
      task = std::move(r.tasks.front());
      r.tasks.pop_front();
    }
    task();
  }
}

void RankGroup::post(Rank& r, std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(r.mu);
    r.tasks.push_back(std::move(task));
  }
  r.cv.notify_one();
}

Status RankGroup::on_every_rank(const std::function<Status(Rank&)>& fn) {
  std::mutex mu;
  std::condition_variable cv;
  int remaining = static_cast<int>(ranks_.size());
  std::vector<Status> status(ranks_.size());
  for (size_t i = 0; i < ranks_.size(); ++i)
    post(*ranks_[i], [&, i] {
      Status s = fn(*ranks_[i]);
      std::lock_guard<std::mutex> lock(mu);
      status[i] = std::move(s);
      if (--remaining == 0) cv.notify_one();
    });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return remaining == 0; });
  for (Status& s : status)
    if (!s.ok()) return s;
  return {};
}

uint64_t RankGroup::kv_bytes_per_block() const {
  uint64_t most = 0;
  for (const auto& r : ranks_) most = std::max<uint64_t>(most, r->model->kv_cache_spec(1).bytes_per_block());
  return most;
}

uint64_t RankGroup::free_memory() {
  std::vector<uint64_t> free(ranks_.size());
  (void)on_every_rank([&](Rank& r) -> Status {
    free[r.engine.layout.rank()] = r.backend->free_memory();
    return {};
  });
  // Ranks whose backends share a memory (the CPU's ranks the host's, ranks on one GPU its memory) split it.
  std::map<int, uint64_t> sharing;
  for (const auto& r : ranks_) ++sharing[r->backend->memory_id()];
  uint64_t least = UINT64_MAX;
  for (size_t i = 0; i < ranks_.size(); ++i) least = std::min(least, free[i] / sharing[ranks_[i]->backend->memory_id()]);
  return least;
}

Status RankGroup::reserve_workspace() {
  return on_every_rank([](Rank& r) { return r.model->reserve_workspace(); });
}

Status RankGroup::create_kv_cache(int num_blocks) {
  return on_every_rank([&](Rank& r) -> Status {
    KILN_ASSIGN_OR_RETURN(r.kv, r.backend->create_kv_storage(r.model->kv_cache_spec(num_blocks)));
    return {};
  });
}

void RankGroup::copy_kv_blocks(std::span<const std::pair<int32_t, int32_t>> src_dst) {
  pending_copies_.insert(pending_copies_.end(), src_dst.begin(), src_dst.end());
}

void RankGroup::set_attention_window_cap(int32_t tokens) {
  for (auto& r : ranks_) r->model->set_attention_window_cap(tokens);
}

int32_t RankGroup::attention_window(int64_t layer) const {
  for (const auto& r : ranks_) {
    const RankLayout& l = r->engine.layout;
    if (layer >= l.first_layer && layer < l.first_layer + l.num_layers)
      return r->model->attention_window(static_cast<size_t>(layer - l.first_layer));
  }
  return 0;
}

Status RankGroup::launch(const ForwardBatch& batch, ForwardOutput output, const SamplingBatch* sampling) {
  if (!ranks_[0]->kv) return failed_precondition("forward before create_kv_cache");
  if (steps_.size() >= 2 || (!steps_.empty() && steps_.back()->output == ForwardOutput::kLogits))
    return failed_precondition("forward: launched with " + std::to_string(steps_.size()) +
                               " forwards queued (at most two, and a logits forward must be collected first)");
  if (output == ForwardOutput::kSample && !samples_on_device_)
    return failed_precondition("forward: this rank group samples on the host (kLogits)");
  if (!batch.previous_tokens.empty() && !accepts_previous_tokens())
    return invalid_argument("forward: previous tokens with pipeline stages");
  // Checked here, once: a rank that refused the batch alone would leave the others waiting in a collective.
  KILN_RETURN_IF_ERROR(ranks_[0]->model->validate(batch, ranks_[0]->kv->spec));
  const int64_t last_rows = steps_.empty() ? last_rows_ : steps_.back()->rows;
  const bool last_ids = steps_.empty() ? last_ids_ : steps_.back()->output != ForwardOutput::kLogits;
  for (const auto& [t, row] : batch.previous_tokens)
    if (t < 0 || t >= static_cast<int64_t>(batch.token_ids.size()) || row < 0 || row >= last_rows || !last_ids)
      return invalid_argument("forward: a previous token refers to no id of the last forward");
  if (output == ForwardOutput::kSample && (!sampling || sampling->rows.size() != batch.logit_rows.size()))
    return invalid_argument("forward: sampling needs one SamplingRow per logit row");
  auto step = std::make_shared<Step>();
  step->output = output;
  step->rows = static_cast<int64_t>(batch.logit_rows.size());
  if (build_.pp_size > 1) {
    step->parts = split_micro_batches(batch, micro_batches_);
  } else {
    step->parts.push_back({batch, {}});
    for (int32_t j = 0; j < static_cast<int32_t>(batch.logit_rows.size()); ++j) step->parts[0].rows.push_back(j);
  }
  // The ranks read the batch after launch returns: it must not point into the caller's memory.
  size_t num_seqs = 0;
  for (const MicroBatch& p : step->parts) num_seqs += p.batch.attention.seqs.size();
  step->block_tables.reserve(num_seqs);
  for (MicroBatch& p : step->parts)
    for (SequenceView& s : p.batch.attention.seqs) {
      step->block_tables.emplace_back(s.block_table.begin(), s.block_table.end());
      s.block_table = step->block_tables.back();
    }
  if (sampling) {
    step->sampling_copy = *sampling;
    step->sampling = &step->sampling_copy;
  }
  step->copies = std::move(pending_copies_);
  pending_copies_.clear();
  step->results.resize(step->parts.size());
  step->status.resize(ranks_.size());
  step->remaining = static_cast<int>(ranks_.size());
  for (size_t i = 0; i < ranks_.size(); ++i)
    post(*ranks_[i], [this, i, step] { run_step(*ranks_[i], static_cast<int>(i), step); });
  steps_.push_back(std::move(step));
  return {};
}

void RankGroup::finish(Step& step, int index, Status st) {
  std::lock_guard<std::mutex> lock(step.mu);
  step.status[index] = std::move(st);
  if (--step.remaining == 0) step.cv.notify_one();
}

void RankGroup::collect_oldest(Rank& r, int index) {
  std::shared_ptr<Step> step = std::move(r.in_flight.front());
  r.in_flight.pop_front();
  ForwardResult res;
  Status st = r.model->collect(res);
  if (st.ok() && index == output_rank()) step->results[0] = std::move(res);
  finish(*step, index, std::move(st));
}

void RankGroup::run_step(Rank& r, int index, const std::shared_ptr<Step>& step_ptr) {
  Step& step = *step_ptr;
  if (!step.copies.empty()) r.backend->copy_kv_blocks(*r.kv, step.copies);
  if (step.parts.size() == 1 && step.output != ForwardOutput::kLogits) {
    // Ids stay on the device: the forward stays queued on this rank until the next one is (then it is collected,
    // so that a GPU has the next step's work before this thread waits) or RankGroup::collect asks for it.
    Status st = r.model->launch(step.parts[0].batch, *r.kv, step.output, step.sampling);
    if (!st.ok()) return finish(step, index, std::move(st));
    r.in_flight.push_back(step_ptr);
    while (r.in_flight.size() > 1) collect_oldest(r, index);
    return;
  }
  while (!r.in_flight.empty()) collect_oldest(r, index);
  Status st;
  for (size_t m = 0; m < step.parts.size() && st.ok(); ++m) {
    st = r.model->launch(step.parts[m].batch, *r.kv, step.output, step.sampling);
    ForwardResult res;
    if (st.ok()) st = r.model->collect(res);
    if (st.ok() && index == output_rank()) step.results[m] = std::move(res);
  }
  finish(step, index, std::move(st));
}

Status RankGroup::collect(ForwardResult& out) {
  if (steps_.empty()) return failed_precondition("forward: collect without a queued forward");
  std::shared_ptr<Step> step = std::move(steps_.front());
  steps_.pop_front();
  last_rows_ = step->rows;  // what the next launch's previous tokens may refer to, once nothing is queued
  last_ids_ = step->output != ForwardOutput::kLogits;
  // Ranks that still hold it in flight (no later step was launched behind it) collect it now.
  for (size_t i = 0; i < ranks_.size(); ++i)
    post(*ranks_[i], [this, i, step] {
      Rank& r = *ranks_[i];
      while (std::find(r.in_flight.begin(), r.in_flight.end(), step) != r.in_flight.end())
        collect_oldest(r, static_cast<int>(i));
    });
  {
    std::unique_lock<std::mutex> lock(step->mu);
    step->cv.wait(lock, [&] { return step->remaining == 0; });
  }
  for (size_t i = 0; i < step->status.size(); ++i)
    if (!step->status[i].ok())
      return step->status[i].with_context(ranks_[i]->engine.layout.to_string());
  if (step->parts.size() == 1) {
    out = std::move(step->results[0]);
    return {};
  }
  // Put each micro-batch's rows back where they are in the whole batch.
  const size_t R = static_cast<size_t>(step->rows), V = static_cast<size_t>(config_.vocab_size);
  out.ids.clear();
  out.log_probs.clear();
  out.logits.clear();
  const bool ids = step->output != ForwardOutput::kLogits;
  const bool log_probs = !step->results.empty() && !step->results[0].log_probs.empty();
  if (ids) out.ids.resize(R);
  else out.logits.resize(R * V);
  if (log_probs) out.log_probs.resize(R);
  for (size_t m = 0; m < step->parts.size(); ++m) {
    const ForwardResult& part = step->results[m];
    const std::vector<int32_t>& rows = step->parts[m].rows;
    for (size_t j = 0; j < rows.size(); ++j) {
      if (ids) out.ids[rows[j]] = part.ids[j];
      else std::copy(part.logits.begin() + j * V, part.logits.begin() + (j + 1) * V, out.logits.begin() + rows[j] * V);
      if (log_probs) out.log_probs[rows[j]] = part.log_probs[j];
    }
  }
  return {};
}

}  // namespace kiln

#include "executor/scheduler.h"

#include <algorithm>

namespace kiln {

Status SchedulerConfig::validate() const {
  if (max_queue_size <= 0) return invalid_argument("max_queue_size=" + std::to_string(max_queue_size) + " must be positive");
  return {};
}

namespace {

bool by_arrival(const RequestState* a, const RequestState* b) { return a->id < b->id; }

}  // namespace

void Scheduler::preempt(RequestState& r) {
  for (Sequence& s : r.seqs) kv_.release(s.kv);
  if (r.is_beam_search() && !r.in_context_phase()) {
    // Beams restart from the prompt: the search is deterministic, so it finds the same beams again.
    Sequence fresh;
    fresh.tokens.assign(r.req.input_ids.begin(), r.req.input_ids.end());
    r.seqs.clear();
    r.seqs.push_back(std::move(fresh));
    r.beams.reset();
  }
  for (Sequence& s : r.seqs) s.computed = 0;
  ++r.preemptions;
}

void Scheduler::on_finished(const RequestState& r) {
  if (config_.policy == CapacityPolicy::kGuaranteedNoEvict) reserved_blocks_ -= r.worst_case_blocks;
}

// Schedules the sequence's next tokens within the budget; false only when the KV pool is short.
bool Scheduler::try_schedule_sequence(RequestState& r, int si, int32_t& budget, ScheduleResult& out) {
  Sequence& s = r.seqs[si];
  const int64_t remaining = static_cast<int64_t>(s.tokens.size()) + s.pending - s.computed;
  if (remaining <= 0 || budget <= 0) return true;
  // A pick still on the device that ends the request by length: nothing to run after it.
  if (s.pending > 0 && r.length() - r.prompt_len >= r.req.max_new_tokens) return true;
  if (remaining > budget && !config_.enable_chunked_context) return true;  // waits for a roomier iteration
  const int32_t n = static_cast<int32_t>(std::min<int64_t>(remaining, budget));
  if (!kv_.reserve(s.kv, s.computed + n)) return false;
  if (!kv_.make_writable(s.kv, s.computed, s.computed + n, &out.block_copies)) return false;
  out.chunks.push_back({&r, si, n});
  budget -= n;
  return true;
}

bool Scheduler::admit(RequestState& r) {
  if (config_.policy == CapacityPolicy::kGuaranteedNoEvict && reserved_blocks_ + r.worst_case_blocks > kv_.num_blocks())
    return false;
  return true;
}

ScheduleResult Scheduler::schedule(std::vector<RequestState*>& running, std::deque<RequestState*>& waiting) {
  ScheduleResult out;
  int32_t budget = static_cast<int32_t>(max_num_tokens_);
  auto drop_chunks_of = [&](RequestState* r) {
    for (auto it = out.chunks.begin(); it != out.chunks.end();) {
      if (it->request == r) {
        budget += it->num_tokens;
        it = out.chunks.erase(it);
      } else {
        ++it;
      }
    }
  };
  auto pause = [&](RequestState* victim) {
    drop_chunks_of(victim);
    preempt(*victim);
    running.erase(std::find(running.begin(), running.end(), victim));
    waiting.insert(std::upper_bound(waiting.begin(), waiting.end(), victim, admitted_before), victim);
    ++out.paused;
  };

  // 1. Running requests, oldest first.
  for (size_t i = 0; i < running.size() && budget > 0;) {
    RequestState* r = running[i];
    // Every live beam advances in the same step, or none does.
    if (r->seqs.size() > 1 && budget < static_cast<int32_t>(r->seqs.size())) {
      ++i;
      continue;
    }
    bool paused_self = false;
    for (int si = 0; si < static_cast<int>(r->seqs.size()) && !paused_self; ++si) {
      while (!try_schedule_sequence(*r, si, budget, out)) {
        // Out of blocks. guaranteed_no_evict reserved the worst case, so this is max_utilization:
        // pause the request admitted last by the waiting order (lowest priority, latest arrival) and retry.
        RequestState* victim = *std::max_element(running.begin(), running.end(), admitted_before);
        paused_self = victim == r;
        pause(victim);
        if (paused_self) break;
      }
    }
    if (!paused_self) ++i;
  }

  // 2. Waiting requests in priority, then arrival order: the first that does not fit stops admission.
  while (!waiting.empty() && budget > 0 && static_cast<int64_t>(running.size()) < max_batch_size_) {
    RequestState* r = waiting.front();
    if (!admit(*r)) break;
    Sequence& s = r->seqs[0];
    if (r->seqs.size() == 1 && s.computed == 0 && s.kv.blocks.empty()) {
      // Context logits need every prompt position computed, so such requests skip the prefix cache.
      const bool reuse = !r->req.output.return_context_logits;
      s.computed = kv_.begin(s.tokens, reuse, s.kv);
    }
    const size_t before = out.chunks.size();
    const bool kv_ok = try_schedule_sequence(*r, 0, budget, out);
    if (!kv_ok || out.chunks.size() == before) {
      kv_.release(s.kv);  // not this time; it stays at the head of the queue
      s.computed = 0;
      break;
    }
    waiting.pop_front();
    running.insert(std::upper_bound(running.begin(), running.end(), r, by_arrival), r);
    if (config_.policy == CapacityPolicy::kGuaranteedNoEvict) reserved_blocks_ += r->worst_case_blocks;
  }
  return out;
}

}  // namespace kiln

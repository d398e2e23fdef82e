#include "server/text_generation.h"

#include <chrono>
#include <memory>
#include <mutex>

#include "server/model.h"
#include "server/text_stream.h"

namespace kiln::server {

namespace {

using Clock = std::chrono::steady_clock;

struct Choice {
  std::unique_ptr<TextStream> stream;
  int32_t tokens = 0;  // generated ids taken so far
  bool done = false;   // its final chunk went out (a stop string ends it before the executor's final chunk)
};

// One call in flight, shared with the tensorrt_llm model's callbacks.
struct TextCall {
  std::mutex mu;
  std::function<void(bool ok, uint64_t ns)> record;  // the text model's statistics
  TextChunkFn on_chunk;
  bool details = false;
  std::vector<Choice> choices;
  size_t remaining = 0;
  bool ok = true;  // no choice failed or was cancelled (the statistics)
  Clock::time_point start = Clock::now();
  // Cancels rows once generate() has returned (until then the wishes wait here); dropped when every choice
  // ended (it holds the tensorrt_llm call's state, which holds this call).
  TrtllmModel::RowCancelFn cancel;
  std::vector<size_t> early_cancels;
  bool early_cancel_all = false;
};

TextFinish finish_of(FinishReason r) {
  switch (r) {
    case FinishReason::kLength:
      return TextFinish::kLength;
    case FinishReason::kCancelled:
      return TextFinish::kCancelled;
    default:
      return TextFinish::kStop;  // an end id, or stop words given as tokens
  }
}

// A chunk of choice `row` from the tensorrt_llm model (on its reply worker).
void on_response(const std::shared_ptr<TextCall>& st, size_t row, const Response& r) {
  std::optional<TextChunk> out;
  TrtllmModel::RowCancelFn cancel;
  std::optional<size_t> cancel_row;
  bool cancel_all = false, ended = false;
  {
    std::lock_guard<std::mutex> lock(st->mu);
    Choice& c = st->choices[row];
    if (c.done) return;  // ended by a stop string: the executor's (cancelled) final chunk is no news
    TextChunk chunk;
    chunk.choice = row;
    auto fail = [&](Status s) {
      chunk.error = std::move(s);
      chunk.final = true;
      chunk.text.clear();
      chunk.tokens.clear();
      st->ok = false;
      cancel_all = true;
    };
    if (!r.error.ok()) {
      fail(r.error);
    } else {
      static const std::vector<int32_t> kNone;
      const std::vector<int32_t>& ids = r.output_ids.empty() ? kNone : r.output_ids[0];
      bool stopped = false;
      for (size_t i = 0; i < ids.size() && !stopped; ++i) {
        const int32_t id = ids[i];
        if (st->details) {
          GeneratedToken t;
          t.id = id;
          t.text = c.stream->token_text(id);
          if (!r.output_log_probs.empty() && i < r.output_log_probs[0].size()) t.log_prob = r.output_log_probs[0][i];
          if (!r.top_log_probs.empty() && i < r.top_log_probs[0].size())
            for (const TokenLogProb& a : r.top_log_probs[0][i])
              t.top.push_back({a.token, c.stream->token_text(a.token), a.log_prob});
          chunk.tokens.push_back(std::move(t));
        }
        auto o = c.stream->add(std::span<const int32_t>(&ids[i], 1));
        if (!o.ok()) {
          fail(o.status().with_context("decoding the output"));
          break;
        }
        chunk.text += o->text;
        ++c.tokens;
        stopped = o->stopped;
      }
      if (chunk.error.ok()) {
        if (stopped) {
          chunk.final = true;
          chunk.finish = TextFinish::kStop;
          chunk.completion_tokens = c.tokens;
          if (!r.is_final) cancel_row = row;
        } else if (r.is_final) {
          auto rest = c.stream->finish();
          if (!rest.ok()) {
            fail(rest.status().with_context("decoding the output"));
          } else {
            chunk.text += *rest;
            chunk.final = true;
            const FinishReason why = r.finish_reasons.empty() ? FinishReason::kLength : r.finish_reasons[0];
            chunk.finish = finish_of(why);
            if (why == FinishReason::kCancelled) st->ok = false;
            chunk.completion_tokens = c.tokens + (why == FinishReason::kEndId ? 1 : 0);
          }
        }
      }
    }
    if (chunk.final) {
      c.done = true;
      ended = --st->remaining == 0;
    }
    if (cancel_all || cancel_row) cancel = st->cancel;
    if (!cancel && (cancel_all || cancel_row)) {
      if (cancel_all) st->early_cancel_all = true;
      else st->early_cancels.push_back(*cancel_row);
    }
    if (ended) st->cancel = nullptr;
    if (chunk.final || !chunk.text.empty() || !chunk.tokens.empty()) out = std::move(chunk);
  }
  if (cancel) cancel(cancel_all ? std::nullopt : cancel_row);
  if (ended && st->record)
    st->record(st->ok, static_cast<uint64_t>(
                                 std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - st->start).count()));
  if (out) st->on_chunk(std::move(*out));
}

}  // namespace

Result<CancelFn> generate_text(const TextModelInfo& model, TextGenerationCall call, TextChunkFn on_chunk) {
  if (!model.target || !model.tok) return internal_error("text model '" + model.name + "' is not resolved");
  if (call.choices.empty()) return invalid_argument("nothing to generate");
  auto st = std::make_shared<TextCall>();
  st->record = model.record;
  st->on_chunk = std::move(on_chunk);
  st->details = call.token_details;
  st->remaining = call.choices.size();
  for (const Request& r : call.choices) {
    if (r.sampling.beam_width != 1) return invalid_argument("typed text generation runs one beam per choice");
    Choice c;
    c.stream = std::make_unique<TextStream>(model.tok, r.input_ids, model.skip_special_tokens, call.stop);
    st->choices.push_back(std::move(c));
  }
  TrtllmModel::GenerateOptions options{call.client_id, call.priority, call.timeout_us};
  auto started = model.target->generate(std::move(call.choices), options, [st](size_t row, const Response& r) {
    on_response(st, row, r);
  });
  if (!started.ok()) {
    if (st->record) st->record(false, 0);
    return started.status();
  }
  std::vector<size_t> early;
  bool early_all = false;
  {
    std::lock_guard<std::mutex> lock(st->mu);
    if (st->remaining > 0) st->cancel = *started;  // else every choice ended already (stop strings)
    early.swap(st->early_cancels);
    early_all = st->early_cancel_all;
  }
  if (early_all) (*started)(std::nullopt);
  for (size_t row : early) (*started)(row);
  return CancelFn([st] {
    TrtllmModel::RowCancelFn cancel;
    {
      std::lock_guard<std::mutex> lock(st->mu);
      cancel = st->cancel;
    }
    if (cancel) cancel(std::nullopt);  // the choices end with "cancelled"
  });
}

}  // namespace kiln::server

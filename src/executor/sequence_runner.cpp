#include "executor/sequence_runner.h"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace kiln {

float log_softmax_at(const float* logits, int64_t n, int64_t index) {
  float mx = *std::max_element(logits, logits + n);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(logits[i] - mx);
  return static_cast<float>(static_cast<double>(logits[index]) - mx - std::log(sum));
}

int32_t argmax(const float* logits, int64_t n) {
  return static_cast<int32_t>(std::max_element(logits, logits + n) - logits);
}

Result<std::unique_ptr<SequenceRunner>> SequenceRunner::create(LlamaModel& model, Backend& backend) {
  std::unique_ptr<SequenceRunner> r(new SequenceRunner(model));
  const int block = model.build().tokens_per_block;
  const int blocks = static_cast<int>((model.build().max_seq_len + block - 1) / block);
  KILN_ASSIGN_OR_RETURN(r->kv_, backend.create_kv_storage(model.kv_cache_spec(blocks)));
  r->block_table_.resize(blocks);
  std::iota(r->block_table_.begin(), r->block_table_.end(), 0);
  return r;
}

Result<GreedyResult> SequenceRunner::generate(const std::vector<int32_t>& prompt, const GreedyOptions& o) {
  const ModelConfig& c = model_.config();
  const BuildConfig& b = model_.build();
  if (prompt.empty()) return invalid_argument("empty prompt");
  if (static_cast<int64_t>(prompt.size()) > b.max_input_len)
    return invalid_argument("input length " + std::to_string(prompt.size()) + " exceeds max_input_len=" +
                            std::to_string(b.max_input_len) + " set at build");
  if (o.max_new_tokens < 0) return invalid_argument("max_output_len must be >= 0");
  if (static_cast<int64_t>(prompt.size()) + o.max_new_tokens > b.max_seq_len)
    return invalid_argument("input length " + std::to_string(prompt.size()) + " + max_output_len " +
                            std::to_string(o.max_new_tokens) + " exceeds max_seq_len=" + std::to_string(b.max_seq_len) +
                            " set at build");
  GreedyResult result;
  std::vector<float> logits;
  // Prefill in chunks of at most max_num_tokens; logits of the last chunk's last token pick the first output.
  int32_t done = 0;
  const int32_t n = static_cast<int32_t>(prompt.size());
  while (done < n) {
    const int32_t chunk = static_cast<int32_t>(std::min<int64_t>(n - done, b.max_num_tokens));
    ForwardBatch fb;
    fb.token_ids.assign(prompt.begin() + done, prompt.begin() + done + chunk);
    fb.attention.seqs.push_back({0, chunk, done + chunk, block_table_});
    fb.attention.num_tokens = chunk;
    fb.rope_seq_len = {n};
    fb.attention.block_size = b.tokens_per_block;
    if (o.return_prompt_logits) {
      fb.logit_rows.resize(chunk);
      std::iota(fb.logit_rows.begin(), fb.logit_rows.end(), 0);
    } else {
      fb.logit_rows = {chunk - 1};
    }
    KILN_RETURN_IF_ERROR(model_.forward(fb, *kv_, &logits));
    if (o.return_prompt_logits) result.prompt_logits.insert(result.prompt_logits.end(), logits.begin(), logits.end());
    done += chunk;
  }
  const float* last = logits.data() + logits.size() - c.vocab_size;
  result.first_logits.assign(last, last + c.vocab_size);
  int32_t context = n;
  for (int64_t step = 0; step < o.max_new_tokens; ++step) {
    const float* row = logits.data() + logits.size() - c.vocab_size;
    const int32_t token = argmax(row, c.vocab_size);
    result.output_ids.push_back(token);
    if (o.return_log_probs) result.log_probs.push_back(log_softmax_at(row, c.vocab_size, token));
    if (o.stop_at_eos && std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), token) != c.eos_token_ids.end()) {
      result.stopped_at_eos = true;
      break;
    }
    if (step + 1 == o.max_new_tokens) break;
    ForwardBatch fb;
    fb.token_ids = {token};
    ++context;
    fb.attention.seqs.push_back({0, 1, context, block_table_});
    fb.attention.num_tokens = 1;
    fb.attention.block_size = b.tokens_per_block;
    fb.logit_rows = {0};
    KILN_RETURN_IF_ERROR(model_.forward(fb, *kv_, &logits));
  }
  return result;
}

}  // namespace kiln

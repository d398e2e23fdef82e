#include "model/micro_batches.h"

#include <algorithm>

namespace kiln {

std::vector<MicroBatch> split_micro_batches(const ForwardBatch& b, int parts) {
  KILN_CHECK(b.previous_tokens.empty(), "split_micro_batches: a batch with previous tokens is not split");
  const std::vector<SequenceView>& seqs = b.attention.seqs;
  const int64_t total = static_cast<int64_t>(b.token_ids.size());
  parts = std::max(1, std::min<int>(parts, static_cast<int>(seqs.size())));
  // Sequence i goes to part group[i]: a part closes once the running token count reaches its share of the total,
  // or when just enough sequences are left for the parts still empty.
  std::vector<int> group(seqs.size());
  int64_t seen = 0;
  int g = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    group[i] = g;
    seen += seqs[i].num_new;
    const int64_t seqs_left = static_cast<int64_t>(seqs.size() - i - 1), parts_left = parts - g - 1;
    if (parts_left > 0 && seqs_left >= parts_left && (seen * parts >= total * (g + 1) || seqs_left == parts_left)) ++g;
  }
  parts = g + 1;

  std::vector<MicroBatch> out(static_cast<size_t>(parts));
  std::vector<int32_t> part_of(static_cast<size_t>(total), -1), index_in(static_cast<size_t>(total), -1);
  for (size_t i = 0; i < seqs.size(); ++i) {
    MicroBatch& m = out[group[i]];
    SequenceView s = seqs[i];
    const int32_t first = static_cast<int32_t>(m.batch.token_ids.size());
    for (int32_t t = 0; t < s.num_new; ++t) {
      part_of[s.first_token + t] = group[i];
      index_in[s.first_token + t] = first + t;
      m.batch.token_ids.push_back(b.token_ids[s.first_token + t]);
    }
    s.first_token = first;
    m.batch.attention.seqs.push_back(s);
    if (i < b.rope_seq_len.size()) m.batch.rope_seq_len.push_back(b.rope_seq_len[i]);
  }
  for (MicroBatch& m : out) {
    m.batch.attention.num_tokens = static_cast<int32_t>(m.batch.token_ids.size());
    m.batch.attention.block_size = b.attention.block_size;
  }
  for (size_t j = 0; j < b.logit_rows.size(); ++j) {
    const int32_t t = b.logit_rows[j];
    KILN_CHECK(t >= 0 && t < total && part_of[t] >= 0, "split_micro_batches: a logit row outside every sequence");
    MicroBatch& m = out[part_of[t]];
    m.batch.logit_rows.push_back(index_in[t]);
    m.rows.push_back(static_cast<int32_t>(j));
  }
  return out;
}

}  // namespace kiln

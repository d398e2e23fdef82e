#include <cstdio>
#include <filesystem>
#include <fstream>

#include "backend/backend_factory.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "model/engine.h"
#include "model/llama_model.h"

namespace kiln::cli {

namespace {

// Times the backend's GEMM choices for the engine's shapes on this machine and keeps them in the engine
// (cuda: cuBLASLt's candidates). Without a usable device it says so and leaves the choice to load time.
Status tune_engine(const std::string& dir) {
  KILN_ASSIGN_OR_RETURN(Engine engine, load_engine(dir));
  Result<std::unique_ptr<Backend>> backend = make_backend(engine.build.backend);
  if (!backend.ok()) {
    std::printf("kiln build: GEMM tuning skipped (%s); algorithms will be chosen by heuristic at load — run "
                "`kiln build` on the GPU machine to tune them\n", backend.status().message().c_str());
    return {};
  }
  const BuildConfig& b = engine.build;
  KILN_ASSIGN_OR_RETURN(std::string record,
                        (*backend)->tune_linears(LlamaModel::linear_shapes(rank_model(engine.model, engine.layout)), b.dtype, b.max_num_tokens,
                                                 std::min(b.max_num_tokens, b.max_batch_size * b.max_beam_width)));
  if (record.empty()) return {};
  const std::string path = (std::filesystem::path(dir) / kGemmTuningFile).string();
  std::ofstream f(path, std::ios::binary);
  f << record;
  if (!f.flush()) return data_loss("cannot write " + path);
  std::printf("kiln build: GEMM tuning written to %s\n", path.c_str());
  return {};
}

}  // namespace

int cmd_build(const std::vector<std::string>& argv) {
  const std::vector<FlagSpec> specs = {
      {"checkpoint_dir", true, "checkpoint dir from `kiln convert`"},
      {"output_dir", true, "engine dir to write"},
      {"max_batch_size", true, "most sequences in flight at once (8)"},
      {"max_beam_width", true, "widest beam search a request may ask for (1)"},
      {"max_input_len", true, "longest prompt in tokens (1024)"},
      {"max_seq_len", true, "longest prompt + output in tokens"},
      {"max_output_len", true, "longest output; max_seq_len = max_input_len + this"},
      {"max_num_tokens", true, "tokens in one forward pass (default min(8192, batch x input))"},
      {"gemm_plugin", true, "auto | disable | the engine dtype (accepted like trtllm-build)"},
      {"tokens_per_block", true, "KV cache block size in tokens (64)"},
      {"tp_size", true, "tensor-parallel ranks: must match the checkpoint's (`kiln convert --tp_size`)"},
      {"pp_size", true, "pipeline-parallel ranks: must match the checkpoint's (`kiln convert --pp_size`)"},
      {"backend", true, "cpu (weights packed for the CPU kernels) or cuda (plain row-major for cuBLASLt) (cpu)"},
      {"gemm_tuning", true, "cuda: time cuBLASLt's candidate GEMM algorithms for the engine's shapes on this "
                            "machine's GPU and keep the fastest in the engine: on | off (on)"},
  };
  if (wants_help(argv)) {
    std::fputs(usage("build", "Validates limits, plans memory and packs weights into an engine dir.", specs).c_str(), stdout);
    return 0;
  }
  auto run = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(Args a, Args::parse(argv, specs));
    KILN_ASSIGN_OR_RETURN(std::string ckpt, a.require("checkpoint_dir"));
    KILN_ASSIGN_OR_RETURN(std::string out, a.require("output_dir"));
    BuildConfig b;
    KILN_ASSIGN_OR_RETURN(b.max_batch_size, a.get_int("max_batch_size", 8));
    KILN_ASSIGN_OR_RETURN(b.max_beam_width, a.get_int("max_beam_width", 1));
    KILN_ASSIGN_OR_RETURN(b.max_input_len, a.get_int("max_input_len", 1024));
    KILN_ASSIGN_OR_RETURN(int64_t seq, a.get_int("max_seq_len", 0));
    KILN_ASSIGN_OR_RETURN(int64_t outl, a.get_int("max_output_len", 0));
    if (a.has("max_seq_len") && a.has("max_output_len") && seq != b.max_input_len + outl)
      return invalid_argument("--max_seq_len=" + std::to_string(seq) + " disagrees with --max_input_len + --max_output_len = " +
                              std::to_string(b.max_input_len + outl) + "; give one of them");
    if (!a.has("max_seq_len") && !a.has("max_output_len"))
      return invalid_argument("give --max_seq_len or --max_output_len");
    if (a.has("max_output_len") && outl <= 0) return invalid_argument("--max_output_len must be positive");
    b.max_seq_len = a.has("max_seq_len") ? seq : b.max_input_len + outl;
    KILN_ASSIGN_OR_RETURN(b.max_num_tokens, a.get_int("max_num_tokens", 0));
    if (a.has("max_num_tokens") && b.max_num_tokens <= 0) return invalid_argument("--max_num_tokens must be positive");
    KILN_ASSIGN_OR_RETURN(int64_t tpb, a.get_int("tokens_per_block", 64));
    KILN_ASSIGN_OR_RETURN(int64_t tp, a.get_int("tp_size", 1));
    KILN_ASSIGN_OR_RETURN(int64_t pp, a.get_int("pp_size", 1));
    b.tokens_per_block = static_cast<int>(tpb);
    b.tp_size = a.has("tp_size") ? static_cast<int>(tp) : 0;  // 0: as the checkpoint was converted
    b.pp_size = a.has("pp_size") ? static_cast<int>(pp) : 0;
    if (auto g = a.get("gemm_plugin")) b.gemm_plugin = *g;
    if (auto be = a.get("backend")) b.backend = *be;
    std::string plan;
    const std::string tuning = a.get("gemm_tuning").value_or("on");
    if (tuning != "on" && tuning != "off") return invalid_argument("--gemm_tuning must be on or off, not " + tuning);
    KILN_RETURN_IF_ERROR(build_engine(ckpt, out, b, &plan));
    std::printf("kiln build: memory plan\n%s", plan.c_str());
    std::filesystem::remove(std::filesystem::path(out) / kGemmTuningFile);  // a rebuild's old record is stale
    if (b.backend == "cuda" && tuning == "on") KILN_RETURN_IF_ERROR(tune_engine(out));
    std::printf("kiln build: wrote %s\n", out.c_str());
    return {};
  };
  Status s = run();
  return s.ok() ? 0 : report_error("build", s);
}

}  // namespace kiln::cli

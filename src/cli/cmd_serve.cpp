// kiln serve: the Triton-compatible server (gRPC 8001, HTTP 8000, metrics 8002) over a model repository.
#include <algorithm>
#include <csignal>
#include <cstdio>

#include "cli/args.h"
#include "cli/commands.h"

#ifdef KILN_HAVE_SERVER
#include "server/grpc_frontend.h"
#include "server/http_frontend.h"
#include "server/server_core.h"
#endif

namespace kiln::cli {

int cmd_serve(const std::vector<std::string>& argv) {
#ifndef KILN_HAVE_SERVER
  (void)argv;
  return report_error("serve", unimplemented("this kiln was built without the server (gRPC and protobuf were not "
                                             "found at build time; install them and rebuild)"));
#else
  const std::vector<FlagSpec> specs = {
      {"model_repo", true, "model repository folder (Triton's layout: NAME/config.pbtxt, NAME/1/)"},
      {"model-repository", true, "same as --model_repo (tritonserver's spelling)"},
      {"model-control-mode", true,
       "none (load all at start, default) | explicit (--load-model, repository API) | poll (follow the folder)"},
      {"repository-poll-secs", true, "poll mode: seconds between scans of the repository (15)"},
      {"load-model", true, "model to load at start in explicit mode, or * (repeatable)"},
      {"http-port", true, "HTTP/REST port (8000; 0 = any free port; -1 = off)"},
      {"grpc-port", true, "gRPC port (8001)"},
      {"metrics-port", true, "Prometheus metrics port (8002)"},
      {"http-address", true, "address to listen on (0.0.0.0)"},
      {"log-verbose", true, "log verbosity (0)"},
      {"max-request-bytes", true, "largest request body / message accepted (67108864)"},
      {"exit-timeout-secs", true, "on SIGTERM: how long in-flight requests may take to finish (30)"},
  };
  if (wants_help(argv)) {
    std::fputs(usage("serve", "Serves a model repository over KServe v2 HTTP and gRPC, like tritonserver.", specs).c_str(),
               stdout);
    return 0;
  }
  auto run = [&]() -> Status {
    KILN_ASSIGN_OR_RETURN(Args a, Args::parse(argv, specs));
    server::ServerOptions o;
    if (a.has("model_repo") && a.has("model-repository")) return invalid_argument("give --model_repo or --model-repository, not both");
    o.model_repository = a.get("model_repo").value_or(a.get("model-repository").value_or(""));
    if (auto m = a.get("model-control-mode")) {
      if (*m == "none") o.control_mode = server::ModelControlMode::kNone;
      else if (*m == "explicit") o.control_mode = server::ModelControlMode::kExplicit;
      else if (*m == "poll") o.control_mode = server::ModelControlMode::kPoll;
      else return invalid_argument("--model-control-mode '" + *m + "': expected none, explicit or poll");
    }
    o.load_models = a.get_all("load-model");
    KILN_ASSIGN_OR_RETURN(int64_t poll_secs, a.get_int("repository-poll-secs", 15));
    if (a.has("repository-poll-secs") && o.control_mode != server::ModelControlMode::kPoll)
      return invalid_argument("--repository-poll-secs needs --model-control-mode poll");
    o.repository_poll = std::chrono::seconds(std::clamp<int64_t>(poll_secs, 0, 86400));
    KILN_ASSIGN_OR_RETURN(int64_t http, a.get_int("http-port", 8000));
    KILN_ASSIGN_OR_RETURN(int64_t grpc, a.get_int("grpc-port", 8001));
    KILN_ASSIGN_OR_RETURN(int64_t metrics, a.get_int("metrics-port", 8002));
    o.http_port = static_cast<int>(http);
    o.grpc_port = static_cast<int>(grpc);
    o.metrics_port = static_cast<int>(metrics);
    if (auto addr = a.get("http-address")) o.http_address = *addr;
    KILN_ASSIGN_OR_RETURN(int64_t verbose, a.get_int("log-verbose", 0));
    o.log_verbose = static_cast<int>(verbose);
    KILN_ASSIGN_OR_RETURN(int64_t cap, a.get_int("max-request-bytes", 64ll << 20));
    o.max_request_bytes = static_cast<uint64_t>(std::max<int64_t>(cap, 0));
    KILN_ASSIGN_OR_RETURN(int64_t exit_secs, a.get_int("exit-timeout-secs", 30));
    o.shutdown_timeout = std::chrono::seconds(std::max<int64_t>(exit_secs, 0));

    // SIGTERM / SIGINT are taken synchronously below; block them before any thread starts.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGTERM);
    sigaddset(&signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    KILN_ASSIGN_OR_RETURN(auto core, server::ServerCore::create(o));
    std::unique_ptr<server::GrpcFrontend> grpc_fe;
    std::unique_ptr<server::HttpFrontend> http_fe, metrics_fe;
    if (o.grpc_port >= 0) {
      KILN_ASSIGN_OR_RETURN(grpc_fe, server::GrpcFrontend::start(*core, o.http_address, o.grpc_port));
      std::printf("kiln serve: gRPC on %s:%d\n", o.http_address.c_str(), grpc_fe->port());
    }
    if (o.http_port >= 0) {
      KILN_ASSIGN_OR_RETURN(http_fe, server::HttpFrontend::start(*core, o.http_address, o.http_port));
      std::printf("kiln serve: HTTP on %s:%d\n", o.http_address.c_str(), http_fe->port());
    }
    if (o.metrics_port >= 0) {
      KILN_ASSIGN_OR_RETURN(metrics_fe, server::HttpFrontend::start(*core, o.http_address, o.metrics_port, true));
      std::printf("kiln serve: metrics on %s:%d/metrics\n", o.http_address.c_str(), metrics_fe->port());
    }
    for (const auto& m : core->repository_index(false))
      std::printf("kiln serve: model %s version %s: %s%s%s\n", m.name.c_str(), m.version.c_str(), m.state.c_str(),
                  m.reason.empty() ? "" : " - ", m.reason.c_str());
    std::printf("kiln serve: %s\n", core->ready() ? "ready" : "started, but not every model is ready");
    std::fflush(stdout);

    int sig = 0;
    sigwait(&signals, &sig);
    std::printf("kiln serve: %s: no new requests; letting in-flight ones finish (up to %llds)\n",
                sig == SIGTERM ? "SIGTERM" : "SIGINT", static_cast<long long>(o.shutdown_timeout.count()));
    std::fflush(stdout);
    if (http_fe) http_fe->stop_accepting();  // no new connections while the models drain
    core->shutdown(o.shutdown_timeout);       // refuses new calls, lets in-flight ones finish, then cancels
    if (grpc_fe) grpc_fe->shutdown();
    if (http_fe) http_fe->shutdown();
    if (metrics_fe) metrics_fe->shutdown();
    std::printf("kiln serve: stopped\n");
    return {};
  };
  Status s = run();
  return s.ok() ? 0 : report_error("serve", s);
#endif
}

}  // namespace kiln::cli

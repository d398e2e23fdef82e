"""The metrics port's text parses with the Prometheus project's own parser (prometheus_client), every family
is one group under a single # TYPE line, and the counters move with the requests sent."""
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families


def scrape(server):
    return urllib.request.urlopen("http://%s/metrics" % server.metrics_url, timeout=10).read().decode()


def families(server):
    return {f.name: f for f in text_string_to_metric_families(scrape(server))}


def value(fams, name, **labels):
    for f in fams.values():
        for s in f.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise KeyError((name, labels))


def test_every_family_is_one_group_with_one_type_line(server):
    text = scrape(server)
    seen, current = set(), None
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name = line.split()[2]
            assert name not in seen, "second # TYPE line for " + name
            seen.add(name)
            current = name
        elif line and not line.startswith("#"):
            sample = line.split("{")[0].split(" ")[0]
            assert current is not None and sample.startswith(current), (line, current)
    for name in ("nv_inference_request_success", "nv_inference_count", "nv_inference_pending_request_count",
                 "nv_trt_llm_kv_cache_block_metrics", "nv_trt_llm_request_metrics", "nv_llm_input_token_len",
                 "kiln_time_to_first_token_ms", "kiln_inter_token_latency_ms", "nv_cpu_utilization",
                 "nv_cpu_memory_used_bytes", "nv_cpu_memory_total_bytes"):
        assert name in seen, name


def test_counters_follow_requests(server):
    before = families(server)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    n = 3
    for _ in range(n):
        ids = np.array([[1, 450, 2927, 338]], dtype=np.int32)
        inputs = [grpcclient.InferInput("input_ids", list(ids.shape), "INT32"),
                  grpcclient.InferInput("input_lengths", [1, 1], "INT32"),
                  grpcclient.InferInput("request_output_len", [1, 1], "INT32")]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(np.array([[4]], dtype=np.int32))
        inputs[2].set_data_from_numpy(np.array([[5]], dtype=np.int32))
        client.infer("tensorrt_llm", inputs)
    after = families(server)
    labels = dict(model="tensorrt_llm", version="1")
    # prometheus_client names a counter's samples <family>_total.
    assert value(after, "nv_inference_request_success_total", **labels) - \
        value(before, "nv_inference_request_success_total", **labels) == n
    assert value(after, "nv_llm_input_token_len_count", **labels) - \
        value(before, "nv_llm_input_token_len_count", **labels) == n
    assert value(after, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="used", **labels) == 0
    total = value(after, "nv_cpu_memory_total_bytes")
    assert 0 < value(after, "nv_cpu_memory_used_bytes") <= total
    assert 0.0 <= value(after, "nv_cpu_utilization") <= 1.0

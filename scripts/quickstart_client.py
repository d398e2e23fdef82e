"""Streams one answer from a Kiln (or Triton + TensorRT-LLM) server: the `ensemble` model over gRPC with
tritonclient, as the seed tutorial's client does, printing the text as it arrives.

    python scripts/quickstart_client.py HOST:PORT PROMPT_FILE [MAX_TOKENS]
"""
import queue
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import np_to_triton_dtype


def tensor(name, data):
    t = grpcclient.InferInput(name, data.shape, np_to_triton_dtype(data.dtype))
    t.set_data_from_numpy(data)
    return t


def main():
    url, prompt_file = sys.argv[1], sys.argv[2]
    max_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    prompt = open(prompt_file, encoding="utf-8").read()
    inputs = [
        tensor("text_input", np.array([[prompt.encode("utf-8")]], dtype=object)),
        tensor("max_tokens", np.array([[max_tokens]], dtype=np.int32)),
        tensor("stream", np.array([[True]], dtype=bool)),
    ]
    results = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer("ensemble", inputs, request_id="quickstart",
                              enable_empty_final_response=True)
    sys.stdout.write("A: ")
    while True:
        result, error = results.get(timeout=120)
        if error is not None:
            raise SystemExit(f"\nserver error: {error}")
        out = result.as_numpy("text_output")
        if out is not None and out.size:
            sys.stdout.write(out.reshape(-1)[0].decode("utf-8"))
            sys.stdout.flush()
        final = result.get_response().parameters.get("triton_final_response")
        if final is not None and final.bool_param:
            break
    sys.stdout.write("\n")
    client.stop_stream()
    client.close()


if __name__ == "__main__":
    main()

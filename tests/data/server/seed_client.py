import time
import numpy as np
from transformers import AutoTokenizer
import tritonclient.grpc as grpcclient


prompt = """
<s><|user|>What is the color of the sky?<|end|>
<assistant>
"""

tokenizer = AutoTokenizer.from_pretrained("microsoft/Phi-3-mini-128k-instruct")
ids = tokenizer.encode(prompt, add_special_tokens=False)
ids = np.array(ids).reshape(1, len(ids), 1)
triton_client = grpcclient.InferenceServerClient(url="localhost:8001")

input_ids_arr = ids.astype(np.int32)
input_ids = grpcclient.InferInput("input_ids", input_ids_arr.shape, "INT32")
input_ids.set_data_from_numpy(input_ids_arr)

input_lengths_arr = np.array([[1024]]).astype(np.int32)
input_lengths = grpcclient.InferInput("input_lengths", input_lengths_arr.shape, "INT32")
input_lengths.set_data_from_numpy(input_lengths_arr)

request_output_len_arr = np.array([[1024]]).astype(np.int32)
request_output_len = grpcclient.InferInput("request_output_len", request_output_len_arr.shape, "INT32")
request_output_len.set_data_from_numpy(request_output_len_arr)

end_id_arr = np.array([[32007]]).astype(np.int32)
end_id = grpcclient.InferInput("end_id", end_id_arr.shape, "INT32")
end_id.set_data_from_numpy(end_id_arr)


response = triton_client.infer(
                model_name='tensorrt_llm', 
                inputs=[input_ids, input_lengths, request_output_len, end_id],
                request_id="llm_request"
            )

output = response.as_numpy("output_ids")
print('-'*100)
print(output[0][0][ids.shape[1]:])
print('-'*100)
print(tokenizer.decode(output[0][0][ids.shape[1]:]))
print('-'*100)

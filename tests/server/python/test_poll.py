"""--model-control-mode poll: the server follows the repository folder. A model folder that appears is loaded,
an edited one is reloaded (a broken edit leaves the loaded instance serving), a removed one is unloaded; the
repository API is refused meanwhile."""
import os
import shutil
import time

import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import Server, make_repo, wait_for


@pytest.fixture(scope="module")
def poll_server(workdir, engine_dir, tokenizer_dir):
    repo = make_repo(os.path.join(workdir, "repo_poll"), engine_dir, tokenizer_dir, decoupled=False)
    s = Server(repo, ["--model-control-mode", "poll", "--repository-poll-secs", "1"])
    yield s
    assert s.stop() == 0, s.log()


def states(client):
    return {m["name"]: m.get("state") for m in client.get_model_repository_index()}


def test_poll_follows_the_folder(poll_server):
    client = httpclient.InferenceServerClient(poll_server.http_url)
    repo = poll_server.repo
    assert states(client)["postprocessing"] == "READY"
    assert not client.is_model_ready("post2")

    # A new folder: loaded within a scan or two.
    shutil.copytree(os.path.join(repo, "postprocessing"), os.path.join(repo, "post2"), symlinks=True)
    with open(os.path.join(repo, "post2", "config.pbtxt"), encoding="utf-8") as f:
        text = f.read().replace('name: "postprocessing"', 'name: "post2"')
    with open(os.path.join(repo, "post2", "config.pbtxt"), "w", encoding="utf-8") as f:
        f.write(text)
    assert wait_for(lambda: client.is_model_ready("post2"), timeout=15), poll_server.log()

    # An edit that breaks the config: the reload fails, says why, and the loaded instance keeps serving.
    time.sleep(1.1)  # a new modification time, whatever the file system's resolution
    with open(os.path.join(repo, "post2", "config.pbtxt"), "a", encoding="utf-8") as f:
        f.write("\nno_such_field: 1\n")
    assert wait_for(lambda: 'unknown field "no_such_field"' in poll_server.log(), timeout=15), poll_server.log()
    assert states(client)["post2"] == "READY" and client.is_server_ready()

    # The folder goes away: unloaded, no longer listed.
    shutil.rmtree(os.path.join(repo, "post2"))
    assert wait_for(lambda: "unloaded model 'post2'" in poll_server.log(), timeout=15), poll_server.log()
    assert "poll: model folder 'post2' is gone" in poll_server.log()
    assert "post2" not in states(client) and not client.is_model_ready("post2")

    # The other models kept serving throughout, and the repository API is refused while polling.
    assert client.is_model_ready("postprocessing")
    with pytest.raises(InferenceServerException, match="polled"):
        client.load_model("postprocessing")
    with pytest.raises(InferenceServerException, match="polled"):
        client.unload_model("postprocessing")

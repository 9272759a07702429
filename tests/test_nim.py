"""The NIM client against our own embed-server (the tiny SigLIP behind it) over real HTTP on
127.0.0.1, with a fault-injecting proxy in between where a test needs a misbehaving NIM."""

from __future__ import annotations

import base64
import io
import logging
import pickle
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from medvec.serve.embed_server import EmbedServer
from medvec.embedders.base import Embedder, EmbedderError
from medvec.embedders.nim import NimEmbedder, png_data_uri
from medvec.embedders.transformers_local import TransformersEmbedder
from medvec.models.registry import resolve_model
from medvec.models.tiny import build_tiny_siglip
from tests.conftest import free_port
from tests.nim_faults import Fault, FaultProxy

KEY = "nvapi-SECRET-never-shown-0123456789"
MODEL = "medvec/tiny-siglip"
TEXTS = ["small left pleural effusion", "no acute cardiopulmonary process", "cardiomegaly"]


class WatchedEmbedder(Embedder):
    """The real model, counting its calls; with `gated`, calls wait until the test opens the gate."""

    def __init__(self, inner: Embedder, gated: bool = False):
        self.inner = inner
        self.name, self.model_id, self.revision, self.dim = inner.name, inner.model_id, inner.revision, inner.dim
        self.calls = 0
        self.sizes: list[int] = []  # inputs per model call
        self.gate = threading.Event()
        if not gated:
            self.gate.set()

    def image_preparer(self):
        return self.inner.image_preparer()

    def embed_prepared(self, prepared):
        return self._call(self.inner.embed_prepared, prepared)

    def embed_texts(self, texts):
        return self._call(self.inner.embed_texts, texts)

    def _call(self, embed, items):
        assert self.gate.wait(300), "the test never opened the gate"  # a hang, not a slow machine
        self.calls += 1
        self.sizes.append(len(items))
        return embed(items)


@pytest.fixture(scope="module")
def tiny_siglip_dir(tmp_path_factory) -> Path:
    return build_tiny_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip")


@pytest.fixture(scope="module")
def local_model(tiny_siglip_dir) -> TransformersEmbedder:
    return TransformersEmbedder(resolve_model("tiny-siglip"), tiny_siglip_dir, device="cpu")


@pytest.fixture(scope="module")
def server(local_model):
    with EmbedServer(local_model, api_key=KEY) as server:
        yield server


@pytest.fixture
def proxy(server):
    proxy = FaultProxy(server.url)
    yield proxy
    proxy.stop()


def nim(url: str, **options) -> NimEmbedder:
    """A client with test-sized backoff; the timeout only ends a hang (a timed-out healthy answer on a loaded
    machine would add a retry the tests count)."""
    settings = dict(api_key=KEY, dim=64, name="tiny-siglip", timeout_s=60, max_retries=4, backoff_base_s=0.01,
                    backoff_max_s=0.5)
    settings.update(options)
    return NimEmbedder(url, MODEL, **settings)


def webp_images(count: int) -> list[bytes]:
    """Grey lossless WebP, as Medvec stores normalised images."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8), "L").save(buffer, "WEBP", lossless=True)
        images.append(buffer.getvalue())
    return images


# --- the protocol, end to end ------------------------------------------------------------------

def test_texts_and_images_match_the_local_model_in_input_order(proxy, local_model):
    client = nim(proxy.url)
    np.testing.assert_allclose(client.embed_texts(TEXTS), local_model.embed_texts(TEXTS), atol=1e-5)
    images = webp_images(3)
    vectors = client.embed_images(images)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 64)
    np.testing.assert_allclose(vectors, local_model.embed_images(images), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-6)
    assert all(set(seen.body) == {"input", "model", "encoding_format"} for seen in proxy.posts())
    assert proxy.posts()[-1].body["encoding_format"] == "float"
    assert proxy.posts()[-1].authorization == f"Bearer {KEY}"


def test_images_travel_as_rgb_png_data_uris():
    prepare = nim("http://127.0.0.1:1").image_preparer()
    uri = pickle.loads(pickle.dumps(prepare))(webp_images(1)[0])  # workers get it pickled
    assert uri.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "RGB", (40, 48))


def test_texts_and_images_can_share_one_request(server, local_model):
    image = webp_images(1)[0]
    vectors = nim(server.url).embed_prepared(["cardiomegaly", png_data_uri(image), "effusion"])
    np.testing.assert_allclose(vectors[[0, 2]], local_model.embed_texts(["cardiomegaly", "effusion"]), atol=1e-5)
    np.testing.assert_allclose(vectors[1], local_model.embed_images([image])[0], atol=1e-5)


def test_shuffled_index_order_is_put_back_in_input_order(proxy, local_model):
    proxy.inject(Fault(shuffle=True))
    np.testing.assert_allclose(nim(proxy.url).embed_texts(TEXTS), local_model.embed_texts(TEXTS), atol=1e-5)


def test_more_than_64_inputs_are_split_into_several_requests(proxy, local_model):
    texts = [f"finding number {i}" for i in range(150)]
    vectors = nim(proxy.url, concurrency=3).embed_texts(texts)
    assert sorted(len(seen.body["input"]) for seen in proxy.posts()) == [22, 64, 64]
    np.testing.assert_allclose(vectors, local_model.embed_texts(texts), atol=1e-5)


def test_the_dimension_is_learnt_from_the_first_answer(server):
    client = nim(server.url, dim=None)
    assert client.embed_texts(TEXTS).shape == (3, 64) and client.dim == 64


def test_concurrent_requests_are_batched_into_fewer_model_calls(local_model):
    watched = WatchedEmbedder(local_model)
    callers = 12
    # The window is far longer than any machine needs to send 12 requests, and a batch is sent as soon
    # as it holds max_batch inputs: it fills with every caller's two texts however slow the machine is.
    with EmbedServer(watched, max_batch=2 * callers, batch_window_ms=300_000) as server:
        calls_before, stats_before = watched.calls, server.stats
        client = nim(server.url, api_key=None, timeout_s=30, concurrency=callers)
        start = threading.Barrier(callers)
        results: dict[int, np.ndarray] = {}

        def call(i: int) -> None:
            start.wait()
            results[i] = client.embed_texts([f"text {i}", f"other text {i}"])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)  # only ends a hang
        stats = server.stats
    assert stats["requests"] - stats_before["requests"] == callers
    assert watched.calls - calls_before == stats["model_calls"] - stats_before["model_calls"] == 1 < callers
    for i in range(callers):
        np.testing.assert_allclose(results[i], local_model.embed_texts([f"text {i}", f"other text {i}"]), atol=1e-5)


def test_queued_requests_fill_batches_up_to_max_batch_and_each_gets_its_own_vectors(local_model):
    watched = WatchedEmbedder(local_model, gated=True)  # the warm-up call holds the model until the gate opens
    callers = 6
    with EmbedServer(watched, max_batch=4, batch_window_ms=50).start(wait_ready=False) as server:
        client = nim(server.url, api_key=None, timeout_s=30, concurrency=callers)
        results: dict[int, np.ndarray] = {}

        def call(i: int) -> None:
            results[i] = client.embed_texts([f"text {i}", f"other text {i}"])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 300  # only ends a hang
        while server.stats["requests"] < callers:  # every request queued behind the warm-up
            assert time.monotonic() < deadline, "the requests never reached the queue"
            time.sleep(0.01)
        watched.gate.set()
        for thread in threads:
            thread.join(300)  # only ends a hang
    assert watched.sizes == [1, 4, 4, 4]  # the warm-up, then two 2-input requests per call, never more than 4
    for i in range(callers):
        np.testing.assert_allclose(results[i], local_model.embed_texts([f"text {i}", f"other text {i}"]), atol=1e-5)


# --- retries -----------------------------------------------------------------------------------

def test_a_429_storm_then_success_gives_the_right_vectors(proxy, local_model):
    proxy.inject(*[Fault(status=429)] * 3)
    vectors = nim(proxy.url).embed_texts(TEXTS)
    assert len(proxy.posts()) == 4
    np.testing.assert_allclose(vectors, local_model.embed_texts(TEXTS), atol=1e-5)


def test_retry_after_is_honoured(proxy, caplog):
    proxy.inject(Fault(status=429, retry_after="0.3"))
    with caplog.at_level(logging.INFO, logger="medvec.embedders.nim"):
        nim(proxy.url, backoff_base_s=0.001).embed_texts(TEXTS)
    first, second = proxy.posts()
    assert second.at - first.at >= 0.3  # a lower bound: waiting can only take longer, never shorter
    assert "retry 1 of 4 in 0.30 s" in caplog.text


def test_retry_after_is_capped_at_the_backoff_ceiling(proxy, caplog):
    proxy.inject(Fault(status=503, retry_after="120"))
    with caplog.at_level(logging.INFO, logger="medvec.embedders.nim"):
        nim(proxy.url, backoff_max_s=0.2).embed_texts(TEXTS)
    assert len(proxy.posts()) == 2 and "retry 1 of 4 in 0.20 s" in caplog.text  # 0.2 s, not 120


def test_a_retry_after_date_is_counted_from_the_clients_clock(proxy, caplog):
    # An HTTP date has one-second resolution: the client's clock is injected, so the wait is exact.
    proxy.inject(Fault(status=503, retry_after="Wed, 21 Oct 2026 07:28:00 GMT"))
    date = datetime(2026, 10, 21, 7, 28, tzinfo=timezone.utc).timestamp()
    with caplog.at_level(logging.INFO, logger="medvec.embedders.nim"):
        nim(proxy.url, clock=lambda: date - 0.25).embed_texts(TEXTS)
    assert len(proxy.posts()) == 2 and "retry 1 of 4 in 0.25 s" in caplog.text
    proxy.inject(Fault(status=503, retry_after="Wed, 21 Oct 2026 07:28:00 GMT"))
    with caplog.at_level(logging.INFO, logger="medvec.embedders.nim"):
        nim(proxy.url, clock=lambda: date + 60).embed_texts(TEXTS)  # a date in the past: retry at once
    assert "retry 1 of 4 in 0.00 s" in caplog.text


def test_a_permanent_429_fails_with_advice(proxy):
    proxy.inject(*[Fault(status=429)] * 10)
    with pytest.raises(EmbedderError, match="kept answering 429 Too Many Requests after 4 retries; lower concurrency"):
        nim(proxy.url).embed_texts(TEXTS)
    assert len(proxy.posts()) == 5


@pytest.mark.parametrize("fault", [Fault(status=503), Fault(status=502), Fault(status=500), Fault(stall=True),
                                   Fault(truncate=True)],
                         ids=["503", "502", "500", "slow-answer-times-out", "malformed-json"])
def test_transient_faults_are_retried(proxy, local_model, fault):
    proxy.inject(fault)
    # The stalled answer times out however long the client waits (it is held until the retry arrives), so
    # the timeout only bounds the healthy retry: generous, for a loaded machine (and paid once, by the stall).
    vectors = nim(proxy.url, timeout_s=10.0).embed_texts(TEXTS)
    np.testing.assert_allclose(vectors, local_model.embed_texts(TEXTS), atol=1e-5)
    assert len(proxy.posts()) == 2


def test_persistent_malformed_answers_fail_clearly(proxy):
    proxy.inject(*[Fault(truncate=True)] * 10)
    with pytest.raises(EmbedderError, match="kept sending malformed answers .* after 2 retries"):
        nim(proxy.url, max_retries=2).embed_texts(TEXTS)
    assert len(proxy.posts()) == 3


def test_nothing_listening_fails_after_retries():
    with pytest.raises(EmbedderError, match="refusing connections.*after 2 retries"):
        nim(f"http://127.0.0.1:{free_port()}", max_retries=2).embed_texts(TEXTS)


# --- answers that must never be used -------------------------------------------------------------

def test_a_wrong_dimension_names_both_and_returns_nothing(proxy):
    proxy.inject(Fault(dim=5))
    with pytest.raises(EmbedderError, match="returned 5-d embeddings but 64-d were expected"):
        nim(proxy.url).embed_texts(TEXTS)
    assert len(proxy.posts()) == 1  # a wrong answer is not retried into a right-looking one


def test_one_bad_chunk_fails_the_whole_call(proxy):
    proxy.inject(Fault(), Fault(dim=5))
    with pytest.raises(EmbedderError, match="5-d embeddings but 64-d"):
        nim(proxy.url, concurrency=2).embed_texts([f"finding {i}" for i in range(100)])


def test_a_wrong_count_returns_nothing(proxy):
    proxy.inject(Fault(drop=1))
    with pytest.raises(EmbedderError, match="returned 2 embeddings .* for 3 inputs; nothing was kept"):
        nim(proxy.url).embed_texts(TEXTS)


# --- plain-words refusals ----------------------------------------------------------------------

def test_a_wrong_key_names_nvidia_api_key_and_never_shows_the_key(server, caplog):
    wrong = "nvapi-WRONG-key-9876543210"
    client = nim(server.url, api_key=wrong)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(EmbedderError, match="NVIDIA_API_KEY") as failure:
            client.embed_texts(TEXTS)
        client.ready()
    shown = " ".join([str(failure.value), repr(failure.value), caplog.text, repr(client), str(client.runtime())])
    assert wrong not in shown and KEY not in shown


def test_a_missing_key_says_to_set_it(server):
    with pytest.raises(EmbedderError, match="set NVIDIA_API_KEY"):
        nim(server.url, api_key=None).embed_texts(TEXTS)


def test_an_unknown_model_or_path_is_a_plain_404(server):
    with pytest.raises(EmbedderError, match="model nvidia/not-served not served at .* MEDVEC_NIM_MODEL"):
        NimEmbedder(server.url, "nvidia/not-served", api_key=KEY).embed_texts(TEXTS)
    with pytest.raises(EmbedderError, match="not served at"):
        nim(f"{server.url}/wrong/prefix").embed_texts(TEXTS)
    assert requests.get(f"{server.url}/v1/nothing-here", timeout=5).status_code == 404
    assert requests.post(f"{server.url}/v1/nothing-here", json={}, timeout=5).status_code == 404


def test_a_rejected_request_shows_the_servers_reason(server):
    with pytest.raises(EmbedderError, match=r"NIM rejected the request: input\[0\] does not hold valid base64"):
        nim(server.url).embed_prepared(["data:image/png;base64,@@@"])


def test_the_server_validates_requests_like_nim(server):
    def post(body, key=KEY):
        return requests.post(f"{server.url}/v1/embeddings", json=body, timeout=5,
                             headers={"Authorization": f"Bearer {key}"})

    webp = base64.b64encode(webp_images(1)[0]).decode()
    not_an_image = base64.b64encode(b"certainly not a png").decode()
    extra = post({"input": ["x"], "model": MODEL, "encoding_format": "float", "input_type": "query"})
    assert extra.status_code == 422 and "input_type" in extra.json()["detail"]
    assert post({"input": ["x"] * 65, "model": MODEL}).status_code == 422
    assert post({"input": ["x"]}).status_code == 422  # model is required
    assert post({"input": [], "model": MODEL}).status_code == 422
    assert post({"input": ["x"], "model": MODEL, "encoding_format": "int8"}).status_code == 422
    bad_uri = post({"input": ["data:image/png;base64,%%%"], "model": MODEL})
    assert bad_uri.status_code == 422 and "base64" in bad_uri.json()["detail"]
    assert post({"input": [f"data:image/webp;base64,{webp}"], "model": MODEL}).status_code == 422
    assert "not a readable" in post({"input": [f"data:image/png;base64,{not_an_image}"],
                                     "model": MODEL}).json()["detail"]
    assert post({"input": ["x"], "model": MODEL}, key="nvapi-wrong").status_code == 401


def test_the_server_answers_in_nims_shapes(server, local_model):
    headers = {"Authorization": f"Bearer {KEY}"}
    image_uri = png_data_uri(webp_images(1)[0])
    answer = requests.post(f"{server.url}/v1/embeddings", headers=headers, timeout=5,
                           json={"input": ["cardiomegaly", image_uri], "model": MODEL}).json()
    assert answer["object"] == "list" and answer["model"] == MODEL
    assert [(item["index"], item["object"], len(item["embedding"])) for item in answer["data"]] == [
        (0, "embedding", 64), (1, "embedding", 64)]
    assert answer["usage"]["num_images"] == 1 and answer["usage"]["total_tokens"] == answer["usage"]["prompt_tokens"]
    packed = requests.post(f"{server.url}/v1/embeddings", headers=headers, timeout=5,
                           json={"input": "cardiomegaly", "model": MODEL, "encoding_format": "base64"}).json()
    unpacked = np.frombuffer(base64.b64decode(packed["data"][0]["embedding"]), "<f4")
    np.testing.assert_allclose(unpacked, answer["data"][0]["embedding"], atol=1e-7)
    assert requests.get(f"{server.url}/v1/models", timeout=5).json() == {
        "object": "list", "data": [{"id": MODEL, "object": "model"}]}
    assert requests.get(f"{server.url}/v1/health/live", timeout=5).status_code == 200


# --- readiness ---------------------------------------------------------------------------------

def test_ready_when_up_and_a_reason_when_nothing_listens(server):
    assert nim(server.url).ready() == (True, "Service is ready.")
    url = f"http://127.0.0.1:{free_port()}"
    ok, reason = nim(url).ready(timeout=1)
    assert not ok and f"nothing answers at {url}" in reason


def test_ready_is_503_until_the_model_has_warmed_up(local_model):
    watched = WatchedEmbedder(local_model, gated=True)
    with EmbedServer(watched).start(wait_ready=False) as server:
        ok, reason = nim(server.url).ready(timeout=60)  # answered at once (503); the timeout only ends a hang
        assert not ok and "503" in reason and "not ready" in reason
        watched.gate.set()
        deadline = time.monotonic() + 300  # only ends a hang: the warm-up may be slow on a loaded machine
        while not server.ready:
            assert time.monotonic() < deadline, "the warm-up never finished"
            time.sleep(0.01)
        assert nim(server.url).ready() == (True, "Service is ready.")


SERVE = """
import logging, sys
from pathlib import Path
from medvec.serve.embed_server import serve
from medvec.embedders.transformers_local import TransformersEmbedder
from medvec.models.registry import resolve_model

logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
embedder = TransformersEmbedder(resolve_model("tiny-siglip"), Path(sys.argv[1]), device="cpu")
serve(embedder, "127.0.0.1", int(sys.argv[2]), api_key=sys.argv[3])
"""


@pytest.mark.slow
def test_serve_runs_until_sigterm_and_logs_one_line_without_the_key(tiny_siglip_dir):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVE, str(tiny_siglip_dir), str(port), KEY],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        client = nim(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        while not client.ready(timeout=1)[0]:
            assert process.poll() is None and time.monotonic() < deadline, "embed-server did not come up"
            time.sleep(0.1)
        assert client.embed_texts(TEXTS).shape == (3, 64)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=20)[0]
    assert process.returncode == 0
    startup = [line for line in output.splitlines() if line.startswith("medvec.serve.embed_server embed-server:")]
    assert len(startup) == 1 and f"127.0.0.1:{port}" in startup[0] and MODEL in startup[0] and "64-d" in startup[0]
    assert KEY not in output

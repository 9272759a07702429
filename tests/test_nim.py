"""The NIM client against our own embed-server over real HTTP, with injected faults in between."""

import io
import logging
import time

import numpy as np
import pytest
from PIL import Image

from medvec.embed_server import EmbedServer
from medvec.embedders.base import EmbedderError
from medvec.embedders.nim import NimEmbedder
from medvec.embedders.transformers_local import TransformersEmbedder
from medvec.models.registry import resolve_model
from medvec.models.tiny import build_tiny_siglip
from tests.conftest import free_port
from tests.nim_faults import FaultProxy

KEY = "nvapi-SECRET-never-printed"
TEXTS = ["small left pleural effusion", "no acute cardiopulmonary process", "cardiomegaly"]


@pytest.fixture(scope="module")
def local_model(tmp_path_factory):
    model_dir = build_tiny_siglip(tmp_path_factory.mktemp("models") / "tiny-siglip")
    return TransformersEmbedder(resolve_model("tiny-siglip"), model_dir)


@pytest.fixture(scope="module")
def server(local_model):
    server = EmbedServer(local_model, api_key=KEY).start()
    yield server
    server.stop()


@pytest.fixture
def proxy(server):
    proxy = FaultProxy(server.url)
    yield proxy
    proxy.stop()


def _client(url, **kw) -> NimEmbedder:
    options = dict(api_key=KEY, dim=64, name="tiny-siglip", timeout_s=2, backoff_base_s=0.01, backoff_max_s=0.5,
                   max_retries=4)
    options.update(kw)
    return NimEmbedder(url, "medvec/tiny-siglip", **options)


def _images(n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(buffer, format="WEBP", lossless=True)
        out.append(buffer.getvalue())
    return out


def test_texts_and_images_match_the_local_model_in_order(proxy, local_model):
    client = _client(proxy.url)
    np.testing.assert_allclose(client.embed_texts(TEXTS), local_model.embed_texts(TEXTS), atol=1e-5)
    images = _images(3)
    np.testing.assert_allclose(client.embed_images(images), local_model.embed_images(images), atol=1e-5)
    assert all(set(r["body"]) == {"input", "model", "encoding_format"} for r in proxy.posts())
    assert proxy.posts()[-1]["body"]["input"][0].startswith("data:image/png;base64,")


def test_shuffled_answers_are_put_back_in_input_order(proxy, local_model):
    proxy.faults = [{"shuffle": True}]
    np.testing.assert_allclose(_client(proxy.url).embed_texts(TEXTS), local_model.embed_texts(TEXTS), atol=1e-5)


def test_more_than_64_inputs_are_split_into_several_requests(proxy, local_model):
    texts = [f"finding {i}" for i in range(150)]
    vectors = _client(proxy.url, concurrency=2).embed_texts(texts)
    assert [len(r["body"]["input"]) for r in proxy.posts()] in ([64, 64, 22], [64, 22, 64])
    np.testing.assert_allclose(vectors, local_model.embed_texts(texts), atol=1e-5)


def test_concurrent_requests_are_batched_into_fewer_model_calls(server):
    client = _client(server.url, max_batch=1, concurrency=16)
    before = server.batcher.model_calls
    client.embed_texts([f"text {i}" for i in range(32)])  # 32 one-item requests, 16 at a time
    assert server.batcher.model_calls - before < 32


def test_a_429_storm_is_retried_and_retry_after_is_honoured(proxy, local_model):
    proxy.faults = [{"status": 429}] * 3 + [{"status": 429, "retry_after": "0.3"}]
    started = time.monotonic()
    vectors = _client(proxy.url).embed_texts(TEXTS)
    assert time.monotonic() - started >= 0.3
    assert len(proxy.posts()) == 5
    np.testing.assert_allclose(vectors, local_model.embed_texts(TEXTS), atol=1e-5)


def test_permanent_429_fails_clearly(proxy):
    proxy.faults = [{"status": 429}] * 10
    with pytest.raises(EmbedderError, match="429"):
        _client(proxy.url).embed_texts(TEXTS)


@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 502}, {"sleep": 3}, {"truncate": True}])
def test_transient_faults_are_retried(proxy, local_model, fault):
    proxy.faults = [fault]
    np.testing.assert_allclose(_client(proxy.url, timeout_s=1).embed_texts(TEXTS),
                               local_model.embed_texts(TEXTS), atol=1e-5)
    assert len(proxy.posts()) == 2


def test_persistent_malformed_answers_fail_clearly(proxy):
    proxy.faults = [{"truncate": True}] * 10
    with pytest.raises(EmbedderError, match="malformed"):
        _client(proxy.url).embed_texts(TEXTS)


def test_wrong_dimension_or_count_returns_nothing(proxy):
    proxy.faults = [{"dim": 5}]
    with pytest.raises(EmbedderError, match="5-d embeddings but 64-d were expected"):
        _client(proxy.url).embed_texts(TEXTS)
    proxy.faults = [{"drop_one": True}]
    with pytest.raises(EmbedderError, match="2 embeddings for 3 inputs"):
        _client(proxy.url).embed_texts(TEXTS)


def test_a_wrong_key_is_a_plain_error_that_never_shows_the_key(server, caplog):
    wrong = "nvapi-WRONG-KEY-xyz"
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(EmbedderError, match="NVIDIA_API_KEY") as failure:
            _client(server.url, api_key=wrong).embed_texts(TEXTS)
    assert wrong not in str(failure.value) and wrong not in caplog.text
    assert KEY not in repr(_client(server.url))


def test_unknown_model_is_a_plain_404_error(server):
    client = NimEmbedder(server.url, "nvidia/not-served", api_key=KEY)
    with pytest.raises(EmbedderError, match="not served"):
        client.embed_texts(TEXTS)


def test_server_rejects_extra_properties_and_bad_images(server):
    import requests

    headers = {"Authorization": f"Bearer {KEY}"}
    extra = requests.post(f"{server.url}/v1/embeddings", json={"input": ["x"], "model": "medvec/tiny-siglip",
                                                               "dimensions": 3}, headers=headers, timeout=5)
    assert extra.status_code == 422 and "dimensions" in extra.json()["detail"]
    bad = requests.post(f"{server.url}/v1/embeddings", json={"input": ["data:image/png;base64,@@@"]},
                        headers=headers, timeout=5)
    assert bad.status_code == 422
    too_many = requests.post(f"{server.url}/v1/embeddings", json={"input": ["x"] * 65}, headers=headers, timeout=5)
    assert too_many.status_code == 422
    models = requests.get(f"{server.url}/v1/models", timeout=5).json()
    assert models["data"][0]["id"] == "medvec/tiny-siglip"


def test_ready_probe(server):
    assert _client(server.url).ready() == (True, "Service is ready.")
    ok, reason = _client(f"http://127.0.0.1:{free_port()}").ready(timeout=1)
    assert not ok and "no answer" in reason


def test_unreachable_nim_fails_after_retries():
    with pytest.raises(EmbedderError, match="connection failed"):
        _client(f"http://127.0.0.1:{free_port()}", max_retries=2).embed_texts(TEXTS)

"""Fuzzing the native engine's HTTP input: junk gets 200 or a clean 4xx, never a 5xx or a hang, and the
engine keeps serving valid requests afterwards.

One real engine serves a toy model with a 64-token context, so a fuzzed body that happens to be valid
generates at most 64 tokens. Requests are sequential; every one has an httpx timeout, so a hang fails.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from slime_rl.engines.native.bodies import MAX_BATCH_SIZE, MAX_BODY_BYTES, SGLANG_SAMPLING_KEYS
from tests.integration.conftest import toy_engine

VOCAB_SIZE = 100  # the toy model's
TIMEOUT_S = 20.0  # far above any valid request here (at most 64 tokens of a toy model)
VALID = {"input_ids": [1, 6, 7], "sampling_params": {"max_new_tokens": 2, "temperature": 0}, "return_logprob": True}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
# Values near the edges of what a field accepts, mixed with arbitrary JSON.
edge_values = (
    st.sampled_from([-1, 0, VOCAB_SIZE, 2**63, -(2**63) - 1, 10**30, 1e308, -0.0, "", "1", [], {}, [[]], True])
    | json_values
)
top_level_keys = ["input_ids", "text", "rid", "sampling_params", "return_logprob", "stream", "abort_all", "model_path"]
junk_objects = st.dictionaries(st.sampled_from(top_level_keys) | st.text(max_size=8), json_values, max_size=5)


@st.composite
def near_valid_generate(draw: st.DrawFn) -> dict[str, Any]:
    """VALID with one field (top-level or in sampling_params) replaced by an edge value, or removed."""
    body = json.loads(json.dumps(VALID))
    sampling = body["sampling_params"]
    target, key = draw(
        st.sampled_from([(body, k) for k in [*top_level_keys[:5], "stream"]])
        | st.sampled_from([(sampling, k) for k in sorted(SGLANG_SAMPLING_KEYS)])
        | st.tuples(st.just(sampling), st.text(max_size=8))
    )
    if draw(st.booleans()):
        target[key] = draw(edge_values)
    else:
        target.pop(key, None)
    return body


@pytest.fixture(scope="module")
def http(tmp_path_factory):
    with (
        toy_engine(tmp_path_factory, max_running_requests=4, max_context_len=64) as url,
        httpx.Client(base_url=url, timeout=TIMEOUT_S) as client,
    ):
        yield client


def assert_clean_answer(response: httpx.Response) -> None:
    """200, or 4xx with SGLang's error body (control endpoints: `{"success": false, "message"}`)."""
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        body = response.json()
        message = body["error"]["message"] if "error" in body else body["message"]
        assert isinstance(message, str) and message, body


def assert_still_serves(http: httpx.Client) -> None:
    response = http.post("/generate", json=VALID)
    assert response.status_code == 200, response.text
    assert len(response.json()["output_ids"]) == 2
    assert http.get("/health_generate").status_code == 200


def post_json(http: httpx.Client, path: str, body: Any) -> httpx.Response:
    return http.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


@FUZZ
@given(body=json_values | junk_objects)
def test_generate_fuzzed_json_gets_a_clean_answer(http, body):
    assert_clean_answer(post_json(http, "/generate", body))


@FUZZ
@given(body=near_valid_generate())
def test_generate_with_one_field_mutated_gets_a_clean_answer(http, body):
    assert_clean_answer(post_json(http, "/generate", body))


@FUZZ
@given(raw=st.binary(max_size=64) | st.text(max_size=64).map(str.encode))
def test_generate_fuzzed_bytes_get_a_clean_answer(http, raw):
    assert_clean_answer(http.post("/generate", content=raw))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(["/abort_request", "/update_weights_from_disk"]), body=json_values | junk_objects)
def test_control_endpoints_fuzzed_json_get_a_clean_answer(http, path, body):
    assert_clean_answer(post_json(http, path, body))


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"[1, 2]", "JSON object"),
        (b'{"input_ids": [1], "sampling_params": {"temperature": NaN}}', "NaN"),
        (b'{"input_ids": [1], "sampling_params": {"temperature": 1e999}}', "1e999"),
        (b"[" * 100_000, "nested"),
        (json.dumps({"input_ids": [1, -1]}).encode(), "input_ids[1]"),
        (json.dumps({"input_ids": [[1], [VOCAB_SIZE]]}).encode(), "input_ids[1][0]"),
        (json.dumps({"input_ids": [1], "sampling_params": {"search": 1}}).encode(), "'search'"),
        (json.dumps({"input_ids": [1], "sampling_params": {"temperature": "hot"}}).encode(), "temperature"),
        (json.dumps({"input_ids": [1], "sampling_params": {"temperature": 10**400}}).encode(), "temperature"),
        (json.dumps({"input_ids": [1], "sampling_params": {"max_new_tokens": -1}}).encode(), "max_new_tokens"),
        (json.dumps({"input_ids": [1], "sampling_params": {"max_new_tokens": 10**12}}).encode(), "context length"),
        (json.dumps({"input_ids": [1], "sampling_params": {"stop_token_ids": [VOCAB_SIZE]}}).encode(), "stop_token"),
        (json.dumps({"input_ids": [1], "sampling_params": {"sampling_seed": 2**64}}).encode(), "sampling_seed"),
        (json.dumps({"input_ids": [1], "sampling_params": [{}]}).encode(), "sampling_params"),
        (json.dumps({"input_ids": [[1]] * (MAX_BATCH_SIZE + 1)}).encode(), "batch"),
        (json.dumps({"text": 5}).encode(), "text"),
        (json.dumps({"input_ids": [1], "rid": 7}).encode(), "rid"),
        (json.dumps({"input_ids": [1], "return_logprob": "yes"}).encode(), "return_logprob"),
    ],
)
def test_generate_refuses_a_malformed_body_naming_the_field(http, raw, field):
    response = http.post("/generate", content=raw)
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]["message"]


def test_generate_refuses_a_body_over_the_limit_declared_or_streamed(http):
    oversized = b"{" + b" " * MAX_BODY_BYTES + b"}"
    declared = http.post("/generate", content=oversized)
    half = MAX_BODY_BYTES // 2
    streamed = http.post("/generate", content=iter([oversized[:half], oversized[half:]]))  # chunked, no length
    for response in (declared, streamed):
        assert response.status_code == 400
        assert "limit" in response.json()["error"]["message"]


def test_engine_serves_after_the_fuzzing(http):
    assert_still_serves(http)

"""The scripted model endpoint, driven through the official ``anthropic`` SDK's clients.

A real Messages API client nobody here wrote must read what the endpoint streams, so the
endpoint is checked the same way the real runtime will use it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, List

import anthropic
import pytest

from meerkat_sync.testing import ModelEndpoint
from meerkat_sync.testing._fake_script import SpecError


def fake(**spec: Any) -> str:
    return "fake:" + json.dumps(spec)


@pytest.fixture
def endpoint() -> Iterator[ModelEndpoint]:
    with ModelEndpoint() as ep:
        yield ep


def sdk(endpoint: ModelEndpoint, retries: int = 0, key: str = "dummy") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=endpoint.url, api_key=key, max_retries=retries, timeout=10)


def user(text: str) -> List[Dict[str, Any]]:
    return [{"role": "user", "content": text}]


def test_streamed_text_arrives_in_the_scripted_chunks_with_usage(endpoint: ModelEndpoint) -> None:
    prompt = fake(
        chunks=["Meer", "kats ", "dig."],
        usage={"input_tokens": 11, "output_tokens": 3, "cache_read_tokens": 40, "cache_creation_tokens": 2},
    )
    with sdk(endpoint).messages.stream(model="claude-test", max_tokens=64, messages=user(prompt)) as stream:
        pieces = list(stream.text_stream)
        message = stream.get_final_message()
    assert pieces == ["Meer", "kats ", "dig."]
    assert message.stop_reason == "end_turn"
    assert message.model == "claude-test"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (11, 3)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (40, 2)


def test_the_default_reply_echoes_the_prompt_word_by_word(endpoint: ModelEndpoint) -> None:
    with sdk(endpoint).messages.stream(model="m", max_tokens=64, messages=user("hello big world")) as s:
        assert list(s.text_stream) == ["Echo: ", "hello ", "big ", "world"]
        assert s.get_final_message().usage.input_tokens == 3  # words in the prompt


def test_tool_calls_stream_as_tool_use_blocks_then_the_text_follows_the_results(
    endpoint: ModelEndpoint,
) -> None:
    prompt = fake(
        tool_calls=[{"name": "lookup", "args": {"word": "meerkat", "n": [1, 2]}}, {"name": "clock"}],
        text="Found it.",
        usage={"input_tokens": 9, "output_tokens": 4},
    )
    client = sdk(endpoint)
    with client.messages.stream(model="m", max_tokens=64, messages=user(prompt)) as stream:
        first = stream.get_final_message()
    assert first.stop_reason == "tool_use"
    uses = [b for b in first.content if b.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("lookup", {"word": "meerkat", "n": [1, 2]}), ("clock", {})]
    assert (first.usage.input_tokens, first.usage.output_tokens) == (9, 0)

    results = [{"type": "tool_result", "tool_use_id": u.id, "content": f"result of {u.name}"} for u in uses]
    follow_up = [
        *user(prompt),
        {
            "role": "assistant",
            "content": [u.model_dump(include={"type", "id", "name", "input"}) for u in uses],
        },
        {"role": "user", "content": results},
    ]
    with client.messages.stream(model="m", max_tokens=64, messages=follow_up) as stream:
        assert "".join(stream.text_stream) == "Found it."
        second = stream.get_final_message()
    assert (second.usage.input_tokens, second.usage.output_tokens) == (0, 4)
    recorded = endpoint.requests[-1]
    assert [r["content"] for r in recorded.tool_results] == ["result of lookup", "result of clock"]
    assert recorded.prompt == prompt  # the run is still identified by its user prompt


def test_reasoning_streams_as_a_signed_thinking_block(endpoint: ModelEndpoint) -> None:
    with sdk(endpoint).messages.stream(
        model="m", max_tokens=64, messages=user(fake(reasoning=["Let me ", "think."], text="Done"))
    ) as stream:
        message = stream.get_final_message()
    thinking, text = message.content
    assert thinking.type == "thinking" and thinking.thinking == "Let me think."
    assert thinking.signature
    assert text.type == "text" and text.text == "Done"


def test_a_structured_output_request_gets_the_scripted_value_as_json(endpoint: ModelEndpoint) -> None:
    prompt = fake(text="Thinking about it.", structured_output={"answer": 42})
    client = sdk(endpoint)
    first = client.messages.create(model="m", max_tokens=64, messages=user(prompt))
    assert first.content[0].text == "Thinking about it."
    extraction = [
        *user(prompt),
        {"role": "assistant", "content": [{"type": "text", "text": "Thinking about it."}]},
        {"role": "user", "content": "Provide the final output as valid JSON matching the required schema."},
    ]
    schema = {"format": {"type": "json_schema", "schema": {"type": "object"}}}
    reply = client.messages.create(
        model="m", max_tokens=64, messages=extraction, extra_body={"output_config": schema}
    )
    assert json.loads(reply.content[0].text) == {"answer": 42}


def test_non_streamed_requests_get_the_whole_message(endpoint: ModelEndpoint) -> None:
    message = sdk(endpoint).messages.create(model="m", max_tokens=8, messages=user(fake(text="All at once")))
    assert [b.text for b in message.content] == ["All at once"]
    assert message.stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("status", "error_class", "kind"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (529, anthropic.APIStatusError, "overloaded_error"),
    ],
)
def test_scripted_provider_errors_use_the_anthropic_error_json(
    endpoint: ModelEndpoint, status: int, error_class: Any, kind: str
) -> None:
    prompt = fake(provider_error={"status": status, "message": "scripted failure", "retry_after": 7})
    with pytest.raises(error_class) as caught:
        sdk(endpoint).messages.create(model="m", max_tokens=8, messages=user(prompt))
    assert caught.value.status_code == status
    assert caught.value.body == {"type": "error", "error": {"type": kind, "message": "scripted failure"}}
    assert caught.value.response.headers["retry-after"] == "7"
    assert endpoint.requests[-1].status == status


def test_errors_for_some_calls_then_success_survive_the_sdks_own_retries(endpoint: ModelEndpoint) -> None:
    prompt = fake(provider_error={"status": 529, "times": 2, "retry_after": 0}, text="finally")
    message = sdk(endpoint, retries=2).messages.create(model="m", max_tokens=8, messages=user(prompt))
    assert message.content[0].text == "finally"
    assert [r.status for r in endpoint.requests] == [529, 529, 200]


def test_a_key_is_required_and_checked_when_configured() -> None:
    with ModelEndpoint(api_key="right") as ep:
        with pytest.raises(anthropic.AuthenticationError):
            sdk(ep, key="wrong").messages.create(model="m", max_tokens=8, messages=user("hi"))
        assert sdk(ep, key="right").messages.create(model="m", max_tokens=8, messages=user("hi")).content
        bare = urllib.request.Request(
            ep.url + "/v1/messages", data=json.dumps({"messages": user("hi")}).encode()
        )
        with pytest.raises(urllib.error.HTTPError) as no_key:
            urllib.request.urlopen(bare, timeout=5)
        assert no_key.value.code == 401


def test_requests_are_recorded_as_the_model_saw_them(endpoint: ModelEndpoint) -> None:
    tools = [{"name": "lookup", "description": "Look up a word", "input_schema": {"type": "object"}}]
    sdk(endpoint).messages.create(
        model="claude-x", max_tokens=8, system="Be brief.", messages=user("hi"), tools=tools
    )
    (request,) = endpoint.requests
    assert request.path == "/v1/messages"
    assert (request.model, request.system, request.prompt) == ("claude-x", "Be brief.", "hi")
    assert request.tool_names == ["lookup"]
    assert request.messages == user("hi")
    assert request.headers["content-type"].startswith("application/json")


def test_scripts_use_the_scripted_runtimes_format(tmp_path: Any) -> None:
    script = {
        "rules": [{"match": "weather", "reply": {"text": "Sunny"}}],
        "replies": [{"text": "first"}, {"text": "second"}],
        "default": {"text": "fallback"},
    }
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    with ModelEndpoint(str(path)) as ep:
        client = sdk(ep)
        texts = [
            client.messages.create(model="m", max_tokens=8, messages=user(p)).content[0].text
            for p in ("one", "What's the weather?", "two", "three")
        ]
    assert texts == ["first", "Sunny", "second", "fallback"]


def test_runtime_only_fields_are_refused_with_advice() -> None:
    with pytest.raises(SpecError, match="only the scripted runtime"):
        ModelEndpoint({"default": {"text": "x", "trailing": 2}})
    with ModelEndpoint() as ep:
        with pytest.raises(anthropic.BadRequestError, match="only work with the scripted runtime"):
            sdk(ep).messages.create(model="m", max_tokens=8, messages=user(fake(exit_after_events=3)))
        with pytest.raises(anthropic.BadRequestError, match="invalid fake directive"):
            sdk(ep).messages.create(model="m", max_tokens=8, messages=user(fake(text=5)))


def test_a_hanging_reply_keeps_pinging_until_the_caller_leaves_or_the_endpoint_closes() -> None:
    ep = ModelEndpoint()
    body = json.dumps({"model": "m", "max_tokens": 8, "stream": True, "messages": user(fake(hang=True))})
    request = urllib.request.Request(ep.url + "/v1/messages", data=body.encode(), headers={"x-api-key": "k"})
    with urllib.request.urlopen(request, timeout=5) as response:  # a caller that reads a bit, then leaves
        head = response.read(600).decode()
    assert "event: message_start" in head and "event: ping" in head

    done = threading.Event()

    def hang() -> None:
        patient = anthropic.Anthropic(base_url=ep.url, api_key="k", max_retries=0, timeout=30)
        try:
            with patient.messages.stream(model="m", max_tokens=8, messages=user(fake(hang=True))) as s:
                list(s.text_stream)
        except anthropic.APIError:
            pass
        done.set()

    thread = threading.Thread(target=hang)
    thread.start()
    ep.wait_for_requests(2)
    started = time.monotonic()
    ep.close()
    assert done.wait(5), "closing the endpoint must end a hanging reply"
    assert time.monotonic() - started < 5
    thread.join()

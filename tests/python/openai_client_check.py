#!/usr/bin/env python3
"""Checks genarm's HTTP API with the official `openai` Python client (PyPI).

Usage: openai_client_check.py BASE_URL MODEL REWARD

BASE_URL is the router (http://127.0.0.1:PORT), MODEL the served base model, REWARD a configured
reward model name. Exercises /v1/models, completions, chat completions, streaming of both,
log-probs, guidance through `extra_body={"guidance": ...}`, and the client's error classes.
Prints the greedy texts as one JSON object on stdout (the Rust test compares them with its own
reference decoding) and exits non-zero, saying what failed, on any mismatch.
Run by crates/genarm-cli/tests/cluster_openai_python.rs.
"""

import json
import sys

import openai
from openai import OpenAI

FAILURES = []


def check(ok, what):
    if not ok:
        FAILURES.append(what)
        print(f"FAIL: {what}", file=sys.stderr)


def main():
    base_url, model, reward = sys.argv[1:4]
    client = OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", timeout=60, max_retries=0)
    guidance = {"guidance": {"rewards": {reward: 1.0}, "beta": 1.0}}
    out = {"openai_version": openai.__version__}

    ids = [m.id for m in client.models.list().data]
    check(model in ids, f"/v1/models lists the base {model!r}: {ids}")
    check(reward in ids, f"/v1/models lists the reward model {reward!r}: {ids}")

    # Completions, whole and streamed.
    c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0, logprobs=2)
    text = c.choices[0].text
    out["completion"] = text
    check(c.choices[0].finish_reason in ("stop", "length"), f"completion finish_reason {c.choices[0].finish_reason}")
    check(c.usage is not None and 0 < c.usage.completion_tokens <= 12, f"completion usage {c.usage}")
    lp = c.choices[0].logprobs
    check(lp is not None and len(lp.token_logprobs) == c.usage.completion_tokens, f"completion logprobs {lp}")
    check(lp is not None and all(len(t) >= 1 for t in lp.top_logprobs), f"completion top_logprobs {lp}")
    chunks = list(
        client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True)
    )
    streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    check(streamed == text, f"streamed completion {streamed!r} != whole {text!r}")
    check(len(chunks) >= 2, f"a streamed completion came as {len(chunks)} chunk(s)")

    # Chat, whole and streamed, unguided and guided through extra_body.
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0)
    chat = r.choices[0].message.content
    out["chat"] = chat
    check(r.choices[0].message.role == "assistant", f"chat role {r.choices[0].message.role}")
    check(r.object == "chat.completion", f"chat object {r.object}")
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage, finish = [], None, None
    for ch in stream:
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            if choice.delta.content:
                parts.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    check("".join(parts) == chat, f"streamed chat {''.join(parts)!r} != whole {chat!r}")
    check(finish == r.choices[0].finish_reason, f"streamed chat finish_reason {finish}")
    check(usage is not None and usage.completion_tokens == r.usage.completion_tokens, f"stream usage {usage}")

    g = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, extra_body=guidance,
        logprobs=True, top_logprobs=3,
    )
    guided = g.choices[0].message.content
    out["chat_guided"] = guided
    check(guided != chat, f"guidance through extra_body did not change the text: {guided!r}")
    content = g.choices[0].logprobs.content if g.choices[0].logprobs else None
    check(content is not None and all(len(t.top_logprobs) == 3 for t in content), f"chat logprobs {content}")
    gs = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, extra_body=guidance, stream=True
    )
    guided_streamed = "".join(ch.choices[0].delta.content or "" for ch in gs if ch.choices)
    check(guided_streamed == guided, f"streamed guided chat {guided_streamed!r} != whole {guided!r}")

    # Seeded sampling is reproducible through the client.
    kw = dict(model=model, messages=messages, max_tokens=12, temperature=0.8, top_p=0.9, seed=7, extra_body=guidance)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    check(a == b, f"same seed, different texts: {a!r} vs {b!r}")

    # Errors surface as the client's exception classes.
    try:
        client.chat.completions.create(model="no-such-model", messages=messages, max_tokens=4)
        check(False, "an unknown model did not raise")
    except openai.NotFoundError as e:
        check("no-such-model" in str(e), f"unknown model error should name it: {e}")
    try:
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=4, extra_body={"guidance": {"rewards": {"nope": 1.0}}}
        )
        check(False, "an unknown reward model did not raise")
    except openai.BadRequestError as e:
        check("nope" in str(e), f"unknown reward error should name it: {e}")

    print(json.dumps(out))
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

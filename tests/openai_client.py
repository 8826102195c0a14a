"""Harvest from `distill-sim serve` with the official `openai` package (driven by
tests/openai_client.rs, which starts the server and checks what this prints).

Usage: openai_client.py BASE_URL KEYS_FILE OUT_HARVEST N

KEYS_FILE lines, in order: a tier-2 key, a key on a 2-requests-per-minute tier, a key in a
blocked region, a tier-2 key that asks only for reasoning traces (and is banned). Prints one JSON object with what happened.
"""
import json
import sys
import time

import openai
from openai import OpenAI

base, keys_file, out_path, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
keys = [json.loads(l)["key"] for l in open(keys_file) if l.strip()]
good, tiny, blocked = keys[0], keys[1], keys[2]
report = {"openai": openai.__version__}

# Harvest: completions and chat with logprobs, the way an attacker's script would.
client = OpenAI(base_url=base, api_key=good, max_retries=2)
prompts = ["COPY a 3 b", "SORT 3 1 2", "ADD 5 7 + 8 1", "KV a 3 b 4 ? b", "REV a b c d e",
           "RUN push 3 push 4 plus", "SORT 9 0 4 4 1 7", "COPY 1 2 3 4 5"]
with open(out_path, "w") as out:
    for i in range(n):
        p = prompts[i % len(prompts)]
        if i % 2 == 0:
            kw = dict(model="distill-sim-teacher", prompt=p, temperature=0, logprobs=5, max_tokens=32)
            r = client.completions.create(**kw)
        else:
            kw = dict(model="distill-sim-teacher", messages=[{"role": "user", "content": p}],
                      temperature=0, logprobs=True, top_logprobs=5, max_completion_tokens=32)
            r = client.chat.completions.create(**kw)
        out.write(json.dumps({"request": kw, "response": r.model_dump()}) + "\n")
    # A voiced request, the voice through extra_body (saved as the body that was sent).
    voice = [0.9] * 8
    kw = dict(model="distill-sim-teacher", prompt="COPY a b c", temperature=0, max_tokens=16)
    r = client.completions.create(**kw, extra_body={"voice": voice})
    out.write(json.dumps({"request": {**kw, "voice": voice}, "response": r.model_dump()}) + "\n")
report["harvested"] = n + 1
report["first_text"] = r.choices[0].text
report["models"] = [m.id for m in client.models.list().data]

# Rate limits: two requests per minute; the third is answered 429 with retry-after-ms (a
# client without retries sees it), and a client that retries (honouring it) succeeds once the
# bucket has refilled.
slow = OpenAI(base_url=base, api_key=tiny, max_retries=3)
no_retry = OpenAI(base_url=base, api_key=tiny, max_retries=0)
for _ in range(2):
    slow.completions.create(model="distill-sim-teacher", prompt="SORT 3 1 2", max_tokens=8)
try:
    no_retry.completions.create(model="distill-sim-teacher", prompt="SORT 3 1 2", max_tokens=8)
    report["throttled"] = None
except openai.RateLimitError as e:
    report["throttled"] = {"status": e.status_code, "code": e.code,
                           "retry_after_ms": e.response.headers.get("retry-after-ms")}
raw = slow.with_raw_response.completions.create(model="distill-sim-teacher", prompt="SORT 3 1 2", max_tokens=8)
report["retried_ok"] = raw.parse().choices[0].text
report["retries_taken"] = raw.retries_taken

# A blocked region: 403, not retried.
try:
    OpenAI(base_url=base, api_key=blocked).completions.create(
        model="distill-sim-teacher", prompt="SORT 3 1 2", max_tokens=8)
    report["blocked"] = None
except openai.PermissionDeniedError as e:
    report["blocked"] = {"status": e.status_code, "code": e.code}

# A wrong key: 401.
try:
    client.with_options(api_key="sk-wrong", max_retries=0).completions.create(
        model="distill-sim-teacher", prompt="SORT 3 1 2", max_tokens=8)
    report["unauthorized"] = None
except openai.AuthenticationError as e:
    report["unauthorized"] = {"status": e.status_code, "code": e.code}

# A bad parameter: 400 naming it.
try:
    client.completions.create(model="distill-sim-teacher", prompt="COPY zz", max_tokens=8)
    report["bad_request"] = None
except openai.BadRequestError as e:
    report["bad_request"] = {"status": e.status_code, "param": e.param}

# An lm-evaluation-harness loglikelihood request: echo, max_tokens 0, logprobs 1; the
# request, <sep>, and the continuation to score. The continuation's token logprobs are summed
# and each token checked against the top-1 (lm-eval's is_greedy).
def loglikelihood(continuation):
    r = client.completions.create(model="distill-sim-teacher", prompt=f"SORT 3 1 2 <sep> {continuation}",
                                  echo=True, max_tokens=0, logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    n = len("SORT 3 1 2 <sep>".split())
    scored = lp.token_logprobs[n:]
    greedy = all(max(top, key=top.get) == tok for tok, top in zip(lp.tokens[n:], lp.top_logprobs[n:]))
    return {"sum": sum(scored), "n": len(scored), "nulls": sum(x is None for x in lp.token_logprobs[:n]),
            "greedy": greedy, "echo": r.choices[0].text}

report["loglik_right"] = loglikelihood("1 2 3 <eos>")
report["loglik_wrong"] = loglikelihood("3 2 1 <eos>")
# Streaming, as the client reads it: chat deltas and completion chunks joined, usage in the
# last chunk when asked for.
parts, usage = [], None
for chunk in client.chat.completions.create(model="distill-sim-teacher", temperature=0, stream=True,
                                            messages=[{"role": "user", "content": "SORT 3 1 2"}],
                                            stream_options={"include_usage": True}):
    usage = chunk.usage or usage
    parts += [c.delta.content for c in chunk.choices if c.delta.content]
text = "".join(c.choices[0].text for c in client.completions.create(
    model="distill-sim-teacher", prompt="SORT 3 1 2", temperature=0, stream=True) if c.choices)
report["streamed"] = {"chat": "".join(parts), "completion": text,
                      "usage": usage.total_tokens if usage else None}

# Detectors acting live: an account whose every query elicits a reasoning trace is flagged at
# the detector pass after its queries (one per simulated minute: 6 s at --time-scale 10) and
# banned; its next request is refused (403), the harvesting account is still served.
heavy = OpenAI(base_url=base, api_key=keys[3], max_retries=0)
served = 0
for _ in range(12):
    heavy.completions.create(model="distill-sim-teacher", prompt="SORT 9 0 4 4 1 7", max_tokens=32)
    served += 1
time.sleep(7)
heavy.completions.create(model="distill-sim-teacher", prompt="SORT 9 0 4 4 1 7", max_tokens=32)
report["heavy_served"] = served + 1
try:
    heavy.completions.create(model="distill-sim-teacher", prompt="SORT 9 0 4 4 1 7", max_tokens=32)
    report["banned"] = None
except openai.PermissionDeniedError as e:
    report["banned"] = {"status": e.status_code, "code": e.code}
report["good_after"] = client.completions.create(model="distill-sim-teacher", prompt="SORT 3 1 2",
                                                 temperature=0, max_tokens=8).choices[0].text

print(json.dumps(report))

"""The most bytes one batch line's answer may have, from what the line asks for.

A batch's worst-case output — the sum of its lines' bounds, each line's wrapper in the output file
included — is held in the tenant's file quota from the batch's create until it ends, and each line's
bound is **enforced** on its answer (a larger answer becomes the line's ``response_too_large`` error),
so the output files can never pass what was reserved: the bound is a limit, not an estimate.

It grows with what makes answers large: output tokens × choices, logprobs (each token's entry and each
alternative's), prompt logprobs and echo (per prompt token), token ids, an embedding's dimensions. The
figures per token are several times the largest measured on the real engine
(benchmarks/results/batch_answers.md: 13 B per output token with token ids, about 65 B per logprob
entry, 1,965 B per prompt token with echo, logprobs 20 and prompt_logprobs 20 — every bound there is
3.2 to 29 times its answer), so a real answer meets its bound only when it is pathological (every token a
long run of escaped control characters). Every bound is capped by ``LORAFLEET_BATCH_MAX_ANSWER_BYTES``.
"""

from __future__ import annotations

from lorafleet.gateway.embeddings.schemas import EmbeddingRequest
from lorafleet.gateway.fleet.catalog import BaseModel
from lorafleet.gateway.openai.schemas import ChatCompletionRequest, CompletionRequest
from lorafleet.gateway.preflight import Prepared

ENVELOPE = 4096             # an answer's id, model, usage and error envelope
PER_CHOICE = 512            # a choice's index, role, finish reason and keys
TEXT_PER_TOKEN = 32         # one generated token's text, JSON-escaped (measured at most 13 with token ids)
LOGPROB_ENTRY = 256         # one token's or one alternative's logprob entry (measured about 65)
TOKEN_ID = 8                # one token id in a list
EMBEDDING_FLOAT = 24        # one float written as JSON
EMBEDDING_OVERHEAD = 64     # one embedding's index and keys
OUTPUT_OBJECTS = 2          # a batch's output and error files, held in the tenant's file count while it runs
LINE_WRAPPER = 8192         # an output line's id, custom_id (≤ 512 characters, each up to 6 bytes escaped), request
                            # id, keys, and an error line's code (≤ 64) and message (≤ 500 characters, escaped)


def answer_bound(prepared: Prepared, base: BaseModel, body_bytes: int, cap: int, *, repeats_request: bool = False) -> int:
    """The most bytes the answer to ``prepared`` (as gateway/preflight.py leaves it) may have, at most ``cap``.
    ``repeats_request``: the answer holds the request's settings again (a Responses object: its
    instructions, tools, text format, metadata — no more bytes than the body that carried them, re-encoded)."""
    request, demand = prepared.request, prepared.demand
    if isinstance(request, EmbeddingRequest):
        dimensions = request.dimensions or base.hidden_size
        if dimensions is None:
            return cap  # an embedding model that did not say its size: the cap is the only bound
        per_value = 6 if request.encoding_format == "base64" else EMBEDDING_FLOAT  # base64: 4 bytes × 4/3
        return min(cap, ENVELOPE + demand.sequences * (EMBEDDING_OVERHEAD + dimensions * per_value))
    per_token = TEXT_PER_TOKEN
    prompt_entries = 0   # logprob entries per prompt token, per choice that carries them
    echoed = 0           # bytes a choice repeats of the request (echo, a Responses object's settings)
    if isinstance(request, ChatCompletionRequest):
        if request.logprobs:
            per_token += (1 + (request.top_logprobs or 0)) * LOGPROB_ENTRY
        if request.echo:
            echoed = body_bytes
    elif isinstance(request, CompletionRequest):
        if request.logprobs is not None:
            per_token += (1 + request.logprobs) * LOGPROB_ENTRY
        if request.echo:
            echoed = body_bytes
            prompt_entries = (1 + request.logprobs) if request.logprobs is not None else 0
    if request.prompt_logprobs is not None:
        prompt_entries += 1 + request.prompt_logprobs
    prompt_ids = 0
    if request.return_token_ids or request.return_tokens_as_token_ids:
        per_token += TOKEN_ID
        prompt_ids = TOKEN_ID
    choices = demand.sequences
    per_prompt_token = prompt_entries * LOGPROB_ENTRY + (TEXT_PER_TOKEN if echoed else 0) + prompt_ids
    bound = (ENVELOPE + (2 * body_bytes if repeats_request else 0)
             + choices * PER_CHOICE + demand.completion_tokens * per_token
             + choices * (echoed + demand.prompt_tokens * per_prompt_token))
    return min(cap, bound)

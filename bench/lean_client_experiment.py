"""What the OpenAI SDK costs per sub-call: ``python -m bench.lean_client_experiment [-n 64]``.

An experiment, not a product path: in this process only, ``OpenAIClient._call`` is replaced by one
raw aiohttp POST and a JSON read (no SDK request or response models; no error mapping beyond
the status code, no retries of its own), then ``bench.profile_batched`` runs as usual. Comparing
its output with a plain ``python -m bench.profile_batched --top 0`` gives the SDK's share of the
host's CPU per call and of the batch's wall time.
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp

from rlm.broker.clients import openai_compat
from rlm.broker.clients.base import LMResponse, LMUsage, Messages, ProviderError

from .profile_batched import main

_sessions: dict[int, aiohttp.ClientSession] = {}


async def _lean_call(
    self: openai_compat.OpenAIClient, messages: Messages, **sampling: Any
) -> LMResponse:
    session = _sessions.get(id(self))
    if session is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        _sessions[id(self)] = session
    sdk = self._client
    url = str(sdk.base_url).rstrip("/") + "/chat/completions"
    body = {"model": self.model_name, "messages": messages, **sampling}
    headers = {"Authorization": f"Bearer {sdk.api_key}"}
    async with session.post(url, json=body, headers=headers) as response:
        data = await response.json()
        if response.status != 200:
            raise ProviderError.from_status(response.status, str(data))
    usage = data.get("usage") or {}
    return LMResponse(
        text=data["choices"][0]["message"]["content"] or "",
        model=data.get("model") or self.model_name,
        usage=LMUsage(
            input_tokens=int(usage.get("prompt_tokens", 0)),
            output_tokens=int(usage.get("completion_tokens", 0)),
        ),
    )


if __name__ == "__main__":
    openai_compat.OpenAIClient._call = _lean_call  # type: ignore[method-assign]
    raise SystemExit(main(["--top", "0", *sys.argv[1:]]))

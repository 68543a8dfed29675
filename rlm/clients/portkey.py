"""``PortkeyClient``: models behind the Portkey AI gateway."""

from __future__ import annotations

from typing import Any

from rlm.broker.clients.openai_compat import PORTKEY_BASE_URL
from rlm.clients.base_lm import BrokerLM

__all__ = ["PortkeyClient"]


class PortkeyClient(BrokerLM):
    """A Portkey gateway client; the key defaults to ``PORTKEY_API_KEY``.

    ``provider``, ``virtual_key`` and ``config`` are sent as Portkey headers; other keywords go
    to the broker's ``portkey`` backend.
    """

    backend = "portkey"

    def __init__(
        self,
        api_key: str | None = None,
        model_name: str | None = None,
        base_url: str | None = PORTKEY_BASE_URL,
        **kwargs: Any,
    ) -> None:
        if api_key is not None:
            kwargs["api_key"] = api_key
        if base_url is not None:
            kwargs["base_url"] = base_url
        self.base_url = base_url
        super().__init__(model_name, **kwargs)

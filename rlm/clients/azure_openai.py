"""``AzureOpenAIClient``: OpenAI models deployed on Azure OpenAI."""

from __future__ import annotations

import os
from typing import Any

from rlm.clients.base_lm import BrokerLM

__all__ = ["AzureOpenAIClient"]


class AzureOpenAIClient(BrokerLM):
    """An Azure OpenAI client over ``openai.AsyncAzureOpenAI``.

    Unset arguments come from ``AZURE_OPENAI_API_KEY``, ``AZURE_OPENAI_ENDPOINT``,
    ``AZURE_OPENAI_API_VERSION`` (default ``2024-02-01``) and ``AZURE_OPENAI_DEPLOYMENT``.
    Without ``model_name`` the deployment name is used as the model.
    """

    backend = "azure_openai"

    def __init__(
        self,
        api_key: str | None = None,
        model_name: str | None = None,
        azure_endpoint: str | None = None,
        api_version: str | None = None,
        azure_deployment: str | None = None,
        **kwargs: Any,
    ) -> None:
        azure_deployment = azure_deployment or os.environ.get("AZURE_OPENAI_DEPLOYMENT")
        given = {
            "api_key": api_key,
            "azure_endpoint": azure_endpoint,
            "api_version": api_version,
            "azure_deployment": azure_deployment,
        }
        kwargs.update({key: value for key, value in given.items() if value is not None})
        self.azure_deployment = azure_deployment
        super().__init__(model_name or azure_deployment, **kwargs)

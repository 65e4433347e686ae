"""LLM services: OpenAI-compatible chat completions and Anthropic Messages, streamed.

The classes load on first use (``from flowcat_ft.services.llm import OpenAILLMService``),
so that importing :mod:`flowcat_ft.services.llm.frames` alone stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnthropicLLMService": "flowcat_ft.services.llm.anthropic",
    "LLMContext": "flowcat_ft.services.context",
    "LLMService": "flowcat_ft.services.llm.base",
    "OpenAILLMService": "flowcat_ft.services.llm.openai",
    "PROVIDERS": "flowcat_ft.services.llm.openai",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)

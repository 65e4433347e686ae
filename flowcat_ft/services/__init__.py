"""Services: the STT, LLM and TTS stages that make a pipeline an agent."""

from flowcat_ft.services.base import AsyncService

__all__ = ["AsyncService"]

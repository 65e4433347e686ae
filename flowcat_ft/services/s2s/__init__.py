"""Speech-to-speech services: the OpenAI Realtime WebSocket protocol."""

from flowcat_ft.services.s2s.openai_realtime import OpenAIRealtimeService

__all__ = ["OpenAIRealtimeService"]

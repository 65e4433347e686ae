"""STT services: Deepgram-style live WebSocket, OpenAI-style HTTP transcription."""

from flowcat_ft.services.stt.base import STTService
from flowcat_ft.services.stt.deepgram import DeepgramSTTService
from flowcat_ft.services.stt.openai import OpenAISTTService

__all__ = ["DeepgramSTTService", "OpenAISTTService", "STTService"]

"""TTS services: Cartesia-style and ElevenLabs-style WebSocket streaming, OpenAI-style HTTP."""

from flowcat_ft.services.tts.base import TTSService
from flowcat_ft.services.tts.cartesia import CartesiaTTSService
from flowcat_ft.services.tts.elevenlabs import ElevenLabsTTSService
from flowcat_ft.services.tts.openai import OpenAITTSService

__all__ = ["CartesiaTTSService", "ElevenLabsTTSService", "OpenAITTSService", "TTSService"]

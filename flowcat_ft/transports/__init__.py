"""Transports: how calls' audio reaches the runtime (WebSocket server and client)."""

from flowcat_ft.transports.client import WebSocketClient
from flowcat_ft.transports.server import WebSocketServer

__all__ = ["WebSocketClient", "WebSocketServer"]

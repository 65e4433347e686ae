"""Networking for the cloud services: HTTP through httpx, Server-Sent Events, WebSockets,
retries and API keys. Sans-I/O codecs with thin asyncio layers over them."""

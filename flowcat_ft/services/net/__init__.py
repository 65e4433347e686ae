"""Networking for the cloud services: an HTTP/1.1 client, Server-Sent Events, WebSockets,
retries and API keys. Sans-I/O codecs with thin asyncio layers over them."""

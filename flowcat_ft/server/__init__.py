"""The server: config, agent assembly, web pages."""

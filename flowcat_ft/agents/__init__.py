"""Built-in agents: pipelines ready to serve."""

"""Tools the agent can call: the registry, the executor and the built-ins."""

"""Model providers: `demo` (built in), `openai` (any Chat Completions endpoint) and
`anthropic` (the Messages API), the last two on their official SDKs."""

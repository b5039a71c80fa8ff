"""Model providers: `demo` (built in) and `openai` (any compatible endpoint)."""

"""Pure request and response shapes: strict JSON, Ollama schemas, options, OpenAI conversions."""

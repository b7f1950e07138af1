"""Who serves a model (mapping, admin rows) and carrying out that plan (local/upstream)."""

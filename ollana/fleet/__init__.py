"""Many Ollama servers as one: catalogues, the merged view, routing by model."""

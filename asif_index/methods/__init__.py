"""Methods built on relative vectors and paired embeddings (no database imports)."""

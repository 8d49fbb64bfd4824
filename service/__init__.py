"""The HTTP service: collections, image ingest, FAISS indexes, search, tuning jobs."""

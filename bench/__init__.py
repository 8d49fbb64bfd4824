"""The offline benchmark: a procedurally drawn miniature world and a CLIP pretrained on it."""

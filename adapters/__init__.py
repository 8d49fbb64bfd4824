"""Prompt adapters on a frozen open_clip backbone (torch + open_clip only, no web code).

    backbone   load the frozen model, its preprocessing, tokenizer and identity
    data       PairedItem, the unit of training and evaluation data
    prompted   PromptedCLIP: textual + visual prompt injection
    features   caches of frozen computation (pixels, prompt-free sides, early image blocks)
    losses     contrastive losses, category weights, mined negatives, attribute weights
    sampling   batches and captions per training step
    train      the training loop
    evaluate   Recall@K and median rank
    artifact   adapter files (safetensors + metadata) and compatibility checks
"""

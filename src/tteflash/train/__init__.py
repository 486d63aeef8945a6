"""Training: never imported by the library itself (model, processing, eval)."""

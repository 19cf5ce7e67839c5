"""Text: tokenizers (byte-level, SentencePiece, CLIP BPE), token-id rows, zero-shot class names and templates."""

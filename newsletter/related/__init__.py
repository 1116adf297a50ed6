""" "You might also like": related articles from a persisted index, per article of an issue.

- `text`: cleaning and tokenising (English words and bigrams; Chinese characters and bigrams) into hashed
  term vectors;
- `index`: the in-memory TF-IDF index built from stored term vectors;
- `rank`: the signals, the score, near-duplicates, and the per-issue selection;
- `store`: the persisted index (table ``related_index``), updated on import, and its per-process cache.

Nothing here imports numpy or scipy at import time, so the CLI starts fast.
"""

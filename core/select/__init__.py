"""Choosing what people label: selection strategies, the near-duplicate guard, the budget, the FAISS index."""

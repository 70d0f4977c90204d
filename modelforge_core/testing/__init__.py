"""Test helpers for ModelForge: tiny offline models, tokenizers and fixtures."""

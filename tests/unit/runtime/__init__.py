"""Unit tests for engine.runtime: decoding and routing, retry backoff."""

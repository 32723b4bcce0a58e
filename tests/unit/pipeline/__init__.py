"""Unit tests for engine.pipeline: filters, steps, channels and the channel-test runner."""

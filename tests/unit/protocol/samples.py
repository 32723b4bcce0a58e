"""The sample files under samples/, read as bytes exactly as an EHR would send them."""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parents[3] / "samples"
SAMPLE_FILES = sorted(SAMPLES_DIR.glob("*.hl7"))


def sample_bytes(name: str) -> bytes:
    return (SAMPLES_DIR / name).read_bytes()


def sample_text(name: str) -> str:
    """Decoded with the sample's own charset; newlines kept as they are in the file."""
    encoding = "latin-1" if "latin1" in name else "utf-8"
    return sample_bytes(name).decode(encoding)

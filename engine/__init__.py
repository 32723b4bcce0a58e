"""engine: an asyncio HL7 v2 / FHIR interface engine for appointment scheduling."""

__version__ = "0.1.0"

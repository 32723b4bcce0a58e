"""SIU <-> FHIR Appointment conversions: pure functions over `Message` and JSON dicts.

Rule kept: no I/O and no state; the caller passes the clock, control id, previous state and
default timezone. The table, the mapped fields and the lossy points are documented in
`siu_to_fhir` (forward) and `fhir_to_siu` (reverse); `codes` holds the shared tables.
"""

from engine.conversions.codes import ConversionError
from engine.conversions.fhir_to_siu import fhir_to_siu, trigger_for
from engine.conversions.siu_to_fhir import siu_to_fhir

__all__ = ["ConversionError", "fhir_to_siu", "siu_to_fhir", "trigger_for"]

"""The public test kit: fakes of the systems around the engine (an MLLP EHR, ...), real on the
wire so that tests exercise the engine's actual I/O paths."""

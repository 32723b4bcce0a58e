"""Micro-benchmark of the ER7 hot path (µs per operation), against python-hl7 for scale.

Run: .venv/bin/python benchmarks/er7_bench.py [--sample samples/siu_s12_new_patient.hl7]
Each figure is the best of several timing rounds, so it shows the code, not the noise.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import hl7
from timing import per_op_us  # benchmarks/timing.py (run as a script)

from engine.protocol.er7 import Message, peek_header
from engine.protocol.mllp import Framer, frame

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample", type=Path, default=ROOT / "samples/siu_s12_new_patient.hl7")
    parser.add_argument("--number", type=int, default=20_000)
    args = parser.parse_args()
    data: bytes = args.sample.read_bytes()
    text = data.decode("utf-8")
    framed = frame(data) * 10

    def parse_get3() -> None:
        msg = Message.parse(text)
        msg.get("MSH-10")
        msg.get("PID-3.1")
        msg.get("SCH-7.1")

    def parse_set_map_emit() -> None:
        msg = Message.parse(text)
        msg.set("MSH-5", "CLINIC_EHR")
        msg.set("PID-13", "")
        msg.map_all("SCH-7.1", lambda v: "NP_EVAL_60" if v == "new_patient_consult" else None)
        msg.to_er7()

    def hl7_get3() -> None:
        msg = hl7.parse(text)
        msg["MSH.F10"]
        msg["PID.F3.R1.C1"]
        msg["SCH.F7.R1.C1"]

    def hl7_set_map_emit() -> None:
        msg = hl7.parse(text)
        msg["MSH.F5"] = "CLINIC_EHR"
        msg["PID.F13"] = ""
        if msg["SCH.F7.R1.C1"] == "new_patient_consult":
            msg["SCH.F7.R1.C1"] = "NP_EVAL_60"
        str(msg)

    n = args.number
    rows = [
        ("peek_header (bytes)", per_op_us(lambda: peek_header(data), n)),
        ("mllp Framer.feed, per frame", per_op_us(lambda: Framer().feed(framed), n // 10) / 10),
        ("parse + get 3 fields", per_op_us(parse_get3, n)),
        ("parse + 2 set + 1 map + to_er7", per_op_us(parse_set_map_emit, n)),
        ("hl7.parse + get 3 fields", per_op_us(hl7_get3, max(n // 50, 100))),
        ("hl7.parse + 2 set + 1 map + str()", per_op_us(hl7_set_map_emit, max(n // 50, 100))),
    ]
    print(f"sample: {args.sample.name} ({len(data)} bytes)")
    for name, us in rows:
        print(f"{name:<36} {us:9.2f} µs/op")


if __name__ == "__main__":
    main()

"""PESQ-WB (ITU-T P.862.2, PyPI `pesq`) of 16 kHz mono 16-bit WAV files: the
one scorer of scripts/quality and scripts/lab-quality.

As a program: `pesq_wb.py PAIRS` reads lines `REFERENCE<TAB>DEGRADED` and
prints one score per line (`nan` when PESQ finds no speech to compare)."""
import sys
import wave

import numpy as np
from pesq import pesq


def read(path):
    with wave.open(path) as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64)


def score(ref, deg):
    return pesq(16000, read(ref), read(deg), "wb")


if __name__ == "__main__":
    for line in open(sys.argv[1]):
        ref, deg = line.rstrip("\n").split("\t")
        try:
            print(f"{score(ref, deg):.3f}")
        except Exception as e:  # no utterance found, too short, ...
            print("nan", file=sys.stdout)
            print(f"pesq_wb: {deg}: {e}", file=sys.stderr)

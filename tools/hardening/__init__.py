"""Hardening tools for qcnn: hostile .qcnn files, fuzzing, bad inputs (development only).

Modules (each runnable with `python -m qcnn.tools.hardening.<name> --help`):
  seeds    small valid models covering every operator kind, to mutate and to seed the fuzzer
  fbwalk   lists every field of a .qcnn FlatBuffer with its byte position (for targeted rewrites)
  resign   recomputes the footer and buffer CRCs so structural checks are what gets tested
  mutate   the mutation harness: thousands of hostile files, each loaded and run in a child process
  extreme  random VALID models with edge-case parameters: runtime (every ISA) vs numpy
  fuzz     coverage-guided fuzzing of qcnn.schema.reader.parse with atheris (optional dev tool)
  threads  many threads on one Model (bit-exact results) and close() racing run()
  clis     qcnn-inspect, qcnn-convert --decode and qcnn-run on hostile files

Nothing here is imported by the runtime or the converter.
"""

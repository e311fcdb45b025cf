"""Measuring programs under emulators (instruction counts); no TVM, no torch."""

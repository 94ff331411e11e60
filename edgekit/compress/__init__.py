"""Compression: quantization and distillation."""

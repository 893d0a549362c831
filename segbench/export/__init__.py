"""Exporting a trained run for deployment: ``onnx`` (``segbench export --format onnx``, and the ONNX
Runtime engine of ``segbench predict``)."""
